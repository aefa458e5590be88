"""GPU pools from Kubernetes Node JSON (``domain.kube_nodes``), table by table.

Nodes and pods are built as the API returns them (camelCase JSON, quantities as strings),
so these tests read the same shapes the launcher's watch hands over.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pytest

from dataplane_agent.domain.capacity import PoolReport
from dataplane_agent.domain.kube_nodes import (
    GKE_ACCELERATOR_LABEL,
    MEMORY_LABEL,
    PRODUCT_LABEL,
    PURCHASE_LABELS,
    RECLAIM_TAINTS,
    REGION_LABEL,
    GpuNode,
    NodeRules,
    NodeTerm,
    PoolKey,
    PriceRule,
    Taint,
    Toleration,
    gpu_model,
    memory_gb,
    pod_gpus,
    pool_name,
    pool_reports,
    pools_of,
    purchase_type,
    read_node,
    untolerated,
)

RULES = NodeRules()
ADMIN_LABEL = "fleet.example.com/purchase-type"

GKE_SPOT = "cloud.google.com/gke-spot"
GKE_PREEMPTIBLE = "cloud.google.com/gke-preemptible"
EKS = "eks.amazonaws.com/capacityType"
AKS = "kubernetes.azure.com/scalesetpriority"
KARPENTER = "karpenter.sh/capacity-type"


def node(
    name: str = "gpu-1",
    *,
    gpus: object = "8",
    product: str | None = "NVIDIA-A100-SXM4-80GB",
    memory: str | None = "81920",
    region: str | None = "us-east1",
    labels: Mapping[str, str] | None = None,
    taints: Sequence[Mapping[str, str]] = (),
    ready: str | None = "True",
    unschedulable: bool = False,
    deleting: bool = False,
) -> dict[str, Any]:
    """A Node as GET /api/v1/nodes/<name> returns it; None leaves a field out."""
    all_labels = {"kubernetes.io/hostname": name, "kubernetes.io/os": "linux"}
    for key, value in ((PRODUCT_LABEL, product), (MEMORY_LABEL, memory),
                       (REGION_LABEL, region)):
        if value is not None:
            all_labels[key] = value
    all_labels.update(labels or {})
    metadata: dict[str, Any] = {
        "name": name, "uid": f"uid-{name}", "labels": all_labels,
        "creationTimestamp": "2026-11-24T20:00:00Z",
    }
    if deleting:
        metadata["deletionTimestamp"] = "2026-11-24T21:00:00Z"
    conditions = [{"type": "MemoryPressure", "status": "False",
                   "reason": "KubeletHasSufficientMemory"}]
    if ready is not None:
        conditions.append({"type": "Ready", "status": ready, "reason": "KubeletReady"})
    allocatable: dict[str, object] = {"cpu": "95", "memory": "1000000Mi", "pods": "110"}
    if gpus is not None:
        allocatable["nvidia.com/gpu"] = gpus
    spec: dict[str, Any] = {"podCIDR": "10.0.0.0/24"}
    if taints:
        spec["taints"] = [dict(t) for t in taints]
    if unschedulable:
        spec["unschedulable"] = True
    return {
        "apiVersion": "v1", "kind": "Node", "metadata": metadata, "spec": spec,
        "status": {"allocatable": allocatable, "capacity": dict(allocatable),
                   "conditions": conditions},
    }


def taint(key: str, effect: str = "NoSchedule", value: str | None = None) -> dict[str, str]:
    body = {"key": key, "effect": effect}
    if value is not None:
        body["value"] = value
    return body


def gpu_pod(
    node_name: str | None,
    gpus: int | str,
    *,
    phase: str = "Running",
    namespace: str = "default",
    name: str = "p",
) -> dict[str, Any]:
    """A pod bound to node_name (None: not scheduled yet) whose one container wants GPUs."""
    spec: dict[str, Any] = {"containers": [{
        "name": "main", "image": "busybox",
        "resources": {"limits": {"nvidia.com/gpu": str(gpus)},
                      "requests": {"nvidia.com/gpu": str(gpus)}},
    }]}
    if node_name is not None:
        spec["nodeName"] = node_name
    return {"metadata": {"name": name, "namespace": namespace}, "spec": spec,
            "status": {"phase": phase}}


def counted(raw: Mapping[str, Any], rules: NodeRules = RULES) -> GpuNode:
    found = read_node(raw, rules)
    assert found.excluded_because == "", found.excluded_because
    assert found.key is not None
    return found


# -- which nodes count --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "problem"),
    [
        pytest.param(node(), "", id="ready-schedulable-gpu-node"),
        pytest.param(node(ready="False"), "not Ready", id="not-ready"),
        pytest.param(node(ready="Unknown"), "not Ready", id="ready-unknown"),
        pytest.param(node(ready=None), "not Ready", id="no-ready-condition"),
        pytest.param(node(unschedulable=True), "cordoned", id="cordoned"),
        pytest.param(node(deleting=True), "being reclaimed", id="being-deleted"),
        pytest.param(node(gpus=None), "no allocatable nvidia.com/gpu", id="no-gpu-resource"),
        pytest.param(node(gpus="0"), "no allocatable nvidia.com/gpu", id="zero-gpus"),
        pytest.param(node(gpus="2k"), "no allocatable nvidia.com/gpu", id="odd-quantity"),
        pytest.param(node(product=None),
                     "no nvidia.com/gpu.product label (is GPU feature discovery installed?)",
                     id="no-product-label"),
    ],
)
def test_which_nodes_count(raw: dict[str, Any], problem: str) -> None:
    found = read_node(raw, RULES)

    assert found.name == "gpu-1"
    assert found.excluded_because == problem
    assert (found.key is None) == bool(problem)
    assert (found.term is None) == bool(problem)


def test_a_counted_node_reports_its_allocatable_gpus_as_an_int() -> None:
    assert counted(node(gpus="4")).gpus == 4
    assert counted(node(gpus=2)).gpus == 2


def test_a_deleted_node_is_reclaiming_and_so_is_not_counted_even_when_ready() -> None:
    found = read_node(node(deleting=True), RULES)

    assert found.reclaiming
    assert found.key is None


@pytest.mark.parametrize("key", sorted(RECLAIM_TAINTS))
def test_each_reclaim_taint_marks_the_node_reclaiming(key: str) -> None:
    found = read_node(node(taints=[taint(key, "NoSchedule")]), RULES)

    assert found.reclaiming
    assert found.excluded_because == "being reclaimed"
    assert found.key is None


def test_an_admin_added_reclaim_taint_counts_only_when_configured() -> None:
    # PreferNoSchedule so that nothing but the reclaim rule could exclude the node.
    raw = node(taints=[taint("example.com/draining", "PreferNoSchedule", "true")])
    rules = NodeRules(reclaim_taints=RECLAIM_TAINTS | {"example.com/draining"})

    assert not read_node(raw, RULES).reclaiming
    assert read_node(raw, RULES).key is not None
    assert read_node(raw, rules).reclaiming
    assert read_node(raw, rules).excluded_because == "being reclaimed"


def test_a_reclaiming_node_is_reclaiming_even_when_it_would_not_count_anyway() -> None:
    # The launcher preempts attempts on it whatever else is wrong with it.
    found = read_node(node(ready="False", unschedulable=True,
                           taints=[taint("ToBeDeletedByClusterAutoscaler")]), RULES)

    assert found.reclaiming


# -- taints and tolerations ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("taints", "problem"),
    [
        pytest.param([taint("example.com/team", "NoSchedule", "ml")],
                     "tainted example.com/team:NoSchedule", id="foreign-noschedule"),
        pytest.param([taint("example.com/team", "NoExecute", "ml")],
                     "tainted example.com/team:NoExecute", id="foreign-noexecute"),
        pytest.param([taint("nvidia.com/gpu", "NoSchedule", "present")], "",
                     id="gpu-taint-tolerated-by-default"),
        pytest.param([taint("nvidia.com/gpu", "NoSchedule")], "", id="gpu-taint-without-value"),
        pytest.param([taint("nvidia.com/gpu", "NoExecute", "present")],
                     "tainted nvidia.com/gpu:NoExecute", id="gpu-taint-noexecute-not-tolerated"),
        pytest.param([taint("example.com/team", "PreferNoSchedule", "ml")], "",
                     id="prefer-noschedule-ignored"),
        pytest.param([taint("nvidia.com/gpu", "NoSchedule", "present"),
                      taint("example.com/team", "NoSchedule", "ml")],
                     "tainted example.com/team:NoSchedule", id="one-of-two-blocks"),
    ],
)
def test_taints_the_pool_pods_would_not_tolerate_exclude_the_node(
    taints: list[dict[str, str]], problem: str
) -> None:
    assert read_node(node(taints=taints), RULES).excluded_because == problem


def test_an_admin_toleration_lets_a_tainted_node_count() -> None:
    raw = node(taints=[taint("example.com/team", "NoSchedule", "ml")])
    rules = NodeRules(tolerations=(*RULES.tolerations,
                                   Toleration("example.com/team", "Equal", "ml", "NoSchedule")))

    assert read_node(raw, rules).key is not None


SPOT_CLOUDS = [
    pytest.param({GKE_SPOT: "true"}, taint(GKE_SPOT, "NoSchedule", "true"), id="gke"),
    pytest.param({AKS: "spot"}, taint(AKS, "NoSchedule", "spot"), id="aks"),
    pytest.param({EKS: "SPOT"}, taint(EKS, "NoSchedule", "SPOT"), id="eks"),
    pytest.param({KARPENTER: "spot"}, taint(KARPENTER, "NoSchedule", "spot"), id="karpenter"),
]


@pytest.mark.parametrize(("labels", "spot_taint"), SPOT_CLOUDS)
def test_spot_nodes_with_their_clouds_spot_taint_make_spot_pools(
    labels: dict[str, str], spot_taint: dict[str, str]
) -> None:
    found = counted(node(labels=labels, taints=[spot_taint]))

    assert found.purchase_type == "spot"
    assert found.key is not None and found.key.purchase_type == "spot"


@pytest.mark.parametrize(("labels", "spot_taint"), SPOT_CLOUDS)
def test_the_spot_taint_on_a_node_not_bought_as_spot_excludes_it(
    labels: dict[str, str], spot_taint: dict[str, str]
) -> None:
    # Spot tolerations go only on spot pools' pods, so a non-spot pool's pods cannot go there.
    found = read_node(node(taints=[spot_taint]), RULES)

    assert found.purchase_type == "reserved"
    assert found.excluded_because == f"tainted {spot_taint['key']}:NoSchedule"


def test_spot_tolerations_are_added_to_spot_pools_only() -> None:
    assert RULES.pod_tolerations("spot") == RULES.tolerations + RULES.spot_tolerations
    assert RULES.pod_tolerations("on_demand") == RULES.tolerations
    assert RULES.pod_tolerations("reserved") == RULES.tolerations


@pytest.mark.parametrize(
    ("toleration", "tolerated"),
    [
        pytest.param(Toleration("k", "Equal", "v", "NoSchedule"), True, id="equal-match"),
        pytest.param(Toleration("k", "Equal", "w", "NoSchedule"), False, id="other-value"),
        pytest.param(Toleration("k", "Exists", effect="NoSchedule"), True, id="exists"),
        pytest.param(Toleration("other", "Exists"), False, id="other-key"),
        pytest.param(Toleration("k", "Exists", effect="NoExecute"), False, id="other-effect"),
        pytest.param(Toleration("k", "Equal", "v"), True, id="any-effect"),
        pytest.param(Toleration(operator="Exists"), True, id="tolerate-everything"),
        pytest.param(Toleration(operator="Equal"), False, id="empty-key-equal"),
    ],
)
def test_toleration_matching(toleration: Toleration, tolerated: bool) -> None:
    assert toleration.tolerates(Taint("k", "v", "NoSchedule")) is tolerated
    assert (untolerated([Taint("k", "v", "NoSchedule")], [toleration]) == []) is tolerated


def test_toleration_json_leaves_out_empty_fields() -> None:
    assert Toleration("nvidia.com/gpu", "Exists", effect="NoSchedule").to_json() == {
        "key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule",
    }
    assert Toleration("k", "Equal", "v", "NoExecute").to_json() == {
        "key": "k", "operator": "Equal", "value": "v", "effect": "NoExecute",
    }
    assert Toleration(operator="Exists").to_json() == {"operator": "Exists"}


# -- what a node is: purchase type, model, memory ------------------------------------------------


@pytest.mark.parametrize(
    ("labels", "rules", "expected"),
    [
        pytest.param({}, RULES, ("reserved", ""), id="default"),
        pytest.param({}, NodeRules(default_purchase_type="on_demand"), ("on_demand", ""),
                     id="configured-default"),
        pytest.param({GKE_SPOT: "true"}, RULES, ("spot", GKE_SPOT), id="gke-spot"),
        pytest.param({GKE_PREEMPTIBLE: "true"}, RULES, ("spot", GKE_PREEMPTIBLE),
                     id="gke-preemptible"),
        pytest.param({EKS: "SPOT"}, RULES, ("spot", EKS), id="eks-spot"),
        pytest.param({EKS: "ON_DEMAND"}, RULES, ("on_demand", EKS), id="eks-on-demand"),
        pytest.param({AKS: "spot"}, RULES, ("spot", AKS), id="aks-spot"),
        pytest.param({AKS: "regular"}, RULES, ("on_demand", AKS), id="aks-regular"),
        pytest.param({KARPENTER: "spot"}, RULES, ("spot", KARPENTER), id="karpenter-spot"),
        pytest.param({KARPENTER: "on-demand"}, RULES, ("on_demand", KARPENTER),
                     id="karpenter-on-demand"),
        pytest.param({KARPENTER: "reserved"}, RULES, ("reserved", KARPENTER),
                     id="karpenter-reserved"),
        pytest.param({EKS: "CAPACITY_BLOCK"}, RULES, ("reserved", ""),
                     id="unknown-cloud-value-is-default"),
        pytest.param({ADMIN_LABEL: "on-demand", KARPENTER: "spot"},
                     NodeRules(purchase_type_label=ADMIN_LABEL), ("on_demand", ADMIN_LABEL),
                     id="admin-label-overrides-cloud"),
        pytest.param({ADMIN_LABEL: "Spot"}, NodeRules(purchase_type_label=ADMIN_LABEL),
                     ("spot", ADMIN_LABEL), id="admin-label-any-case"),
        pytest.param({ADMIN_LABEL: "on_demand"}, NodeRules(purchase_type_label=ADMIN_LABEL),
                     ("on_demand", ADMIN_LABEL), id="admin-label-underscore"),
        pytest.param({ADMIN_LABEL: "reserved", GKE_SPOT: "true"},
                     NodeRules(purchase_type_label=ADMIN_LABEL), ("reserved", ADMIN_LABEL),
                     id="admin-reserved-over-gke-spot"),
        pytest.param({ADMIN_LABEL: "whatever", EKS: "SPOT"},
                     NodeRules(purchase_type_label=ADMIN_LABEL), ("spot", EKS),
                     id="unknown-admin-value-falls-back-to-cloud"),
        pytest.param({AKS: "spot"}, NodeRules(purchase_type_label=ADMIN_LABEL), ("spot", AKS),
                     id="admin-label-absent"),
        pytest.param({ADMIN_LABEL: "spot"}, RULES, ("reserved", ""),
                     id="admin-label-not-configured"),
    ],
)
def test_purchase_type_from_labels(
    labels: dict[str, str], rules: NodeRules, expected: tuple[str, str]
) -> None:
    assert purchase_type(labels, rules) == expected


def test_a_read_node_carries_its_purchase_type_into_its_pool_key() -> None:
    found = counted(node(labels={EKS: "ON_DEMAND"}))

    assert found.purchase_type == "on_demand"
    assert found.key == PoolKey("A100", 80, "on_demand", "us-east1")


@pytest.mark.parametrize(
    ("labels", "model", "product_label"),
    [
        pytest.param({PRODUCT_LABEL: "NVIDIA-A100-SXM4-80GB"}, "A100", PRODUCT_LABEL, id="a100"),
        pytest.param({PRODUCT_LABEL: "NVIDIA-H100-80GB-HBM3"}, "H100", PRODUCT_LABEL, id="h100"),
        pytest.param({PRODUCT_LABEL: "NVIDIA-A10G"}, "A10G", PRODUCT_LABEL, id="a10g"),
        pytest.param({GKE_ACCELERATOR_LABEL: "nvidia-tesla-t4"}, "T4", GKE_ACCELERATOR_LABEL,
                     id="t4-from-gke-label"),
        pytest.param({PRODUCT_LABEL: "NVIDIA-L40S"}, "L40S", PRODUCT_LABEL, id="l40s"),
        pytest.param({PRODUCT_LABEL: "NVIDIA-GH200-480GB"}, "GH200", PRODUCT_LABEL, id="gh200"),
        pytest.param({PRODUCT_LABEL: "Acme-Brainchip-9000"}, "Acme-Brainchip-9000",
                     PRODUCT_LABEL, id="unknown-kept"),
        pytest.param({PRODUCT_LABEL: "NVIDIA-H100-80GB-HBM3",
                      GKE_ACCELERATOR_LABEL: "nvidia-tesla-t4"}, "H100", PRODUCT_LABEL,
                     id="feature-discovery-preferred"),
    ],
)
def test_gpu_model_of_a_node(labels: dict[str, str], model: str, product_label: str) -> None:
    found = counted(node(product=None, labels=labels))

    assert found.key is not None and found.key.gpu_model == model
    assert found.term is not None and found.term.product_label == product_label
    assert found.term.product == labels[product_label]


@pytest.mark.parametrize(
    ("product", "model"),
    [
        ("NVIDIA-A100-PCIE-40GB", "A100"),
        ("NVIDIA-A100-SXM4-40GB-MIG-1g.5gb", "A100"),
        ("NVIDIA-H100-NVL", "H100"),
        ("NVIDIA-H200", "H200"),
        ("NVIDIA-B200", "B200"),
        ("NVIDIA-GB200", "GB200"),
        ("NVIDIA-A10", "A10"),
        ("Tesla-V100-SXM2-16GB", "V100"),
        ("nvidia-l4", "L4"),
        ("NVIDIA-L40", "L40"),
        ("nvidia-tesla-a100", "A100"),
        ("nvidia-h100-mega-80gb", "H100"),
        ("NVIDIA RTX A6000", "RTX-A6000"),
        ("NVIDIA-RTX-6000-Ada-Generation", "RTX-6000"),
        ("NVIDIA-RTX-PRO-6000-Blackwell-Server-Edition", "RTX-PRO-6000"),
        ("NVIDIA-GeForce-RTX-4090", "NVIDIA-GeForce-RTX-4090"),
    ],
)
def test_gpu_model_names(product: str, model: str) -> None:
    assert gpu_model(product) == model


@pytest.mark.parametrize(
    ("memory", "gb"),
    [("81920", 80), ("40960", 40), ("24576", 24), ("81559", 80), ("", 0), ("lots", 0),
     (None, 0), ("23028", 24), ("15360", 16), ("46068", 48), ("143771", 141),
     ("1000000", 977)],
)
def test_gpu_memory_label_is_mib_read_as_the_size_sold(memory: str | None, gb: int) -> None:
    labels = {} if memory is None else {MEMORY_LABEL: memory}

    assert memory_gb(labels) == gb


def test_a_node_without_memory_label_still_counts_with_memory_0() -> None:
    found = counted(node(memory=None))

    assert found.key == PoolKey("A100", 0, "reserved", "us-east1")


@pytest.mark.parametrize(
    ("labels", "problem"),
    [
        pytest.param({"fleet.example.com/gpu-pool": "yes", "zone": "a"}, "", id="matches"),
        pytest.param({"fleet.example.com/gpu-pool": "no"}, "outside the agent's node selector",
                     id="other-value"),
        pytest.param({}, "outside the agent's node selector", id="label-missing"),
    ],
)
def test_node_selector(labels: dict[str, str], problem: str) -> None:
    rules = NodeRules(node_selector={"fleet.example.com/gpu-pool": "yes"})

    assert read_node(node(labels=labels), rules).excluded_because == problem


# -- node terms ---------------------------------------------------------------------------------


def test_a_default_purchase_nodes_term_lists_the_purchase_labels_it_lacks() -> None:
    found = counted(node(product="NVIDIA-A100-SXM4-80GB"))

    assert found.term == NodeTerm(PRODUCT_LABEL, "NVIDIA-A100-SXM4-80GB",
                                  absent=tuple(sorted(PURCHASE_LABELS)))


def test_the_admin_purchase_label_is_among_the_absent_ones_when_configured() -> None:
    found = counted(node(), NodeRules(purchase_type_label=ADMIN_LABEL))

    assert found.term is not None
    assert found.term.absent == tuple(sorted([*PURCHASE_LABELS, ADMIN_LABEL]))


def test_a_labelled_nodes_term_names_its_purchase_label_and_value() -> None:
    found = counted(node(labels={KARPENTER: "spot"}))

    assert found.term == NodeTerm(PRODUCT_LABEL, "NVIDIA-A100-SXM4-80GB", KARPENTER, "spot")


def test_a_pool_mixing_two_product_strings_has_one_term_per_product() -> None:
    nodes = [
        read_node(node("a", product="NVIDIA-A100-SXM4-80GB"), RULES),
        read_node(node("b", product="NVIDIA-A100-80GB-PCIe"), RULES),
        read_node(node("c", product="NVIDIA-A100-SXM4-80GB"), RULES),
    ]

    pools = pools_of(nodes, [])

    assert list(pools) == ["a100-80gb-reserved"]
    assert [t.product for t in pools["a100-80gb-reserved"].terms] == [
        "NVIDIA-A100-80GB-PCIe", "NVIDIA-A100-SXM4-80GB",
    ]


def labels_match(term: NodeTerm, labels: Mapping[str, str]) -> bool:
    """Whether a node with these labels satisfies the term (as the scheduler would)."""
    if labels.get(term.product_label) != term.product:
        return False
    if term.purchase_label and labels.get(term.purchase_label) != term.purchase_value:
        return False
    if any(labels.get(key) != value for key, value in term.pinned):
        return False
    return not any(key in labels for key in term.absent)


def test_a_default_pools_term_keeps_its_pods_off_labelled_spot_nodes() -> None:
    term = counted(node()).term
    assert term is not None

    assert labels_match(term, {PRODUCT_LABEL: "NVIDIA-A100-SXM4-80GB"})
    for label, values in PURCHASE_LABELS.items():
        for value, kind in values.items():
            if kind == "spot":
                assert not labels_match(term, {PRODUCT_LABEL: "NVIDIA-A100-SXM4-80GB",
                                               label: value})


def test_a_default_pools_term_keeps_pods_off_spot_even_when_the_node_has_the_label() -> None:
    term = counted(node(labels={EKS: "CAPACITY_BLOCK"})).term
    assert term is not None

    assert not labels_match(term, {PRODUCT_LABEL: "NVIDIA-A100-SXM4-80GB", EKS: "SPOT"})


# -- pools --------------------------------------------------------------------------------------


def test_two_a100_nodes_make_one_pool_and_a_spot_node_another() -> None:
    nodes = [
        read_node(node("a100-b", gpus="4"), RULES),
        read_node(node("a100-a", gpus="8"), RULES),
        read_node(node("a100-spot", gpus="8", labels={GKE_SPOT: "true"},
                       taints=[taint(GKE_SPOT, "NoSchedule", "true")]), RULES),
        read_node(node("h100-cordoned", product="NVIDIA-H100-80GB-HBM3", unschedulable=True),
                  RULES),
    ]

    pools = pools_of(nodes, [])

    assert sorted(pools) == ["a100-80gb-reserved", "a100-80gb-spot"]
    reserved = pools["a100-80gb-reserved"]
    assert reserved.name == "a100-80gb-reserved"
    assert reserved.key == PoolKey("A100", 80, "reserved", "us-east1")
    assert reserved.nodes == ("a100-a", "a100-b")
    assert (reserved.gpu_total, reserved.gpu_used, reserved.gpu_free) == (12, 0, 12)
    assert reserved.largest_node == 8
    spot = pools["a100-80gb-spot"]
    assert spot.nodes == ("a100-spot",)
    assert (spot.gpu_total, spot.largest_node) == (8, 8)


def test_models_and_memory_sizes_make_separate_pools() -> None:
    nodes = [
        read_node(node("a", product="NVIDIA-A100-SXM4-40GB", memory="40960"), RULES),
        read_node(node("b", product="NVIDIA-A100-SXM4-80GB", memory="81920"), RULES),
        read_node(node("c", product="NVIDIA-H100-80GB-HBM3", memory="81559",
                       labels={EKS: "ON_DEMAND"}), RULES),
    ]

    assert sorted(pools_of(nodes, [])) == [
        "a100-40gb-reserved", "a100-80gb-reserved", "h100-80gb-on-demand",
    ]


def test_the_region_is_in_pool_names_only_when_the_cluster_spans_several() -> None:
    one = [read_node(node("a", region="us-east1"), RULES),
           read_node(node("b", region="us-east1"), RULES)]
    two = [read_node(node("a", region="us-east1"), RULES),
           read_node(node("b", region="europe-west4"), RULES)]

    assert list(pools_of(one, [])) == ["a100-80gb-reserved"]
    pools = pools_of(two, [])
    assert sorted(pools) == ["a100-80gb-reserved-europe-west4", "a100-80gb-reserved-us-east1"]
    assert pools["a100-80gb-reserved-us-east1"].key.region == "us-east1"


@pytest.mark.parametrize(
    ("key", "several_regions", "name"),
    [
        (PoolKey("A100", 80, "on_demand", "us-east1"), False, "a100-80gb-on-demand"),
        (PoolKey("A100", 80, "on_demand", "us-east1"), True, "a100-80gb-on-demand-us-east1"),
        (PoolKey("T4", 0, "spot", ""), True, "t4-spot"),
        (PoolKey("RTX-PRO-6000", 96, "reserved", ""), False, "rtx-pro-6000-96gb-reserved"),
        (PoolKey("NVIDIA GeForce RTX_4090!", 24, "spot", ""), False,
         "nvidia-geforce-rtx-4090-24gb-spot"),
    ],
)
def test_pool_names(key: PoolKey, several_regions: bool, name: str) -> None:
    assert pool_name(key, several_regions) == name


def test_a_pool_name_stays_a_valid_label_value_for_a_long_product() -> None:
    name = pool_name(PoolKey("Acme-" + "x" * 58 + "-Y", 80, "on_demand", "us-east1"), True)

    assert len(name) <= 63
    assert name[0].isalnum() and name[-1].isalnum()
    assert name.startswith("acme-xxxx")


def test_two_groups_whose_names_clean_up_alike_are_both_reported() -> None:
    nodes = [
        read_node(node("a", gpus="8", product="Acme-X1"), RULES),
        read_node(node("b", gpus="4", product=None,
                       labels={GKE_ACCELERATOR_LABEL: "acme-x1"}), RULES),
    ]

    pools = pools_of(nodes, [])

    assert sum(pool.gpu_total for pool in pools.values()) == 12


def test_free_gpus_subtract_live_pods_bound_to_the_pools_nodes() -> None:
    nodes = [read_node(node("a", gpus="8"), RULES), read_node(node("b", gpus="4"), RULES),
             read_node(node("cordoned", gpus="8", unschedulable=True), RULES)]
    pods = [
        gpu_pod("a", 2, namespace="team-a"),                   # counts: any namespace
        gpu_pod("a", 1, phase="Pending", namespace="other"),   # bound, still starting
        gpu_pod("a", 4, phase="Succeeded"),                    # ended: GPUs are back
        gpu_pod("a", 1, phase="Failed"),
        gpu_pod(None, 3, phase="Pending"),                     # not bound yet
        gpu_pod("cordoned", 8),                                # node not in any pool
        gpu_pod("b", 16),                                      # more than the node has
    ]

    pool = pools_of(nodes, pods)["a100-80gb-reserved"]

    assert pool.gpu_total == 12
    assert pool.gpu_used == 3 + 4
    assert pool.gpu_free == 5


def test_free_gpus_never_go_below_zero() -> None:
    nodes = [read_node(node("a", gpus="2"), RULES)]
    pods = [gpu_pod("a", 2, name="p1"), gpu_pod("a", 2, name="p2")]

    pool = pools_of(nodes, pods)["a100-80gb-reserved"]

    assert (pool.gpu_used, pool.gpu_free) == (2, 0)


def container(name: str, limits: Mapping[str, object] | None = None,
              requests: Mapping[str, object] | None = None) -> dict[str, Any]:
    resources: dict[str, Any] = {}
    if limits is not None:
        resources["limits"] = dict(limits)
    if requests is not None:
        resources["requests"] = dict(requests)
    return {"name": name, "image": "busybox", "resources": resources}


@pytest.mark.parametrize(
    ("spec", "gpus"),
    [
        pytest.param({"containers": [container("a", {"nvidia.com/gpu": "2"})]}, 2, id="one"),
        pytest.param({"containers": [container("a", {"nvidia.com/gpu": "1"}),
                                     container("b", {"nvidia.com/gpu": "2"})]}, 3,
                     id="containers-sum"),
        pytest.param({"containers": [container("a", None, {"nvidia.com/gpu": "2"})]}, 2,
                     id="requests-only"),
        pytest.param({"containers": [container("a", {"nvidia.com/gpu": 3})]}, 3, id="int"),
        pytest.param({"containers": [container("a", {"cpu": "4"}), container("b")]}, 0,
                     id="no-gpus"),
        pytest.param({"initContainers": [container("i", {"nvidia.com/gpu": "4"})],
                      "containers": [container("a", {"nvidia.com/gpu": "2"})]}, 4,
                     id="init-larger"),
        pytest.param({"initContainers": [container("i", {"nvidia.com/gpu": "1"}),
                                         container("j", {"nvidia.com/gpu": "1"})],
                      "containers": [container("a", {"nvidia.com/gpu": "1"}),
                                     container("b", {"nvidia.com/gpu": "1"})]}, 2,
                     id="init-max-not-sum"),
        pytest.param({}, 0, id="empty-spec"),
    ],
)
def test_pod_gpus(spec: dict[str, Any], gpus: int) -> None:
    assert pod_gpus({"metadata": {"name": "p"}, "spec": spec}) == gpus


def test_pool_reports_subtract_waiting_gpus_and_never_go_below_zero() -> None:
    nodes = [
        read_node(node("a", gpus="8"), RULES),
        read_node(node("s", gpus="4", product="NVIDIA-H100-80GB-HBM3", labels={GKE_SPOT: "true"},
                       taints=[taint(GKE_SPOT, "NoSchedule", "true")]), RULES),
    ]
    pools = pools_of(nodes, [gpu_pod("a", 2)])
    rules = NodeRules(prices=(PriceRule(2.5, "spot", "H100"), PriceRule(4.0, "", "A100")))

    reports = pool_reports(pools, {"a100-80gb-reserved": 5, "h100-80gb-spot": 9,
                                   "gone": 3}, rules)

    assert reports == [
        PoolReport(name="a100-80gb-reserved", purchase_type="reserved", gpu_model="A100",
                   gpu_memory_gb=80, gpu_total=8, gpu_free=1, price_per_gpu_hour=4.0,
                   region="us-east1", gpu_node_size=8, gpu_node_free=1),
        PoolReport(name="h100-80gb-spot", purchase_type="spot", gpu_model="H100",
                   gpu_memory_gb=80, gpu_total=4, gpu_free=0, price_per_gpu_hour=2.5,
                   region="us-east1", gpu_node_size=4, gpu_node_free=0),
    ]


def test_one_job_gets_at_most_the_most_free_gpus_on_one_node() -> None:
    """Two 8-GPU nodes with 4 free each: 8 free, but an 8-GPU job fits on neither."""
    nodes = [read_node(node("a", gpus="8"), RULES), read_node(node("b", gpus="8"), RULES)]
    pools = pools_of(nodes, [gpu_pod("a", 4), gpu_pod("b", 4)])

    report, = pool_reports(pools, {}, RULES)

    assert (report.gpu_total, report.gpu_free) == (16, 8)
    assert (report.gpu_node_size, report.gpu_node_free) == (8, 4)


# -- prices -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("prices", "purchase", "model", "price"),
    [
        pytest.param((), "spot", "H100", 0.0, id="no-rules"),
        pytest.param((PriceRule(3.0, "spot", "H100"),), "spot", "H100", 3.0, id="exact"),
        pytest.param((PriceRule(3.0, "spot", "h100"),), "spot", "H100", 3.0,
                     id="model-case-insensitive"),
        pytest.param((PriceRule(3.0, "spot", "H100"),), "on_demand", "H100", 0.0,
                     id="other-purchase"),
        pytest.param((PriceRule(3.0, "spot", "H100"),), "spot", "A100", 0.0, id="other-model"),
        pytest.param((PriceRule(2.0, "", "A100"),), "reserved", "a100", 2.0,
                     id="empty-purchase-any"),
        pytest.param((PriceRule(1.5, "spot"),), "spot", "T4", 1.5, id="empty-model-any"),
        pytest.param((PriceRule(9.0),), "on_demand", "L4", 9.0, id="catch-all"),
        pytest.param((PriceRule(3.0, "spot", "H100"), PriceRule(5.0, "", "H100"),
                      PriceRule(1.0)), "spot", "H100", 3.0, id="first-match-wins"),
        pytest.param((PriceRule(3.0, "spot", "H100"), PriceRule(5.0, "", "H100"),
                      PriceRule(1.0)), "reserved", "H100", 5.0, id="second-rule"),
        pytest.param((PriceRule(3.0, "spot", "H100"), PriceRule(5.0, "", "H100"),
                      PriceRule(1.0)), "reserved", "A100", 1.0, id="falls-to-catch-all"),
        pytest.param((PriceRule(1.0), PriceRule(3.0, "spot", "H100")), "spot", "H100", 1.0,
                     id="catch-all-first-shadows"),
    ],
)
def test_prices(prices: tuple[PriceRule, ...], purchase: str, model: str, price: float) -> None:
    assert NodeRules(prices=prices).price(purchase, model) == price
