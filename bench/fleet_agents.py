"""Many simulated agents in one asyncio process, for bench/fleet_bench.py.

Each agent is the real `dataplane_agent.connection.Connection`: its own gRPC channel and
stream to the control plane, its own Hello, heartbeats and attempt updates. Only the
launcher is simulated: a launch is RUNNING at once and SUCCEEDED after a delay, and each
Launch's arrival (time.time()) is logged so that the benchmark can compute submit→launch
latency. Every agent dials its own TCP connection (gRPC would otherwise share one between
the channels of a process, unless --shared-connections), as real agents in separate
clusters do.

    .venv/bin/python bench/fleet_agents.py --control-plane 127.0.0.1:PORT --launch-log F

The benchmark drives it with one JSON command a line on stdin and reads one JSON answer a
line on stdout:

    {"cmd": "start", "prefix": "tp", "first": 0, "count": 100, "gpus": 64, "model": "H100",
     "delay": 0.0, "blocked": false, "per_second": 500}   -> {"started": 100}
    {"cmd": "block", "prefix": "tp", "blocked": false}    -> {"agents": 100} (heartbeat now)
    {"cmd": "stop", "prefix": "tp"}                        -> {"stopped": 100, "at": ...}
    {"cmd": "status"}                                      -> {"agents": .., "welcomed": ..}
    {"cmd": "flush"}                                       -> {"written": N}
    {"cmd": "quit"}                                        -> {} and the process ends

A "blocked" agent reports its pools with no free GPU (the benchmark fills a queue that
way). The launch log has one line per launch: {"attempt", "job", "agent", "at"}.
End of stdin ends the process too, so no host outlives the benchmark.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import sys
import time
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "protos"))

import grpc.aio  # noqa: E402

from control_plane.server import tune_garbage_collector  # noqa: E402
from dataplane_agent.connection import Connection  # noqa: E402
from dataplane_agent.domain.attempt import AttemptStatus, Phase  # noqa: E402
from dataplane_agent.domain.capacity import PoolReport  # noqa: E402
from dataplane_agent.launcher.base import (  # noqa: E402
    LaunchRequest,
    StatusListener,
    UnknownAttempt,
    check_attempt_id,
)
from dataplane_agent.pool_file import PoolFile  # noqa: E402
from dataplane_agent.settings import AgentSettings  # noqa: E402

REGION, CLOUD, POOL = "us-east-1", "aws", "gpus"
AGENT_VERSION = "bench-simulated"

log = logging.getLogger("fleet_agents")


class LaunchLog:
    """Launch arrivals kept in memory and appended to the file on `flush` (one write per
    flush, not one per launch: the host must not spend its time on the disk)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._pending: list[str] = []
        self.total = 0

    def record(self, attempt_id: str, job_id: str, agent: str) -> None:
        line = {"attempt": attempt_id, "job": job_id, "agent": agent, "at": time.time()}
        self._pending.append(json.dumps(line))
        self.total += 1

    def flush(self) -> int:
        pending, self._pending = self._pending, []
        if pending:
            with self.path.open("a", encoding="utf-8") as out:
                out.write("\n".join(pending) + "\n")
        return len(pending)


