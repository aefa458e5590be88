"""Reading policy documents: what a valid one means, and the exact message for a wrong one."""

from __future__ import annotations

from textwrap import dedent

import pytest

from control_plane.domain.phases import PurchaseType
from control_plane.domain.policy import (
    DEFAULT_POLICY,
    CustomRegion,
    LatencyBudget,
    Match,
    PolicyError,
    Quota,
    Rule,
    parse_policy,
)

FULL = """\
version: 1
regions:
  us-east-dc1: {cloud: onprem, latitude: 39.04, longitude: -77.49}
measured_rtt_ms:
  us-east-dc1: {us-east-1: 1.5}
quotas:
  nlp: {concurrent_gpus: 16, gpu_hours_per_day: 300}
  interns: {concurrent_gpus: 2}
rules:
  - name: eu-residency
    match: {projects: [gdpr], domains: [production], tasks: ["train-*"], labels: {pii: "yes"}}
    priority: 10
    regions: [europe-west4]
    clouds: [gcp]
    dataplanes: [gcp-eu]
    gpu_models: [H100]
    min_gpu_memory_gb: 80
    interconnects: [nvlink]
    pool_labels: {zone: a}
    latency: {budget_ms: 30, default_origin: europe-west4}
    tiers: [spot, on_demand]
    max_price_per_gpu_hour: 5
default:
  priority: -1
  tiers: [reserved]
"""


def problems(document: str) -> str:
    with pytest.raises(PolicyError) as raised:
        parse_policy(dedent(document))
    return str(raised.value)


def test_a_full_document_reads_into_the_policy_it_says() -> None:
    policy = parse_policy(FULL)
    assert policy.rules == (
        Rule(
            name="eu-residency",
            match=Match(("gdpr",), ("production",), ("train-*",), {"pii": "yes"}),
            priority=10,
            regions=("europe-west4",),
            clouds=("gcp",),
            dataplanes=("gcp-eu",),
            gpu_models=("H100",),
            min_gpu_memory_gb=80,
            interconnects=("nvlink",),
            pool_labels={"zone": "a"},
            latency=LatencyBudget(30.0, "europe-west4"),
            tiers=(PurchaseType.SPOT, PurchaseType.ON_DEMAND),
            max_price_per_gpu_hour=5.0,
        ),
    )
    assert policy.default == Rule("default", priority=-1, tiers=(PurchaseType.RESERVED,))
    assert policy.regions == {"us-east-dc1": CustomRegion("us-east-dc1", "onprem", 39.04, -77.49)}
    assert policy.measured_rtt_ms == {("us-east-1", "us-east-dc1"): 1.5}
    assert policy.quotas == {"nlp": Quota(16, 300.0), "interns": Quota(2, None)}


def test_a_document_of_no_rules_is_the_default_policy() -> None:
    assert parse_policy("rules: []\n") == DEFAULT_POLICY
    assert parse_policy("{}\n") == DEFAULT_POLICY


def test_the_default_policy_is_todays_behaviour() -> None:
    assert DEFAULT_POLICY.rules == ()
    assert DEFAULT_POLICY.default == Rule(
        "default", tiers=(PurchaseType.RESERVED, PurchaseType.ON_DEMAND, PurchaseType.SPOT)
    )
    assert DEFAULT_POLICY.quotas == {}


