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
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field

from fleet.v1 import agent_pb2, types_pb2

from control_plane.relay import Relay


@dataclass
class AgentSession:
    dataplane: str
    session_id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    outbox: asyncio.Queue[agent_pb2.ControlMessage | None] = field(default_factory=asyncio.Queue)
    closed_reason: str = ""

    def send(self, message: agent_pb2.ControlMessage) -> None:
        if not self.closed_reason:
            self.outbox.put_nowait(message)

    def close(self, reason: str) -> None:
        if not self.closed_reason:
            self.closed_reason = reason
            self.outbox.put_nowait(None)


class SessionHub:
    def __init__(self, relay: Relay | None = None) -> None:
        self._relay = relay
        self._relaying: set[asyncio.Task[bool]] = set()
        self._sessions: dict[str, AgentSession] = {}
        self._log_requests: dict[str, asyncio.Queue[types_pb2.LogChunk]] = {}
        self._request_ids = itertools.count(1)
        self._job_signals: dict[str, asyncio.Event] = {}

    # --- agent sessions -------------------------------------------------------------
    def open(self, dataplane: str) -> AgentSession:
        previous = self._sessions.get(dataplane)
        if previous is not None:
            previous.close("replaced by a newer stream of the same dataplane")
        session = AgentSession(dataplane)
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
