"""GPU pools from a cluster's nodes: which nodes count, what they are, what is free.

Pure: it reads Node and Pod objects as the Kubernetes API returns them (JSON dicts,
camelCase keys) and never talks to a server.

A node counts toward a pool when it is Ready, schedulable (not cordoned), not being
deleted or reclaimed, matches the agent's node selector, has allocatable ``nvidia.com/gpu``
and carries no NoSchedule/NoExecute taint that the pool's pods would not tolerate. Nodes
that count are grouped by (GPU model, GPU memory, purchase type, region); each group is one
pool. A pool's free GPUs are its nodes' allocatable GPUs minus the GPU requests of every
pod bound to them that has not ended (any namespace: others' pods use GPUs too), minus the
GPUs of this agent's own pods that wait to be scheduled into it.

Where the facts come from:

| fact          | labels, in order of preference                                          |
|---------------|-------------------------------------------------------------------------|
| GPU model     | nvidia.com/gpu.product (feature discovery), cloud.google.com/gke-accelerator |
| GPU memory    | nvidia.com/gpu.memory (MiB)                                             |
| purchase type | the admin's label, then the clouds' (``PURCHASE_LABELS``: Karpenter,     |
|               | EKS, AKS, GKE spot and preemptible); otherwise the configured default   |
| region        | topology.kubernetes.io/region                                           |

A node is being reclaimed (spot reclaim, scale-down, shutdown) when it is being deleted
or carries one of the reclaim taints below (or one the admin adds); the attempts on it are
preempted at once.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from dataplane_agent.domain.capacity import PoolReport

GPU_RESOURCE = "nvidia.com/gpu"
PRODUCT_LABEL = "nvidia.com/gpu.product"
GKE_ACCELERATOR_LABEL = "cloud.google.com/gke-accelerator"
MEMORY_LABEL = "nvidia.com/gpu.memory"
REGION_LABEL = "topology.kubernetes.io/region"

# The clouds' labels for how a node was bought: label -> {value: purchase type}.
PURCHASE_LABELS: dict[str, dict[str, str]] = {
    "karpenter.sh/capacity-type": {
        "spot": "spot", "on-demand": "on_demand", "reserved": "reserved",
    },
    "eks.amazonaws.com/capacityType": {"SPOT": "spot", "ON_DEMAND": "on_demand"},
    "kubernetes.azure.com/scalesetpriority": {"spot": "spot", "regular": "on_demand"},
    "cloud.google.com/gke-spot": {"true": "spot"},
    "cloud.google.com/gke-preemptible": {"true": "spot"},
}
ADMIN_PURCHASE_VALUES = {
    "reserved": "reserved", "on_demand": "on_demand", "on-demand": "on_demand", "spot": "spot",
}

# Taints that say a node is going away: spot interruption handlers, autoscalers, shutdown.
RECLAIM_TAINTS = frozenset({
    "cloud.google.com/impending-node-termination",
    "aws-node-termination-handler/spot-itn",
    "aws-node-termination-handler/asg-lifecycle-termination",
    "aws-node-termination-handler/scheduled-maintenance",
    "karpenter.sh/disrupted",
    "karpenter.sh/disruption",
    "ToBeDeletedByClusterAutoscaler",
    "node.kubernetes.io/out-of-service",
    "node.cloudprovider.kubernetes.io/shutdown",
})

# GPU names as the routing policy writes them, found inside the products' long names.
KNOWN_MODELS = (
    "GB200", "B200", "B100", "H200", "H100", "H20", "GH200", "A100", "A800", "A40", "A30",
    "A10G", "A10", "A16", "A2", "L40S", "L40", "L4", "V100", "T4", "P100", "P4",
    "RTX-PRO-6000", "RTX-6000", "RTX-A6000",
)


@dataclass(frozen=True)
class Toleration:
    key: str = ""
    operator: str = "Equal"      # Equal | Exists
    value: str = ""
    effect: str = ""             # empty: every effect

    def tolerates(self, taint: Taint) -> bool:
        if self.effect and self.effect != taint.effect:
            return False
        if not self.key:
            return self.operator == "Exists"
        if self.key != taint.key:
            return False
        return self.operator == "Exists" or self.value == taint.value

    def to_json(self) -> dict[str, str]:
        body = {"operator": self.operator}
        for name in ("key", "value", "effect"):
            if getattr(self, name):
                body[name] = getattr(self, name)
        return body


@dataclass(frozen=True)
class Taint:
    key: str
    value: str
    effect: str


DEFAULT_TOLERATIONS = (Toleration(GPU_RESOURCE, "Exists", effect="NoSchedule"),)
# The taints the clouds put on spot nodes (GKE only when the admin asked for it).
DEFAULT_SPOT_TOLERATIONS = (
    Toleration("cloud.google.com/gke-spot", "Equal", "true", "NoSchedule"),
    Toleration("kubernetes.azure.com/scalesetpriority", "Equal", "spot", "NoSchedule"),
    Toleration("eks.amazonaws.com/capacityType", "Equal", "SPOT", "NoSchedule"),
    Toleration("karpenter.sh/capacity-type", "Equal", "spot", "NoSchedule"),
)


@dataclass(frozen=True)
class PriceRule:
    price_per_gpu_hour: float
    purchase_type: str = ""      # empty: any
    gpu_model: str = ""          # empty: any

    def matches(self, purchase_type: str, gpu_model: str) -> bool:
        return (self.purchase_type in ("", purchase_type)
                and self.gpu_model.lower() in ("", gpu_model.lower()))


@dataclass(frozen=True)
class NodeRules:
    """The agent's configuration as it bears on nodes and pools."""

    default_purchase_type: str = "reserved"
    purchase_type_label: str = ""
    node_selector: Mapping[str, str] = field(default_factory=dict)
    tolerations: tuple[Toleration, ...] = DEFAULT_TOLERATIONS
    spot_tolerations: tuple[Toleration, ...] = DEFAULT_SPOT_TOLERATIONS
    reclaim_taints: frozenset[str] = RECLAIM_TAINTS
    prices: tuple[PriceRule, ...] = ()

    def pod_tolerations(self, purchase_type: str) -> tuple[Toleration, ...]:
        """Spot tolerations only for spot pools: elsewhere they would let pods onto spot."""
        if purchase_type == "spot":
            return self.tolerations + self.spot_tolerations
        return self.tolerations

    def price(self, purchase_type: str, gpu_model: str) -> float:
        for rule in self.prices:
            if rule.matches(purchase_type, gpu_model):
                return rule.price_per_gpu_hour
        return 0.0


