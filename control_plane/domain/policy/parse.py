"""From a YAML document to a Policy, or a PolicyError listing every problem.

Each problem reads ``policy.yaml:LINE:COLUMN: field.path: reason``. Nothing is returned
when any problem is found, so a wrong document is never half applied.
"""

from __future__ import annotations

import yaml

from control_plane.domain.policy.errors import FieldPath, PolicyError, Problem, field_path
from control_plane.domain.policy.matching import match_covers
from control_plane.domain.policy.model import DEFAULT_RULE_NAME, CustomRegion, Policy, Quota, Rule
from control_plane.domain.policy.parse_rule import Known, read_default, read_rule, unknown_name
from control_plane.domain.policy.regions import CATALOG, CATALOG_CLOUDS
from control_plane.domain.policy.yaml_reader import Reader

TOP_FIELDS = ("version", "regions", "measured_rtt_ms", "quotas", "rules", "default")
REGION_FIELDS = ("cloud", "latitude", "longitude")
QUOTA_FIELDS = ("concurrent_gpus", "gpu_hours_per_day")


def parse_policy(text: str, source: str = "policy.yaml") -> Policy:
    """Read and check a policy document; raises PolicyError with every problem found."""
    root = _compose(text, source)
    r = Reader(source, root)
    fields = r.fields(root, (), TOP_FIELDS)
    if fields is None:
        raise PolicyError(r.problems)
    if "version" in fields and r.value(fields["version"]) != 1:
        r.report(fields["version"], ("version",), f"must be 1 (got {r.show(fields['version'])})")
    regions, known = _regions(r, fields.get("regions"))
    measured = _measured(r, fields.get("measured_rtt_ms"), known)
    quotas = _quotas(r, fields.get("quotas"))
    rules = _rules(r, fields.get("rules"), known)
    default: Rule | None = Rule(DEFAULT_RULE_NAME)
    if "default" in fields:
        default = read_default(r, fields["default"], ("default",), known)
    if r.problems or default is None:
        raise PolicyError(r.problems)
    return Policy(
        rules=tuple(rule for rule in rules if rule is not None),
        default=default,
        regions=regions,
        measured_rtt_ms=measured,
        quotas=quotas,
    )


def _compose(text: str, source: str) -> yaml.Node:
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        line, column = (1, 1) if mark is None else (mark.line + 1, mark.column + 1)
        reason = f"invalid YAML: {error.problem or error.context}"
        raise PolicyError([Problem(line, column, source, (), reason)]) from error
    except yaml.YAMLError as error:
        raise PolicyError([Problem(1, 1, source, (), f"invalid YAML: {error}")]) from error
    if root is None:
        reason = "the document is empty (a policy of the default rule alone is `rules: []`)"
        raise PolicyError([Problem(1, 1, source, (), reason)])
    return root


def _regions(r: Reader, node: yaml.Node | None) -> tuple[dict[str, CustomRegion], Known]:
    regions: dict[str, CustomRegion] = {}
    declared: set[str] = set()
    for key_node, name, value in _entries(r, node, ("regions",)):
        path: FieldPath = ("regions", name)
        if name in CATALOG:
            r.report(
                key_node,
                path,
                "is a built-in region already (measured_rtt_ms overrides its round trips)",
            )
            continue
        declared.add(name)
        fields = r.fields(value, path, REGION_FIELDS, required=REGION_FIELDS)
        if fields is None:
            continue
        cloud = latitude = longitude = None
        if "cloud" in fields:
            cloud = r.string(fields["cloud"], (*path, "cloud"))
        if "latitude" in fields:
            latitude = r.coordinate(fields["latitude"], (*path, "latitude"), 90)
        if "longitude" in fields:
            longitude = r.coordinate(fields["longitude"], (*path, "longitude"), 180)
        if cloud is not None and latitude is not None and longitude is not None:
            regions[name] = CustomRegion(name, cloud, latitude, longitude)
    region_cloud = {name: cloud for name, (cloud, _, _) in CATALOG.items()}
    region_cloud.update({name: region.cloud for name, region in regions.items()})
    known = Known(
        regions=set(CATALOG) | declared,
        clouds=set(CATALOG_CLOUDS) | {region.cloud for region in regions.values()},
        region_cloud=region_cloud,
    )
    return regions, known


def _measured(r: Reader, node: yaml.Node | None, known: Known) -> dict[tuple[str, str], float]:
    measured: dict[tuple[str, str], float] = {}
    given_at: dict[tuple[str, str], FieldPath] = {}
    for a_node, a, targets in _entries(r, node, ("measured_rtt_ms",)):
        if a not in known.regions:
            r.report(a_node, ("measured_rtt_ms", a), unknown_name("region", a, known.regions))
        for b_node, b, value in r.entries(targets, ("measured_rtt_ms", a)) or []:
            path: FieldPath = ("measured_rtt_ms", a, b)
            if b not in known.regions:
                r.report(b_node, path, unknown_name("region", b, known.regions))
            pair = (a, b) if a <= b else (b, a)
            if pair in given_at:
                r.report(b_node, path, f"given twice (also {field_path(given_at[pair])})")
                continue
            given_at[pair] = path
            ms = r.number(value, path, positive=True)
            if ms is not None:
                measured[pair] = ms
    return measured


def _quotas(r: Reader, node: yaml.Node | None) -> dict[str, Quota]:
    quotas: dict[str, Quota] = {}
    for _key_node, project, value in _entries(r, node, ("quotas",)):
        path: FieldPath = ("quotas", project)
        fields = r.fields(value, path, QUOTA_FIELDS)
        if fields is None:
            continue
        gpus = hours = None
        if "concurrent_gpus" in fields:
            gpus = r.integer(fields["concurrent_gpus"], (*path, "concurrent_gpus"))
        if "gpu_hours_per_day" in fields:
            hours = r.number(fields["gpu_hours_per_day"], (*path, "gpu_hours_per_day"))
        quotas[project] = Quota(gpus, hours)
    return quotas


def _rules(r: Reader, node: yaml.Node | None, known: Known) -> list[Rule | None]:
    if node is None:
        return []
    rules = [
        read_rule(r, item, ("rules", index), known)
        for index, item in enumerate(r.items(node, ("rules",)) or [])
    ]
    first_named: dict[str, int] = {}
    for index, read in enumerate(rules):
        if read.name is not None and read.name in first_named:
            r.report_at(
                ("rules", index, "name"),
                f"duplicate rule name (also rules[{first_named[read.name]}].name)",
            )
        elif read.name is not None:
            first_named[read.name] = index
        if read.match is None:
            continue
        for earlier_index, earlier in enumerate(rules[:index]):
            if earlier.match is not None and match_covers(earlier.match, read.match):
                r.report_at(
                    ("rules", index, "match"),
                    f"rule {read.name or f'rules[{index}]'} is never used: rule "
                    f"{earlier.name or '(unnamed)'} (rules[{earlier_index}]) comes first and "
                    "matches every job it matches",
                )
                break
    return [read.rule for read in rules]


def _entries(
    r: Reader, node: yaml.Node | None, path: FieldPath
) -> list[tuple[yaml.Node, str, yaml.Node]]:
    return [] if node is None else r.entries(node, path) or []
