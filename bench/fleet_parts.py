"""The pieces bench/fleet_bench.py drives: control planes as `fleet` subprocesses (the chaos
harness's Part), hosts of simulated agents (bench/fleet_agents.py) spoken to over their
stdin and stdout, the agents' launch logs, the registry read directly with psycopg, and
the control plane's CPU, RSS and Prometheus histograms read from /proc and /metrics.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import platform
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
from chaos_parts import Part, Timers, control_plane_address, control_plane_part

from fleet_client import PLAINTEXT, FleetClient, FleetError
from tests.pg_server import DurablePostgres
from tests.ports import free_port

ROOT = Path(__file__).resolve().parents[1]
AGENTS_SCRIPT = ROOT / "bench" / "fleet_agents.py"
READY_TIMEOUT_S = 120.0
HOST_ANSWER_TIMEOUT_S = 600.0   # starting 2,500 agents at a few hundred a second
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


class BenchError(Exception):
    """The benchmark could not run (exit 1, the run's folder is kept)."""


# -- control planes ----------------------------------------------------------------------------


def control_plane_has_flag(flag: str) -> bool:
    """Whether this `fleet control-plane` knows the flag (some are being built)."""
    result = subprocess.run([sys.executable, "-m", "fleet_cli", "control-plane", "--help"],
                            capture_output=True, text=True, check=False,
                            env={**os.environ, "COLUMNS": "200"})
    return flag in result.stdout


@dataclass
class ControlPlane:
    part: Part
    address: str
    metrics_url: str | None   # None: this control plane serves no /metrics yet
    conninfo: str             # its database, for psycopg
    timers: Timers

    @property
    def pid(self) -> int:
        assert self.part.process is not None
        return self.part.process.pid


async def start_control_plane(
    pg: DurablePostgres, folder: Path, timers: Timers, env: dict[str, str], metrics: bool
) -> ControlPlane:
    """A control plane on a fresh database of the benchmark's server (it migrates it)."""
    folder.mkdir(parents=True, exist_ok=True)
    database = pg.create_database(folder.name)
    part = control_plane_part(0, folder, pg.url(database), timers, env)
    metrics_url = None
    if metrics:
        taken = control_plane_address(part)
        http = taken
        while http == taken:   # free_port() may hand out the gRPC port again
            http = f"127.0.0.1:{free_port()}"
        part.args += ["--http-listen", http]
        metrics_url = f"http://{http}/metrics"
    part.start()
    address = control_plane_address(part)
    deadline = time.monotonic() + READY_TIMEOUT_S
    while not await asyncio.to_thread(_answers, address):
        if not part.alive() or time.monotonic() > deadline:
            raise BenchError(f"the control plane did not answer on {address}:\n"
                             f"{part.log_tail()}")
        await asyncio.sleep(0.2)
    return ControlPlane(part, address, metrics_url, pg.conninfo(database), timers)


def _answers(address: str) -> bool:
    try:
        with FleetClient(address, timeout_s=2.0, tls=PLAINTEXT) as client:
            client.list_dataplanes()
        return True
    except FleetError:
        return False


# -- hosts of simulated agents -----------------------------------------------------------------


class AgentHost:
    """One bench/fleet_agents.py process: many agents, one command at a time."""

    def __init__(self, name: str, process: asyncio.subprocess.Process, launch_log: Path,
                 log_file: Path) -> None:
        self.name = name
        self.process = process
        self.launch_log = launch_log
        self.log_file = log_file
        self._lock = asyncio.Lock()

    @classmethod
    async def start(cls, name: str, address: str, folder: Path, env: dict[str, str],
                    shared_connections: bool = False) -> AgentHost:
        launch_log, log_file = folder / f"{name}.launches.jsonl", folder / f"{name}.log"
        with log_file.open("ab") as log:
            process = await asyncio.create_subprocess_exec(
                sys.executable, str(AGENTS_SCRIPT), "--control-plane", address,
                "--launch-log", str(launch_log),
                *(["--shared-connections"] if shared_connections else []),
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, env=env,
                start_new_session=True, limit=1 << 20,
            )
        return cls(name, process, launch_log, log_file)

    @property
    def pid(self) -> int:
        return self.process.pid

    async def call(self, cmd: str, **arguments: Any) -> dict[str, Any]:
        assert self.process.stdin is not None and self.process.stdout is not None
        async with self._lock:
            self.process.stdin.write((json.dumps({"cmd": cmd, **arguments}) + "\n").encode())
            await self.process.stdin.drain()
            async with asyncio.timeout(HOST_ANSWER_TIMEOUT_S):
                line = await self.process.stdout.readline()
        if not line:
            tail = self.log_file.read_text(errors="replace")[-2000:]
            raise BenchError(f"agent host {self.name} ended (exit {self.process.returncode}):"
                             f"\n{tail}")
        answer: dict[str, Any] = json.loads(line)
        if "error" in answer:
            raise BenchError(f"agent host {self.name}: {answer['error']}")
        return answer

    def kill9(self) -> float:
        """kill -9: every agent of this host dies at once, mid-stream. Returns when."""
        at = time.time()
        with contextlib.suppress(ProcessLookupError):
            self.process.send_signal(signal.SIGKILL)
        return at

    async def close(self) -> None:
        if self.process.returncode is None:
            with contextlib.suppress(BenchError, OSError, TimeoutError, AssertionError):
                async with asyncio.timeout(20):
                    await self.call("quit")
                    await self.process.wait()
        if self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(signal.SIGKILL)
            await self.process.wait()


async def spread(hosts: list[AgentHost], prefix: str, first: int, count: int,
                 **agent: Any) -> None:
    """Start agents prefix-first..first+count-1, split evenly over the hosts."""
    share, extra = divmod(count, len(hosts))
    calls, start = [], first
    for index, host in enumerate(hosts):
        n = share + (1 if index < extra else 0)
        if n:
            calls.append(host.call("start", prefix=prefix, first=start, count=n, **agent))
        start += n
    await asyncio.gather(*calls)


class LaunchLogs:
    """Every launch the hosts logged: the first one of each job, read as the files grow."""

    def __init__(self) -> None:
        self.first: dict[str, tuple[float, str]] = {}   # job -> (arrival, agent)
        self.all: list[tuple[str, str, float]] = []     # (job, agent, arrival)
        self._offsets: dict[Path, int] = {}

    async def read(self, hosts: list[AgentHost]) -> None:
        for host in hosts:
            if host.process.returncode is None:
                await host.call("flush")
            path = host.launch_log
            if not path.exists():
                continue
            with path.open("rb") as source:
                source.seek(self._offsets.get(path, 0))
                data = source.read()
            end = data.rfind(b"\n") + 1
            self._offsets[path] = self._offsets.get(path, 0) + end
            for line in data[:end].splitlines():
                launch = json.loads(line)
                self.all.append((launch["job"], launch["agent"], launch["at"]))
                self.first.setdefault(launch["job"], (launch["at"], launch["agent"]))


# -- the registry, read directly ---------------------------------------------------------------


class Registry:
    """Cheap questions to the control plane's database (reading it is fine for a bench)."""

    def __init__(self, conn: psycopg.AsyncConnection[tuple[Any, ...]]) -> None:
        self.conn = conn

    @classmethod
    async def open(cls, conninfo: str) -> Registry:
        return cls(await psycopg.AsyncConnection.connect(conninfo, autocommit=True))

    async def close(self) -> None:
        await self.conn.close()

    async def one(self, query: str, *params: object) -> Any:
        row = await (await self.conn.execute(query, params)).fetchone()
        return None if row is None else row[0]

    async def jobs(self, project: str, phases: tuple[str, ...]) -> int:
        return int(await self.one(
            "SELECT count(*) FROM jobs WHERE project = %s AND phase = ANY(%s)",
            project, list(phases)))

    async def unfinished(self, project: str) -> int:
        return await self.jobs(project, ("queued", "scheduled", "running"))

    async def connected(self, prefix: str) -> int:
        """Dataplanes whose stream is up and whose first heartbeat was applied."""
        return int(await self.one(
            "SELECT count(*) FROM dataplanes WHERE name LIKE %s AND stream_replica IS NOT NULL "
            "AND last_heartbeat_at IS NOT NULL", prefix + "%"))

    async def free_gpus(self, prefix: str) -> int:
        return int(await self.one(
            "SELECT coalesce(sum(gpu_free), 0) FROM pools WHERE dataplane LIKE %s", prefix + "%"))

    async def attempts(self, project: str) -> int:
        return int(await self.one(
            "SELECT count(*) FROM attempts a JOIN jobs j ON j.id = a.job_id "
            "WHERE j.project = %s", project))

    async def last_attempt_created(self, project: str) -> float:
        at: datetime = await self.one(
            "SELECT max(a.created_at) FROM attempts a JOIN jobs j ON j.id = a.job_id "
            "WHERE j.project = %s", project)
        return at.replace(tzinfo=UTC).timestamp()


async def wait_until(check: Any, timeout_s: float, every_s: float = 0.1) -> bool:
    """Await check() until it is true, or give up after timeout_s (False)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if await check():
            return True
        await asyncio.sleep(every_s)
    return False


# -- what the control plane costs --------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of the process so far (/proc/PID/stat utime + stime)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def with_children(pid: int) -> list[int]:
    """The process and its children now (Postgres: the postmaster and its backends)."""
    pids = [pid]
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            pids += [int(child) for child in (task / "children").read_text().split()]
    return pids


class CpuShares:
    """Who used the CPU while a phase ran, as shares of one core. Each name's processes
    are given at the start; one that ends meanwhile is left out of its sum."""

    def __init__(self, processes: dict[str, list[int]]) -> None:
        self.processes = processes
        self.started = time.monotonic()
        self.before = self._now()

    def _now(self) -> dict[int, float]:
        seconds = {}
        for pid in {pid for pids in self.processes.values() for pid in pids}:
            with contextlib.suppress(OSError, ValueError, IndexError):
                seconds[pid] = cpu_seconds(pid)
        return seconds

    def text(self) -> str:
        elapsed = time.monotonic() - self.started
        after = self._now()
        used = {name: sum(after[p] - self.before[p] for p in pids
                          if p in after and p in self.before)
                for name, pids in self.processes.items()}
        return ", ".join(f"{name} {cpu / elapsed:.0%}" for name, cpu in used.items())


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def scrape_histogram(url: str, name: str) -> dict[float, float] | None:
    """The cumulative bucket counts {le: count} of a Prometheus histogram; None when the
    page or the metric is not there."""
    from prometheus_client.parser import text_string_to_metric_families

    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            text = response.read().decode()
    except OSError:
        return None
    buckets: dict[float, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == f"{name}_bucket":
                le = float(sample.labels["le"])
                buckets[le] = buckets.get(le, 0.0) + sample.value
    return buckets or None


def histogram_quantile(q: float, before: dict[float, float],
                       after: dict[float, float]) -> float | None:
    """The q-quantile of what was observed between two scrapes, interpolated within its
    bucket as Prometheus' histogram_quantile does; None when nothing was observed. A
    quantile in the +Inf bucket is reported as the largest finite bound."""
    bounds = sorted(after)
    counts = [after[b] - before.get(b, 0.0) for b in bounds]
    total = counts[-1] if counts else 0.0
    if total <= 0:
        return None
    rank = q * total
    lower, below = 0.0, 0.0
    for bound, cumulative in zip(bounds, counts, strict=True):
        if cumulative >= rank:
            if bound == float("inf"):
                return lower
            inside = cumulative - below
            return lower + (bound - lower) * ((rank - below) / inside if inside else 1.0)
        lower, below = bound, cumulative
    return lower


class Profiler:
    """py-spy recording the control plane while a phase runs (--profile)."""

    def __init__(self, pid: int, output: Path) -> None:
        self.output = output
        self.process = subprocess.Popen(
            [str(Path(sys.executable).parent / "py-spy"), "record", "--pid", str(pid),
             "--output", str(output), "--nonblocking"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )

    def stop(self) -> str:
        self.process.send_signal(signal.SIGINT)   # py-spy writes the flame graph then
        try:
            _, errors = self.process.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return "py-spy did not stop"
        if self.output.exists():
            return f"flame graph in {self.output.relative_to(ROOT)}"
        return f"py-spy wrote nothing: {errors.decode(errors='replace')[-300:]}"


# -- the record --------------------------------------------------------------------------------


def record(results: Path, title: str, command: str, table: str, notes: list[str]) -> None:
    """Append the table to bench/RESULTS.md under a heading with the date, the commit, the
    cores and Python's version."""
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                            capture_output=True, text=True, check=False).stdout.strip() or "?"
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    heading = (f"## {title}: {stamp}, commit {commit}, {os.cpu_count()} cores, "
               f"Python {platform.python_version()}")
    extra = "".join(f"\n- {note}" for note in notes)
    with results.open("a", encoding="utf-8") as out:
        out.write(f"\n{heading}\n\n`{command}`\n\n{table}\n{extra}\n")