@dataclass(frozen=True)
class PoolKey:
    gpu_model: str
    gpu_memory_gb: int
    purchase_type: str
    region: str


@dataclass(frozen=True)
class NodeTerm:
    """The labels that put a node into its pool: one term of a pod's node affinity.

    ``absent`` lists purchase-type labels the node lacks; a pool of nodes that no label
    marks as spot must keep its pods off the nodes that one does.
    """

    product_label: str
    product: str
    purchase_label: str = ""
    purchase_value: str = ""
    absent: tuple[str, ...] = ()
    # Other purchase labels the node carries, with their values: a node with an unmapped
    # value (EKS CAPACITY_BLOCK) must not let the pool's pods onto the same label's SPOT.
    pinned: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class GpuNode:
    name: str
    gpus: int                     # allocatable
    purchase_type: str
    key: PoolKey | None           # None: it does not count (see excluded_because)
    term: NodeTerm | None
    reclaiming: bool
    excluded_because: str = ""


# -- reading one node ---------------------------------------------------------------------------


def read_node(node: Mapping[str, Any], rules: NodeRules) -> GpuNode:
    metadata = node.get("metadata") or {}
    labels: Mapping[str, str] = metadata.get("labels") or {}
    spec = node.get("spec") or {}
    name = str(metadata.get("name", ""))
    gpus = quantity_count(((node.get("status") or {}).get("allocatable") or {}).get(GPU_RESOURCE))
    taints = node_taints(node)
    reclaiming = bool(metadata.get("deletionTimestamp")) or any(
        t.key in rules.reclaim_taints for t in taints
    )
    purchase, purchase_label = purchase_type(labels, rules)
    product_label, product = gpu_product(labels)
    model = gpu_model(product)
    problem = ""
    if reclaiming:
        problem = "being reclaimed"
    elif gpus <= 0:
        problem = "no allocatable nvidia.com/gpu"
    elif not product:
        problem = f"no {PRODUCT_LABEL} label (is GPU feature discovery installed?)"
    elif spec.get("unschedulable"):
        problem = "cordoned"
    elif not node_ready(node):
        problem = "not Ready"
    elif any(labels.get(k) != v for k, v in rules.node_selector.items()):
        problem = "outside the agent's node selector"
    else:
        blocking = untolerated(taints, rules.pod_tolerations(purchase))
        if blocking:
            problem = f"tainted {blocking[0].key}:{blocking[0].effect}"
    if problem:
        return GpuNode(name, gpus, purchase, None, None, reclaiming, problem)
    others = [k for k in _purchase_label_keys(rules) if k != purchase_label]
    term = NodeTerm(
        product_label, product, purchase_label,
        labels.get(purchase_label, "") if purchase_label else "",
        absent=tuple(sorted(k for k in others if k not in labels)) if not purchase_label else (),
        pinned=tuple(sorted((k, labels[k]) for k in others if k in labels)),
    )
    key = PoolKey(model, memory_gb(labels), purchase, labels.get(REGION_LABEL, ""))
    return GpuNode(name, gpus, purchase, key, term, reclaiming)


