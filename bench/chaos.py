"""Chaos: a fleet under steady load while its parts are killed; nothing acknowledged may be
lost, and nothing may run twice.

    .venv/bin/python bench/chaos.py                      # 60 s, 20 kills, 4 agents, 1 CP
    .venv/bin/python bench/chaos.py --seconds 30 --kills 5 --agents 3 --rate 5 --seed 23 \
        --gap 0.5 2 --stale-after 5 --lost-after 20     # tests/e2e/test_chaos.py
    .venv/bin/python bench/chaos.py --kills 100 --seconds 900 --seed 100 --record

The default lost_after (20 s) is above an agent's longest reconnect backoff (10 s) and its
restart time. With --lost-after 6 a short outage may get a healthy dataplane declared lost:
its jobs move, and runners that finish anyway are reported as duplicated runs (fenced: the
registry keeps one success), which is what a lost timer that short asks for.

It starts a throwaway Postgres with durability on, N control planes on it and M agents
with the process launcher (all `fleet` subprocesses on 127.0.0.1), submits jobs at a steady
rate with client keys, and meanwhile kills a random part at random intervals: an agent
(kill -9), a control plane (kill -9) or Postgres (kill -9 of every server process, or an
immediate stop). Each victim is restarted after a pause shorter than lost_after (unless
--long-outages), and the next kill waits until the fleet made progress again.

At the end it stops submitting, waits until every acknowledged job is final and checks
the registry, the runs log the jobs write and the agents' attempt folders (chaos_check).
Exit 0 when the checks pass, 1 when they fail, 2 on bad arguments. The run's folder
(every log) is deleted on success unless --keep, and kept and printed on failure.
"""

from __future__ import annotations

import argparse
import functools
import os
import platform
import random
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "protos"))

import psycopg  # noqa: E402
from chaos_check import Verdict, check, dump_tables, unfinished  # noqa: E402
from chaos_load import PROJECT, LoadGenerator  # noqa: E402
from chaos_monitor import ProgressMonitor  # noqa: E402
from chaos_parts import (  # noqa: E402
    ChaosPostgres,
    Part,
    Timers,
    agent_part,
    agent_workdir,
    control_plane_address,
    control_plane_part,
    fleet_env,
    stop_everything,
)

from dataplane_agent.launcher.folder import attempt_folders  # noqa: E402
from fleet_client import PLAINTEXT, FleetClient, FleetError  # noqa: E402
from tests.pg_server import MISSING_BINARIES, find_server_binaries  # noqa: E402

RESULTS = ROOT / "bench" / "RESULTS.md"
KINDS = ("agent", "control-plane", "postgres")
MIN_PAUSE_S = 0.2
LONG_OUTAGE_RANGE = (1.2, 2.0)     # x lost_after, for half the kills with --long-outages
READY_TIMEOUT_S = 90.0
DRAIN_TIMEOUT_S = 120.0
QUIET_TIMEOUT_S = 30.0
SHOWN_PROBLEMS = 20
LOST_LINE = re.compile(r"dataplanes \[(.*?)\] lost: (\d+) jobs")


class UsageError(Exception):
    """The fleet cannot run with these arguments (exit 2)."""


class HarnessError(Exception):
    """The harness could not run the experiment (exit 1, logs kept)."""


