"""Reading one rule (or the default rule) of a policy document."""

from __future__ import annotations

import difflib
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import TypeVar

import yaml

from control_plane.domain.phases import PurchaseType
from control_plane.domain.policy.errors import FieldPath
from control_plane.domain.policy.model import (
    ALL_TIERS,
    DEFAULT_RULE_NAME,
    LatencyBudget,
    Match,
    Rule,
)
from control_plane.domain.policy.yaml_reader import Reader

BODY_FIELDS = (
    "priority",
    "regions",
    "clouds",
    "dataplanes",
    "gpu_models",
    "min_gpu_memory_gb",
    "interconnects",
    "pool_labels",
    "latency",
    "tiers",
    "max_price_per_gpu_hour",
)
RULE_FIELDS = ("name", "match", *BODY_FIELDS)
MATCH_FIELDS = ("projects", "domains", "tasks", "labels")
LATENCY_FIELDS = ("budget_ms", "default_origin")
TIER_NAMES = tuple(t.value for t in ALL_TIERS)

T = TypeVar("T")

NEVER_MATCHES = "empty list: the rule can never match (leave the field out to match any)"
NEVER_PLACES = "empty list: the rule could never place a job (leave the field out to allow any)"


@dataclass(frozen=True)
class Known:
    """Names the document may use: the catalog's regions and clouds plus its own."""

    regions: Collection[str]
    clouds: Collection[str]
    region_cloud: dict[str, str]


@dataclass(frozen=True)
class ReadRule:
    """What could be read of one rule: its name and match may be sound when the rest is not,
    which is enough to check names and shadowing."""

    name: str | None
    match: Match | None
    rule: Rule | None  # None when any field has a problem


def read_rule(r: Reader, node: yaml.Node, path: FieldPath, known: Known) -> ReadRule:
    """A rule of `rules:`; the problems found are reported on the reader."""
    before = len(r.problems)
    fields = r.fields(node, path, RULE_FIELDS, required=("name", "match"))
    if fields is None:
        return ReadRule(None, None, None)
    name = r.string(fields["name"], (*path, "name")) if "name" in fields else None
    if name == DEFAULT_RULE_NAME:
        r.report(fields["name"], (*path, "name"), "'default' is the default rule's name")
        name = None
    before_match = len(r.problems)
    match = _match(r, fields["match"], (*path, "match")) if "match" in fields else None
    if len(r.problems) > before_match:
        match = None
    rule = _body(r, fields, path, known, name or "", match or Match())
    return ReadRule(name, match, rule if len(r.problems) == before else None)


def read_default(r: Reader, node: yaml.Node, path: FieldPath, known: Known) -> Rule | None:
    before = len(r.problems)
    fields = r.fields(node, path, BODY_FIELDS)
    if fields is None:
        return None
    rule = _body(r, fields, path, known, DEFAULT_RULE_NAME, Match())
    return rule if len(r.problems) == before else None


def _match(r: Reader, node: yaml.Node, path: FieldPath) -> Match | None:
    fields = r.fields(node, path, MATCH_FIELDS)
    if fields is None:
        return None
    lists = {
        name: _names(r, fields, path, name, NEVER_MATCHES)
        for name in ("projects", "domains", "tasks")
    }
    labels = r.string_map(fields["labels"], (*path, "labels")) if "labels" in fields else {}
    return Match(lists["projects"], lists["domains"], lists["tasks"], labels or {})


