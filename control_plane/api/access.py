"""Authentication and authorization at the edge: every servicer method starts with one call.

Callers send an API key as gRPC metadata ``authorization: Bearer fleet_<id>_<secret>``;
agents present their dataplane's join token in their Hello. Keys are looked up by id and
cached for a few seconds, so a revoked key stops working within CACHE_S on every replica.
Errors name the key by its name or id, never by its secret. A control plane started
without auth (only on loopback, for the demo) treats every caller as an admin and lets any
agent join.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import grpc

from control_plane.api.errors import Context, refuse
from control_plane.clock import Clock
from control_plane.domain.access import (
    EVERYONE,
    Action,
    Principal,
    Role,
    api_key_id,
    secret_matches,
)
from control_plane.domain.rate_limit import RateLimits
from control_plane.domain.records import ApiKeyRecord
from control_plane.registry import AuditLog, JoinTokens, KeyStore

log = logging.getLogger(__name__)

HEADER = "authorization"
CACHE_S = 5.0


@dataclass
class _Cached:
    record: ApiKeyRecord | None
    fetched_at: float


class Access:
    def __init__(
        self,
        keys: KeyStore,
        tokens: JoinTokens,
        audit_log: AuditLog,
        clock: Clock,
        *,
        enabled: bool,
        limits: RateLimits | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.enabled = enabled
        self._limits = limits
        self._monotonic = monotonic
        self._keys = keys
        self._tokens = tokens
        self._audit = audit_log
        self._clock = clock
        self._cache: dict[str, _Cached] = {}

    async def require(self, context: Context, action: Action, project: str = "") -> Principal:
        """The caller, if it may do this (in this project); else the call is refused."""
        caller = await self.caller(context)
        if not caller.may(action, project):
            await refuse(context, grpc.StatusCode.PERMISSION_DENIED, caller.denial(action, project))
        return caller

    async def caller(self, context: Context) -> Principal:
        if not self.enabled:
            return EVERYONE
        presented = _bearer(context)
        if not presented:
            await refuse(
                context,
                grpc.StatusCode.UNAUTHENTICATED,
                f"metadata {HEADER}: missing; send an API key (fleet --api-key, FLEET_API_KEY)",
            )
        key_id = api_key_id(presented)
        record = await self._key(key_id) if key_id else None
        if key_id is None or record is None or not secret_matches(presented, record.secret_hash):
            shown = f"fleet_{key_id}_…" if key_id else "(not an API key)"
            await refuse(context, grpc.StatusCode.UNAUTHENTICATED, f"API key {shown}: unknown")
        if record.revoked_at is not None:
            await refuse(
                context, grpc.StatusCode.UNAUTHENTICATED,
                f"API key {record.name!r} ({record.id}) was revoked",
            )
        caller = Principal(record.id, record.name, Role(record.role), frozenset(record.projects))
        limits = self._limits
        if (limits is not None and caller.role is not Role.REPLICA
                and not limits.allow(caller.key_id, self._monotonic())):
            await refuse(
                context, grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"API key {caller.name!r} ({caller.key_id}): more than {limits.rate:g} calls "
                "a second; slow down and retry",
            )
        return caller

    async def join_problem(
        self, dataplane: str, presented: str, region: str, cloud: str
    ) -> tuple[grpc.StatusCode, str] | None:
        """Why an agent may not join as this dataplane with this token (from this region),
        or None. The token binds the stream to the dataplane it was made for."""
        if not self.enabled:
            return None
        enrolled = await self._tokens.enrolled(dataplane)
        if enrolled is None:
            return (grpc.StatusCode.UNAUTHENTICATED,
                    f"hello.dataplane: {dataplane!r} is not enrolled "
                    f"(an admin runs: fleet dataplanes add {dataplane} ...)")
        if enrolled.revoked:
            return (grpc.StatusCode.UNAUTHENTICATED,
                    f"hello.credential: the join token of {dataplane!r} was revoked")
        if not presented or not secret_matches(presented, enrolled.token_hash):
            return (grpc.StatusCode.UNAUTHENTICATED,
                    f"hello.credential: not the join token of dataplane {dataplane!r}")
        if (region, cloud) != (enrolled.region, enrolled.cloud):
            return (grpc.StatusCode.PERMISSION_DENIED,
                    f"hello.region: dataplane {dataplane!r} is enrolled in "
                    f"{enrolled.region} ({enrolled.cloud}), not {region} ({cloud})")
        return None

    async def audit(self, actor: Principal, action: str, target: str, detail: str = "") -> None:
        await self._audit.record(actor, action, target, detail, self._clock.now())
        log.info("audit: %s %s %s %s", actor.describe(), action, target, detail)

    def forget(self, key_id: str) -> None:
        """A key was revoked here: stop trusting the cached copy at once."""
        self._cache.pop(key_id, None)

    async def _key(self, key_id: str) -> ApiKeyRecord | None:
        cached = self._cache.get(key_id)
        if cached is not None and time.monotonic() - cached.fetched_at < CACHE_S:
            return cached.record
        record = await self._keys.get(key_id)
        self._cache[key_id] = _Cached(record, time.monotonic())
        return record


def _bearer(context: Context) -> str:
    for key, value in context.invocation_metadata() or ():
        if key == HEADER and isinstance(value, str):
            scheme, _, credential = value.partition(" ")
            return credential.strip() if scheme.lower() == "bearer" else ""
    return ""
