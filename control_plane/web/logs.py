"""The log tail of a job's latest attempt, for the dashboard: the path JobService.Logs
takes (the agent's own stream when this replica holds it, else the replica that does),
collected into one answer instead of streamed.

Logs stay in their region: nothing is stored here, the agent sends the tail on request.
"""

from __future__ import annotations

import asyncio

import grpc
import grpc.aio
from fleet.v1 import jobs_pb2

from control_plane.domain.limits import KIB, MIB
from control_plane.domain.records import AttemptRecord, JobRecord
from control_plane.relay import Relay
from control_plane.sessions import SessionHub

DEFAULT_TAIL = 64 * KIB
MAX_TAIL = 1 * MIB   # a page shows it: the CLI (`fleet jobs logs`) is for whole logs
# Shorter than JobService.Logs' 30 s: someone is looking at a page.
LOG_WAIT_S = 10.0

# gRPC codes a relayed call may end with, as HTTP statuses.
HTTP_STATUS = {
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.FAILED_PRECONDITION: 409,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
}


class LogUnavailable(Exception):
    """Why there is no log to show, with the HTTP status to answer."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


async def log_tail(
    hub: SessionHub, relay: Relay | None, job: JobRecord, tail_bytes: int
) -> tuple[AttemptRecord, bytes]:
    """The latest attempt and the last tail_bytes of its log; raises LogUnavailable."""
    if not job.attempts:
        raise LogUnavailable(409, f"job {job.id} has no attempt yet")
    attempt = job.attempts[-1]
    pending = hub.request_log(attempt.dataplane, attempt.id, tail_bytes)
    if pending is None and relay is not None:
        address = await relay.holder(attempt.dataplane)
        if address is not None:   # another replica holds the stream: ask it
            request = jobs_pb2.JobLogsRequest(
                job_id=job.id, attempt_id=attempt.id, tail_bytes=tail_bytes
            )
            return attempt, await _relayed(relay, address, request)
    if pending is None:
        raise LogUnavailable(
            503,
            f"dataplane {attempt.dataplane} is not connected; the log of {attempt.id} stays "
            "in its region until it reconnects",
        )
    request_id, chunks = pending
    data = bytearray()
    try:
        async with asyncio.timeout(LOG_WAIT_S):   # not wait_for: see Scheduler.run
            while True:
                chunk = await chunks.get()
                if chunk.error:
                    raise LogUnavailable(404, f"log of {attempt.id}: {chunk.error}")
                data += chunk.data
                if chunk.eof:
                    return attempt, bytes(data)
    except TimeoutError:
        raise LogUnavailable(
            504, f"dataplane {attempt.dataplane} did not send the log in time"
        ) from None
    finally:
        hub.end_log_request(request_id)


async def _relayed(relay: Relay, address: str, request: jobs_pb2.JobLogsRequest) -> bytes:
    data = bytearray()
    try:
        async with asyncio.timeout(LOG_WAIT_S):
            async for chunk in relay.logs(address, request):
                data += chunk.data
    except TimeoutError:
        raise LogUnavailable(504, f"replica {address} did not relay the log in time") from None
    except grpc.aio.AioRpcError as error:
        status = HTTP_STATUS.get(error.code(), 502)
        raise LogUnavailable(status, error.details() or "log relay failed") from None
    return bytes(data)
