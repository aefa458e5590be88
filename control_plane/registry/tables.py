"""The registry's tables. Alembic migrations (migrations/) are the schema; these mappings
must match them (a test compares the two on an upgraded database)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class UTCDateTime(TypeDecorator[datetime]):
    """Aware UTC datetimes in, aware UTC datetimes out; stored naive UTC (SQLite drops offsets)."""

    impl = DateTime(timezone=False)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the registry; use aware UTC datetimes")
        if value.tzinfo is not UTC:   # (most are UTC already: this runs for every row)
            value = value.astimezone(UTC)
        return value.replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        return None if value is None else value.replace(tzinfo=UTC)


# SQLite autoincrements only an INTEGER PRIMARY KEY.
BigIntegerPK = BigInteger().with_variant(Integer(), "sqlite")


class Base(DeclarativeBase):
    type_annotation_map: ClassVar[dict[Any, Any]] = {
        dict[str, Any]: JSON, list[str]: JSON, datetime: UTCDateTime,
    }


class DataplaneRow(Base):
    __tablename__ = "dataplanes"

    name: Mapped[str] = mapped_column(String(63), primary_key=True)
    region: Mapped[str] = mapped_column(String(64))
    cloud: Mapped[str] = mapped_column(String(64))
    labels: Mapped[dict[str, Any]] = mapped_column(default=dict)
    agent_version: Mapped[str] = mapped_column(String(64), default="")
    first_seen_at: Mapped[datetime]
    last_heartbeat_at: Mapped[datetime | None]
    # Cordon and drain (see domain/cordon.py): no new work while cordoned_at is set.
    cordoned_at: Mapped[datetime | None]
    cordon_reason: Mapped[str] = mapped_column(String(1024), default="")
    drain_deadline: Mapped[datetime | None]
    # The control-plane replica that holds the agent's stream now; None: not connected.
    stream_replica: Mapped[str | None] = mapped_column(String(128))
    # The agent's join token, hashed (see domain/access.py); None: not enrolled yet.
    token_hash: Mapped[str | None] = mapped_column(String(64))
    token_issued_at: Mapped[datetime | None]
    token_revoked_at: Mapped[datetime | None]


class ReplicaRow(Base):
    """A running control plane, and where the others reach it (see replica.proto)."""

    __tablename__ = "replicas"

    id: Mapped[str] = mapped_column(String(128), primary_key=True)
    address: Mapped[str] = mapped_column(String(256))
    started_at: Mapped[datetime]


class PoolRow(Base):
    __tablename__ = "pools"

    dataplane: Mapped[str] = mapped_column(
        String(63), ForeignKey("dataplanes.name", ondelete="CASCADE"), primary_key=True
    )
    name: Mapped[str] = mapped_column(String(63), primary_key=True)
    region: Mapped[str] = mapped_column(String(64))
    cloud: Mapped[str] = mapped_column(String(64))
    purchase_type: Mapped[str] = mapped_column(String(16))
    gpu_model: Mapped[str] = mapped_column(String(64))
    gpu_memory_gb: Mapped[int]
    gpu_total: Mapped[int]
    gpu_free: Mapped[int]
    interconnect: Mapped[str] = mapped_column(String(64), default="")
    price_per_gpu_hour: Mapped[float] = mapped_column(Float, default=0.0)
    labels: Mapped[dict[str, Any]] = mapped_column(default=dict)
    gpu_node_size: Mapped[int | None]
    gpu_node_free: Mapped[int | None]
    updated_at: Mapped[datetime]


class JobRow(Base):
    __tablename__ = "jobs"
    __table_args__ = (
        UniqueConstraint("project", "client_key", name="uq_jobs_project_client_key"),
        Index("ix_jobs_phase_priority", "phase", "priority", "created_at"),
        Index("ix_jobs_project_created", "project", "created_at"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    client_key: Mapped[str | None] = mapped_column(String(256))
    project: Mapped[str] = mapped_column(String(63))
    domain: Mapped[str] = mapped_column(String(63))
    name: Mapped[str] = mapped_column(String(253))
    spec: Mapped[dict[str, Any]]
    phase: Mapped[str] = mapped_column(String(16))
    message: Mapped[str] = mapped_column(Text, default="")
    priority: Mapped[int] = mapped_column(default=0)
    epoch: Mapped[int] = mapped_column(default=0)
    retries_used: Mapped[int] = mapped_column(default=0)
    retry_budget: Mapped[int] = mapped_column(default=0)
    current_attempt_id: Mapped[str | None] = mapped_column(String(48))
    dataplane: Mapped[str | None] = mapped_column(String(63))
    pool: Mapped[str | None] = mapped_column(String(63))
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    # The API key that submitted it (its name and id), for the audit of others' cancels.
    submitted_by: Mapped[str] = mapped_column(String(160), default="")


class AttemptRow(Base):
    __tablename__ = "attempts"
    __table_args__ = (
        Index("ix_attempts_dataplane_phase", "dataplane", "phase"),
        # Live attempts, read by every scheduling pass (capacity holds, counts per dataplane).
        Index("ix_attempts_phase", "phase"),
    )

    id: Mapped[str] = mapped_column(String(48), primary_key=True)
    job_id: Mapped[str] = mapped_column(
        String(32), ForeignKey("jobs.id", ondelete="CASCADE"), index=True
    )
    epoch: Mapped[int]
    dataplane: Mapped[str] = mapped_column(String(63))
    pool: Mapped[str] = mapped_column(String(63))
    gpus: Mapped[int]
    phase: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str] = mapped_column(String(64), default="")
    message: Mapped[str] = mapped_column(Text, default="")
    exit_code: Mapped[int | None]
    cancel_requested: Mapped[bool] = mapped_column(default=False)
    # Set when the control plane stops the attempt to take capacity away (a drain's
    # deadline): its CANCELLED end is then recorded as PREEMPTED, a free retry.
    preempt_reason: Mapped[str | None] = mapped_column(String(1024))
    # True once a heartbeat listed this attempt: from then on the pool's reported free
    # GPUs account for it. Until then its GPUs are held by the scheduler.
    counted_in_pool: Mapped[bool] = mapped_column(default=False)
    # The output literal map (values and URIs) the agent returned with SUCCEEDED.
    outputs: Mapped[bytes | None] = mapped_column(LargeBinary)
    created_at: Mapped[datetime]
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]


class PolicyVersionRow(Base):
    """Every applied routing policy; the highest version is the one in force."""

    __tablename__ = "policy_versions"

    version: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    author: Mapped[str] = mapped_column(String(256))
    comment: Mapped[str] = mapped_column(Text, default="")
    document: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime]


class JobEventRow(Base):
    __tablename__ = "job_events"
    __table_args__ = (Index("ix_job_events_job_seq", "job_id", "seq"),)

    seq: Mapped[int] = mapped_column(BigIntegerPK, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(String(32), ForeignKey("jobs.id", ondelete="CASCADE"))
    at: Mapped[datetime]
    phase: Mapped[str] = mapped_column(String(16))
    attempt_id: Mapped[str | None] = mapped_column(String(48))
    kind: Mapped[str] = mapped_column(String(32))
    message: Mapped[str] = mapped_column(Text, default="")


class ApiKeyRow(Base):
    """An API key: its role and projects; the key itself is kept as a hash only."""

    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(16), primary_key=True)
    name: Mapped[str] = mapped_column(String(128))
    secret_hash: Mapped[str] = mapped_column(String(64))
    role: Mapped[str] = mapped_column(String(16))
    projects: Mapped[list[str]]
    created_at: Mapped[datetime]
    created_by: Mapped[str] = mapped_column(String(160))
    revoked_at: Mapped[datetime | None]


class AuditRow(Base):
    """Who changed what: policies, dataplanes, keys, cordons and drains, others' jobs."""

    __tablename__ = "audit_events"
    __table_args__ = (Index("ix_audit_events_at", "at"),)

    seq: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    at: Mapped[datetime]
    actor: Mapped[str] = mapped_column(String(160))
    action: Mapped[str] = mapped_column(String(64))
    target: Mapped[str] = mapped_column(String(256))
    detail: Mapped[str] = mapped_column(Text, default="")
