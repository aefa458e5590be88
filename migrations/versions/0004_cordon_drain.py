"""cordon and drain: dataplanes taken out of service, attempts preempted by a drain

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-24 22:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("dataplanes") as batch:
        batch.add_column(sa.Column("cordoned_at", sa.DateTime(), nullable=True))
        batch.add_column(
            sa.Column("cordon_reason", sa.String(length=1024), nullable=False, server_default="")
        )
        batch.add_column(sa.Column("drain_deadline", sa.DateTime(), nullable=True))
    with op.batch_alter_table("attempts") as batch:
        batch.add_column(sa.Column("preempt_reason", sa.String(length=1024), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("attempts") as batch:
        batch.drop_column("preempt_reason")
    with op.batch_alter_table("dataplanes") as batch:
        batch.drop_column("drain_deadline")
        batch.drop_column("cordon_reason")
        batch.drop_column("cordoned_at")
