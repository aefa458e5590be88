"""The state behind `fake_api.FakeKubeAPI`: objects, the global resourceVersion, and the event
history that watches replay, with the write semantics of the real API server for core/v1
namespaces, nodes and pods (create, update, patch, graceful delete, binding, status, logs).

Stored objects are never mutated: every write stores a new dict, so readers may serialize
what they got after releasing the lock.
"""

from __future__ import annotations

import base64
import copy
import json
import random
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tests.kube import fake_rules as rules
from tests.kube.fake_rules import FieldError, KubeError, Obj


def _field(*path: str) -> Callable[[Obj], str]:
    def get(obj: Obj) -> str:
        value: Any = obj
        for part in path:
            value = value.get(part) if isinstance(value, dict) else None
        if isinstance(value, bool):
            return "true" if value else "false"
        return "" if value is None else str(value)

    return get


@dataclass(frozen=True)
class Kind:
    resource: str
    kind: str
    namespaced: bool
    subresources: tuple[str, ...]
    fields: dict[str, rules.FieldGetter]


NAME_FIELD = {"metadata.name": _field("metadata", "name")}
PODS = Kind(
    "pods",
    "Pod",
    True,
    ("status", "binding", "log"),
    NAME_FIELD
    | {
        "metadata.namespace": _field("metadata", "namespace"),
        "spec.nodeName": _field("spec", "nodeName"),
        "spec.restartPolicy": _field("spec", "restartPolicy"),
        "spec.schedulerName": _field("spec", "schedulerName"),
        "spec.serviceAccountName": _field("spec", "serviceAccountName"),
        "spec.hostNetwork": lambda o: "true" if o["spec"].get("hostNetwork") else "false",
        "status.phase": _field("status", "phase"),
        "status.podIP": _field("status", "podIP"),
        "status.nominatedNodeName": _field("status", "nominatedNodeName"),
    },
)
NODES = Kind(
    "nodes",
    "Node",
    False,
    ("status",),
    NAME_FIELD
    | {"spec.unschedulable": lambda o: "true" if o["spec"].get("unschedulable") else "false"},
)
NAMESPACES = Kind(
    "namespaces",
    "Namespace",
    False,
    ("status",),
    NAME_FIELD | {"status.phase": _field("status", "phase")},
)
KINDS = {k.resource: k for k in (PODS, NODES, NAMESPACES)}

# Metadata only the server sets; ignored in create bodies, carried over on updates.
SERVER_META = (
    "uid",
    "resourceVersion",
    "creationTimestamp",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "selfLink",
    "managedFields",
    "generation",
)
KEPT_ON_UPDATE = (
    "name",
    "namespace",
    "uid",
    "creationTimestamp",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "generateName",
)
NAMESPACE_MISMATCH = (
    "the namespace of the provided object does not match the namespace sent on the request"
)
NAME_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"  # what the server uses for generateName


@dataclass(frozen=True)
class Event:
    rv: int
    resource: str
    type: str  # ADDED, MODIFIED, DELETED
    obj: Obj
    prev: Obj | None  # the object before this event, to tell who stopped matching a selector


