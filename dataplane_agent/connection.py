"""The agent's one long-lived stream to the control plane, and its reconnect loop.

The agent may be given several control-plane replicas (comma-separated addresses): it keeps
to one while that works and moves to the next when a session fails or ends.

A session: dial, send Hello, await Welcome, send a full Heartbeat at once and then every
heartbeat interval, pass every phase change on as an AttemptUpdate, and act on what the
control plane sends (launch, cancel, forget, drain, log requests). When the stream breaks
the attempts go on; the agent dials again after a jittered backoff, and the Hello plus the
first full Heartbeat of the new session reconcile everything.

Drain: launches of attempts this agent does not already hold are answered FAILED with
reason Draining (they were never started, so the control plane places them elsewhere);
running attempts go on, and those still running at the drain's deadline are cancelled.
The drain lasts until the agent process restarts.

Log requests are answered with the last tail_bytes of the attempt's log (1 MiB when 0) in
LogChunks of at most 64 KiB, the last one with eof; an unknown attempt, or a log that cannot
be read, gets one chunk with error and eof. UNAUTHENTICATED and PERMISSION_DENIED end the
agent (exit code 1); every other failure is retried.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any

import grpc
import grpc.aio
from fleet.v1 import agent_pb2, agent_pb2_grpc, types_pb2

from dataplane_agent import wire
from dataplane_agent.domain.attempt import AttemptStatus, Phase
from dataplane_agent.domain.backoff import Backoff
from dataplane_agent.launcher.base import InvalidAttemptId, Launcher, UnknownAttempt
from dataplane_agent.metrics import AgentMetrics
from dataplane_agent.pool_file import PoolFile
from dataplane_agent.settings import AgentSettings

log = logging.getLogger(__name__)

DEFAULT_HEARTBEAT_S = 5.0
MAX_MESSAGE_BYTES = 16 * 1024 * 1024
WELCOME_TIMEOUT_S = 30.0
STABLE_SESSION_S = 30.0     # a session this long resets the reconnect backoff
LOG_CHUNK_BYTES = 64 * 1024
DEFAULT_LOG_TAIL = 1024 * 1024
FATAL_CODES = (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED)

Outbox = asyncio.Queue[agent_pb2.AgentMessage]


class RefusedError(Exception):
    """The control plane refused this agent for good (retrying cannot help)."""


class SessionEndedError(Exception):
    pass


def create_channel(target: str, settings: AgentSettings) -> grpc.aio.Channel:
    """The one place the channel is made: TLS (with the agent's client certificate when it
    has one), or plaintext when settings.insecure. The PEM files are read here, at every
    connect (an unreadable one is an OSError: logged, and retried like a failed connect).

    Keepalive pings notice a dead peer or a silently dropped connection. The control plane
    must accept pings this often: server option grpc.http2.min_recv_ping_interval_without_data_ms
    <= keepalive_s * 1000 and grpc.keepalive_permit_without_calls = 1, or it closes the
    connection with GOAWAY (too_many_pings).
    """
    keepalive_ms = int(settings.keepalive_s * 1000)
    options = [
        ("grpc.keepalive_time_ms", keepalive_ms),
        ("grpc.keepalive_timeout_ms", max(1000, keepalive_ms // 2)),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_pings_without_data", 0),
        # A launch carries up to 4 MiB of inputs and a heartbeat the outputs of the
        # attempts it reports: the control plane accepts 16 MiB (gRPC's default is 4).
        ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
        ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ]
    if settings.insecure:
        return grpc.aio.insecure_channel(target, options=options)
    credentials = grpc.ssl_channel_credentials(
        root_certificates=settings.tls_ca.read_bytes() if settings.tls_ca else None,
        private_key=settings.tls_key.read_bytes() if settings.tls_key else None,
        certificate_chain=settings.tls_cert.read_bytes() if settings.tls_cert else None,
    )
    return grpc.aio.secure_channel(target, credentials, options=options)


@dataclass
class _Drain:
    reason: str
    task: asyncio.Task[None] | None


class Connection:
    def __init__(
        self, settings: AgentSettings, pool_file: PoolFile, agent_version: str,
        metrics: AgentMetrics | None = None,
    ) -> None:
        self._settings = settings
        self._metrics = metrics or AgentMetrics()
        self._pool_file = pool_file
        self._agent_version = agent_version
        self._outbox: Outbox | None = None   # the live session's; None between sessions
        self._seq = 0
        self._drain: _Drain | None = None
        self._welcomed_at: float | None = None   # of the current session
        # Replicas of the control plane: stay with one while it works, move on when not.
        self._targets = [t.strip() for t in settings.control_plane.split(",") if t.strip()]
        self._target = 0

    def on_attempt_change(self, status: AttemptStatus) -> None:
        """The launcher's listener: send a phase change at once (dropped between sessions;
        the next session's first heartbeat carries it)."""
        if self._outbox is not None:
            self._outbox.put_nowait(wire.attempt_update(status))

    def on_pools_changed(self, launcher: Launcher) -> None:
        """A pool appeared, vanished or changed size (a node joined, was cordoned or
        reclaimed): heartbeat now, so that no more work is placed on capacity that is gone."""
        if self._outbox is not None:
            self._outbox.put_nowait(self._heartbeat(launcher))

    async def run(self, launcher: Launcher) -> int:
        """Keep a session up until cancelled; 1 when the control plane refuses this agent."""
        backoff = Backoff(self._settings.reconnect_min_s, self._settings.reconnect_max_s)
        try:
            while True:
                self._welcomed_at = None
                try:
                    await self._session(launcher)
                    problem = "the control plane ended the stream"
                except RefusedError as error:
                    log.error("%s", error)
                    return 1
                except grpc.aio.AioRpcError as error:
                    problem = f"{error.code().name}: {error.details()}"
                except (SessionEndedError, OSError, grpc.aio.UsageError) as error:
                    problem = str(error)
                except asyncio.InvalidStateError as error:
                    # A write raced the end of the call ("RPC already finished"): a session
                    # that ended, like any other (the chaos harness found it crashing).
                    problem = str(error) or "the stream ended while writing"
                _stop_if_cancelled()
                self._metrics.reconnecting()
                delay = self._next_delay(backoff)
                failed = self._targets[self._target]
                self._target = (self._target + 1) % len(self._targets)
                if self._welcomed_at is None:
                    log.warning("cannot reach the control plane at %s (%s); trying %s in %.1fs",
                                failed, problem, self._targets[self._target], delay)
                else:
                    log.warning("connection to %s lost (%s); reconnecting to %s in %.1fs",
                                failed, problem, self._targets[self._target], delay)
                await asyncio.sleep(delay)
        finally:
            if self._drain is not None and self._drain.task is not None:
                self._drain.task.cancel()

    def _next_delay(self, backoff: Backoff) -> float:
        """A session that lasted a while starts the backoff over: its end is news, not a
        control plane that keeps failing."""
        if self._welcomed_at is not None and (
            time.monotonic() - self._welcomed_at >= STABLE_SESSION_S
        ):
            backoff.reset()
        return backoff.next_delay(random.uniform)

    # -- one session ----------------------------------------------------------------------------

    async def _session(self, launcher: Launcher) -> None:
        """One stream from Hello to its end."""
        target = self._targets[self._target]
        async with create_channel(target, self._settings) as channel:
            call = agent_pb2_grpc.AgentServiceStub(channel).Connect()
            try:
                hello = wire.hello(self._pool_file, self._settings.join_token, self._agent_version)
                await call.write(hello)
                welcome = await self._welcome(call)
                self._welcomed_at = time.monotonic()
                self._metrics.session_started()
                interval = wire.seconds(welcome.heartbeat_interval) or DEFAULT_HEARTBEAT_S
                log.info("connected to %s as dataplane %s (session %s, heartbeat every %gs)",
                         target, self._pool_file.dataplane.name, welcome.session_id, interval)
                outbox: Outbox = asyncio.Queue()
                self._outbox = outbox
                outbox.put_nowait(self._heartbeat(launcher))
                await _first_to_end(
                    self._send(call, outbox),
                    self._beat(launcher, outbox, interval),
                    self._receive(call, launcher, outbox),
                )
            except grpc.aio.AioRpcError as error:
                if error.code() in FATAL_CODES:
                    raise RefusedError(
                        "control plane refused this agent's credential "
                        f"({error.code().name}): {error.details()}"
                    ) from error
                raise
            finally:
                self._outbox = None
                self._metrics.session_ended()
                call.cancel()

    async def _welcome(
        self, call: grpc.aio.StreamStreamCall[agent_pb2.AgentMessage, agent_pb2.ControlMessage]
    ) -> agent_pb2.Welcome:
        # asyncio.timeout, not wait_for: on Python 3.11 wait_for can swallow a cancel that
        # arrives as the awaited call completes, and the agent then never stops.
        async with asyncio.timeout(WELCOME_TIMEOUT_S):
            first = await call.read()
        if first is grpc.aio.EOF:
            raise SessionEndedError("the control plane closed the stream before welcoming")
        if not isinstance(first, agent_pb2.ControlMessage) or not first.HasField("welcome"):
            raise SessionEndedError("the control plane's first message was not a welcome")
        return first.welcome

    async def _send(
        self,
        call: grpc.aio.StreamStreamCall[agent_pb2.AgentMessage, agent_pb2.ControlMessage],
        outbox: Outbox,
    ) -> None:
        while True:
            message = await outbox.get()
            follower = wire.coalesce_updates(message, outbox)
            await call.write(message)
            if message.HasField("heartbeat"):
                self._metrics.heartbeat_sent()
            if follower is not None:
                await call.write(follower)
                if follower.HasField("heartbeat"):
                    self._metrics.heartbeat_sent()

    async def _beat(self, launcher: Launcher, outbox: Outbox, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            outbox.put_nowait(self._heartbeat(launcher))

    def _heartbeat(self, launcher: Launcher) -> agent_pb2.AgentMessage:
        self._seq += 1
        pools = wire.pools(self._pool_file, launcher.pools())
        return wire.heartbeat(self._seq, pools, launcher.statuses())

    async def _receive(
        self,
        call: grpc.aio.StreamStreamCall[agent_pb2.AgentMessage, agent_pb2.ControlMessage],
        launcher: Launcher,
        outbox: Outbox,
    ) -> None:
        while True:
            message = await call.read()
            if message is grpc.aio.EOF:
                return
            assert isinstance(message, agent_pb2.ControlMessage)
            # A batch is its messages one by one, in order (never nested).
            batch = message.batch.messages if message.HasField("batch") else [message]
            for one in batch:
                try:
                    await self._handle(one, launcher, outbox)
                except OSError:
                    log.exception("could not act on the control plane's %s", one.WhichOneof("body"))

    # -- what the control plane asks -------------------------------------------------------------

    async def _handle(
        self, message: agent_pb2.ControlMessage, launcher: Launcher, outbox: Outbox
    ) -> None:
        match message.WhichOneof("body"):
            case "launch":
                await self._launch(message.launch, launcher, outbox)
            case "cancel":
                cancel = message.cancel
                grace = wire.seconds(cancel.grace_period) or self._settings.kill_grace_s
                if not await launcher.cancel(cancel.attempt_id, cancel.reason, grace):
                    log.info("cancel for unknown attempt %s ignored", cancel.attempt_id)
            case "forget":
                await launcher.forget(message.forget.attempt_id)
            case "drain":
                self._start_drain(message.drain, launcher)
            case "log_request":
                await self._send_log(message.log_request, launcher, outbox)
            case "welcome":
                log.warning("ignoring a second welcome from the control plane")
            case "batch":
                log.warning("ignoring a batch inside a batch")
            case other:
                log.warning("ignoring an unknown control message (%s)", other)

    async def _launch(self, launch: agent_pb2.Launch, launcher: Launcher, outbox: Outbox) -> None:
        request = wire.launch_request(launch)
        try:
            if self._drain is not None and not launcher.knows(request.attempt_id):
                message = f"this dataplane is draining ({self._drain.reason or 'no reason given'})"
                await launcher.reject(request, "Draining", message)
            else:
                new = not launcher.knows(request.attempt_id)
                await launcher.launch(request)
                if new:
                    self._metrics.launched()
        except InvalidAttemptId as error:
            log.warning("refused a launch: %s", error)
            refused = AttemptStatus(
                attempt_id=request.attempt_id, job_id=request.job_id, epoch=request.epoch,
                pool=request.pool, phase=Phase.FAILED, reason="InvalidAttemptId",
                message=str(error),
            )
            outbox.put_nowait(wire.attempt_update(refused))

    def _start_drain(self, drain: agent_pb2.Drain, launcher: Launcher) -> None:
        if self._drain is not None and self._drain.task is not None:
            self._drain.task.cancel()
        task = None
        if drain.HasField("deadline"):
            left = wire.seconds_since_epoch(drain.deadline) - time.time()
            task = asyncio.create_task(self._cancel_at_deadline(left, launcher))
        self._drain = _Drain(drain.reason, task)
        log.warning("draining: no new launches (%s)", drain.reason or "no reason given")

    async def _cancel_at_deadline(self, delay_s: float, launcher: Launcher) -> None:
        await asyncio.sleep(max(0.0, delay_s))
        for status in launcher.statuses():
            if not status.phase.final:
                await launcher.cancel(status.attempt_id, "drain deadline passed",
                                      self._settings.kill_grace_s)

    async def _send_log(
        self, request: agent_pb2.LogRequest, launcher: Launcher, outbox: Outbox
    ) -> None:
        try:
            tail = request.tail_bytes or DEFAULT_LOG_TAIL
            data = await launcher.read_log(request.attempt_id, tail)
        except (UnknownAttempt, OSError) as error:
            problem = (f"unknown attempt {request.attempt_id!r}"
                       if isinstance(error, UnknownAttempt) else f"cannot read the log: {error}")
            outbox.put_nowait(agent_pb2.AgentMessage(log_chunk=types_pb2.LogChunk(
                request_id=request.request_id, eof=True, error=problem,
            )))
            return
        pieces = [data[i : i + LOG_CHUNK_BYTES] for i in range(0, len(data), LOG_CHUNK_BYTES)]
        for index, piece in enumerate(pieces or [b""]):
            outbox.put_nowait(agent_pb2.AgentMessage(log_chunk=types_pb2.LogChunk(
                request_id=request.request_id, data=piece, eof=index == max(len(pieces) - 1, 0),
            )))


async def _first_to_end(*steps: Coroutine[Any, Any, None]) -> None:
    """Run the session's loops until one ends; cancel the others; re-raise its error."""
    tasks = [asyncio.create_task(step) for step in steps]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        # The cancelled loops end with CancelledError or the call's own error: not news.
        await asyncio.gather(*tasks, return_exceptions=True)
    for task in done:
        task.result()


def _stop_if_cancelled() -> None:
    """Re-raise a cancel that gRPC turned into an RPC error (a cancelled call reports
    CANCELLED), so that stopping the agent never looks like a lost connection."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError()