class SimulatedLauncher:
    """The Launcher protocol (dataplane_agent/launcher/base.py) without processes: one pool
    of `gpus` GPUs; every launch is RUNNING at once (the control plane places no more than
    the free GPUs reported) and SUCCEEDED after delay_s. Ended attempts are reported until
    the control plane says to forget them, as the real launchers do."""

    def __init__(
        self, agent: str, gpus: int, model: str, delay_s: float, launch_log: LaunchLog,
        listener: StatusListener, blocked: bool = False,
    ) -> None:
        self.agent = agent
        self.gpus = gpus
        self.model = model
        self.delay_s = delay_s
        self.blocked = blocked
        self.welcomed_at: float | None = None   # the first heartbeat built: a session is up
        self._log = launch_log
        self._listener = listener
        self._attempts: dict[str, AttemptStatus] = {}
        self._held: dict[str, int] = {}          # live attempt -> its GPUs
        self._timers: dict[str, asyncio.TimerHandle] = {}

    def _set(self, status: AttemptStatus) -> AttemptStatus:
        self._attempts[status.attempt_id] = status
        if status.phase.final:
            self._held.pop(status.attempt_id, None)
            timer = self._timers.pop(status.attempt_id, None)
            if timer is not None:
                timer.cancel()
        self._listener(status)
        return status

    async def launch(self, request: LaunchRequest) -> AttemptStatus:
        known = self._attempts.get(request.attempt_id)
        if known is not None:
            return known
        check_attempt_id(request.attempt_id)
        self._log.record(request.attempt_id, request.job_id, self.agent)
        base = AttemptStatus(request.attempt_id, request.job_id, request.epoch, request.pool,
                             Phase.RUNNING, started_at=datetime.now(UTC))
        if request.pool != POOL:
            return self._set(replace(base, phase=Phase.FAILED, reason="InvalidPool",
                                     message=f"unknown pool {request.pool!r}"))
        self._held[request.attempt_id] = request.gpus
        status = self._set(base)
        loop = asyncio.get_running_loop()
        self._timers[request.attempt_id] = loop.call_later(
            self.delay_s, self._succeed, request.attempt_id)
        return status

    def _succeed(self, attempt_id: str) -> None:
        self._timers.pop(attempt_id, None)
        status = self._attempts.get(attempt_id)
        if status is not None and not status.phase.final:
            self._set(replace(status, phase=Phase.SUCCEEDED, exit_code=0,
                              finished_at=datetime.now(UTC)))

    async def reject(self, request: LaunchRequest, reason: str, message: str) -> AttemptStatus:
        status = AttemptStatus(request.attempt_id, request.job_id, request.epoch, request.pool,
                               Phase.FAILED, reason=reason, message=message)
        return self._set(status)

    async def cancel(self, attempt_id: str, reason: str, grace_s: float) -> bool:
        status = self._attempts.get(attempt_id)
        if status is None:
            return False
        if not status.phase.final:
            self._set(replace(status, phase=Phase.CANCELLED, reason="Cancelled",
                              message=f"cancelled: {reason}", finished_at=datetime.now(UTC)))
        return True

    async def forget(self, attempt_id: str) -> bool:
        if attempt_id not in self._attempts:
            return False
        await self.cancel(attempt_id, "forgotten", 0.0)
        del self._attempts[attempt_id]
        return True

    async def read_log(self, attempt_id: str, tail_bytes: int) -> bytes:
        if attempt_id not in self._attempts:
            raise UnknownAttempt(attempt_id)
        return b""

    def statuses(self) -> list[AttemptStatus]:
        return list(self._attempts.values())

    def pools(self) -> list[PoolReport]:
        if self.welcomed_at is None:
            self.welcomed_at = time.time()
        free = 0 if self.blocked else max(0, self.gpus - sum(self._held.values()))
        return [PoolReport(name=POOL, purchase_type="reserved", gpu_model=self.model,
                           gpu_memory_gb=80, gpu_total=self.gpus, gpu_free=free,
                           price_per_gpu_hour=1.0)]

    def knows(self, attempt_id: str) -> bool:
        return attempt_id in self._attempts


def private_connections() -> None:
    """Give every channel of this process its own subchannel pool, hence its own TCP
    connection: the agent's create_channel is used as is, the pool option is added."""
    original = grpc.aio.insecure_channel

    def insecure_channel(target: str, options: Any = None, **kwargs: Any) -> grpc.aio.Channel:
        own = [*(options or []), ("grpc.use_local_subchannel_pool", 1)]
        return original(target, options=own, **kwargs)

    grpc.aio.insecure_channel = insecure_channel   # type: ignore[assignment]


@dataclass
class Agent:
    connection: Connection
    launcher: SimulatedLauncher
    task: asyncio.Task[int]


