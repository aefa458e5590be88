"""An attempt's phase as the agent sees it, derived from what its folder records.

The launcher gathers facts (is the runner alive, did the job start, is there a result, was a
cancel requested) and :func:`derive_status` turns them into a phase. Keeping this a pure
function makes the whole table below testable without processes.

Agent-side attempt phases::

    (launch) ──▶ STARTING ──GPUs free, runner spawned, job started──▶ RUNNING ──▶ final
                    │                                                   │
                    └───────────── cancel / rejected / start error ─────┴──▶ final

| spawned | runner alive | result recorded         | cancel | phase     | reason           |
|---------|--------------|-------------------------|--------|-----------|------------------|
| no      | -            | none                    | no     | STARTING  | WaitingForGPUs   |
| no      | -            | none                    | yes    | CANCELLED | Cancelled        |
| -       | -            | rejected                | -      | FAILED    | InvalidPool, ... |
| yes     | yes          | none, job not started   | -      | STARTING  |                  |
| yes     | yes          | none, job started       | -      | RUNNING   |                  |
| yes     | -            | exit, staged, not read  | -      | RUNNING   |                  |
| yes     | -            | exit, staged, a failure | -      | FAILED    | UserError, ...   |
| yes     | -            | exit 0                  | -      | SUCCEEDED |                  |
| yes     | -            | exit N != 0             | -      | FAILED    | Error            |
| yes     | -            | could not start the job | -      | FAILED    | Error            |
| yes     | -            | killed at the deadline  | -      | FAILED    | DeadlineExceeded |
| yes     | -            | cancelled               | -      | CANCELLED | Cancelled        |
| yes     | no           | none                    | yes    | CANCELLED | Cancelled        |
| yes     | no           | none                    | no     | LOST      | RunnerVanished   |

"spawned" means a runner process was started for the attempt (its GPUs were free);
"rejected" is a launch refused by the agent (InvalidPool, Draining; InvalidSpec,
InvalidInputs or SystemError when a Flyte task could not be staged). A "staged" attempt (a
Flyte task, see ``domain.flyte``) has a prefix in the region's store: once its process
exited, the agent reads what the task left there (error.pb, outputs.pb) into a
:class:`TaskResult`; until then it stays RUNNING, so that it never ends without its outputs.
A failure found there (UserError, SystemError, OutputsTooLarge, ...) wins over the exit
code; otherwise the exit code decides.

The final phases (SUCCEEDED, FAILED, CANCELLED, LOST) never change again.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum


class Phase(StrEnum):
    STARTING = "starting"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    PREEMPTED = "preempted"   # capacity taken away (spot reclaim): the control plane retries free
    LOST = "lost"

    @property
    def final(self) -> bool:
        return self not in (Phase.STARTING, Phase.RUNNING)


class OutcomeKind(StrEnum):
    """What a runner (or the launcher, for a refused launch) wrote as the attempt's end."""

    EXITED = "exited"
    START_ERROR = "start_error"
    DEADLINE_EXCEEDED = "deadline_exceeded"
    CANCELLED = "cancelled"
    REJECTED = "rejected"


@dataclass(frozen=True)
class Outcome:
    kind: OutcomeKind
    exit_code: int | None = None
    reason: str = ""     # only for REJECTED: InvalidPool, Draining
    message: str = ""    # start error text, cancel reason, rejection text
    finished_at: datetime | None = None


@dataclass(frozen=True)
class TaskResult:
    """What a staged attempt's task left in the store, as it bears on the attempt's end:
    a failure (reason set) that overrides the exit code's verdict, or nothing to add."""

    reason: str = ""
    message: str = ""


@dataclass(frozen=True)
class FolderFacts:
    gpus: int
    pool: str
    spawned: bool
    runner_alive: bool
    job_started: bool
    outcome: Outcome | None
    cancel_requested: bool
    cancel_reason: str = ""
    last_log_line: str = ""
    staged: bool = False                   # has a prefix in the store (a Flyte task)
    task_result: TaskResult | None = None  # read from the store after the process exited

    @property
    def awaits_task_result(self) -> bool:
        """A staged attempt's process exited; what its task left is still to be read."""
        exited = self.outcome is not None and self.outcome.kind is OutcomeKind.EXITED
        return self.staged and exited and self.task_result is None


@dataclass(frozen=True)
class Verdict:
    phase: Phase
    reason: str = ""
    message: str = ""
    exit_code: int | None = None


@dataclass(frozen=True)
class AttemptStatus:
    """One attempt as the agent reports it."""

    attempt_id: str
    job_id: str
    epoch: int
    pool: str
    phase: Phase
    reason: str = ""
    message: str = ""
    exit_code: int | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    outputs: bytes = b""   # with SUCCEEDED: the serialized LiteralMap the task wrote


def waiting_message(gpus: int, pool: str) -> str:
    return f"waiting for {gpus} GPUs in pool {pool}"


def derive_status(facts: FolderFacts) -> Verdict:
    """The phase an attempt is in, per the table in this module's docstring.

    The caller must read runner liveness *before* the outcome: a runner writes its outcome
    and only then exits, so "not alive and no outcome" really means it vanished.
    """
    if facts.outcome is not None:
        if facts.awaits_task_result:
            return Verdict(Phase.RUNNING)   # its outputs or error are still to be read
        result = facts.task_result
        if facts.outcome.kind is OutcomeKind.EXITED and result is not None and result.reason:
            return Verdict(Phase.FAILED, result.reason, result.message, facts.outcome.exit_code)
        return _from_outcome(facts.outcome, facts.last_log_line)
    if not facts.spawned:
        if facts.cancel_requested:
            return Verdict(Phase.CANCELLED, "Cancelled", _cancel_message(facts.cancel_reason))
        return Verdict(Phase.STARTING, "WaitingForGPUs", waiting_message(facts.gpus, facts.pool))
    if facts.runner_alive:
        return Verdict(Phase.RUNNING if facts.job_started else Phase.STARTING)
    if facts.cancel_requested:
        return Verdict(Phase.CANCELLED, "Cancelled", _cancel_message(facts.cancel_reason))
    return Verdict(
        Phase.LOST, "RunnerVanished", "the attempt's runner process vanished without a result"
    )


def _from_outcome(outcome: Outcome, last_log_line: str) -> Verdict:
    code = outcome.exit_code
    match outcome.kind:
        case OutcomeKind.REJECTED:
            return Verdict(Phase.FAILED, outcome.reason, outcome.message)
        case OutcomeKind.CANCELLED:
            return Verdict(Phase.CANCELLED, "Cancelled", _cancel_message(outcome.message), code)
        case OutcomeKind.START_ERROR:
            return Verdict(Phase.FAILED, "Error", outcome.message)
        case OutcomeKind.DEADLINE_EXCEEDED:
            message = _with_log_line(f"{outcome.message} (exit code {code})", last_log_line)
            return Verdict(Phase.FAILED, "DeadlineExceeded", message, code)
        case OutcomeKind.EXITED if code == 0:
            return Verdict(Phase.SUCCEEDED, exit_code=0)
        case _:
            message = _with_log_line(f"exit code {code}", last_log_line)
            return Verdict(Phase.FAILED, "Error", message, code)


def _cancel_message(reason: str) -> str:
    return f"cancelled: {reason}" if reason else "cancelled"


def _with_log_line(message: str, last_log_line: str) -> str:
    return f"{message}: {last_log_line}" if last_log_line else message
