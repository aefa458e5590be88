"""`fleet demo`: the whole fleet on one machine.

A control plane on SQLite in a temporary folder and three agents posing as an on-prem
reserved H100 cluster, an on-demand cloud region and a spot cloud region, each with its
own GPU pools and a local process launcher. A dozen jobs with different GPU needs are
submitted; the demo shows them move, then prints where each ran and how long it took.
Then `pyflyte run examples/fleet_workflow.py training_pipeline` sends a real Flyte
workflow's tasks to the fleet (EU-only GPU, any GPU, CPU only). Exit code 0 only if every
job and the workflow succeeded. Everything it started is stopped on exit. It all listens
on 127.0.0.1 in plaintext, which every process is told explicitly (--insecure).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from fleet.v1 import types_pb2
from rich.console import Console, Group
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from fleet_cli.context import stdout_console
from fleet_cli.local_fleet import LocalFleet
from fleet_cli.render import job_phase_word, purchase_word, resources_text, run_time
from fleet_client import FleetClient, FleetError

P = types_pb2
FINAL = {P.JOB_PHASE_SUCCEEDED, P.JOB_PHASE_FAILED, P.JOB_PHASE_CANCELLED}
PROGRESS_WIDTH = 30

DATAPLANES: dict[str, dict[str, Any]] = {
    "onprem-dc1": {
        "dataplane": {"name": "onprem-dc1", "region": "us-east-dc1", "cloud": "onprem"},
        "pools": [
            {
                "name": "h100",
                "purchase_type": "reserved",
                "gpu_model": "H100",
                "gpu_memory_gb": 80,
                "gpu_count": 8,
                "price_per_gpu_hour": 1.10,
                "interconnect": "nvlink",
            },
        ],
    },
    "aws-us-east-1": {
        "dataplane": {"name": "aws-us-east-1", "region": "us-east-1", "cloud": "aws"},
        "pools": [
            {
                "name": "a100",
                "purchase_type": "on_demand",
                "gpu_model": "A100",
                "gpu_memory_gb": 80,
                "gpu_count": 8,
                "price_per_gpu_hour": 4.10,
            },
            {
                "name": "h100",
                "purchase_type": "on_demand",
                "gpu_model": "H100",
                "gpu_memory_gb": 80,
                "gpu_count": 8,
                "price_per_gpu_hour": 6.90,
            },
            {
                "name": "cpu",
                "purchase_type": "on_demand",
                "gpu_model": "",
                "gpu_memory_gb": 0,
                "gpu_count": 0,
            },
        ],
    },
    "gcp-europe-west4-spot": {
        "dataplane": {"name": "gcp-europe-west4-spot", "region": "europe-west4", "cloud": "gcp"},
        "pools": [
            {
                "name": "l4",
                "purchase_type": "spot",
                "gpu_model": "L4",
                "gpu_memory_gb": 24,
                "gpu_count": 8,
                "price_per_gpu_hour": 0.25,
            },
            {
                "name": "h100",
                "purchase_type": "spot",
                "gpu_model": "H100",
                "gpu_memory_gb": 80,
                "gpu_count": 8,
                "price_per_gpu_hour": 2.20,
            },
        ],
    },
}


@dataclass(frozen=True)
class DemoJob:
    name: str
    gpus: int
    gpu_model: str
    seconds: float
    allow_spot: bool | None = None


EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
WORKFLOW_FILE = "fleet_workflow.py"
WORKFLOW = "training_pipeline"

JOBS = [
    DemoJob("pretrain-llm", 8, "H100", 4.0),
    DemoJob("finetune-chat", 4, "H100", 3.0),
    DemoJob("finetune-code", 4, "H100", 3.0, allow_spot=False),
    DemoJob("rlhf-reward", 2, "H100", 2.5),
    DemoJob("eval-mmlu", 2, "A100", 2.0),
    DemoJob("eval-gsm8k", 1, "A100", 1.5),
    DemoJob("embed-docs", 1, "L4", 2.0),
    DemoJob("batch-infer", 4, "L4", 2.5),
    DemoJob("distill-small", 2, "", 2.0),
    DemoJob("tokenize-corpus", 0, "", 1.0),
    DemoJob("dedupe-corpus", 0, "", 1.5),
    DemoJob("sweep-lr", 1, "", 1.0),
]

# What every demo job runs: it says where it is, "works" for a while, and exits 0.
JOB_PROGRAM = (
    "import os, sys, time\n"
    "print('job', os.environ['FLEET_JOB_ID'], 'attempt', os.environ['FLEET_ATTEMPT_ID'],"
    " 'on', os.environ['FLEET_DATAPLANE'] + '/' + os.environ['FLEET_POOL'],"
    " 'GPUs', os.environ.get('CUDA_VISIBLE_DEVICES') or '-', flush=True)\n"
    "seconds = float(sys.argv[1])\n"
    "for step in range(5):\n"
    "    time.sleep(seconds / 5)\n"
    "    print('step', step + 1, 'of 5', flush=True)\n"
)


def demo_command(
    keep: Annotated[
        bool, typer.Option("--keep", help="Keep the demo's folder (database, logs) afterwards.")
    ] = False,
) -> None:
    """Run the whole fleet on this machine: a control plane, three agents, a dozen jobs,
    then a Flyte workflow whose tasks run on the fleet."""
    raise typer.Exit(run_demo(keep))


def run_demo(keep: bool = False, console: Console | None = None) -> int:
    console = console or stdout_console()
    root = Path(tempfile.mkdtemp(prefix="fleet-demo-"))
    fleet = LocalFleet(root, python_path=(EXAMPLES,))
    try:
        console.print(f"[bold]flyte-fleet demo[/] in {root}")
        fleet.start_control_plane()
        for name, pool_file in DATAPLANES.items():
            fleet.add_agent(name, pool_file)
        with fleet.client(timeout_s=10) as client:
            _wait_for_dataplanes(fleet, client, console)
            ids = _submit_all(client)
            jobs = _follow(fleet, client, ids, console)
            console.print(_summary(jobs, client))
        succeeded = sum(job.phase == P.JOB_PHASE_SUCCEEDED for job in jobs)
        console.print(f"{succeeded} of {len(jobs)} jobs succeeded")
        workflow_ok = _run_workflow(fleet, console)
        if keep:
            console.print(f"the demo's database and logs are in {root}")
        return 0 if succeeded == len(jobs) and workflow_ok else 1
    except KeyboardInterrupt:
        console.print("interrupted: stopping the fleet")
        return 130
    except (FleetError, RuntimeError, TimeoutError) as exc:
        console.print(f"[red]demo failed:[/] {exc}\nlogs are kept in {root}")
        keep = True
        return 1
    finally:
        fleet.stop()
        if not keep:
            shutil.rmtree(root, ignore_errors=True)


def _run_workflow(fleet: LocalFleet, console: Console) -> bool:
    """Run examples/fleet_workflow.py with `pyflyte run`: each task goes to the fleet."""
    example = EXAMPLES / WORKFLOW_FILE
    pyflyte = Path(sys.executable).parent / "pyflyte"
    if not example.exists() or not pyflyte.exists():
        console.print(f"skipping the Flyte workflow: needs {example} and the `flyte` extra")
        return True
    command = [str(pyflyte), "run", str(example), WORKFLOW]
    console.print(f"[bold]Flyte:[/] pyflyte run examples/{WORKFLOW_FILE} {WORKFLOW}")
    with console.status("the workflow's tasks run on the fleet"):
        result = subprocess.run(
            command,
            cwd=EXAMPLES,
            capture_output=True,
            text=True,
            timeout=300,
            env={
                **os.environ,
                **fleet.client_env(),   # the address, and plaintext (the demo's loopback)
                "FLEET_PROJECT": "demo",
                "COLUMNS": "400",
            },
        )
    lines = [line for line in result.stdout.splitlines() if line.strip()]
    if result.returncode != 0:
        tail = "\n".join((result.stdout + result.stderr).splitlines()[-15:])
        console.print(f"[red]the workflow failed[/] (exit code {result.returncode}):")
        console.print(tail, markup=False)
        return False
    console.print("workflow result:", lines[-1] if lines else "(none)", markup=False)
    return True


def _wait_for_dataplanes(fleet: LocalFleet, client: FleetClient, console: Console) -> None:
    deadline = time.monotonic() + 60
    with console.status("starting the control plane and three agents"):
        while time.monotonic() < deadline:
            fleet.check_alive()
            try:
                ready = [d for d in client.list_dataplanes() if d.connected and d.pools]
            except FleetError:
                ready = []
            if len(ready) == len(DATAPLANES):
                console.print(f"dashboard: {fleet.http_url}   metrics: {fleet.http_url}metrics")
                return
            time.sleep(0.2)
    raise TimeoutError("the agents did not connect within 60 s")


def _submit_all(client: FleetClient) -> list[str]:
    ids = []
    for job in JOBS:
        spec = P.JobSpec(
            project="demo",
            domain="development",
            name=job.name,
            command=[sys.executable, "-c", JOB_PROGRAM, str(job.seconds)],
            resources=P.Resources(gpus=job.gpus, gpu_model=job.gpu_model),
            routing=P.RoutingHints(allow_spot=job.allow_spot),
        )
        ids.append(client.submit(spec, client_key=f"demo/{job.name}").job.id)
    return ids


def _follow(
    fleet: LocalFleet, client: FleetClient, ids: list[str], console: Console
) -> list[types_pb2.Job]:
    """Poll the jobs until every one is final; on a terminal, show them move meanwhile."""
    started = time.monotonic()
    deadline = started + 180
    live = (
        Live(console=console, refresh_per_second=8, transient=True)
        if console.is_interactive
        else None
    )
    with live if live is not None else contextlib.nullcontext():
        while True:
            fleet.check_alive()
            jobs = [client.get(job_id) for job_id in ids]
            if live is not None:
                elapsed = time.monotonic() - started
                live.update(Group(_progress(jobs), demo_progress(jobs, elapsed)))
            if all(job.phase in FINAL for job in jobs):
                return jobs
            if time.monotonic() > deadline:
                raise TimeoutError("the jobs did not finish within 180 s")
            time.sleep(0.25)


def demo_progress(jobs: list[types_pb2.Job], elapsed_s: float) -> Table:
    """'[bar] 5/12 finished · 3 queued, 4 running, 5 succeeded · 12s' (one line)."""
    done = sum(job.phase in FINAL for job in jobs)
    counts: dict[int, int] = {}
    for job in jobs:
        counts[job.phase] = counts.get(job.phase, 0) + 1
    phases = ", ".join(
        f"{counts[phase]} {job_phase_word(phase)}" for phase in sorted(counts)
    )
    line = Table.grid(padding=(0, 1))
    line.add_column(no_wrap=True)
    line.add_column(no_wrap=True)
    line.add_row(
        ProgressBar(total=len(jobs) or 1, completed=done, width=PROGRESS_WIDTH),
        Text(f"{done}/{len(jobs)} finished · {phases} · {int(elapsed_s)}s", overflow="ellipsis"),
    )
    return line


def _progress(jobs: list[types_pb2.Job]) -> Table:
    table = Table(title="jobs", title_justify="left")
    for column in ("job", "needs", "phase", "where", "why"):
        table.add_column(column)
    for job in jobs:
        where = f"{job.dataplane}/{job.pool}" if job.dataplane else ""
        table.add_row(
            job.spec.name,
            resources_text(job.spec.resources),
            job_phase_word(job.phase),
            where,
            job.message[:70],
        )
    return table


def _summary(jobs: list[types_pb2.Job], client: FleetClient) -> Table:
    tiers = {
        (dp.name, pool.name): purchase_word(pool.purchase_type)
        for dp in client.list_dataplanes()
        for pool in dp.pools
    }
    now = datetime.now(UTC)
    table = Table(title="where each job ran", title_justify="left")
    for column in ("job", "needs", "dataplane", "pool", "tier", "attempts", "took", "result"):
        table.add_column(column)
    for job in jobs:
        table.add_row(
            job.spec.name,
            resources_text(job.spec.resources),
            job.dataplane,
            job.pool,
            tiers.get((job.dataplane, job.pool), ""),
            str(len(job.attempts)),
            run_time(job, now),
            job_phase_word(job.phase),
        )
    return table