@dataclass
class Kill:
    number: int
    kind: str
    victim: str
    how: str
    at: float                 # time.monotonic()
    wall: datetime
    up_at: float
    recovered_at: float | None
    long: bool

    @property
    def recovery_s(self) -> float | None:
        return None if self.recovered_at is None else self.recovered_at - self.at


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Kill parts of a local fleet under load; check that no acknowledged "
        "job is lost and none runs twice.")
    parser.add_argument("--control-planes", type=int, default=1, metavar="N")
    parser.add_argument("--agents", type=int, default=4, metavar="M")
    parser.add_argument("--gpus", type=int, default=4, help="GPUs in each agent's pool")
    parser.add_argument("--rate", type=float, default=5.0, help="submits per second")
    parser.add_argument("--seconds", type=float, default=60.0,
                        help="load duration (the run also ends once --kills are done)")
    parser.add_argument("--kills", type=int, default=20, metavar="K")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--weights", default="agent=5,control-plane=3,postgres=2",
                        help="how often each kind of part is the victim")
    parser.add_argument("--heartbeat", type=float, default=0.5, metavar="S")
    parser.add_argument("--stale-after", type=float, default=5.0, metavar="S")
    parser.add_argument("--lost-after", type=float, default=20.0, metavar="S")
    parser.add_argument("--job-seconds", type=float, nargs=2, default=(0.2, 2.0),
                        metavar=("MIN", "MAX"), help="how long each job sleeps")
    parser.add_argument("--max-pause", type=float, default=2.0, metavar="S",
                        help="a victim stays down 0.2 s to this long (must be < --lost-after)")
    parser.add_argument("--gap", type=float, nargs=2, default=(1.0, 4.0), metavar=("MIN", "MAX"),
                        help="seconds between a recovery and the next kill")
    parser.add_argument("--long-outages", action="store_true",
                        help="half the outages last longer than lost_after (jobs move; a "
                        "fenced second run is then reported, not failed)")
    parser.add_argument("--retry-budget", type=int, default=None,
                        help="jobs' retry budget (default: the control plane's)")
    parser.add_argument("--recover-timeout", type=float, default=60.0, metavar="S")
    parser.add_argument("--final-timeout", type=float, default=180.0, metavar="S",
                        help="how long the acknowledged jobs may take to end after the load")
    parser.add_argument("--dir", type=Path, default=None, help="the run's folder (default: temp)")
    parser.add_argument("--keep", action="store_true", help="keep the run's folder on success")
    parser.add_argument("--record", action="store_true",
                        help="append the table to bench/RESULTS.md")
    args = parser.parse_args(argv)
    problems = []
    if args.control_planes < 1 or args.agents < 1 or args.gpus < 1:
        problems.append("--control-planes, --agents and --gpus must be at least 1")
    if args.rate <= 0 or args.seconds <= 0 or args.kills < 0:
        problems.append("--rate and --seconds must be > 0, --kills >= 0")
    if not 0 < args.heartbeat < args.stale_after < args.lost_after:
        problems.append("need 0 < --heartbeat < --stale-after < --lost-after")
    if not MIN_PAUSE_S <= args.max_pause < args.lost_after:
        problems.append(f"--max-pause: need {MIN_PAUSE_S} <= S < --lost-after")
    if not 0 <= args.job_seconds[0] <= args.job_seconds[1]:
        problems.append("--job-seconds: need 0 <= MIN <= MAX")
    if not 0 <= args.gap[0] <= args.gap[1]:
        problems.append("--gap: need 0 <= MIN <= MAX")
    try:
        args.weights = parse_weights(args.weights)
    except ValueError as error:
        problems.append(f"--weights: {error}")
    if problems:
        parser.error("; ".join(problems))
    return args


def parse_weights(text: str) -> dict[str, float]:
    weights = dict.fromkeys(KINDS, 0.0)
    for item in text.split(","):
        kind, _, value = item.partition("=")
        if kind.strip() not in weights:
            raise ValueError(f"{kind.strip()!r} is not one of {', '.join(KINDS)}")
        weights[kind.strip()] = float(value)
        if weights[kind.strip()] < 0:
            raise ValueError(f"{kind.strip()}: a weight is >= 0")
    if sum(weights.values()) <= 0:
        raise ValueError("at least one weight must be > 0")
    return weights


