"""The control plane's /metrics page: the hooks' counters and histograms, and the gauges read
from a real registry (SQLite and Postgres) with the control plane's clock in the test's
hands, parsed as a scraper parses them."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import timedelta
from typing import Any

import grpc
import pytest
import sqlalchemy as sa
from fleet.v1 import admin_pb2, admin_pb2_grpc, jobs_pb2

from control_plane.clock import ManualClock
from control_plane.domain.health import Timers
from control_plane.domain.phases import AttemptPhase
from control_plane.metrics import HEARTBEAT_BUCKETS_S, MAX_ENDED_SERIES, ControlPlaneMetrics
from control_plane.registry import Database, FleetStats
from control_plane.registry.database import DatabaseUnavailable
from control_plane.registry.fleet_stats import FleetSnapshot
from control_plane.registry.tables import AttemptRow, DataplaneRow, JobRow
from tests.control_plane.harness import (
    FakeAgent,
    P,
    control_plane,
    gpu_pool,
    job_client,
    job_spec,
    status,
    submit,
    wait_for_phase,
)
from tests.metrics.exposition import Samples, names, parse, series, value

STALE_S, LOST_S = 15.0, 60.0   # the harness's stale_after and lost_after


def timers_for(clock: ManualClock) -> Timers:
    return Timers(timedelta(seconds=STALE_S), timedelta(seconds=LOST_S), clock.now())


@asynccontextmanager
async def empty_registry(url: str) -> AsyncIterator[Database]:
    database = Database(url)
    await database.migrate()
    try:
        yield database
    finally:
        await database.close()


async def scrape(metrics: ControlPlaneMetrics) -> Samples:
    body, content_type = await metrics.render()
    assert content_type.startswith("text/plain; version=")
    return parse(body)


async def scrape_until(
    metrics: ControlPlaneMetrics, check: Callable[[Samples], bool], what: str
) -> Samples:
    for _ in range(250):
        samples = await scrape(metrics)
        if check(samples):
            return samples
        await asyncio.sleep(0.02)
    raise AssertionError(f"the metrics never showed {what}")


def histogram_quantile(samples: Samples, name: str, q: float) -> float:
    """Prometheus's histogram_quantile: linear interpolation inside the bucket."""
    buckets = sorted(
        (float(dict(labels)["le"]), count)
        for (sample, labels), count in samples.items()
        if sample == f"{name}_bucket"
    )
    rank = q * buckets[-1][1]
    lower_bound, lower_count = 0.0, 0.0
    for bound, count in buckets:
        if count >= rank:
            return lower_bound + (bound - lower_bound) * (rank - lower_count) / (
                count - lower_count
            )
        lower_bound, lower_count = bound, count
    raise AssertionError("rank beyond the last bucket")


# -- the hooks ----------------------------------------------------------------------------------


async def test_hooks_count_exactly_what_they_are_told(sqlite_url: str) -> None:
    clock = ManualClock()
    async with empty_registry(sqlite_url) as database:
        metrics = ControlPlaneMetrics(FleetStats(database), timers_for(clock), clock)
        metrics.submitted(3)
        metrics.submitted()
        metrics.placed([0.002, 0.3, 7200.0])
        metrics.placed([])
        metrics.attempts_ended("lost", "DataplaneLost", 2)
        metrics.attempts_ended(AttemptPhase.LOST, "DataplaneLost")
        metrics.attempts_ended(AttemptPhase.PREEMPTED, "Drained")
        metrics.attempts_ended("FAILED", "")
        metrics.heartbeat_handled(0.004)

        samples = await scrape(metrics)

    assert value(samples, "fleet_jobs_submitted_total") == 4
    placement = "fleet_placement_latency_seconds"
    assert value(samples, f"{placement}_count") == 3
    assert value(samples, f"{placement}_sum") == pytest.approx(7200.302)
    assert value(samples, f"{placement}_bucket", le="0.005") == 1
    assert value(samples, f"{placement}_bucket", le="0.5") == 2
    assert value(samples, f"{placement}_bucket", le="3600.0") == 2
    assert value(samples, f"{placement}_bucket", le="10800.0") == 3
    ended = "fleet_attempts_ended_total"
    assert value(samples, ended, phase="lost", reason="DataplaneLost") == 3
    assert value(samples, ended, phase="preempted", reason="Drained") == 1
    assert value(samples, ended, phase="failed", reason="none") == 1
    assert value(samples, "fleet_heartbeat_handling_seconds_count") == 1
    assert value(samples, "fleet_heartbeat_handling_seconds_bucket", le="0.004") == 1
    assert value(samples, "fleet_heartbeat_handling_seconds_bucket", le="0.003") == 0
    assert value(samples, "fleet_registry_up") == 1


