"""What the dashboard's JSON API answers: records as plain JSON values, and the job list's
query read and checked. Pure: no I/O.

Names follow the CLI's words (phases, tiers and states in lowercase, times in ISO 8601
UTC). The checks apply the same rules as api/validation.py, which this layer may not import
(api and web are sibling layers): every problem names its field.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from control_plane.domain.limits import MAX_ID, MAX_NAME, MAX_PAGE
from control_plane.domain.phases import DataplaneHealth, JobPhase
from control_plane.domain.placement import Decision
from control_plane.domain.records import (
    AttemptRecord,
    DataplaneRecord,
    EventRecord,
    JobRecord,
    PolicyVersionRecord,
    PoolRecord,
)
from control_plane.wire import decode_page_token

Json = dict[str, Any]

DEFAULT_PAGE = 100   # as JobService.List
# fullmatch: re's "$" also matches before a trailing newline.
DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
ID = re.compile(r"[A-Za-z0-9._-]+")
JOB_FILTERS = ("project", "phase", "dataplane", "page_size", "page_token")
PHASE_WORDS = frozenset(phase.value for phase in JobPhase)


class BadRequest(ValueError):
    """A request the API refuses (400); the message names the field."""


def iso(value: datetime | None) -> str | None:
    return None if value is None else value.astimezone(UTC).isoformat()


# -- dataplanes ------------------------------------------------------------------------------


def dataplane_json(record: DataplaneRecord, health: DataplaneHealth, now: datetime) -> Json:
    heard = record.last_heartbeat_at
    return {
        "name": record.name,
        "region": record.region,
        "cloud": record.cloud,
        "health": health.value,
        "connected": record.connected,
        "state": record.state.value,
        "unavailable_because": record.unavailable_because,
        "cordon_reason": record.cordon_reason,
        "drain_deadline": iso(record.drain_deadline),
        "last_heartbeat_at": iso(heard),
        "heartbeat_age_s": None if heard is None else round((now - heard).total_seconds(), 1),
        "agent_version": record.agent_version,
        "active_attempts": record.active_attempts,
        "labels": dict(record.labels),
        "pools": [pool_json(pool) for pool in record.pools],
    }


def pool_json(pool: PoolRecord) -> Json:
    return {
        "name": pool.name,
        "tier": pool.purchase_type.value,
        "region": pool.region,
        "gpu_model": pool.gpu_model,
        "gpu_memory_gb": pool.gpu_memory_gb,
        "gpu_total": pool.gpu_total,
        "gpu_free": pool.gpu_free,
        "interconnect": pool.interconnect,
        "price_per_gpu_hour": pool.price_per_gpu_hour,
        "gpu_node_size": pool.gpu_node_size,
        "gpu_node_free": pool.gpu_node_free,
    }


# -- jobs ------------------------------------------------------------------------------------


def job_summary_json(job: JobRecord) -> Json:
    """One row of the job list."""
    resources = job.spec.get("resources", {})
    return {
        "id": job.id,
        "project": job.project,
        "domain": job.domain,
        "name": job.name,
        "phase": job.phase.value,
        "message": job.message,
        "dataplane": job.dataplane or "",
        "pool": job.pool or "",
        "gpus": int(resources.get("gpus", 0)),
        "gpu_model": str(resources.get("gpu_model", "")),
        "priority": job.priority,
        "retries_used": job.retries_used,
        "retry_budget": job.retry_budget,
        "submitted_by": job.submitted_by,
        "created_at": iso(job.created_at),
        "updated_at": iso(job.updated_at),
        "started_at": iso(job.started_at),
        "finished_at": iso(job.finished_at),
    }


def job_json(job: JobRecord) -> Json:
    """The job page: its row, a summary of its spec, and its attempts (oldest first)."""
    return {
        **job_summary_json(job),
        "current_attempt_id": job.current_attempt_id or "",
        "spec": spec_summary(job.spec),
        "attempts": [attempt_json(attempt) for attempt in job.attempts],
    }


def spec_summary(spec: Mapping[str, Any]) -> Json:
    """What an operator looks at. Environment values are left out (they often hold
    credentials); the inputs are a size only (values and URIs, never shown here)."""
    resources = spec.get("resources", {})
    routing = spec.get("routing", {})
    return {
        "image": str(spec.get("image", "")),
        "command": [str(arg) for arg in spec.get("command", [])],
        "env_names": sorted(str(name) for name in spec.get("env", {})),
        "labels": {str(k): str(v) for k, v in spec.get("labels", {}).items()},
        "gpus": int(resources.get("gpus", 0)),
        "gpu_model": str(resources.get("gpu_model", "")),
        "min_gpu_memory_gb": int(resources.get("min_gpu_memory_gb", 0)),
        "cpu_millis": int(resources.get("cpu_millis", 0)),
        "memory_bytes": int(resources.get("memory_bytes", 0)),   # uint64: a string in JSON
        "origin_region": str(routing.get("origin_region", "")),
        "allow_spot": routing.get("allow_spot"),
        "pin_dataplane": str(routing.get("pin_dataplane", "")),
        "timeout": str(spec.get("timeout", "")),
        "service_account": str(spec.get("service_account", "")),
        "inputs_bytes": _decoded_size(str(spec.get("inputs", ""))),
    }


def _decoded_size(text: str) -> int:
    """The size of base64 bytes (protobuf JSON stores bytes so)."""
    try:
        return len(base64.b64decode(text))
    except ValueError:
        return 0


def attempt_json(attempt: AttemptRecord) -> Json:
    return {
        "id": attempt.id,
        "epoch": attempt.epoch,
        "dataplane": attempt.dataplane,
        "pool": attempt.pool,
        "gpus": attempt.gpus,
        "phase": attempt.phase.value,
        "reason": attempt.reason,
        "message": attempt.message,
        "exit_code": attempt.exit_code,
        "cancel_requested": attempt.cancel_requested,
        "created_at": iso(attempt.created_at),
        "started_at": iso(attempt.started_at),
        "finished_at": iso(attempt.finished_at),
    }


def event_json(event: EventRecord) -> Json:
    return {
        "seq": event.seq,
        "at": iso(event.at),
        "phase": event.phase.value,
        "attempt_id": event.attempt_id or "",
        "kind": event.kind,
        "message": event.message,
    }


def explanation_json(job: JobRecord, policy_version: int, decision: Decision) -> Json:
    """The routing explanation as `fleet jobs explain` shows it (PolicyService.ExplainJob):
    the decision the scheduler would make now, every pool with its reason."""
    summary = decision.summary
    if job.phase is not JobPhase.QUEUED:
        # Placed or ended: say what happened; the candidates show the fleet as it is now.
        summary = (
            f"{job.phase.value}: {job.message or job.dataplane}; "
            f"if submitted now: {decision.summary}"
        )
    return {
        "policy_version": policy_version,
        "rule": decision.rule,
        "priority": decision.priority,
        "summary": summary,
        "candidates": [
            {
                "dataplane": c.dataplane,
                "pool": c.pool,
                "region": c.region,
                "tier": c.purchase_type.value if c.purchase_type else "",
                "chosen": c.chosen,
                "reason": c.reason,
            }
            for c in decision.candidates
        ],
    }


# -- policy ----------------------------------------------------------------------------------


def policy_version_json(record: PolicyVersionRecord, with_document: bool = True) -> Json:
    found: Json = {
        "version": record.version,
        "author": record.author,
        "comment": record.comment,
        "created_at": iso(record.created_at),
    }
    if with_document:
        found["document"] = record.document
    return found


# -- the job list's query --------------------------------------------------------------------


@dataclass(frozen=True)
class JobQuery:
    project: str = ""
    phases: tuple[JobPhase, ...] = ()
    dataplane: str = ""
    page_size: int = DEFAULT_PAGE
    after: tuple[datetime, str] | None = None   # the previous page's last (created_at, id)


def job_query(params: Mapping[str, Sequence[str]]) -> JobQuery:
    """Read ?project=&phase=&dataplane=&page_size=&page_token= (phase repeated or
    comma-separated); raises BadRequest naming every field that is wrong."""
    problems = [
        f"{name}: not a filter of the job list (use {', '.join(JOB_FILTERS)})"
        for name in params
        if name not in JOB_FILTERS
    ]
    single = {}
    for name in ("project", "dataplane", "page_size", "page_token"):
        values = params.get(name, [])
        if len(values) > 1:
            problems.append(f"{name}: given {len(values)} times, at most once")
        single[name] = values[0] if values else ""
    for name in ("project", "dataplane"):
        problem = name_problem(name, single[name])
        if problem:
            problems.append(problem)
    phases: list[JobPhase] = []
    for word in (w.strip() for value in params.get("phase", []) for w in value.split(",")):
        if word in PHASE_WORDS:
            phases.append(JobPhase(word))
        elif word:
            choices = ", ".join(p.value for p in JobPhase)
            problems.append(f"phase: {shown(word)} is not a job phase (one of {choices})")
    size = DEFAULT_PAGE
    if single["page_size"]:
        if not single["page_size"].isdigit() or not 0 < int(single["page_size"]) <= MAX_PAGE:
            problems.append(
                f"page_size: {shown(single['page_size'])} is not a number from 1 to {MAX_PAGE}"
            )
        else:
            size = int(single["page_size"])
    after = None
    if single["page_token"]:
        after = decode_page_token(single["page_token"])
        if after is None:
            problems.append("page_token: not a token this service returned")
    if problems:
        raise BadRequest("; ".join(problems))
    return JobQuery(single["project"], tuple(dict.fromkeys(phases)), single["dataplane"],
                    size, after)


def name_problem(field: str, value: str) -> str | None:
    if value and (len(value) > MAX_NAME or not DNS_LABEL.fullmatch(value)):
        return (
            f"{field}: {shown(value)} is not a valid name (lowercase letters, digits and '-', "
            "at most 63, starting and ending with a letter or digit)"
        )
    return None


def id_problem(field: str, value: str) -> str | None:
    if len(value) > MAX_ID or not ID.fullmatch(value):
        return (
            f"{field}: {shown(value)} is not an id (letters, digits, '.', '_' and '-', "
            f"at most {MAX_ID})"
        )
    return None


def shown(value: str, limit: int = 40) -> str:
    return repr(value if len(value) <= limit else value[:limit] + "…")