class Harness:
    def __init__(self, args: argparse.Namespace, root: Path) -> None:
        self.args = args
        self.root = root
        self.rng = random.Random(args.seed)
        self.timers = Timers(args.heartbeat, args.stale_after, args.lost_after)
        self.env = fleet_env(secrets.token_hex(16))
        self.pg: ChaosPostgres | None = None
        self.conninfo = ""
        self.control_planes: list[Part] = []
        self.agents: list[Part] = []
        self.monitor: ProgressMonitor | None = None
        self.load: LoadGenerator | None = None
        self.kills: list[Kill] = []
        self.unexpected: list[str] = []
        self.started = time.monotonic()
        self.events = (root / "chaos.log").open("a", buffering=1)

    # -- the run ------------------------------------------------------------------------------

    def run(self) -> tuple[Verdict, bool]:
        args = self.args
        self.start_fleet()
        assert self.pg is not None
        self.monitor = ProgressMonitor(self.conninfo)
        self.monitor.start()
        addresses = [control_plane_address(p) for p in self.control_planes]
        self.load = LoadGenerator(addresses, args.rate, args.seed, self.root / "runs.log",
                                  tuple(args.job_seconds), args.retry_budget)
        self.load.start()
        load_started = time.monotonic()
        self.note(f"load started: {args.rate:g} jobs/s")
        end_at = load_started + args.seconds
        self.sleep(min(3.0, args.seconds / 10), end_at)
        while len(self.kills) < args.kills and time.monotonic() < end_at:
            self.kill_one(len(self.kills) + 1)
            self.sleep(self.rng.uniform(*args.gap), end_at)
        if args.kills == 0:
            self.sleep(end_at - time.monotonic(), end_at)
        self.load.stop_generating()
        self.note(f"load stopped after {time.monotonic() - load_started:.1f}s; draining")
        if not self.wait_for(self.load.idle, DRAIN_TIMEOUT_S):
            self.note(f"{self.load.unacknowledged} keys never acknowledged")
        job_ids = [a.job_id for a in self.load.stats.acknowledged.values()]
        all_final = self.wait_for(lambda: self.count_unfinished(job_ids) == 0, args.final_timeout)
        self.note("every acknowledged job is final" if all_final
                  else "timed out waiting for the acknowledged jobs to end")
        self.wait_for(self.runners_quiet, QUIET_TIMEOUT_S)
        acknowledged = {k: a.job_id for k, a in self.load.stats.acknowledged.items()}
        workdirs = [agent_workdir(self.root, a.name) for a in self.agents]
        verdict = check(self.conninfo, PROJECT, acknowledged, self.root / "runs.log", workdirs)
        ok = verdict.passed(args.long_outages) and not self.load.stats.fatal \
            and not self.load.stats.resubmit_mismatches
        return verdict, ok

    def start_fleet(self) -> None:
        binaries = find_server_binaries()
        if binaries is None:
            raise HarnessError(MISSING_BINARIES)
        server = ChaosPostgres.start(binaries)
        assert isinstance(server, ChaosPostgres)   # start() is typed with the base class
        self.pg = server
        database = server.create_database("chaos")
        self.conninfo = server.conninfo(database)
        url = server.url(database)
        self.note(f"postgres on port {server.port} (fsync on, synchronous_commit on)")
        self.control_planes = [
            control_plane_part(i, self.root, url, self.timers, self.env)
            for i in range(self.args.control_planes)
        ]
        for part in self.control_planes:   # the first migrates; the others wait for it
            part.start()
            address = control_plane_address(part)
            if not self.wait_for(functools.partial(self.answers, address), READY_TIMEOUT_S):
                raise HarnessError(f"{part.name} did not answer on {address}:\n{part.log_tail()}")
            self.note(f"{part.name} up on {address}")
        addresses = [control_plane_address(p) for p in self.control_planes]
        self.agents = [
            agent_part(i, self.root, addresses, self.args.gpus, self.env)
            for i in range(self.args.agents)
        ]
        for part in self.agents:
            part.start()
        names = {a.name for a in self.agents}
        if not self.wait_for(lambda: self.connected() >= names, READY_TIMEOUT_S, startup=True):
            raise HarnessError("the agents did not all connect:\n"
                               + "\n".join(f"--- {a.name}\n{a.log_tail()}" for a in self.agents))
        self.note(f"{len(self.agents)} agents connected")

    def kill_one(self, number: int) -> None:
        assert self.pg is not None and self.monitor is not None
        weights = self.args.weights
        kind = self.rng.choices(KINDS, [weights[k] for k in KINDS])[0]
        long = self.args.long_outages and self.rng.random() < 0.5
        lost_after = self.timers.lost_after_s
        if long:
            pause = self.rng.uniform(*(f * lost_after for f in LONG_OUTAGE_RANGE))
        else:
            pause = self.rng.uniform(MIN_PAUSE_S, self.args.max_pause)
        victim: Part | None = None
        if kind == "postgres":
            how = self.rng.choice(["kill -9", "immediate stop"])
            name = "postgres"
            started = time.monotonic()
            if how == "kill -9":
                self.pg.crash()
            else:
                self.pg.immediate_stop()
        else:
            how = "kill -9"
            victim = self.rng.choice(self.agents if kind == "agent" else self.control_planes)
            name = victim.name
            started = time.monotonic()
            victim.kill9()
        wall = datetime.now(UTC)
        self.note(f"kill {number}: {kind} {name} ({how}); down for {pause:.1f}s"
                  + (" (long outage)" if long else ""))
        self.sleep(pause)
        if victim is None:
            self.pg.restart()
        else:
            victim.start()
        up_at = time.monotonic()
        self.note(f"kill {number}: {name} restarted")
        recovered = self.monitor.wait_progress(
            up_at, name if kind == "agent" else None, self.args.recover_timeout, self.supervise)
        kill = Kill(number, kind, name, how, started, wall, up_at, recovered, long)
        self.kills.append(kill)
        self.note(f"kill {number}: " + (f"progress again {kill.recovery_s:.1f}s after the kill"
                                        if kill.recovery_s is not None
                                        else f"no progress within {self.args.recover_timeout:g}s"))

    # -- waiting, supervising -------------------------------------------------------------------

    def sleep(self, seconds: float, until: float | None = None) -> None:
        end = time.monotonic() + max(0.0, seconds)
        if until is not None:
            end = min(end, until)
        while time.monotonic() < end:
            self.supervise()
            time.sleep(min(0.1, max(0.0, end - time.monotonic())))

    def wait_for(self, ready: Callable[[], bool], timeout_s: float, startup: bool = False) -> bool:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self.supervise(startup)
            if ready():
                return True
            time.sleep(0.2)
        return False

    def supervise(self, startup: bool = False) -> None:
        """Restart any part that died without chaos killing it, and say so."""
        for part in [*self.control_planes, *self.agents]:
            if part.wanted_up and part.process is not None and not part.alive():
                code = part.process.returncode
                if startup and part.kind == "agent" and code == 2 and len(self.control_planes) > 1:
                    raise UsageError(
                        "the agent refused a list of control-plane addresses (it needs the "
                        "agent that accepts HOST:PORT,HOST:PORT); use --control-planes 1\n"
                        + part.log_tail(600))
                message = f"{part.name} exited with code {code}; restarted"
                self.unexpected.append(message)
                self.note(message + "\n" + part.log_tail(1500))
                part.start()

    def answers(self, address: str) -> bool:
        try:
            with FleetClient(address, timeout_s=2.0, tls=PLAINTEXT) as client:
                client.list_dataplanes()
            return True
        except FleetError:
            return False

    def connected(self) -> set[str]:
        names: set[str] = set()
        for part in self.control_planes:
            try:
                address = control_plane_address(part)
                with FleetClient(address, timeout_s=2.0, tls=PLAINTEXT) as client:
                    names |= {d.name for d in client.list_dataplanes() if d.connected}
            except FleetError:
                pass
        return names

    def count_unfinished(self, job_ids: list[str]) -> int:
        try:
            return unfinished(self.conninfo, job_ids)
        except psycopg.Error:
            return len(job_ids)

    def runners_quiet(self) -> bool:
        """No attempt's runner is alive: nothing more can be written to the runs log."""
        return not any(
            folder.runner_alive()
            for agent in self.agents
            for folder in attempt_folders(agent_workdir(self.root, agent.name))
        )

    def note(self, message: str) -> None:
        elapsed = time.monotonic() - self.started
        stamp = datetime.now(UTC).strftime("%H:%M:%S.%f")[:-3]
        self.events.write(f"{stamp} +{elapsed:7.1f}s {message}\n")

    # -- the end --------------------------------------------------------------------------------

    def dump_registry(self) -> None:
        """The registry's jobs, attempts and events as CSV next to the logs (the server
        and its data are deleted at the end)."""
        if self.pg is None or not self.conninfo:
            return
        try:
            dump_tables(self.conninfo, self.root)
        except psycopg.Error as error:
            self.note(f"could not dump the registry: {error}")

    def dataplanes_lost(self) -> Counter[str]:
        """How often each dataplane was declared lost, from the control planes' logs."""
        lost: Counter[str] = Counter()
        for part in self.control_planes:
            if part.log_file.exists():
                for match in LOST_LINE.finditer(part.log_file.read_text(errors="replace")):
                    lost.update(name.strip(" '") for name in match.group(1).split(","))
        return lost

    def cleanup(self, keep: bool) -> None:
        if self.load is not None:
            self.load.abort()
        if self.monitor is not None:
            self.monitor.stop()
        stop_everything(self.agents, self.control_planes, self.root)
        if self.pg is not None:
            self.pg.stop_keeping_log(self.root if keep else None)
        self.events.close()

    def table(self, verdict: Verdict, wall_s: float) -> list[tuple[str, str]]:
        assert self.load is not None
        stats = self.load.stats
        by_kind = Counter(k.kind for k in self.kills)
        pg_how = Counter(k.how for k in self.kills if k.kind == "postgres")
        kills = f"{len(self.kills)}: " + ", ".join(
            f"{kind.replace('-', ' ')} {by_kind[kind]}" for kind in KINDS)
        if pg_how:
            kills += " (" + ", ".join(f"{n} {how}" for how, n in sorted(pg_how.items())) + ")"
        if sum(k.long for k in self.kills):
            kills += f"; {sum(k.long for k in self.kills)} longer than lost_after"
        recovered = [k for k in self.kills if k.recovery_s is not None]
        if recovered:
            worst = max(recovered, key=lambda k: k.recovery_s or 0.0)
            victim = worst.victim if worst.kind == "postgres" else f"{worst.kind} {worst.victim}"
            longest = f"{worst.recovery_s:.1f} s (kill {worst.number}: {victim}, {worst.how})"
        else:
            longest = "-"
        stalled = len(self.kills) - len(recovered)
        if stalled:
            longest += f"; {stalled} kills without progress within {self.args.recover_timeout:g} s"
        errors = ", ".join(f"{code} {n}" for code, n in stats.errors.most_common()) or "none"
        lost_dataplanes = self.dataplanes_lost()
        declared = str(sum(lost_dataplanes.values()))
        if lost_dataplanes:
            each = sorted(lost_dataplanes.items())
            declared += " (" + ", ".join(f"{name} {n}" for name, n in each) + ")"
        duplicated = str(verdict.duplicated)
        if verdict.fenced_duplicates:
            duplicated += f" ({verdict.fenced_duplicates} fenced)"
        return [
            ("submitted (acknowledged)", str(verdict.submitted)),
            ("succeeded", str(verdict.succeeded)),
            ("failed", str(verdict.failed)),
            ("lost", str(verdict.lost)),
            ("duplicated", duplicated),
            ("records that disagree", str(verdict.mismatched)),
            ("kills", kills),
            ("longest recovery", longest),
            ("wall time", f"{wall_s:.0f} s"),
            ("attempts", f"{verdict.attempts} ({verdict.attempts_lost} LOST, "
                         f"at most {verdict.max_attempts} for one job)"),
            ("submit errors retried", errors),
            ("idempotent re-submits", f"{stats.resubmits} checked, "
                                      f"{len(stats.resubmit_mismatches)} answered another job"),
            ("dataplanes declared lost", declared),
            ("unexpected exits", str(len(self.unexpected))),
        ]


