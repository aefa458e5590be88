"""What `fleet status` shows: a snapshot of the fleet and how it looks.

Everything here is pure. `build_snapshot` turns what the control plane answered
(ListDataplanes, the queued jobs, the newest scheduled and running jobs) into a
`StatusSnapshot`; `status_view` renders a snapshot for a terminal and `snapshot_json` for
scripts. fleet_cli/status.py does the calls and the refreshing.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from fleet.v1 import admin_pb2, types_pb2
from google.protobuf.timestamp_pb2 import Timestamp
from rich import box
from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from fleet_cli import render

NONE = render.NONE
BAR_WIDTH = 12
TIER_ORDER = ("reserved", "on_demand", "spot")

# (project, when the job was created) for each queued job the client counted.
QueuedEntry = tuple[str, datetime]


# -- the snapshot ---------------------------------------------------------------------------


@dataclass(frozen=True)
class PoolStatus:
    name: str
    tier: str  # reserved | on_demand | spot
    gpu_model: str
    gpu_total: int
    gpu_free: int

    @property
    def gpu_used(self) -> int:
        return max(self.gpu_total - self.gpu_free, 0)


@dataclass(frozen=True)
class DataplaneStatus:
    name: str
    region: str
    cloud: str
    health: str  # healthy | stale | lost
    state: str  # active | cordoned | draining | drained
    state_text: str  # the state with its reason and the drain's time left
    connected: bool
    last_heartbeat_at: datetime | None
    active_attempts: int
    pools: tuple[PoolStatus, ...]


@dataclass(frozen=True)
class TierStatus:
    tier: str
    gpu_total: int
    gpu_free: int

    @property
    def gpu_used(self) -> int:
        return max(self.gpu_total - self.gpu_free, 0)


@dataclass(frozen=True)
class ProjectQueue:
    project: str
    queued: int
    oldest_queued_at: datetime


@dataclass(frozen=True)
class QueueStatus:
    total: int
    # More queued jobs exist than the client counted (it stops at `cap`): every count
    # is then a lower bound, and the oldest waits may be older still.
    capped: bool
    cap: int
    projects: tuple[ProjectQueue, ...]  # the longest queue first


@dataclass(frozen=True)
class Placement:
    job_id: str
    project: str
    name: str
    phase: str  # scheduled | running
    dataplane: str
    pool: str
    message: str  # the scheduler's reason for the placement
    since: datetime | None  # started (running) or last changed (scheduled)


@dataclass(frozen=True)
class StatusSnapshot:
    taken_at: datetime
    dataplanes: tuple[DataplaneStatus, ...]  # by region, then name
    queue: QueueStatus
    placements: tuple[Placement, ...]  # newest first

    @property
    def tiers(self) -> tuple[TierStatus, ...]:
        """GPUs per tier over the healthy dataplanes (a stale or lost one's report is old)."""
        totals: dict[str, tuple[int, int]] = {}
        for dataplane in self.dataplanes:
            if dataplane.health != "healthy":
                continue
            for pool in dataplane.pools:
                if pool.gpu_total:
                    total, free = totals.get(pool.tier, (0, 0))
                    totals[pool.tier] = (total + pool.gpu_total, free + pool.gpu_free)
        return tuple(TierStatus(tier, *totals[tier]) for tier in sorted(totals, key=_tier_rank))


def _tier_rank(tier: str) -> tuple[int, str]:
    return (TIER_ORDER.index(tier) if tier in TIER_ORDER else len(TIER_ORDER), tier)


def _moment(ts: Timestamp) -> datetime | None:
    return ts.ToDatetime(tzinfo=UTC) if ts.seconds or ts.nanos else None


def build_snapshot(
    dataplanes: Iterable[admin_pb2.Dataplane],
    queued: Iterable[QueuedEntry],
    queue_capped: bool,
    queue_cap: int,
    placed: Iterable[types_pb2.Job],
    now: datetime,
    reasons: Mapping[str, str] | None = None,
) -> StatusSnapshot:
    """The snapshot from the control plane's answers, taken at `now`. `placed` are the
    jobs to show as placements (newest_placed picks them); `reasons` holds, by job id, the
    placement reason of a running job (the control plane clears its message once it runs)."""
    statuses = [
        DataplaneStatus(
            name=dataplane.name,
            region=dataplane.region,
            cloud=dataplane.cloud,
            health=render.health_word(dataplane.health),
            state=render.enum_word(admin_pb2.DataplaneState.DESCRIPTOR, dataplane.state),
            state_text=render.state_text(dataplane, now),
            connected=dataplane.connected,
            last_heartbeat_at=_moment(dataplane.last_heartbeat_at),
            active_attempts=dataplane.active_attempts,
            pools=tuple(
                PoolStatus(
                    name=pool.name,
                    tier=render.purchase_word(pool.purchase_type),
                    gpu_model=pool.gpu_model,
                    gpu_total=pool.gpu_total,
                    gpu_free=min(pool.gpu_free, pool.gpu_total),
                )
                for pool in dataplane.pools
            ),
        )
        for dataplane in dataplanes
    ]
    statuses.sort(key=lambda d: (d.region, d.name))
    return StatusSnapshot(
        taken_at=now,
        dataplanes=tuple(statuses),
        queue=queue_status(queued, queue_capped, queue_cap),
        placements=tuple(_placement(job, (reasons or {}).get(job.id, "")) for job in placed),
    )


def queue_status(queued: Iterable[QueuedEntry], capped: bool, cap: int) -> QueueStatus:
    counts: dict[str, int] = {}
    oldest: dict[str, datetime] = {}
    for project, created_at in queued:
        counts[project] = counts.get(project, 0) + 1
        if project not in oldest or created_at < oldest[project]:
            oldest[project] = created_at
    projects = sorted(
        (ProjectQueue(project, count, oldest[project]) for project, count in counts.items()),
        key=lambda q: (-q.queued, q.oldest_queued_at, q.project),
    )
    return QueueStatus(sum(counts.values()), capped, cap, tuple(projects))


def _since(job: types_pb2.Job) -> datetime | None:
    return _moment(job.started_at) or _moment(job.updated_at) or _moment(job.created_at)


def newest_placed(jobs: Iterable[types_pb2.Job], count: int) -> list[types_pb2.Job]:
    """The `count` jobs started or placed last, newest first."""
    floor = datetime.min.replace(tzinfo=UTC)
    return sorted(jobs, key=lambda job: _since(job) or floor, reverse=True)[:count]


def _placement(job: types_pb2.Job, reason: str) -> Placement:
    return Placement(
        job_id=job.id,
        project=job.spec.project,
        name=job.spec.name,
        phase=render.job_phase_word(job.phase),
        dataplane=job.dataplane,
        pool=job.pool,
        message=job.message or reason,
        since=_since(job),
    )


# -- for people -----------------------------------------------------------------------------

HEALTH_STYLES = {"healthy": "green", "stale": "yellow", "lost": "red"}


def count_text(count: int, capped: bool) -> str:
    """12 -> '12', 10000 and capped -> '10,000+'."""
    return f"{count:,}+" if capped else f"{count:,}"


def _ago(moment: datetime | None, now: datetime) -> str:
    if moment is None:
        return NONE
    return render.duration_text(max(now - moment, timedelta(0)))


def gpu_bar(used: int, total: int, width: int = BAR_WIDTH) -> Text:
    """'█████░░░░░' with used/total of the cells filled: any use shows, and so does any
    free GPU. Red when nothing is free, yellow from 80% used."""
    if total <= 0:
        return Text("no GPUs", style="dim")
    cells = round(used / total * width)
    if used > 0:
        cells = max(cells, 1)
    if used < total:
        cells = min(cells, width - 1)
    style = "red" if used >= total else "yellow" if used >= 0.8 * total else "green"
    return Text.assemble(("█" * cells, style), ("░" * (width - cells), "dim"))


def _health_text(dataplane: DataplaneStatus, now: datetime) -> Text:
    word = dataplane.health
    if word != "healthy":
        seen = dataplane.last_heartbeat_at
        word += f", {_ago(seen, now)} ago" if seen else ", never seen"
    return Text(word, style=HEALTH_STYLES.get(dataplane.health, ""))


def _tiers_view(tiers: Sequence[TierStatus]) -> RenderableType:
    if not tiers:
        return Text("GPUs by tier: no healthy dataplane reports any")
    table = Table(box=None, show_header=False, pad_edge=False)
    table.add_column()
    table.add_column(no_wrap=True)
    table.add_column(justify="right")
    table.add_column(justify="right")
    for tier in tiers:
        table.add_row(
            Text(tier.tier),
            gpu_bar(tier.gpu_used, tier.gpu_total),
            Text(f"{tier.gpu_used}/{tier.gpu_total} used"),
            Text(f"{tier.gpu_free} free"),
        )
    return _titled("GPUs by tier (healthy dataplanes)", table)


def _dataplanes_view(dataplanes: Sequence[DataplaneStatus], now: datetime) -> RenderableType:
    """One row per pool, under a row per region (dataplanes come sorted by region)."""
    health: dict[str, int] = {}
    for dataplane in dataplanes:
        health[dataplane.health] = health.get(dataplane.health, 0) + 1
    order = [*HEALTH_STYLES, *sorted(set(health) - set(HEALTH_STYLES))]
    counts = ", ".join(f"{health[word]} {word}" for word in order if word in health)
    table = _table()
    # Names stay whole; health and state (with an operator's reason) wrap when narrow.
    table.add_column("dataplane", no_wrap=True)
    table.add_column("health", min_width=7)
    table.add_column("state", min_width=8)
    # The pool's name says its GPU model (h100, a100-80gb-spot): no column for it.
    for column in ("pool", "tier"):
        table.add_column(column, no_wrap=True)
    table.add_column("GPUs used", no_wrap=True, min_width=BAR_WIDTH)
    table.add_column("", justify="right", no_wrap=True)
    table.add_column("free", justify="right", no_wrap=True)
    region = None
    for dataplane in dataplanes:
        if dataplane.region != region:
            region = dataplane.region
            table.add_row(Text(region or NONE, style="bold"))
        head = [
            Text(f"  {dataplane.name}"),
            _health_text(dataplane, now),
            Text(dataplane.state_text, style="" if dataplane.state == "active" else "yellow"),
        ]
        if not dataplane.pools:
            table.add_row(*head, Text(NONE))
        for index, pool in enumerate(dataplane.pools):
            table.add_row(
                *(head if index == 0 else [Text("")] * 3),
                Text(pool.name),
                Text(pool.tier),
                gpu_bar(pool.gpu_used, pool.gpu_total),
                Text(f"{pool.gpu_used}/{pool.gpu_total}"),
                Text(str(pool.gpu_free)),
            )
    return _titled(f"dataplanes by region ({counts})", table)


def _table() -> Table:
    return Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, padding=(0, 1, 0, 0))


