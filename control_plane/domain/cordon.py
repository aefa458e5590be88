"""Cordon and drain: taking a dataplane out of service without losing work.

| operator does        | state      | placements | what runs there                           |
|----------------------|------------|------------|-------------------------------------------|
| (nothing)            | ACTIVE     | yes        | runs                                      |
| cordon               | CORDONED   | none       | runs to its end                           |
| drain, deadline T    | DRAINING   | none       | runs until T; then preempted and requeued |
|                      | DRAINED    | none       | nothing is left: safe to take down        |
| uncordon             | ACTIVE     | yes        | runs                                      |

A drain's deadline passing preempts the attempts still live there: the control plane asks
the agent to stop them, and the agent's CANCELLED report is recorded as PREEMPTED (reason
Drained), a free retry, so the job runs elsewhere and spends none of its retry budget. The
state lives in the registry, so it survives control-plane restarts.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

DRAINED_REASON = "Drained"
MAX_REASON = 1024


class DataplaneState(StrEnum):
    ACTIVE = "active"
    CORDONED = "cordoned"
    DRAINING = "draining"
    DRAINED = "drained"


def dataplane_state(
    cordoned_at: datetime | None, drain_deadline: datetime | None, active_attempts: int
) -> DataplaneState:
    if cordoned_at is None:
        return DataplaneState.ACTIVE
    if drain_deadline is None:
        return DataplaneState.CORDONED
    return DataplaneState.DRAINING if active_attempts else DataplaneState.DRAINED


def unavailable_because(
    state: DataplaneState, reason: str, drain_deadline: datetime | None
) -> str:
    """Why a dataplane takes no new work ("" when it does), for explanations."""
    if state is DataplaneState.ACTIVE:
        return ""
    because = f": {reason}" if reason else ""
    if state is DataplaneState.CORDONED:
        return f"dataplane is cordoned{because}"
    assert drain_deadline is not None
    return f"dataplane is {state.value} (deadline {drain_deadline:%Y-%m-%d %H:%M:%S}Z){because}"


def drain_message(reason: str) -> str:
    because = f": {reason}" if reason else ""
    return f"the dataplane's drain deadline passed{because}"
