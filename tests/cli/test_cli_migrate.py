"""`fleet migrate` upgrades a real database to the newest schema; FLEET_DATABASE_URL works too.

The migration Job of deploy/control-plane runs exactly this, with the URL from a Secret.
"""

from __future__ import annotations

import socket
import sqlite3
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic.script import ScriptDirectory
from typer.testing import CliRunner, Result

from control_plane.registry.database import alembic_config
from control_plane.registry.tables import Base
from control_plane.settings import ControlPlaneSettings
from fleet_cli.main import app

ENV_CLEARED: dict[str, str | None] = {"FLEET_DATABASE_URL": None, "FLEET_JOIN_TOKEN": None}


def fleet(*args: str, env: dict[str, str | None] | None = None) -> Result:
    runner = CliRunner(env={"COLUMNS": "250", **ENV_CLEARED, **(env or {})})
    return runner.invoke(app, list(args))


def head_revision() -> str:
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None
    return head


def sync_url(url: str) -> str:
    """The fixtures' async URLs, for a plain synchronous look at the result."""
    return url.replace("sqlite+aiosqlite://", "sqlite://")


def schema_of(url: str) -> tuple[set[str], list[str]]:
    """The tables and the alembic_version rows of the database at url."""
    engine = sa.create_engine(sync_url(url))
    try:
        with engine.connect() as connection:
            tables = set(sa.inspect(connection).get_table_names())
            versions = list(
                connection.execute(sa.text("SELECT version_num FROM alembic_version")).scalars()
            )
    finally:
        engine.dispose()
    return tables, versions


def test_migrate_brings_an_empty_database_to_the_head_revision(database_url: str) -> None:
    result = fleet("migrate", "--db", database_url)
    assert result.exit_code == 0, result.output
    assert result.stdout.strip().endswith(f"schema at revision {head_revision()}")
    tables, versions = schema_of(database_url)
    assert set(Base.metadata.tables) | {"alembic_version"} <= tables
    assert versions == [head_revision()]


def test_migrate_again_changes_nothing(sqlite_url: str) -> None:
    assert fleet("migrate", "--db", sqlite_url).exit_code == 0
    again = fleet("migrate", "--db", sqlite_url)
    assert again.exit_code == 0, again.output
    assert f"schema at revision {head_revision()}" in again.stdout
    assert schema_of(sqlite_url)[1] == [head_revision()]


def test_migrate_reads_the_url_from_the_environment_and_accepts_plain_sqlite(
    tmp_path: Path,
) -> None:
    path = tmp_path / "from-env.db"
    result = fleet("migrate", env={"FLEET_DATABASE_URL": f"sqlite:///{path}"})
    assert result.exit_code == 0, result.output
    with sqlite3.connect(path) as connection:
        rows = connection.execute("SELECT version_num FROM alembic_version").fetchall()
    assert rows == [(head_revision(),)]


def test_the_printed_url_hides_the_password(postgres_url: str) -> None:
    with_password = sa.make_url(postgres_url).set(password="s3cret-pw")
    url = with_password.render_as_string(hide_password=False)
    result = fleet("migrate", "--db", url)
    # The throwaway server trusts local connections, so the password is not checked.
    assert result.exit_code == 0, result.output
    assert "s3cret-pw" not in result.output
    assert "***" in result.stdout


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("mysql://fleet:s3cret-pw@db/fleet", "only sqlite and postgresql are supported"),
        ("fleet:s3cret-pw@db/fleet", "is not a valid URL"),
    ],
)
def test_a_bad_url_exits_2_naming_the_option_and_hiding_the_password(
    url: str, reason: str
) -> None:
    result = fleet("migrate", "--db", url)
    assert result.exit_code == 2
    assert "--db" in result.stderr and reason in result.stderr
    assert "s3cret-pw" not in result.output


def test_no_url_at_all_exits_2_naming_the_option_and_its_variable() -> None:
    result = fleet("migrate")
    assert result.exit_code == 2
    assert "--db" in result.stderr and "FLEET_DATABASE_URL" in result.stderr


def test_an_unreachable_server_exits_1_with_the_reason() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    result = fleet("migrate", "--db", f"postgresql://fleet:pw@127.0.0.1:{port}/fleet")
    assert result.exit_code == 1
    shown = f"postgresql+psycopg://fleet:***@127.0.0.1:{port}/fleet"
    assert result.stderr.startswith(f"error: cannot migrate {shown}: ")
    assert "refused" in result.stderr


def test_control_plane_reads_the_database_url_from_the_environment(
    served: list[ControlPlaneSettings],
) -> None:
    url = "postgresql+psycopg://fleet:pw@db.fleet-system:5432/fleet"
    result = fleet(
        "control-plane", "--no-migrate",
        env={"FLEET_DATABASE_URL": url, "FLEET_JOIN_TOKEN": "t", "FLEET_INSECURE": "1"},
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert served == [
        ControlPlaneSettings(database_url=url, migrate=False, insecure=True)
    ]


def test_control_plane_refuses_a_bad_url_before_serving(
    served: list[ControlPlaneSettings],
) -> None:
    result = fleet("control-plane", "--db", "mysql://db/fleet", env={"FLEET_JOIN_TOKEN": "t"})
    assert result.exit_code == 2
    assert "--db" in result.stderr and "only sqlite and postgresql" in result.stderr
    assert served == []
