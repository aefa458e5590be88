"""The routing policy: a YAML document admins keep in git, read into frozen values.

- `model`: Policy, Rule, Match, LatencyBudget, CustomRegion, Quota; DEFAULT_POLICY.
- `parse`: the document (YAML) to a Policy, or a PolicyError naming line, column and field.
- `matching`: which rule a job falls under; the queue order; when one rule shadows another.
- `regions`: the catalog of cloud regions and the estimated round trip between two.
- `constraints`: why a pool can never take a job under a rule.
- `quota`: per-project usage during a pass.
- `plan`: what one scheduling pass computes once for all its jobs.

Placement itself (`domain.placement`) reads these; nothing here does I/O.
"""

from control_plane.domain.policy.errors import PolicyError, Problem
from control_plane.domain.policy.matching import (
    JobFacts,
    queue_key,
    queue_priority,
    rule_for,
)
from control_plane.domain.policy.model import (
    ALL_TIERS,
    DEFAULT_POLICY,
    DEFAULT_RULE_NAME,
    CustomRegion,
    LatencyBudget,
    Match,
    Policy,
    Quota,
    Rule,
)
from control_plane.domain.policy.parse import parse_policy
from control_plane.domain.policy.quota import ProjectUsage, QuotaLedger
from control_plane.domain.policy.regions import CATALOG, estimated_rtt_ms

__all__ = [
    "ALL_TIERS",
    "CATALOG",
    "DEFAULT_POLICY",
    "DEFAULT_RULE_NAME",
    "CustomRegion",
    "JobFacts",
    "LatencyBudget",
    "Match",
    "Policy",
    "PolicyError",
    "Problem",
    "ProjectUsage",
    "Quota",
    "QuotaLedger",
    "Rule",
    "estimated_rtt_ms",
    "parse_policy",
    "queue_key",
    "queue_priority",
    "rule_for",
]
