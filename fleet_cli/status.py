"""`fleet status`: the fleet at a glance, refreshed live; `--once` prints one frame,
`--json` one snapshot for scripts.

The calls live here; what a snapshot holds and how it looks is fleet_cli/status_view.py.
Only reads, so a viewer key is enough: ListDataplanes; List of the queued jobs (paged, up
to QUEUE_CAP) and of the newest scheduled and running ones; and, once per placement, Get
and the start of Watch for a running job's placement reason (its message is cleared when
it starts; the "scheduled" event keeps it).
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Annotated

import typer
from fleet.v1 import types_pb2
from rich.console import Console, RenderableType
from rich.live import Live

from fleet_cli.context import OutputFormat, global_options, open_client, stdout_console
from fleet_cli.status_view import (
    QueuedEntry,
    StatusSnapshot,
    build_snapshot,
    newest_placed,
    snapshot_json,
    status_view,
)
from fleet_client import DeadlineExceeded, FleetClient, NotFound, Unavailable

QUEUE_CAP = 10_000  # queued jobs counted; beyond it the view says "10,000+"
PAGE_SIZE = 1000  # the most the control plane gives in one List page
PLACED_PAGE = 100  # newest scheduled and running jobs fetched; the RECENT latest are shown
RECENT = 10


# A placement's reason never changes: (job id, epoch) -> reason, kept across refreshes.
ReasonCache = dict[tuple[str, int], str]


def fetch_snapshot(client: FleetClient, reasons: ReasonCache) -> StatusSnapshot:
    dataplanes = client.list_dataplanes()
    queued, capped = _queued_jobs(client, QUEUE_CAP)
    placed = client.list_jobs(
        phases=[types_pb2.JOB_PHASE_SCHEDULED, types_pb2.JOB_PHASE_RUNNING],
        page_size=PLACED_PAGE,
    ).jobs
    newest = newest_placed(placed, RECENT)
    found = _placement_reasons(client, newest, reasons)
    now = datetime.now(UTC)
    return build_snapshot(dataplanes, queued, capped, QUEUE_CAP, newest, now, found)


def _placement_reasons(
    client: FleetClient, jobs: Iterable[types_pb2.Job], cache: ReasonCache
) -> dict[str, str]:
    """The reasons of the jobs whose message no longer says it (running ones)."""
    found = {}
    shown = set()
    for job in jobs:
        if not job.message:
            key = (job.id, job.epoch)
            shown.add(key)
            if key not in cache:
                cache[key] = _placement_reason(client, job.id)
            found[job.id] = cache[key]
    for gone in set(cache) - shown:  # only what is on screen stays
        del cache[gone]
    return found


def _placement_reason(client: FleetClient, job_id: str) -> str:
    """The message of the "scheduled" event of the job's current attempt: the first event
    of that attempt, so reading stops there (the job's history is never shorter)."""
    try:
        attempts = client.get(job_id).attempts
        if not attempts:
            return ""
        current = attempts[-1].id
        for event in client.watch(job_id):
            if event.attempt_id == current:
                return event.message if event.kind == "scheduled" else ""
    except NotFound:
        pass  # gone since it was listed
    return ""


def _queued_jobs(client: FleetClient, cap: int) -> tuple[list[QueuedEntry], bool]:
    """(project, created_at) of the newest `cap` queued jobs, and whether there are more."""
    entries: list[QueuedEntry] = []
    token = ""
    while True:
        page = client.list_jobs(
            phases=[types_pb2.JOB_PHASE_QUEUED],
            page_size=min(PAGE_SIZE, cap - len(entries)),
            page_token=token,
        )
        entries += [(job.spec.project, job.created_at.ToDatetime(tzinfo=UTC)) for job in page.jobs]
        token = page.next_page_token
        if not token:
            return entries, False
        if len(entries) >= cap:
            return entries, True


def status(
    ctx: typer.Context,
    interval: Annotated[
        float,
        typer.Option(min=0.5, metavar="SECONDS", help="Seconds between refreshes."),
    ] = 2.0,
    once: Annotated[bool, typer.Option("--once", help="Print one frame and exit.")] = False,
    as_json: Annotated[
        bool,
        typer.Option("--json", help="Print one snapshot as JSON and exit (so does -o json)."),
    ] = False,
) -> None:
    """The fleet at a glance: dataplanes by region with their health and GPUs per pool and
    tier, the queue per project, and the latest placements with their reasons."""
    with open_client(ctx) as client:
        # The first snapshot's errors take the CLI's error path (exit 1, 2 or 3).
        reasons: ReasonCache = {}
        snapshot = fetch_snapshot(client, reasons)
        if as_json or global_options(ctx).output is OutputFormat.json:
            typer.echo(json.dumps(snapshot_json(snapshot), indent=2))
            return
        console = stdout_console()
        if once:
            console.print(status_view(snapshot))
            return
        with contextlib.suppress(KeyboardInterrupt):  # how a live view ends: exit 0
            _follow(client, console, snapshot, reasons, interval)


def _follow(
    client: FleetClient,
    console: Console,
    snapshot: StatusSnapshot,
    reasons: ReasonCache,
    interval: float,
) -> None:
    """Refresh every `interval` seconds until Ctrl-C: in place on a terminal, one frame
    after another elsewhere (a pipe, a file)."""
    first = status_view(snapshot, interval_s=interval)
    if not console.is_interactive:
        console.print(first)
        _refresh_forever(client, snapshot, interval, reasons, console.print)
        return
    with Live(first, console=console, auto_refresh=False) as live:

        def show(view: RenderableType) -> None:
            live.update(view, refresh=True)

        _refresh_forever(client, snapshot, interval, reasons, show)


def _refresh_forever(
    client: FleetClient,
    snapshot: StatusSnapshot,
    interval: float,
    reasons: ReasonCache,
    show: Callable[[RenderableType], None],
) -> None:
    while True:
        time.sleep(interval)
        problem = ""
        try:
            snapshot = fetch_snapshot(client, reasons)
        except (Unavailable, DeadlineExceeded) as error:
            # A restart or a network blip: keep the last frame, say so, and try again.
            # Any other error (a revoked key, ...) ends the command through the CLI's path.
            problem = f"{client.address}: {error.message}"
        show(status_view(snapshot, interval_s=interval, problem=problem))