class Host:
    def __init__(self, control_plane: str, launch_log: LaunchLog) -> None:
        self.settings = AgentSettings(
            control_plane=control_plane, pools_file=Path("simulated"), join_token="",
            workdir=Path("simulated"), insecure=True,
        )
        self.launch_log = launch_log
        self.agents: dict[str, Agent] = {}

    def matching(self, prefix: str) -> list[str]:
        return [name for name in self.agents if name.startswith(prefix)]

    async def start(self, command: dict[str, Any]) -> dict[str, Any]:
        pause = 1.0 / float(command.get("per_second", 1000))
        started = 0
        for index in range(command["first"], command["first"] + command["count"]):
            name = f"{command['prefix']}-{index:05d}"
            if name in self.agents:
                continue
            pool_file = PoolFile.model_validate({
                "dataplane": {"name": name, "region": REGION, "cloud": CLOUD},
                "pools": [{"name": POOL, "purchase_type": "reserved",
                           "gpu_model": command.get("model", "H100"), "gpu_memory_gb": 80,
                           "gpu_count": command["gpus"]}],
            })
            connection = Connection(self.settings, pool_file, AGENT_VERSION)
            launcher = SimulatedLauncher(
                name, command["gpus"], command.get("model", "H100"),
                float(command.get("delay", 0.0)), self.launch_log,
                connection.on_attempt_change, bool(command.get("blocked", False)),
            )
            task = asyncio.create_task(connection.run(launcher), name=name)
            self.agents[name] = Agent(connection, launcher, task)
            started += 1
            await asyncio.sleep(pause)   # a burst of thousands of dials at once helps nobody
        return {"started": started}

    def block(self, command: dict[str, Any]) -> dict[str, Any]:
        names = self.matching(command["prefix"])
        for name in names:
            agent = self.agents[name]
            agent.launcher.blocked = bool(command["blocked"])
            agent.connection.on_pools_changed(agent.launcher)   # heartbeat at once
        return {"agents": len(names)}

    async def stop(self, command: dict[str, Any]) -> dict[str, Any]:
        """Cancel the agents' connections (their streams end, as when an agent stops)."""
        agents = [self.agents.pop(name) for name in self.matching(command["prefix"])]
        at = time.time()
        for agent in agents:
            agent.task.cancel()
        await asyncio.gather(*(a.task for a in agents), return_exceptions=True)
        return {"stopped": len(agents), "at": at}

    def status(self) -> dict[str, Any]:
        welcomed = [a.launcher.welcomed_at for a in self.agents.values()]
        return {
            "agents": len(self.agents),
            "welcomed": sum(1 for at in welcomed if at is not None),
            "launches": self.launch_log.total,
            "ended": sum(1 for a in self.agents.values() if a.task.done()),
        }

    async def serve(self) -> None:
        reader = asyncio.StreamReader(limit=1 << 20)
        loop = asyncio.get_running_loop()
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
        while line := await reader.readline():
            command = json.loads(line)
            match command["cmd"]:
                case "start":
                    answer = await self.start(command)
                case "block":
                    answer = self.block(command)
                case "stop":
                    answer = await self.stop(command)
                case "status":
                    answer = self.status()
                case "flush":
                    answer = {"written": self.launch_log.flush()}
                case "quit":
                    break
                case other:
                    answer = {"error": f"unknown command {other!r}"}
            print(json.dumps(answer), flush=True)
        await self.stop({"prefix": ""})
        self.launch_log.flush()
        print("{}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--control-plane", required=True, metavar="HOST:PORT")
    parser.add_argument("--launch-log", required=True, type=Path)
    parser.add_argument("--shared-connections", action="store_true",
                        help="let gRPC share one TCP connection between the agents' channels")
    args = parser.parse_args()
    # Warnings only: thousands of agents log every connect at info.
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not args.shared_connections:
        private_connections()
    # Thousands of agents in one process allocate like a control plane: the same collector
    # settings keep the harness from taking CPU the control plane should have.
    tune_garbage_collector()
    host = Host(args.control_plane, LaunchLog(args.launch_log))
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(host.serve())


if __name__ == "__main__":
    main()
