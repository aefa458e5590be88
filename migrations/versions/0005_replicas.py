"""replicas: control planes sharing the database, and which one holds each agent's stream

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-24 22:10:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "replicas",
        sa.Column("id", sa.String(length=128), nullable=False),
        sa.Column("address", sa.String(length=256), nullable=False),
        sa.Column("started_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("dataplanes") as batch:
        batch.add_column(sa.Column("stream_replica", sa.String(length=128), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("dataplanes") as batch:
        batch.drop_column("stream_replica")
    op.drop_table("replicas")
