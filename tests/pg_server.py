"""A throwaway PostgreSQL server for the tests, started from the server binaries.

The server lives in a temporary folder, listens on 127.0.0.1 and a free port only, trusts
every local connection and trades durability for speed (fsync off). `initdb` and `postgres`
refuse to run as root, so as root they run as the `postgres` system user, which Debian's
postgresql package creates.
"""

from __future__ import annotations

import atexit
import os
import pwd
import re
import shutil
import stat
import subprocess
import tempfile
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import make_conninfo

from tests.ports import free_port

MISSING_BINARIES = (
    "Postgres server binaries (initdb, pg_ctl) not found: install Debian's postgresql "
    "(apt-get install postgresql); `make test` does this for you"
)
DEBIAN_LIB_ROOT = Path("/usr/lib/postgresql")
SERVER_USER = "postgres"
SUPERUSER = "postgres"
HOST = "127.0.0.1"
START_ATTEMPTS = 3  # another process may take the free port before the server binds it

# Durability is worthless for a database that is deleted after the session.
SPEED_SETTINGS = {
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "wal_level": "minimal",
    "max_wal_senders": "0",
}
# The opposite, what production runs with.
DURABLE_SETTINGS = {
    "fsync": "on",
    "synchronous_commit": "on",
    "full_page_writes": "on",
    "max_connections": "200",
    "log_line_prefix": "%m [%p] ",
}


@dataclass(frozen=True)
class ServerBinaries:
    bin_dir: Path

    @property
    def initdb(self) -> Path:
        return self.bin_dir / "initdb"

    @property
    def pg_ctl(self) -> Path:
        return self.bin_dir / "pg_ctl"


def _has_server_binaries(bin_dir: Path) -> bool:
    return all(os.access(bin_dir / name, os.X_OK) for name in ("initdb", "pg_ctl"))


def _version_key(version_dir: Path) -> tuple[int, ...]:
    # Debian names the folders by major version ("15", "9.6"): compare them as numbers.
    return tuple(int(part) for part in re.findall(r"\d+", version_dir.name))


def find_server_binaries(
    search_path: str | None = None, lib_root: Path = DEBIAN_LIB_ROOT
) -> ServerBinaries | None:
    """initdb and pg_ctl from PATH, else from the newest Debian version under lib_root."""
    on_path = shutil.which("initdb", path=search_path)
    if on_path is not None:
        # Resolve symlinks so that pg_ctl finds the `postgres` of the same version.
        bin_dir = Path(on_path).resolve().parent
        if _has_server_binaries(bin_dir):
            return ServerBinaries(bin_dir)
    versions = sorted(lib_root.glob("*/bin"), key=lambda b: _version_key(b.parent), reverse=True)
    for bin_dir in versions:
        if _has_server_binaries(bin_dir):
            return ServerBinaries(bin_dir)
    return None


def require_server_binaries(
    search_path: str | None = None, lib_root: Path = DEBIAN_LIB_ROOT
) -> ServerBinaries:
    """The binaries, or a test failure: a missing server must never skip the tests."""
    binaries = find_server_binaries(search_path, lib_root)
    if binaries is None:
        pytest.fail(MISSING_BINARIES, pytrace=False)
    return binaries


def unique_database_name(hint: str) -> str:
    """A fresh database name that still tells which test made it."""
    readable = re.sub(r"[^a-z0-9]+", "_", hint.lower()).strip("_")[:40]
    return f"t_{readable}_{uuid.uuid4().hex[:10]}"