async def test_a_p99_from_1_to_100_ms_reads_back_within_a_bucket(sqlite_url: str) -> None:
    clock = ManualClock()
    async with empty_registry(sqlite_url) as database:
        for slowest_ms in (1.2, 3.0, 7.0, 12.0, 33.0, 61.0, 95.0):
            metrics = ControlPlaneMetrics(FleetStats(database), timers_for(clock), clock)
            # 1000 reports spread evenly from 0.1 ms to the slowest.
            handled = [slowest_ms / 1000 * (i + 1) / 1000 for i in range(1000)]
            for seconds in handled:
                metrics.heartbeat_handled(seconds)
            true_p99 = sorted(handled)[989]
            estimate = histogram_quantile(
                await scrape(metrics), "fleet_heartbeat_handling_seconds", 0.99
            )
            assert abs(estimate - true_p99) / true_p99 < 0.25, (slowest_ms, estimate, true_p99)
    steps = [b / a for a, b in itertools.pairwise(HEARTBEAT_BUCKETS_S) if 0.001 <= a < 0.1]
    assert max(steps) <= 1.25 + 1e-9


async def test_reasons_past_the_cap_are_counted_as_other(sqlite_url: str) -> None:
    clock = ManualClock()
    async with empty_registry(sqlite_url) as database:
        metrics = ControlPlaneMetrics(FleetStats(database), timers_for(clock), clock)
        for i in range(MAX_ENDED_SERIES + 50):
            metrics.attempts_ended("failed", f"agent-made-up-{i}")
        metrics.attempts_ended("failed", "agent-made-up-0")   # a known series goes on
        samples = await scrape(metrics)
    ended = series(samples, "fleet_attempts_ended_total", "reason")
    assert len(ended) == MAX_ENDED_SERIES + 1   # and "other"
    assert sum(ended.values()) == MAX_ENDED_SERIES + 51
    assert ended["agent-made-up-0"] == 2
    assert ended["other"] == 50


# -- the gauges ---------------------------------------------------------------------------------


