"""The agent's pure decisions: capacity arithmetic, attempt phases, reconnect backoff."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from dataplane_agent.domain.attempt import (
    FolderFacts,
    Outcome,
    OutcomeKind,
    Phase,
    Verdict,
    derive_status,
)
from dataplane_agent.domain.backoff import Backoff
from dataplane_agent.domain.capacity import (
    Admission,
    Holding,
    PoolUsage,
    Waiting,
    admit,
    pool_problem,
    pool_usage,
)

POOLS = {"h100": 3, "a10": 4}


# -- capacity -----------------------------------------------------------------------------------


def test_free_is_total_minus_the_gpus_of_started_attempts() -> None:
    holdings = [Holding("a1", "h100", (0, 1)), Holding("a2", "a10", (3,))]

    assert pool_usage(POOLS, holdings) == [PoolUsage("h100", 3, 1), PoolUsage("a10", 4, 3)]


def test_gpus_promised_to_waiting_attempts_are_not_free() -> None:
    holdings = [Holding("a1", "h100", (0,))]
    waiting = [Waiting("w1", "h100", 1), Waiting("w2", "a10", 3), Waiting("w3", "h100", 3)]

    assert pool_usage(POOLS, holdings, waiting) == [
        PoolUsage("h100", 3, 0), PoolUsage("a10", 4, 1)
    ]


def test_waiting_attempts_get_the_lowest_free_devices_in_order() -> None:
    holdings = [Holding("a1", "a10", (0, 2))]
    waiting = [Waiting("b1", "a10", 1), Waiting("b2", "a10", 1), Waiting("b3", "h100", 3)]

    assert admit(POOLS, holdings, waiting) == [
        Admission("b1", "a10", (1,)),
        Admission("b2", "a10", (3,)),
        Admission("b3", "h100", (0, 1, 2)),
    ]


def test_second_attempt_waits_until_the_first_ends() -> None:
    first = Waiting("a1", "h100", 2)
    second = Waiting("a2", "h100", 2)

    assert admit(POOLS, [], [first, second]) == [Admission("a1", "h100", (0, 1))]
    assert admit(POOLS, [Holding("a1", "h100", (0, 1))], [second]) == []
    assert admit(POOLS, [], [second]) == [Admission("a2", "h100", (0, 1))]


def test_strict_fifo_per_pool_a_small_attempt_does_not_overtake_a_blocked_big_one() -> None:
    holdings = [Holding("a1", "h100", (0,))]
    waiting = [Waiting("big", "h100", 3), Waiting("small", "h100", 1), Waiting("other", "a10", 4)]

    assert admit(POOLS, holdings, waiting) == [Admission("other", "a10", (0, 1, 2, 3))]


def test_an_attempt_without_gpus_starts_even_behind_a_blocked_one() -> None:
    waiting = [Waiting("big", "h100", 3), Waiting("cpu-only", "h100", 0)]

    assert admit(POOLS, [Holding("a1", "h100", (2,))], waiting) == [
        Admission("cpu-only", "h100", ())
    ]


def test_pool_problems() -> None:
    assert pool_problem(POOLS, "h100", 3) is None
    assert pool_problem(POOLS, "h100", 4) == "wants 4 GPUs but pool 'h100' has only 3"
    assert pool_problem(POOLS, "v100", 1) == "unknown pool 'v100' (this dataplane has: a10, h100)"


# -- attempt phases (the table in dataplane_agent.domain.attempt) ------------------------------

AT = datetime(2025, 1, 1, tzinfo=UTC)


def facts(**overrides: object) -> FolderFacts:
    base: dict[str, object] = dict(
        gpus=2, pool="h100", spawned=True, runner_alive=True, job_started=True,
        outcome=None, cancel_requested=False, cancel_reason="", last_log_line="",
    )
    base.update(overrides)
    return FolderFacts(**base)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        (facts(spawned=False, runner_alive=False, job_started=False),
         Verdict(Phase.STARTING, "WaitingForGPUs", "waiting for 2 GPUs in pool h100")),
        (facts(spawned=False, runner_alive=False, cancel_requested=True, cancel_reason="user"),
         Verdict(Phase.CANCELLED, "Cancelled", "cancelled: user")),
        (facts(job_started=False), Verdict(Phase.STARTING)),
        (facts(), Verdict(Phase.RUNNING)),
        (facts(outcome=Outcome(OutcomeKind.EXITED, 0, finished_at=AT)),
         Verdict(Phase.SUCCEEDED, exit_code=0)),
        (facts(outcome=Outcome(OutcomeKind.EXITED, 3), last_log_line="boom"),
         Verdict(Phase.FAILED, "Error", "exit code 3: boom", 3)),
        (facts(outcome=Outcome(OutcomeKind.EXITED, 1)),
         Verdict(Phase.FAILED, "Error", "exit code 1", 1)),
        (facts(outcome=Outcome(OutcomeKind.START_ERROR, message="cannot start 'x'")),
         Verdict(Phase.FAILED, "Error", "cannot start 'x'")),
        (facts(outcome=Outcome(OutcomeKind.DEADLINE_EXCEEDED, 143, message="killed at 1s")),
         Verdict(Phase.FAILED, "DeadlineExceeded", "killed at 1s (exit code 143)", 143)),
        (facts(outcome=Outcome(OutcomeKind.CANCELLED, 143, message="user")),
         Verdict(Phase.CANCELLED, "Cancelled", "cancelled: user", 143)),
        (facts(outcome=Outcome(OutcomeKind.REJECTED, reason="InvalidPool", message="no pool")),
         Verdict(Phase.FAILED, "InvalidPool", "no pool")),
        (facts(runner_alive=False, cancel_requested=True),
         Verdict(Phase.CANCELLED, "Cancelled", "cancelled")),
        (facts(runner_alive=False),
         Verdict(Phase.LOST, "RunnerVanished",
                 "the attempt's runner process vanished without a result")),
    ],
)
def test_derive_status(given: FolderFacts, expected: Verdict) -> None:
    assert derive_status(given) == expected


def test_only_starting_and_running_are_not_final() -> None:
    assert [phase for phase in Phase if not phase.final] == [Phase.STARTING, Phase.RUNNING]


# -- backoff ---------------------------------------------------------------------------------------


def test_backoff_grows_exponentially_to_the_maximum_with_full_jitter() -> None:
    backoff = Backoff(min_s=0.5, max_s=4.0)
    ceilings = [backoff.next_delay(lambda low, high: high) for _ in range(6)]
    floors = [backoff.next_delay(lambda low, high: low) for _ in range(2)]

    assert ceilings == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    assert floors == [0.5, 0.5]


def test_backoff_reset_starts_over() -> None:
    backoff = Backoff(min_s=0.5, max_s=4.0)
    for _ in range(5):
        backoff.next_delay(lambda low, high: high)

    backoff.reset()

    assert backoff.next_delay(lambda low, high: high) == 0.5
