"""Control-plane replicas on one database: who they are, which holds each agent's stream,
and which one leads (runs the scheduler).

Leadership is a Postgres session-level advisory lock held on one dedicated connection: a
replica that dies, or loses its connection, loses the lock with it, and another replica
takes it on its next try. The server is asked to probe that connection often (TCP
keepalives), so a replica cut off by the network is noticed within seconds too. On SQLite
there is one process, which always leads.
"""

from __future__ import annotations

import logging
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from control_plane.registry.database import Database
from control_plane.registry.tables import DataplaneRow, ReplicaRow

log = logging.getLogger(__name__)

# pg_try_advisory_lock's key: b"fleet" as a number, so that it reads back in pg_locks.
LEADER_LOCK = int.from_bytes(b"fleet", "big")
# Server-side keepalives on the lock's connection: a dead leader frees the lock in ~10 s.
KEEPALIVE_SETTINGS = {
    "tcp_keepalives_idle": "4", "tcp_keepalives_interval": "2", "tcp_keepalives_count": "3",
}


class ReplicaStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def register(self, replica: str, address: str, now: datetime) -> None:
        async with self._db.write() as session:
            row = await session.get(ReplicaRow, replica)
            if row is None:
                session.add(ReplicaRow(id=replica, address=address, started_at=now))
            else:
                row.address, row.started_at = address, now

    async def remove(self, replica: str) -> None:
        """A replica that stops cleanly: forget it and the streams it held."""
        async with self._db.write() as session:
            await session.execute(
                sa.update(DataplaneRow)
                .where(DataplaneRow.stream_replica == replica)
                .values(stream_replica=None)
            )
            await session.execute(sa.delete(ReplicaRow).where(ReplicaRow.id == replica))

    async def claim_stream(self, dataplane: str, replica: str) -> None:
        async with self._db.write() as session:
            await session.execute(
                sa.update(DataplaneRow)
                .where(DataplaneRow.name == dataplane)
                .values(stream_replica=replica)
            )

    async def release_stream(self, dataplane: str, replica: str) -> None:
        """The stream ended; unless another replica holds a newer one meanwhile."""
        async with self._db.write() as session:
            await session.execute(
                sa.update(DataplaneRow)
                .where(DataplaneRow.name == dataplane, DataplaneRow.stream_replica == replica)
                .values(stream_replica=None)
            )

    async def stream_holder(self, dataplane: str) -> tuple[str, str] | None:
        """(replica id, address) of the replica holding the dataplane's stream, if any."""
        query = (
            sa.select(ReplicaRow.id, ReplicaRow.address)
            .join(DataplaneRow, DataplaneRow.stream_replica == ReplicaRow.id)
            .where(DataplaneRow.name == dataplane)
        )
        async with self._db.read() as session:
            row = (await session.execute(query)).first()
        return None if row is None else (str(row[0]), str(row[1]))


class Leadership:
    """Whether this replica runs the scheduler; ask ``hold()`` before each pass."""

    def __init__(self, db: Database) -> None:
        self._db = db
        self._connection: AsyncConnection | None = None

    @property
    def held(self) -> bool:
        return self._db.is_sqlite or self._connection is not None

    async def hold(self) -> bool:
        """True while this replica leads: checks the lock's connection, or tries to take
        the lock when nobody holds it. Never raises: a database it cannot reach means it
        does not lead."""
        if self._db.is_sqlite:
            return True
        if self._connection is not None:
            try:
                await self._connection.execute(sa.text("SELECT 1"))
                return True
            except Exception as error:  # the driver's errors vary; all mean "gone"
                log.warning("lost the scheduler lock's connection: %s", first_line(error))
                await self._drop()
                return False
        try:
            connection = await self._db.engine.connect()
        except Exception as error:
            log.debug("cannot reach the database to take the scheduler lock: %s", error)
            return False
        try:
            connection = await connection.execution_options(isolation_level="AUTOCOMMIT")
            taken = (await connection.execute(
                sa.text("SELECT pg_try_advisory_lock(:key)"), {"key": LEADER_LOCK}
            )).scalar()
            if not taken:
                await connection.close()
                return False
            for name, value in KEEPALIVE_SETTINGS.items():
                await connection.execute(sa.text(f"SET {name} = {value}"))
        except Exception as error:
            log.warning("could not take the scheduler lock: %s", first_line(error))
            await connection.close()
            return False
        self._connection = connection
        return True

    async def release(self) -> None:
        if self._connection is not None:
            try:
                await self._connection.execute(
                    sa.text("SELECT pg_advisory_unlock(:key)"), {"key": LEADER_LOCK}
                )
            except Exception as error:
                log.debug("releasing the scheduler lock: %s", error)
            await self._drop()

    async def _drop(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            try:
                await connection.invalidate()
            except Exception as error:
                log.debug("closing the scheduler lock's connection: %s", error)


def first_line(error: BaseException) -> str:
    """SQLAlchemy's messages run over many lines; a log line needs the first."""
    return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
