"""How a control plane is started: one frozen value, filled by the CLI or by tests."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ControlPlaneSettings:
    # host:port to listen on; port 0 picks a free port (the bound port is logged and
    # written to port_file when given).
    listen: str = "127.0.0.1:50051"
    # SQLAlchemy URL: sqlite+aiosqlite:///path.db (embedded default) or
    # postgresql+psycopg://user@host:port/db. Plain sqlite:/// and postgresql:// are accepted.
    database_url: str = "sqlite+aiosqlite:///fleet.db"
    # Shared secret agents present in their Hello.
    join_token: str = ""
    heartbeat_interval_s: float = 5.0
    # A dataplane silent this long gets no new placements.
    stale_after_s: float = 15.0
    # A dataplane silent this long has its attempts declared lost and requeued.
    lost_after_s: float = 60.0
    # Scheduler pass at least this often (it also runs on every submit and heartbeat).
    schedule_interval_s: float = 1.0
    # Apply alembic migrations at start (the embedded default); production runs a
    # migration job instead and starts replicas with migrate=False.
    migrate: bool = True
    port_file: str | None = None
    # host:port where the other replicas on this database reach this one (to hand over
    # messages for the agents connected here). Empty: the listen address, with the
    # machine's host name when listening on every interface.
    advertise: str = ""
