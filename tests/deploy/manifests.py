"""Reading the Kubernetes manifests under deploy/ as plain data, the way kustomize sees them."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
KUSTOMIZATION = "kustomization.yaml"
# Example Secrets, kept out of the kustomizations on purpose: `kubectl apply -k` would
# overwrite the real Secret (created with `kubectl create secret`) with the placeholders.
NOT_APPLIED = frozenset({"secret.yaml"})
CLUSTER_SCOPED_KINDS = frozenset({"Namespace", "ClusterRole", "ClusterRoleBinding"})
WORKLOAD_KINDS = frozenset({"Deployment", "Job"})

Manifest = dict[str, Any]


def yaml_files() -> list[Path]:
    return sorted([*DEPLOY.rglob("*.yaml"), *DEPLOY.rglob("*.yml")])


def kustomize_folders() -> list[Path]:
    return sorted(path.parent for path in DEPLOY.rglob(KUSTOMIZATION))


def documents(path: Path) -> list[Manifest]:
    """Every non-empty document of one file."""
    with path.open() as stream:
        return [document for document in yaml.safe_load_all(stream) if document is not None]


def kustomization(folder: Path) -> Manifest:
    (document,) = documents(folder / KUSTOMIZATION)
    return document


def listed_files(folder: Path) -> list[str]:
    resources: list[str] = kustomization(folder).get("resources", [])
    return resources


def applied(folder: Path) -> list[Manifest]:
    """What `kubectl apply -k folder` applies (before kustomize's own edits)."""
    return [document for name in listed_files(folder) for document in documents(folder / name)]


def with_examples(folder: Path) -> list[Manifest]:
    """What the folder applies, plus the example Secrets the user creates by hand."""
    examples = [document for name in sorted(NOT_APPLIED) for document in documents(folder / name)]
    return applied(folder) + examples


def find(manifests: list[Manifest], kind: str, name: str) -> Manifest:
    found = [m for m in manifests if m["kind"] == kind and m["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name!r}, found {len(found)}"
    return found[0]


def of_kind(manifests: list[Manifest], kind: str) -> list[Manifest]:
    return [m for m in manifests if m["kind"] == kind]


def pod_spec(workload: Manifest) -> Manifest:
    spec: Manifest = workload["spec"]["template"]["spec"]
    return spec


def containers(workload: Manifest) -> Iterator[Manifest]:
    spec = pod_spec(workload)
    yield from spec.get("initContainers", [])
    yield from spec["containers"]


def workloads() -> Iterator[tuple[Path, Manifest]]:
    for folder in kustomize_folders():
        for manifest in applied(folder):
            if manifest["kind"] in WORKLOAD_KINDS:
                yield folder, manifest


def config_values(manifests: list[Manifest], kind: str, name: str) -> dict[str, str]:
    """A ConfigMap's data, or a Secret's stringData and (base64) data, as text."""
    source = find(manifests, kind, name)
    values: dict[str, str] = dict(source.get("stringData", {}))
    if kind == "Secret":
        values.update(
            {key: base64.b64decode(value).decode() for key, value in source.get("data", {}).items()}
        )
    else:
        values.update(source.get("data", {}))
    return values
