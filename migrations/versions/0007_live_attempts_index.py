"""live attempts by phase: the scheduler's capacity and the dataplane list read them every
pass; without an index each read scanned every attempt ever made

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-25 01:10:00
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index("ix_attempts_phase", "attempts", ["phase"])


def downgrade() -> None:
    op.drop_index("ix_attempts_phase", table_name="attempts")
