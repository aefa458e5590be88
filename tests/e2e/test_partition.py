"""End to end: a network partition between one agent and the control plane (a TCP proxy that
blackholes the link, see tests/netproxy.py), with the control plane, two agents and the
jobs as real processes.

- Shorter than lost_after: the dataplane turns stale (new work goes elsewhere) and, once
  healed, its running attempt simply goes on: one attempt, one run.
- Longer than lost_after: the attempt is declared LOST and the job runs again elsewhere
  (epoch 2). When the link comes back, the old attempt is killed on the control plane's
  word, or, if it finished during the partition, its SUCCEEDED is ignored.

Agent "a" (2 reserved H100s, preferred by the default policy) dials through the proxy;
agent "b" (1 on-demand H100) dials directly. Each job process leaves marker files named
by its attempt id, so the test knows which processes ran and how they ended.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fleet.v1 import types_pb2

from fleet_cli.local_fleet import LocalFleet
from fleet_client import FleetClient
from tests.fleet_waits import wait_until
from tests.netproxy import NetProxy

pytestmark = pytest.mark.e2e
P = types_pb2
HEARTBEAT_S = 0.3
STALE_AFTER_S = 1.5

# One attempt of a job: <runs>/<attempt>.started holds its pid; it waits for <runs>/<attempt>.go,
# then writes <attempt>.done and exits 0. SIGTERM writes <attempt>.terminated and exits 143.
JOB = """\
import os, pathlib, signal, sys, time
runs = pathlib.Path(sys.argv[1])
attempt = os.environ['FLEET_ATTEMPT_ID']
def terminated(signum, frame):
    (runs / (attempt + '.terminated')).write_text('SIGTERM')
    sys.exit(143)
signal.signal(signal.SIGTERM, terminated)
(runs / (attempt + '.started')).write_text(str(os.getpid()))
while not (runs / (attempt + '.go')).exists():
    time.sleep(0.05)
(runs / (attempt + '.done')).write_text('')
"""


def pool_file(name: str, tier: str, gpus: int) -> dict[str, object]:
    return {
        "dataplane": {"name": name, "region": "us-east-1", "cloud": "test"},
        "pools": [{"name": "h100", "purchase_type": tier, "gpu_model": "H100",
                   "gpu_memory_gb": 80, "gpu_count": gpus}],
    }


@dataclass
class Partitioned:
    fleet: LocalFleet
    proxy: NetProxy
    client: FleetClient
    root: Path

    def submit(self, name: str) -> tuple[str, Path]:
        runs = self.root / "runs" / name
        runs.mkdir(parents=True)
        spec = P.JobSpec(project="e2e", name=name, command=[sys.executable, "-c", JOB, str(runs)],
                         resources=P.Resources(gpus=1, gpu_model="H100"))
        return self.client.submit(spec).job.id, runs

    def running_on(self, job_id: str, dataplane: str, epoch: int, runs: Path) -> P.Job:
        """Wait until the job's attempt of this epoch runs there and its process started."""
        return wait_until(
            lambda: ((job := self.client.get(job_id)).phase == P.JOB_PHASE_RUNNING
                     and job.dataplane == dataplane and job.epoch == epoch
                     and (runs / f"{job.attempts[-1].id}.started").exists() and job),
            20, f"{job_id} to run on {dataplane} (epoch {epoch})", self.fleet)

    def health(self, name: str) -> int:
        return next(d.health for d in self.client.list_dataplanes() if d.name == name)

    def cli(self, *args: str) -> Any:
        done = subprocess.run(
            [sys.executable, "-m", "fleet_cli", "--address", self.fleet.address, "--insecure",
             "-o", "json",
             *args], capture_output=True, text=True, timeout=30)
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)


@pytest.fixture
def partitioned(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Partitioned]:
    lost_after_s: float = request.param
    fleet = LocalFleet(tmp_path / "fleet", heartbeat_interval_s=HEARTBEAT_S,
                       stale_after_s=STALE_AFTER_S, lost_after_s=lost_after_s)
    # The fleet stops before the proxy, so that its agents do not see the link drop.
    with (NetProxy(fleet.address) as proxy, fleet,
          fleet.client(timeout_s=10) as client):
        fleet.start_control_plane()
        # Agents dialing before the control plane listens would only grow their backoff.
        wait_until(lambda: _answers(client), 60, "the control plane to answer", fleet)
        fleet.add_agent("a", pool_file("a", "reserved", 2), control_plane=proxy.address)
        fleet.add_agent("b", pool_file("b", "on_demand", 1))
        wait_until(lambda: _healthy(client) == {"a", "b"}, 60, "both agents to connect", fleet)
        yield Partitioned(fleet, proxy, client, tmp_path)


