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

from dataplane_agent.domain.capacity import PoolReport
from dataplane_agent.domain.flyte import is_store_prefix
from dataplane_agent.domain.kube_nodes import (
    DEFAULT_SPOT_TOLERATIONS,
    DEFAULT_TOLERATIONS,
    RECLAIM_TAINTS,
    NodeRules,
    PriceRule,
    Toleration,
)
from dataplane_agent.yaml_nodes import (
    Loc,
    field_path,
    key_node_at,
    mark,
    node_at,
    os_reason,
    show,
    yaml_position,
)

DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
PURCHASE_TYPES = ("reserved", "on_demand", "spot")


class PoolFileError(ValueError):
    """A pool file that cannot be used; str() is the one-line message for the user."""


def _problem(reason: str, value: object) -> PydanticCustomError:
    context = {"reason": reason, "got": show(value)}
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


def _seconds(value: object) -> float:
    if isinstance(value, int | float) and not isinstance(value, bool) and value >= 0:
        return float(value)
    raise _problem("must be a number of seconds >= 0", value)


Seconds = Annotated[float, BeforeValidator(_seconds)]
OptionalPurchaseType = Annotated[
    Literal["", "reserved", "on_demand", "spot"],
    BeforeValidator(lambda v: v if v in ("", None) else _purchase_type(v)),
]


class PriceConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    purchase_type: OptionalPurchaseType = ""   # empty: any
    gpu_model: Text = ""                       # empty: any
    price_per_gpu_hour: Price


class TolerationConfig(BaseModel):
    """A pod toleration, written as in a pod spec."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    key: Text = ""
    operator: Literal["Exists", "Equal"] = "Equal"
    value: Text = ""
    effect: Literal["", "NoSchedule", "PreferNoSchedule", "NoExecute"] = ""

    def toleration(self) -> Toleration:
        return Toleration(self.key, self.operator, self.value, self.effect)


def _tolerations(defaults: tuple[Toleration, ...]) -> list[TolerationConfig]:
    return [TolerationConfig.model_validate(t.to_json()) for t in defaults]


class KubernetesConfig(BaseModel):
    """The agent launches pods in a cluster; its pools come from the cluster's GPU nodes."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    namespace: Name = "fleet-jobs"
    node_selector: Labels = Field(default_factory=dict)   # only nodes with these labels
    purchase_type_label: Text = ""    # the admin's label: reserved | on_demand | spot
    default_purchase_type: PurchaseType = "reserved"
    prices: list[PriceConfig] = Field(default_factory=list)
    tolerations: list[TolerationConfig] = Field(
        default_factory=lambda: _tolerations(DEFAULT_TOLERATIONS))
    spot_tolerations: list[TolerationConfig] = Field(
        default_factory=lambda: _tolerations(DEFAULT_SPOT_TOLERATIONS))
    reclaim_taints: list[Text] = Field(default_factory=list)   # added to the clouds' own
    service_account: Text = ""        # for pods of jobs that name none
    default_image: Text = ""          # for jobs that name none
    image_pull_grace_s: Seconds = 300.0
    unschedulable_grace_s: Seconds = 600.0

    def node_rules(self) -> NodeRules:
        return NodeRules(
            default_purchase_type=self.default_purchase_type,
            purchase_type_label=self.purchase_type_label,
            node_selector=dict(self.node_selector),
            tolerations=tuple(t.toleration() for t in self.tolerations),
            spot_tolerations=tuple(t.toleration() for t in self.spot_tolerations),
            reclaim_taints=RECLAIM_TAINTS | frozenset(self.reclaim_taints),
            prices=tuple(PriceRule(p.price_per_gpu_hour, p.purchase_type, p.gpu_model)
                         for p in self.prices),
        )


