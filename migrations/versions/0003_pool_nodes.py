"""pools of several nodes: the largest node's GPUs and the most free on one node

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-24 21:45:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("pools") as batch:
        batch.add_column(sa.Column("gpu_node_size", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("gpu_node_free", sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("pools") as batch:
        batch.drop_column("gpu_node_free")
        batch.drop_column("gpu_node_size")
