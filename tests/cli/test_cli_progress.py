"""Progress on long commands: `fleet jobs submit --wait` and `fleet demo` show where their
jobs are while they wait, on a terminal only; piped, their output is what it always was."""

from __future__ import annotations

import io
import json
import re
import time
from typing import Any, cast

import pytest
from fleet.v1 import types_pb2
from rich.console import Console, RenderableType
from rich.spinner import Spinner
from typer.testing import CliRunner, Result

from fleet_cli import demo
from fleet_cli.jobs import WaitProgress, wait_status_text
from fleet_cli.main import app
from fleet_client import PLAINTEXT, FleetClient
from tests.cli.fakes import FakeFleet

P = types_pb2
Q, S, R, OK = P.JOB_PHASE_QUEUED, P.JOB_PHASE_SCHEDULED, P.JOB_PHASE_RUNNING, P.JOB_PHASE_SUCCEEDED
ESCAPE = "\x1b["


def text_of(renderable: RenderableType, width: int) -> str:
    console = Console(record=True, width=width, file=io.StringIO())
    console.print(renderable)
    return "\n".join(line.rstrip() for line in console.export_text().splitlines())


# -- submit --wait -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("phase", "placement", "message", "elapsed", "line"),
    [
        (Q, "-", "", 3.9, "job j-1: queued (3s)"),
        (Q, "-", "waits: no pool has 4 free H100", 59.0,
         "job j-1: queued (59s) · waits: no pool has 4 free H100"),
        (R, "eu/h100", "placed on eu/h100: cheapest", 65.2,
         "job j-1: running on eu/h100 (1m 5s) · placed on eu/h100: cheapest"),
        (S, "eu/h100", "", 7300, "job j-1: scheduled on eu/h100 (2h 1m)"),
    ],
)  # fmt: skip
def test_wait_status_line(
    phase: int, placement: str, message: str, elapsed: float, line: str
) -> None:
    assert wait_status_text("j-1", phase, placement, message, elapsed).plain == line


def test_the_status_line_stays_one_line_and_its_time_moves() -> None:
    progress = WaitProgress("j-1", R, "eu/h100", "placed on eu/h100: cheapest", time.monotonic())
    progress.started -= 65   # as if the wait had begun 65 s ago
    assert text_of(Spinner("dots", text=progress), 40) == "⠋ job j-1: running on eu/h100 (1m 5s) ·…"
    progress.started -= 60
    assert "(2m 5s)" in text_of(progress, 80)


def fleet(address: str, *args: str, terminal: bool) -> Result:
    env = {"COLUMNS": "200", "FLEET_ADDRESS": None, "FLEET_TLS_CA": None, "FLEET_API_KEY": None}
    if terminal:  # what rich reads to draw in place, as on a terminal
        env |= {"TTY_COMPATIBLE": "1", "TTY_INTERACTIVE": "1"}
    else:
        env |= {"TTY_COMPATIBLE": None, "TTY_INTERACTIVE": None, "FORCE_COLOR": None}
    return CliRunner(env=env).invoke(app, ["--address", address, "--insecure", *args])


SCRIPT = [
    ("submitted", Q, ""),
    ("scheduled", S, "eu-west"),
    ("started", R, "eu-west"),
    ("succeeded", OK, "eu-west"),
]


def submit_and_wait(fake: FakeFleet, terminal: bool) -> Result:
    fake.script = list(SCRIPT)
    args = ("-o", "json", "jobs", "submit", "--project", "ml", "--wait", "--", "true")
    return fleet(fake.address, *args, terminal=terminal)


def test_submit_wait_on_a_terminal_shows_phase_placement_message_and_time(
    fake_fleet: FakeFleet,
) -> None:
    result = submit_and_wait(fake_fleet, terminal=True)
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["phase"] == "JOB_PHASE_SUCCEEDED"
    err = result.stderr
    assert ESCAPE in err
    assert re.search(r"job job-1: queued \(\d+s\) · waiting for capacity", err), err
    assert re.search(r"job job-1: scheduled on eu-west/h100 \(\d+s\) · on eu-west", err), err
    assert re.search(r"job job-1: running on eu-west/h100 \(\d+s\) · on eu-west", err), err
    # The events are still printed, one line each.
    for kind in ("submitted", "scheduled", "started", "succeeded"):
        assert re.search(rf"\d\dZ  {kind}", err), kind


def test_submit_wait_piped_prints_the_events_only(fake_fleet: FakeFleet) -> None:
    result = submit_and_wait(fake_fleet, terminal=False)
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["phase"] == "JOB_PHASE_SUCCEEDED"
    lines = result.stderr.splitlines()
    assert lines[0] == "submitted job job-1; waiting for it to finish"
    assert [line.split()[1] for line in lines[1:]] == [kind for kind, _, _ in SCRIPT]
    assert ESCAPE not in result.stderr and "job job-1: " not in result.stderr


# -- demo ----------------------------------------------------------------------------------


def demo_jobs(*phases: int) -> list[types_pb2.Job]:
    return [P.Job(id=f"j-{n}", phase=phase) for n, phase in enumerate(phases)]


def test_demo_progress_line() -> None:
    jobs = demo_jobs(Q, Q, R, OK, OK, P.JOB_PHASE_FAILED)
    assert text_of(demo.demo_progress(jobs, 12.7), 100) == (
        "━━━━━━━━━━━━━━━                3/6 finished · 2 queued, 1 running, 2 succeeded, "
        "1 failed · 12s"
    )
    assert text_of(demo.demo_progress(demo_jobs(OK, OK), 1), 100).startswith("━" * 30 + " 2/2")


class AliveFleet:
    """What demo._follow needs of a LocalFleet: every process is alive."""

    def check_alive(self) -> None:
        pass


@pytest.mark.parametrize("terminal", [True, False])
def test_demo_shows_progress_only_on_a_terminal(fake_fleet: FakeFleet, terminal: bool) -> None:
    for job in demo_jobs(OK, OK, P.JOB_PHASE_FAILED):
        job.spec.name = f"train-{job.id}"
        fake_fleet.add_job(job)
    out = io.StringIO()
    console = Console(
        file=out, width=120, force_terminal=terminal, force_interactive=terminal
    )  # fmt: skip
    with FleetClient(fake_fleet.address, tls=PLAINTEXT) as client:
        fleet = cast(Any, AliveFleet())
        jobs = demo._follow(fleet, client, ["j-0", "j-1", "j-2"], console)
    assert [job.phase for job in jobs] == [OK, OK, P.JOB_PHASE_FAILED]
    if terminal:
        assert "3/3 finished · 2 succeeded, 1 failed" in out.getvalue()
        assert "train-j-2" in out.getvalue()
    else:
        assert out.getvalue() == ""


def test_a_requeued_job_is_not_shown_on_its_old_dataplane(fake_fleet: FakeFleet) -> None:
    fake_fleet.script = [*SCRIPT[:3], ("retried", Q, "eu-west"), *SCRIPT[1:]]
    args = ("jobs", "submit", "--project", "ml", "--wait", "--", "true")
    result = fleet(fake_fleet.address, *args, terminal=True)
    assert result.exit_code == 0, result.output
    assert re.search(r"job job-1: queued \(\d+s\) · on eu-west", result.stderr)
    assert "queued on" not in result.stderr
