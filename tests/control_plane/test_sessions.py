"""AgentSession and SessionHub alone: what goes down an agent's stream, in which messages
(batches only to agents that accept them, within their limits), and which launches a
stream has carried lately (so a heartbeat that predates one does not send it twice)."""

from __future__ import annotations

import asyncio

from fleet.v1 import agent_pb2, types_pb2

from control_plane.sessions import MAX_BATCH_BYTES, MAX_BATCH_MESSAGES, AgentSession, SessionHub


class FakeMonotonic:
    """A monotonic clock the test moves by hand."""

    def __init__(self, now: float = 100.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def forget(attempt_id: str) -> agent_pb2.ControlMessage:
    return agent_pb2.ControlMessage(forget=agent_pb2.Forget(attempt_id=attempt_id))


def launch(attempt_id: str, inputs_bytes: int = 0) -> agent_pb2.ControlMessage:
    spec = types_pb2.JobSpec(command=["train.py"], inputs=b"x" * inputs_bytes)
    return agent_pb2.ControlMessage(
        launch=agent_pb2.Launch(attempt_id=attempt_id, job_id="j", epoch=1, spec=spec)
    )


async def take(session: AgentSession) -> agent_pb2.ControlMessage | None:
    """The session's next message to write (failing, not hanging, when none comes)."""
    return await asyncio.wait_for(session.next_message(), 1.0)


def ids(message: agent_pb2.ControlMessage | None) -> list[str]:
    """The attempt ids a written message carries, in order (a batch: all of its own)."""
    assert message is not None
    parts = message.batch.messages if message.HasField("batch") else [message]
    return [getattr(m, m.WhichOneof("body") or "").attempt_id for m in parts]


async def test_an_agent_that_does_not_accept_batches_gets_one_message_at_a_time() -> None:
    session = AgentSession("dp")
    for attempt_id in ("a", "b", "c"):
        session.send(forget(attempt_id))
    written = [await take(session) for _ in range(3)]
    assert [m.WhichOneof("body") for m in written if m is not None] == ["forget"] * 3
    assert [ids(m) for m in written] == [["a"], ["b"], ["c"]]


async def test_waiting_messages_go_in_one_batch_in_order_and_a_lone_one_goes_plain() -> None:
    session = AgentSession("dp", accepts_batches=True)
    session.send(launch("a"))
    session.send(forget("b"))
    session.send(launch("c"))
    batch = await take(session)
    assert batch is not None and batch.HasField("batch")
    assert [m.WhichOneof("body") for m in batch.batch.messages] == ["launch", "forget", "launch"]
    assert ids(batch) == ["a", "b", "c"]
    assert session.outbox.empty()

    session.send(forget("d"))   # nothing waits behind it: no batch of one
    alone = await take(session)
    assert alone is not None and alone.WhichOneof("body") == "forget" and ids(alone) == ["d"]


async def test_a_message_over_the_byte_limit_waits_for_the_next_call() -> None:
    session = AgentSession("dp", accepts_batches=True)
    third = MAX_BATCH_BYTES * 3 // 8   # two fit in a batch, three do not
    session.send(forget("small"))
    session.send(launch("big-1", third))
    session.send(launch("big-2", third))
    session.send(launch("big-3", third))
    session.send(forget("tail"))
    first = await take(session)
    assert ids(first) == ["small", "big-1", "big-2"]
    assert first is not None and first.ByteSize() <= MAX_BATCH_BYTES + 64
    second = await take(session)   # the held one comes first
    assert ids(second) == ["big-3", "tail"]
    assert session.outbox.empty()


async def test_a_message_bigger_than_the_limit_travels_alone() -> None:
    session = AgentSession("dp", accepts_batches=True)
    session.send(launch("huge", MAX_BATCH_BYTES + 1))
    session.send(forget("next"))
    huge = await take(session)
    assert huge is not None and huge.WhichOneof("body") == "launch" and ids(huge) == ["huge"]
    after = await take(session)
    assert after is not None and after.WhichOneof("body") == "forget" and ids(after) == ["next"]


async def test_a_batch_holds_at_most_the_message_limit() -> None:
    session = AgentSession("dp", accepts_batches=True)
    sent = [f"a{i}" for i in range(MAX_BATCH_MESSAGES + 500)]
    for attempt_id in sent:
        session.send(forget(attempt_id))
    first, second = await take(session), await take(session)
    assert ids(first) == sent[:MAX_BATCH_MESSAGES]
    assert ids(second) == sent[MAX_BATCH_MESSAGES:]


async def test_a_close_behind_waiting_messages_ends_the_stream_after_them() -> None:
    session = AgentSession("dp", accepts_batches=True)
    session.send(forget("a"))
    session.send(forget("b"))
    session.close("agent closed the stream")
    session.send(forget("too-late"))   # a closed session takes nothing more
    assert ids(await take(session)) == ["a", "b"]
    assert await take(session) is None

    alone = AgentSession("dp", accepts_batches=True)
    alone.send(forget("a"))
    alone.close("agent closed the stream")
    last = await take(alone)
    assert last is not None and last.WhichOneof("body") == "forget"   # no batch of one
    assert await take(alone) is None


async def test_a_launch_counts_as_sent_for_the_sessions_memory() -> None:
    clock = FakeMonotonic(100.0)
    session = AgentSession("dp", launch_memory_s=5.0, monotonic=clock)
    session.send(launch("a"))
    session.send(forget("b"))   # only launches are recorded
    assert session.launched_lately("a")
    assert not session.launched_lately("b")
    assert not session.launched_lately("never-sent")
    clock.now = 104.9
    assert session.launched_lately("a")
    clock.now = 105.1
    assert not session.launched_lately("a")


async def test_old_launches_are_forgotten_as_new_ones_are_sent() -> None:
    clock = FakeMonotonic(100.0)
    session = AgentSession("dp", launch_memory_s=5.0, monotonic=clock)
    for i in range(1000):
        session.send(launch(f"old-{i}"))
    clock.now = 106.0
    session.send(launch("new"))   # no heartbeat asked in between: sending trims too
    assert list(session._launched) == ["new"]


async def test_a_launch_sent_again_counts_from_its_last_sending() -> None:
    clock = FakeMonotonic(100.0)
    session = AgentSession("dp", launch_memory_s=5.0, monotonic=clock)
    session.send(launch("a"))
    clock.now = 101.0
    session.send(launch("b"))
    clock.now = 104.0
    session.send(launch("a"))   # a later heartbeat sent it again
    clock.now = 106.5
    assert session.launched_lately("a")
    assert not session.launched_lately("b")   # older than a's new time: gone


async def test_a_reconnected_dataplane_has_a_session_that_knows_no_launches() -> None:
    clock = FakeMonotonic(100.0)
    hub = SessionHub(monotonic=clock)
    first = hub.open("dp", accepts_batches=True, launch_memory_s=5.0)
    assert first.accepts_batches
    hub.send("dp", launch("a"))
    assert first.launched_lately("a")

    second = hub.open("dp", launch_memory_s=5.0)   # the agent dialed again
    assert not second.accepts_batches
    assert first.closed_reason == "replaced by a newer stream of the same dataplane"
    assert not second.launched_lately("a")
    hub.send("dp", launch("b"))
    clock.now = 104.0   # the hub's clock is the sessions' clock
    assert second.launched_lately("b")
    clock.now = 106.0
    assert not second.launched_lately("b")
    assert ids(await take(first)) == ["a"]
    assert await take(first) is None