def node_ready(node: Mapping[str, Any]) -> bool:
    for condition in (node.get("status") or {}).get("conditions") or []:
        if condition.get("type") == "Ready":
            return bool(condition.get("status") == "True")
    return False


def node_taints(node: Mapping[str, Any]) -> list[Taint]:
    return [
        Taint(str(t.get("key", "")), str(t.get("value", "") or ""), str(t.get("effect", "")))
        for t in (node.get("spec") or {}).get("taints") or []
    ]


def untolerated(taints: Iterable[Taint], tolerations: Sequence[Toleration]) -> list[Taint]:
    """The taints that keep a pod with these tolerations off the node."""
    return [
        taint for taint in taints
        if taint.effect in ("NoSchedule", "NoExecute")
        and not any(toleration.tolerates(taint) for toleration in tolerations)
    ]


def purchase_type(labels: Mapping[str, str], rules: NodeRules) -> tuple[str, str]:
    """The node's purchase type and the label that said so ("" for the default)."""
    if rules.purchase_type_label and rules.purchase_type_label in labels:
        value = ADMIN_PURCHASE_VALUES.get(labels[rules.purchase_type_label].lower())
        if value is not None:
            return value, rules.purchase_type_label
    for label, values in PURCHASE_LABELS.items():
        if label in labels and labels[label] in values:
            return values[labels[label]], label
    return rules.default_purchase_type, ""


def _purchase_label_keys(rules: NodeRules) -> list[str]:
    keys = list(PURCHASE_LABELS)
    if rules.purchase_type_label:
        keys.append(rules.purchase_type_label)
    return keys


def gpu_product(labels: Mapping[str, str]) -> tuple[str, str]:
    for label in (PRODUCT_LABEL, GKE_ACCELERATOR_LABEL):
        if labels.get(label):
            return label, labels[label]
    return "", ""


def gpu_model(product: str) -> str:
    """The short model name the routing policy uses: NVIDIA-A100-SXM4-80GB -> A100,
    nvidia-tesla-t4 -> T4, NVIDIA-L40S -> L40S; an unknown product stays as it is."""
    tokens = [t for t in re.split(r"[-_ ]+", product.upper()) if t]
    joined = "-".join(tokens)
    for model in KNOWN_MODELS:    # longest names first where one contains another
        if "-" in model and model in joined:
            return model
    for token in tokens:
        if token in KNOWN_MODELS:
            return token
    return product


# The memory sizes GPUs are sold with; routing policies are written in these.
NOMINAL_MEMORY_GB = (4, 6, 8, 10, 11, 12, 16, 20, 24, 32, 40, 48, 64, 80, 94, 96, 141, 180,
                     192, 288)


def memory_gb(labels: Mapping[str, str]) -> int:
    """nvidia.com/gpu.memory is in MiB; cards report a little less than they are sold as
    (A10G: 23028 MiB, sold as 24 GB), so a size within 12% below a nominal one is that
    nominal size. 0 when unknown."""
    try:
        mib = int(labels.get(MEMORY_LABEL, "0"))
    except ValueError:
        return 0
    gib = mib / 1024
    for nominal in NOMINAL_MEMORY_GB:
        if nominal >= gib - 0.5:
            return nominal if nominal <= gib * 1.12 else round(gib)
    return round(gib)


def quantity_count(value: object) -> int:
    """A whole-number Kubernetes quantity ("8", 8) as an int; anything else is 0."""
    if isinstance(value, int) and not isinstance(value, bool):
        return max(value, 0)
    if isinstance(value, str) and value.isdigit():
        return int(value)
    return 0


# -- pools --------------------------------------------------------------------------------------


