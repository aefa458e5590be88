"""The real agent Connection receiving ControlBatch messages from a fake control plane over
real gRPC: it says in its Hello that it accepts them, and hands their messages to the
launcher one by one, in order, as if they had come alone."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from fleet.v1 import agent_pb2

from dataplane_agent.connection import Connection
from dataplane_agent.domain.attempt import AttemptStatus, Phase
from dataplane_agent.domain.capacity import PoolReport
from dataplane_agent.launcher.base import LaunchRequest
from dataplane_agent.pool_file import load_pool_file
from tests.agent.pools import fixed_pools
from tests.agent.test_agent_connection import FakeControlPlane, launch, settings_for, start_server


class RecordingLauncher:
    """A launcher that runs nothing and records what the connection asked of it; a forget
    of an id in ``failing`` raises OSError (a disk that refused)."""

    def __init__(self, failing: frozenset[str] = frozenset()) -> None:
        self.calls: list[tuple[str, str]] = []
        self.failing = failing
        self.asked = asyncio.Event()

    def _record(self, verb: str, attempt_id: str) -> None:
        self.calls.append((verb, attempt_id))
        self.asked.set()

    async def launch(self, request: LaunchRequest) -> AttemptStatus:
        self._record("launch", request.attempt_id)
        return AttemptStatus(request.attempt_id, request.job_id, request.epoch, request.pool,
                             Phase.STARTING)

    async def reject(self, request: LaunchRequest, reason: str, message: str) -> AttemptStatus:
        self._record("reject", request.attempt_id)
        return AttemptStatus(request.attempt_id, request.job_id, request.epoch, request.pool,
                             Phase.FAILED, reason=reason, message=message)

    async def cancel(self, attempt_id: str, reason: str, grace_s: float) -> bool:
        self._record("cancel", attempt_id)
        return True

    async def forget(self, attempt_id: str) -> bool:
        self._record("forget", attempt_id)
        if attempt_id in self.failing:
            raise OSError(f"cannot remove the folder of {attempt_id}")
        return True

    async def read_log(self, attempt_id: str, tail_bytes: int) -> bytes:
        return b""

    def statuses(self) -> list[AttemptStatus]:
        return []

    def pools(self) -> list[PoolReport]:
        return fixed_pools({"h100": 4})

    def knows(self, attempt_id: str) -> bool:
        return False

    async def wait_for(self, count: int) -> list[tuple[str, str]]:
        """The calls once there are at least this many (15 s at most)."""
        async with asyncio.timeout(15):
            while len(self.calls) < count:
                self.asked.clear()
                await self.asked.wait()
        return self.calls


@pytest.fixture
async def fake() -> AsyncIterator[tuple[FakeControlPlane, int]]:
    control_plane = FakeControlPlane()
    server, port = await start_server(control_plane)
    yield control_plane, port
    await server.stop(grace=None)


@pytest.fixture
def connection(
    fake: tuple[FakeControlPlane, int], tmp_path: Path, workdir: Path
) -> Connection:
    settings = settings_for(tmp_path, workdir, fake[1])
    return Connection(settings, load_pool_file(settings.pools_file), "test-agent")


def running(connection: Connection, launcher: RecordingLauncher) -> asyncio.Task[int]:
    return asyncio.create_task(connection.run(launcher))


async def stopped(task: asyncio.Task[int]) -> None:
    if task.done():   # the connection gave up by itself: say why
        raise AssertionError(f"the connection ended: {task.result()}")
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


def batch(*messages: agent_pb2.ControlMessage) -> agent_pb2.ControlMessage:
    return agent_pb2.ControlMessage(batch=agent_pb2.ControlBatch(messages=messages))


def launch_of(attempt_id: str) -> agent_pb2.ControlMessage:
    return agent_pb2.ControlMessage(launch=launch(attempt_id, ["true"]))


def forget_of(attempt_id: str) -> agent_pb2.ControlMessage:
    return agent_pb2.ControlMessage(forget=agent_pb2.Forget(attempt_id=attempt_id))


async def test_the_agent_says_it_accepts_batches_and_acts_on_one_in_order(
    fake: tuple[FakeControlPlane, int], connection: Connection
) -> None:
    control_plane, _ = fake
    launcher = RecordingLauncher()
    task = running(connection, launcher)
    try:
        await control_plane.expect("heartbeat", what="right after the welcome")
        [hello] = control_plane.hellos
        assert hello.accepts_batches and hello.dataplane == "test-dp"

        await control_plane.to_agent.put(batch(
            launch_of("a1"), launch_of("a2"), forget_of("old"), launch_of("a3"),
        ))
        await control_plane.to_agent.put(launch_of("after"))   # a plain one still works

        assert await launcher.wait_for(5) == [
            ("launch", "a1"), ("launch", "a2"), ("forget", "old"), ("launch", "a3"),
            ("launch", "after"),
        ]
    finally:
        await stopped(task)


async def test_a_failing_message_does_not_stop_the_rest_and_a_nested_batch_is_ignored(
    fake: tuple[FakeControlPlane, int], connection: Connection, caplog: pytest.LogCaptureFixture
) -> None:
    control_plane, _ = fake
    caplog.set_level(logging.WARNING, logger="dataplane_agent")
    launcher = RecordingLauncher(failing=frozenset({"stuck"}))
    task = running(connection, launcher)
    try:
        await control_plane.expect("heartbeat", what="right after the welcome")
        await control_plane.to_agent.put(batch(
            forget_of("stuck"), batch(launch_of("nested")), launch_of("b1"),
        ))
        await control_plane.to_agent.put(launch_of("b2"))

        assert await launcher.wait_for(3) == [
            ("forget", "stuck"), ("launch", "b1"), ("launch", "b2"),
        ]
        assert "could not act on the control plane's forget" in caplog.text
        assert "ignoring a batch inside a batch" in caplog.text
        assert len(control_plane.hellos) == 1   # the session went on
    finally:
        await stopped(task)