def print_table(rows: list[tuple[str, str]]) -> str:
    lines = ["| measure | value |", "|---|---|", *(f"| {k} | {v} |" for k, v in rows)]
    text = "\n".join(lines)
    print(text)
    return text


def record(table: str, argv: list[str]) -> None:
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                            capture_output=True, text=True, check=False).stdout.strip() or "?"
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    heading = (f"## Chaos (bench/chaos.py): {stamp}, commit {commit}, {os.cpu_count()} cores, "
               f"Python {platform.python_version()}")
    command = "`.venv/bin/python bench/chaos.py " + " ".join(argv) + "`"
    with RESULTS.open("a") as results:
        results.write(f"\n{heading}\n\n{command}\n\n{table}\n")


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    root = args.dir or Path(tempfile.mkdtemp(prefix="fleet-chaos-"))
    root.mkdir(parents=True, exist_ok=True)
    signal.signal(signal.SIGTERM, _interrupt)   # clean up as on Ctrl-C
    harness = Harness(args, root)
    code, verdict, ok = 1, None, False
    try:
        verdict, ok = harness.run()
        code = 0 if ok else 1
    except UsageError as error:
        print(f"error: {error}", file=sys.stderr)
        code = 2
    except HarnessError as error:
        print(f"error: {error}", file=sys.stderr)
    except KeyboardInterrupt:
        print("interrupted: stopping the fleet", file=sys.stderr)
        code = 130
    finally:
        keep = args.keep or not ok
        if not ok:
            harness.dump_registry()
        harness.cleanup(keep)
    if verdict is not None:
        table = print_table(harness.table(verdict, time.monotonic() - harness.started))
        for problem in verdict.problems[:SHOWN_PROBLEMS]:
            print(problem)
        if len(verdict.problems) > SHOWN_PROBLEMS:
            print(f"... and {len(verdict.problems) - SHOWN_PROBLEMS} more in problems.txt")
        if verdict.problems and keep:
            (root / "problems.txt").write_text("\n".join(verdict.problems) + "\n")
        assert harness.load is not None
        for line in harness.load.stats.fatal + harness.load.stats.resubmit_mismatches:
            print(f"submit: {line}")
        for line in harness.unexpected:
            print(f"unexpected exit: {line}")
        if not ok:
            for kill in harness.kills:
                recovery = "-" if kill.recovery_s is None else f"{kill.recovery_s:.1f}s"
                print(f"kill {kill.number} at {kill.wall:%H:%M:%S.%f}"[:-3]
                      + f" UTC: {kill.kind} {kill.victim} ({kill.how}), recovery {recovery}")
        if args.record:
            record(table, argv)
        print("checks passed" if ok else "CHECKS FAILED")
    if keep:
        print(f"logs kept in {root} (chaos.log: the kills; cp*.log, agents/*/agent.log, "
              f"agents/*/work/attempts/*, runs.log, postgres.log)")
    else:
        shutil.rmtree(root, ignore_errors=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
