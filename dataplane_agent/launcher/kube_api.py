"""The one place the official ``kubernetes`` client is used.

Every call blocks (the client is urllib3 underneath): the launcher runs them in worker
threads. Objects go in and come out as the API's own JSON (dicts with camelCase keys), so
nothing above this module depends on the client's model classes. The client's errors are
translated here into :class:`KubeError` (the server answered with a Status) and
:class:`KubeUnavailable` (it could not be reached, or answered 5xx: worth retrying).
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Literal

import kubernetes.client
import kubernetes.config
import kubernetes.watch.watch
import urllib3
from kubernetes.config.config_exception import ConfigException

# The client's functions carry no annotations: use them as Any, here only.
client: Any = kubernetes.client
config: Any = kubernetes.config
iter_resp_lines: Any = kubernetes.watch.watch.iter_resp_lines

log = logging.getLogger(__name__)

Kind = Literal["pods", "nodes"]
REQUEST_TIMEOUT_S = 30.0
USER_AGENT = "flyte-fleet-agent"


class KubeError(OSError):
    """The API server refused a request; code and reason are the Status's."""

    def __init__(self, code: int, reason: str, message: str) -> None:
        super().__init__(f"{code} {reason}: {message}")
        self.code = code
        self.reason = reason
        self.message = message


class KubeUnavailable(KubeError):
    """No answer, or a server-side failure (5xx): the request may work later."""


class KubeConfigError(Exception):
    """No usable cluster configuration (neither in-cluster nor a kubeconfig)."""


class WatchStream:
    """The events of one watch request as (type, object); ``close`` ends it from any thread."""

    def __init__(self, response: urllib3.BaseHTTPResponse) -> None:
        self._response = response

    def __iter__(self) -> Iterator[tuple[str, dict[str, Any]]]:
        try:
            for line in iter_resp_lines(self._response):
                if not line.strip():
                    continue
                event = json.loads(line)
                yield str(event.get("type", "")), dict(event.get("object") or {})
        except (urllib3.exceptions.HTTPError, OSError, ValueError) as error:
            raise KubeUnavailable(0, "WatchBroken", str(error)) from error
        finally:
            self._response.release_conn()

    def close(self) -> None:
        shutdown = getattr(self._response, "shutdown", None)
        # shutdown unblocks a read in progress in another thread; it refuses (ValueError)
        # when the connection is gone already.
        with contextlib.suppress(ValueError, OSError):
            if shutdown is not None:
                shutdown()
            self._response.close()


