"""The job state machine, the reconcile table and the two timers, tested as pure code."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from control_plane.domain.health import Timers, expiry_suspended
from control_plane.domain.phases import (
    AttemptPhase,
    DataplaneHealth,
    JobPhase,
    attempt_may_move,
    job_after_attempt,
)
from control_plane.domain.reconcile import KnownAttempt, ReportedAttempt, reconcile

A = AttemptPhase
J = JobPhase


@pytest.mark.parametrize(
    ("job", "used", "budget", "attempt", "expected"),
    [
        (J.SCHEDULED, 0, 2, A.STARTING, None),
        (J.SCHEDULED, 0, 2, A.RUNNING, (J.RUNNING, 0, "started")),
        (J.RUNNING, 0, 2, A.RUNNING, None),
        (J.RUNNING, 0, 2, A.SUCCEEDED, (J.SUCCEEDED, 0, "succeeded")),
        (J.SCHEDULED, 0, 2, A.SUCCEEDED, (J.SUCCEEDED, 0, "succeeded")),
        (J.RUNNING, 0, 2, A.FAILED, (J.QUEUED, 1, "retrying")),
        (J.RUNNING, 1, 2, A.LOST, (J.QUEUED, 2, "retrying")),
        (J.RUNNING, 2, 2, A.FAILED, (J.FAILED, 2, "failed")),
        (J.RUNNING, 2, 2, A.LOST, (J.FAILED, 2, "failed")),
        (J.RUNNING, 2, 2, A.PREEMPTED, (J.QUEUED, 2, "requeued")),
        (J.RUNNING, 0, 0, A.CANCELLED, (J.QUEUED, 0, "requeued")),
        (J.CANCELLED, 0, 2, A.FAILED, None),
        (J.CANCELLED, 0, 2, A.CANCELLED, None),
        (J.SUCCEEDED, 0, 2, A.LOST, None),
    ],
)
def test_job_after_attempt(
    job: JobPhase,
    used: int,
    budget: int,
    attempt: AttemptPhase,
    expected: tuple[JobPhase, int, str] | None,
) -> None:
    step = job_after_attempt(job, used, budget, attempt, "why")
    assert (None if step is None else (step.phase, step.retries_used, step.event)) == expected


def test_failure_message_says_the_budget_is_spent() -> None:
    step = job_after_attempt(J.RUNNING, 2, 2, A.FAILED, "exit code 3")
    assert step is not None
    assert step.message == "attempt failed: exit code 3 (retry budget of 2 spent)"


def test_attempt_phases_only_move_forward() -> None:
    assert attempt_may_move(A.PENDING, A.RUNNING)
    assert attempt_may_move(A.RUNNING, A.SUCCEEDED)
    assert not attempt_may_move(A.RUNNING, A.STARTING)
    assert not attempt_may_move(A.SUCCEEDED, A.FAILED)
    assert not attempt_may_move(A.LOST, A.SUCCEEDED)


def known(id_: str, phase: AttemptPhase, epoch: int = 1, cancel: bool = False) -> KnownAttempt:
    return KnownAttempt(id_, epoch, phase, cancel)


def test_reported_progress_is_recorded_and_final_reports_forgotten() -> None:
    plan = reconcile(
        {"a": known("a", A.PENDING), "b": known("b", A.RUNNING)},
        [ReportedAttempt("a", 1, A.RUNNING), ReportedAttempt("b", 1, A.SUCCEEDED, exit_code=0)],
        full_state=True,
    )
    assert [(c.attempt_id, c.phase) for c in plan.changes] == [("a", A.RUNNING), ("b", A.SUCCEEDED)]
    assert plan.forget == ["b"]
    assert plan.cancel == [] and plan.launch == []


def test_unknown_or_fenced_attempts_are_cancelled_or_forgotten() -> None:
    plan = reconcile(
        {"old": known("old", A.LOST), "e": known("e", A.RUNNING, epoch=2)},
        [
            ReportedAttempt("stranger", 1, A.RUNNING),
            ReportedAttempt("old", 1, A.RUNNING),
            ReportedAttempt("late", 1, A.SUCCEEDED),
            ReportedAttempt("e", 1, A.SUCCEEDED),  # another epoch: fenced
        ],
        full_state=True,
    )
    assert plan.changes == []
    assert sorted(plan.cancel) == ["old", "stranger"]
    assert sorted(plan.forget) == ["e", "late"]


def test_full_state_relaunches_pending_and_loses_vanished() -> None:
    plan = reconcile(
        {
            "p": known("p", A.PENDING),
            "pc": known("pc", A.PENDING, cancel=True),
            "r": known("r", A.RUNNING),
        },
        [],
        full_state=True,
    )
    assert plan.launch == ["p"]
    assert [(c.attempt_id, c.phase, c.reason) for c in plan.changes] == [
        ("pc", A.CANCELLED, "Cancelled"),
        ("r", A.LOST, "AgentLostAttempt"),
    ]


def test_an_update_is_not_full_state() -> None:
    plan = reconcile({"r": known("r", A.RUNNING)}, [], full_state=False)
    assert plan.changes == [] and plan.launch == []


def test_cancel_is_repeated_until_the_agent_reports_an_end() -> None:
    plan = reconcile(
        {"r": known("r", A.RUNNING, cancel=True)},
        [ReportedAttempt("r", 1, A.RUNNING)],
        full_state=True,
    )
    assert plan.cancel == ["r"]
    plan = reconcile(
        {"r": known("r", A.RUNNING, cancel=True)},
        [ReportedAttempt("r", 1, A.CANCELLED)],
        full_state=True,
    )
    assert plan.cancel == [] and plan.forget == ["r"]
    assert plan.changes[0].phase is A.CANCELLED


T0 = datetime(2026, 1, 1, tzinfo=UTC)


def test_two_timers() -> None:
    timers = Timers(timedelta(seconds=15), timedelta(seconds=60), started_at=T0)
    heard = T0 + timedelta(seconds=100)
    assert timers.health(heard, heard + timedelta(seconds=14)) is DataplaneHealth.HEALTHY
    assert timers.health(heard, heard + timedelta(seconds=15)) is DataplaneHealth.STALE
    assert timers.health(heard, heard + timedelta(seconds=60)) is DataplaneHealth.LOST


def test_silence_counts_from_the_control_planes_start() -> None:
    timers = Timers(timedelta(seconds=15), timedelta(seconds=60), started_at=T0)
    long_ago = T0 - timedelta(days=1)
    assert timers.health(long_ago, T0 + timedelta(seconds=1)) is DataplaneHealth.HEALTHY
    assert timers.health(None, T0 + timedelta(seconds=61)) is DataplaneHealth.LOST


def test_timers_refuse_lost_before_stale() -> None:
    with pytest.raises(ValueError, match="lost_after must be longer"):
        Timers(timedelta(seconds=60), timedelta(seconds=15), started_at=T0)


def test_everyone_silent_suspends_expiry() -> None:
    stale = timedelta(seconds=15)
    now = T0 + timedelta(seconds=100)
    assert expiry_suspended([T0, T0 + timedelta(seconds=10)], now, stale)
    assert not expiry_suspended([T0, now - timedelta(seconds=1)], now, stale)
    assert not expiry_suspended([], now, stale)
