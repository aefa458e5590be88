"""The parts bench/chaos.py kills and restarts: a durable throwaway Postgres, control planes
and agents as `fleet` subprocesses on 127.0.0.1, and the cleanup that leaves none behind.

Postgres reuses the tests' server machinery (binary discovery, running as the `postgres`
user when root) but keeps durability on: fsync and synchronous_commit, so that a commit the
control plane acknowledged survives a kill -9 of the server.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from tests.pg_server import DurablePostgres
from tests.ports import free_port

STOP_TIMEOUT_S = 5.0

class ChaosPostgres(DurablePostgres):
    """A durable throwaway server that can also be crashed (kill -9 of every process)."""

    def postmaster_pid(self) -> int | None:
        try:
            return int((self.data_dir / "postmaster.pid").read_text().split()[0])
        except (FileNotFoundError, ValueError, IndexError):
            return None

    def crash(self) -> None:
        """kill -9 the postmaster and every server process at once, as a machine crash
        looks from the clients: nothing is flushed or closed cleanly."""
        postmaster = self.postmaster_pid()
        if postmaster is None:
            return
        victims = [postmaster, *_children(postmaster)]
        for pid in victims:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        _wait_gone(victims, 10.0)

    def is_up(self) -> bool:
        pid = self.postmaster_pid()
        return pid is not None and _alive(pid)

    def stop_keeping_log(self, keep_dir: Path | None) -> None:
        """Stop and delete the server; copy its log to keep_dir first when given."""
        if keep_dir is not None and self.log_file.exists():
            with contextlib.suppress(OSError):
                shutil.copy(self.log_file, keep_dir / "postgres.log")
        self.stop()


@dataclass
class Part:
    """One `fleet` subprocess that chaos may kill and start again with the same arguments."""

    name: str
    kind: str                      # "control-plane" or "agent"
    args: list[str]
    log_file: Path
    env: dict[str, str]
    cwd: Path
    process: subprocess.Popen[bytes] | None = None
    # False while chaos holds it down on purpose; the supervisor restarts any other exit.
    wanted_up: bool = True
    unexpected_exits: list[str] = field(default_factory=list)

    def start(self) -> None:
        with self.log_file.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "fleet_cli", *self.args],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env=self.env, cwd=self.cwd,
                # Own session: a Ctrl-C in the terminal reaches only the harness, which
                # then stops everything in order.
                start_new_session=True,
            )
        self.wanted_up = True

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill9(self) -> None:
        self.wanted_up = False
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(STOP_TIMEOUT_S)

    def stop(self) -> None:
        self.wanted_up = False
        process = self.process
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()

    def log_tail(self, chars: int = 2000) -> str:
        if not self.log_file.exists():
            return ""
        return self.log_file.read_text(errors="replace")[-chars:]


@dataclass(frozen=True)
class Timers:
    heartbeat_s: float
    stale_after_s: float
    lost_after_s: float


def fleet_env(join_token: str) -> dict[str, str]:
    """This interpreter's bin first (the runner and `fleet` itself), unbuffered logs, and
    plaintext (everything listens on 127.0.0.1)."""
    return {
        **os.environ,
        "FLEET_INSECURE": "1",
        "FLEET_JOIN_TOKEN": join_token,
        "PYTHONUNBUFFERED": "1",
        "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
    }


def control_plane_part(
    index: int, root: Path, database_url: str, timers: Timers, env: dict[str, str]
) -> Part:
    """The first control plane migrates the schema at start; the others don't."""
    address = f"127.0.0.1:{free_port()}"
    args = [
        "control-plane", "--listen", address, "--db", database_url,
        "--heartbeat-interval", str(timers.heartbeat_s),
        "--stale-after", str(timers.stale_after_s),
        "--lost-after", str(timers.lost_after_s),
        *([] if index == 0 else ["--no-migrate"]),
        "--insecure",   # plaintext, on 127.0.0.1
        "--no-auth",    # no API keys or join tokens: access is not what chaos tests
    ]
    return Part(f"cp{index + 1}", "control-plane", args, root / f"cp{index + 1}.log", env, root)


def control_plane_address(part: Part) -> str:
    return part.args[part.args.index("--listen") + 1]


def agent_part(
    index: int, root: Path, addresses: list[str], gpus: int, env: dict[str, str]
) -> Part:
    name = f"chaos-a{index + 1}"
    folder = root / "agents" / name
    folder.mkdir(parents=True, exist_ok=True)
    pools = folder / "pools.yaml"
    pools.write_text(yaml.safe_dump({
        "dataplane": {"name": name, "region": "us-east-1", "cloud": "test"},
        "pools": [{"name": "h100", "purchase_type": "reserved", "gpu_model": "H100",
                   "gpu_memory_gb": 80, "gpu_count": gpus}],
    }, sort_keys=False))
    args = [
        "agent", "--control-plane", ",".join(addresses), "--pools", str(pools),
        "--workdir", str(agent_workdir(root, name)),
    ]
    return Part(name, "agent", args, folder / "agent.log", env, root)


def agent_workdir(root: Path, name: str) -> Path:
    return root / "agents" / name / "work"


def stop_everything(agents: list[Part], control_planes: list[Part], root: Path) -> None:
    """Agents, then control planes, then every attempt still running (runners outlive
    their agent by design, so they are stopped from their folders)."""
    from dataplane_agent import stop_all_attempts

    for part in [*agents, *control_planes]:
        part.stop()
    for agent in agents:
        workdir = agent_workdir(root, agent.name)
        if workdir.exists():
            stop_all_attempts(workdir)


def _children(pid: int) -> list[int]:
    """Every process whose parent is pid (Postgres' backends and helpers)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = stat.read_text().rpartition(")")[2].split()
            if int(fields[1]) == pid:
                found.append(int(stat.parent.name))
    return found


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as stat:
            return stat.read().rpartition(")")[2].split()[0] not in ("Z", "X")
    except FileNotFoundError:
        return False


def _wait_gone(pids: list[int], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and any(_alive(pid) for pid in pids):
        time.sleep(0.02)