@pytest.mark.parametrize(
    ("document", "message"),
    [
        pytest.param(
            """\
            rules:
              - name: a
                match: {}
                region: [us-east-1]
            """,
            "policy.yaml:4:5: rules[0].region: unknown field (did you mean regions?)",
            id="unknown field",
        ),
        pytest.param(
            """\
            rules:
              - name: a
                match: {}
                min_gpu_memory_gb: lots
            """,
            "policy.yaml:4:24: rules[0].min_gpu_memory_gb: must be an integer >= 0 (got 'lots')",
            id="wrong type",
        ),
        pytest.param(
            """\
            rules:
              - name: a
                match: {projects: nlp}
            """,
            "policy.yaml:3:23: rules[0].match.projects: must be a list (got 'nlp')",
            id="a string where a list belongs",
        ),
        pytest.param(
            """\
            rules:
              - name: a
                match: {}
                regions: [us-east-9]
            """,
            "policy.yaml:4:15: rules[0].regions[0]: unknown region 'us-east-9' (did you mean "
            "us-east-2?): not in the built-in catalog; declare an on-prem site under regions: "
            "with its cloud and coordinates",
            id="unknown region",
        ),
        pytest.param(
            """\
            rules:
              - name: a
                match: {projects: []}
            """,
            "policy.yaml:3:23: rules[0].match.projects: empty list: the rule can never match "
            "(leave the field out to match any)",
            id="never matches: empty match list",
        ),
        pytest.param(
            """\
            rules:
              - name: a
                match: {}
                regions: [us-east-1, eu-west-1]
                clouds: [gcp]
            """,
            "policy.yaml:4:14: rules[0].regions: the rule could never place a job: none of its "
            "regions is in its clouds (gcp): us-east-1 is in aws, eu-west-1 is in aws",
            id="never places: regions outside the clouds",
        ),
        pytest.param(
            """\
            rules:
              - name: nlp
                match: {projects: [nlp]}
              - name: nlp-training
                match: {projects: [nlp], tasks: ["train-*"]}
            """,
            "policy.yaml:5:12: rules[1].match: rule nlp-training is never used: rule nlp "
            "(rules[0]) comes first and matches every job it matches",
            id="shadowed rule",
        ),
        pytest.param(
            """\
            rules:
              - name: a
                match: {}
                tiers: [reserved, preemptible]
            """,
            "policy.yaml:4:23: rules[0].tiers[1]: unknown tier 'preemptible' "
            "(tiers: reserved, on_demand, spot)",
            id="bad tier name",
        ),
        pytest.param(
            """\
            quotas:
              nlp: {concurrent_gpus: -4}
            """,
            "policy.yaml:2:26: quotas.nlp.concurrent_gpus: must be an integer >= 0 (got -4)",
            id="negative quota",
        ),
        pytest.param(
            """\
            quotas:
              nlp: {gpu_hours_per_day: -1.5}
            """,
            "policy.yaml:2:28: quotas.nlp.gpu_hours_per_day: must be a number >= 0 (got -1.5)",
            id="negative GPU-hours",
        ),
        pytest.param(
            """\
            rules:
              - name: a
                match: {}
                match: {}
            """,
            "policy.yaml:4:5: rules[0].match: duplicate key (first on line 3)",
            id="duplicate key",
        ),
        pytest.param(
            """\
            rules:
              - match: {}
            """,
            "policy.yaml:2:5: rules[0].name: required field is missing",
            id="missing name",
        ),
        pytest.param(
            """\
            rules:
              - name: a
                match: {}
              - name: a
                match: {projects: [x]}
            """,
            "policy.yaml:4:11: rules[1].name: duplicate rule name (also rules[0].name)\n"
            "policy.yaml:5:12: rules[1].match: rule a is never used: rule a (rules[0]) comes "
            "first and matches every job it matches",
            id="duplicate rule name",
        ),
        pytest.param(
            """\
            rules:
              - name: a
                match: {}
                latency: {budget_ms: 20, default_origin: us-east-dc1}
            """,
            "policy.yaml:4:46: rules[0].latency.default_origin: unknown region 'us-east-dc1' "
            "(did you mean us-east-1?): not in the built-in catalog; declare an on-prem site "
            "under regions: with its cloud and coordinates",
            id="undeclared on-prem origin",
        ),
        pytest.param(
            """\
            regions:
              us-east-1: {cloud: aws, latitude: 39, longitude: -77}
            """,
            "policy.yaml:2:3: regions.us-east-1: is a built-in region already "
            "(measured_rtt_ms overrides its round trips)",
            id="custom region shadows the catalog",
        ),
        pytest.param(
            """\
            regions:
              dc1: {cloud: onprem, latitude: 91, longitude: 0}
            """,
            "policy.yaml:2:34: regions.dc1.latitude: must be a number from -90 to 90 (got 91)",
            id="latitude out of range",
        ),
        pytest.param(
            """\
            measured_rtt_ms:
              us-east-1: {eu-west-1: 70}
              eu-west-1: {us-east-1: 71}
            """,
            "policy.yaml:3:15: measured_rtt_ms.eu-west-1.us-east-1: given twice "
            "(also measured_rtt_ms.us-east-1.eu-west-1)",
            id="measured pair given twice",
        ),
        pytest.param(
            "- rules\n",
            "policy.yaml:1:1: (top level): must be a mapping (got a list)",
            id="not a mapping",
        ),
        pytest.param(
            "rules: [\n",
            "policy.yaml:2:1: (top level): invalid YAML: expected the node content, "
            "but found '<stream end>'",
            id="invalid YAML",
        ),
        pytest.param(
            "",
            "policy.yaml:1:1: (top level): the document is empty (a policy of the default rule "
            "alone is `rules: []`)",
            id="empty",
        ),
    ],
)
def test_each_problem_names_line_column_field_and_reason(document: str, message: str) -> None:
    assert problems(document) == message


