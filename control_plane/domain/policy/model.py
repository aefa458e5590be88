"""The routing policy as plain frozen values: what `parse_policy` returns and placement reads.

A list field set to None means "no constraint"; an empty tuple is refused by validation (a
rule that could never match or never place). Names compare exactly, except GPU models and
interconnects, which compare case-insensitively like the rest of placement. Mapping fields
take no part in hashing, so the values stay hashable (equality still compares them).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from control_plane.domain.phases import PurchaseType

ALL_TIERS: tuple[PurchaseType, ...] = (
    PurchaseType.RESERVED,
    PurchaseType.ON_DEMAND,
    PurchaseType.SPOT,
)
DEFAULT_RULE_NAME = "default"


@dataclass(frozen=True)
class Match:
    """Which jobs a rule is for: every field given must hold (a missing field matches all)."""

    projects: tuple[str, ...] | None = None  # any of these projects
    domains: tuple[str, ...] | None = None  # any of these domains
    tasks: tuple[str, ...] | None = None  # task name globs (fnmatch, case-sensitive)
    # The job carries every one of these labels.
    labels: Mapping[str, str] = field(default_factory=dict, hash=False)


@dataclass(frozen=True)
class LatencyBudget:
    """Only dataplanes within budget_ms round trip of the job's origin region."""

    budget_ms: float
    # Used when the job names no origin region; with neither, the job cannot be placed.
    default_origin: str = ""


@dataclass(frozen=True)
class Rule:
    name: str
    match: Match = field(default_factory=Match)
    priority: int = 0
    # Residency: a job under this rule never runs outside these.
    regions: tuple[str, ...] | None = None
    clouds: tuple[str, ...] | None = None
    dataplanes: tuple[str, ...] | None = None
    # Hardware, for jobs that ask for GPUs.
    gpu_models: tuple[str, ...] | None = None
    min_gpu_memory_gb: int = 0
    interconnects: tuple[str, ...] | None = None
    pool_labels: Mapping[str, str] = field(default_factory=dict, hash=False)
    latency: LatencyBudget | None = None
    # Preference order; a tier left out is forbidden. Bursts go to the next tier only when
    # the earlier ones have no free capacity that fits.
    tiers: tuple[PurchaseType, ...] = ALL_TIERS
    max_price_per_gpu_hour: float | None = None


@dataclass(frozen=True)
class CustomRegion:
    """A region the built-in catalog does not know (an on-prem site), with its place."""

    name: str
    cloud: str
    latitude: float
    longitude: float


@dataclass(frozen=True)
class Quota:
    concurrent_gpus: int | None = None  # None: unlimited
    gpu_hours_per_day: float | None = None


@dataclass(frozen=True)
class Policy:
    rules: tuple[Rule, ...] = ()
    default: Rule = field(default_factory=lambda: Rule(DEFAULT_RULE_NAME))
    regions: Mapping[str, CustomRegion] = field(default_factory=dict, hash=False)
    # Measured round trips in ms, keyed by the two region names in sorted order.
    measured_rtt_ms: Mapping[tuple[str, str], float] = field(default_factory=dict, hash=False)
    quotas: Mapping[str, Quota] = field(default_factory=dict, hash=False)


# What the fleet does with no document applied: everything allowed, reserved before
# on-demand before spot, no caps, no quotas, one priority.
DEFAULT_POLICY = Policy()