def _answers(client: FleetClient) -> bool:
    try:
        client.list_dataplanes()
    except Exception:
        return False
    return True


def _healthy(client: FleetClient) -> set[str]:
    try:
        # Connected, and its pools reported (the first heartbeat follows the hello).
        return {d.name for d in client.list_dataplanes()
                if d.connected and d.health == P.DATAPLANE_HEALTH_HEALTHY and d.pools}
    except Exception:
        return set()  # the control plane is still starting


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_the_proxy_blackholes_while_cut_and_delivers_after_heal() -> None:
    with socket.create_server(("127.0.0.1", 0)) as server:
        target = f"127.0.0.1:{server.getsockname()[1]}"
        with NetProxy(target) as proxy:
            client = socket.create_connection(("127.0.0.1", proxy.port), timeout=5)
            upstream, _ = server.accept()
            client.sendall(b"before")
            assert upstream.recv(100) == b"before"
            proxy.cut()
            client.sendall(b"during")
            late = socket.create_connection(("127.0.0.1", proxy.port), timeout=5)  # accepted
            server.settimeout(0.5)
            with pytest.raises(TimeoutError):
                server.accept()          # ... but it does not reach the target during a cut
            upstream.settimeout(0.5)
            with pytest.raises(TimeoutError):
                upstream.recv(100)       # no byte through, and no close either
            proxy.heal()
            upstream.settimeout(5)
            assert upstream.recv(100) == b"during"
            server.settimeout(5)
            late_upstream, _ = server.accept()
            assert proxy.drop_connections() == 2
            client.settimeout(5)
            assert client.recv(100) == b"" and upstream.recv(100) == b""
            for sock in (client, upstream, late, late_upstream):
                sock.close()


@pytest.mark.parametrize("partitioned", [8.0], indirect=True)
def test_a_partition_shorter_than_lost_after_only_stops_new_placements(
    partitioned: Partitioned,
) -> None:
    p = partitioned
    first, first_runs = p.submit("first")
    job = p.running_on(first, "a", 1, first_runs)
    attempt = job.attempts[0].id

    p.proxy.cut()
    cut_at = time.monotonic()
    wait_until(lambda: p.health("a") == P.DATAPLANE_HEALTH_STALE, 5, "a to turn stale", p.fleet)
    shown = {d["name"]: d for d in p.cli("dataplanes", "list")}
    assert shown["a"]["health"] == "DATAPLANE_HEALTH_STALE"
    assert shown["b"]["health"] == "DATAPLANE_HEALTH_HEALTHY"
    # a has a free reserved GPU and is preferred, but stale: the new job goes to b.
    second, second_runs = p.submit("second")
    p.running_on(second, "b", 1, second_runs)
    assert time.monotonic() - p.fleet.lost_after_s < cut_at, "the partition outlived lost_after"
    p.proxy.heal()

    wait_until(lambda: p.health("a") == P.DATAPLANE_HEALTH_HEALTHY, 5, "a to be heard again",
               p.fleet)
    (first_runs / f"{attempt}.go").touch()
    (second_runs / f"{p.client.get(second).attempts[0].id}.go").touch()
    wait_until(lambda: all(p.client.get(j).phase == P.JOB_PHASE_SUCCEEDED for j in (first, second)),
               20, "both jobs to succeed", p.fleet)

    shown_job = p.cli("jobs", "get", first)
    assert shown_job["phase"] == "JOB_PHASE_SUCCEEDED" and shown_job["dataplane"] == "a"
    assert [(a["id"], a["phase"]) for a in shown_job["attempts"]] == [
        (attempt, "ATTEMPT_PHASE_SUCCEEDED")
    ], "the same attempt went on: nothing was requeued"
    assert "retries_used" not in shown_job, "no retry was spent"
    assert sorted(f.name for f in first_runs.iterdir()) == [
        f"{attempt}.done", f"{attempt}.go", f"{attempt}.started"
    ], "the job's process ran once and was never stopped"
    assert p.cli("jobs", "get", second)["dataplane"] == "b"