def _body(
    r: Reader, fields: dict[str, yaml.Node], path: FieldPath, known: Known, name: str, match: Match
) -> Rule:
    def at(field: str) -> FieldPath:
        return (*path, field)

    regions = _names(r, fields, path, "regions", NEVER_PLACES)
    for index, region in enumerate(regions or ()):
        if region not in known.regions:
            r.report_at((*at("regions"), index), unknown_name("region", region, known.regions))
    clouds = _names(r, fields, path, "clouds", NEVER_PLACES)
    for index, cloud in enumerate(clouds or ()):
        if cloud not in known.clouds:
            r.report_at((*at("clouds"), index), unknown_name("cloud", cloud, known.clouds))
    if regions and clouds and all(known.region_cloud.get(g) not in clouds for g in regions):
        where = ", ".join(f"{g} is in {known.region_cloud.get(g, '?')}" for g in regions)
        r.report_at(
            at("regions"),
            f"the rule could never place a job: none of its regions is in its clouds "
            f"({', '.join(clouds)}): {where}",
        )

    def optional(name: str, read: Callable[[yaml.Node, FieldPath], T | None], default: T) -> T:
        node = fields.get(name)
        value = None if node is None else read(node, at(name))
        return default if value is None else value

    return Rule(
        name=name,
        match=match,
        priority=optional("priority", lambda n, p: r.integer(n, p, -(2**31)), 0),
        regions=regions,
        clouds=clouds,
        dataplanes=_names(r, fields, path, "dataplanes", NEVER_PLACES),
        gpu_models=_names(r, fields, path, "gpu_models", NEVER_PLACES),
        min_gpu_memory_gb=optional("min_gpu_memory_gb", r.integer, 0),
        interconnects=_names(r, fields, path, "interconnects", NEVER_PLACES),
        pool_labels=optional("pool_labels", r.string_map, {}),
        latency=optional("latency", lambda n, p: _latency(r, n, p, known), None),
        tiers=optional("tiers", lambda n, p: _tiers(r, n, p), ALL_TIERS),
        max_price_per_gpu_hour=optional("max_price_per_gpu_hour", r.number, None),
    )


def _names(
    r: Reader, fields: dict[str, yaml.Node], path: FieldPath, name: str, if_empty: str
) -> tuple[str, ...] | None:
    node = fields.get(name)
    if node is None:
        return None
    names = r.strings(node, (*path, name))
    if names == ():
        r.report(node, (*path, name), if_empty)
    return names


def _latency(r: Reader, node: yaml.Node, path: FieldPath, known: Known) -> LatencyBudget | None:
    fields = r.fields(node, path, LATENCY_FIELDS, required=("budget_ms",))
    if fields is None or "budget_ms" not in fields:
        return None
    budget = r.number(fields["budget_ms"], (*path, "budget_ms"), positive=True)
    origin = ""
    if "default_origin" in fields:
        origin = r.string(fields["default_origin"], (*path, "default_origin")) or ""
        if origin and origin not in known.regions:
            r.report(
                fields["default_origin"],
                (*path, "default_origin"),
                unknown_name("region", origin, known.regions),
            )
    return None if budget is None else LatencyBudget(budget, origin)


def _tiers(r: Reader, node: yaml.Node, path: FieldPath) -> tuple[PurchaseType, ...]:
    names = r.strings(node, path)
    if names is None:
        return ALL_TIERS
    if not names:
        r.report(node, path, "must list at least one tier: a rule with no tier never places a job")
    tiers: list[PurchaseType] = []
    for index, name in enumerate(names):
        if name not in TIER_NAMES:
            r.report_at((*path, index), f"unknown tier {name!r} (tiers: {', '.join(TIER_NAMES)})")
        elif PurchaseType(name) in tiers:
            r.report_at((*path, index), f"tier {name} is listed twice")
        else:
            tiers.append(PurchaseType(name))
    return tuple(tiers)


def unknown_name(kind: str, name: str, known: Collection[str]) -> str:
    close = difflib.get_close_matches(name, sorted(known), n=1)
    hint = f" (did you mean {close[0]}?)" if close else ""
    if kind == "region":
        return (
            f"unknown region {name!r}{hint}: not in the built-in catalog; declare an on-prem "
            "site under regions: with its cloud and coordinates"
        )
    return f"unknown cloud {name!r}{hint}: clouds are {', '.join(sorted(known))}"