def test_every_problem_is_reported_at_once_in_document_order() -> None:
    document = """\
        version: 2
        quotas:
          nlp: {concurrent_gpus: -1, gpu_hours: 3}
        rules:
          - name: everything
            match: {}
            tiers: [spot, cheap]
          - name: eu
            match: {projects: [gdpr]}
            regions: [europe-west9, eu-west-9]
            priority: high
        default:
          name: x
        """
    assert problems(document).splitlines() == [
        "policy.yaml:1:10: version: must be 1 (got 2)",
        "policy.yaml:3:26: quotas.nlp.concurrent_gpus: must be an integer >= 0 (got -1)",
        "policy.yaml:3:30: quotas.nlp.gpu_hours: unknown field (did you mean gpu_hours_per_day?)",
        "policy.yaml:7:19: rules[0].tiers[1]: unknown tier 'cheap' (tiers: reserved, on_demand, "
        "spot)",
        "policy.yaml:9:12: rules[1].match: rule eu is never used: rule everything (rules[0]) "
        "comes first and matches every job it matches",
        "policy.yaml:10:29: rules[1].regions[1]: unknown region 'eu-west-9' (did you mean "
        "eu-west-3?): not in the built-in catalog; declare an on-prem site under regions: "
        "with its cloud and coordinates",
        "policy.yaml:11:15: rules[1].priority: must be an integer (got 'high')",
        "policy.yaml:13:3: default.name: unknown field (fields here: priority, regions, clouds, "
        "dataplanes, gpu_models, min_gpu_memory_gb, interconnects, pool_labels, latency, tiers, "
        "max_price_per_gpu_hour)",
    ]


def test_the_error_carries_each_problem_and_names_the_source() -> None:
    with pytest.raises(PolicyError) as raised:
        parse_policy("rules: 3\nquotas: []\n", source="git/ml-routing.yaml")
    assert [(p.line, p.column, p.reason) for p in raised.value.problems] == [
        (1, 8, "must be a list (got 3)"),
        (2, 9, "must be a mapping (got a list)"),
    ]
    assert str(raised.value).startswith("git/ml-routing.yaml:1:8: rules: must be a list")


@pytest.mark.parametrize(
    ("earlier", "later"),
    [
        ('{tasks: ["train-*"]}', '{tasks: ["train-big-*"]}'),
        ('{tasks: ["*"]}', "{domains: [dev]}"),
        ('{tasks: ["*-eval"]}', '{tasks: ["mmlu-eval"]}'),
        ("{projects: [a, b]}", "{projects: [b], labels: {team: x}}"),
        ("{labels: {team: x}}", "{labels: {team: x, tier: gold}}"),
        ("{}", "{projects: [a]}"),
    ],
)
def test_a_later_rule_an_earlier_one_covers_is_reported(earlier: str, later: str) -> None:
    document = f"""\
        rules:
          - {{name: first, match: {earlier}}}
          - {{name: second, match: {later}}}
        """
    assert "rule second is never used: rule first (rules[0])" in problems(document)


@pytest.mark.parametrize(
    ("earlier", "later"),
    [
        ('{tasks: ["train-*"]}', '{tasks: ["*-train"]}'),
        ('{tasks: ["train-?"]}', '{tasks: ["train-*"]}'),
        ('{tasks: ["a*b*"]}', '{tasks: ["a?b"]}'),  # covers, but beyond the sure cases: quiet
        ("{projects: [a]}", "{projects: [a, b]}"),
        ("{projects: [a]}", "{domains: [dev]}"),
        ("{labels: {team: x}}", "{labels: {team: y}}"),
        ("{labels: {team: x, tier: gold}}", "{labels: {team: x}}"),
    ],
)
def test_rules_a_job_can_still_reach_are_not_reported(earlier: str, later: str) -> None:
    document = f"""\
        rules:
          - {{name: first, match: {earlier}}}
          - {{name: second, match: {later}}}
        """
    parse_policy(dedent(document))