async def test_the_gauges_follow_the_fleet_and_its_timers(database_url: str) -> None:
    async with control_plane(database_url) as (cp, clock), job_client(cp.port) as jobs:
        metrics = ControlPlaneMetrics(FleetStats(cp.database), timers_for(clock), clock)
        before = await scrape(metrics)
        assert series(before, "fleet_jobs", "phase") == {"queued": 0, "scheduled": 0, "running": 0}
        assert series(before, "fleet_dataplanes", "health") == {
            "healthy": 0, "stale": 0, "lost": 0,
        }
        assert value(before, "fleet_expiry_suspended") == 0
        assert "fleet_queue_depth" not in names(before)

        east = FakeAgent(cp.port, "east", [
            gpu_pool("h100", total=8),
            gpu_pool("l4", model="L4", total=4, free=3, tier=P.PURCHASE_TYPE_SPOT),
        ])
        west = FakeAgent(cp.port, "west", [
            gpu_pool("a100", model="A100", total=2, free=0, tier=P.PURCHASE_TYPE_ON_DEMAND),
        ])
        for agent in (east, west):
            await agent.join()

        # Two H100 jobs placed on east, one of them running; three A100 jobs wait for
        # west's busy GPUs; one more is cancelled (finished jobs are not counted).
        first = await submit(jobs, job_spec("vision"))
        await submit(jobs, job_spec("vision"))
        launches = [await east.expect("launch"), await east.expect("launch")]
        running = next(launch for launch in launches if launch.job_id == first.id)
        await east.update(status(running.attempt_id, P.ATTEMPT_PHASE_RUNNING))
        await wait_for_phase(jobs, first.id, P.JOB_PHASE_RUNNING)
        for project in ("nlp", "nlp", "vision"):
            await submit(jobs, job_spec(project, model="A100"))
        cancelled = await submit(jobs, job_spec("nlp", model="A100"))
        await jobs.Cancel(jobs_pb2.CancelJobRequest(job_id=cancelled.id))

        now = await scrape(metrics)
        assert series(now, "fleet_jobs", "phase") == {"queued": 3, "scheduled": 1, "running": 1}
        assert series(now, "fleet_queue_depth", "project") == {"nlp": 2, "vision": 1}
        gpus = {
            (dict(k)["dataplane"], dict(k)["pool"], dict(k)["tier"]): (v, value(
                now, "fleet_gpus_free", **dict(k)))
            for (name, k), v in now.items() if name == "fleet_gpus_total"
        }
        assert gpus == {
            ("east", "h100", "reserved"): (8, 8),
            ("east", "l4", "spot"): (4, 3),
            ("west", "a100", "on_demand"): (2, 0),
        }
        assert series(now, "fleet_dataplanes", "health") == {"healthy": 2, "stale": 0, "lost": 0}
        assert series(now, "fleet_dataplanes_by_state", "state") == {
            "active": 2, "cordoned": 0, "draining": 0, "drained": 0,
        }
        assert series(now, "fleet_heartbeat_age_seconds", "dataplane") == {"east": 0, "west": 0}

        # 20 s on, only east heartbeats: west is stale.
        clock.advance(20)
        await east.heartbeat(*east.held.values())
        later = await scrape_until(
            metrics, lambda s: value(s, "fleet_heartbeat_age_seconds", dataplane="east") == 0,
            "east's new heartbeat",
        )
        assert series(later, "fleet_heartbeat_age_seconds", "dataplane") == {
            "east": 0, "west": 20,
        }
        assert series(later, "fleet_dataplanes", "health") == {
            "healthy": 1, "stale": 1, "lost": 0,
        }
        assert value(later, "fleet_expiry_suspended") == 0

        # 45 s more of silence from everyone: west is lost, east stale, and since nobody
        # was heard for the stale period the control plane suspects itself.
        clock.advance(45)
        silent = await scrape(metrics)
        assert series(silent, "fleet_heartbeat_age_seconds", "dataplane") == {
            "east": 45, "west": 65,
        }
        assert series(silent, "fleet_dataplanes", "health") == {
            "healthy": 0, "stale": 1, "lost": 1,
        }
        assert value(silent, "fleet_expiry_suspended") == 1

        # East is back: expiry resumes.
        await east.heartbeat(*east.held.values())
        back = await scrape_until(
            metrics, lambda s: value(s, "fleet_expiry_suspended") == 0, "expiry resumed"
        )
        assert series(back, "fleet_dataplanes", "health") == {
            "healthy": 1, "stale": 0, "lost": 1,
        }

        # West cordoned; east drained while its attempts still live there.
        async with grpc.aio.insecure_channel(f"127.0.0.1:{cp.port}") as channel:
            admin = admin_pb2_grpc.AdminServiceStub(channel)
            await admin.CordonDataplane(admin_pb2.CordonDataplaneRequest(name="west"))
            drain = admin_pb2.DrainDataplaneRequest(name="east")
            drain.deadline.FromTimedelta(timedelta(hours=1))
            await admin.DrainDataplane(drain)
        states = await scrape(metrics)
        assert series(states, "fleet_dataplanes_by_state", "state") == {
            "active": 0, "cordoned": 1, "draining": 1, "drained": 0,
        }
        for agent in (east, west):
            await agent.close()


