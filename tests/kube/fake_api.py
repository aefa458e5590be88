"""A small, honest HTTP fake of the Kubernetes API server, for tests that drive code through
the official `kubernetes` Python client.

It serves core/v1 namespaces, nodes and pods (with the status, binding and log subresources)
on 127.0.0.1 with the real server's wire behaviour where clients depend on it: Status errors,
resourceVersions, watches with history and 410 Expired, graceful pod deletion, the three
patch formats. The rules live in `fake_rules`, the state in `fake_store`; this module is the
HTTP side: routing, watch streams, request records (in RBAC terms), start/stop, kubeconfig.
"""

from __future__ import annotations

import bisect
import contextlib
import json
import secrets
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import parse_qs, urlsplit

from tests.kube import fake_rules as rules
from tests.kube.fake_rules import KubeError, Obj
from tests.kube.fake_store import KINDS, NAMESPACES, Event, Kind, Store

VERSION = {
    "major": "1",
    "minor": "34",
    "gitVersion": "v1.34.0-fleet-fake",
    "gitCommit": "0000000000000000000000000000000000000000",
    "gitTreeState": "clean",
    "buildDate": "2025-08-27T00:00:00Z",
    "goVersion": "go1.24.0",
    "compiler": "gc",
    "platform": "linux/amd64",
}
VERBS = {
    "pods": ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"],
    "nodes": ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"],
    "namespaces": ["create", "delete", "get", "list", "patch", "update", "watch"],
}
SUBRESOURCE_VERBS = {"status": ["get", "patch", "update"], "binding": ["create"], "log": ["get"]}
PUBLIC_PATHS = ("/healthz", "/livez", "/readyz")


@dataclass(frozen=True)
class RequestRecord:
    """One request as RBAC sees it (verb, resource, subresource, namespace, name), plus HTTP."""

    verb: str  # get list watch create update patch delete deletecollection
    resource: str  # "pods", "nodes", "namespaces"; "" for a non-resource path such as /version
    subresource: str  # "status", "binding", "log" or ""
    namespace: str  # "" for cluster-scoped and all-namespaces requests; NAME for namespaces/NAME
    name: str
    method: str
    path: str
    code: int
    user_agent: str


@dataclass(frozen=True)
class Route:
    verb: str
    kind: Kind | None  # None for non-resource paths
    namespace: str  # as RBAC sees it: a namespace's own name for namespaces/NAME requests
    name: str
    subresource: str


def parse_route(method: str, path: str, query: dict[str, str]) -> Route:
    parts = [p for p in path.split("/") if p]
    if parts[:2] != ["api", "v1"] or len(parts) == 2:
        return Route(method.lower(), None, "", "", "")
    rest, ns = parts[2:], ""
    if (
        len(rest) >= 3
        and rest[0] == "namespaces"
        and rest[2] in KINDS
        and KINDS[rest[2]].namespaced
    ):
        ns, rest = rest[1], rest[2:]
    kind = KINDS.get(rest[0])
    name = rest[1] if len(rest) > 1 else ""
    sub = rest[2] if len(rest) > 2 else ""
    if (
        kind is None
        or len(rest) > 3
        or (sub and sub not in kind.subresources)
        or (kind.namespaced and name and not ns)
    ):
        raise KubeError(404, "NotFound", "the server could not find the requested resource")
    if method == "GET":
        verb = "get" if name else "watch" if query.get("watch") in ("true", "1") else "list"
    elif method == "DELETE":
        verb = "delete" if name else "deletecollection"
    else:
        verb = {"POST": "create", "PUT": "update", "PATCH": "patch"}.get(method, method.lower())
    return Route(verb, kind, name if kind is NAMESPACES else ns, name, sub)


