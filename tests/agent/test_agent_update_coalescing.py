"""An agent that fell behind sends its waiting attempt changes in one message, in order,
without reordering them around heartbeats or log chunks."""

from __future__ import annotations

import asyncio

from fleet.v1 import agent_pb2

from dataplane_agent import wire


def _update(attempt_id: str, phase: int) -> agent_pb2.AgentMessage:
    return agent_pb2.AgentMessage(
        attempt_update=agent_pb2.AttemptUpdate(
            status=agent_pb2.AttemptStatus(attempt_id=attempt_id, phase=phase)  # type: ignore[arg-type]
        )
    )


def _ids(message: agent_pb2.AgentMessage) -> list[str]:
    update = message.attempt_update
    return [update.status.attempt_id, *(s.attempt_id for s in update.more)]


def test_waiting_updates_fold_into_the_first_until_another_kind_of_message() -> None:
    outbox: asyncio.Queue[agent_pb2.AgentMessage] = asyncio.Queue()
    for message in (_update("b-1", 3), _update("a-1", 4),
                    agent_pb2.AgentMessage(heartbeat=agent_pb2.Heartbeat(seq=7)),
                    _update("c-1", 3)):
        outbox.put_nowait(message)
    first = _update("a-1", 3)
    follower = wire.coalesce_updates(first, outbox)
    assert _ids(first) == ["a-1", "b-1", "a-1"]
    assert [s.phase for s in first.attempt_update.more] == [3, 4]
    assert follower is not None and follower.heartbeat.seq == 7
    assert outbox.qsize() == 1 and _ids(outbox.get_nowait()) == ["c-1"]


def test_other_messages_and_an_empty_outbox_are_left_alone() -> None:
    outbox: asyncio.Queue[agent_pb2.AgentMessage] = asyncio.Queue()
    outbox.put_nowait(_update("b-1", 3))
    heartbeat = agent_pb2.AgentMessage(heartbeat=agent_pb2.Heartbeat(seq=1))
    assert wire.coalesce_updates(heartbeat, outbox) is None
    assert outbox.qsize() == 1
    alone = _update("a-1", 3)
    outbox.get_nowait()
    assert wire.coalesce_updates(alone, outbox) is None and _ids(alone) == ["a-1"]


def test_one_message_carries_at_most_the_limit() -> None:
    outbox: asyncio.Queue[agent_pb2.AgentMessage] = asyncio.Queue()
    for index in range(wire.MAX_UPDATE_STATUSES + 5):
        outbox.put_nowait(_update(f"x{index}-1", 3))
    first = _update("first-1", 3)
    wire.coalesce_updates(first, outbox)
    assert len(_ids(first)) == wire.MAX_UPDATE_STATUSES
    assert outbox.qsize() == 6
