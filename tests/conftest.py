"""Fixtures every test may use: databases on SQLite and on a real, throwaway Postgres.

`database_url` runs a test once on each; the Postgres server starts only when the first
test that needs it runs, and is deleted at the end of the session.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.pg_server import PostgresServer, require_server_binaries

SERVER_KEY = pytest.StashKey[PostgresServer]()


@pytest.fixture(scope="session")
def postgres_server(pytestconfig: pytest.Config) -> Iterator[PostgresServer]:
    server = PostgresServer.start(require_server_binaries())
    pytestconfig.stash[SERVER_KEY] = server
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def postgres_url(postgres_server: PostgresServer, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh, empty database of its own for this test, as a SQLAlchemy async URL."""
    name = postgres_server.create_database(hint=request.node.name)
    yield postgres_server.url(name)
    postgres_server.drop_database(name)


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite+aiosqlite:///{tmp_path / 'fleet.db'}"


@pytest.fixture(params=["sqlite", "postgres"], ids=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest) -> str:
    """The test runs once on SQLite and once on Postgres, each time on an empty database."""
    url: str = request.getfixturevalue(f"{request.param}_url")
    return url


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    server = terminalreporter.config.stash.get(SERVER_KEY, None)
    if server is None:
        return
    creates = server.create_times_s
    mean_ms = 1000 * sum(creates) / len(creates) if creates else 0.0
    terminalreporter.write_line(
        f"postgres fixture: server started in {server.startup_s:.2f} s, "
        f"{len(creates)} databases created, {mean_ms:.0f} ms each on average"
    )