def _titled(title: str, table: Table) -> Group:
    # A line of its own: a table's own title would wrap at the table's width.
    return Group(Text(title, style="bold"), table)


def _queue_view(queue: QueueStatus, now: datetime) -> RenderableType:
    if queue.total == 0:
        return Text("queue: empty")
    jobs = "job" if queue.total == 1 and not queue.capped else "jobs"
    title = f"queue: {count_text(queue.total, queue.capped)} {jobs} waiting"
    if queue.capped:
        title += f" (counted up to {queue.cap:,})"
    table = _table()
    table.add_column("project")
    table.add_column("queued", justify="right")
    table.add_column("oldest wait", justify="right")
    for project in queue.projects:
        wait = _ago(project.oldest_queued_at, now)
        table.add_row(
            Text(project.project),
            Text(count_text(project.queued, queue.capped)),
            Text(f"{wait}+" if queue.capped else wait),
        )
    return _titled(title, table)


def placement_reason(placement: Placement) -> str:
    """The scheduler's message without its 'placed on DATAPLANE/POOL: ' (the where column
    says it)."""
    prefix = f"placed on {placement.dataplane}/{placement.pool}: "
    return placement.message.removeprefix(prefix)


def _placements_view(placements: Sequence[Placement], now: datetime) -> RenderableType:
    if not placements:
        return Text("recent placements: no job is scheduled or running")
    table = _table()
    for column in ("job", "project", "name", "phase", "where", "for"):
        table.add_column(column)
    table.add_column("why", overflow="fold")
    for placement in placements:
        table.add_row(
            Text(placement.job_id),
            Text(placement.project),
            Text(placement.name or NONE),
            Text(placement.phase),
            Text(render.placement_text(placement.dataplane, placement.pool)),
            Text(_ago(placement.since, now)),
            Text(placement_reason(placement) or NONE),
        )
    return _titled("recent placements", table)


