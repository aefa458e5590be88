"""Placement under a routing policy: decisions per second in a scheduling pass, and the cost
of explaining one job.

    .venv/bin/python bench/placement.py             # print the table, append to RESULTS.md
    .venv/bin/python bench/placement.py --profile   # also the hottest functions of a pass
    .venv/bin/python bench/placement.py --no-record

The fleet: 100 dataplanes x 4 pools over cloud regions and a few on-prem sites, partly
busy. The queue: 10,000 jobs of 12 projects under a policy of six rules (residency, model,
price caps, a latency budget, tier orders) and per-project quotas. A pass sorts the queue by
`queue_key`, then places each job with `explain=False` and deducts capacity and quota, as
the scheduler does. Goals: >= 20,000 decisions/s; explaining one job < 5 ms.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import platform
import pstats
import random
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "protos"))

from control_plane.domain.phases import DataplaneHealth, PurchaseType  # noqa: E402
from control_plane.domain.placement import (  # noqa: E402
    DataplaneView,
    JobDemand,
    ledger_for,
    never_fits,
    place,
)
from control_plane.domain.policy import (  # noqa: E402
    Policy,
    ProjectUsage,
    QuotaLedger,
    parse_policy,
    queue_key,
)
from control_plane.domain.records import PoolRecord  # noqa: E402

DATAPLANES, POOLS_EACH, JOBS = 100, 4, 10_000
RESULTS = ROOT / "bench" / "RESULTS.md"

POLICY = """\
regions:
  us-east-dc1: {cloud: onprem, latitude: 39.04, longitude: -77.49}
  eu-dc2: {cloud: onprem, latitude: 50.11, longitude: 8.68}
measured_rtt_ms:
  us-east-dc1: {us-east-1: 1.5}
quotas:
  nlp: {concurrent_gpus: 400, gpu_hours_per_day: 20000}
  vision: {concurrent_gpus: 250}
  ads: {concurrent_gpus: 120, gpu_hours_per_day: 3000}
  research: {concurrent_gpus: 300}
  interns: {concurrent_gpus: 16}
rules:
  - name: eu-residency
    match: {projects: [gdpr-analytics, eu-ads]}
    clouds: [gcp, aws, onprem]
    regions: [europe-west4, europe-west1, eu-west-1, eu-central-1, eu-dc2]
  - name: prod-training
    match: {domains: [production], tasks: ["train-*", "pretrain-*"]}
    priority: 100
    gpu_models: [H100, A100]
    min_gpu_memory_gb: 80
    tiers: [reserved, on_demand]
    max_price_per_gpu_hour: 5.0
  - name: interactive
    match: {labels: {interactive: "true"}}
    priority: 50
    latency: {budget_ms: 30, default_origin: us-east-1}
  - name: batch-on-spot
    match: {tasks: ["batch-*", "embed-*"]}
    priority: -10
    tiers: [spot, on_demand]
    max_price_per_gpu_hour: 2.5
  - name: nvlink-jobs
    match: {labels: {needs: nvlink}}
    interconnects: [nvlink]
  - name: interns
    match: {projects: [interns]}
    priority: -20
    tiers: [spot]
default:
  tiers: [reserved, on_demand, spot]