class FakeKubeAPI:
    """The fake API server. Use as a context manager, or start()/stop()."""

    def __init__(self, *, max_history: int = 10_000, bookmark_interval_s: float = 2.0) -> None:
        self.token = secrets.token_hex(16)
        self.bookmark_interval_s = bookmark_interval_s
        self.requests: list[RequestRecord] = []
        self._store = Store(max_history)
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._port = 0
        self._stopping = False
        self._open_watches = 0
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        for name in ("default", "kube-system", "kube-public", "kube-node-lease"):
            self._store.create(NAMESPACES, "", {"metadata": {"name": name}})

    @property
    def max_history(self) -> int:
        """How many events watches can replay; older resourceVersions get 410 Expired."""
        return self._store.max_history

    @max_history.setter
    def max_history(self, value: int) -> None:
        self._store.max_history = value

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._port}"

    def start(self) -> FakeKubeAPI:
        """Serve; after a stop(), serve again on the same port with the same objects."""
        handler = type("Handler", (_Handler,), {"fake": self})
        self._stopping = False
        self._server = ThreadingHTTPServer(("127.0.0.1", self._port), handler)
        self._server.daemon_threads = True
        self._port = self._server.server_address[1]
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving: open watches end cleanly, idle connections are closed."""
        if self._server is None:
            return
        with self._store.cond:
            self._stopping = True
            self._store.cond.notify_all()
            self._store.cond.wait_for(lambda: self._open_watches == 0, timeout=2.0)
        self._server.shutdown()
        with self._connections_lock:
            for sock in self._connections:
                with contextlib.suppress(OSError):  # already gone
                    sock.shutdown(socket.SHUT_RDWR)
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server = self._thread = None

    def __enter__(self) -> FakeKubeAPI:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def write_kubeconfig(self, path: Path) -> Path:
        """A kubeconfig for this server (JSON, which is YAML too) with a bearer token."""
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "fake", "cluster": {"server": self.url}}],
            "users": [{"name": "fake", "user": {"token": self.token}}],
            "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "fake"}}],
            "current-context": "fake",
        }
        path.write_text(json.dumps(config, indent=2))
        return path

    def set_pod_log(self, namespace: str, name: str, text: str, container: str = "") -> None:
        """What GET pods/NAME/log returns; container "" means the pod's first container."""
        with self._store.cond:
            self._store.logs[(namespace, name, container)] = text

    def compact(self) -> None:
        """Forget all past events: a watch from any older resourceVersion gets 410 Expired."""
        self._store.compact()

    # --- serving -----------------------------------------------------------------------------

    def _track(self, sock: socket.socket, open_: bool) -> None:
        with self._connections_lock:
            (self._connections.add if open_ else self._connections.discard)(sock)

    def serve(self, h: _Handler, route: Route, query: dict[str, str], body: bytes) -> None:
        kind, method, store = route.kind, h.command, self._store
        if kind is None:
            return self._serve_non_resource(h)
        ns = route.namespace if kind.namespaced else ""
        if not route.name:
            if method == "GET" and route.verb == "watch":
                return self._watch(h, kind, ns, query)
            if method == "GET":
                return h.send_json(200, store.list(kind, ns, query))
            if method == "POST":
                return h.send_json(201, store.create(kind, ns, parse_body(body)))
            if method == "DELETE" and kind is not NAMESPACES:
                options = delete_options(body, query)
                return h.send_json(200, store.delete_collection(kind, ns, query, options))
        elif route.subresource == "log" and method == "GET":
            return h.send_text(200, store.log(ns, route.name, query))
        elif route.subresource == "binding" and method == "POST":
            return h.send_json(201, store.bind(ns, route.name, parse_body(body)))
        elif route.subresource in ("", "status"):
            status_only = route.subresource == "status"
            if method == "GET":
                return h.send_json(200, store.get(kind, ns, route.name))
            if method == "PUT":
                obj = store.update(kind, ns, route.name, parse_body(body), status_only=status_only)
                return h.send_json(200, obj)
            if method == "PATCH":
                ctype = h.headers.get("Content-Type", "")
                obj = store.patch(kind, ns, route.name, body, ctype, status_only=status_only)
                return h.send_json(200, obj)
            if method == "DELETE" and not status_only:
                obj = store.delete(kind, ns, route.name, delete_options(body, query))
                return h.send_json(200, obj)
        raise KubeError(
            405,
            "MethodNotAllowed",
            "the server does not allow this method on the requested resource",
        )

    def _serve_non_resource(self, h: _Handler) -> None:
        path = urlsplit(h.path).path.rstrip("/")
        if path in PUBLIC_PATHS:
            return h.send_text(200, "ok")
        if path == "/version":
            return h.send_json(200, VERSION)
        if path == "/api":
            address = {"clientCIDR": "0.0.0.0/0", "serverAddress": f"127.0.0.1:{self._port}"}
            return h.send_json(
                200,
                {
                    "kind": "APIVersions",
                    "versions": ["v1"],
                    "serverAddressByClientCIDRs": [address],
                },
            )
        if path == "/apis":
            return h.send_json(200, {"kind": "APIGroupList", "apiVersion": "v1", "groups": []})
        if path == "/api/v1":
            return h.send_json(200, discovery())
        raise KubeError(404, "NotFound", "the server could not find the requested resource")

    def _watch(self, h: _Handler, kind: Kind, ns: str, query: dict[str, str]) -> None:
        store = self._store
        match = store.matching(kind, ns, query)
        try:
            timeout = float(query["timeoutSeconds"]) if query.get("timeoutSeconds") else None
        except ValueError:
            raise rules.bad_request(f"invalid timeoutSeconds: {query['timeoutSeconds']}") from None
        try:
            since = int(query.get("resourceVersion") or 0)
        except ValueError:
            raise rules.bad_request(
                f"invalid resource version: {query['resourceVersion']}"
            ) from None
        bookmarks = query.get("allowWatchBookmarks") in ("true", "1")
        send_initial = query.get("sendInitialEvents") == "true"
        deadline = time.monotonic() + timeout if timeout is not None else float("inf")
        with store.cond:
            self._open_watches += 1
            initial: list[Obj] = []
            if since == 0 or send_initial:
                objects = store.objects[kind.resource]
                initial = [objects[k] for k in sorted(objects) if match(objects[k])]
                since = store.rv
        try:
            h.start_stream()
            for obj in initial:
                h.send_event("ADDED", obj)
            if send_initial and bookmarks:
                h.send_event("BOOKMARK", bookmark(kind, since, initial_events_end=True))
            self._stream_changes(h, kind, match, since, deadline, bookmarks)
            h.end_stream()
        except OSError:
            h.close_connection = True  # the client went away
        finally:
            with store.cond:
                self._open_watches -= 1
                store.cond.notify_all()

    def _stream_changes(
        self,
        h: _Handler,
        kind: Kind,
        match: Callable[[Obj], bool],
        seen: int,
        deadline: float,
        bookmarks: bool,
    ) -> None:
        """Events after RV `seen` for this watch, from history then live, until the timeout,
        stop(), or the history no longer reaching back to `seen` (410 Expired)."""
        store = self._store
        next_bookmark = time.monotonic() + self.bookmark_interval_s
        while True:
            with store.cond:
                while True:
                    expired = seen < store.compacted_rv
                    start = bisect.bisect_right(store.history, seen, key=lambda e: e.rv)
                    events = [e for e in store.history[start:] if e.resource == kind.resource]
                    now = time.monotonic()
                    wake = min(deadline, next_bookmark if bookmarks else deadline)
                    if expired or events or self._stopping or now >= wake:
                        break
                    store.cond.wait(timeout=min(wake - now, 1.0))
                oldest, latest = store.compacted_rv, store.rv
            if expired:
                message = f"too old resource version: {seen} ({oldest + 1})"
                h.send_event("ERROR", KubeError(410, "Expired", message).status())
                return
            for event in events:
                type_ = translate(event, match)
                if type_:
                    h.send_event(type_, event.obj)
            seen = latest
            if self._stopping:
                return
            now = time.monotonic()
            if bookmarks and (now >= next_bookmark or now >= deadline):
                h.send_event("BOOKMARK", bookmark(kind, seen))
                next_bookmark = now + self.bookmark_interval_s
            if now >= deadline:
                return


