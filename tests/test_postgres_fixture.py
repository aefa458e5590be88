"""The database fixtures give each test a real, empty database of its own, and the
Postgres server they start is reachable on 127.0.0.1 only."""

from __future__ import annotations

import socket
from pathlib import Path

import psycopg
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from tests.pg_server import (
    MISSING_BINARIES,
    PostgresServer,
    find_server_binaries,
    require_server_binaries,
)
from tests.ports import free_port

LISTEN = "0A"  # TCP state LISTEN in /proc/net/tcp
databases_seen: set[str] = set()


def psycopg_conninfo(url: str) -> str:
    return url.replace("postgresql+psycopg://", "postgresql://", 1)


def listening_addresses(port: int) -> set[str]:
    """Local addresses (hex, as the kernel prints them) of the sockets listening on port."""
    addresses = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        path = Path(table)
        if not path.exists():
            continue
        for line in path.read_text().splitlines()[1:]:
            fields = line.split()
            address, port_hex = fields[1].split(":")
            if fields[3] == LISTEN and int(port_hex, 16) == port:
                addresses.add(address)
    return addresses


def test_the_server_answers_on_the_tests_own_database(postgres_url: str) -> None:
    with psycopg.connect(psycopg_conninfo(postgres_url)) as conn:
        version, database, user = conn.execute(
            "SELECT version(), current_database(), current_user"
        ).fetchone() or ("", "", "")
    assert version.startswith("PostgreSQL ")
    assert postgres_url.endswith(f"/{database}")
    assert user == "postgres"


@pytest.mark.parametrize("turn", [1, 2])
def test_each_test_gets_a_distinct_empty_database(postgres_url: str, turn: int) -> None:
    # Whichever turn runs second would find the first turn's table if they shared a database.
    with psycopg.connect(psycopg_conninfo(postgres_url)) as conn:
        row = conn.execute("SELECT current_database()").fetchone()
        assert row is not None
        assert row[0] not in databases_seen
        databases_seen.add(row[0])
        tables = conn.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'"
        ).fetchall()
        assert tables == []
        conn.execute("CREATE TABLE left_behind (turn int)")
        conn.execute("INSERT INTO left_behind VALUES (%s)", (turn,))


def test_the_server_listens_on_127_0_0_1_only(postgres_server: PostgresServer) -> None:
    with psycopg.connect(postgres_server.conninfo()) as conn:
        settings = {
            name: conn.execute(f"SHOW {name}").fetchone()
            for name in ("listen_addresses", "unix_socket_directories", "fsync")
        }
    assert settings["listen_addresses"] == ("127.0.0.1",)
    assert settings["unix_socket_directories"] == (str(postgres_server.base_dir),)
    assert settings["fsync"] == ("off",)
    # The kernel's view: every socket listening on the port is bound to 127.0.0.1.
    assert listening_addresses(postgres_server.port) == {"0100007F"}


def test_a_dropped_database_is_gone(postgres_server: PostgresServer) -> None:
    name = postgres_server.create_database("dropped")
    postgres_server.drop_database(name)
    with psycopg.connect(postgres_server.conninfo()) as conn:
        found = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchall()
    assert found == []


async def test_database_url_works_through_sqlalchemy(database_url: str) -> None:
    engine = create_async_engine(database_url)
    try:
        async with engine.begin() as conn:
            await conn.execute(text("CREATE TABLE job (id integer PRIMARY KEY, name text)"))
            await conn.execute(text("INSERT INTO job VALUES (1, 'train')"))
        async with engine.connect() as conn:
            names = (await conn.execute(text("SELECT name FROM job"))).scalars().all()
    finally:
        await engine.dispose()
    assert names == ["train"]


def test_sqlite_url_points_into_the_tests_folder(sqlite_url: str, tmp_path: Path) -> None:
    assert sqlite_url == f"sqlite+aiosqlite:///{tmp_path}/fleet.db"


def make_fake_binaries(bin_dir: Path) -> None:
    bin_dir.mkdir(parents=True)
    for name in ("initdb", "pg_ctl"):
        (bin_dir / name).write_text("#!/bin/sh\n")
        (bin_dir / name).chmod(0o755)


def test_the_newest_debian_version_is_chosen(tmp_path: Path) -> None:
    for version in ("9.6", "15", "16"):
        make_fake_binaries(tmp_path / version / "bin")
    (tmp_path / "17" / "bin").mkdir(parents=True)  # client-only: no server binaries
    found = find_server_binaries(search_path="", lib_root=tmp_path)
    assert found is not None
    assert found.bin_dir == tmp_path / "16" / "bin"


def test_binaries_on_path_come_first(tmp_path: Path) -> None:
    make_fake_binaries(tmp_path / "lib" / "16" / "bin")
    make_fake_binaries(tmp_path / "on_path")
    found = find_server_binaries(search_path=str(tmp_path / "on_path"), lib_root=tmp_path / "lib")
    assert found is not None
    assert found.bin_dir == (tmp_path / "on_path").resolve()


def test_missing_binaries_fail_with_the_install_command(tmp_path: Path) -> None:
    with pytest.raises(pytest.fail.Exception) as failure:
        require_server_binaries(search_path="", lib_root=tmp_path)
    assert str(failure.value) == MISSING_BINARIES
    assert "apt-get install postgresql" in MISSING_BINARIES


def test_a_free_port_can_be_bound_on_127_0_0_1() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", free_port()))
