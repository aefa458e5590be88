"""The agent against a fake control plane: a real grpc.aio server on 127.0.0.1."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import pytest
from fleet.v1 import agent_pb2, agent_pb2_grpc, types_pb2
from flyteidl.core import literals_pb2
from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp

from dataplane_agent import AgentSettings, run_agent
from dataplane_agent.agent import serve
from dataplane_agent.pool_file import load_pool_file

TOKEN = "s3cret"
POOLS_YAML = """\
dataplane:
  name: test-dp
  region: eu-west-1
  cloud: onprem
  labels: {site: lab}
pools:
  - name: h100
    purchase_type: spot
    gpu_model: H100
    gpu_memory_gb: 80
    gpu_count: 4
    price_per_gpu_hour: 1.5
    interconnect: nvlink
"""
Phase = types_pb2.AttemptPhase


class FakeControlPlane(agent_pb2_grpc.AgentServiceServicer):
    """Checks the hello, welcomes with a short interval, records what the agent sends, and
    sends what a test puts in ``to_agent``."""

    def __init__(self) -> None:
        self.hellos: list[agent_pb2.Hello] = []
        self.from_agent: asyncio.Queue[agent_pb2.AgentMessage] = asyncio.Queue()
        self.to_agent: asyncio.Queue[agent_pb2.ControlMessage] = asyncio.Queue()

    # A coroutine handler using context.read/write, which grpc.aio accepts beside iterators.
    async def Connect(self, request_iterator: Any, context: Any) -> Any:  # type: ignore[override]
        first = await context.read()
        assert first.WhichOneof("body") == "hello", "the first message must be a hello"
        if first.hello.credential != TOKEN:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "unknown join token")
        self.hellos.append(first.hello)
        await context.write(agent_pb2.ControlMessage(welcome=agent_pb2.Welcome(
            session_id=f"session-{len(self.hellos)}",
            heartbeat_interval=Duration(nanos=100_000_000),
        )))

        async def send() -> None:
            while True:
                await context.write(await self.to_agent.get())

        sender = asyncio.create_task(send())
        try:
            while (message := await context.read()) is not grpc.aio.EOF:
                if message.HasField("attempt_update"):
                    # The tests look at one change at a time; the agent may send several
                    # in one message (status, then `more`, in order).
                    update = message.attempt_update
                    for status in (update.status, *update.more):
                        self.from_agent.put_nowait(agent_pb2.AgentMessage(
                            attempt_update=agent_pb2.AttemptUpdate(status=status)))
                else:
                    self.from_agent.put_nowait(message)
        finally:
            sender.cancel()

    async def send(self, **body: Any) -> None:
        await self.to_agent.put(agent_pb2.ControlMessage(**body))

    async def expect(
        self, kind: str, check: Callable[[Any], bool] = lambda _: True, what: str = ""
    ) -> Any:
        """The next message of this kind (heartbeat, attempt_update, log_chunk) passing check."""
        async def find() -> Any:
            while True:
                message = await self.from_agent.get()
                if message.WhichOneof("body") == kind and check(getattr(message, kind)):
                    return getattr(message, kind)

        try:
            return await asyncio.wait_for(find(), 15)
        except TimeoutError:
            raise AssertionError(f"no {kind} {what}") from None


async def start_server(
    control_plane: FakeControlPlane, port: int = 0
) -> tuple[grpc.aio.Server, int]:
    server = grpc.aio.server(options=[
        ("grpc.http2.min_recv_ping_interval_without_data_ms", 1000),
        ("grpc.keepalive_permit_without_calls", 1),
    ])
    agent_pb2_grpc.add_AgentServiceServicer_to_server(control_plane, server)
    bound = server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    return server, bound


def settings_for(tmp_path: Path, workdir: Path, port: int, token: str = TOKEN) -> AgentSettings:
    pools = tmp_path / "pools.yaml"
    pools.write_text(POOLS_YAML)
    return AgentSettings(
        control_plane=f"127.0.0.1:{port}", pools_file=pools, join_token=token, workdir=workdir,
        reconnect_min_s=0.05, reconnect_max_s=0.3, poll_interval_s=0.05, kill_grace_s=1.0,
        insecure=True,   # the fake control plane speaks plaintext
    )


@contextlib.asynccontextmanager
async def running_agent(settings: AgentSettings) -> AsyncIterator[asyncio.Task[int]]:
    stop = asyncio.Event()
    agent = asyncio.create_task(serve(settings, load_pool_file(settings.pools_file), stop))
    try:
        yield agent
    finally:
        stop.set()
        done, _ = await asyncio.wait({agent}, timeout=10)
        assert agent in done, "the agent did not stop"
        assert agent.result() == 0


def launch(attempt_id: str, command: list[str], gpus: int = 1) -> agent_pb2.Launch:
    return agent_pb2.Launch(
        attempt_id=attempt_id, job_id=f"job-{attempt_id}", epoch=3, pool="h100",
        spec=types_pb2.JobSpec(command=command, resources=types_pb2.Resources(gpus=gpus)),
    )


def listed(heartbeat: agent_pb2.Heartbeat) -> dict[str, int]:
    return {a.attempt_id: a.phase for a in heartbeat.attempts}


def gated(go: Path, then: str = "true") -> list[str]:
    return ["sh", "-c", f"while [ ! -e {go} ]; do sleep 0.02; done; {then}"]


@pytest.fixture
async def control_plane() -> AsyncIterator[tuple[FakeControlPlane, int]]:
    fake = FakeControlPlane()
    server, port = await start_server(fake)
    yield fake, port
    await server.stop(grace=None)


async def test_hello_heartbeats_launch_updates_logs_and_forget(
    control_plane: tuple[FakeControlPlane, int], tmp_path: Path, workdir: Path
) -> None:
    fake, port = control_plane
    go = tmp_path / "go"
    async with running_agent(settings_for(tmp_path, workdir, port)):
        first = await fake.expect("heartbeat", what="right after the welcome")
        hello = fake.hellos[0]
        assert (hello.dataplane, hello.region, hello.cloud) == ("test-dp", "eu-west-1", "onprem")
        assert (hello.credential, dict(hello.labels)) == (TOKEN, {"site": "lab"})
        assert hello.agent_version
        [pool] = first.pools
        assert (pool.name, pool.gpu_total, pool.gpu_free, pool.gpu_model) == ("h100", 4, 4, "H100")
        assert (pool.purchase_type, pool.region, pool.price_per_gpu_hour) == (
            types_pb2.PURCHASE_TYPE_SPOT, "eu-west-1", 1.5
        )
        assert list(first.attempts) == []

        await fake.send(launch=launch("a1", gated(go, "echo all done"), gpus=3))

        running = await fake.expect(
            "attempt_update", lambda u: u.status.phase == Phase.ATTEMPT_PHASE_RUNNING, "RUNNING"
        )
        assert (running.status.attempt_id, running.status.job_id) == ("a1", "job-a1")
        assert (running.status.epoch, running.status.pool) == (3, "h100")
        beat = await fake.expect("heartbeat", lambda h: "a1" in listed(h), "listing a1")
        assert listed(beat)["a1"] == Phase.ATTEMPT_PHASE_RUNNING
        assert beat.pools[0].gpu_free == 1
        assert beat.seq > first.seq

        go.touch()

        done = await fake.expect(
            "attempt_update", lambda u: u.status.phase == Phase.ATTEMPT_PHASE_SUCCEEDED, "done"
        )
        assert done.status.exit_code == 0
        assert done.status.HasField("started_at") and done.status.HasField("finished_at")
        beat = await fake.expect(
            "heartbeat", lambda h: listed(h).get("a1") == Phase.ATTEMPT_PHASE_SUCCEEDED, "done"
        )
        assert beat.pools[0].gpu_free == 4

        await fake.send(log_request=agent_pb2.LogRequest(request_id="r1", attempt_id="a1"))
        chunk = await fake.expect("log_chunk", what="for r1")
        assert (chunk.request_id, chunk.data) == ("r1", b"all done\n")
        assert (chunk.eof, chunk.error) == (True, "")

        await fake.send(log_request=agent_pb2.LogRequest(request_id="r2", attempt_id="nope"))
        chunk = await fake.expect("log_chunk", what="for r2")
        assert (chunk.request_id, chunk.eof, chunk.error) == ("r2", True, "unknown attempt 'nope'")

        await fake.send(forget=agent_pb2.Forget(attempt_id="a1"))
        await fake.expect("heartbeat", lambda h: "a1" not in listed(h), "without a1")


async def test_a_long_log_comes_in_chunks_of_at_most_64_kib(
    control_plane: tuple[FakeControlPlane, int], tmp_path: Path, workdir: Path
) -> None:
    fake, port = control_plane
    async with running_agent(settings_for(tmp_path, workdir, port)):
        await fake.send(launch=launch("chatty", [
            sys.executable, "-c", "import sys; sys.stdout.write('x' * 150_000)"
        ]))
        await fake.expect(
            "attempt_update", lambda u: u.status.phase == Phase.ATTEMPT_PHASE_SUCCEEDED, "done"
        )

        await fake.send(log_request=agent_pb2.LogRequest(
            request_id="big", attempt_id="chatty", tail_bytes=140_000
        ))

        chunks = [await fake.expect("log_chunk") for _ in range(3)]
        assert [len(c.data) for c in chunks] == [65536, 65536, 140_000 - 2 * 65536]
        assert [c.eof for c in chunks] == [False, False, True]


# Stands in for pyflyte-execute: writes the LiteralMap given in hex as outputs.pb.
WRITE_OUTPUTS = """\
import os, sys
prefix = sys.argv[1].removeprefix("file://")
os.makedirs(prefix, exist_ok=True)
open(os.path.join(prefix, "outputs.pb"), "wb").write(bytes.fromhex(sys.argv[2]))
"""


async def test_a_flyte_task_stages_in_the_pool_file_s_store_and_its_outputs_ride_every_heartbeat(
    control_plane: tuple[FakeControlPlane, int], tmp_path: Path, workdir: Path
) -> None:
    fake, port = control_plane
    store = tmp_path / "regional-store"
    settings = settings_for(tmp_path, workdir, port)
    settings.pools_file.write_text(POOLS_YAML.replace(
        "  labels: {site: lab}\n", f"  labels: {{site: lab}}\n  store_prefix: file://{store}\n"
    ))
    inputs, outputs = literal_map(x=21), literal_map(o0=42)
    spec = types_pb2.JobSpec(
        project="flytesnacks", domain="development", inputs=inputs,
        command=[sys.executable, "-c", WRITE_OUTPUTS, "{{.outputPrefix}}", outputs.hex()],
    )
    async with running_agent(settings):
        await fake.send(launch=agent_pb2.Launch(
            attempt_id="f1", job_id="job-f1", epoch=1, pool="h100", spec=spec
        ))

        done = await fake.expect(
            "attempt_update", lambda u: u.status.phase == Phase.ATTEMPT_PHASE_SUCCEEDED, "done"
        )
        assert done.status.outputs == outputs
        for _ in range(2):
            beat = await fake.expect("heartbeat", lambda h: "f1" in listed(h), "listing f1")
            assert [a.outputs for a in beat.attempts] == [outputs]

        await fake.send(forget=agent_pb2.Forget(attempt_id="f1"))
        await fake.expect("heartbeat", lambda h: "f1" not in listed(h), "without f1")

    prefix = store / "flytesnacks" / "development" / "job-f1" / "f1"
    assert (prefix / "inputs.pb").read_bytes() == inputs
    recorded = json.loads((workdir / "attempts" / "f1" / "attempt.json").read_text())
    assert recorded["spec"]["project"] == "flytesnacks"
    assert "inputs" not in recorded["spec"]   # staged, not kept twice


def literal_map(**values: int) -> bytes:
    literals = literals_pb2.LiteralMap()
    for name, value in values.items():
        literals.literals[name].scalar.primitive.integer = value
    return bytes(literals.SerializeToString())


async def test_cancel_and_drain(
    control_plane: tuple[FakeControlPlane, int], tmp_path: Path, workdir: Path
) -> None:
    fake, port = control_plane
    async with running_agent(settings_for(tmp_path, workdir, port)):
        await fake.send(launch=launch("long", ["sleep", "30"]))
        await fake.expect("attempt_update", lambda u: u.status.phase == Phase.ATTEMPT_PHASE_RUNNING)

        await fake.send(cancel=agent_pb2.Cancel(attempt_id="long", reason="user asked"))
        cancelled = await fake.expect(
            "attempt_update", lambda u: u.status.phase == Phase.ATTEMPT_PHASE_CANCELLED, "cancel"
        )
        assert cancelled.status.message == "cancelled: user asked"

        await fake.send(drain=agent_pb2.Drain(reason="maintenance"))
        await fake.send(launch=launch("late", ["true"]))
        refused = await fake.expect("attempt_update", lambda u: u.status.attempt_id == "late")
        assert (refused.status.phase, refused.status.reason) == (
            Phase.ATTEMPT_PHASE_FAILED, "Draining"
        )
        assert refused.status.message == "this dataplane is draining (maintenance)"


async def test_attempts_still_running_at_the_drain_deadline_are_cancelled(
    control_plane: tuple[FakeControlPlane, int], tmp_path: Path, workdir: Path
) -> None:
    fake, port = control_plane
    async with running_agent(settings_for(tmp_path, workdir, port)):
        await fake.send(launch=launch("quick", ["true"]))
        await fake.send(launch=launch("endless", ["sleep", "30"]))
        await fake.expect("attempt_update", lambda u: u.status.attempt_id == "endless"
                          and u.status.phase == Phase.ATTEMPT_PHASE_RUNNING)
        deadline = Timestamp()
        deadline.FromDatetime(datetime.now(UTC) + timedelta(seconds=0.3))

        await fake.send(drain=agent_pb2.Drain(reason="decommission", deadline=deadline))

        beat = await fake.expect(
            "heartbeat", lambda h: listed(h).get("endless") == Phase.ATTEMPT_PHASE_CANCELLED
        )
        assert listed(beat)["quick"] == Phase.ATTEMPT_PHASE_SUCCEEDED
        [endless] = [a for a in beat.attempts if a.attempt_id == "endless"]
        assert endless.message == "cancelled: drain deadline passed"


async def test_after_a_control_plane_restart_the_agent_reconnects_and_reports_everything(
    tmp_path: Path, workdir: Path
) -> None:
    before = FakeControlPlane()
    server, port = await start_server(before)
    go = tmp_path / "go"
    async with running_agent(settings_for(tmp_path, workdir, port)):
        await before.send(launch=launch("survivor", gated(go)))
        await before.expect(
            "heartbeat", lambda h: listed(h).get("survivor") == Phase.ATTEMPT_PHASE_RUNNING
        )
        await server.stop(grace=None)

        after = FakeControlPlane()
        server, _ = await start_server(after, port)
        try:
            first = await after.expect("heartbeat", what="after the restart")
            assert listed(first) == {"survivor": Phase.ATTEMPT_PHASE_RUNNING}
            assert first.pools[0].gpu_free == 3
            go.touch()
            await after.expect(
                "attempt_update", lambda u: u.status.phase == Phase.ATTEMPT_PHASE_SUCCEEDED
            )
        finally:
            await server.stop(grace=None)
    assert len(after.hellos) == 1


async def test_a_wrong_token_makes_run_agent_return_1(
    control_plane: tuple[FakeControlPlane, int], tmp_path: Path, workdir: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    fake, port = control_plane
    caplog.set_level(logging.INFO, logger="dataplane_agent")

    code = await asyncio.wait_for(
        asyncio.to_thread(run_agent, settings_for(tmp_path, workdir, port, token="wrong")), 15
    )

    assert code == 1
    assert (
        "control plane refused this agent's credential (UNAUTHENTICATED): unknown join token"
        in caplog.text
    )
    assert fake.hellos == []


async def test_a_bad_pool_file_returns_2_without_dialing(
    tmp_path: Path, workdir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = settings_for(tmp_path, workdir, port=1)
    settings.pools_file.write_text(POOLS_YAML.replace("gpu_count: 4", "gpu_count: -2"))

    assert run_agent(settings) == 2

    assert f"{settings.pools_file}:11:16: pools[0].gpu_count: must be an integer >= 0 (got -2)" in (
        caplog.text
    )
    assert not (workdir / "attempts").exists()


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
async def test_the_agent_process_stops_on_a_signal_with_exit_code_0(
    control_plane: tuple[FakeControlPlane, int], tmp_path: Path, workdir: Path,
    signum: signal.Signals,
) -> None:
    fake, port = control_plane
    settings = settings_for(tmp_path, workdir, port)
    program = (
        "import sys, logging; from pathlib import Path; "
        "from dataplane_agent import AgentSettings, run_agent; "
        f"sys.exit(run_agent(AgentSettings(control_plane={settings.control_plane!r}, "
        f"pools_file=Path({str(settings.pools_file)!r}), join_token={TOKEN!r}, "
        f"workdir=Path({str(workdir)!r}), insecure=True)))"
    )
    agent = subprocess.Popen([sys.executable, "-c", program])
    try:
        await fake.expect("heartbeat", what="from the agent process")

        os.kill(agent.pid, signum)

        assert await asyncio.to_thread(agent.wait, 15) == 0
    finally:
        if agent.poll() is None:
            agent.kill()
            agent.wait()


async def test_the_agent_moves_to_another_replica_when_its_control_plane_dies(
    tmp_path: Path, workdir: Path
) -> None:
    first, second = FakeControlPlane(), FakeControlPlane()
    first_server, first_port = await start_server(first)
    second_server, second_port = await start_server(second)
    settings = dataclasses.replace(
        settings_for(tmp_path, workdir, first_port),
        control_plane=f"127.0.0.1:{first_port},127.0.0.1:{second_port}",
    )
    go = tmp_path / "go"
    try:
        async with running_agent(settings):
            await first.expect("heartbeat", what="on the first replica")
            await first.send(launch=launch("a1", gated(go)))
            await first.expect("attempt_update", lambda u: u.status.attempt_id == "a1",
                               "for the launch")
            await first_server.stop(grace=None)

            beat = await second.expect("heartbeat", what="on the second replica")
            assert second.hellos and listed(beat).keys() == {"a1"}   # it kept running
            go.touch()
            await second.expect(
                "attempt_update",
                lambda u: u.status.phase == types_pb2.ATTEMPT_PHASE_SUCCEEDED, "success")
            assert len(first.hellos) == 1
    finally:
        await second_server.stop(grace=None)
