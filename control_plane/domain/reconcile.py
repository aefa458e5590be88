"""What a dataplane's report means for the attempts the control plane holds there.

The agent's heartbeat lists every attempt it holds (full state); an attempt update lists
one. Comparing the report with what the control plane knows gives a plan:

| control plane knows         | agent reports          | plan                                   |
|-----------------------------|------------------------|----------------------------------------|
| nothing, or another epoch   | live                   | cancel (it was placed elsewhere)       |
| nothing, or another epoch   | final                  | forget (a fenced result is ignored)    |
| final                       | live                   | cancel                                 |
| final                       | final                  | forget                                 |
| live                        | a later phase          | record it; forget once final           |
| live, cancel requested      | live                   | record any progress; cancel again      |
| PENDING (full state only)   | absent                 | launch again (launch is idempotent)    |
| PENDING, cancel requested   | absent                 | record CANCELLED, nothing was started  |
| STARTING/RUNNING (full)     | absent                 | record LOST: the agent lost it         |
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from control_plane.domain.phases import AttemptPhase, attempt_may_move


@dataclass(frozen=True)
class KnownAttempt:
    id: str
    epoch: int
    phase: AttemptPhase
    cancel_requested: bool


@dataclass(frozen=True)
class ReportedAttempt:
    id: str
    epoch: int
    phase: AttemptPhase
    reason: str = ""
    message: str = ""
    exit_code: int | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    outputs: bytes = b""


@dataclass(frozen=True)
class AttemptChange:
    attempt_id: str
    phase: AttemptPhase
    reason: str = ""
    message: str = ""
    exit_code: int | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    outputs: bytes = b""


@dataclass
class ReconcilePlan:
    changes: list[AttemptChange] = field(default_factory=list)
    launch: list[str] = field(default_factory=list)
    cancel: list[str] = field(default_factory=list)
    forget: list[str] = field(default_factory=list)


def reconcile(
    known: Mapping[str, KnownAttempt],
    reported: Sequence[ReportedAttempt],
    *,
    full_state: bool,
) -> ReconcilePlan:
    """known: the control plane's attempts on this dataplane that are live or were reported."""
    plan = ReconcilePlan()
    seen: set[str] = set()
    for report in reported:
        seen.add(report.id)
        held = known.get(report.id)
        if held is None or held.epoch != report.epoch or held.phase.final:
            (plan.forget if report.phase.final else plan.cancel).append(report.id)
            continue
        if attempt_may_move(held.phase, report.phase):
            plan.changes.append(
                AttemptChange(
                    report.id,
                    report.phase,
                    report.reason,
                    report.message,
                    report.exit_code,
                    report.started_at,
                    report.finished_at,
                    report.outputs,
                )
            )
        if report.phase.final:
            plan.forget.append(report.id)
        elif held.cancel_requested:
            plan.cancel.append(report.id)
    if full_state:
        for held in known.values():
            if held.id in seen or held.phase.final:
                continue
            if held.phase is AttemptPhase.PENDING:
                if held.cancel_requested:
                    plan.changes.append(
                        AttemptChange(
                            held.id,
                            AttemptPhase.CANCELLED,
                            "Cancelled",
                            "cancelled before the agent started it",
                        )
                    )
                else:
                    plan.launch.append(held.id)
            else:
                plan.changes.append(
                    AttemptChange(
                        held.id,
                        AttemptPhase.LOST,
                        "AgentLostAttempt",
                        "the agent no longer reports this attempt",
                    )
                )
    return plan
