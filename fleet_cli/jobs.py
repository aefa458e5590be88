"""`fleet jobs ...`: submit, get, list, cancel, watch, explain and read the logs of jobs."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from datetime import timedelta
from typing import Annotated

import typer
from fleet.v1 import types_pb2
from rich.text import Text

from fleet_cli import parse, render
from fleet_cli.context import (
    OutputFormat,
    emit,
    global_options,
    open_client,
    option_parser,
    parsed_pairs,
    stderr_console,
)
from fleet_cli.job_options import (
    DEFAULT_DOMAIN,
    UINT32_MAX,
    AllowSpotOption,
    DomainOption,
    GpuModelOption,
    GpusOption,
    LabelOption,
    MinGpuMemoryOption,
    NameOption,
    OriginRegionOption,
    PinOption,
    ProjectOption,
    job_spec,
)
from fleet_client import FleetClient, FleetError

app = typer.Typer(help="Submit and follow jobs.", no_args_is_help=True)

INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1


@app.command(context_settings={"allow_interspersed_args": False})
def submit(
    ctx: typer.Context,
    command: Annotated[
        list[str],
        typer.Argument(
            metavar="COMMAND",
            help="The argv to run; put it after '--' when it has options of its own.",
            show_default=False,
        ),
    ],
    project: ProjectOption,
    domain: DomainOption = DEFAULT_DOMAIN,
    name: NameOption = "",
    gpus: GpusOption = 0,
    gpu_model: GpuModelOption = "",
    min_gpu_memory: MinGpuMemoryOption = 0,
    cpu: Annotated[
        int, typer.Option(min=0, max=UINT32_MAX, metavar="MILLIS", help="CPU in millicores.")
    ] = 0,
    memory: Annotated[
        int | None,
        typer.Option(
            parser=option_parser(parse.parse_quantity), metavar="BYTES", help="e.g. 16Gi or bytes."
        ),
    ] = None,
    label: LabelOption = None,
    env: Annotated[
        list[str] | None, typer.Option(metavar="NAME=VALUE", help="Environment (repeatable).")
    ] = None,
    origin_region: OriginRegionOption = "",
    allow_spot: AllowSpotOption = None,
    pin: PinOption = "",
    priority: Annotated[int, typer.Option(min=INT32_MIN, max=INT32_MAX)] = 0,
    timeout: Annotated[
        timedelta | None,
        typer.Option(
            parser=option_parser(parse.parse_duration),
            metavar="DURATION",
            help="e.g. 90s, 30m, 2h.",
        ),
    ] = None,
    retries: Annotated[
        int | None,
        typer.Option(
            min=0,
            max=UINT32_MAX,
            help="Failures and losses allowed (default: the control plane's).",
            show_default=False,
        ),
    ] = None,
    image: Annotated[str, typer.Option(help="Container image.")] = "",
    service_account: Annotated[
        str,
        typer.Option(metavar="NAME", help="Kubernetes service account of the job's pod."),
    ] = "",
    client_key: Annotated[
        str, typer.Option(help="Idempotency key: a second submit returns the same job.")
    ] = "",
    wait: Annotated[
        bool, typer.Option("--wait", help="Follow the job; exit 0 if it succeeds, 1 if not.")
    ] = False,
) -> None:
    """Submit a job: fleet jobs submit --project P --gpus 1 -- python train.py"""
    spec = job_spec(
        project=project,
        domain=domain,
        name=name,
        labels=label or [],
        gpus=gpus,
        gpu_model=gpu_model,
        min_gpu_memory=min_gpu_memory,
        origin_region=origin_region,
        allow_spot=allow_spot,
        pin=pin,
    )
    spec.image = image
    spec.service_account = service_account
    spec.command.extend(command)
    spec.env.update(parsed_pairs(env or [], parse.parse_env_var, "--env"))
    spec.resources.cpu_millis = cpu
    spec.resources.memory_bytes = memory or 0
    spec.priority = priority
    if retries is not None:
        spec.retry_budget = retries
    if timeout is not None:
        spec.timeout.FromTimedelta(timeout)
    with open_client(ctx) as client:
        response = client.submit(spec, client_key=client_key)
        job = response.job
        if not response.created:
            stderr_console().print(
                f"job {job.id} already exists for client key {client_key!r}", markup=False
            )
        if wait:
            job = _wait_with_progress(client, job)
    emit(ctx, job, lambda now: render.job_detail(job, now))
    if wait and job.phase != types_pb2.JOB_PHASE_SUCCEEDED:
        raise typer.Exit(1)


@dataclass
class WaitProgress:
    """The status line under `submit --wait` on a terminal; rendered again at every frame
    of the spinner, so the elapsed time moves while nothing happens."""

    job_id: str
    phase: int
    placement: str
    message: str
    started: float  # time.monotonic() when the wait began

    def __rich__(self) -> Text:
        elapsed = time.monotonic() - self.started
        return wait_status_text(self.job_id, self.phase, self.placement, self.message, elapsed)


def wait_status_text(
    job_id: str, phase: int, placement: str, message: str, elapsed_s: float
) -> Text:
    """'job j-1: running on eu/h100 (1m 5s) · placed on eu/h100: cheapest reserved', one
    line (cut with an ellipsis on a narrow terminal)."""
    where = f" on {placement}" if placement != render.NONE else ""
    seconds = int(max(elapsed_s, 0))
    elapsed = f"{seconds}s" if seconds < 60 else render.duration_text(timedelta(seconds=seconds))
    line = f"job {job_id}: {render.job_phase_word(phase)}{where} ({elapsed})"
    if message:
        line += f" · {message}"
    return Text(line, no_wrap=True, overflow="ellipsis")


def _wait_with_progress(client: FleetClient, job: types_pb2.Job) -> types_pb2.Job:
    """Follow the job to its final phase, with one line per event on stderr and, when
    stderr is a terminal, a spinner with the phase, placement, message and elapsed time."""
    console = stderr_console()
    progress = WaitProgress(
        job.id, job.phase, render.placement_text(job.dataplane, job.pool), job.message,
        time.monotonic(),
    )  # fmt: skip
    attempt_id = ""

    def on_event(event: types_pb2.JobEvent) -> None:
        nonlocal attempt_id
        if event.attempt_id and event.attempt_id != attempt_id:
            attempt_id = event.attempt_id
            try:
                current = client.get(job.id)
                progress.placement = render.placement_text(current.dataplane, current.pool)
            except FleetError:
                pass  # only the status line needs it; wait() reports a real outage
        progress.phase = event.phase
        if event.phase == types_pb2.JOB_PHASE_QUEUED:
            progress.placement = render.NONE  # requeued: its next attempt may go elsewhere
        if event.message:
            progress.message = event.message
        console.print(render.event_line(event), markup=False)

    console.print(f"submitted job {job.id}; waiting for it to finish", markup=False)
    try:
        if not console.is_interactive:
            return client.wait(job.id, on_event=on_event)
        with console.status(progress):
            return client.wait(job.id, on_event=on_event)
    except KeyboardInterrupt:
        console.print(
            f"stopped waiting; job {job.id} keeps running (fleet jobs cancel {job.id})",
            markup=False,
        )
        raise typer.Exit(130) from None


@app.command()
def get(ctx: typer.Context, job_id: Annotated[str, typer.Argument(metavar="JOB")]) -> None:
    """Show one job and its attempts."""
    with open_client(ctx) as client:
        job = client.get(job_id)
    emit(ctx, job, lambda now: render.job_detail(job, now))


@app.command()
def explain(ctx: typer.Context, job_id: Annotated[str, typer.Argument(metavar="JOB")]) -> None:
    """Why the job went where it went, or why it waits: every pool, chosen or excluded."""
    with open_client(ctx) as client:
        explanation = client.explain_job(job_id)
    emit(ctx, explanation, lambda now: render.explanation(explanation))


@app.command("list")
def list_jobs(
    ctx: typer.Context,
    project: Annotated[str, typer.Option(help="Only this project's jobs.")] = "",
    phase: Annotated[
        list[str] | None,
        typer.Option(
            metavar="PHASE",
            help=f"Only jobs in this phase (repeatable): {', '.join(parse.job_phase_words())}.",
        ),
    ] = None,
    dataplane: Annotated[str, typer.Option(help="Only jobs placed on this dataplane.")] = "",
    limit: Annotated[int, typer.Option(min=1, help="Show at most this many jobs.")] = 100,
) -> None:
    """List jobs, newest first."""
    try:
        phases = [parse.parse_job_phase(word) for word in phase or []]
    except ValueError as error:
        raise typer.BadParameter(str(error), param_hint="'--phase'") from None
    with open_client(ctx) as client:
        jobs = []
        for job in client.iter_jobs(project, phases, dataplane, page_size=min(limit, 1000)):
            jobs.append(job)
            if len(jobs) == limit:
                break
    emit(ctx, jobs, lambda now: render.jobs_table(jobs, now))


@app.command()
def cancel(
    ctx: typer.Context,
    job_id: Annotated[str, typer.Argument(metavar="JOB")],
    reason: Annotated[str, typer.Option(help="Why, for the job's record.")] = "",
) -> None:
    """Cancel a job; a cancelled job is never retried."""
    with open_client(ctx) as client:
        job = client.cancel(job_id, reason=reason)
    emit(ctx, job, lambda now: render.job_detail(job, now))


@app.command()
def watch(ctx: typer.Context, job_id: Annotated[str, typer.Argument(metavar="JOB")]) -> None:
    """Print the job's events as they come, until its final one (JSON: one per line)."""
    as_json = global_options(ctx).output is OutputFormat.json

    def print_event(event: types_pb2.JobEvent) -> None:
        line = render.to_json_line(event) if as_json else render.event_line(event)
        typer.echo(line)

    with open_client(ctx) as client:
        client.wait(job_id, on_event=print_event)


@app.command()
def logs(
    ctx: typer.Context,
    job_id: Annotated[str, typer.Argument(metavar="JOB")],
    attempt: Annotated[str, typer.Option(help="Attempt id (default: the latest).")] = "",
    tail_bytes: Annotated[
        int,
        typer.Option(min=0, max=UINT32_MAX, help="Bytes from the end (0: up to 1 MiB)."),
    ] = 0,
) -> None:
    """Write an attempt's log, raw, to stdout."""
    out = sys.stdout.buffer
    with open_client(ctx) as client:
        for data in client.logs(job_id, attempt_id=attempt, tail_bytes=tail_bytes):
            out.write(data)
            out.flush()
