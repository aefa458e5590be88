"""AdminService, access side: API keys and the audit log (admins only)."""

from __future__ import annotations

import re

import grpc
from fleet.v1 import admin_pb2

from control_plane.api.access import Access
from control_plane.api.errors import Context, refuse
from control_plane.api.validation import (
    api_key_problems,
    audit_problems,
    check,
    id_problem,
    name_problem,
)
from control_plane.clock import Clock
from control_plane.domain.access import ALL_PROJECTS, Action, Role
from control_plane.domain.records import ApiKeyRecord
from control_plane.registry import AuditLog, KeyStore
from control_plane.wire import from_timestamp, timestamp

MAX_AUDIT_PAGE = 1000
KEY_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,127}")
GRANTABLE = (Role.VIEWER, Role.SUBMITTER, Role.ADMIN)


class KeysAdmin:
    def __init__(self, access: Access, keys: KeyStore, audit_log: AuditLog, clock: Clock) -> None:
        self._access = access
        self._keys = keys
        self._audit_log = audit_log
        self._clock = clock

    async def CreateApiKey(
        self, request: admin_pb2.CreateApiKeyRequest, context: Context
    ) -> admin_pb2.CreateApiKeyResponse:
        caller = await self._access.require(context, Action.ADMIN)
        await check(context, api_key_problems(request))
        problem = key_problem(request.name, request.role, list(request.projects))
        if problem is not None:
            await refuse(context, grpc.StatusCode.INVALID_ARGUMENT, problem)
        record, secret = await self._keys.create(
            request.name, Role(request.role), list(request.projects), caller.describe(),
            self._clock.now(),
        )
        await self._access.audit(
            caller, "key.create", f"{record.name} ({record.id})",
            f"{record.role} of {', '.join(record.projects)}",
        )
        return admin_pb2.CreateApiKeyResponse(key=key_to_proto(record), secret=secret)

    async def ListApiKeys(
        self, request: admin_pb2.ListApiKeysRequest, context: Context
    ) -> admin_pb2.ListApiKeysResponse:
        await self._access.require(context, Action.ADMIN)
        keys = [k for k in await self._keys.list_keys() if k.role != Role.REPLICA.value]
        return admin_pb2.ListApiKeysResponse(keys=[key_to_proto(k) for k in keys])

    async def RevokeApiKey(
        self, request: admin_pb2.RevokeApiKeyRequest, context: Context
    ) -> admin_pb2.ApiKey:
        caller = await self._access.require(context, Action.ADMIN)
        await check(context, [id_problem("id", request.id)])
        record = await self._keys.revoke(request.id, self._clock.now())
        if record is None:
            await refuse(context, grpc.StatusCode.NOT_FOUND, f"id: no API key {request.id!r}")
        self._access.forget(record.id)
        await self._access.audit(caller, "key.revoke", f"{record.name} ({record.id})")
        return key_to_proto(record)

    async def ListAuditEvents(
        self, request: admin_pb2.ListAuditEventsRequest, context: Context
    ) -> admin_pb2.ListAuditEventsResponse:
        await self._access.require(context, Action.ADMIN)
        await check(context, audit_problems(request))
        if request.limit > MAX_AUDIT_PAGE:
            await refuse(
                context, grpc.StatusCode.INVALID_ARGUMENT,
                f"limit: {request.limit} is more than {MAX_AUDIT_PAGE}",
            )
        events = await self._audit_log.list_events(
            actor=request.actor, action=request.action, target=request.target,
            since=from_timestamp(request.since, request.HasField("since")),
            limit=request.limit or 100,
        )
        return admin_pb2.ListAuditEventsResponse(events=[
            admin_pb2.AuditEvent(
                seq=e.seq, at=timestamp(e.at), actor=e.actor, action=e.action,
                target=e.target, detail=e.detail,
            )
            for e in events
        ])


def key_problem(name: str, role: str, projects: list[str]) -> str | None:
    """Why these cannot make a key (the field and the reason), or None."""
    if not KEY_NAME.fullmatch(name):
        return (f"name: {name!r} is not a key name (letters, digits, '.', '_', '@', '-', "
                "at most 128)")
    if role not in {r.value for r in GRANTABLE}:
        return f"role: {role!r} is not one of {', '.join(r.value for r in GRANTABLE)}"
    if not projects:
        return f"projects: at least one ({ALL_PROJECTS!r} for every project)"
    for project in projects:
        problem = None if project == ALL_PROJECTS else name_problem("projects", project)
        if problem is not None:
            return problem
    return None


def key_to_proto(record: ApiKeyRecord) -> admin_pb2.ApiKey:
    return admin_pb2.ApiKey(
        id=record.id, name=record.name, role=record.role, projects=list(record.projects),
        created_at=timestamp(record.created_at), created_by=record.created_by,
        revoked_at=timestamp(record.revoked_at),
    )