async def test_a_dataplane_that_went_away_leaves_no_series(sqlite_url: str) -> None:
    async with control_plane(sqlite_url) as (cp, clock), job_client(cp.port) as jobs:
        metrics = ControlPlaneMetrics(FleetStats(cp.database), timers_for(clock), clock)
        east = FakeAgent(cp.port, "east", [gpu_pool("h100"), gpu_pool("h200", model="H200")])
        await east.join()
        job = await submit(jobs, job_spec("vision"))
        await east.expect("launch")
        await wait_for_phase(jobs, job.id, P.JOB_PHASE_SCHEDULED)
        await scrape_until(
            metrics, lambda s: series(s, "fleet_queue_depth", "project") == {}, "no queue"
        )
        before = await scrape(metrics)
        assert series(before, "fleet_gpus_total", "pool") == {"h100": 8, "h200": 8}

        east.pools = [gpu_pool("h100")]   # the H200 node was reclaimed
        await east.heartbeat()
        after = await scrape_until(
            metrics, lambda s: "h200" not in series(s, "fleet_gpus_total", "pool"), "h200 gone"
        )
        assert series(after, "fleet_gpus_free", "pool") == {"h100": 8}
        await east.close()


class UnreachableStats(FleetStats):
    """A registry whose database is down (DatabaseUnavailable, as Database raises it)."""

    def __init__(self) -> None:
        pass

    async def snapshot(self) -> FleetSnapshot:
        raise DatabaseUnavailable("the database is unreachable: connection refused")


async def test_an_unreachable_registry_leaves_its_gauges_out_and_keeps_the_counters() -> None:
    clock = ManualClock()
    metrics = ControlPlaneMetrics(UnreachableStats(), timers_for(clock), clock)
    metrics.attempts_ended("lost", "DataplaneLost")
    samples = await scrape(metrics)
    assert value(samples, "fleet_registry_up") == 0
    assert value(samples, "fleet_attempts_ended_total", phase="lost", reason="DataplaneLost") == 1
    assert not {"fleet_jobs", "fleet_dataplanes", "fleet_expiry_suspended"} & names(samples)


# -- what a scrape reads ------------------------------------------------------------------------


async def fill(database: Database, finished: int) -> None:
    """Dataplanes in every operator state, a few live jobs and attempts, and `finished` jobs
    that ended long ago (each with its ended attempt): the history a scrape must not read."""
    t0 = ManualClock().now()
    dataplane = {"region": "r", "cloud": "c", "first_seen_at": t0, "last_heartbeat_at": t0}
    async with database.write() as session:
        await session.execute(sa.insert(DataplaneRow), [
            {"name": "east", **dataplane, "cordoned_at": t0, "drain_deadline": t0},
            {"name": "west", **dataplane, "cordoned_at": t0},
            {"name": "gone", **dataplane, "cordoned_at": t0, "drain_deadline": t0},
            {"name": "new", **dataplane},
        ])
        job = {"domain": "d", "name": "n", "spec": {}, "created_at": t0, "updated_at": t0}
        attempt = {"epoch": 1, "pool": "h100", "gpus": 1, "created_at": t0}
        ended = ("succeeded", "failed", "cancelled")
        await session.execute(sa.insert(JobRow), [
            {"id": f"old{i}", "project": f"p{i % 7}", "phase": ended[i % 3], **job}
            for i in range(finished)
        ])
        await session.execute(sa.insert(AttemptRow), [
            {"id": f"old{i}-1", "job_id": f"old{i}", "dataplane": ("east", "gone")[i % 2],
             "phase": ("succeeded", "failed", "lost", "preempted")[i % 4], **attempt}
            for i in range(finished)
        ])
        live = [("q1", "vision", "queued"), ("q2", "vision", "queued"), ("q3", "nlp", "queued"),
                ("s1", "nlp", "scheduled"), ("r1", "vision", "running")]
        await session.execute(sa.insert(JobRow), [
            {"id": id_, "project": project, "phase": phase, **job} for id_, project, phase in live
        ])
        await session.execute(sa.insert(AttemptRow), [
            {"id": "s1-1", "job_id": "s1", "dataplane": "east", "phase": "pending", **attempt},
            {"id": "r1-1", "job_id": "r1", "dataplane": "east", "phase": "running", **attempt},
        ])


