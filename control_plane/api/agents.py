"""AgentService: the one long-lived stream each dataplane agent dials out to.

First message: Hello with the join token. Then, concurrently: the agent's heartbeats and
attempt updates are reconciled against the registry (one transaction each), and the
session's outbox (launches, cancels, forgets, log requests) is written to the stream.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Coroutine, Iterable
from datetime import timedelta

import grpc
from fleet.v1 import agent_pb2, agent_pb2_grpc
from google.protobuf.message import DecodeError

from control_plane.api.access import Access
from control_plane.api.errors import Context, refuse
from control_plane.api.peer import check_agent_peer
from control_plane.api.validation import agent_message_problems, check, hello_problems, joined
from control_plane.clock import Clock
from control_plane.domain.reconcile import ReportedAttempt
from control_plane.domain.records import PoolRecord
from control_plane.metrics import ControlPlaneMetrics
from control_plane.registry import DataplaneStore, ReplicaStore, ReportOutcome, TokenRevoked
from control_plane.scheduler import Scheduler, Wake
from control_plane.sessions import AgentSession, SessionHub
from control_plane.wire import (
    cancel_message,
    clipped_log_chunk,
    launch_message,
    pool_from_proto,
    reported_from_proto,
)

log = logging.getLogger(__name__)

HELLO_TIMEOUT_S = 10.0
# Messages of one agent read ahead while earlier ones are applied (then the stream waits).
REPORTS_IN_FLIGHT = 256
CONTROL_PLANE_VERSION = "0.1.0"


class ProtocolError(Exception):
    """The agent sent something the contract does not allow."""


class RevokedError(Exception):
    """The dataplane's join token was revoked while its stream was open."""


REVOKED = "its join token was revoked"   # the session's closed_reason (see AdminService)


