"""`fleet status`: the view as a user reads it (exact text from a snapshot), the JSON a
script reads, and the command against the fake control plane (paging, the queue cap, the
live refresh, errors and bad flags)."""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

import grpc
import pytest
from fleet.v1 import admin_pb2, types_pb2
from google.protobuf.timestamp_pb2 import Timestamp
from rich.console import Console, RenderableType
from typer.testing import CliRunner, Result

from fleet_cli import status
from fleet_cli.main import app
from fleet_cli.status_view import (
    StatusSnapshot,
    build_snapshot,
    gpu_bar,
    newest_placed,
    snapshot_json,
    status_view,
)
from tests.cli.fakes import Failure, FakeFleet

P = types_pb2
NOW = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)
ACTIVE = admin_pb2.DATAPLANE_STATE_ACTIVE


def ts(moment: datetime) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(moment)
    return stamp


def ago(**kwargs: float) -> datetime:
    return NOW - timedelta(**kwargs)


def text_of(renderable: RenderableType, width: int = 80) -> str:
    console = Console(record=True, width=width, file=io.StringIO())
    console.print(renderable)
    return "\n".join(line.rstrip() for line in console.export_text().splitlines())


def pool(name: str, tier: int, total: int, free: int, model: str = "") -> types_pb2.Pool:
    return P.Pool(name=name, purchase_type=tier, gpu_model=model, gpu_total=total, gpu_free=free)


DATAPLANES = [
    admin_pb2.Dataplane(
        name="onprem-dc1", region="us-east-dc1", cloud="onprem", state=ACTIVE,
        health=P.DATAPLANE_HEALTH_HEALTHY, connected=True, last_heartbeat_at=ts(ago(seconds=1)),
        pools=[pool("h100", P.PURCHASE_TYPE_RESERVED, 8, 2, "H100")],
    ),
    admin_pb2.Dataplane(
        name="gcp-eu-spot", region="europe-west4", cloud="gcp",
        health=P.DATAPLANE_HEALTH_STALE, last_heartbeat_at=ts(ago(seconds=40)),
        state=admin_pb2.DATAPLANE_STATE_DRAINING, cordon_reason="upgrade",
        drain_deadline=ts(NOW + timedelta(minutes=12)),
        pools=[pool("l4", P.PURCHASE_TYPE_SPOT, 8, 8, "L4"),
               pool("cpu", P.PURCHASE_TYPE_SPOT, 0, 0)],
    ),
    admin_pb2.Dataplane(
        name="aws-us-east-1", region="us-east-1", cloud="aws", state=ACTIVE,
        health=P.DATAPLANE_HEALTH_HEALTHY, connected=True, last_heartbeat_at=ts(ago(seconds=2)),
        pools=[
            pool("a100", P.PURCHASE_TYPE_ON_DEMAND, 16, 0, "A100"),
            pool("h100", P.PURCHASE_TYPE_ON_DEMAND, 8, 7, "H100"),
        ],
    ),
]  # fmt: skip

QUEUED = [
    ("vision", ago(minutes=3, seconds=4)), ("nlp", ago(seconds=12)), ("vision", ago(seconds=5))
]  # fmt: skip

PLACED = [
    P.Job(
        id="j-1", spec=P.JobSpec(project="nlp", name="train"), phase=P.JOB_PHASE_RUNNING,
        dataplane="onprem-dc1", pool="h100", started_at=ts(ago(minutes=2)), epoch=1,
    ),
    P.Job(
        id="j-2", spec=P.JobSpec(project="nlp", name="eval"), phase=P.JOB_PHASE_SCHEDULED,
        dataplane="aws-us-east-1", pool="h100", updated_at=ts(ago(seconds=3)), epoch=1,
        message="placed on aws-us-east-1/h100: on_demand, reserved is full",
    ),
]  # fmt: skip
REASONS = {"j-1": "placed on onprem-dc1/h100: reserved, cheapest"}


