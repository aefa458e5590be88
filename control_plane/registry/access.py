"""API keys, dataplane join tokens and the audit log (see domain/access.py).

Secrets are hashed before they reach this module's callers' rows; nothing here returns a
secret, except the one each `create`/`enroll`/`rotate` call hands back to be shown once.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa

from control_plane.domain.access import Principal, Role, new_api_key, new_join_token
from control_plane.domain.records import ApiKeyRecord, AuditRecord
from control_plane.registry.database import Database
from control_plane.registry.tables import ApiKeyRow, AuditRow, DataplaneRow


class KeyStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def create(
        self, name: str, role: Role, projects: Sequence[str], created_by: str, now: datetime
    ) -> tuple[ApiKeyRecord, str]:
        """A new key; returns its record and the key itself (to show once)."""
        key_id, key, secret_hash = new_api_key()
        row = ApiKeyRow(
            id=key_id, name=name, secret_hash=secret_hash, role=role.value,
            projects=sorted(set(projects)), created_at=now, created_by=created_by,
            revoked_at=None,
        )
        async with self._db.write() as session:
            session.add(row)
        return _key_record(row), key

    async def get(self, key_id: str) -> ApiKeyRecord | None:
        async with self._db.read() as session:
            row = await session.get(ApiKeyRow, key_id)
        return None if row is None else _key_record(row)

    async def list_keys(self) -> list[ApiKeyRecord]:
        async with self._db.read() as session:
            rows = await session.scalars(sa.select(ApiKeyRow).order_by(ApiKeyRow.created_at))
            return [_key_record(row) for row in rows]

    async def revoke(self, key_id: str, now: datetime) -> ApiKeyRecord | None:
        async with self._db.write() as session:
            row = await session.get(ApiKeyRow, key_id, with_for_update=True)
            if row is None:
                return None
            row.revoked_at = row.revoked_at or now
            return _key_record(row)

    async def delete(self, key_id: str) -> None:
        """Only for a replica's own key, when it stops."""
        async with self._db.write() as session:
            await session.execute(sa.delete(ApiKeyRow).where(ApiKeyRow.id == key_id))


@dataclass(frozen=True)
class Enrolled:
    token_hash: str
    revoked: bool
    region: str
    cloud: str


class JoinTokens:
    """Each dataplane's join token: enrolled by an admin, presented by its agent."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def enroll(
        self, name: str, region: str, cloud: str, labels: Mapping[str, str], now: datetime
    ) -> str | None:
        """Register a new dataplane and return its token; None if the name is taken."""
        token, token_hash = new_join_token()
        async with self._db.write() as session:
            if await session.get(DataplaneRow, name) is not None:
                return None
            session.add(DataplaneRow(
                name=name, region=region, cloud=cloud, labels=dict(labels), agent_version="",
                first_seen_at=now, last_heartbeat_at=None, token_hash=token_hash,
                token_issued_at=now, token_revoked_at=None,
            ))
        return token

    async def rotate(self, name: str, now: datetime) -> str | None:
        """A new token for an enrolled dataplane (the old one stops working); None if
        unknown. A stream already open goes on until it reconnects."""
        token, token_hash = new_join_token()
        async with self._db.write() as session:
            row = await session.get(DataplaneRow, name, with_for_update=True)
            if row is None:
                return None
            row.token_hash, row.token_issued_at, row.token_revoked_at = token_hash, now, None
        return token

    async def revoke(self, name: str, now: datetime) -> bool:
        async with self._db.write() as session:
            row = await session.get(DataplaneRow, name, with_for_update=True)
            if row is None:
                return False
            row.token_revoked_at = row.token_revoked_at or now
        return True

    async def enrolled(self, name: str) -> Enrolled | None:
        """What the registry holds of an enrolled dataplane; None if never enrolled."""
        async with self._db.read() as session:
            row = await session.get(DataplaneRow, name)
        if row is None or row.token_hash is None:
            return None
        return Enrolled(row.token_hash, row.token_revoked_at is not None, row.region, row.cloud)


class AuditLog:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def record(
        self, actor: Principal, action: str, target: str, detail: str, now: datetime
    ) -> None:
        async with self._db.write() as session:
            session.add(AuditRow(
                at=now, actor=actor.describe(), action=action, target=target, detail=detail,
            ))

    async def list_events(
        self,
        *,
        actor: str = "",
        action: str = "",
        target: str = "",
        since: datetime | None = None,
        limit: int = 100,
    ) -> list[AuditRecord]:
        """Newest first; filters match the start of actor and action, target exactly."""
        query = sa.select(AuditRow)
        if actor:
            query = query.where(AuditRow.actor.startswith(actor, autoescape=True))
        if action:
            query = query.where(AuditRow.action.startswith(action, autoescape=True))
        if target:
            query = query.where(AuditRow.target == target)
        if since is not None:
            query = query.where(AuditRow.at >= since)
        query = query.order_by(AuditRow.seq.desc()).limit(limit)
        async with self._db.read() as session:
            rows = await session.scalars(query)
            return [
                AuditRecord(row.seq, row.at, row.actor, row.action, row.target, row.detail)
                for row in rows
            ]


def _key_record(row: ApiKeyRow) -> ApiKeyRecord:
    return ApiKeyRecord(
        id=row.id, name=row.name, role=row.role, projects=tuple(row.projects),
        created_at=row.created_at, created_by=row.created_by, revoked_at=row.revoked_at,
        secret_hash=row.secret_hash,
    )