class PoolFile(BaseModel):
    """Either ``pools`` (the process launcher's fixed pools) or ``kubernetes``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    dataplane: DataplaneConfig
    pools: Annotated[list[PoolConfig], Field(min_length=1)] | None = None
    kubernetes: KubernetesConfig | None = None

    def pool_reports(self) -> list[PoolReport]:
        """The pools as declared, every GPU free (the launcher fills in the free count)."""
        return [
            PoolReport(
                name=pool.name, purchase_type=pool.purchase_type, gpu_model=pool.gpu_model,
                gpu_memory_gb=pool.gpu_memory_gb, gpu_total=pool.gpu_count,
                gpu_free=pool.gpu_count, price_per_gpu_hour=pool.price_per_gpu_hour,
                interconnect=pool.interconnect, labels=dict(pool.labels),
            )
            for pool in self.pools or []
        ]


def load_pool_file(path: Path) -> PoolFile:
    """Read and check a pool file; raises PoolFileError with file:line:col: field: reason."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise PoolFileError(f"{path}: cannot read the pool file: {os_reason(error)}") from error
    loader = yaml.SafeLoader(text)
    try:
        root = loader.get_single_node()
        data = loader.construct_document(root) if root is not None else None
    except yaml.MarkedYAMLError as error:
        where = yaml_position(error)
        raise PoolFileError(f"{path}:{where}: invalid YAML: {error.problem}") from error
    except yaml.YAMLError as error:
        raise PoolFileError(f"{path}: invalid YAML: {error}") from error
    finally:
        loader.dispose()
    if root is None or not isinstance(data, dict):
        raise PoolFileError(
            f"{path}:1:1: the pool file must be a YAML mapping with the keys dataplane and "
            "pools (or kubernetes)"
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

def _describe(path: Path, root: yaml.Node, error: ErrorDetails) -> str:
    loc: Loc = tuple(part for part in error["loc"] if isinstance(part, int | str))
    kind = error["type"]
    message = error["msg"]
    if kind == "missing":
        node = node_at(root, loc[:-1])
        message = "required field is missing"
    elif kind == "extra_forbidden":
        node = key_node_at(root, loc) or node_at(root, loc)
        message = "unknown field"
    else:
        node = node_at(root, loc)
        message = _reason(kind, message, error.get("input"))
    return f"{path}:{mark(node)}: {field_path(loc) or '(top level)'}: {message}"


def _reason(kind: str, default: str, value: object) -> str:
    if kind in ("model_type", "model_attributes_type", "dict_type"):
        return f"must be a mapping (got {show(value)})"
    if kind == "list_type":
        return f"must be a list (got {show(value)})"
    if kind == "too_short":
        return "must list at least one pool"
    return default


def _check_pools(path: Path, root: yaml.Node, pool_file: PoolFile) -> None:
    """Rules across fields: pools or kubernetes, not both; a GPU pool names its model;
    pool names are unique."""
    if pool_file.pools is None and pool_file.kubernetes is None:
        _fail(path, root, (), "needs either pools (fixed pools, local processes) or "
              "kubernetes (pools from the cluster's GPU nodes)")
    if pool_file.pools is not None and pool_file.kubernetes is not None:
        _fail(path, root, ("kubernetes",), "cannot be set with pools: on Kubernetes the pools "
              "come from the cluster's GPU nodes")
    first_at: dict[str, int] = {}
    for index, pool in enumerate(pool_file.pools or []):
        if pool.gpu_count > 0 and not pool.gpu_model.strip():
            _fail(path, root, ("pools", index, "gpu_model"),
                  "must be set when gpu_count > 0 (a CPU pool has gpu_count 0)")
        if pool.name in first_at:
            _fail(path, root, ("pools", index, "name"),
                  f"duplicate pool name {pool.name!r} (also pools[{first_at[pool.name]}].name)")
        first_at[pool.name] = index


def _fail(path: Path, root: yaml.Node, loc: Loc, reason: str) -> NoReturn:
    where = field_path(loc) or "(top level)"
    raise PoolFileError(f"{path}:{mark(node_at(root, loc))}: {where}: {reason}")


def _check_duplicate_keys(path: Path, node: yaml.Node, loc: Loc) -> None:
    if isinstance(node, yaml.MappingNode):
        seen: set[object] = set()
        for key_node, value_node in node.value:
            key = key_node.value
            if key in seen:
                where = mark(key_node)
                raise PoolFileError(f"{path}:{where}: {field_path((*loc, key))}: duplicate key")
            seen.add(key)
            _check_duplicate_keys(path, value_node, (*loc, key))
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _check_duplicate_keys(path, item, (*loc, index))
