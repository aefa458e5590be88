"""Records to and from the wire contract (fleet.v1). Pure conversions, no decisions."""

from __future__ import annotations

import base64
from collections.abc import Mapping
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, TypeVar

from fleet.v1 import admin_pb2, agent_pb2, types_pb2
from google.protobuf import json_format, timestamp_pb2

from control_plane.domain.cordon import DataplaneState
from control_plane.domain.limits import (
    MAX_ATTEMPT_MESSAGE,
    MAX_ATTEMPT_REASON,
    MAX_LOG_ERROR,
    MAX_PAGE_TOKEN,
    clipped,
)
from control_plane.domain.phases import AttemptPhase, DataplaneHealth, JobPhase, PurchaseType
from control_plane.domain.placement import Decision, JobDemand
from control_plane.domain.reconcile import ReportedAttempt
from control_plane.domain.records import (
    AttemptRecord,
    DataplaneRecord,
    EventRecord,
    JobRecord,
    PoolRecord,
)

E = TypeVar("E", bound=StrEnum)

# Proto enum value names are PREFIX_MEMBER; our StrEnum members carry the same MEMBER names.
_PREFIX: dict[type[StrEnum], str] = {
    JobPhase: "JOB_PHASE_",
    AttemptPhase: "ATTEMPT_PHASE_",
    PurchaseType: "PURCHASE_TYPE_",
    DataplaneHealth: "DATAPLANE_HEALTH_",
    DataplaneState: "DATAPLANE_STATE_",
}
_PROTO_ENUM: dict[type[StrEnum], Any] = {
    JobPhase: types_pb2.JobPhase,
    AttemptPhase: types_pb2.AttemptPhase,
    PurchaseType: types_pb2.PurchaseType,
    DataplaneHealth: types_pb2.DataplaneHealth,
    DataplaneState: admin_pb2.DataplaneState,
}


# SIGTERM (or a pod's deletion) to SIGKILL when the control plane stops an attempt.
CANCEL_GRACE_S = 30


def enum_to_proto(value: StrEnum) -> int:
    kind = type(value)
    return int(_PROTO_ENUM[kind].Value(_PREFIX[kind] + value.name))


def enum_from_proto(kind: type[E], number: int) -> E:
    """Raises ValueError for UNSPECIFIED or unknown numbers."""
    name = _PROTO_ENUM[kind].Name(number).removeprefix(_PREFIX[kind])
    if name not in kind.__members__:
        raise ValueError(f"{_PREFIX[kind]}{name} is not a valid value here")
    return kind[name]


def timestamp(value: datetime | None) -> timestamp_pb2.Timestamp | None:
    if value is None:
        return None
    ts = timestamp_pb2.Timestamp()
    ts.FromDatetime(value.astimezone(UTC))
    return ts


def from_timestamp(ts: timestamp_pb2.Timestamp, present: bool = True) -> datetime | None:
    if not present or (ts.seconds == 0 and ts.nanos == 0):
        return None
    return ts.ToDatetime(tzinfo=UTC)


def spec_to_json(spec: types_pb2.JobSpec) -> dict[str, Any]:
    return json_format.MessageToDict(spec, preserving_proto_field_name=True)


def spec_from_json(data: Mapping[str, Any]) -> types_pb2.JobSpec:
    return json_format.ParseDict(dict(data), types_pb2.JobSpec())


def demand_from_json(job_id: str, spec: Mapping[str, Any]) -> JobDemand:
    """What routing needs of a job, read straight from its spec JSON (as stored)."""
    resources = spec.get("resources", {})
    routing = spec.get("routing", {})
    return JobDemand(
        job_id=job_id,
        gpus=int(resources.get("gpus", 0)),
        gpu_model=str(resources.get("gpu_model", "")),
        min_gpu_memory_gb=int(resources.get("min_gpu_memory_gb", 0)),
        pin_dataplane=str(routing.get("pin_dataplane", "")),
        allow_spot=routing.get("allow_spot"),
        project=str(spec.get("project", "")),
        domain=str(spec.get("domain", "")),
        name=str(spec.get("name", "")),
        labels=dict(spec.get("labels", {})),
        origin_region=str(routing.get("origin_region", "")),
    )


