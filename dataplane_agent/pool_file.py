"""The pool file: which dataplane this agent serves and its GPU pools (YAML).

Errors name the file, the line and column of the offending node, the field path and the
reason, e.g. ``pools.yaml:9:17: pools[0].gpu_count: must be an integer >= 0 (got -2)``.
Line numbers come from PyYAML's node tree, matched to pydantic's error locations.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from typing import Annotated, Literal, NoReturn

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError
from pydantic_core import ErrorDetails, PydanticCustomError

from dataplane_agent.domain.flyte import is_store_prefix

DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
PURCHASE_TYPES = ("reserved", "on_demand", "spot")


class PoolFileError(ValueError):
    """A pool file that cannot be used; str() is the one-line message for the user."""


def _problem(reason: str, value: object) -> PydanticCustomError:
    context = {"reason": reason, "got": _show(value)}
    return PydanticCustomError("pool_file", "{reason} (got {got})", context)


def _dns_label(value: object) -> str:
    if isinstance(value, str) and len(value) <= 63 and DNS_LABEL.match(value):
        return value
    raise _problem(
        "must be a DNS-1123 label: lowercase letters, digits and '-', starting and ending "
        "with a letter or digit, at most 63 characters", value,
    )


def _non_empty_string(value: object) -> str:
    if isinstance(value, str) and value.strip():
        return value
    raise _problem("must be a non-empty string", value)


def _string(value: object) -> str:
    if isinstance(value, str):
        return value
    raise _problem("must be a string (quote it)", value)


def _count(value: object) -> int:
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    raise _problem("must be an integer >= 0", value)


def _price(value: object) -> float:
    if isinstance(value, int | float) and not isinstance(value, bool) and value >= 0:
        return float(value)
    raise _problem("must be a number >= 0", value)


def _purchase_type(value: object) -> str:
    if value in PURCHASE_TYPES:
        return str(value)
    raise _problem(f"must be one of {', '.join(PURCHASE_TYPES)}", value)


def _labels(value: object) -> dict[str, str]:
    if not isinstance(value, dict):
        raise _problem("must be a mapping of strings to strings", value)
    for key, item in value.items():
        if not isinstance(key, str) or not isinstance(item, str):
            raise _problem("must be a mapping of strings to strings (quote numbers)", {key: item})
    return value


def _store_prefix(value: object) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not is_store_prefix(value):
        raise _problem(
            "must be an absolute path or a URL with a scheme "
            "(/srv/fleet-store, file:///srv/fleet-store, s3://bucket/fleet/eu)", value,
        )
    scheme = value.split("://", 1)[0].lower() if "://" in value else "file"
    problem = _filesystem_problem(scheme)
    if problem is not None:
        raise _problem(problem, value)
    return value


def _filesystem_problem(scheme: str) -> str | None:
    """Why fsspec could not open the scheme here (an unknown one, a missing package)."""
    from fsspec.registry import (  # type: ignore[import-untyped]
        known_implementations,
        registry,
    )

    if scheme in registry:
        return None
    known = known_implementations.get(scheme)
    if known is None:
        return f"fsspec knows no filesystem for the scheme {scheme!r}"
    package = str(known["class"]).split(".", 1)[0]
    if importlib.util.find_spec(package) is None:
        return str(known.get("err") or f"the scheme {scheme!r} needs the package {package}")
    return None


Name = Annotated[str, BeforeValidator(_dns_label)]
NonEmpty = Annotated[str, BeforeValidator(_non_empty_string)]
Text = Annotated[str, BeforeValidator(_string)]
Count = Annotated[int, BeforeValidator(_count)]
Price = Annotated[float, BeforeValidator(_price)]
PurchaseType = Annotated[
    Literal["reserved", "on_demand", "spot"], BeforeValidator(_purchase_type)
]
Labels = Annotated[dict[str, str], BeforeValidator(_labels)]
StorePrefix = Annotated[str | None, BeforeValidator(_store_prefix)]


class DataplaneConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: Name
    region: NonEmpty
    cloud: NonEmpty
    labels: Labels = Field(default_factory=dict)
    # Where Flyte tasks keep their data in this region (any fsspec URL or an absolute path);
    # None: <workdir>/store.
    store_prefix: StorePrefix = None


class PoolConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: Name
    purchase_type: PurchaseType
    gpu_model: Text = ""
    gpu_memory_gb: Count
    gpu_count: Count
    price_per_gpu_hour: Price = 0.0
    interconnect: Text = ""
    labels: Labels = Field(default_factory=dict)


class PoolFile(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    dataplane: DataplaneConfig
    pools: Annotated[list[PoolConfig], Field(min_length=1)]

    def gpu_totals(self) -> dict[str, int]:
        return {pool.name: pool.gpu_count for pool in self.pools}


def load_pool_file(path: Path) -> PoolFile:
    """Read and check a pool file; raises PoolFileError with file:line:col: field: reason."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise PoolFileError(f"{path}: cannot read the pool file: {_os_reason(error)}") from error
    loader = yaml.SafeLoader(text)
    try:
        root = loader.get_single_node()
        data = loader.construct_document(root) if root is not None else None
    except yaml.MarkedYAMLError as error:
        where = _yaml_position(error)
        raise PoolFileError(f"{path}:{where}: invalid YAML: {error.problem}") from error
    except yaml.YAMLError as error:
        raise PoolFileError(f"{path}: invalid YAML: {error}") from error
    finally:
        loader.dispose()
    if root is None or not isinstance(data, dict):
        raise PoolFileError(
            f"{path}:1:1: the pool file must be a YAML mapping with the keys dataplane and pools"
        )
    _check_duplicate_keys(path, root, ())
    try:
        pool_file = PoolFile.model_validate(data)
    except ValidationError as error:
        first = error.errors(include_url=False)[0]
        raise PoolFileError(_describe(path, root, first)) from error
    _check_pools(path, root, pool_file)
    return pool_file


