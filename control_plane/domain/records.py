"""Plain values that cross the registry's boundary; no SQLAlchemy types leave it."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from control_plane.domain.cordon import DataplaneState, dataplane_state, unavailable_because
from control_plane.domain.phases import AttemptPhase, JobPhase, PurchaseType


@dataclass(frozen=True)
class PoolRecord:
    dataplane: str
    name: str
    region: str
    cloud: str
    purchase_type: PurchaseType
    gpu_model: str
    gpu_memory_gb: int
    gpu_total: int
    gpu_free: int
    interconnect: str = ""
    price_per_gpu_hour: float = 0.0
    labels: Mapping[str, str] = field(default_factory=dict)
    # Pools of several nodes: one job runs on one node. None: the pool is one machine.
    gpu_node_size: int | None = None   # GPUs of its largest node
    gpu_node_free: int | None = None   # the most free GPUs on any one node

    @property
    def key(self) -> tuple[str, str]:
        return (self.dataplane, self.name)

    @property
    def gpus_per_job(self) -> int:
        """The most GPUs one job can ask for here."""
        if self.gpu_node_size is None:
            return self.gpu_total
        return min(self.gpu_node_size, self.gpu_total)


@dataclass(frozen=True)
class DataplaneRecord:
    name: str
    region: str
    cloud: str
    labels: Mapping[str, str]
    agent_version: str
    last_heartbeat_at: datetime | None
    pools: tuple[PoolRecord, ...]
    active_attempts: int
    cordoned_at: datetime | None = None
    cordon_reason: str = ""
    drain_deadline: datetime | None = None
    stream_replica: str | None = None   # the control-plane replica holding its stream

    @property
    def connected(self) -> bool:
        return self.stream_replica is not None

    @property
    def state(self) -> DataplaneState:
        return dataplane_state(self.cordoned_at, self.drain_deadline, self.active_attempts)

    @property
    def unavailable_because(self) -> str:
        """Why it takes no new work; "" when it does."""
        return unavailable_because(self.state, self.cordon_reason, self.drain_deadline)


@dataclass(frozen=True)
class AttemptRecord:
    id: str
    job_id: str
    epoch: int
    dataplane: str
    pool: str
    gpus: int
    phase: AttemptPhase
    reason: str
    message: str
    exit_code: int | None
    cancel_requested: bool
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    outputs: bytes | None = None


@dataclass(frozen=True)
class JobRecord:
    id: str
    client_key: str | None
    project: str
    domain: str
    name: str
    spec: Mapping[str, Any]  # the JobSpec as protobuf JSON (field names as in the proto)
    phase: JobPhase
    message: str
    priority: int
    epoch: int
    retries_used: int
    retry_budget: int
    current_attempt_id: str | None
    dataplane: str | None
    pool: str | None
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    attempts: tuple[AttemptRecord, ...] = ()
    submitted_by: str = ""

    @property
    def outputs(self) -> bytes | None:
        """What the succeeded attempt returned (the current one; earlier ones are fenced)."""
        for attempt in self.attempts:
            if attempt.id == self.current_attempt_id and attempt.outputs:
                return attempt.outputs
        return None


@dataclass(frozen=True)
class EventRecord:
    seq: int
    job_id: str
    at: datetime
    phase: JobPhase
    attempt_id: str | None
    kind: str
    message: str


@dataclass(frozen=True)
class PolicyVersionRecord:
    version: int
    author: str
    comment: str
    document: str
    created_at: datetime


@dataclass(frozen=True)
class NewJob:
    """A validated submit, ready to be stored."""

    id: str
    client_key: str | None
    project: str
    domain: str
    name: str
    spec: Mapping[str, Any]
    priority: int
    retry_budget: int
    submitted_by: str = ""


@dataclass(frozen=True)
class ApiKeyRecord:
    id: str
    name: str
    role: str
    projects: tuple[str, ...]
    created_at: datetime
    created_by: str
    revoked_at: datetime | None
    secret_hash: str = field(default="", repr=False)


@dataclass(frozen=True)
class AuditRecord:
    seq: int
    at: datetime
    actor: str
    action: str
    target: str
    detail: str
