"""The rules of the Kubernetes API server that `fake_api.FakeKubeAPI` applies, as pure functions.

Errors as `Status` objects, name/label validation, label and field selectors, the three
patch formats, and pod defaulting. Messages copy the real server's wording where clients or
people read them; anything not listed here the fake does not check.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

Obj = dict[str, Any]

DNS1123_LABEL = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
DNS1123_SUBDOMAIN = DNS1123_LABEL + r"(\." + DNS1123_LABEL + r")*"
QUALIFIED_NAME = r"([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]"
LABEL_VALUE = r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?"

SUBDOMAIN_MSG = (
    "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' "
    "or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex "
    f"used for validation is '{DNS1123_SUBDOMAIN}')"
)
LABEL_MSG = (
    "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and "
    "must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex "
    f"used for validation is '{DNS1123_LABEL}')"
)
QUALIFIED_NAME_MSG = (
    "name part must consist of alphanumeric characters, '-', '_' or '.', and must start and "
    "end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex "
    f"used for validation is '{QUALIFIED_NAME}')"
)
LABEL_VALUE_MSG = (
    "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or "
    "'.', and must start and end with an alphanumeric character (e.g. 'MyValue',  or "
    f"'my_value',  or '12345', regex used for validation is '{LABEL_VALUE}')"
)


def now_rfc3339(offset_s: float = 0.0) -> str:
    """A timestamp in the server's form, e.g. 2026-11-24T21:18:40Z."""
    return format_rfc3339(datetime.now(UTC).timestamp() + offset_s)