def status_view(
    snapshot: StatusSnapshot, *, interval_s: float | None = None, problem: str = ""
) -> RenderableType:
    """The whole screen. interval_s: the live view's refresh (said in the header);
    problem: why the last refresh failed (the snapshot is then the previous one)."""
    now = snapshot.taken_at
    header = f"fleet status at {_iso(now)}"
    if interval_s is not None:
        header += f", every {interval_s:g}s (Ctrl-C to stop)"
    parts: list[RenderableType] = [Text(header, style="bold")]
    if problem:
        parts.append(Text(f"could not refresh: {problem}; retrying", style="red"))
    parts.append(Text(""))
    if not snapshot.dataplanes:
        parts.append(Text("no dataplanes yet (fleet dataplanes add)"))
    else:
        parts += [_tiers_view(snapshot.tiers), Text(""), _dataplanes_view(snapshot.dataplanes, now)]
    parts += [Text(""), _queue_view(snapshot.queue, now)]
    parts += [Text(""), _placements_view(snapshot.placements, now)]
    return Group(*parts)


# -- for scripts ----------------------------------------------------------------------------


def _iso(moment: datetime | None) -> str | None:
    if moment is None:
        return None
    return moment.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def snapshot_json(snapshot: StatusSnapshot) -> dict[str, object]:
    """The snapshot as plain JSON values (times as ISO-8601 UTC, waits in seconds)."""
    now = snapshot.taken_at
    return {
        "taken_at": _iso(now),
        "dataplanes": [
            {
                "name": d.name,
                "region": d.region,
                "cloud": d.cloud,
                "health": d.health,
                "state": d.state,
                "state_text": d.state_text,
                "connected": d.connected,
                "last_heartbeat_at": _iso(d.last_heartbeat_at),
                "active_attempts": d.active_attempts,
                "pools": [
                    {
                        "name": p.name,
                        "tier": p.tier,
                        "gpu_model": p.gpu_model,
                        "gpu_total": p.gpu_total,
                        "gpu_used": p.gpu_used,
                        "gpu_free": p.gpu_free,
                    }
                    for p in d.pools
                ],
            }
            for d in snapshot.dataplanes
        ],
        "tiers": [
            {
                "tier": t.tier,
                "gpu_total": t.gpu_total,
                "gpu_used": t.gpu_used,
                "gpu_free": t.gpu_free,
            }
            for t in snapshot.tiers
        ],
        "queue": {
            "total": snapshot.queue.total,
            "capped": snapshot.queue.capped,
            "cap": snapshot.queue.cap,
            "projects": [
                {
                    "project": q.project,
                    "queued": q.queued,
                    "oldest_queued_at": _iso(q.oldest_queued_at),
                    "oldest_wait_s": round((now - q.oldest_queued_at).total_seconds(), 3),
                }
                for q in snapshot.queue.projects
            ],
        },
        "placements": [
            {
                "job_id": p.job_id,
                "project": p.project,
                "name": p.name,
                "phase": p.phase,
                "dataplane": p.dataplane,
                "pool": p.pool,
                "message": p.message,
                "since": _iso(p.since),
            }
            for p in snapshot.placements
        ],
    }