class AgentService(agent_pb2_grpc.AgentServiceServicer):
    def __init__(
        self,
        dataplanes: DataplaneStore,
        scheduler: Scheduler,
        hub: SessionHub,
        clock: Clock,
        *,
        access: Access,
        heartbeat_interval: timedelta,
        replicas: ReplicaStore,
        replica_id: str,
        metrics: ControlPlaneMetrics | None = None,
    ) -> None:
        self._metrics = metrics
        self._replicas = replicas
        self._replica_id = replica_id
        self._dataplanes = dataplanes
        self._scheduler = scheduler
        self._hub = hub
        self._clock = clock
        self._access = access
        self._heartbeat_interval = heartbeat_interval

    # The generated base types Connect as returning an iterator; this handler writes with
    # context.write instead, so that reads and writes run concurrently.
    async def Connect(  # type: ignore[override]
        self, request_iterator: AsyncIterator[agent_pb2.AgentMessage], context: Context
    ) -> None:
        hello = await self._hello(request_iterator, context)
        await check_agent_peer(context, hello.dataplane)
        await self._dataplanes.register(
            hello.dataplane,
            hello.region,
            hello.cloud,
            hello.labels,
            hello.agent_version,
            self._clock.now(),
        )
        session = self._hub.open(
            hello.dataplane,
            accepts_batches=hello.accepts_batches,
            # A heartbeat sent before a launch arrived leaves it out; within an interval
            # of the launch, that is no reason to send it again.
            launch_memory_s=self._heartbeat_interval.total_seconds(),
        )
        await self._replicas.claim_stream(hello.dataplane, self._replica_id)
        log.info(
            "dataplane %s connected (session %s, agent %s)",
            hello.dataplane,
            session.session_id,
            hello.agent_version or "?",
        )
        welcome = agent_pb2.ControlMessage(
            welcome=agent_pb2.Welcome(
                session_id=session.session_id, control_plane_version=CONTROL_PLANE_VERSION
            )
        )
        welcome.welcome.heartbeat_interval.FromTimedelta(self._heartbeat_interval)
        await context.write(welcome)
        reader = asyncio.create_task(self._read(request_iterator, session, hello))
        try:
            while (message := await session.next_message()) is not None:
                await context.write(message)
        finally:
            reader.cancel()
            self._hub.close(session, "stream ended")
            if self._hub.get(hello.dataplane) is None:   # not reconnected here meanwhile
                await self._replicas.release_stream(hello.dataplane, self._replica_id)
            self._scheduler.wake()
            log.info("dataplane %s disconnected: %s", hello.dataplane, session.closed_reason)
        # Not done: the session was closed from elsewhere (a newer stream of this dataplane).
        error = reader.exception() if reader.done() and not reader.cancelled() else None
        if isinstance(error, RevokedError) or session.closed_reason == REVOKED:
            await refuse(context, grpc.StatusCode.UNAUTHENTICATED,
                         f"hello.credential: the join token of {hello.dataplane!r} was revoked")
        if isinstance(error, ProtocolError):
            await refuse(context, grpc.StatusCode.INVALID_ARGUMENT, str(error))
        if error is not None:
            await refuse(
                context,
                grpc.StatusCode.UNAVAILABLE,
                f"control plane could not record the report: {error}",
            )

    async def _hello(
        self, request_iterator: AsyncIterator[agent_pb2.AgentMessage], context: Context
    ) -> agent_pb2.Hello:
        try:
            async with asyncio.timeout(HELLO_TIMEOUT_S):  # see Scheduler.run
                first = await anext(aiter(request_iterator))
        except DecodeError as error:   # bytes that are no AgentMessage
            await refuse(context, grpc.StatusCode.INVALID_ARGUMENT, f"hello: {error}")
        except (TimeoutError, StopAsyncIteration):
            await refuse(
                context,
                grpc.StatusCode.INVALID_ARGUMENT,
                f"hello: the agent sent no hello within {HELLO_TIMEOUT_S:.0f}s",
            )
        if first.WhichOneof("body") != "hello":
            await refuse(
                context,
                grpc.StatusCode.INVALID_ARGUMENT,
                "hello: the first message on the stream must be a hello",
            )
        hello = first.hello
        await check(context, hello_problems(hello))
        refused = await self._access.join_problem(
            hello.dataplane, hello.credential, hello.region, hello.cloud
        )
        if refused is not None:
            log.warning("refused an agent: %s", refused[1])
            await refuse(context, *refused)
        return hello

    async def _read(
        self,
        request_iterator: AsyncIterator[agent_pb2.AgentMessage],
        session: AgentSession,
        hello: agent_pb2.Hello,
    ) -> None:
        """Handle the agent's messages in order. Messages that arrived while earlier ones
        were being applied are handled together: their reports go into the registry's same
        group commit instead of one transaction after the other (an agent finishing many
        attempts at once is not held to one report per commit)."""
        inbox: asyncio.Queue[agent_pb2.AgentMessage | None] = asyncio.Queue(REPORTS_IN_FLIGHT)
        receiver = asyncio.create_task(_receive(request_iterator, inbox))
        try:
            ended = False
            while not ended:
                batch = [await inbox.get()]
                while not inbox.empty() and len(batch) < REPORTS_IN_FLIGHT:
                    batch.append(inbox.get_nowait())
                messages = [m for m in batch if m is not None]
                ended = len(messages) < len(batch)
                # Started in order, so their reports reach the group commit in order.
                handling = [
                    asyncio.create_task(self._handle(m, session, hello)) for m in messages
                ]
                try:
                    for task in handling:
                        await task
                finally:
                    for task in handling:
                        task.cancel()
            await receiver   # the stream's own end: raises what broke it
        finally:
            receiver.cancel()
            session.close("agent closed the stream")

    async def _handle(
        self, message: agent_pb2.AgentMessage, session: AgentSession, hello: agent_pb2.Hello
    ) -> None:
        if problems := joined(agent_message_problems(message)):
            raise ProtocolError(problems)
        kind = message.WhichOneof("body")
        if kind == "heartbeat":
            pools = _pools(hello, message.heartbeat)
            reported = _reported(message.heartbeat.attempts)
            await self._report(session, pools, reported, full_state=True)
        elif kind == "attempt_update":
            update = message.attempt_update
            # One report per run of distinct attempts: a later change of the same attempt
            # (RUNNING, then SUCCEEDED) is applied after the earlier, as if sent alone.
            # All are read first (a bad one refuses the message, nothing queued), then
            # queued in order before anything is awaited: they share a group commit, and
            # stay ahead of the agent's later messages.
            runs = [
                _reported(statuses)
                for statuses in _runs_of_distinct_attempts([update.status, *update.more])
            ]
            await asyncio.gather(*[
                self._report(session, None, run, full_state=False) for run in runs
            ])
        elif kind == "log_chunk":
            self._hub.deliver_log(clipped_log_chunk(message.log_chunk))
        else:
            raise ProtocolError(f"{kind or 'message'}: not allowed after the hello")

    def _report(
        self,
        session: AgentSession,
        pools: list[PoolRecord] | None,
        reported: list[ReportedAttempt],
        *,
        full_state: bool,
    ) -> Coroutine[None, None, None]:
        """Queue the report for the registry now (reports keep the order of these calls);
        the coroutine returned awaits its outcome and acts on it."""
        # Revocation is checked in the report's own transaction: no extra read a beat.
        queued = self._dataplanes.apply_report(
            session.dataplane, pools, reported, full_state=full_state,
            now=self._clock.now(), refuse_revoked=self._access.enabled,
        )
        return self._act_on(session, queued, time.perf_counter())

    async def _act_on(
        self, session: AgentSession, queued: asyncio.Future[ReportOutcome], started: float
    ) -> None:
        try:
            outcome = await queued
        except TokenRevoked as error:
            raise RevokedError(str(error)) from error
        if self._metrics is not None:
            self._metrics.heartbeat_handled(time.perf_counter() - started)
            for phase, reason in outcome.ended:
                self._metrics.attempts_ended(phase, reason)
        # The heartbeat may predate a launch still on its way: one this stream carried
        # lately is not sent again (one that went unheard is, by a later heartbeat).
        for attempt, spec in outcome.launches:
            if not session.launched_lately(attempt.id):
                session.send(launch_message(attempt, spec))
        for attempt_id in outcome.plan.cancel:
            session.send(cancel_message(attempt_id, "the control plane does not want it"))
        for attempt_id in outcome.plan.forget:
            session.send(agent_pb2.ControlMessage(forget=agent_pb2.Forget(attempt_id=attempt_id)))
        if outcome.changed_jobs:
            self._hub.notify_jobs(outcome.changed_jobs)
        # Only news for the scheduler wakes it: changed pools, or attempts that ended (their
        # GPUs freed, their jobs maybe queued again). A heartbeat that repeats the last one
        # (most do) or an attempt that started leaves the pass to its interval, or
        # thousands of agents would run it nonstop.
        if outcome.pools_changed:
            self._scheduler.wake(Wake.FLEET)
        elif outcome.ended:
            self._scheduler.wake(Wake.CAPACITY)