"""

REGIONS = [
    ("us-east-1", "aws"), ("us-west-2", "aws"), ("eu-west-1", "aws"), ("eu-central-1", "aws"),
    ("ap-northeast-1", "aws"), ("us-central1", "gcp"), ("europe-west4", "gcp"),
    ("europe-west1", "gcp"), ("asia-east1", "gcp"), ("eastus", "azure"),
    ("westeurope", "azure"), ("us-east-dc1", "onprem"), ("eu-dc2", "onprem"),
]
MODELS = [("H100", 80, 2.2), ("A100", 80, 1.5), ("A100", 40, 1.1), ("L4", 24, 0.4)]
TIER_PRICE = {PurchaseType.RESERVED: 0.6, PurchaseType.ON_DEMAND: 1.8, PurchaseType.SPOT: 0.5}
PROJECTS = ["nlp", "vision", "ads", "research", "interns", "gdpr-analytics", "eu-ads",
            "search", "speech", "robotics", "recsys", "platform"]
TASKS = ["train-llm", "pretrain-base", "finetune-chat", "eval-mmlu", "batch-infer",
         "embed-docs", "tokenize", "sweep-lr"]


def fleet(rng: random.Random) -> list[DataplaneView]:
    views = []
    for index in range(DATAPLANES):
        region, cloud = rng.choice(REGIONS)
        pools = []
        for number in range(POOLS_EACH):
            tier = PurchaseType.RESERVED if cloud == "onprem" else rng.choice(
                [PurchaseType.ON_DEMAND, PurchaseType.SPOT]
            )
            model, memory, base = rng.choice(MODELS)
            cpu = number == POOLS_EACH - 1 and rng.random() < 0.3
            total = 0 if cpu else rng.choice([8, 8, 16])
            pools.append(
                PoolRecord(
                    f"dp{index:03}", f"pool{number}", region, cloud, tier,
                    "" if cpu else model, 0 if cpu else memory, total,
                    rng.randint(0, total), rng.choice(["", "nvlink"]),
                    round(base * TIER_PRICE[tier] * 2, 2), {"zone": rng.choice("abc")},
                )
            )
        health = DataplaneHealth.STALE if rng.random() < 0.03 else DataplaneHealth.HEALTHY
        views.append(DataplaneView(f"dp{index:03}", health, True, tuple(pools)))
    return views


@dataclass(frozen=True)
class Queued:
    demand: JobDemand
    priority: int
    created_at: datetime


def queue(rng: random.Random) -> list[Queued]:
    start = datetime(2025, 1, 1, tzinfo=UTC)
    jobs = []
    for index in range(JOBS):
        gpus = rng.choice([0, 1, 1, 1, 2, 2, 4, 8])
        labels = {}
        if rng.random() < 0.1:
            labels["interactive"] = "true"
        if rng.random() < 0.05:
            labels["needs"] = "nvlink"
        demand = JobDemand(
            f"job{index:05}", gpus,
            rng.choice(["", "", "H100", "A100", "L4"]) if gpus else "",
            rng.choice([0, 0, 0, 40, 80]) if gpus else 0,
            "",
            rng.choice([None, None, None, False]),
            rng.choice(PROJECTS), rng.choice(["development", "staging", "production"]),
            rng.choice(TASKS), labels,
            rng.choice(["", "", "", "us-east-1", "europe-west4"]),
        )
        jobs.append(Queued(demand, rng.choice([0, 0, 0, 5]), start + timedelta(seconds=index)))
    return jobs


def usage(rng: random.Random) -> dict[str, ProjectUsage]:
    return {p: ProjectUsage(rng.randint(0, 100), rng.uniform(0, 1000)) for p in PROJECTS}


def one_pass(
    policy: Policy,
    views: list[DataplaneView],
    jobs: list[Queued],
    used: dict[str, ProjectUsage],
    explain: bool = False,
) -> tuple[float, float, int]:
    """(seconds to sort, seconds to place, jobs placed) of one scheduling pass."""
    free = {p.key: p.gpu_free for v in views for p in v.pools}
    started = time.perf_counter()
    ordered = sorted(jobs, key=lambda j: queue_key(policy, j.demand, j.priority, j.created_at))
    sorted_at = time.perf_counter()
    ledger = ledger_for(free, {})
    quotas = QuotaLedger(used)
    placed = 0
    for job in ordered:
        decision = place(job.demand, views, ledger, policy, quotas, explain=explain)
        if decision.placement is not None:
            ledger.take(decision.placement, job.demand.gpus)
            quotas.take(job.demand.project, job.demand.gpus)
            placed += 1
    return sorted_at - started, time.perf_counter() - sorted_at, placed


def explain_times(
    policy: Policy, views: list[DataplaneView], jobs: list[Queued], used: dict[str, ProjectUsage]
) -> list[float]:
    """Seconds to explain each of 1,000 jobs, each on a fresh pass (the API's case)."""
    free = {p.key: p.gpu_free for v in views for p in v.pools}
    times = []
    for job in jobs[:1000]:
        started = time.perf_counter()
        place(job.demand, views, ledger_for(free, {}), policy, QuotaLedger(used))
        times.append(time.perf_counter() - started)
    return times


def never_fits_times(policy: Policy, views: list[DataplaneView], jobs: list[Queued]) -> list[float]:
    pools = [p for v in views for p in v.pools]
    times = []
    for job in jobs[:1000]:
        started = time.perf_counter()
        never_fits(job.demand, pools, policy)
        times.append(time.perf_counter() - started)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--passes", type=int, default=5)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--no-record", action="store_true", help="do not append to RESULTS.md")
    args = parser.parse_args()

    rng = random.Random(7)
    policy = parse_policy(POLICY, source="bench policy")
    views, jobs, used = fleet(rng), queue(rng), usage(rng)

    passes = [one_pass(policy, views, jobs, used) for _ in range(args.passes)]
    place_s = statistics.median(p[1] for p in passes)
    sort_s = statistics.median(p[0] for p in passes)
    placed = passes[0][2]
    explained_pass = one_pass(policy, views, jobs, used, explain=True)
    explain = sorted(explain_times(policy, views, jobs, used))
    submit = sorted(never_fits_times(policy, views, jobs))

    rows = [
        ("fleet", f"{DATAPLANES} dataplanes x {POOLS_EACH} pools, {len(jobs):,} queued jobs"),
        ("pass: place (explain=False)", f"{place_s * 1000:.0f} ms median of {args.passes}"),
        ("decisions/s", f"{len(jobs) / place_s:,.0f} (goal >= 20,000)"),
        ("the same pass, explain=True",
         f"{explained_pass[1] * 1000:.0f} ms, {len(jobs) / explained_pass[1]:,.0f} decisions/s"),
        ("pass: sort by queue_key", f"{sort_s * 1000:.0f} ms"),
        ("placed in a pass", f"{placed:,} of {len(jobs):,} (the rest wait with a reason)"),
        ("explain one job (fresh pass)",
         f"{statistics.mean(explain) * 1000:.2f} ms mean, "
         f"{explain[int(len(explain) * 0.99)] * 1000:.2f} ms p99 (goal < 5 ms)"),
        ("never_fits (submit)", f"{statistics.mean(submit) * 1e6:.0f} us mean"),
    ]
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value}")

    if args.profile:
        profiler = cProfile.Profile()
        profiler.enable()
        one_pass(policy, views, jobs, used)
        profiler.disable()
        out = io.StringIO()
        pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(12)
        print(out.getvalue())

    if not args.no_record:
        record(rows)


def record(rows: list[tuple[str, str]]) -> None:
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
        check=False,
    ).stdout.strip() or "unknown"
    if not RESULTS.exists():
        RESULTS.write_text(
            "# Benchmark results\n\nEach run appends its figures; nothing here is asserted by "
            "a test.\n",
            encoding="utf-8",
        )
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    machine = f"{os.cpu_count()} cores, Python {platform.python_version()}"
    lines = [
        f"\n## bench/placement.py: {when}, commit {commit}, {machine}\n\n",
        "| measure | value |\n|---|---|\n",
        *(f"| {name} | {value} |\n" for name, value in rows),
    ]
    with RESULTS.open("a", encoding="utf-8") as results:
        results.writelines(lines)


if __name__ == "__main__":
    main()
