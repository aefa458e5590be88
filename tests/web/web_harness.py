"""An in-process control plane with its HTTP side on, and a small JSON client for it."""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import aiohttp

from control_plane.clock import ManualClock
from control_plane.domain.access import Role
from control_plane.registry import Database, KeyStore
from control_plane.server import RunningControlPlane
from tests.control_plane.harness import control_plane


@dataclass
class Answer:
    status: int
    body: Any
    headers: dict[str, str]


@dataclass
class Http:
    """GETs against the control plane's HTTP port, as one API key (or none)."""

    session: aiohttp.ClientSession
    base: str
    key: str = ""
    ssl: ssl.SSLContext | None = None

    def as_key(self, key: str) -> Http:
        return Http(self.session, self.base, key, self.ssl)

    async def get(self, path: str, **params: str | list[str]) -> Answer:
        headers = {"Authorization": f"Bearer {self.key}"} if self.key else {}
        query = [(k, v) for k, vs in params.items() for v in ([vs] if isinstance(vs, str) else vs)]
        async with self.session.get(
            self.base + path, params=query, headers=headers, ssl=self.ssl or True
        ) as response:
            text = await response.text()
            try:
                body: Any = await response.json(content_type=None)
            except ValueError:
                body = text
            return Answer(response.status, body, dict(response.headers))

    async def ok(self, path: str, **params: str | list[str]) -> Any:
        answer = await self.get(path, **params)
        assert answer.status == 200, (path, answer.status, answer.body)
        return answer.body


@asynccontextmanager
async def web_control_plane(
    database_url: str, **overrides: Any
) -> AsyncIterator[tuple[RunningControlPlane, ManualClock, Http]]:
    """A control plane (see tests/control_plane/harness.py) with http_listen on 127.0.0.1:0."""
    async with (
        control_plane(database_url, http_listen="127.0.0.1:0", **overrides) as (cp, clock),
        aiohttp.ClientSession() as session,
    ):
        scheme = "https" if overrides.get("tls_cert") else "http"
        yield cp, clock, Http(session, f"{scheme}://127.0.0.1:{cp.http_port}")


async def make_key(
    database_url: str, clock: ManualClock, name: str, role: Role, *projects: str
) -> str:
    """An API key made in the database, as `fleet keys create --db` does."""
    database = Database(database_url)
    try:
        _, secret = await KeyStore(database).create(name, role, list(projects), "test", clock.now())
    finally:
        await database.close()
    return secret