async def _receive(
    request_iterator: AsyncIterator[agent_pb2.AgentMessage],
    inbox: asyncio.Queue[agent_pb2.AgentMessage | None],
) -> None:
    """Move the stream's messages into the inbox (waiting when it is full: flow control
    reaches the agent); None when the stream ends."""
    try:
        async for message in request_iterator:
            await inbox.put(message)
    except asyncio.CancelledError:
        raise
    except DecodeError as error:   # bytes that are no AgentMessage: not the database's fault
        await inbox.put(None)
        raise ProtocolError(f"message: {error}") from error
    except Exception:
        await inbox.put(None)
        raise
    await inbox.put(None)


def _reported(statuses: Iterable[agent_pb2.AttemptStatus]) -> list[ReportedAttempt]:
    try:
        return [reported_from_proto(s) for s in statuses]
    except ValueError as exc:
        raise ProtocolError(str(exc)) from exc


def _runs_of_distinct_attempts(
    statuses: list[agent_pb2.AttemptStatus],
) -> list[list[agent_pb2.AttemptStatus]]:
    """[a RUNNING, b RUNNING, a SUCCEEDED] -> [[a RUNNING, b RUNNING], [a SUCCEEDED]]."""
    runs: list[list[agent_pb2.AttemptStatus]] = [[]]
    in_run: set[str] = set()
    for status in statuses:
        if status.attempt_id in in_run:
            runs.append([])
            in_run.clear()
        runs[-1].append(status)
        in_run.add(status.attempt_id)
    return runs


def _pools(hello: agent_pb2.Hello, heartbeat: agent_pb2.Heartbeat) -> list[PoolRecord]:
    names = [p.name for p in heartbeat.pools]
    if len(set(names)) != len(names):
        raise ProtocolError("heartbeat.pools: pool names repeat")
    try:
        return [
            pool_from_proto(hello.dataplane, hello.region, hello.cloud, p) for p in heartbeat.pools
        ]
    except ValueError as exc:
        raise ProtocolError(f"heartbeat.{exc}") from exc