def snapshot(capped: bool = False) -> StatusSnapshot:
    placed = newest_placed(PLACED, 10)
    return build_snapshot(DATAPLANES, QUEUED, capped, 10_000, placed, NOW, REASONS)


# -- the view ------------------------------------------------------------------------------

VIEW = """\
fleet status at 2026-01-01T12:00:00Z, every 2s (Ctrl-C to stop)

GPUs by tier (healthy dataplanes)
reserved   █████████░░░    6/8 used  2 free
on_demand  ████████░░░░  17/24 used  7 free

dataplanes by region (2 healthy, 1 stale)
dataplane        health    state      pool  tier       GPUs used            free
────────────────────────────────────────────────────────────────────────────────
europe-west4
  gcp-eu-spot    stale,    draining   l4    spot       ░░░░░░░░░░░░    0/8     8
                 40s ago   (12m
                           left):
                           upgrade
                                      cpu   spot       no GPUs         0/0     0
us-east-1
  aws-us-east-1  healthy   active     a100  on_demand  ████████████  16/16     0
                                      h100  on_demand  ██░░░░░░░░░░    1/8     7
us-east-dc1
  onprem-dc1     healthy   active     h100  reserved   █████████░░░    6/8     2

queue: 3 jobs waiting
project  queued  oldest wait
────────────────────────────
vision        2        3m 4s
nlp           1          12s

recent placements
job  project  name   phase      where               for  why
────────────────────────────────────────────────────────────────────────────────
j-2  nlp      eval   scheduled  aws-us-east-1/h100  3s   on_demand, reserved is
                                                         full
j-1  nlp      train  running    onprem-dc1/h100     2m   reserved, cheapest"""


def test_the_view_groups_dataplanes_by_region_with_gpu_bars_queue_and_placements() -> None:
    assert text_of(status_view(snapshot(), interval_s=2)) == VIEW


def test_a_capped_queue_says_so_in_every_count() -> None:
    text = text_of(status_view(snapshot(capped=True)))
    assert "queue: 3+ jobs waiting (counted up to 10,000)" in text
    assert "vision       2+       3m 4s+" in text.splitlines()
    assert "every 2s" not in text   # --once: no refresh said in the header


def test_a_failed_refresh_is_said_above_the_last_frame() -> None:
    text = text_of(status_view(snapshot(), interval_s=5, problem="127.0.0.1:1: connection refused"))
    lines = text.splitlines()
    assert lines[0] == "fleet status at 2026-01-01T12:00:00Z, every 5s (Ctrl-C to stop)"
    assert lines[1] == "could not refresh: 127.0.0.1:1: connection refused; retrying"


def test_an_empty_fleet() -> None:
    empty = build_snapshot([], [], False, 10_000, [], NOW)
    assert text_of(status_view(empty)) == (
        "fleet status at 2026-01-01T12:00:00Z\n\n"
        "no dataplanes yet (fleet dataplanes add)\n\n"
        "queue: empty\n\n"
        "recent placements: no job is scheduled or running"
    )


@pytest.mark.parametrize(
    ("used", "total", "bar"),
    [
        (0, 8, "░░░░░░░░░░░░"),
        (1, 100, "█░░░░░░░░░░░"),      # any use shows
        (99, 100, "███████████░"),     # and so does any free GPU
        (100, 100, "████████████"),
        (4, 8, "██████░░░░░░"),
        (0, 0, "no GPUs"),
    ],
)
def test_gpu_bar(used: int, total: int, bar: str) -> None:
    assert gpu_bar(used, total).plain == bar


def test_newest_placements_come_first_by_start_or_placement() -> None:
    jobs = [
        P.Job(id="old-running", started_at=ts(ago(minutes=5))),
        P.Job(id="just-placed", updated_at=ts(ago(seconds=1))),
        P.Job(id="running", started_at=ts(ago(minutes=1)), updated_at=ts(ago(seconds=0))),
    ]
    assert [job.id for job in newest_placed(jobs, 2)] == ["just-placed", "running"]