@dataclass
class PostgresServer:
    """A running server; `start` makes one, `stop` deletes it with all its data."""

    SETTINGS: ClassVar[dict[str, str]] = SPEED_SETTINGS
    binaries: ServerBinaries
    base_dir: Path
    port: int
    startup_s: float = 0.0
    create_times_s: list[float] = field(default_factory=list)
    _stopped: bool = False

    @property
    def data_dir(self) -> Path:
        return self.base_dir / "data"

    @property
    def log_file(self) -> Path:
        return self.base_dir / "postgres.log"

    @classmethod
    def start(cls, binaries: ServerBinaries) -> PostgresServer:
        started = time.perf_counter()
        base_dir = _make_base_dir()
        server = cls(binaries, base_dir, port=0)
        try:
            server._run([str(binaries.initdb), "--pgdata", str(server.data_dir),
                         "--username", SUPERUSER, "--auth=trust", "--encoding=UTF8",
                         "--locale=C", "--no-sync"])
            for attempt in range(1, START_ATTEMPTS + 1):
                server.port = free_port()
                server._write_settings()
                try:
                    server._run([str(binaries.pg_ctl), "start", "--wait", "--timeout=60",
                                 "--pgdata", str(server.data_dir), "--log", str(server.log_file)])
                    break
                except RuntimeError:
                    if attempt == START_ATTEMPTS:
                        raise
        except BaseException:
            server.stop()
            raise
        atexit.register(server.stop)  # also when pytest dies before the fixture's teardown
        server.startup_s = time.perf_counter() - started
        return server

    def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        if (self.data_dir / "postmaster.pid").exists():
            self._run([str(self.binaries.pg_ctl), "stop", "--wait", "--mode=immediate",
                       "--pgdata", str(self.data_dir)], check=False)
        shutil.rmtree(self.base_dir, ignore_errors=True)

    def immediate_stop(self) -> None:
        """pg_ctl stop -m immediate: every server process quits at once, without a
        checkpoint, and clients are cut off; the next start recovers from the WAL."""
        self._run([str(self.binaries.pg_ctl), "stop", "--wait", "--mode=immediate",
                   "--pgdata", str(self.data_dir)], check=False)

    def restart(self) -> None:
        """Start again on the same data folder and port."""
        for attempt in range(1, START_ATTEMPTS + 1):
            try:
                self._run([str(self.binaries.pg_ctl), "start", "--wait", "--timeout=60",
                           "--pgdata", str(self.data_dir), "--log", str(self.log_file)])
                return
            except RuntimeError:
                if attempt == START_ATTEMPTS:
                    raise
                time.sleep(1.0)

    def conninfo(self, database: str = "postgres") -> str:
        """A libpq connection string, for psycopg."""
        return make_conninfo(host=HOST, port=self.port, user=SUPERUSER, dbname=database,
                             sslmode="disable", connect_timeout=10)

    def url(self, database: str) -> str:
        """A SQLAlchemy async URL."""
        return f"postgresql+psycopg://{SUPERUSER}@{HOST}:{self.port}/{database}"

    def create_database(self, hint: str = "test") -> str:
        name = unique_database_name(hint)
        started = time.perf_counter()
        with psycopg.connect(self.conninfo(), autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        self.create_times_s.append(time.perf_counter() - started)
        return name

    def drop_database(self, name: str) -> None:
        with psycopg.connect(self.conninfo(), autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )

    def _write_settings(self) -> None:
        # postgresql.auto.conf overrides postgresql.conf, and rewriting it on a port retry
        # replaces the previous attempt's settings. Written as root, the file keeps the
        # owner that initdb gave it.
        settings = {
            "listen_addresses": HOST,
            "port": str(self.port),
            "unix_socket_directories": str(self.base_dir),
            "timezone": "UTC",
            **self.SETTINGS,
        }
        lines = [f"{key} = '{value}'\n" for key, value in settings.items()]
        (self.data_dir / "postgresql.auto.conf").write_text("".join(lines))

    def _run(self, command: Sequence[str], check: bool = True) -> None:
        result = subprocess.run(_as_server_user(command), cwd=self.base_dir,
                                capture_output=True, text=True, check=False)
        if check and result.returncode != 0:
            log = self.log_file.read_text() if self.log_file.exists() else ""
            raise RuntimeError(
                f"{' '.join(command)} exited with {result.returncode}\n"
                f"{result.stdout}{result.stderr}\n{log[-4000:]}"
            )


def _running_as_root() -> bool:
    return os.geteuid() == 0


def _as_server_user(command: Sequence[str]) -> list[str]:
    if not _running_as_root():
        return list(command)
    runuser = shutil.which("runuser") or "/usr/sbin/runuser"
    return [runuser, "-u", SERVER_USER, "--", *command]


def _make_base_dir() -> Path:
    if not _running_as_root():
        return Path(tempfile.mkdtemp(prefix="fleet-pg-"))
    try:
        user = pwd.getpwnam(SERVER_USER)
    except KeyError:
        pytest.fail(f"running as root, the tests start Postgres as the `{SERVER_USER}` system "
                    f"user, which does not exist: install Debian's postgresql "
                    f"(apt-get install postgresql)", pytrace=False)
    parent = Path(tempfile.gettempdir())
    if not parent.stat().st_mode & stat.S_IXOTH:
        parent = Path("/tmp")  # the server user must be able to reach its folder
    base_dir = Path(tempfile.mkdtemp(prefix="fleet-pg-", dir=parent))
    os.chown(base_dir, user.pw_uid, user.pw_gid)
    return base_dir


class DurablePostgres(PostgresServer):
    """A throwaway server with durability on, for tests and benchmarks about what survives
    a crash: an acknowledged commit must."""

    SETTINGS = DURABLE_SETTINGS