def explanation_to_proto(
    decision: Decision, policy_version: int, job_id: str = ""
) -> admin_pb2.Explanation:
    return admin_pb2.Explanation(
        job_id=job_id,
        policy_version=policy_version,
        rule=decision.rule,
        priority=decision.priority,
        summary=decision.summary,
        candidates=[
            admin_pb2.CandidateExplanation(
                dataplane=c.dataplane,
                pool=c.pool,
                region=c.region,
                purchase_type=(
                    enum_to_proto(c.purchase_type) if c.purchase_type else 0  # type: ignore[arg-type]
                ),
                chosen=c.chosen,
                reason=c.reason,
            )
            for c in decision.candidates
        ],
    )


def attempt_to_proto(record: AttemptRecord) -> types_pb2.Attempt:
    return types_pb2.Attempt(
        id=record.id,
        job_id=record.job_id,
        epoch=record.epoch,
        dataplane=record.dataplane,
        pool=record.pool,
        phase=enum_to_proto(record.phase),  # type: ignore[arg-type]
        reason=record.reason,
        message=record.message,
        exit_code=record.exit_code,
        created_at=timestamp(record.created_at),
        started_at=timestamp(record.started_at),
        finished_at=timestamp(record.finished_at),
    )


def job_to_proto(record: JobRecord, spec: types_pb2.JobSpec | None = None) -> types_pb2.Job:
    """`spec`: the record's spec as a proto, when the caller has it (a submit does):
    converting the stored JSON back costs more than all the rest of the job."""
    return types_pb2.Job(
        id=record.id,
        client_key=record.client_key or "",
        spec=spec_from_json(record.spec) if spec is None else spec,
        phase=enum_to_proto(record.phase),  # type: ignore[arg-type]
        message=record.message,
        epoch=record.epoch,
        retries_used=record.retries_used,
        retry_budget=record.retry_budget,
        dataplane=record.dataplane or "",
        pool=record.pool or "",
        created_at=timestamp(record.created_at),
        updated_at=timestamp(record.updated_at),
        started_at=timestamp(record.started_at),
        finished_at=timestamp(record.finished_at),
        attempts=[attempt_to_proto(a) for a in record.attempts],
        outputs=record.outputs or b"",
    )


def event_to_proto(record: EventRecord) -> types_pb2.JobEvent:
    return types_pb2.JobEvent(
        seq=record.seq,
        job_id=record.job_id,
        at=timestamp(record.at),
        phase=enum_to_proto(record.phase),  # type: ignore[arg-type]
        attempt_id=record.attempt_id or "",
        kind=record.kind,
        message=record.message,
    )


def pool_to_proto(record: PoolRecord) -> types_pb2.Pool:
    return types_pb2.Pool(
        name=record.name,
        region=record.region,
        cloud=record.cloud,
        purchase_type=enum_to_proto(record.purchase_type),  # type: ignore[arg-type]
        gpu_model=record.gpu_model,
        gpu_memory_gb=record.gpu_memory_gb,
        gpu_total=record.gpu_total,
        gpu_free=record.gpu_free,
        interconnect=record.interconnect,
        price_per_gpu_hour=record.price_per_gpu_hour,
        labels=dict(record.labels),
        gpu_node_size=record.gpu_node_size,
        gpu_node_free=record.gpu_node_free,
    )


def pool_from_proto(dataplane: str, region: str, cloud: str, pool: types_pb2.Pool) -> PoolRecord:
    """Raises ValueError naming the field when the agent sent a pool we cannot use."""
    try:
        purchase_type = enum_from_proto(PurchaseType, pool.purchase_type)
    except ValueError as exc:
        raise ValueError(f"pools[{pool.name}].purchase_type: {exc}") from exc
    if pool.gpu_free > pool.gpu_total:
        raise ValueError(
            f"pools[{pool.name}].gpu_free: {pool.gpu_free} free > {pool.gpu_total} in all"
        )
    node_size = pool.gpu_node_size if pool.HasField("gpu_node_size") else None
    node_free = pool.gpu_node_free if pool.HasField("gpu_node_free") else None
    if node_size is not None and node_size > pool.gpu_total:
        raise ValueError(
            f"pools[{pool.name}].gpu_node_size: {node_size} > {pool.gpu_total} in all"
        )
    if node_free is not None and node_free > pool.gpu_free:
        raise ValueError(
            f"pools[{pool.name}].gpu_node_free: {node_free} > {pool.gpu_free} free in all"
        )
    return PoolRecord(
        dataplane=dataplane,
        name=pool.name,
        region=pool.region or region,
        cloud=pool.cloud or cloud,
        purchase_type=purchase_type,
        gpu_model=pool.gpu_model,
        gpu_memory_gb=pool.gpu_memory_gb,
        gpu_total=pool.gpu_total,
        gpu_free=pool.gpu_free,
        interconnect=pool.interconnect,
        price_per_gpu_hour=pool.price_per_gpu_hour,
        labels=dict(pool.labels),
        gpu_node_size=node_size,
        gpu_node_free=node_free,
    )