def format_rfc3339(epoch_s: float) -> str:
    return datetime.fromtimestamp(epoch_s, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_rfc3339(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


class KubeError(Exception):
    """An API error; `status()` is the body the real server sends."""

    def __init__(
        self,
        code: int,
        reason: str,
        message: str,
        *,
        name: str = "",
        kind: str = "",
        causes: list[Obj] | None = None,
    ) -> None:
        super().__init__(message)
        self.code, self.reason, self.message = code, reason, message
        self.name, self.kind, self.causes = name, kind, causes or []

    def status(self) -> Obj:
        body: Obj = {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        }
        if self.name or self.kind or self.causes:
            details: Obj = {"name": self.name, "kind": self.kind}
            if self.causes:
                details["causes"] = self.causes
            body["details"] = details
        return body


def not_found(resource: str, name: str) -> KubeError:
    return KubeError(404, "NotFound", f'{resource} "{name}" not found', name=name, kind=resource)


def already_exists(resource: str, name: str) -> KubeError:
    msg = f'{resource} "{name}" already exists'
    return KubeError(409, "AlreadyExists", msg, name=name, kind=resource)


def conflict(resource: str, name: str, why: str) -> KubeError:
    msg = f'Operation cannot be fulfilled on {resource} "{name}": {why}'
    return KubeError(409, "Conflict", msg, name=name, kind=resource)


STALE = (
    "the object has been modified; please apply your changes to the latest version and try again"
)


def bad_request(message: str) -> KubeError:
    return KubeError(400, "BadRequest", message)


@dataclass(frozen=True)
class FieldError:
    """One entry of a 422 Invalid: `path: Invalid value: "v": detail` or `path: Required value`."""

    path: str
    detail: str = ""
    value: Any = None
    required: bool = False
    forbidden: bool = False

    def reason(self) -> str:
        if self.forbidden:
            return "FieldValueForbidden"
        return "FieldValueRequired" if self.required else "FieldValueInvalid"

    def text(self) -> str:
        if self.forbidden:
            return f"Forbidden: {self.detail}"
        if self.required:
            return "Required value" + (f": {self.detail}" if self.detail else "")
        return f'Invalid value: "{self.value}": {self.detail}'


def invalid(kind: str, name: str, errors: list[FieldError]) -> KubeError:
    parts = [f"{e.path}: {e.text()}" for e in errors]
    joined = parts[0] if len(parts) == 1 else "[" + ", ".join(parts) + "]"
    causes = [
        {
            "reason": e.reason(),
            "message": e.text(),
            "field": e.path,
        }
        for e in errors
    ]
    return KubeError(
        422, "Invalid", f'{kind} "{name}" is invalid: {joined}', name=name, kind=kind, causes=causes
    )


# --- validation ------------------------------------------------------------------------------


def name_errors(name: str, path: str, *, label: bool) -> list[FieldError]:
    """DNS-1123 label (namespaces, container names) or subdomain (pods, nodes)."""
    limit, pattern, msg = (63, DNS1123_LABEL, LABEL_MSG)
    if not label:
        limit, pattern, msg = 253, DNS1123_SUBDOMAIN, SUBDOMAIN_MSG
    if len(name) > limit:
        return [FieldError(path, f"must be no more than {limit} characters", name)]
    if not re.fullmatch(pattern, name):
        return [FieldError(path, msg, name)]
    return []


def label_key_error(key: str) -> str:
    """Why key is not a valid label/annotation key, or ""."""
    prefix, _, name = key.rpartition("/")
    if "/" in key and (not prefix or name_errors(prefix, "", label=False)):
        return "prefix part " + SUBDOMAIN_MSG
    if len(name) > 63:
        return "name part must be no more than 63 characters"
    if not re.fullmatch(QUALIFIED_NAME, name):
        return QUALIFIED_NAME_MSG
    return ""


def label_value_error(value: str) -> str:
    if len(value) > 63:
        return "must be no more than 63 characters"
    return "" if re.fullmatch(LABEL_VALUE, value) else LABEL_VALUE_MSG


def metadata_errors(meta: Obj) -> list[FieldError]:
    errors: list[FieldError] = []
    for key, value in (meta.get("labels") or {}).items():
        if why := label_key_error(key):
            errors.append(FieldError("metadata.labels", why, key))
        if not isinstance(value, str) or (why := label_value_error(value)):
            errors.append(FieldError("metadata.labels", why or "must be a string", value))
    for key in meta.get("annotations") or {}:
        if why := label_key_error(key):
            errors.append(FieldError("metadata.annotations", why, key))
    return errors


def pod_spec_errors(spec: Obj) -> list[FieldError]:
    containers = spec.get("containers") or []
    if not containers:
        return [FieldError("spec.containers", required=True)]
    errors: list[FieldError] = []
    seen: set[str] = set()
    for i, container in enumerate(containers):
        path = f"spec.containers[{i}]"
        name = container.get("name") or ""
        if not name:
            errors.append(FieldError(f"{path}.name", required=True))
        else:
            errors += name_errors(name, f"{path}.name", label=True)
            if name in seen:
                errors.append(FieldError(f"{path}.name", "Duplicate value", name))
            seen.add(name)
        if not container.get("image"):
            errors.append(FieldError(f"{path}.image", required=True))
    return errors


# Fields of a pod's spec that an update may change (ValidatePodUpdate); all others are fixed.
POD_MUTABLE_SPEC = ("activeDeadlineSeconds", "tolerations", "terminationGracePeriodSeconds")
POD_SPEC_FORBIDDEN = (
    "pod updates may not change fields other than `spec.containers[*].image`,"
    "`spec.initContainers[*].image`,`spec.activeDeadlineSeconds`,`spec.tolerations` (only "
    "additions to existing tolerations),`spec.terminationGracePeriodSeconds` (allow it to be "
    "set to 1 if it was previously negative)"
)


def pod_spec_change_allowed(old: Obj, new: Obj) -> bool:
    def fixed_part(spec: Obj) -> Obj:
        spec = {k: v for k, v in spec.items() if k not in POD_MUTABLE_SPEC}
        for key in ("containers", "initContainers"):
            if key in spec:
                spec[key] = [{k: v for k, v in c.items() if k != "image"} for c in spec[key]]
        return spec

    return fixed_part(old) == fixed_part(new)


# --- defaulting ------------------------------------------------------------------------------


def default_pod_spec(spec: Obj) -> None:
    """The defaults the real server fills in (SetDefaults_Pod and friends), in place."""
    spec.setdefault("restartPolicy", "Always")
    spec.setdefault("terminationGracePeriodSeconds", 30)
    spec.setdefault("dnsPolicy", "ClusterFirst")
    spec.setdefault("schedulerName", "default-scheduler")
    spec.setdefault("securityContext", {})
    spec.setdefault("enableServiceLinks", True)
    for container in spec.get("containers") or []:
        container.setdefault("terminationMessagePath", "/dev/termination-log")
        container.setdefault("terminationMessagePolicy", "File")
        image = str(container.get("image", ""))
        latest = ":" not in image.rsplit("/", 1)[-1] or image.endswith(":latest")
        container.setdefault("imagePullPolicy", "Always" if latest else "IfNotPresent")
        resources = container.setdefault("resources", {})
        # A limit without a request means request == limit; GPU accounting relies on this.
        limits = resources.get("limits") or {}
        if limits:
            requests = resources.setdefault("requests", {})
            for name, amount in limits.items():
                requests.setdefault(name, amount)


def qos_class(spec: Obj) -> str:
    containers = spec.get("containers") or []
    compute = ("cpu", "memory")
    resources = [c.get("resources") or {} for c in containers]
    if not any(
        set(r.get(k) or {}) & set(compute) for r in resources for k in ("requests", "limits")
    ):
        return "BestEffort"
    for r in resources:
        limits, requests = r.get("limits") or {}, r.get("requests") or {}
        if any(limits.get(x) is None or requests.get(x, limits[x]) != limits[x] for x in compute):
            return "Burstable"
    return "Guaranteed"


# --- selectors -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Requirement:
    key: str
    op: str  # "=", "!=", "in", "notin", "exists", "!", ">", "<"
    values: tuple[str, ...] = field(default=())

    def matches(self, labels: dict[str, str]) -> bool:
        has, value = self.key in labels, labels.get(self.key, "")
        if self.op == "exists":
            return has
        if self.op == "!":
            return not has
        if self.op in ("=", "in"):
            return has and value in self.values
        if self.op in ("!=", "notin"):
            return not has or value not in self.values
        try:
            number, bound = int(value), int(self.values[0])
        except ValueError:
            return False
        return has and (number > bound if self.op == ">" else number < bound)


def split_top_level(text: str) -> list[str]:
    """Split on commas that are not inside parentheses."""
    parts, depth, current = [], 0, ""
    for char in text:
        depth += {"(": 1, ")": -1}.get(char, 0)
        if char == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += char
    parts.append(current)
    return parts


def parse_label_selector(text: str) -> list[Requirement]:
    """labelSelector as the server parses it; malformed → 400 BadRequest."""
    requirements: list[Requirement] = []
    if not text.strip():
        return requirements
    for raw in split_top_level(text):
        term = raw.strip()
        found = re.fullmatch(r"(\S+)\s+(in|notin)\s*\((.*)\)", term)
        if found:
            values = tuple(v.strip() for v in found.group(3).split(","))
            req = Requirement(found.group(1), found.group(2), values)
        elif term.startswith("!"):
            req = Requirement(term[1:].strip(), "!")
        else:
            found = re.fullmatch(r"([^=!<>\s]*)\s*(==|!=|=|>|<)\s*(.*)", term)
            if found:
                op = "=" if found.group(2) == "==" else found.group(2)
                req = Requirement(found.group(1), op, (found.group(3).strip(),))
            else:
                req = Requirement(term, "exists")
        if why := label_key_error(req.key):
            raise bad_request(
                f'unable to parse requirement: key: Invalid value: "{req.key}": {why}'
            )
        for value in req.values:
            why = label_value_error(value)
            if req.op in (">", "<") and not re.fullmatch(r"-?\d+", value):
                why = "for 'Gt', 'Lt' operators, the value must be an integer"
            if why:
                raise bad_request(
                    f'unable to parse requirement: values: Invalid value: "{value}": {why}'
                )
        requirements.append(req)
    return requirements


FieldGetter = Callable[[Obj], str]


def parse_field_selector(text: str, fields: dict[str, FieldGetter]) -> list[tuple[str, str, str]]:
    """fieldSelector → [(field, op, value)] with op "=" or "!="; unknown fields → 400."""
    terms: list[tuple[str, str, str]] = []
    if not text.strip():
        return terms
    for raw in text.split(","):
        found = re.fullmatch(r"([^=!]+)(==|!=|=)(.*)", raw.strip())
        if not found:
            raise bad_request(f"invalid selector: '{text}'; can't understand '{raw}'")
        name, op, value = found.group(1).strip(), found.group(2), found.group(3).strip()
        if name not in fields:
            raise bad_request(f"field label not supported: {name}")
        terms.append((name, "!=" if op == "!=" else "=", value))
    return terms


def field_matches(
    obj: Obj, terms: list[tuple[str, str, str]], fields: dict[str, FieldGetter]
) -> bool:
    return all((fields[name](obj) == value) == (op == "=") for name, op, value in terms)


# --- patches ---------------------------------------------------------------------------------


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


# Lists that strategic merge patch merges item by item, by this key (patchMergeKey in the API).
MERGE_KEYS = {
    "conditions": "type",
    "containers": "name",
    "initContainers": "name",
    "env": "name",
    "volumes": "name",
    "volumeMounts": "mountPath",
    "ownerReferences": "uid",
    "imagePullSecrets": "name",
    "addresses": "type",
}


def strategic_merge_patch(target: Any, patch: Any) -> Any:
    """Strategic merge patch for what core/v1 pods and nodes need: maps merge, lists with a
    merge key merge by it ($patch: delete removes an item), finalizers are a set union, other
    lists are replaced. Other $-directives are ignored."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    if patch.get("$patch") == "replace":
        return {k: copy.deepcopy(v) for k, v in patch.items() if not k.startswith("$")}
    result = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if key.startswith("$"):
            continue
        old = result.get(key)
        if value is None:
            result.pop(key, None)
        elif key in MERGE_KEYS and isinstance(value, list) and isinstance(old, list):
            result[key] = merge_list(old, value, MERGE_KEYS[key])
        elif key == "finalizers" and isinstance(value, list) and isinstance(old, list):
            result[key] = old + [v for v in value if v not in old]
        else:
            result[key] = strategic_merge_patch(old, value)
    return result


def merge_list(old: list[Any], patch: list[Any], merge_key: str) -> list[Any]:
    merged = copy.deepcopy(old)
    for item in patch:
        key = item.get(merge_key) if isinstance(item, dict) else None
        at = next(
            (i for i, o in enumerate(merged) if isinstance(o, dict) and o.get(merge_key) == key),
            None,
        )
        if isinstance(item, dict) and item.get("$patch") == "delete":
            if at is not None:
                del merged[at]
        elif at is None:
            merged.append(strategic_merge_patch({}, item))
        else:
            merged[at] = strategic_merge_patch(merged[at], item)
    return merged


def json_patch(doc: Any, ops: Any) -> Any:
    """RFC 6902 JSON patch: add, remove, replace, test, move, copy. Failures → 422 Invalid."""
    if not isinstance(ops, list):
        raise bad_request("json patch must be a list of operations")
    doc = copy.deepcopy(doc)
    for op in ops:
        kind, path = op.get("op"), op.get("path", "")
        if kind == "test":
            if resolve(doc, path) != op.get("value"):
                raise KubeError(422, "Invalid", f"testing value {path} failed: test failed")
        elif kind == "remove":
            doc = pointer_set(doc, path, None, remove=True)
        elif kind in ("add", "replace"):
            if kind == "replace":
                resolve(doc, path)  # the target must exist
            doc = pointer_set(doc, path, copy.deepcopy(op.get("value")), insert=kind == "add")
        elif kind in ("move", "copy"):
            value = copy.deepcopy(resolve(doc, op.get("from", "")))
            if kind == "move":
                doc = pointer_set(doc, op["from"], None, remove=True)
            doc = pointer_set(doc, path, value, insert=True)
        else:
            raise bad_request(f"Unexpected kind: {kind}")
    return doc


def pointer_parts(path: str) -> list[str]:
    if path == "":
        return []
    if not path.startswith("/"):
        raise KubeError(422, "Invalid", f"JSON pointer must start with '/': {path}")
    return [p.replace("~1", "/").replace("~0", "~") for p in path[1:].split("/")]


def resolve(doc: Any, path: str, parts: list[str] | None = None) -> Any:
    for part in pointer_parts(path) if parts is None else parts:
        try:
            doc = doc[int(part)] if isinstance(doc, list) else doc[part]
        except (KeyError, IndexError, ValueError, TypeError):
            raise KubeError(422, "Invalid", f"path {path} does not exist: missing value") from None
    return doc


def pointer_set(
    doc: Any, path: str, value: Any, *, remove: bool = False, insert: bool = False
) -> Any:
    parts = pointer_parts(path)
    if not parts:
        return value
    parent, last = resolve(doc, path, parts[:-1]), parts[-1]
    if isinstance(parent, list):
        index = len(parent) if last == "-" else int(last) if last.isdigit() else -1
        if not 0 <= index <= len(parent) - (0 if insert and not remove else 1):
            raise KubeError(422, "Invalid", f"index {last} out of bounds in {path}")
        if remove:
            del parent[index]
        elif insert:
            parent.insert(index, value)
        else:
            parent[index] = value
    elif isinstance(parent, dict):
        if remove and last not in parent:
            raise KubeError(422, "Invalid", f"path {path} does not exist: missing value")
        if remove:
            del parent[last]
        else:
            parent[last] = value
    else:
        raise KubeError(422, "Invalid", f"path {path} does not exist: missing value")
    return doc