def translate(event: Event, match: Callable[[Obj], bool]) -> str:
    """The event a selector-filtered watch sees, like the watch cache: an object that stops
    matching is DELETED for this watcher, one that starts matching is ADDED; "" = none."""
    now = match(event.obj)
    before = event.prev is not None and match(event.prev)
    if event.type == "ADDED":
        return "ADDED" if now else ""
    if event.type == "DELETED":
        return "DELETED" if now or before else ""
    if now and before:
        return "MODIFIED"
    return "ADDED" if now else "DELETED" if before else ""


def bookmark(kind: Kind, rv: int, *, initial_events_end: bool = False) -> Obj:
    meta: Obj = {"resourceVersion": str(rv)}
    if initial_events_end:
        meta["annotations"] = {"k8s.io/initial-events-end": "true"}
    return {"kind": kind.kind, "apiVersion": "v1", "metadata": meta}


def parse_body(body: bytes) -> Any:
    try:
        return json.loads(body or b"null")
    except ValueError as err:
        raise rules.bad_request(f"error decoding request body: {err}") from None


def delete_options(body: bytes, query: dict[str, str]) -> Obj:
    options = parse_body(body) or {}
    if not isinstance(options, dict):
        raise rules.bad_request("the body of the request is not a DeleteOptions object")
    try:
        if query.get("gracePeriodSeconds"):
            options["gracePeriodSeconds"] = int(query["gracePeriodSeconds"])
        if options.get("gracePeriodSeconds") is not None:
            options["gracePeriodSeconds"] = int(options["gracePeriodSeconds"])
    except ValueError as err:
        raise rules.bad_request(str(err)) from None
    return options