class KubeApi:
    """CoreV1 calls the agent makes, on a kubeconfig or the in-cluster service account."""

    def __init__(self, kubeconfig: Path | None = None) -> None:
        configuration = client.Configuration()
        try:
            if kubeconfig is not None:
                config.load_kube_config(config_file=str(kubeconfig),
                                        client_configuration=configuration)
            else:
                try:
                    config.load_incluster_config(client_configuration=configuration)
                except ConfigException:
                    config.load_kube_config(client_configuration=configuration)
        except (ConfigException, OSError, ValueError) as error:
            where = kubeconfig or "the in-cluster service account or ~/.kube/config"
            raise KubeConfigError(f"cannot load a cluster configuration from {where}: {error}"
                                  ) from error
        self.host = str(configuration.host)
        self._client = client.ApiClient(configuration)
        # Names the agent in the API server's audit log.
        self._client.user_agent = USER_AGENT
        self._core = client.CoreV1Api(self._client)

    def close(self) -> None:
        self._client.close()

    # -- reading ------------------------------------------------------------------------------

    def list(
        self, kind: Kind, namespace: str | None, label_selector: str = "",
        field_selector: str = "",
    ) -> tuple[list[dict[str, Any]], str]:
        """Every matching object and the list's resourceVersion (to watch from)."""
        body = self._json(self._lister(kind, namespace), **self._selectors(
            label_selector, field_selector), _request_timeout=REQUEST_TIMEOUT_S)
        items = [dict(item) for item in body.get("items") or []]
        return items, str((body.get("metadata") or {}).get("resourceVersion", ""))

    def watch(
        self, kind: Kind, namespace: str | None, resource_version: str, timeout_s: int,
        label_selector: str = "", field_selector: str = "",
    ) -> WatchStream:
        """Changes after resource_version until timeout_s (then the server ends the stream)."""
        lister = self._lister(kind, namespace)
        response = self._call(
            lister, watch=True, resource_version=resource_version, timeout_seconds=timeout_s,
            allow_watch_bookmarks=True, _preload_content=False,
            # The read timeout notices a connection that died without a word.
            _request_timeout=(REQUEST_TIMEOUT_S, timeout_s + REQUEST_TIMEOUT_S),
            **self._selectors(label_selector, field_selector),
        )
        return WatchStream(response)

    def get_pod(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            return self._json(self._core.read_namespaced_pod, name, namespace,
                              _request_timeout=REQUEST_TIMEOUT_S)
        except KubeError as error:
            if error.code == 404:
                return None
            raise

    def read_pod_log(self, namespace: str, name: str, container: str, tail_lines: int) -> bytes:
        response = self._call(
            self._core.read_namespaced_pod_log, name, namespace, container=container,
            tail_lines=tail_lines, _preload_content=False, _request_timeout=REQUEST_TIMEOUT_S,
        )
        return bytes(response.data)

    # -- writing ------------------------------------------------------------------------------

    def create_pod(self, namespace: str, body: Mapping[str, Any]) -> dict[str, Any]:
        return self._json(self._core.create_namespaced_pod, namespace, dict(body),
                          _request_timeout=REQUEST_TIMEOUT_S)

    def annotate_pod(
        self, namespace: str, name: str, annotations: Mapping[str, str]
    ) -> dict[str, Any]:
        patch = {"metadata": {"annotations": dict(annotations)}}
        return self._json(self._core.patch_namespaced_pod, name, namespace, patch,
                          _request_timeout=REQUEST_TIMEOUT_S)

    def delete_pod(self, namespace: str, name: str, grace_s: int) -> bool:
        """Delete (gracefully when grace_s > 0); False when the pod was already gone."""
        try:
            self._call(self._core.delete_namespaced_pod, name, namespace,
                       grace_period_seconds=grace_s, _preload_content=False,
                       _request_timeout=REQUEST_TIMEOUT_S)
        except KubeError as error:
            if error.code == 404:
                return False
            raise
        return True

    # -- the funnel ---------------------------------------------------------------------------

    def _lister(self, kind: Kind, namespace: str | None) -> Any:
        if kind == "nodes":
            return self._core.list_node
        if namespace is None:
            return self._core.list_pod_for_all_namespaces
        return lambda **kwargs: self._core.list_namespaced_pod(namespace, **kwargs)

    @staticmethod
    def _selectors(label_selector: str, field_selector: str) -> dict[str, str]:
        chosen = {}
        if label_selector:
            chosen["label_selector"] = label_selector
        if field_selector:
            chosen["field_selector"] = field_selector
        return chosen

    def _json(self, method: Any, *args: Any, **kwargs: Any) -> dict[str, Any]:
        response = self._call(method, *args, _preload_content=False, **kwargs)
        try:
            return dict(json.loads(response.data))
        except ValueError as error:
            raise KubeUnavailable(0, "BadResponse", f"not JSON: {error}") from error

    def _call(self, method: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return method(*args, **kwargs)
        except client.ApiException as error:
            raise _translate(error) from None
        except (urllib3.exceptions.HTTPError, OSError) as error:
            raise KubeUnavailable(0, "Unreachable", str(error)) from error


def _translate(error: Any) -> KubeError:
    code = int(error.status or 0)
    reason = str(error.reason or "")
    message = str(error.body or error.reason or "")
    try:
        status = json.loads(error.body) if error.body else {}
        reason = str(status.get("reason") or reason)
        message = str(status.get("message") or message)
    except (ValueError, AttributeError):
        pass
    if code == 0 or code >= 500:
        return KubeUnavailable(code, reason or "ServerError", message)
    return KubeError(code, reason, message)
