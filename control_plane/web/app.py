"""The HTTP routes: /healthz, /metrics, the dashboard's static page and its read-only JSON
API under /api/.

Callers authenticate as on the gRPC side: ``Authorization: Bearer <api key>``, checked by
the same `Access` object the servicers use (handed in by the server; this layer may not
import the api layer), so keys, roles, project scopes, revocation and the rate limit are
the same. A key scoped to projects sees only their jobs; another project's job answers
404, as if it did not exist. Errors are JSON ``{"error": "field: reason"}``.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from importlib import resources
from typing import Any, NoReturn, Protocol, cast

import grpc
import grpc.aio
from aiohttp import web

from control_plane.clock import Clock
from control_plane.domain.access import Action, Principal
from control_plane.domain.health import Timers
from control_plane.domain.limits import MAX_POLICY_VERSION
from control_plane.domain.records import JobRecord
from control_plane.registry import DataplaneStore, JobStore, PolicyStore
from control_plane.registry.database import DatabaseUnavailable
from control_plane.relay import Relay
from control_plane.scheduler import Scheduler
from control_plane.sessions import SessionHub
from control_plane.web import views
from control_plane.web.logs import DEFAULT_TAIL, HTTP_STATUS, MAX_TAIL, LogUnavailable, log_tail
from control_plane.wire import demand_from_json, encode_page_token

log = logging.getLogger(__name__)

EVENTS_SHOWN = 500
STATIC = resources.files("control_plane.web") / "static"
# The page loads only its own script and style, and is never framed.
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
GrpcContext = grpc.aio.ServicerContext[Any, Any]


class Authenticator(Protocol):
    """What this layer uses of control_plane.api.access.Access."""

    enabled: bool

    async def caller(self, context: GrpcContext) -> Principal: ...


class MetricsPage(Protocol):
    """What this layer uses of control_plane.metrics.ControlPlaneMetrics."""

    async def render(self) -> tuple[bytes, str]: ...


@dataclass(frozen=True)
class WebSources:
    """The objects the gRPC servicers use, shared with the HTTP side."""

    access: Authenticator
    jobs: JobStore
    dataplanes: DataplaneStore
    policies: PolicyStore
    scheduler: Scheduler
    hub: SessionHub
    relay: Relay | None
    clock: Clock
    timers: Timers
    metrics: MetricsPage | None = None


class ApiError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class _BearerCall:
    """The two things Access reads of a gRPC call, made from an HTTP request: its
    authorization (the same header value) and abort, which here raises ApiError."""

    def __init__(self, authorization: str) -> None:
        self._authorization = authorization

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return (("authorization", self._authorization),) if self._authorization else ()

    async def abort(self, code: grpc.StatusCode, details: str = "", *_: Any) -> NoReturn:
        raise ApiError(HTTP_STATUS.get(code, 500), details)


def make_app(sources: WebSources) -> web.Application:
    app = web.Application(middlewares=[_headers, _errors])   # the first is outermost
    routes = _Routes(sources)
    app.router.add_get("/", routes.index)
    app.router.add_get("/healthz", routes.healthz)
    app.router.add_get("/metrics", routes.metrics)
    app.router.add_get("/static/{name}", routes.static)
    app.router.add_get("/api/whoami", routes.whoami)
    app.router.add_get("/api/dataplanes", routes.dataplanes)
    app.router.add_get("/api/jobs", routes.job_list)
    app.router.add_get("/api/jobs/{job_id}", routes.job)
    app.router.add_get("/api/jobs/{job_id}/log", routes.job_log)
    app.router.add_get("/api/policy", routes.policy)
    app.router.add_get("/api/policy/versions/{version}", routes.policy_version)
    return app


class _Routes:
    def __init__(self, sources: WebSources) -> None:
        self._s = sources

    # -- unauthenticated: the page itself and the health probe ------------------------------

    async def index(self, request: web.Request) -> web.StreamResponse:
        return _file("index.html")

    async def static(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        if name not in ("app.js", "app.css"):
            raise ApiError(404, f"path: no file {views.shown(name)}")
        return _file(name)

    async def healthz(self, request: web.Request) -> web.StreamResponse:
        return web.json_response({"status": "serving"})

    # -- a key with the viewer role, or more ----------------------------------------------

    async def metrics(self, request: web.Request) -> web.StreamResponse:
        await self._caller(request, Action.VIEW_FLEET)
        if self._s.metrics is None:
            raise ApiError(404, "metrics: not collected by this control plane")
        body, content_type = await self._s.metrics.render()
        return web.Response(body=body, headers={"Content-Type": content_type})

    async def whoami(self, request: web.Request) -> web.StreamResponse:
        caller = await self._caller(request, Action.VIEW_FLEET)
        return web.json_response({
            "auth": self._s.access.enabled,
            "name": caller.name,
            "key_id": caller.key_id,
            "role": caller.role.value,
            "projects": ["*"] if caller.all_projects else sorted(caller.projects),
        })

    async def dataplanes(self, request: web.Request) -> web.StreamResponse:
        await self._caller(request, Action.VIEW_FLEET)
        now = self._s.clock.now()
        records = await self._s.dataplanes.list_dataplanes()
        return web.json_response({
            "now": views.iso(now),
            "dataplanes": [
                views.dataplane_json(r, self._s.timers.health(r.last_heartbeat_at, now), now)
                for r in records
            ],
        })

    async def job_list(self, request: web.Request) -> web.StreamResponse:
        """As JobService.List: newest first, keyset paging with the same tokens."""
        caller = await self._caller(request, Action.READ)
        try:
            query = views.job_query({k: request.query.getall(k) for k in request.query})
        except views.BadRequest as error:
            raise ApiError(400, str(error)) from None
        if not caller.may(Action.READ, query.project):
            raise ApiError(403, caller.denial(Action.READ, query.project))
        jobs = await self._s.jobs.list_jobs(
            project=query.project,
            projects=None if caller.all_projects else sorted(caller.projects),
            phases=query.phases,
            dataplane=query.dataplane,
            limit=query.page_size + 1,
            after=query.after,
        )
        size = query.page_size
        token = encode_page_token(jobs[size - 1]) if len(jobs) > size else ""
        return web.json_response({
            "jobs": [views.job_summary_json(job) for job in jobs[:size]],
            "next_page_token": token,
        })

    async def job(self, request: web.Request) -> web.StreamResponse:
        job = await self._job(request)
        events = await self._s.jobs.events_after(job.id, 0, limit=EVENTS_SHOWN)
        # As PolicyService.ExplainJob: the decision the scheduler would make now.
        version, decision = await self._s.scheduler.explain(demand_from_json(job.id, job.spec))
        return web.json_response({
            "job": views.job_json(job),
            "events": [views.event_json(event) for event in events],
            "events_cut": len(events) == EVENTS_SHOWN,
            "explanation": views.explanation_json(job, version, decision),
        })

    async def job_log(self, request: web.Request) -> web.StreamResponse:
        tail = request.query.get("tail_bytes", "")
        if tail and (not tail.isdigit() or not 0 < int(tail) <= MAX_TAIL):
            raise ApiError(
                400, f"tail_bytes: {views.shown(tail)} is not a number from 1 to {MAX_TAIL}"
            )
        job = await self._job(request)
        try:
            attempt, data = await log_tail(
                self._s.hub, self._s.relay, job, int(tail) if tail else DEFAULT_TAIL
            )
        except LogUnavailable as error:
            raise ApiError(error.status, str(error)) from None
        return web.json_response({
            "attempt_id": attempt.id,
            "dataplane": attempt.dataplane,
            "text": data.decode("utf-8", errors="replace"),
        })

    async def policy(self, request: web.Request) -> web.StreamResponse:
        await self._caller(request, Action.VIEW_FLEET)
        history = await self._s.policies.history()
        current = await self._s.policies.current()
        return web.json_response({
            "current": None if current is None else views.policy_version_json(current),
            "history": [views.policy_version_json(v, with_document=False) for v in history],
        })

    async def policy_version(self, request: web.Request) -> web.StreamResponse:
        text = request.match_info["version"]
        if not text.isdigit() or not 0 < int(text) <= MAX_POLICY_VERSION:
            raise ApiError(400, f"version: {views.shown(text)} is not a policy version number")
        await self._caller(request, Action.VIEW_FLEET)
        found = await self._s.policies.get(int(text))
        if found is None:
            raise ApiError(404, f"version: no policy version {text}")
        return web.json_response(views.policy_version_json(found))

    # -- helpers ---------------------------------------------------------------------------

    async def _caller(self, request: web.Request, action: Action, project: str = "") -> Principal:
        """The caller, if its key may do this (in this project): as Access.require."""
        call = _BearerCall(request.headers.get("Authorization", ""))
        caller = await self._s.access.caller(cast(GrpcContext, call))
        if not caller.may(action, project):
            raise ApiError(403, caller.denial(action, project))
        return caller

    async def _job(self, request: web.Request) -> JobRecord:
        """The job, if the caller may read it; another project's job answers 404, like a
        missing one (as JobService does)."""
        job_id = request.match_info["job_id"]
        problem = views.id_problem("job_id", job_id)
        if problem is not None:
            raise ApiError(400, problem)
        caller = await self._caller(request, Action.READ)
        job = await self._s.jobs.get(job_id)
        if job is None or not caller.may(Action.READ, job.project):
            raise ApiError(404, f"job_id: no job {job_id!r}")
        return job


def _file(name: str) -> web.Response:
    kind = {"html": "text/html", "js": "text/javascript", "css": "text/css"}
    return web.Response(
        body=(STATIC / name).read_bytes(),
        content_type=kind[name.rsplit(".", 1)[1]],
        charset="utf-8",
        headers={"Cache-Control": "no-cache"},
    )


@web.middleware
async def _errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every refusal as JSON naming the field; an unreachable database as 503."""
    try:
        return await handler(request)
    except ApiError as error:
        headers = {"WWW-Authenticate": "Bearer"} if error.status == 401 else None
        return web.json_response({"error": str(error)}, status=error.status, headers=headers)
    except DatabaseUnavailable as error:
        log.warning("%s %s: %s", request.method, request.path, error)
        return web.json_response({"error": f"{error}; retry later"}, status=503)
    except web.HTTPException as error:
        if error.status >= 400:
            message = f"path: {request.method} {request.path}: {error.reason}"
            return web.json_response(
                {"error": message}, status=error.status, headers=_allow(error)
            )
        raise


def _allow(error: web.HTTPException) -> dict[str, str] | None:
    allow = error.headers.get("Allow")
    return {"Allow": allow} if allow else None


@web.middleware
async def _headers(request: web.Request, handler: Handler) -> web.StreamResponse:
    response = await handler(request)
    response.headers.update(SECURITY_HEADERS)
    if request.path.startswith("/api/") or request.path == "/metrics":
        response.headers["Cache-Control"] = "no-store"
    return response