# -- messages -----------------------------------------------------------------------------------

Loc = tuple[int | str, ...]


def _describe(path: Path, root: yaml.Node, error: ErrorDetails) -> str:
    loc: Loc = tuple(part for part in error["loc"] if isinstance(part, int | str))
    kind = error["type"]
    message = error["msg"]
    if kind == "missing":
        node = _node_at(root, loc[:-1])
        message = "required field is missing"
    elif kind == "extra_forbidden":
        node = _key_node_at(root, loc) or _node_at(root, loc)
        message = "unknown field"
    else:
        node = _node_at(root, loc)
        message = _reason(kind, message, error.get("input"))
    return f"{path}:{_mark(node)}: {_field_path(loc) or '(top level)'}: {message}"


def _reason(kind: str, default: str, value: object) -> str:
    if kind in ("model_type", "model_attributes_type", "dict_type"):
        return f"must be a mapping (got {_show(value)})"
    if kind == "list_type":
        return f"must be a list (got {_show(value)})"
    if kind == "too_short":
        return "must list at least one pool"
    return default


def _check_pools(path: Path, root: yaml.Node, pool_file: PoolFile) -> None:
    """Rules across fields: a GPU pool names its model; pool names are unique."""
    first_at: dict[str, int] = {}
    for index, pool in enumerate(pool_file.pools):
        if pool.gpu_count > 0 and not pool.gpu_model.strip():
            _fail(path, root, ("pools", index, "gpu_model"),
                  "must be set when gpu_count > 0 (a CPU pool has gpu_count 0)")
        if pool.name in first_at:
            _fail(path, root, ("pools", index, "name"),
                  f"duplicate pool name {pool.name!r} (also pools[{first_at[pool.name]}].name)")
        first_at[pool.name] = index


def _fail(path: Path, root: yaml.Node, loc: Loc, reason: str) -> NoReturn:
    raise PoolFileError(f"{path}:{_mark(_node_at(root, loc))}: {_field_path(loc)}: {reason}")


def _check_duplicate_keys(path: Path, node: yaml.Node, loc: Loc) -> None:
    if isinstance(node, yaml.MappingNode):
        seen: set[object] = set()
        for key_node, value_node in node.value:
            key = key_node.value
            if key in seen:
                where = _mark(key_node)
                raise PoolFileError(f"{path}:{where}: {_field_path((*loc, key))}: duplicate key")
            seen.add(key)
            _check_duplicate_keys(path, value_node, (*loc, key))
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _check_duplicate_keys(path, item, (*loc, index))


# -- from a pydantic location to a YAML node ------------------------------------------------------


def _node_at(root: yaml.Node, loc: Loc) -> yaml.Node:
    """The deepest node along loc (the parent when the rest of the path does not exist)."""
    node = root
    for part in loc:
        child = _child(node, part)
        if child is None:
            break
        node = child
    return node


def _key_node_at(root: yaml.Node, loc: Loc) -> yaml.Node | None:
    parent = _node_at(root, loc[:-1])
    if isinstance(parent, yaml.MappingNode):
        for key_node, _value in parent.value:
            if key_node.value == loc[-1]:
                return key_node  # type: ignore[no-any-return]
    return None


def _child(node: yaml.Node, part: int | str) -> yaml.Node | None:
    if isinstance(node, yaml.MappingNode) and isinstance(part, str):
        for key_node, value_node in node.value:
            if key_node.value == part:
                return value_node  # type: ignore[no-any-return]
    if isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
        return node.value[part]  # type: ignore[no-any-return]
    return None


def _mark(node: yaml.Node) -> str:
    return f"{node.start_mark.line + 1}:{node.start_mark.column + 1}"


def _yaml_position(error: yaml.MarkedYAMLError) -> str:
    mark = error.problem_mark or error.context_mark
    return "1:1" if mark is None else f"{mark.line + 1}:{mark.column + 1}"


def _field_path(loc: Loc) -> str:
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else part)
    return text


def _show(value: object) -> str:
    if value is None:
        return "nothing"
    if isinstance(value, str):
        return repr(value)
    if isinstance(value, dict | list):
        return yaml.safe_dump(value, default_flow_style=True, width=80).strip()
    return str(value)


def _os_reason(error: Exception) -> str:
    return error.strerror if isinstance(error, OSError) and error.strerror else str(error)