def pod_gpus(pod: Mapping[str, Any]) -> int:
    """The GPUs a pod holds: its containers' sum, or its largest init container's if more."""
    spec = pod.get("spec") or {}

    def wanted(container: Mapping[str, Any]) -> int:
        resources = container.get("resources") or {}
        limits = resources.get("limits") or {}
        requests = resources.get("requests") or {}
        return quantity_count(limits.get(GPU_RESOURCE, requests.get(GPU_RESOURCE)))

    main = sum(wanted(c) for c in spec.get("containers") or [])
    init = max((wanted(c) for c in spec.get("initContainers") or []), default=0)
    return max(main, init)


def pod_ended(pod: Mapping[str, Any]) -> bool:
    return (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed")


def pool_name(key: PoolKey, several_regions: bool) -> str:
    """e.g. a100-80gb-spot; the region is added when the cluster spans several."""
    parts = [key.gpu_model, f"{key.gpu_memory_gb}gb" if key.gpu_memory_gb else "",
             key.purchase_type.replace("_", "-"), key.region if several_regions else ""]
    text = "-".join(p for p in parts if p).lower()
    return re.sub(r"-+", "-", re.sub(r"[^a-z0-9-]", "-", text)).strip("-")[:63].strip("-")


@dataclass(frozen=True)
class Pool:
    name: str
    key: PoolKey
    nodes: tuple[str, ...]
    terms: tuple[NodeTerm, ...]     # a pod may go to a node matching any of them
    gpu_total: int
    gpu_used: int                   # by pods bound to its nodes
    largest_node: int               # allocatable GPUs of its biggest node
    most_free_on_a_node: int        # one job runs on one node: the most it can get now

    @property
    def gpu_free(self) -> int:
        return max(0, self.gpu_total - self.gpu_used)


def pools_of(
    nodes: Iterable[GpuNode], bound_pods: Iterable[Mapping[str, Any]]
) -> dict[str, Pool]:
    """The pools the counted nodes make, by name, with the GPUs bound pods use."""
    counted = [node for node in nodes if node.key is not None]
    several_regions = len({node.key.region for node in counted if node.key}) > 1
    used_on: dict[str, int] = {}
    for pod in bound_pods:
        node_name = (pod.get("spec") or {}).get("nodeName")
        if node_name and not pod_ended(pod):
            used_on[node_name] = used_on.get(node_name, 0) + pod_gpus(pod)
    grouped: dict[PoolKey, list[GpuNode]] = {}
    for node in counted:
        assert node.key is not None
        grouped.setdefault(node.key, []).append(node)
    pools: dict[str, Pool] = {}
    ordered = sorted(grouped.items(), key=lambda item: (pool_name(item[0], True), repr(item[0])))
    for key, members in ordered:
        name = pool_name(key, several_regions)
        if name in pools:    # two models that clean up alike: the key tells them apart
            name = f"{name[:56]}-{hashlib.sha256(repr(key).encode()).hexdigest()[:6]}"
        terms = tuple(sorted({node.term for node in members if node.term is not None},
                             key=lambda t: (t.product, t.purchase_value)))
        pools[name] = Pool(
            name, key, tuple(sorted(node.name for node in members)), terms,
            gpu_total=sum(node.gpus for node in members),
            gpu_used=sum(min(used_on.get(node.name, 0), node.gpus) for node in members),
            largest_node=max(node.gpus for node in members),
            most_free_on_a_node=max(
                node.gpus - min(used_on.get(node.name, 0), node.gpus) for node in members
            ),
        )
    return pools


def pool_reports(
    pools: Mapping[str, Pool], waiting: Mapping[str, int], rules: NodeRules
) -> list[PoolReport]:
    """The heartbeat's view: ``waiting`` is GPUs of this agent's pods not yet scheduled,
    per pool; they are as good as taken (from any node: the most free on one node is
    bounded by the pool's free GPUs after them)."""
    reports = []
    for pool in pools.values():
        free = max(0, pool.gpu_free - waiting.get(pool.name, 0))
        reports.append(PoolReport(
            name=pool.name, purchase_type=pool.key.purchase_type, gpu_model=pool.key.gpu_model,
            gpu_memory_gb=pool.key.gpu_memory_gb, gpu_total=pool.gpu_total, gpu_free=free,
            price_per_gpu_hour=rules.price(pool.key.purchase_type, pool.key.gpu_model),
            region=pool.key.region, gpu_node_size=pool.largest_node,
            gpu_node_free=min(pool.most_free_on_a_node, free),
        ))
    return reports