def discovery() -> Obj:
    resources = []
    for kind in KINDS.values():
        single = kind.kind.lower()
        resources.append(
            {
                "name": kind.resource,
                "singularName": single,
                "namespaced": kind.namespaced,
                "kind": kind.kind,
                "verbs": VERBS[kind.resource],
            }
        )
        for sub in kind.subresources:
            sub_kind = {"binding": "Binding", "log": "Pod"}.get(sub, kind.kind)
            resources.append(
                {
                    "name": f"{kind.resource}/{sub}",
                    "singularName": "",
                    "namespaced": kind.namespaced,
                    "kind": sub_kind,
                    "verbs": SUBRESOURCE_VERBS[sub],
                }
            )
    return {
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": "v1",
        "resources": resources,
    }


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive and chunked watch streams, like the real server
    fake: FakeKubeAPI
    route: Route | None = None

    def setup(self) -> None:
        super().setup()
        # Headers and body go out as two writes; without this, Nagle's algorithm and delayed
        # ACKs add 40 ms to every keep-alive request.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.fake._track(self.connection, True)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.fake._track(self.connection, False)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # tests read self.fake.requests instead

    def do_GET(self) -> None:
        self._serve()

    do_POST = do_PUT = do_PATCH = do_DELETE = do_GET

    def _serve(self) -> None:
        url = urlsplit(self.path)
        query = {k: v[-1] for k, v in parse_qs(url.query, keep_blank_values=True).items()}
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        self.route = None
        try:
            self.route = parse_route(self.command, url.path, query)
            token = self.headers.get("Authorization", "")
            if url.path not in PUBLIC_PATHS and token != f"Bearer {self.fake.token}":
                raise KubeError(401, "Unauthorized", "Unauthorized")
            self.fake.serve(self, self.route, query, body)
        except KubeError as err:
            self.send_json(err.code, err.status())
        except OSError:
            self.close_connection = True  # the client hung up mid-response

    def send_response(self, code: int, message: str | None = None) -> None:
        super().send_response(code, message)
        route = self.route or Route(self.command.lower(), None, "", "", "")
        resource = route.kind.resource if route.kind else ""
        record = RequestRecord(
            route.verb,
            resource,
            route.subresource,
            route.namespace,
            route.name,
            self.command,
            self.path,
            code,
            self.headers.get("User-Agent", ""),
        )
        self.fake.requests.append(record)

    def send_json(self, code: int, obj: Obj) -> None:
        self._send(code, json.dumps(obj, separators=(",", ":")).encode(), "application/json")

    def send_text(self, code: int, text: str) -> None:
        self._send(code, text.encode(), "text/plain; charset=utf-8")

    def _send(self, code: int, data: bytes, content_type: str) -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def start_stream(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()

    def send_event(self, type_: str, obj: Obj) -> None:
        line = json.dumps({"type": type_, "object": obj}, separators=(",", ":")).encode() + b"\n"
        self.wfile.write(b"%x\r\n%s\r\n" % (len(line), line))
        self.wfile.flush()

    def end_stream(self) -> None:
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()
