"""## Fleet benchmark

`bench/fleet_bench.py` measures the whole fleet on one machine and prints one table:

```sh
.venv/bin/python bench/fleet_bench.py --size full --record   # the real run, ~6 minutes; appends
                                                       # the table to bench/RESULTS.md
.venv/bin/python bench/fleet_bench.py --size medium          # 1,000 agents, a few thousand jobs
.venv/bin/python bench/fleet_bench.py --size tiny            # < 1 minute; tests/e2e runs this
.venv/bin/python bench/fleet_bench.py --profile              # also a py-spy flame graph of the
                                                       # control plane (bench/profile-e2e.svg)
```

It starts a throwaway Postgres with durability on (fsync, synchronous_commit), then a real
control plane (`fleet control-plane`, plaintext, no auth, on 127.0.0.1) on a fresh
database for each group of measures, and simulated agents: bench/fleet_agents.py runs many
agents in one asyncio process (two processes for the larger sizes), each the agent's real
`Connection` with its own TCP connection and stream, real heartbeats and attempt updates;
only the launcher is simulated (a launch is RUNNING at once and SUCCEEDED after
`--job-seconds`, 0 by default). The load generator is this process, with grpc.aio stubs;
counts come from the registry, read directly.

What each row measures:

- **submit, single / batched**: `--callers` concurrent `Submit` calls (or `--batch-callers`
  `SubmitBatch` calls of `--batch` jobs) back to back for a window: jobs acknowledged a
  second. The single rate is the maximum rate of the next rows.
- **submit→launch at 50% / 100%**: `Submit` paced (open loop) at that share of the single
  rate; from sending the submit to the agent receiving the Launch, p50 and p99.
- **end to end**: a fixed number of jobs submitted (batched when the server has
  `SubmitBatch`), until every one is SUCCEEDED: jobs a second.
- **placement decisions/s**: jobs queued while every agent reports no free GPU; then the
  capacity comes back (every agent heartbeats at once): jobs / (the last attempt's
  created_at - that moment).
- **N agents heartbeating**: N connected agents, no jobs; the control plane's CPU
  (utime + stime over a window, as a share of one core) and RSS; heartbeat handling p99
  from its `fleet_heartbeat_handling_seconds` histogram on `/metrics` (`--http-listen`).
- **machine**: Postgres single-row INSERT commits/s with 16 clients on the same server,
  and a bare grpc.aio unary echo on loopback (bench/fleet_limits.py).
- **failover**: jobs run on an agent alone in its process; the process is killed
  (kill -9) under short timers (heartbeat 1 s, stale 1.5 s, lost 2 s): until each of its
  jobs runs on another agent, also in heartbeat intervals.
- **join → first placement**: a job only a new dataplane can run waits; a new agent
  starts: until its first Launch arrives.

Reading the table: each row gives the value, the issue's target where there is one, the
value as a ratio to the machine limit it depends on (submits and placements against
Postgres commits/s, end to end against the gRPC echo rate, heartbeat load against
Postgres commits/s) and pass or miss. "n/a" means the control plane does not have the
feature yet (`SubmitBatch` answers UNIMPLEMENTED, no `--http-listen` or no histogram).
The figures are only comparable on the same machine: the limits rows say what it can do.
Exit 0 when the run completed (misses included), 1 when it could not run.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import signal
import sys
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import FrameType

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "protos"))

from chaos_parts import ChaosPostgres, Timers, fleet_env  # noqa: E402
from fleet_limits import measure_echo_rate, postgres_insert_rate  # noqa: E402
from fleet_load import Load  # noqa: E402
from fleet_parts import (  # noqa: E402
    AgentHost,
    BenchError,
    ControlPlane,
    CpuShares,
    LaunchLogs,
    Profiler,
    Registry,
    control_plane_has_flag,
    cpu_seconds,
    histogram_quantile,
    record,
    rss_bytes,
    scrape_histogram,
    spread,
    start_control_plane,
    wait_until,
    with_children,
)

from tests.pg_server import MISSING_BINARIES, find_server_binaries  # noqa: E402

RESULTS = ROOT / "bench" / "RESULTS.md"
HEARTBEAT_METRIC = "fleet_heartbeat_handling_seconds"
MAIN_TIMERS = Timers(5.0, 15.0, 60.0)          # the control plane's defaults
FAILOVER_TIMERS = Timers(1.0, 1.5, 2.0)
DRAIN_TIMEOUT_S = 600.0


@dataclass(frozen=True)
class Size:
    agents: int                 # agents that run the jobs of the throughput rows
    gpus: int                   # GPUs of each
    hosts: int                  # agent processes
    window_s: float             # each submit measurement and paced load
    max_jobs: int               # ... stops after this many jobs (the agents run them all)
    e2e_jobs: int
    placement_jobs: int
    scale: tuple[int, ...]      # connected agents, one row each
    scale_heartbeat_s: float
    scale_window_s: float
    failover_jobs: int
    joins: int
    limit_s: float              # each machine-limit measurement


SIZES = {
    "tiny": Size(4, 64, 1, 1.0, 300, 200, 100, (5, 10, 20), 1.0, 2.0, 4, 1, 1.0),
    "medium": Size(100, 64, 2, 5.0, 10000, 3000, 2000, (100, 1000), 5.0, 10.0, 8, 3, 5.0),
    "full": Size(100, 64, 2, 10.0, 30000, 20000, 5000, (100, 1000, 5000), 5.0, 15.0, 16, 3,
                 5.0),
}


@dataclass
class Row:
    measure: str
    value: str
    target: str = "-"
    ratio: str = "-"
    verdict: str = "-"


def verdict(ok: bool | None) -> str:
    return "-" if ok is None else ("pass" if ok else "miss")


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms" if seconds >= 0.01 else f"{seconds * 1000:.1f} ms"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


# -- the run -----------------------------------------------------------------------------------


@dataclass
class State:
    """Everything started, so that it is stopped however the run ends."""

    root: Path
    pg: ChaosPostgres | None = None   # the durable server; its postmaster's pid for CPU
    control_planes: list[ControlPlane] = field(default_factory=list)
    hosts: list[AgentHost] = field(default_factory=list)
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def cleanup(self) -> None:
        for host in self.hosts:
            if host.process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(host.pid, signal.SIGKILL)
        for cp in self.control_planes:
            cp.part.stop()
        if self.pg is not None:
            self.pg.stop()


class Bench:
    def __init__(self, args: argparse.Namespace, state: State) -> None:
        self.args = args
        self.size: Size = args.size_value
        self.state = state
        self.env = fleet_env("")
        self.metrics = control_plane_has_flag("--http-listen")
        self.pg_commits = 0.0
        self.echo_rate = 0.0
        self.logs = LaunchLogs()
        self.started = time.monotonic()

    def row(self, *args: str) -> None:
        self.state.rows.append(Row(*args))
        elapsed = time.monotonic() - self.started
        print(f"[{elapsed:5.0f} s] {args[0]}: {args[1]}", file=sys.stderr, flush=True)

    def note(self, text: str) -> None:
        self.state.notes.append(text)

    def vs_pg(self, rate: float) -> str:
        return f"{rate / self.pg_commits:.2g} x PG commits" if self.pg_commits else "-"

    async def control_plane(self, name: str, timers: Timers) -> ControlPlane:
        assert self.state.pg is not None
        cp = await start_control_plane(self.state.pg, self.state.root / name, timers,
                                       self.env, self.metrics)
        self.state.control_planes.append(cp)
        return cp

    async def hosts(self, cp: ControlPlane, prefix: str, count: int) -> list[AgentHost]:
        hosts = [await AgentHost.start(f"{prefix}{i + 1}", cp.address, self.state.root,
                                       self.env, self.args.shared_connections)
                 for i in range(count)]
        self.state.hosts += hosts
        return hosts

    async def close_hosts(self, hosts: list[AgentHost]) -> None:
        await asyncio.gather(*(h.close() for h in hosts))

    async def run(self) -> None:
        binaries = find_server_binaries()
        if binaries is None:
            raise BenchError(MISSING_BINARIES)
        server = ChaosPostgres.start(binaries)
        assert isinstance(server, ChaosPostgres)   # start() is typed with the base class
        self.state.pg = server
        await self.limits()
        await self.throughput()
        await self.scale()
        await self.failover()

    # -- machine limits ----------------------------------------------------------------------

    async def limits(self) -> None:
        assert self.state.pg is not None
        conninfo = self.state.pg.conninfo(self.state.pg.create_database("limits"))
        self.pg_commits = await postgres_insert_rate(conninfo, self.size.limit_s)
        self.row("machine: Postgres single-row INSERT commits/s (16 clients, fsync on)",
                 f"{self.pg_commits:,.0f} commits/s", "-", "1 (the limit)")
        self.echo_rate = await measure_echo_rate(self.state.root, self.size.limit_s)
        self.row("machine: bare grpc.aio unary echo on loopback (64 in flight)",
                 f"{self.echo_rate:,.0f} calls/s", "-", "1 (the limit)")

    # -- submits, latency, end to end, placement, join ----------------------------------------

    async def throughput(self) -> None:
        size, args = self.size, self.args
        cp = await self.control_plane("main", MAIN_TIMERS)
        hosts = await self.hosts(cp, "tp-host", size.hosts)
        registry = await Registry.open(cp.conninfo)
        load = Load(cp.address)
        try:
            await spread(hosts, "tp", 0, size.agents, gpus=size.gpus, delay=args.job_seconds,
                         per_second=200)
            await self.connected(registry, "tp", size.agents)
            await self.submits(load, registry, hosts)
            await self.end_to_end(load, registry, cp)
            await self.placement(load, registry, hosts)
            await self.join(load, registry, hosts[0])
            for code, n in sorted(load.errors.items()):
                self.note(f"main control plane: {n} submits failed with {code}")
        finally:
            await load.close()
            await registry.close()
            await self.close_hosts(hosts)
            cp.part.stop()

    async def connected(self, registry: Registry, prefix: str, count: int) -> None:
        async def all_up() -> bool:
            return await registry.connected(prefix) >= count

        if not await wait_until(all_up, 60 + count / 20, 0.25):
            up = await registry.connected(prefix)
            raise BenchError(f"only {up} of {count} {prefix} agents connected")

    async def drain(self, registry: Registry, project: str) -> None:
        async def done() -> bool:
            return await registry.unfinished(project) == 0

        if not await wait_until(done, DRAIN_TIMEOUT_S, 0.2):
            left = await registry.unfinished(project)
            self.note(f"{project}: {left} jobs still unfinished after {DRAIN_TIMEOUT_S:.0f} s")

    async def block(self, registry: Registry, hosts: list[AgentHost], *, blocked: bool) -> None:
        """Make every agent report no free GPU (blocked) or its real free GPUs again."""
        await asyncio.gather(*(h.call("block", prefix="tp", blocked=blocked) for h in hosts))
        if blocked:
            async def no_capacity() -> bool:
                return await registry.free_gpus("tp") == 0

            if not await wait_until(no_capacity, 30):
                raise BenchError("the agents' blocked pools were not recorded")

    async def submits(self, load: Load, registry: Registry, hosts: list[AgentHost]) -> None:
        size, args = self.size, self.args
        single = await load.closed_loop("bench-single", size.window_s, size.max_jobs,
                                        args.callers)
        assert single is not None
        self.row(f"submit, single (Submit, {args.callers} callers)", f"{single:,.0f} jobs/s",
                 "-", self.vs_pg(single))
        await self.drain(registry, "bench-single")
        # Batched, twice: into a fleet with no free GPU (the jobs queue: what accepting
        # costs, the target's measure; a burst's excess waits like this), then while the
        # fleet runs them (bounded by the end-to-end rate).
        await self.block(registry, hosts, blocked=True)
        queued = await load.closed_loop("bench-batch", size.window_s, size.max_jobs,
                                        args.batch_callers, args.batch)
        await self.block(registry, hosts, blocked=False)
        if queued is None:
            self.row(f"submit, batched (SubmitBatch of {args.batch})",
                     "n/a (SubmitBatch answers UNIMPLEMENTED)", "≥ 5,000 jobs/s", "-", "n/a")
            return
        self.row(f"submit, batched (SubmitBatch of {args.batch}, {args.batch_callers} "
                 "callers; no free GPU: the jobs queue)", f"{queued:,.0f} jobs/s",
                 "≥ 5,000 jobs/s", self.vs_pg(queued), verdict(queued >= 5000))
        await self.drain(registry, "bench-batch")
        running = await load.closed_loop("bench-batch-run", size.window_s, size.max_jobs,
                                         args.batch_callers, args.batch)
        assert running is not None
        self.row(f"submit, batched, while the fleet runs those jobs (SubmitBatch of "
                 f"{args.batch}, {args.batch_callers} callers)", f"{running:,.0f} jobs/s",
                 "-", self.vs_pg(running))
        await self.drain(registry, "bench-batch-run")
        for share in (0.5, 1.0):
            rate = single * share
            project = f"bench-paced-{int(share * 100)}"
            jobs = max(1, min(size.max_jobs, int(rate * size.window_s)))
            sent = await load.paced(project, rate, jobs)
            await self.drain(registry, project)
            await self.logs.read(self.state.hosts)
            first = self.logs.first
            latency = [first[j][0] - at for j, (at, _) in sent.items() if j in first]
            missing = len(sent) - len(latency)
            if not latency:
                raise BenchError(f"{project}: no submitted job was launched")
            p50, p99 = percentile(latency, 0.5), percentile(latency, 0.99)
            # Where the time goes: the Submit call itself, then placement and dispatch.
            ack = percentile([acked - at for at, acked in sent.values()], 0.99)
            half = share == 0.5
            self.row(f"submit→launch at {share:.0%} of max ({rate:,.0f} jobs/s, {len(sent):,} "
                     "jobs)", f"p50 {ms(p50)}, p99 {ms(p99)} (Submit's own p99 {ms(ack)})"
                     + (f" ({missing} never launched)" if missing else ""),
                     "p99 < 50 ms" if half else "-", "-", verdict(p99 < 0.05) if half else "-")

    async def end_to_end(self, load: Load, registry: Registry, cp: ControlPlane) -> None:
        size, args = self.size, self.args
        profiler = Profiler(cp.pid, ROOT / "bench" / "profile-e2e.svg") if args.profile else None
        assert self.state.pg is not None
        shares = CpuShares({"control plane": [cp.pid],
                            "agent processes": [h.pid for h in self.state.hosts
                                                if h.process.returncode is None],
                            "Postgres": with_children(self.state.pg.postmaster_pid() or 0),
                            "load generator (this process)": [os.getpid()]})
        started = time.time()
        acknowledged = await load.many("bench-e2e", size.e2e_jobs, args.callers, args.batch)

        async def all_succeeded() -> bool:
            return await registry.jobs("bench-e2e", ("succeeded",)) >= acknowledged

        finished = await wait_until(all_succeeded, DRAIN_TIMEOUT_S, 0.1)
        elapsed = time.time() - started
        self.note(f"CPU during the end-to-end row, in cores: {shares.text()}")
        if profiler is not None:
            self.note(f"--profile: {profiler.stop()}")
        succeeded = await registry.jobs("bench-e2e", ("succeeded",))
        rate = succeeded / elapsed
        how = "batched" if args.batch and not load.batch_missing else "single"
        self.row(f"end to end: submit→launch→succeeded ({acknowledged:,} jobs, {how} submits)",
                 f"{rate:,.0f} jobs/s" + ("" if finished else f" (only {succeeded:,} ended)"),
                 "≥ 2,000 jobs/s", f"{rate / self.echo_rate:.2g} x echo calls",
                 verdict(rate >= 2000 and finished))
        await self.drain(registry, "bench-e2e")

    async def placement(self, load: Load, registry: Registry, hosts: list[AgentHost]) -> None:
        size, args = self.size, self.args
        await self.block(registry, hosts, blocked=True)
        queued = await load.many("bench-place", size.placement_jobs, args.callers, args.batch)
        await asyncio.sleep(1.0)   # the scheduler's passes over the full queue are over
        if await registry.attempts("bench-place"):
            raise BenchError("jobs were placed while no agent had a free GPU")
        opened = time.time()
        await self.block(registry, hosts, blocked=False)

        async def all_placed() -> bool:
            return await registry.attempts("bench-place") >= queued

        placed = await wait_until(all_placed, DRAIN_TIMEOUT_S, 0.1)
        rate = queued / max(1e-3, await registry.last_attempt_created("bench-place") - opened)
        self.row(f"placement decisions/s ({queued:,} queued jobs, {size.agents} agents)",
                 f"{rate:,.0f} decisions/s" + ("" if placed else " (not all placed)"),
                 "-", self.vs_pg(rate))
        await self.drain(registry, "bench-place")

    async def join(self, load: Load, registry: Registry, host: AgentHost) -> None:
        """A J100 dataplane registers and is cordoned, so that J100 jobs are accepted and
        wait; then each new J100 agent is timed from its start to its first Launch, and
        cordoned in turn. (Cordons, not stops: they take effect at once, whereas a stopped
        stream is only noticed when the control plane notices it.)"""
        await host.call("start", prefix="join-src", first=0, count=1, gpus=8, model="J100")
        await self.connected(registry, "join-src", 1)
        await load.cordon("join-src-00000")
        times = []
        for index in range(self.size.joins):
            job = await load.submit("bench-join", "J100")
            if job is None:
                raise BenchError(f"a J100 job was refused: {load.errors}")
            started = time.time()
            await host.call("start", prefix=f"join-new{index}", first=0, count=1, gpus=8,
                            model="J100")

            async def launched(job: str = job) -> bool:
                await self.logs.read([host])
                return job in self.logs.first

            if not await wait_until(launched, 60, 0.02):
                raise BenchError("the new agent got no launch within 60 s")
            times.append(self.logs.first[job][0] - started)

            async def succeeded() -> bool:
                return await registry.unfinished("bench-join") == 0

            await wait_until(succeeded, 30)
            await load.cordon(f"join-new{index}-00000")
        await host.call("stop", prefix="join-")
        worst = max(times)
        self.row("join → first placement (new agent starts → its first Launch)",
                 f"{worst:.2f} s" + (f" (worst of {len(times)})" if len(times) > 1 else ""),
                 "< 2 s", "-", verdict(worst < 2.0))

    # -- many agents, no jobs ------------------------------------------------------------------

    async def scale(self) -> None:
        size = self.size
        beat = size.scale_heartbeat_s
        timers = Timers(beat, 3 * beat, 12 * beat)
        cp = await self.control_plane("scale", timers)
        hosts = await self.hosts(cp, "scale-host", size.hosts)
        registry = await Registry.open(cp.conninfo)
        try:
            running = 0
            for count in size.scale:
                await spread(hosts, "sc", running, count - running, gpus=8, per_second=200)
                running = count

                async def all_up(count: int = count) -> bool:
                    return await registry.connected("sc") >= count

                # Not all of them may make it: the row then says how many did.
                await wait_until(all_up, 60 + count / 20, 0.5)
                await asyncio.sleep(beat)   # past the burst of first reports
                await self.sample(cp, count, beat, await registry.connected("sc"))
            host_rss = [rss_bytes(h.pid) / 2**20 for h in hosts]
            self.note(f"{running:,} simulated agents in {len(hosts)} process(es): RSS "
                      + ", ".join(f"{r:,.0f} MB" for r in host_rss) + " (each agent a real "
                      "Connection with its own channel and TCP connection)")
            failed = sum(h.log_file.read_text(errors="replace").count("cannot reach the control")
                         for h in hosts)
            self.note(f"{failed:,} failed connection attempts by those agents (each retried "
                      "after the agent's backoff)")
        finally:
            await registry.close()
            await self.close_hosts(hosts)
            cp.part.stop()

    async def sample(self, cp: ControlPlane, count: int, beat: float, up: int) -> None:
        window = self.size.scale_window_s
        before = scrape_histogram(cp.metrics_url, HEARTBEAT_METRIC) if cp.metrics_url else None
        cpu_before, started = cpu_seconds(cp.pid), time.monotonic()
        await asyncio.sleep(window)
        cpu = (cpu_seconds(cp.pid) - cpu_before) / (time.monotonic() - started)
        rss = rss_bytes(cp.pid)
        after = scrape_histogram(cp.metrics_url, HEARTBEAT_METRIC) if cp.metrics_url else None
        offered = count / beat
        rss_ok = rss < 512 * 2**20 and up >= count if count >= 5000 else None
        self.row(f"{count:,} agents heartbeating every {beat:g} s: control-plane CPU, RSS",
                 f"CPU {cpu:.0%} of a core, RSS {rss / 2**20:,.0f} MB"
                 + ("" if up >= count else f" (only {up:,} connected)"),
                 "RSS < 0.5 GB" if count >= 5000 else "-",
                 f"{offered:,.0f} heartbeats/s = {self.vs_pg(offered)}", verdict(rss_ok))
        if cp.metrics_url is None:
            p99 = "n/a (no --http-listen in fleet control-plane)"
        elif before is None or after is None:
            p99 = f"n/a (no {HEARTBEAT_METRIC} on /metrics)"
        else:
            quantile = histogram_quantile(0.99, before, after)
            p99 = "n/a (no heartbeat observed)" if quantile is None else ms(quantile)
        self.row(f"{count:,} agents: heartbeat handling p99", p99, "-", "-",
                 "n/a" if p99.startswith("n/a") else "-")

    # -- failover -------------------------------------------------------------------------------

    async def failover(self) -> None:
        jobs, timers = self.size.failover_jobs, FAILOVER_TIMERS
        cp = await self.control_plane("failover", timers)
        victim_host = (await self.hosts(cp, "victim-host", 1))[0]
        backup_host = (await self.hosts(cp, "backup-host", 1))[0]
        registry = await Registry.open(cp.conninfo)
        load = Load(cp.address)
        try:
            common = {"first": 0, "count": 1, "gpus": jobs, "model": "F100", "delay": 3600.0}
            await victim_host.call("start", prefix="fo-victim", **common)
            await backup_host.call("start", prefix="fo-backup", blocked=True, **common)
            await self.connected(registry, "fo-", 2)

            async def backup_full() -> bool:
                return await registry.free_gpus("fo-backup") == 0

            await wait_until(backup_full, 10)
            submitted = [await load.submit("bench-failover", "F100") for _ in range(jobs)]
            job_ids = [j for j in submitted if j is not None]

            async def all_running() -> bool:
                return await registry.jobs("bench-failover", ("running",)) == len(job_ids)

            if not job_ids or not await wait_until(all_running, 30):
                raise BenchError("the failover jobs did not start on the victim")
            await backup_host.call("block", prefix="fo-backup", blocked=False)

            async def backup_free() -> bool:
                return await registry.free_gpus("fo-backup") == jobs

            await wait_until(backup_free, 10)
            killed_at = victim_host.kill9()

            async def moved() -> bool:
                await self.logs.read([backup_host])
                return all(j in self.logs.first and self.logs.first[j][1].startswith(
                    "fo-backup") for j in job_ids)

            if not await wait_until(moved, 60, 0.05):
                raise BenchError("the failover jobs did not run elsewhere within 60 s")
            worst = max(self.logs.first[j][0] for j in job_ids) - killed_at
            beats = worst / timers.heartbeat_s
            self.row(f"failover: agent killed → its {len(job_ids)} jobs running elsewhere "
                     f"(heartbeat {timers.heartbeat_s:g} s, stale {timers.stale_after_s:g} s, "
                     f"lost {timers.lost_after_s:g} s)",
                     f"{worst:.2f} s = {beats:.1f} heartbeat intervals", "< 3 intervals", "-",
                     verdict(beats < 3))
            self.note("failover: the victim agent ran alone in its own process, killed with "
                      "kill -9 (its TCP connection reset); the other agent took its jobs")
        finally:
            await load.close()
            await registry.close()
            await self.close_hosts([victim_host, backup_host])
            cp.part.stop()


# -- the table ---------------------------------------------------------------------------------


def table(rows: list[Row]) -> str:
    lines = ["| measure | value | target | ratio to machine limit | pass/miss |",
             "|---|---|---|---|---|"]
    lines += [f"| {r.measure} | {r.value} | {r.target} | {r.ratio} | {r.verdict} |"
              for r in rows]
    return "\n".join(lines)


def order(rows: list[Row]) -> list[Row]:
    """The limits last, where they read as the reference for the rows above."""
    return sorted(rows, key=lambda r: r.measure.startswith("machine:"))


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="The fleet at scale on this machine: one "
                                     "table of throughput, latency, cost per agent, failover.")
    parser.add_argument("--size", choices=sorted(SIZES), default="full")
    parser.add_argument("--scale-agents", default=None, metavar="N,N,...",
                        help="the agent counts of the heartbeat rows (default: the size's)")
    parser.add_argument("--job-seconds", type=float, default=0.0,
                        help="how long each simulated job runs (default 0)")
    parser.add_argument("--callers", type=int, default=64, help="concurrent Submit callers")
    parser.add_argument("--batch", type=int, default=100, help="jobs per SubmitBatch call")
    parser.add_argument("--batch-callers", type=int, default=4)
    parser.add_argument("--shared-connections", action="store_true",
                        help="the agents of one process share one TCP connection")
    parser.add_argument("--profile", action="store_true",
                        help="py-spy flame graph of the control plane during the e2e row")
    parser.add_argument("--record", action=argparse.BooleanOptionalAction, default=False,
                        help="append the table to bench/RESULTS.md")
    parser.add_argument("--keep", action="store_true", help="keep the run's folder (logs)")
    args = parser.parse_args(argv)
    size = SIZES[args.size]
    if args.scale_agents:
        try:
            counts = tuple(sorted(int(n) for n in args.scale_agents.split(",")))
        except ValueError:
            parser.error("--scale-agents: comma-separated numbers, e.g. 100,1000")
        if not counts or counts[0] < 1:
            parser.error("--scale-agents: every count must be at least 1")
        size = replace(size, scale=counts)
    if args.callers < 1 or args.batch < 1 or args.batch > 1000 or args.batch_callers < 1:
        parser.error("--callers and --batch-callers >= 1, --batch from 1 to 1000")
    if args.job_seconds < 0:
        parser.error("--job-seconds must be >= 0")
    args.size_value = size
    return args


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    state = State(Path(tempfile.mkdtemp(prefix="fleet-bench-")))
    signal.signal(signal.SIGTERM, _interrupt)   # stop everything, as on Ctrl-C
    started, ok = time.monotonic(), False
    try:
        asyncio.run(Bench(args, state).run())
        ok = True
    except BenchError as error:
        print(f"error: {error}", file=sys.stderr)
    except KeyboardInterrupt:
        print("interrupted: stopping the fleet", file=sys.stderr)
    finally:
        state.cleanup()
    text = table(order(state.rows))
    print(text)
    for note in state.notes:
        print(f"- {note}")
    print(f"- wall time {time.monotonic() - started:.0f} s, size {args.size}")
    if ok and args.record:
        record(RESULTS, f"Fleet (bench/fleet_bench.py --size {args.size})",
               ".venv/bin/python bench/fleet_bench.py " + " ".join(argv), text, state.notes)
    if ok and not args.keep:
        shutil.rmtree(state.root, ignore_errors=True)
    else:
        print(f"logs kept in {state.root}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