def test_snapshot_json() -> None:
    document = snapshot_json(snapshot())
    assert document["taken_at"] == "2026-01-01T12:00:00Z"
    dataplanes = document["dataplanes"]
    assert isinstance(dataplanes, list)
    assert [d["name"] for d in dataplanes] == ["gcp-eu-spot", "aws-us-east-1", "onprem-dc1"]
    assert dataplanes[0] == {
        "name": "gcp-eu-spot", "region": "europe-west4", "cloud": "gcp", "health": "stale",
        "state": "draining", "state_text": "draining (12m left): upgrade", "connected": False,
        "last_heartbeat_at": "2026-01-01T11:59:20Z", "active_attempts": 0,
        "pools": [
            {"name": "l4", "tier": "spot", "gpu_model": "L4", "gpu_total": 8, "gpu_used": 0,
             "gpu_free": 8},
            {"name": "cpu", "tier": "spot", "gpu_model": "", "gpu_total": 0, "gpu_used": 0,
             "gpu_free": 0},
        ],
    }  # fmt: skip
    assert document["tiers"] == [
        {"tier": "reserved", "gpu_total": 8, "gpu_used": 6, "gpu_free": 2},
        {"tier": "on_demand", "gpu_total": 24, "gpu_used": 17, "gpu_free": 7},
    ]
    assert document["queue"] == {
        "total": 3, "capped": False, "cap": 10_000,
        "projects": [
            {"project": "vision", "queued": 2, "oldest_queued_at": "2026-01-01T11:56:56Z",
             "oldest_wait_s": 184.0},
            {"project": "nlp", "queued": 1, "oldest_queued_at": "2026-01-01T11:59:48Z",
             "oldest_wait_s": 12.0},
        ],
    }  # fmt: skip
    assert document["placements"] == [
        {"job_id": "j-2", "project": "nlp", "name": "eval", "phase": "scheduled",
         "dataplane": "aws-us-east-1", "pool": "h100",
         "message": "placed on aws-us-east-1/h100: on_demand, reserved is full",
         "since": "2026-01-01T11:59:57Z"},
        {"job_id": "j-1", "project": "nlp", "name": "train", "phase": "running",
         "dataplane": "onprem-dc1", "pool": "h100",
         "message": "placed on onprem-dc1/h100: reserved, cheapest",
         "since": "2026-01-01T11:58:00Z"},
    ]  # fmt: skip


# -- the command ---------------------------------------------------------------------------


def fleet(address: str, *args: str, terminal: bool = False) -> Result:
    env = {"COLUMNS": "200", "FLEET_ADDRESS": None, "FLEET_TLS_CA": None, "FLEET_API_KEY": None}
    if terminal:   # what rich reads to draw in place, as on a terminal
        env |= {"TTY_COMPATIBLE": "1", "TTY_INTERACTIVE": "1"}
    else:
        env |= {"TTY_COMPATIBLE": None, "TTY_INTERACTIVE": None, "FORCE_COLOR": None}
    return CliRunner(env=env).invoke(app, ["--address", address, "--insecure", *args])


def job(job_id: str, project: str, phase: int, **fields: object) -> types_pb2.Job:
    return P.Job(id=job_id, spec=P.JobSpec(project=project), phase=phase, **fields)  # type: ignore[arg-type]


@pytest.fixture
def busy_fleet(fake_fleet: FakeFleet) -> FakeFleet:
    now = datetime.now(UTC)
    onprem = admin_pb2.Dataplane()
    onprem.CopyFrom(DATAPLANES[0])   # a test changes it
    fake_fleet.dataplanes = [onprem]
    for n in range(3):
        fake_fleet.add_job(job(f"q-{n}", "vision", P.JOB_PHASE_QUEUED, created_at=ts(now)))
    fake_fleet.add_job(job("done", "vision", P.JOB_PHASE_SUCCEEDED))
    # A running job: its message is cleared; its "scheduled" event says why it went there.
    attempt = P.Attempt(id="r-1-1", dataplane="onprem-dc1", pool="h100")
    fake_fleet.add_job(
        job("r-1", "nlp", P.JOB_PHASE_RUNNING, dataplane="onprem-dc1", pool="h100", epoch=1,
            started_at=ts(now), attempts=[attempt]),
        [
            P.JobEvent(seq=1, job_id="r-1", kind="submitted", phase=P.JOB_PHASE_QUEUED),
            P.JobEvent(seq=2, job_id="r-1", kind="scheduled", phase=P.JOB_PHASE_SCHEDULED,
                       attempt_id="r-1-1", message="placed on onprem-dc1/h100: cheapest tier"),
            P.JobEvent(seq=3, job_id="r-1", kind="started", phase=P.JOB_PHASE_RUNNING,
                       attempt_id="r-1-1"),
        ],
    )  # fmt: skip
    fake_fleet.dataplane_of_attempt["r-1-1"] = "onprem-dc1"
    return fake_fleet