async def test_a_scrape_counts_live_rows_only_and_reads_them_through_indexes(
    database_url: str,
) -> None:
    clock = ManualClock()
    async with empty_registry(database_url) as database:
        await fill(database, finished=3000)
        statements: list[tuple[str, Any]] = []

        def record(_conn: Any, _cursor: Any, statement: str, parameters: Any,
                   _context: Any, _many: bool) -> None:
            statements.append((statement, parameters))

        sa.event.listen(database.engine.sync_engine, "before_cursor_execute", record)
        try:
            samples = await scrape(ControlPlaneMetrics(FleetStats(database), timers_for(clock),
                                                       clock))
        finally:
            sa.event.remove(database.engine.sync_engine, "before_cursor_execute", record)

        assert series(samples, "fleet_jobs", "phase") == {"queued": 3, "scheduled": 1, "running": 1}
        assert series(samples, "fleet_queue_depth", "project") == {"vision": 2, "nlp": 1}
        assert series(samples, "fleet_dataplanes_by_state", "state") == {
            "active": 1, "cordoned": 1, "draining": 1, "drained": 1,
        }
        assert len(statements) == 5   # one short read

        reading = " ".join(statement for statement, _ in statements).lower()
        assert "from jobs" in reading and "from attempts" in reading
        async with database.engine.connect() as connection:
            if database.is_sqlite:
                for statement, parameters in statements:
                    plan = await connection.exec_driver_sql(
                        f"EXPLAIN QUERY PLAN {statement}", parameters
                    )
                    steps = [row[3] for row in plan]
                    # SCAN reads a whole table or index; SEARCH only the rows asked for.
                    assert not [s for s in steps if s.startswith(("SCAN jobs", "SCAN attempts"))], (
                        statement, steps,
                    )
            else:
                # Without sequential scans to choose from, Postgres still picks one when no
                # index serves the query, or walks a whole index: neither may happen.
                await connection.exec_driver_sql("SET enable_seqscan = off")
                for statement, parameters in statements:
                    plan = await connection.exec_driver_sql(
                        f"EXPLAIN (FORMAT JSON) {statement}", parameters
                    )
                    for node in plan_nodes(plan.scalar_one()[0]["Plan"]):
                        assert not (node["Node Type"] == "Seq Scan"
                                    and node["Relation Name"] in ("jobs", "attempts")), statement
                        lead = LEADING_COLUMN.get(node.get("Index Name", ""))
                        if lead is not None:
                            condition = node.get("Index Cond", "")
                            assert f"({lead})" in condition or f"({lead} " in condition, (
                                statement, node,
                            )


# The first column of each index of the jobs and attempts tables: an index scan whose
# condition does not constrain it reads the whole index.
LEADING_COLUMN = {
    "ix_jobs_phase_priority": "phase", "ix_jobs_project_created": "project", "jobs_pkey": "id",
    "ix_attempts_dataplane_phase": "dataplane", "ix_attempts_job_id": "job_id",
    "attempts_pkey": "id",
}


def plan_nodes(node: dict[str, Any]) -> list[dict[str, Any]]:
    return [node, *(n for child in node.get("Plans", []) for n in plan_nodes(child))]
