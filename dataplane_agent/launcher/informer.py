"""A local copy of a set of Kubernetes objects, kept current by list + watch.

``start`` lists the objects (its resourceVersion is where the watch begins) and fills the
cache; a worker thread then watches from that version and hands each event to the event
loop, which applies it to the cache and calls ``on_change``. The cache is touched only on
the loop's thread. When the watch ends (its timeout, a broken connection) it resumes from
the last version seen; when the server no longer has that version (410 Gone, "Expired")
the informer lists again and turns the difference into ADDED/MODIFIED/DELETED events, so
no change is missed and nothing is listed again on every heartbeat.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable, Mapping
from typing import Any

from dataplane_agent.launcher.kube_api import Kind, KubeApi, KubeError, WatchStream

log = logging.getLogger(__name__)

WATCH_TIMEOUT_S = 300
RETRY_MIN_S = 0.5
RETRY_MAX_S = 15.0

Object = dict[str, Any]
# on_change(event type, the object after the event; for DELETED the last state seen)
ChangeListener = Callable[[str, Object], None]


def object_key(obj: Mapping[str, Any]) -> str:
    metadata = obj.get("metadata") or {}
    return f"{metadata.get('namespace', '')}/{metadata.get('name', '')}"


def resource_version(obj: Mapping[str, Any]) -> str:
    return str((obj.get("metadata") or {}).get("resourceVersion", ""))


class Informer:
    def __init__(
        self,
        api: KubeApi,
        kind: Kind,
        namespace: str | None,
        on_change: ChangeListener,
        *,
        label_selector: str = "",
        field_selector: str = "",
    ) -> None:
        self._api = api
        self._kind = kind
        self._namespace = namespace
        self._on_change = on_change
        self._labels = label_selector
        self._fields = field_selector
        self.objects: dict[str, Object] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopped = threading.Event()
        self._stream: WatchStream | None = None
        self._thread: threading.Thread | None = None

    @property
    def what(self) -> str:
        where = f" in {self._namespace}" if self._namespace else ""
        chosen = ",".join(s for s in (self._labels, self._fields) if s)
        return f"{self._kind}{where}" + (f" ({chosen})" if chosen else "")

    async def start(self) -> None:
        """List (raises KubeError when the server refuses), then watch in the background."""
        self._loop = asyncio.get_running_loop()
        items, version = await asyncio.to_thread(self._list)
        self._replace(items)
        self._thread = threading.Thread(
            target=self._watch_loop, args=(version,), name=f"watch-{self._kind}", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        self._stopped.set()
        stream = self._stream
        if stream is not None:
            stream.close()

    # -- the watch thread -----------------------------------------------------------------------

    def _list(self) -> tuple[list[Object], str]:
        return self._api.list(self._kind, self._namespace, self._labels, self._fields)

    def _watch_loop(self, version: str) -> None:
        delay = RETRY_MIN_S
        while not self._stopped.is_set():
            try:
                version = self._watch_once(version)
                delay = RETRY_MIN_S
            except KubeError as error:
                if self._stopped.is_set():
                    return
                if error.code == 410:
                    version = self._relist()
                    continue
                log.warning("watching %s failed (%s); again in %.1fs", self.what, error, delay)
                self._stopped.wait(delay)
                delay = min(delay * 2, RETRY_MAX_S)
            except RuntimeError:     # the event loop closed: the agent is stopping
                return

    def _watch_once(self, version: str) -> str:
        stream = self._api.watch(self._kind, self._namespace, version, WATCH_TIMEOUT_S,
                                 self._labels, self._fields)
        self._stream = stream
        try:
            if self._stopped.is_set():
                return version
            for kind, obj in stream:
                if self._stopped.is_set():
                    break
                if kind == "ERROR":
                    code = int(obj.get("code") or 0)
                    raise KubeError(code, str(obj.get("reason", "")), str(obj.get("message", "")))
                version = resource_version(obj) or version
                if kind != "BOOKMARK":
                    self._post(self._apply, kind, obj)
        finally:
            self._stream = None
            stream.close()
        return version

    def _relist(self) -> str:
        log.info("the watch of %s fell behind the server's history: listing again", self.what)
        delay = RETRY_MIN_S
        while not self._stopped.is_set():
            try:
                items, version = self._list()
            except KubeError as error:
                log.warning("listing %s failed (%s); again in %.1fs", self.what, error, delay)
                self._stopped.wait(delay)
                delay = min(delay * 2, RETRY_MAX_S)
                continue
            self._post(self._replace, items)
            return version
        return ""

    def _post(self, callback: Callable[..., None], *args: Any) -> None:
        assert self._loop is not None
        self._loop.call_soon_threadsafe(callback, *args)

    # -- on the loop's thread -------------------------------------------------------------------

    def _apply(self, kind: str, obj: Object) -> None:
        key = object_key(obj)
        if kind == "DELETED":
            self.objects.pop(key, None)
        else:
            self.objects[key] = obj
        self._on_change(kind, obj)

    def _replace(self, items: list[Object]) -> None:
        fresh = {object_key(item): item for item in items}
        for key in [k for k in self.objects if k not in fresh]:
            self._apply("DELETED", self.objects[key])
        for key, item in fresh.items():
            old = self.objects.get(key)
            if old is None:
                self._apply("ADDED", item)
            elif resource_version(old) != resource_version(item):
                self._apply("MODIFIED", item)