def test_once_prints_one_frame(busy_fleet: FakeFleet) -> None:
    result = fleet(busy_fleet.address, "status", "--once")
    assert result.exit_code == 0, result.output
    lines = [line.rstrip() for line in result.stdout.splitlines()]
    assert lines[0].startswith("fleet status at ") and "every" not in lines[0]
    row = next(line for line in lines if line.startswith("  onprem-dc1"))
    assert row.split() == ["onprem-dc1", "healthy", "active", "h100", "reserved",
                           "█████████░░░", "6/8", "2"]  # fmt: skip
    assert "queue: 3 jobs waiting" in lines
    assert next(line for line in lines if line.startswith("vision")).split()[:2] == ["vision", "3"]
    placement = next(line for line in lines if line.startswith("r-1 "))
    assert placement.split()[:4] == ["r-1", "nlp", "-", "running"]
    assert "onprem-dc1/h100" in placement and placement.endswith("cheapest tier")
    assert "done" not in result.stdout
    phases = [list(request.phases) for request in busy_fleet.list_requests]
    assert phases == [[P.JOB_PHASE_QUEUED], [P.JOB_PHASE_SCHEDULED, P.JOB_PHASE_RUNNING]]


@pytest.mark.parametrize("args", [["status", "--json"], ["-o", "json", "status"]])
def test_json_is_one_snapshot(busy_fleet: FakeFleet, args: list[str]) -> None:
    result = fleet(busy_fleet.address, *args)
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert [d["name"] for d in document["dataplanes"]] == ["onprem-dc1"]
    assert document["dataplanes"][0]["pools"][0]["gpu_used"] == 6
    assert document["queue"]["total"] == 3 and document["queue"]["capped"] is False
    assert [q["project"] for q in document["queue"]["projects"]] == ["vision"]
    (placement,) = document["placements"]
    assert (placement["job_id"], placement["dataplane"], placement["pool"]) == (
        "r-1", "onprem-dc1", "h100")
    assert placement["message"] == "placed on onprem-dc1/h100: cheapest tier"


