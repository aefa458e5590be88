"""Live agent streams held by this control plane, and wake-ups for job watchers.

Each connected dataplane has one session with an outbox of control messages; the agent
servicer drains it into the stream. A newer stream of the same dataplane replaces the
older one (the agent reconnected). Log requests travel down the session and their chunks
come back here, matched by request id. A message for a dataplane whose stream another
replica holds goes through the relay.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from fleet.v1 import agent_pb2, types_pb2

from control_plane.relay import Relay

# A batch to an agent stays well under its 16 MiB receive limit: a launch may carry a spec
# of several MiB, and one that big travels alone.
MAX_BATCH_BYTES = 4 * 1024 * 1024
MAX_BATCH_MESSAGES = 1000


@dataclass
class AgentSession:
    dataplane: str
    # The agent said it understands ControlMessage.batch (Hello.accepts_batches).
    accepts_batches: bool = False
    # How long a launch sent on this stream is remembered (see launched_lately).
    launch_memory_s: float = 0.0
    monotonic: Callable[[], float] = time.monotonic
    session_id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    outbox: asyncio.Queue[agent_pb2.ControlMessage | None] = field(default_factory=asyncio.Queue)
    closed_reason: str = ""
    # Launches sent on this stream within launch_memory_s, oldest first, with when.
    _launched: OrderedDict[str, float] = field(default_factory=OrderedDict)
    # A message taken from the outbox that did not fit the last batch (the next one's first).
    _held: list[agent_pb2.ControlMessage | None] = field(default_factory=list)

    def send(self, message: agent_pb2.ControlMessage) -> None:
        if not self.closed_reason:
            if message.HasField("launch"):
                self._forget_old_launches()
                self._launched.pop(message.launch.attempt_id, None)
                self._launched[message.launch.attempt_id] = self.monotonic()
            self.outbox.put_nowait(message)

    def launched_lately(self, attempt_id: str) -> bool:
        """Whether this stream carried the attempt's launch within launch_memory_s. A
        heartbeat the agent built before that launch reached it leaves the attempt out;
        launching it again would only send the same thing twice (a stream delivers in
        order or ends, and a new stream is a new session)."""
        self._forget_old_launches()
        return attempt_id in self._launched

    def _forget_old_launches(self) -> None:
        oldest = self.monotonic() - self.launch_memory_s
        while self._launched and next(iter(self._launched.values())) < oldest:
            self._launched.popitem(last=False)

    async def next_message(self) -> agent_pb2.ControlMessage | None:
        """The next message to write to the stream; None once the session is closed.
        Messages already waiting behind it go along in one ControlBatch, in order, if the
        agent accepts batches."""
        message = self._held.pop() if self._held else await self.outbox.get()
        if message is None or not self.accepts_batches or self.outbox.empty():
            return message
        batch = [message]
        size = message.ByteSize()
        while len(batch) < MAX_BATCH_MESSAGES and not self.outbox.empty():
            waiting = self.outbox.get_nowait()
            if waiting is None:
                self._held.append(None)
                break
            size += waiting.ByteSize()
            if size > MAX_BATCH_BYTES:
                self._held.append(waiting)
                break
            batch.append(waiting)
        if len(batch) == 1:
            return message
        return agent_pb2.ControlMessage(batch=agent_pb2.ControlBatch(messages=batch))

    def close(self, reason: str) -> None:
        if not self.closed_reason:
            self.closed_reason = reason
            self.outbox.put_nowait(None)


class SessionHub:
    def __init__(
        self, relay: Relay | None = None, *, monotonic: Callable[[], float] = time.monotonic
    ) -> None:
        self._relay = relay
        self._monotonic = monotonic
        self._relaying: set[asyncio.Task[bool]] = set()
        self._sessions: dict[str, AgentSession] = {}
        self._log_requests: dict[str, asyncio.Queue[types_pb2.LogChunk]] = {}
        self._request_ids = itertools.count(1)
        self._job_signals: dict[str, asyncio.Event] = {}

    # --- agent sessions -------------------------------------------------------------
    def open(
        self, dataplane: str, *, accepts_batches: bool = False, launch_memory_s: float = 0.0
    ) -> AgentSession:
        previous = self._sessions.get(dataplane)
        if previous is not None:
            previous.close("replaced by a newer stream of the same dataplane")
        session = AgentSession(dataplane, accepts_batches, launch_memory_s, self._monotonic)
        self._sessions[dataplane] = session
        return session

    def close(self, session: AgentSession, reason: str) -> None:
        session.close(reason)
        if self._sessions.get(session.dataplane) is session:
            del self._sessions[session.dataplane]

    def get(self, dataplane: str) -> AgentSession | None:
        return self._sessions.get(dataplane)

    def connected(self) -> set[str]:
        return set(self._sessions)

    def send(self, dataplane: str, message: agent_pb2.ControlMessage) -> bool:
        """Send if the dataplane is connected here, else hand it to the replica holding its
        stream (in the background). False when not sent here; the next heartbeat
        reconciles whatever a relay loses."""
        if self.send_here(dataplane, message):
            return True
        if self._relay is not None:
            task = asyncio.get_running_loop().create_task(
                self._relay.deliver(dataplane, [message])
            )
            self._relaying.add(task)
            task.add_done_callback(self._relaying.discard)
        return False

    def send_here(self, dataplane: str, message: agent_pb2.ControlMessage) -> bool:
        """Send only if this replica holds the dataplane's stream."""
        session = self._sessions.get(dataplane)
        if session is None:
            return False
        session.send(message)
        return True

    # --- log relay ------------------------------------------------------------------
    def request_log(
        self, dataplane: str, attempt_id: str, tail_bytes: int
    ) -> tuple[str, asyncio.Queue[types_pb2.LogChunk]] | None:
        request_id = f"log-{next(self._request_ids)}"
        queue: asyncio.Queue[types_pb2.LogChunk] = asyncio.Queue()
        self._log_requests[request_id] = queue
        message = agent_pb2.ControlMessage(
            log_request=agent_pb2.LogRequest(
                request_id=request_id, attempt_id=attempt_id, tail_bytes=tail_bytes
            )
        )
        if not self.send_here(dataplane, message):
            del self._log_requests[request_id]
            return None
        return request_id, queue

    def deliver_log(self, chunk: types_pb2.LogChunk) -> None:
        queue = self._log_requests.get(chunk.request_id)
        if queue is not None:
            queue.put_nowait(chunk)

    def end_log_request(self, request_id: str) -> None:
        self._log_requests.pop(request_id, None)

    # --- job watchers ---------------------------------------------------------------
    def notify_jobs(self, job_ids: Iterable[str]) -> None:
        for job_id in job_ids:
            signal = self._job_signals.pop(job_id, None)
            if signal is not None:
                signal.set()

    async def wait_for_job(self, job_id: str, timeout_s: float) -> None:
        """Return when the job changes or after timeout_s (watchers also poll)."""
        signal = self._job_signals.setdefault(job_id, asyncio.Event())
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):  # not wait_for: see Scheduler.run
                await signal.wait()
