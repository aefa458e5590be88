"""The pool file: a valid file loads; each kind of mistake names file:line:col, field, reason."""

from __future__ import annotations

from pathlib import Path

import pytest

from dataplane_agent import PoolFileError, load_pool_file

VALID = """\
dataplane:
  name: onprem-h100
  region: us-east-1
  cloud: onprem
  labels: {site: dc1}
pools:
  - name: h100
    purchase_type: reserved
    gpu_model: H100
    gpu_memory_gb: 80
    gpu_count: 8
    price_per_gpu_hour: 2.5
    interconnect: nvlink
    labels: {rack: "12"}
  - name: cpu
    purchase_type: on_demand
    gpu_memory_gb: 0
    gpu_count: 0
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "pools.yaml"
    path.write_text(text)
    return path


def error_of(tmp_path: Path, text: str) -> str:
    path = write(tmp_path, text)
    with pytest.raises(PoolFileError) as raised:
        load_pool_file(path)
    return str(raised.value).replace(f"{path}:", "pools.yaml:")


def test_a_valid_file_loads(tmp_path: Path) -> None:
    pool_file = load_pool_file(write(tmp_path, VALID))

    assert pool_file.dataplane.name == "onprem-h100"
    assert pool_file.dataplane.labels == {"site": "dc1"}
    h100, cpu = pool_file.pools
    assert (h100.name, h100.purchase_type, h100.gpu_model) == ("h100", "reserved", "H100")
    assert (h100.gpu_memory_gb, h100.gpu_count, h100.price_per_gpu_hour) == (80, 8, 2.5)
    assert (h100.interconnect, h100.labels) == ("nvlink", {"rack": "12"})
    assert (cpu.gpu_count, cpu.gpu_model, cpu.price_per_gpu_hour) == (0, "", 0.0)
    assert [(p.name, p.gpu_total, p.gpu_free) for p in pool_file.pool_reports()] == [
        ("h100", 8, 8), ("cpu", 0, 0)
    ]


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        ("    gpu_count: 8\n", "    gpu_count: -2\n",
         "pools.yaml:11:16: pools[0].gpu_count: must be an integer >= 0 (got -2)"),
        ("    gpu_count: 8\n", "    gpu_count: eight\n",
         "pools.yaml:11:16: pools[0].gpu_count: must be an integer >= 0 (got 'eight')"),
        ("    gpu_memory_gb: 80\n", "    gpu_memory_gb: 1.5\n",
         "pools.yaml:10:20: pools[0].gpu_memory_gb: must be an integer >= 0 (got 1.5)"),
        ("  name: onprem-h100\n", "  name: OnPrem_H100\n",
         "pools.yaml:2:9: dataplane.name: must be a DNS-1123 label: lowercase letters, digits "
         "and '-', starting and ending with a letter or digit, at most 63 characters "
         "(got 'OnPrem_H100')"),
        ("  region: us-east-1\n", "  region: ''\n",
         "pools.yaml:3:11: dataplane.region: must be a non-empty string (got '')"),
        ("    purchase_type: reserved\n", "    purchase_type: preemptible\n",
         "pools.yaml:8:20: pools[0].purchase_type: must be one of reserved, on_demand, spot "
         "(got 'preemptible')"),
        ("    price_per_gpu_hour: 2.5\n", "    price_per_gpu_hour: -1\n",
         "pools.yaml:12:25: pools[0].price_per_gpu_hour: must be a number >= 0 (got -1)"),
        ("    interconnect: nvlink\n", "    interconnect: nvlink\n    gpus: 8\n",
         "pools.yaml:14:5: pools[0].gpus: unknown field"),
        ("    gpu_count: 8\n", "",
         "pools.yaml:7:5: pools[0].gpu_count: required field is missing"),
        ("    gpu_model: H100\n", "",
         "pools.yaml:7:5: pools[0].gpu_model: must be set when gpu_count > 0 "
         "(a CPU pool has gpu_count 0)"),
        ("  - name: cpu\n", "  - name: h100\n",
         "pools.yaml:15:11: pools[1].name: duplicate pool name 'h100' (also pools[0].name)"),
        ("    labels: {rack: \"12\"}\n", "    labels: {rack: 12}\n",
         "pools.yaml:14:13: pools[0].labels: must be a mapping of strings to strings "
         "(quote numbers) (got {rack: 12})"),
        ("  cloud: onprem\n", "  cloud: onprem\n  cloud: aws\n",
         "pools.yaml:5:3: dataplane.cloud: duplicate key"),
    ],
)
def test_each_mistake_names_line_column_field_and_reason(
    tmp_path: Path, old: str, new: str, expected: str
) -> None:
    assert old in VALID
    assert error_of(tmp_path, VALID.replace(old, new, 1)) == expected


def test_a_file_without_pools(tmp_path: Path) -> None:
    text = VALID.split("pools:")[0] + "pools: []\n"

    assert error_of(tmp_path, text) == "pools.yaml:6:8: pools: must list at least one pool"


def test_a_file_without_dataplane(tmp_path: Path) -> None:
    text = "pools:" + VALID.split("pools:")[1]

    assert error_of(tmp_path, text) == "pools.yaml:1:1: dataplane: required field is missing"


def test_a_dataplane_that_is_not_a_mapping(tmp_path: Path) -> None:
    text = "dataplane: onprem\npools:" + VALID.split("pools:")[1]

    assert error_of(tmp_path, text) == (
        "pools.yaml:1:12: dataplane: must be a mapping (got 'onprem')"
    )


def test_yaml_syntax_errors_carry_the_yaml_mark(tmp_path: Path) -> None:
    text = VALID.replace("  labels: {site: dc1}\n", "  labels: {site: dc1\n")

    message = error_of(tmp_path, text)

    assert message.startswith("pools.yaml:6:6: invalid YAML: ")
    assert "expected ',' or '}'" in message


def test_a_file_that_is_not_a_mapping(tmp_path: Path) -> None:
    assert error_of(tmp_path, "- just\n- a list\n") == (
        "pools.yaml:1:1: the pool file must be a YAML mapping with the keys dataplane and "
        "pools (or kubernetes)"
    )
    assert error_of(tmp_path, "") == (
        "pools.yaml:1:1: the pool file must be a YAML mapping with the keys dataplane and "
        "pools (or kubernetes)"
    )


def test_an_unreadable_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"

    with pytest.raises(PoolFileError) as raised:
        load_pool_file(missing)

    assert str(raised.value) == f"{missing}: cannot read the pool file: No such file or directory"


def with_store_prefix(value: str) -> str:
    labels = "  labels: {site: dc1}\n"
    return VALID.replace(labels, f"{labels}  store_prefix: {value}\n")


def test_the_store_prefix_defaults_to_none_meaning_the_workdir_s_store(tmp_path: Path) -> None:
    assert load_pool_file(write(tmp_path, VALID)).dataplane.store_prefix is None


@pytest.mark.parametrize(
    "prefix", ["s3://bucket/fleet/eu", "file:///srv/fleet-store", "/srv/fleet-store"]
)
def test_a_store_prefix_is_an_absolute_path_or_a_url(tmp_path: Path, prefix: str) -> None:
    pool_file = load_pool_file(write(tmp_path, with_store_prefix(prefix)))

    assert pool_file.dataplane.store_prefix == prefix


@pytest.mark.parametrize(
    ("prefix", "reason"),
    [
        ("relative/store", "must be an absolute path or a URL with a scheme (/srv/fleet-store, "
         "file:///srv/fleet-store, s3://bucket/fleet/eu) (got 'relative/store')"),
        ("'s3://'", "must be an absolute path or a URL with a scheme (/srv/fleet-store, "
         "file:///srv/fleet-store, s3://bucket/fleet/eu) (got 's3://')"),
        ("42", "must be an absolute path or a URL with a scheme (/srv/fleet-store, "
         "file:///srv/fleet-store, s3://bucket/fleet/eu) (got 42)"),
        ("madeup://bucket/x",
         "fsspec knows no filesystem for the scheme 'madeup' (got 'madeup://bucket/x')"),
    ],
)
def test_a_bad_store_prefix_names_line_column_and_reason(
    tmp_path: Path, prefix: str, reason: str
) -> None:
    assert error_of(tmp_path, with_store_prefix(prefix)) == (
        f"pools.yaml:6:17: dataplane.store_prefix: {reason}"
    )


KUBERNETES = """\
dataplane:
  name: gke-us-central1
  region: us-central1
  cloud: gcp
  store_prefix: /srv/fleet-store
