"""An agent's /metrics, scraped over real HTTP on 127.0.0.1 while the agent runs against a
fake control plane (a real grpc.aio server) and launches real processes."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import pytest
from fleet.v1 import agent_pb2, agent_pb2_grpc, types_pb2
from google.protobuf.duration_pb2 import Duration
from typer.testing import CliRunner

import dataplane_agent
from dataplane_agent import AgentSettings, stop_all_attempts
from dataplane_agent.agent import serve
from dataplane_agent.pool_file import load_pool_file
from fleet_cli.main import app
from tests.metrics.exposition import Samples, parse, series, value
from tests.ports import free_port

POOLS_YAML = """\
dataplane: {name: test-dp, region: eu-west-1, cloud: onprem}
pools:
  - {name: h100, purchase_type: spot, gpu_model: H100, gpu_memory_gb: 80, gpu_count: 4}
  - {name: l4, purchase_type: reserved, gpu_model: L4, gpu_memory_gb: 24, gpu_count: 2}
"""
ALL_PHASES = ("starting", "running", "succeeded", "failed", "cancelled", "preempted", "lost")


class FakeControlPlane(agent_pb2_grpc.AgentServiceServicer):
    """Welcomes every agent (heartbeats every 0.1 s), records what it sends, and sends
    what a test puts in ``to_agent``."""

    def __init__(self) -> None:
        self.from_agent: asyncio.Queue[agent_pb2.AgentMessage] = asyncio.Queue()
        self.to_agent: asyncio.Queue[agent_pb2.ControlMessage] = asyncio.Queue()

    async def Connect(self, request_iterator: Any, context: Any) -> Any:  # type: ignore[override]
        await context.read()   # the hello
        await context.write(agent_pb2.ControlMessage(welcome=agent_pb2.Welcome(
            session_id="s", heartbeat_interval=Duration(nanos=100_000_000),
        )))

        async def send() -> None:
            while True:
                await context.write(await self.to_agent.get())

        sender = asyncio.create_task(send())
        try:
            while (message := await context.read()) is not grpc.aio.EOF:
                self.from_agent.put_nowait(message)
        finally:
            sender.cancel()

    async def expect(self, kind: str, check: Callable[[Any], bool] = lambda _: True) -> Any:
        async def find() -> Any:
            while True:
                message = await self.from_agent.get()
                if message.WhichOneof("body") == kind and check(getattr(message, kind)):
                    return getattr(message, kind)

        return await asyncio.wait_for(find(), 15)


@pytest.fixture
def workdir(tmp_path: Path) -> Iterator[Path]:
    work = tmp_path / "work"
    work.mkdir()
    yield work
    stop_all_attempts(work)


@contextlib.asynccontextmanager
async def fake_control_plane() -> AsyncIterator[tuple[FakeControlPlane, grpc.aio.Server, int]]:
    fake = FakeControlPlane()
    server = grpc.aio.server()
    agent_pb2_grpc.add_AgentServiceServicer_to_server(fake, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield fake, server, port
    finally:
        await server.stop(grace=None)


def settings_for(tmp_path: Path, workdir: Path, port: int, metrics_port: int) -> AgentSettings:
    pools = tmp_path / "pools.yaml"
    pools.write_text(POOLS_YAML)
    return AgentSettings(
        control_plane=f"127.0.0.1:{port}", pools_file=pools, join_token="t", workdir=workdir,
        reconnect_min_s=0.05, reconnect_max_s=0.3, poll_interval_s=0.05, kill_grace_s=1.0,
        insecure=True, metrics_listen=f"127.0.0.1:{metrics_port}",
    )


async def scrape(port: int) -> Samples:
    """GET /metrics from another thread, as Prometheus would (the agent's loop runs here)."""
    def get() -> bytes:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
            body: bytes = reply.read()
            return body

    return parse(await asyncio.to_thread(get))


async def scrape_until(port: int, check: Callable[[Samples], bool], what: str) -> Samples:
    for _ in range(300):
        samples = await scrape(port)
        if check(samples):
            return samples
        await asyncio.sleep(0.05)
    raise AssertionError(f"the agent's metrics never showed {what}: {samples}")


def attempts(samples: Samples) -> dict[str, float]:
    return {phase: count for phase, count in series(samples, "fleet_agent_attempts", "phase")
            .items() if count}


def gpus(samples: Samples) -> dict[tuple[str, str], tuple[float | None, float | None]]:
    keys = [("h100", "spot"), ("l4", "reserved")]
    return {
        key: (value(samples, "fleet_agent_gpus_total", pool=key[0], tier=key[1]),
              value(samples, "fleet_agent_gpus_free", pool=key[0], tier=key[1]))
        for key in keys
    }


def launch(attempt_id: str, command: list[str], gpus: int) -> agent_pb2.ControlMessage:
    return agent_pb2.ControlMessage(launch=agent_pb2.Launch(
        attempt_id=attempt_id, job_id=f"job-{attempt_id}", epoch=1, pool="h100",
        spec=types_pb2.JobSpec(command=command, resources=types_pb2.Resources(gpus=gpus)),
    ))


async def test_an_agent_s_metrics_follow_its_session_attempts_and_pools(
    tmp_path: Path, workdir: Path
) -> None:
    metrics_port = free_port()
    go = tmp_path / "go"
    async with fake_control_plane() as (fake, server, port):
        settings = settings_for(tmp_path, workdir, port, metrics_port)
        stop = asyncio.Event()
        agent = asyncio.create_task(serve(settings, load_pool_file(settings.pools_file), stop))
        try:
            await fake.expect("heartbeat")
            first = await scrape(metrics_port)
            assert value(first, "fleet_agent_connected") == 1
            assert value(first, "fleet_agent_reconnects_total") == 0
            assert value(first, "fleet_agent_launches_total") == 0
            assert set(series(first, "fleet_agent_attempts", "phase")) == set(ALL_PHASES)
            assert attempts(first) == {}
            assert gpus(first) == {("h100", "spot"): (4, 4), ("l4", "reserved"): (2, 2)}
            age = value(first, "fleet_agent_heartbeat_age_seconds")
            assert age is not None and 0 <= age < 1

            gated = ["sh", "-c", f"while [ ! -e {go} ]; do sleep 0.02; done"]
            await fake.to_agent.put(launch("a1", gated, gpus=3))
            await fake.expect(
                "attempt_update",
                lambda u: u.status.phase == types_pb2.ATTEMPT_PHASE_RUNNING,
            )
            await fake.to_agent.put(launch("a1", gated, gpus=3))   # a repeat starts nothing
            running = await scrape_until(
                metrics_port, lambda s: attempts(s) == {"running": 1}, "a1 running"
            )
            assert gpus(running)[("h100", "spot")] == (4, 1)
            assert value(running, "fleet_agent_launches_total") == 1

            go.touch()
            done = await scrape_until(
                metrics_port, lambda s: attempts(s) == {"succeeded": 1}, "a1 succeeded"
            )
            assert gpus(done)[("h100", "spot")] == (4, 4)

            # The control plane goes away: disconnected, dialing again, no heartbeats.
            await server.stop(grace=None)
            gone = await scrape_until(
                metrics_port,
                lambda s: value(s, "fleet_agent_connected") == 0
                and (value(s, "fleet_agent_reconnects_total") or 0) >= 2,
                "the lost session and the redials",
            )
            silence = value(gone, "fleet_agent_heartbeat_age_seconds")
            await asyncio.sleep(0.5)
            later = value(await scrape(metrics_port), "fleet_agent_heartbeat_age_seconds")
            assert silence is not None and later is not None and later >= silence + 0.5
        finally:
            stop.set()
            assert await asyncio.wait_for(agent, 10) == 0

    with pytest.raises(urllib.error.URLError):   # the port closed with the agent
        await scrape(metrics_port)


async def test_a_metrics_port_already_taken_stops_the_agent_with_exit_1(
    tmp_path: Path, workdir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="dataplane_agent")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        async with fake_control_plane() as (_, _, port):
            settings = settings_for(tmp_path, workdir, port, taken.getsockname()[1])
            code = await asyncio.wait_for(
                serve(settings, load_pool_file(settings.pools_file)), 15
            )
    assert code == 1
    assert "the agent stopped: [Errno 98] Address already in use" in caplog.text


# -- the flag -----------------------------------------------------------------------------------


@pytest.fixture
def agents_run(monkeypatch: pytest.MonkeyPatch) -> list[AgentSettings]:
    calls: list[AgentSettings] = []

    def run_agent(settings: AgentSettings) -> int:
        calls.append(settings)
        return 0

    monkeypatch.setattr(dataplane_agent, "run_agent", run_agent, raising=False)
    return calls


def test_the_metrics_port_is_off_unless_asked_for(
    agents_run: list[AgentSettings], tmp_path: Path
) -> None:
    pools = tmp_path / "pools.yaml"
    pools.write_text("dataplane: {name: eu-west}\n")
    runner = CliRunner(env={"FLEET_JOIN_TOKEN": "t", "FLEET_INSECURE": None})
    common = ["agent", "--control-plane", "cp.example:443", "--pools", str(pools)]
    with restored_logging():
        assert runner.invoke(app, common).exit_code == 0
        asked = runner.invoke(app, [*common, "--metrics-listen", "0.0.0.0:9101"])
        assert asked.exit_code == 0, asked.output
        wrong = runner.invoke(app, [*common, "--metrics-listen", "9101"])
    assert [settings.metrics_listen for settings in agents_run] == [None, "0.0.0.0:9101"]
    assert wrong.exit_code == 2 and "--metrics-listen" in wrong.stderr


@contextlib.contextmanager
def restored_logging() -> Iterator[None]:
    """The agent command configures the root logger: put it back for the other tests."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        yield
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
