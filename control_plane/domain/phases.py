"""Job and attempt phases, and how an attempt's end moves its job.

A *job* is the user's intent; an *attempt* is one placement of it on one pool of one
dataplane, with a fencing epoch. A job has at most one live attempt at a time.

Job state machine::

    QUEUED ──place──▶ SCHEDULED ──attempt running──▶ RUNNING ──attempt succeeded──▶ SUCCEEDED
       ▲                  │                             │
       └──── attempt preempted (free) / failed or lost (budget left) ──┘
                          │                             │
                          └── failed or lost, budget spent ──▶ FAILED
    any non-final phase ──cancel──▶ CANCELLED

| event on the current attempt | job before            | job after  | budget  |
|------------------------------|-----------------------|------------|---------|
| STARTING                     | SCHEDULED             | SCHEDULED  |         |
| RUNNING                      | SCHEDULED             | RUNNING    |         |
| SUCCEEDED                    | SCHEDULED, RUNNING    | SUCCEEDED  |         |
| FAILED, LOST                 | SCHEDULED, RUNNING    | QUEUED     | +1      |
| FAILED, LOST (budget spent)  | SCHEDULED, RUNNING    | FAILED     |         |
| PREEMPTED, CANCELLED by us   | SCHEDULED, RUNNING    | QUEUED     | free    |
| any                          | CANCELLED (by user)   | CANCELLED  | never retried |

Attempt phases only move forward: PENDING → STARTING → RUNNING → one final phase.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class JobPhase(StrEnum):
    QUEUED = "queued"
    SCHEDULED = "scheduled"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def final(self) -> bool:
        return self in _FINAL_JOB


class AttemptPhase(StrEnum):
    PENDING = "pending"
    STARTING = "starting"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    PREEMPTED = "preempted"
    LOST = "lost"

    @property
    def final(self) -> bool:
        return self in _FINAL_ATTEMPT

    @property
    def rank(self) -> int:
        """Order of progress: an attempt never moves to a lower rank."""
        return _ATTEMPT_RANK[self]


class PurchaseType(StrEnum):
    RESERVED = "reserved"
    ON_DEMAND = "on_demand"
    SPOT = "spot"


class DataplaneHealth(StrEnum):
    HEALTHY = "healthy"
    STALE = "stale"
    LOST = "lost"


_FINAL_JOB = frozenset({JobPhase.SUCCEEDED, JobPhase.FAILED, JobPhase.CANCELLED})
_FINAL_ATTEMPT = frozenset(
    {
        AttemptPhase.SUCCEEDED,
        AttemptPhase.FAILED,
        AttemptPhase.CANCELLED,
        AttemptPhase.PREEMPTED,
        AttemptPhase.LOST,
    }
)
_ATTEMPT_RANK = {
    AttemptPhase.PENDING: 0,
    AttemptPhase.STARTING: 1,
    AttemptPhase.RUNNING: 2,
    **{phase: 3 for phase in _FINAL_ATTEMPT},
}

# Failures that spend the job's retry budget; other endings of a live job are free retries.
_BUDGET_SPENDING = frozenset({AttemptPhase.FAILED, AttemptPhase.LOST})


def attempt_may_move(current: AttemptPhase, reported: AttemptPhase) -> bool:
    """Whether a reported phase is news: forward only, and a final phase is final."""
    return not current.final and reported.rank > current.rank


@dataclass(frozen=True)
class JobStep:
    """What an attempt's phase does to its job."""

    phase: JobPhase
    retries_used: int
    event: str  # event kind recorded in the job's history
    message: str


def job_after_attempt(
    job_phase: JobPhase,
    retries_used: int,
    retry_budget: int,
    attempt_phase: AttemptPhase,
    attempt_message: str,
) -> JobStep | None:
    """The job's next state when its current attempt reaches attempt_phase; None: no change."""
    if job_phase.final:
        return None
    if attempt_phase is AttemptPhase.STARTING:
        return None
    if attempt_phase is AttemptPhase.RUNNING:
        if job_phase is JobPhase.SCHEDULED:
            return JobStep(JobPhase.RUNNING, retries_used, "started", attempt_message)
        return None
    if attempt_phase is AttemptPhase.SUCCEEDED:
        return JobStep(JobPhase.SUCCEEDED, retries_used, "succeeded", attempt_message)
    if attempt_phase in _BUDGET_SPENDING:
        if retries_used < retry_budget:
            used = retries_used + 1
            return JobStep(
                JobPhase.QUEUED,
                used,
                "retrying",
                f"attempt {attempt_phase.value}: {attempt_message} "
                f"(retry {used} of {retry_budget})",
            )
        return JobStep(
            JobPhase.FAILED,
            retries_used,
            "failed",
            f"attempt {attempt_phase.value}: {attempt_message}"
            + (f" (retry budget of {retry_budget} spent)" if retry_budget else ""),
        )
    if attempt_phase in (AttemptPhase.PREEMPTED, AttemptPhase.CANCELLED):
        return JobStep(
            JobPhase.QUEUED,
            retries_used,
            "requeued",
            f"attempt {attempt_phase.value}: {attempt_message} (free retry)",
        )
    return None
