"""What the connection needs from a launcher: the process launcher (local processes) and
the Kubernetes launcher (one pod per attempt) implement it."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

from dataplane_agent.domain.attempt import AttemptStatus
from dataplane_agent.domain.capacity import PoolReport

# Attempt ids become folder (and later pod) names: keep them to safe file names.
ATTEMPT_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")

StatusListener = Callable[[AttemptStatus], None]


class InvalidAttemptId(ValueError):
    pass


class UnknownAttempt(KeyError):
    pass


def check_attempt_id(attempt_id: str) -> str:
    if not ATTEMPT_ID.match(attempt_id):
        raise InvalidAttemptId(
            f"attempt id {attempt_id!r} is not a safe file name "
            "(letters, digits, '.', '_', '-', starting with a letter or digit, at most 128)"
        )
    return attempt_id


@dataclass(frozen=True)
class LaunchRequest:
    attempt_id: str
    job_id: str
    epoch: int
    pool: str
    gpus: int
    command: tuple[str, ...]
    env: Mapping[str, str] = field(default_factory=dict)
    timeout_s: float | None = None
    # The whole job spec as JSON (without its inputs), kept in the attempt's record for
    # people and later launchers.
    spec: Mapping[str, object] = field(default_factory=dict)
    project: str = ""
    domain: str = ""
    name: str = ""
    # A serialized flyteidl LiteralMap, staged as inputs.pb in the region's store.
    inputs: bytes = b""


class Launcher(Protocol):
    """Runs attempts on this dataplane and reports their phases.

    Every phase change is passed to the listener given at construction; ``statuses`` is the
    full picture a heartbeat sends.
    """

    async def launch(self, request: LaunchRequest) -> AttemptStatus:
        """Start (or queue) an attempt; a second launch of the same id returns the first."""
        ...

    async def reject(self, request: LaunchRequest, reason: str, message: str) -> AttemptStatus:
        """Hold an attempt that will not run, reported FAILED with this reason."""
        ...

    async def cancel(self, attempt_id: str, reason: str, grace_s: float) -> bool:
        """Stop an attempt; it ends CANCELLED. False when the id is unknown."""
        ...

    async def forget(self, attempt_id: str) -> bool:
        """Stop reporting an attempt (cancelling it first if it still runs)."""
        ...

    async def read_log(self, attempt_id: str, tail_bytes: int) -> bytes:
        """The last tail_bytes of the attempt's log; raises UnknownAttempt."""
        ...

    def statuses(self) -> list[AttemptStatus]:
        """Every attempt held and not forgotten."""
        ...

    def pools(self) -> list[PoolReport]:
        """Every pool of this dataplane with its free GPUs, as the next heartbeat reports."""
        ...

    def knows(self, attempt_id: str) -> bool:
        ...
