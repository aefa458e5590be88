"""Routing policy versions. Applying never edits a version: it adds the next one."""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from control_plane.domain.records import PolicyVersionRecord
from control_plane.registry.database import Database
from control_plane.registry.tables import PolicyVersionRow


def _record(row: PolicyVersionRow) -> PolicyVersionRecord:
    return PolicyVersionRecord(row.version, row.author, row.comment, row.document, row.created_at)


class PolicyStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def current(self) -> PolicyVersionRecord | None:
        async with self._db.read() as session:
            row = await session.scalar(
                sa.select(PolicyVersionRow).order_by(PolicyVersionRow.version.desc()).limit(1)
            )
            return None if row is None else _record(row)

    async def current_version(self) -> int:
        """The version in force (0: none applied); one cheap query per scheduling pass."""
        async with self._db.read() as session:
            version = await session.scalar(sa.select(sa.func.max(PolicyVersionRow.version)))
            return int(version or 0)

    async def get(self, version: int) -> PolicyVersionRecord | None:
        async with self._db.read() as session:
            row = await session.get(PolicyVersionRow, version)
            return None if row is None else _record(row)

    async def history(self) -> list[PolicyVersionRecord]:
        async with self._db.read() as session:
            rows = await session.scalars(
                sa.select(PolicyVersionRow).order_by(PolicyVersionRow.version.desc())
            )
            return [_record(row) for row in rows]

    async def add(
        self, document: str, author: str, comment: str, now: datetime
    ) -> PolicyVersionRecord:
        """Store the next version. Two concurrent applies: one gets N, the other N+1."""
        for _ in range(5):
            try:
                async with self._db.write() as session:
                    latest = await session.scalar(sa.select(sa.func.max(PolicyVersionRow.version)))
                    row = PolicyVersionRow(
                        version=int(latest or 0) + 1,
                        author=author,
                        comment=comment,
                        document=document,
                        created_at=now,
                    )
                    session.add(row)
                return _record(row)
            except IntegrityError:
                continue
        raise RuntimeError("could not store the policy version: too many concurrent applies")