kubernetes:
  namespace: fleet-jobs
  default_purchase_type: on_demand
  node_selector: {cloud.google.com/gke-nodepool: gpu}
  prices:
    - {purchase_type: spot, gpu_model: A100, price_per_gpu_hour: 1.10}
    - {gpu_model: A100, price_per_gpu_hour: 3.67}
  tolerations:
    - {key: nvidia.com/gpu, operator: Exists, effect: NoSchedule}
  reclaim_taints: [example.com/going-away]
  service_account: trainer
  default_image: ghcr.io/acme/train:1
  unschedulable_grace_s: 120
"""


def test_a_kubernetes_section_replaces_the_pools(tmp_path: Path) -> None:
    pool_file = load_pool_file(write(tmp_path, KUBERNETES))

    assert pool_file.pools is None and pool_file.pool_reports() == []
    kube = pool_file.kubernetes
    assert kube is not None
    assert (kube.namespace, kube.service_account, kube.default_image) == (
        "fleet-jobs", "trainer", "ghcr.io/acme/train:1")
    assert (kube.image_pull_grace_s, kube.unschedulable_grace_s) == (300.0, 120.0)
    rules = kube.node_rules()
    assert rules.default_purchase_type == "on_demand"
    assert rules.node_selector == {"cloud.google.com/gke-nodepool": "gpu"}
    assert (rules.price("spot", "A100"), rules.price("on_demand", "A100"),
            rules.price("spot", "H100")) == (1.10, 3.67, 0.0)
    assert [(t.key, t.operator, t.effect) for t in rules.tolerations] == [
        ("nvidia.com/gpu", "Exists", "NoSchedule")]
    assert "example.com/going-away" in rules.reclaim_taints
    assert "aws-node-termination-handler/spot-itn" in rules.reclaim_taints   # kept
    # Not given: the clouds' spot taints are tolerated on spot pools.
    assert ("cloud.google.com/gke-spot", "true") in {
        (t.key, t.value) for t in rules.spot_tolerations}


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        ("kubernetes:\n", "pools: []\nkubernetes:\n",
         "pools.yaml:6:8: pools: must list at least one pool"),
        ("  namespace: fleet-jobs\n", "  namespace: Fleet_Jobs\n",
         "pools.yaml:7:14: kubernetes.namespace: must be a DNS-1123 label"),
        ("operator: Exists", "operator: Maybe",
         "pools.yaml:14:39: kubernetes.tolerations[0].operator: Input should be 'Exists' or "
         "'Equal'"),
        ("  unschedulable_grace_s: 120\n", "  unschedulable_grace_s: soon\n",
         "pools.yaml:18:26: kubernetes.unschedulable_grace_s: must be a number of seconds >= 0 "
         "(got 'soon')"),
        ("  default_image:", "  image:",
         "pools.yaml:17:3: kubernetes.image: unknown field"),
        ("    - {gpu_model: A100, price_per_gpu_hour: 3.67}\n",
         "    - {gpu_model: A100, price_per_gpu_hour: 3.67, purchase_type: cheap}\n",
         "pools.yaml:12:66: kubernetes.prices[1].purchase_type: must be one of reserved, "
         "on_demand, spot (got 'cheap')"),
    ],
)
def test_a_bad_kubernetes_section_names_line_and_field(
    tmp_path: Path, old: str, new: str, expected: str
) -> None:
    assert old in KUBERNETES
    assert error_of(tmp_path, KUBERNETES.replace(old, new)).startswith(expected)


def test_pools_and_kubernetes_exclude_each_other(tmp_path: Path) -> None:
    both = VALID + KUBERNETES.split("\n", 5)[5]
    assert error_of(tmp_path, both).endswith(
        "kubernetes: cannot be set with pools: on Kubernetes the pools come from the "
        "cluster's GPU nodes")
    neither = KUBERNETES.split("kubernetes:")[0]
    assert error_of(tmp_path, neither) == (
        "pools.yaml:1:1: (top level): needs either pools (fixed pools, local processes) or "
        "kubernetes (pools from the cluster's GPU nodes)")
