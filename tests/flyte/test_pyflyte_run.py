"""`pyflyte run` as an ML engineer types it, against a local fleet shaped like the demo's."""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from fleet.v1 import types_pb2 as P

from fleet_cli.local_fleet import LocalFleet
from tests.flyte.harness import (
    CPU_POOL,
    REPO,
    VENV_BIN,
    gpu_pool,
    pool_file,
    running_fleet,
    wait_until,
)

pytestmark = pytest.mark.e2e

EU = "gcp-europe-west4-spot"
US = "aws-us-east-1"


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalFleet]:
    agents = {
        EU: pool_file(EU, "europe-west4", [gpu_pool("l4", "L4", 2, "spot")]),
        US: pool_file(US, "us-east-1", [gpu_pool("h100", "H100", 2), CPU_POOL]),
    }
    with running_fleet(tmp_path_factory.mktemp("pyflyte-run"), agents) as running:
        yield running


def pyflyte_run(*args: str) -> subprocess.Popen[str]:
    # FLEET_ADDRESS, FLEET_INSECURE, PATH and PYTHONPATH come from the fleet fixture's environment.
    return subprocess.Popen(
        [str(VENV_BIN / "pyflyte"), "run", *args],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "COLUMNS": "200"},
    )


def test_pyflyte_run_routes_the_example_pipeline_across_the_fleet(fleet: LocalFleet) -> None:
    run = pyflyte_run(
        "examples/fleet_workflow.py", "training_pipeline", "--n", "4", "--epochs", "2"
    )
    output, _ = run.communicate(timeout=240)
    assert run.returncode == 0, output
    assert "trained on 4 samples for 2 epochs: loss=" in output
    assert f"embed_in_eu@{EU}/l4" in output, "the EU step ran in the EU"
    assert "prepare_data@" in output and "-> train@" in output


def test_ctrl_c_in_pyflyte_run_cancels_the_running_job(fleet: LocalFleet, tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"
    run = pyflyte_run("tests/flyte/workflows.py", "sleeping", "--pid_file", str(pid_file))
    try:
        wait_until(lambda: pid_file.exists() or run.poll() is not None, 120, "the task", fleet)
        assert run.poll() is None, run.communicate()[0]
        task_pid = int(pid_file.read_text())
        run.send_signal(signal.SIGINT)
        run.communicate(timeout=60)
    finally:
        if run.poll() is None:
            run.kill()
            run.communicate()
    with fleet.client() as client:
        [job] = [j for j in client.iter_jobs() if j.spec.name == "tests.flyte.workflows.sleep_long"]
        assert client.get(job.id).phase == P.JOB_PHASE_CANCELLED
    wait_until(lambda: not Path(f"/proc/{task_pid}").exists(), 30, "the task to end", fleet)