class Store:
    """Objects by (resource, namespace, name) plus the event history; `cond` guards all."""

    def __init__(self, max_history: int) -> None:
        self.cond = threading.Condition()
        self.rv = 0
        self.max_history = max_history
        self.history: list[Event] = []
        self.compacted_rv = 0  # a watch may resume from any RV >= this one
        self.objects: dict[str, dict[tuple[str, str], Obj]] = {r: {} for r in KINDS}
        self.logs: dict[tuple[str, str, str], str] = {}

    # --- reads -------------------------------------------------------------------------------

    def get(self, kind: Kind, ns: str, name: str) -> Obj:
        with self.cond:
            return self._stored(kind, ns, name)

    def _stored(self, kind: Kind, ns: str, name: str) -> Obj:
        obj = self.objects[kind.resource].get((ns, name))
        if obj is None:
            raise rules.not_found(kind.resource, name)
        return obj

    def matching(self, kind: Kind, ns: str, query: dict[str, str]) -> Callable[[Obj], bool]:
        """The filter a list or watch applies: URL namespace, labelSelector, fieldSelector."""
        labels = rules.parse_label_selector(query.get("labelSelector", ""))
        fields = rules.parse_field_selector(query.get("fieldSelector", ""), kind.fields)

        def match(obj: Obj) -> bool:
            meta = obj["metadata"]
            return (
                (not ns or meta.get("namespace") == ns)
                and all(r.matches(meta.get("labels") or {}) for r in labels)
                and rules.field_matches(obj, fields, kind.fields)
            )

        return match

    def list(self, kind: Kind, ns: str, query: dict[str, str]) -> Obj:
        match = self.matching(kind, ns, query)
        try:
            limit = int(query.get("limit") or 0)
            after = (
                tuple(json.loads(base64.b64decode(query["continue"])))
                if query.get("continue")
                else ()
            )
        except (ValueError, TypeError):
            raise rules.bad_request("continue key is not valid") from None
        with self.cond:
            items = sorted((k, o) for k, o in self.objects[kind.resource].items() if match(o))
            rv = self.rv
        items = [(k, o) for k, o in items if k > after]
        meta: Obj = {"resourceVersion": str(rv)}
        if 0 < limit < len(items):
            token = json.dumps(list(items[limit - 1][0])).encode()
            meta |= {
                "continue": base64.b64encode(token).decode(),
                "remainingItemCount": len(items) - limit,
            }
            items = items[:limit]
        # List items carry no kind/apiVersion, as from the real server.
        out = [{k: v for k, v in o.items() if k not in ("kind", "apiVersion")} for _, o in items]
        return {"kind": kind.kind + "List", "apiVersion": "v1", "metadata": meta, "items": out}

    # --- writes ------------------------------------------------------------------------------

    def _write(self, kind: Kind, obj: Obj, type_: str, prev: Obj | None) -> Obj:
        """Store obj (or drop it, for DELETED) under a fresh RV and record the event."""
        self.rv += 1
        obj["metadata"]["resourceVersion"] = str(self.rv)
        key = (obj["metadata"].get("namespace", ""), obj["metadata"]["name"])
        if type_ == "DELETED":
            del self.objects[kind.resource][key]
        else:
            self.objects[kind.resource][key] = obj
        self.history.append(Event(self.rv, kind.resource, type_, obj, prev))
        if len(self.history) > self.max_history:
            dropped = self.history[: len(self.history) - self.max_history]
            self.compacted_rv = dropped[-1].rv
            del self.history[: len(dropped)]
        self.cond.notify_all()
        return obj

    def compact(self) -> None:
        with self.cond:
            self.history.clear()
            self.compacted_rv = self.rv
            self.cond.notify_all()

    def create(self, kind: Kind, ns: str, body: Any) -> Obj:
        if not isinstance(body, dict):
            raise rules.bad_request(f"the body of the request is not a {kind.kind} object")
        if body.get("kind") not in (None, "", kind.kind):
            raise rules.bad_request(f"the object kind {body['kind']!r} is not {kind.kind}")
        obj = copy.deepcopy(body) | {"kind": kind.kind, "apiVersion": "v1"}
        meta = obj["metadata"] = obj.get("metadata") or {}
        if kind.namespaced:
            if meta.get("namespace") and meta["namespace"] != ns:
                raise rules.bad_request(NAMESPACE_MISMATCH)
            meta["namespace"] = ns
        else:
            meta.pop("namespace", None)
        for key in SERVER_META:
            meta.pop(key, None)
        with self.cond:
            if kind.namespaced and ("", ns) not in self.objects["namespaces"]:
                raise rules.not_found("namespaces", ns)
            if not meta.get("name") and meta.get("generateName"):
                meta["name"] = self._generate_name(kind, ns, meta["generateName"])
            self._prepare_create(kind, obj)
            self._validate(kind, obj)
            if (ns, meta["name"]) in self.objects[kind.resource]:
                raise rules.already_exists(kind.resource, meta["name"])
            meta["uid"] = str(uuid.uuid4())
            meta["creationTimestamp"] = rules.now_rfc3339()
            return self._write(kind, obj, "ADDED", None)

    def _generate_name(self, kind: Kind, ns: str, prefix: str) -> str:
        # The server retries on a clash (RetryGenerateName), so callers never see one.
        while True:
            name = prefix + "".join(random.choices(NAME_ALPHABET, k=5))
            if (ns, name) not in self.objects[kind.resource]:
                return name

    def _prepare_create(self, kind: Kind, obj: Obj) -> None:
        if kind is PODS:
            spec = obj["spec"] = obj.get("spec") or {}
            rules.default_pod_spec(spec)
            obj["status"] = {"phase": "Pending", "qosClass": rules.qos_class(spec)}
        elif kind is NAMESPACES:
            name = obj["metadata"].get("name") or ""
            labels = obj["metadata"].setdefault("labels", {}) or {}
            obj["metadata"]["labels"] = labels | {"kubernetes.io/metadata.name": name}
            obj["spec"] = {"finalizers": ["kubernetes"]}
            obj["status"] = {"phase": "Active"}
        else:
            obj.setdefault("spec", {})

    def _validate(self, kind: Kind, obj: Obj) -> None:
        meta = obj["metadata"]
        name = meta.get("name") or ""
        if not name:
            errors = [
                FieldError("metadata.name", "name or generateName is required", required=True)
            ]
        else:
            errors = rules.name_errors(name, "metadata.name", label=kind is NAMESPACES)
        errors += rules.metadata_errors(meta)
        if kind is PODS:
            errors += rules.pod_spec_errors(obj.get("spec") or {})
        if errors:
            raise rules.invalid(kind.kind, name, errors)

    def update(self, kind: Kind, ns: str, name: str, body: Any, *, status_only: bool) -> Obj:
        """PUT: the whole object, or only its status through the status subresource."""
        if not isinstance(body, dict):
            raise rules.bad_request(f"the body of the request is not a {kind.kind} object")
        with self.cond:
            return self._update(kind, self._stored(kind, ns, name), body, status_only)

    def patch(
        self, kind: Kind, ns: str, name: str, raw: bytes, content_type: str, *, status_only: bool
    ) -> Obj:
        try:
            patch = json.loads(raw or b"null")
        except ValueError as err:
            raise rules.bad_request(f"error decoding patch: {err}") from None
        apply = {
            "application/json-patch+json": rules.json_patch,
            "application/merge-patch+json": rules.merge_patch,
            "application/strategic-merge-patch+json": rules.strategic_merge_patch,
        }.get(content_type.split(";")[0].strip())
        if apply is None:
            raise KubeError(
                415,
                "UnsupportedMediaType",
                f"the body of the request was in an unknown format - accepted media types "
                f"include: application/json-patch+json, application/merge-patch+json, "
                f"application/strategic-merge-patch+json (got {content_type!r})",
            )
        with self.cond:
            old = self._stored(kind, ns, name)
            patched = apply(old, patch)
            if not isinstance(patched, dict):
                raise rules.bad_request("the patch does not produce an object")
            return self._update(kind, old, patched, status_only)

    def _update(self, kind: Kind, old: Obj, body: Obj, status_only: bool) -> Obj:
        meta = body.get("metadata") or {}
        name = old["metadata"]["name"]
        if meta.get("name") and meta["name"] != name:
            raise rules.bad_request(
                f"the name of the object ({meta['name']}) does not match the name on the URL "
                f"({name})"
            )
        if kind.namespaced and meta.get("namespace") not in (
            None,
            "",
            old["metadata"]["namespace"],
        ):
            raise rules.bad_request(NAMESPACE_MISMATCH)
        if meta.get("resourceVersion") not in (None, "", old["metadata"]["resourceVersion"]):
            raise rules.conflict(kind.resource, name, rules.STALE)
        if status_only:
            # Like the real status strategies: spec and ownerReferences stay, status and the
            # rest of the metadata (labels, annotations, finalizers) come from the body.
            new = copy.deepcopy(old)
            new["status"] = copy.deepcopy(body.get("status") or {})
            if kind is PODS and "qosClass" in old["status"]:
                new["status"]["qosClass"] = old["status"]["qosClass"]  # fixed at creation
            for key in ("labels", "annotations", "finalizers"):
                if key in meta:
                    new["metadata"][key] = copy.deepcopy(meta[key])
                else:
                    new["metadata"].pop(key, None)
            self._validate(kind, new)
        else:
            new = copy.deepcopy(body) | {"kind": kind.kind, "apiVersion": "v1"}
            new["metadata"] = new.get("metadata") or {}
            for key in KEPT_ON_UPDATE:
                if key in old["metadata"]:
                    new["metadata"][key] = old["metadata"][key]
                else:
                    new["metadata"].pop(key, None)
            # The main resource ignores status; namespaces keep their finalizers.
            for key in ("status", "spec") if kind is NAMESPACES else ("status",):
                new[key] = copy.deepcopy(old.get(key) or {})
            new.setdefault("spec", {})
            if kind is PODS:
                rules.default_pod_spec(new["spec"])
                if not rules.pod_spec_change_allowed(old["spec"], new["spec"]):
                    error = FieldError("spec", rules.POD_SPEC_FORBIDDEN, forbidden=True)
                    raise rules.invalid("Pod", name, [error])
            self._validate(kind, new)
        new["metadata"]["resourceVersion"] = old["metadata"]["resourceVersion"]
        if new == old:  # a no-op write keeps the RV and makes no event, like the real server
            return old
        return self._write(kind, new, "MODIFIED", old)

    def delete(self, kind: Kind, ns: str, name: str, options: Obj) -> Obj:
        """DELETE with DeleteOptions; the response body the real server sends."""
        with self.cond:
            obj = self._stored(kind, ns, name)
            self._check_preconditions(kind, obj, options.get("preconditions") or {})
            if kind is PODS:
                return self._delete_pod(obj, options.get("gracePeriodSeconds"))
            if kind is NAMESPACES:
                # Terminating, as the real server answers; then what the namespace controller
                # would do, at once: its pods go, and the namespace with them.
                terminating = copy.deepcopy(obj)
                terminating["metadata"]["deletionTimestamp"] = rules.now_rfc3339()
                terminating["status"] = {"phase": "Terminating"}
                terminating = self._write(NAMESPACES, terminating, "MODIFIED", obj)
                for (pod_ns, _), pod in list(self.objects["pods"].items()):
                    if pod_ns == name:
                        self._remove(PODS, pod)
                self._remove(NAMESPACES, terminating)
                return terminating
            self._remove(kind, obj)
            details = {"name": name, "kind": kind.resource, "uid": obj["metadata"]["uid"]}
            return {
                "kind": "Status",
                "apiVersion": "v1",
                "metadata": {},
                "status": "Success",
                "details": details,
            }

    def _check_preconditions(self, kind: Kind, obj: Obj, pre: Obj) -> None:
        meta, name = obj["metadata"], obj["metadata"]["name"]
        for field, label in (("uid", "UID"), ("resourceVersion", "ResourceVersion")):
            if pre.get(field) and pre[field] != meta[field]:
                raise rules.conflict(
                    kind.resource,
                    name,
                    f"Precondition failed: {label} in precondition: {pre[field]}, {label} in "
                    f"object meta: {meta[field]}",
                )

    def _delete_pod(self, pod: Obj, grace: int | None) -> Obj:
        """Graceful deletion as the real server does it (BeforeDelete + the pod strategy)."""
        spec, meta = pod["spec"], pod["metadata"]
        if meta.get("deletionTimestamp"):
            current = int(meta.get("deletionGracePeriodSeconds") or 0)
            # Already being deleted: only a shorter grace changes anything.
            if current and (grace is None or grace >= current):
                return pod
            grace = max(grace or 0, 0)
            started = rules.parse_rfc3339(meta["deletionTimestamp"]) - current
        else:
            if grace is None:
                grace = int(spec.get("terminationGracePeriodSeconds", 30))
            grace = 1 if grace < 0 else grace
            # No kubelet has containers to stop for these, so they go at once.
            if not spec.get("nodeName") or pod["status"].get("phase") in ("Succeeded", "Failed"):
                grace = 0
            started = rules.parse_rfc3339(rules.now_rfc3339())
        new = copy.deepcopy(pod)
        new["metadata"]["deletionTimestamp"] = rules.format_rfc3339(started + grace)
        new["metadata"]["deletionGracePeriodSeconds"] = grace
        marked = self._write(PODS, new, "MODIFIED", pod)
        if grace > 0:
            return marked
        # Grace 0: the server writes the deletion mark (a MODIFIED event), then deletes.
        return self._remove(PODS, marked)

    def _remove(self, kind: Kind, obj: Obj) -> Obj:
        """Delete obj: a DELETED event with the final object under a fresh RV."""
        meta = obj["metadata"]
        if kind is PODS:
            for key in [k for k in self.logs if k[:2] == (meta["namespace"], meta["name"])]:
                del self.logs[key]
        return self._write(kind, copy.deepcopy(obj), "DELETED", obj)

    def delete_collection(self, kind: Kind, ns: str, query: dict[str, str], options: Obj) -> Obj:
        match = self.matching(kind, ns, query)
        with self.cond:
            keys = [k for k, o in self.objects[kind.resource].items() if match(o)]
            items = [self.delete(kind, k[0], k[1], options) for k in sorted(keys)]
            rv = self.rv
        items = [{k: v for k, v in o.items() if k not in ("kind", "apiVersion")} for o in items]
        return {
            "kind": kind.kind + "List",
            "apiVersion": "v1",
            "metadata": {"resourceVersion": str(rv)},
            "items": items,
        }

    def bind(self, ns: str, name: str, body: Any) -> Obj:
        """POST pods/NAME/binding: what a scheduler does."""
        if not isinstance(body, dict):
            raise rules.bad_request("the body of the request is not a Binding object")
        if (body.get("metadata") or {}).get("name") not in (None, "", name):
            raise rules.bad_request("name in URL does not match name in Binding object")
        node = (body.get("target") or {}).get("name") or ""
        if not node:
            raise rules.invalid("Binding", name, [FieldError("target.name", required=True)])
        with self.cond:
            pod = self._stored(PODS, ns, name)
            if pod["metadata"].get("deletionTimestamp"):
                why = f"pod {name} is being deleted, cannot be assigned to a host"
                raise rules.conflict("pods/binding", name, why)
            if pod["spec"].get("nodeName"):
                why = f'pod {name} is already assigned to node "{pod["spec"]["nodeName"]}"'
                raise rules.conflict("pods/binding", name, why)
            new = copy.deepcopy(pod)
            new["spec"]["nodeName"] = node
            scheduled = {
                "type": "PodScheduled",
                "status": "True",
                "lastProbeTime": None,
                "lastTransitionTime": rules.now_rfc3339(),
            }
            conditions = new["status"].get("conditions") or []
            new["status"]["conditions"] = [
                c for c in conditions if c.get("type") != "PodScheduled"
            ] + [scheduled]
            self._write(PODS, new, "MODIFIED", pod)
        # The real response: a Status, not the Binding (the official client cannot parse it).
        return {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Success",
            "code": 201,
        }

    def log(self, ns: str, name: str, query: dict[str, str]) -> str:
        with self.cond:
            pod = self._stored(PODS, ns, name)
            names = [c["name"] for c in pod["spec"]["containers"]]
            container = query.get("container") or ""
            if not container and len(names) != 1:
                raise rules.bad_request(
                    f"a container name must be specified for pod {name}, choose one of: "
                    f"[{' '.join(names)}]"
                )
            container = container or names[0]
            if container not in names:
                raise rules.bad_request(f"container {container} is not valid for pod {name}")
            text = self.logs.get((ns, name, container))
            if text is None and container == names[0]:
                text = self.logs.get((ns, name, ""))
        if text is None:
            text = self._no_log_yet(pod, container)
        try:
            tail = int(query["tailLines"]) if query.get("tailLines") else None
            limit = int(query["limitBytes"]) if query.get("limitBytes") else None
        except ValueError as err:
            raise rules.bad_request(str(err)) from None
        if tail is not None:
            text = "".join(text.splitlines(keepends=True)[-tail:]) if tail > 0 else ""
        if limit is not None:
            text = text.encode()[:limit].decode(errors="ignore")
        return text

    @staticmethod
    def _no_log_yet(pod: Obj, container: str) -> str:
        """What the server says when no log was set: nothing for an unscheduled pod (the real
        server has no kubelet to ask), the kubelet's 400 for a container not started yet."""
        if not pod["spec"].get("nodeName"):
            return ""
        statuses = pod["status"].get("containerStatuses") or []
        state = next((s.get("state") or {} for s in statuses if s.get("name") == container), {})
        if "running" in state or "terminated" in state:
            return ""
        reason = (state.get("waiting") or {}).get("reason") or "ContainerCreating"
        name = pod["metadata"]["name"]
        raise rules.bad_request(
            f'container "{container}" in pod "{name}" is waiting to start: {reason}'
        )
