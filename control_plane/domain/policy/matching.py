"""Which rule a job falls under, the queue order it gives, and when one match covers another.

Queue order: the matched rule's priority first (the admins' word), then the job's own
priority from its spec (the submitter's word, among jobs of equal rule priority), then
submit order; the job id breaks exact ties so the order is total and stable.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from fnmatch import fnmatchcase
from typing import Protocol

from control_plane.domain.policy.model import Match, Policy, Rule

_GLOB_CHARS = frozenset("*?[")


class JobFacts(Protocol):
    """What matching reads of a job (placement's JobDemand has these)."""

    @property
    def job_id(self) -> str: ...
    @property
    def project(self) -> str: ...
    @property
    def domain(self) -> str: ...
    @property
    def name(self) -> str: ...
    @property
    def labels(self) -> Mapping[str, str]: ...


def matches(match: Match, job: JobFacts) -> bool:
    if match.projects is not None and job.project not in match.projects:
        return False
    if match.domains is not None and job.domain not in match.domains:
        return False
    if match.tasks is not None and not any(fnmatchcase(job.name, p) for p in match.tasks):
        return False
    labels = job.labels
    return all(labels.get(key) == value for key, value in match.labels.items())


def rule_index(policy: Policy, job: JobFacts) -> int:
    """Position of the first matching rule; -1 for the default rule."""
    for index, rule in enumerate(policy.rules):
        if matches(rule.match, job):
            return index
    return -1


def rule_for(policy: Policy, job: JobFacts) -> Rule:
    """The first rule whose match holds for the job, else the policy's default rule."""
    index = rule_index(policy, job)
    return policy.default if index < 0 else policy.rules[index]


def queue_priority(policy: Policy, job: JobFacts) -> int:
    return rule_for(policy, job).priority


def queue_key(
    policy: Policy, job: JobFacts, submitted_priority: int, created_at: datetime
) -> tuple[int, int, datetime, str]:
    """Sort key of the queue: ascending order is the order in which jobs are placed."""
    return (-queue_priority(policy, job), -submitted_priority, created_at, job.job_id)


# -- shadowing: conservative, so it never reports a rule that some job could still reach --


def match_covers(earlier: Match, later: Match) -> bool:
    """True only when every job `later` matches is surely matched by `earlier` too."""
    return (
        _names_cover(earlier.projects, later.projects)
        and _names_cover(earlier.domains, later.domains)
        and _globs_cover(earlier.tasks, later.tasks)
        and all(later.labels.get(key) == value for key, value in earlier.labels.items())
    )


def _names_cover(earlier: tuple[str, ...] | None, later: tuple[str, ...] | None) -> bool:
    if earlier is None:
        return True
    return later is not None and set(later) <= set(earlier)


def _globs_cover(earlier: tuple[str, ...] | None, later: tuple[str, ...] | None) -> bool:
    if earlier is None:
        return True
    if later is None:
        return "*" in earlier
    return all(any(_glob_covers(e, pattern) for e in earlier) for pattern in later)


def _glob_covers(earlier: str, later: str) -> bool:
    """Whether every name matching `later` matches `earlier`, judged only in sure cases:
    the same pattern, `*`, a literal name, or a literal prefix/suffix around one `*`."""
    if earlier == later or earlier == "*":
        return True
    if not _GLOB_CHARS & set(later):
        return fnmatchcase(later, earlier)
    if earlier.count("*") == 1 and not _GLOB_CHARS & set(earlier.replace("*", "")):
        prefix, suffix = earlier.split("*")
        head, tail = later[: len(prefix)], later[len(later) - len(suffix) :] if suffix else ""
        literal_ends = not _GLOB_CHARS & set(head + tail)
        fits = len(later) >= len(prefix) + len(suffix)
        return literal_ends and fits and head == prefix and tail == suffix
    return False
