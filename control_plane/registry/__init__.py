"""The registry: the control plane's only door to the database (SQLAlchemy stays inside).

`Database` owns the engine and migrations; each store groups the queries of one caller:
`JobStore` (the job API), `SchedulingStore` (the scheduler), `DataplaneStore` (agents and
admin), `PolicyStore` (routing policy versions), `ReplicaStore` and `Leadership` (control
planes sharing the database). Stores take and return plain records
from `control_plane.domain.records`.
"""

from control_plane.registry.access import AuditLog, JoinTokens, KeyStore
from control_plane.registry.database import Database, DatabaseUrlError, redact
from control_plane.registry.dataplanes import DataplaneStore
from control_plane.registry.fleet_stats import FleetStats
from control_plane.registry.jobs import JobStore
from control_plane.registry.policies import PolicyStore
from control_plane.registry.replicas import Leadership, ReplicaStore
from control_plane.registry.reports import ReportOutcome, TokenRevoked
from control_plane.registry.scheduling import PlacementOrder, QueuedJob, SchedulingStore

__all__ = [
    "AuditLog",
    "Database",
    "DatabaseUrlError",
    "DataplaneStore",
    "FleetStats",
    "JobStore",
    "JoinTokens",
    "KeyStore",
    "Leadership",
    "PlacementOrder",
    "PolicyStore",
    "QueuedJob",
    "ReplicaStore",
    "ReportOutcome",
    "SchedulingStore",
    "TokenRevoked",
    "redact",
]
