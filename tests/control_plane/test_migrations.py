"""Alembic is the schema: one head, an empty database upgrades to it, and the upgraded
schema is exactly what the registry's mappings expect."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory

from control_plane.registry.database import Database, alembic_config
from control_plane.registry.tables import Base


def test_migrations_have_one_head() -> None:
    heads = ScriptDirectory.from_config(alembic_config()).get_heads()
    assert len(heads) == 1, f"alembic has several heads {heads}: merge them"


async def test_an_empty_database_upgrades_to_the_models(database_url: str) -> None:
    db = Database(database_url)
    try:
        await db.migrate()
        await db.migrate()  # a second upgrade is a no-op

        def check(connection):  # type: ignore[no-untyped-def]
            context = MigrationContext.configure(connection, opts={"compare_type": True})
            head = ScriptDirectory.from_config(alembic_config()).get_current_head()
            assert context.get_current_revision() == head
            return compare_metadata(context, Base.metadata)

        async with db.engine.connect() as conn:
            differences = await conn.run_sync(check)
        assert differences == [], f"models and migrations differ: {differences}"
    finally:
        await db.close()