def test_the_queue_is_counted_page_by_page_up_to_the_cap(
    fake_fleet: FakeFleet, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(status, "PAGE_SIZE", 2)
    for n in range(5):
        fake_fleet.add_job(job(f"q-{n}", "vision", P.JOB_PHASE_QUEUED, created_at=ts(NOW)))
    monkeypatch.setattr(status, "QUEUE_CAP", 5)   # exactly the cap: all counted
    exact = json.loads(fleet(fake_fleet.address, "status", "--json").stdout)["queue"]
    assert (exact["total"], exact["capped"]) == (5, False)
    queued_pages = [r for r in fake_fleet.list_requests if P.JOB_PHASE_QUEUED in r.phases]
    assert [(r.page_size, r.page_token) for r in queued_pages] == [(2, ""), (2, "2"), (1, "4")]

    monkeypatch.setattr(status, "QUEUE_CAP", 4)   # one more than the cap
    capped = fleet(fake_fleet.address, "status", "--once")
    assert "queue: 4+ jobs waiting (counted up to 4)" in capped.stdout


def test_more_than_10000_queued_jobs_read_10000_plus(fake_fleet: FakeFleet) -> None:
    for n in range(10_001):
        fake_fleet.add_job(job(f"q-{n}", "vision", P.JOB_PHASE_QUEUED, created_at=ts(NOW)))
    result = fleet(fake_fleet.address, "status", "--once")
    assert result.exit_code == 0, result.output
    assert "queue: 10,000+ jobs waiting (counted up to 10,000)" in result.stdout
    queued_pages = [r for r in fake_fleet.list_requests if P.JOB_PHASE_QUEUED in r.phases]
    assert len(queued_pages) == 10


def scripted_sleeps(*steps: Callable[[], None]) -> SimpleNamespace:
    """A stand-in for the time module whose sleep runs the next step, then stops the view
    as Ctrl-C does."""
    remaining = list(steps)

    def sleep(seconds: float) -> None:
        assert seconds == 0.5
        if not remaining:
            raise KeyboardInterrupt
        remaining.pop(0)()

    return SimpleNamespace(sleep=sleep)


def test_live_view_refreshes_in_place_survives_an_outage_and_ends_on_ctrl_c(
    busy_fleet: FakeFleet, monkeypatch: pytest.MonkeyPatch
) -> None:
    outage = Failure(grpc.StatusCode.UNAVAILABLE, "restarting")

    def go_down() -> None:
        busy_fleet.failures["ListDataplanes"] = outage

    def come_back_with_free_gpus() -> None:
        del busy_fleet.failures["ListDataplanes"]
        busy_fleet.dataplanes[0].pools[0].gpu_free = 8

    monkeypatch.setattr(status, "time", scripted_sleeps(go_down, come_back_with_free_gpus))
    result = fleet(busy_fleet.address, "status", "--interval", "0.5", terminal=True)
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "\x1b[" in out   # drawn in place with control sequences
    assert "every 0.5s (Ctrl-C to stop)" in out
    assert f"could not refresh: {busy_fleet.address}: restarting; retrying" in out
    assert "6/8" in out and "0/8" in out   # before and after the GPUs were freed
    # The running job's reason was looked up once, not at every refresh.
    assert len(busy_fleet.watches) == 1


def test_off_a_terminal_the_live_view_prints_frame_after_frame(
    busy_fleet: FakeFleet, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(status, "time", scripted_sleeps(lambda: None))
    result = fleet(busy_fleet.address, "status", "--interval", "0.5")
    assert result.exit_code == 0, result.output
    assert "\x1b[" not in result.stdout
    assert result.stdout.count("fleet status at ") == 2


def test_an_error_other_than_an_outage_ends_the_live_view(
    busy_fleet: FakeFleet, monkeypatch: pytest.MonkeyPatch
) -> None:
    def revoke() -> None:
        busy_fleet.failures["List"] = Failure(grpc.StatusCode.UNAUTHENTICATED, "key revoked")

    monkeypatch.setattr(status, "time", scripted_sleeps(revoke))
    result = fleet(busy_fleet.address, "status", "--interval", "0.5")
    assert result.exit_code == 1
    assert "error: key revoked" in result.stderr


def test_errors_take_the_clis_exit_codes(fake_fleet: FakeFleet, unreachable_address: str) -> None:
    unreachable = fleet(unreachable_address, "status", "--once")
    assert unreachable.exit_code == 3
    assert f"cannot reach the control plane at {unreachable_address}" in unreachable.stderr
    fake_fleet.failures["List"] = Failure(grpc.StatusCode.PERMISSION_DENIED, "no project")
    denied = fleet(fake_fleet.address, "status", "--json")
    assert denied.exit_code == 1 and "error: no project" in denied.stderr
    assert denied.stdout == ""


@pytest.mark.parametrize("value", ["0", "0.1", "soon"])
def test_a_bad_interval_exits_2_naming_the_flag_before_any_call(
    fake_fleet: FakeFleet, value: str
) -> None:
    result = fleet(fake_fleet.address, "status", "--interval", value)
    assert result.exit_code == 2
    assert "--interval" in result.stderr
    assert fake_fleet.list_requests == []