def dataplane_to_proto(
    record: DataplaneRecord, health: DataplaneHealth, connected: bool
) -> admin_pb2.Dataplane:
    return admin_pb2.Dataplane(
        name=record.name,
        region=record.region,
        cloud=record.cloud,
        health=enum_to_proto(health),  # type: ignore[arg-type]
        connected=connected,
        last_heartbeat_at=timestamp(record.last_heartbeat_at),
        agent_version=record.agent_version,
        pools=[pool_to_proto(p) for p in record.pools],
        active_attempts=record.active_attempts,
        labels=dict(record.labels),
        state=enum_to_proto(record.state),  # type: ignore[arg-type]
        cordon_reason=record.cordon_reason,
        drain_deadline=timestamp(record.drain_deadline),
    )


def reported_from_proto(status: agent_pb2.AttemptStatus) -> ReportedAttempt:
    """Raises ValueError naming the attempt when its phase is not a valid report. The free
    text (reason, message) is cut to its limit: what a task printed never refuses a report."""
    try:
        phase = enum_from_proto(AttemptPhase, status.phase)
    except ValueError as exc:
        raise ValueError(f"attempts[{status.attempt_id}].phase: {exc}") from exc
    if phase is AttemptPhase.PENDING:
        raise ValueError(f"attempts[{status.attempt_id}].phase: an agent never reports PENDING")
    return ReportedAttempt(
        id=status.attempt_id,
        epoch=status.epoch,
        phase=phase,
        reason=clipped(status.reason, MAX_ATTEMPT_REASON),
        message=clipped(status.message, MAX_ATTEMPT_MESSAGE),
        exit_code=status.exit_code if status.HasField("exit_code") else None,
        started_at=from_timestamp(status.started_at, status.HasField("started_at")),
        finished_at=from_timestamp(status.finished_at, status.HasField("finished_at")),
        outputs=status.outputs,
    )


def clipped_log_chunk(chunk: types_pb2.LogChunk) -> types_pb2.LogChunk:
    """A log chunk from an agent, its error cut to its limit (it ends up in a status)."""
    if len(chunk.error) <= MAX_LOG_ERROR:
        return chunk
    return types_pb2.LogChunk(
        request_id=chunk.request_id,
        data=chunk.data,
        eof=chunk.eof,
        error=clipped(chunk.error, MAX_LOG_ERROR),
    )


def launch_message(attempt: AttemptRecord, spec: Mapping[str, Any]) -> agent_pb2.ControlMessage:
    return agent_pb2.ControlMessage(
        launch=agent_pb2.Launch(
            attempt_id=attempt.id,
            job_id=attempt.job_id,
            epoch=attempt.epoch,
            pool=attempt.pool,
            spec=spec_from_json(spec),
        )
    )


def cancel_message(attempt_id: str, reason: str) -> agent_pb2.ControlMessage:
    message = agent_pb2.ControlMessage(
        cancel=agent_pb2.Cancel(attempt_id=attempt_id, reason=reason)
    )
    message.cancel.grace_period.FromSeconds(CANCEL_GRACE_S)
    return message


# Page tokens of job lists, the same on the gRPC API and the web dashboard's JSON, so a
# token works on either: the (created_at, id) of the page's last job.


def encode_page_token(job: JobRecord) -> str:
    raw = f"{job.created_at.isoformat()}|{job.id}".encode()
    return base64.urlsafe_b64encode(raw).decode()


def decode_page_token(token: str) -> tuple[datetime, str] | None:
    """The (created_at, id) a token stands for; None when it is no token we returned."""
    if len(token) > MAX_PAGE_TOKEN:
        return None
    try:
        created, job_id = base64.urlsafe_b64decode(token.encode("ascii")).decode().split("|", 1)
        when = datetime.fromisoformat(created)
        if when.tzinfo is None or not job_id:
            return None
        when.astimezone(UTC)
    except (ValueError, OverflowError, UnicodeError):
        return None
    return when, job_id