@pytest.mark.parametrize("partitioned", [4.0], indirect=True)
def test_after_a_long_partition_the_old_attempt_is_killed_and_the_job_runs_elsewhere(
    partitioned: Partitioned,
) -> None:
    p = partitioned
    job_id, runs = p.submit("job")
    old = p.running_on(job_id, "a", 1, runs).attempts[0].id
    old_pid = int((runs / f"{old}.started").read_text())

    p.proxy.cut()
    job = p.running_on(job_id, "b", 2, runs)
    new = job.attempts[-1].id
    assert [a.phase for a in job.attempts] == [P.ATTEMPT_PHASE_LOST, P.ATTEMPT_PHASE_RUNNING]
    assert _pid_alive(old_pid), "a partition alone does not stop the old attempt"
    # The partition outlives both ends' keepalives: each drops the connection, and the
    # agent's next dial hangs in the partition until it heals.
    assert p.proxy.drop_connections() >= 1
    wait_until(lambda: p.proxy.open_connections() >= 1, 15, "a to dial again", p.fleet)
    time.sleep(0.5)
    assert p.health("a") == P.DATAPLANE_HEALTH_LOST
    p.proxy.heal()

    # Reconnected, a reports the old attempt as running; the control plane wants it dead.
    wait_until(lambda: (runs / f"{old}.terminated").exists() and not _pid_alive(old_pid), 15,
               "the old attempt's process to be terminated", p.fleet)
    cancel = json.loads((p.fleet.agents["a"].workdir / "attempts" / old / "cancel_requested")
                        .read_text())
    assert cancel["reason"] == "the control plane does not want it"
    (runs / f"{new}.go").touch()
    wait_until(lambda: p.client.get(job_id).phase == P.JOB_PHASE_SUCCEEDED, 20,
               "the job to succeed", p.fleet)

    shown = p.cli("jobs", "get", job_id)
    assert (shown["phase"], shown["dataplane"], shown["epoch"]) == ("JOB_PHASE_SUCCEEDED", "b", "2")
    assert [(a["id"], a["dataplane"], a["phase"]) for a in shown["attempts"]] == [
        (old, "a", "ATTEMPT_PHASE_LOST"), (new, "b", "ATTEMPT_PHASE_SUCCEEDED")
    ]
    assert not (runs / f"{old}.done").exists()


@pytest.mark.parametrize("partitioned", [4.0], indirect=True)
def test_a_result_that_finished_during_a_long_partition_is_ignored(
    partitioned: Partitioned,
) -> None:
    p = partitioned
    job_id, runs = p.submit("job")
    old = p.running_on(job_id, "a", 1, runs).attempts[0].id

    p.proxy.cut()
    new = p.running_on(job_id, "b", 2, runs).attempts[-1].id
    # The old attempt succeeds while nobody can hear it; its report waits in the partition.
    (runs / f"{old}.go").touch()
    agent_log = p.fleet.agents["a"].log_file
    wait_until(lambda: f"attempt {old} finished: SUCCEEDED" in agent_log.read_text(), 5,
               "agent a to see the old attempt succeed", p.fleet)
    # The link resumes as it was (the partition was shorter than the keepalives), so
    # the queued heartbeats and the SUCCEEDED update arrive late on the same stream.
    p.proxy.heal()

    # The control plane read the late result: it answered with a Forget, which only an
    # ended report gets.
    forgotten = p.fleet.agents["a"].workdir / "attempts" / old / "forgotten"
    wait_until(forgotten.exists, 10, "a's late report to be answered", p.fleet)
    shown = p.cli("jobs", "get", job_id)
    assert (shown["phase"], shown["dataplane"], shown["epoch"]) == ("JOB_PHASE_RUNNING", "b", "2")
    assert [(a["id"], a["phase"]) for a in shown["attempts"]] == [
        (old, "ATTEMPT_PHASE_LOST"), (new, "ATTEMPT_PHASE_RUNNING")
    ], "a fenced attempt's success changes neither the job nor the lost attempt"

    (runs / f"{new}.go").touch()
    wait_until(lambda: p.client.get(job_id).phase == P.JOB_PHASE_SUCCEEDED, 20,
               "the job to succeed", p.fleet)
    shown = p.cli("jobs", "get", job_id)
    assert (shown["phase"], shown["dataplane"], shown["epoch"]) == ("JOB_PHASE_SUCCEEDED", "b", "2")
    assert [(a["id"], a["phase"]) for a in shown["attempts"]] == [
        (old, "ATTEMPT_PHASE_LOST"), (new, "ATTEMPT_PHASE_SUCCEEDED")
    ]
