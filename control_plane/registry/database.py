"""The database handle: engine, sessions, one write lock for SQLite, migrations.

SQLite (the embedded default) allows one writer; concurrent deferred transactions that
upgrade to writing fail with "database is locked" regardless of busy_timeout, so writes are
serialised in-process. Postgres needs no lock: writes use conditional UPDATEs.

A Postgres server that is down, restarting or cut off raises DatabaseUnavailable from
`read` and `write` (the servicers answer UNAVAILABLE: retry later). The pool pings a
connection before handing it out, so connections that died with a restarted server are
replaced and the first call after it is back works (the ping is skipped for a connection
back in use within a second: see `_ping_if_idle`).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

import migrations

# SQLSTATEs that mean "the server is not there for us" rather than "this query failed":
# class 08 (connection exceptions) and the server shutting down or starting up.
UNREACHABLE_SQLSTATES = ("08", "57P01", "57P02", "57P03")
_NOT_PSYCOPG = object()


CONNECT_TIMEOUT_S = 5


class DatabaseUrlError(ValueError):
    pass


class DatabaseUnavailable(Exception):
    """The database cannot be reached now (down, restarting, network); retrying may work."""


def normalize_url(url: str) -> str:
    """Accept plain sqlite:/// and postgresql:// URLs; pick the async drivers we ship."""
    try:
        parsed = make_url(url)
    except Exception as exc:
        raise DatabaseUrlError(f"database URL {url!r} is not a valid URL: {exc}") from exc
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        return parsed.set(drivername="sqlite+aiosqlite").render_as_string(hide_password=False)
    if backend == "postgresql":
        return parsed.set(drivername="postgresql+psycopg").render_as_string(hide_password=False)
    raise DatabaseUrlError(f"database URL {url!r}: only sqlite and postgresql are supported")


def redact(url: str) -> str:
    return make_url(url).render_as_string(hide_password=True)


class Database:
    def __init__(self, url: str) -> None:
        self.url = normalize_url(url)
        self.is_sqlite = self.url.startswith("sqlite")
        kwargs: dict[str, Any] = {}
        if self.is_sqlite:
            kwargs["connect_args"] = {"timeout": 30}
        else:
            # connect_timeout: a database behind a silent partition fails calls in
            # seconds (UNAVAILABLE) instead of hanging them for minutes.
            kwargs.update(
                pool_size=10, max_overflow=10,
                connect_args={"connect_timeout": CONNECT_TIMEOUT_S},
            )
        self.engine: AsyncEngine = create_async_engine(self.url, **kwargs)
        if self.is_sqlite:
            sa.event.listen(self.engine.sync_engine, "connect", _sqlite_pragmas)
        else:
            sa.event.listen(self.engine.sync_engine.pool, "checkin", _note_checkin)
            sa.event.listen(self.engine.sync_engine.pool, "checkout", _ping_if_idle)
        self._sessions = async_sessionmaker(self.engine, expire_on_commit=False)
        # On Postgres, reads run without a transaction: no BEGIN and ROLLBACK round trips
        # around each (every read that needs one snapshot is one statement). SQLite has no
        # round trips to save, and aiosqlite switching the mode back on a connection whose
        # task was cancelled strands the connection.
        self._reads = self._sessions if self.is_sqlite else async_sessionmaker(
            self.engine.execution_options(isolation_level="AUTOCOMMIT"), expire_on_commit=False
        )
        self._write_lock = asyncio.Lock()
        # Stopped before the engine is disposed (the stores' group-commit writers).
        self._on_close: list[Callable[[], Awaitable[None]]] = []

    @asynccontextmanager
    async def read(self) -> AsyncIterator[AsyncSession]:
        """A session for reads only (on Postgres outside any transaction: each statement
        sees the database as of its own start)."""
        with _unreachable_as_unavailable():
            async with self._reads() as session:
                yield session

    @asynccontextmanager
    async def write(self) -> AsyncIterator[AsyncSession]:
        """One transaction; committed when the block ends without an exception."""
        if self.is_sqlite:
            async with self._write_lock, self._sessions() as session, session.begin():
                yield session
        else:
            with _unreachable_as_unavailable():
                async with self._sessions() as session, session.begin():
                    yield session

    async def migrate(self) -> None:
        """Upgrade the schema to the newest migration (alembic head)."""
        async with self.engine.begin() as conn:
            await conn.run_sync(_upgrade_to_head)

    def close_with(self, stop: Callable[[], Awaitable[None]]) -> None:
        """Have `close` await `stop` first (a writer task that uses this database)."""
        self._on_close.append(stop)

    async def close(self) -> None:
        for stop in self._on_close:
            await stop()
        await self.engine.dispose()


def alembic_config() -> Config:
    config = Config()
    config.set_main_option("script_location", str(Path(migrations.__file__).parent))
    return config


def _upgrade_to_head(connection: sa.Connection) -> None:
    config = alembic_config()
    config.attributes["connection"] = connection
    command.upgrade(config, "head")


def is_unreachable(error: BaseException) -> bool:
    """Whether a driver error means the database server cannot be reached (not that a
    query was wrong or lost a conflict). SQLite's errors never do: it is a local file."""
    if not isinstance(error, sa.exc.DBAPIError):
        return False
    if error.connection_invalidated:   # SQLAlchemy saw the connection die mid-use
        return True
    # psycopg's errors carry the server's SQLSTATE, None when the server never answered
    # (connection refused, timed out, closed unexpectedly); SQLite's carry none at all.
    sqlstate = getattr(error.orig, "sqlstate", _NOT_PSYCOPG)
    if sqlstate is _NOT_PSYCOPG:
        return False
    return sqlstate is None or str(sqlstate).startswith(UNREACHABLE_SQLSTATES)


@contextmanager
def _unreachable_as_unavailable() -> Iterator[None]:
    try:
        yield
    except sa.exc.DBAPIError as error:
        if not is_unreachable(error):
            raise
        # The driver's first line says why (refused, closed, starting up); the rest is
        # SQLAlchemy's statement and background link, not for callers.
        reason = str(error.orig).strip().splitlines()[0] if error.orig else str(error)
        raise DatabaseUnavailable(f"the database is unreachable: {reason}") from error


# A connection back in use within this long is not pinged first: the writers run one
# transaction after another on the same few connections, and a ping each is a round trip.
PING_IF_IDLE_S = 1.0


def _note_checkin(_dbapi_connection: Any, record: Any) -> None:
    record.info["checked_in_at"] = time.monotonic()


def _ping_if_idle(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
    """Pool pre-ping, for connections that sat idle: one that died with a restarted
    server is replaced before use (the pool retries the checkout with a new one)."""
    if time.monotonic() - record.info.get("checked_in_at", 0.0) < PING_IF_IDLE_S:
        return
    try:
        cursor = dbapi_connection.cursor()
        cursor.execute("SELECT 1")
        cursor.close()
        dbapi_connection.rollback()   # leave no transaction open: a read sets autocommit
    except Exception as error:
        raise sa.exc.DisconnectionError(f"connection failed its ping: {error}") from error


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()
