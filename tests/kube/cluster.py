"""The test side of a Kubernetes cluster: what the scheduler, the kubelets and other users would
do, done through the official `kubernetes` client so that the same test runs against
`FakeKubeAPI` or a real API server (one with no kubelet, scheduler or controllers).

Only pod logs cannot be written through the API: `set_log` needs the fake and skips otherwise.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client, config

from tests.kube.fake_api import FakeKubeAPI

NAME_PREFIX = "fleet-test-"  # what tests may create on a real cluster (nodes, namespaces)
USER_AGENT = "fleet-test-cluster-driver"  # tells the driver's requests from the agent's
IMAGE = "registry.k8s.io/pause:3.10"

Obj = dict[str, Any]


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def is_not_found(err: client.ApiException) -> bool:
    return bool(err.status == 404)


class Cluster:
    """Drive a cluster for a test; objects are returned as plain dicts (camelCase keys)."""

    def __init__(self, kubeconfig: Path, namespace: str, fake: FakeKubeAPI | None) -> None:
        self._kubeconfig = kubeconfig
        self._namespace = namespace
        self._fake = fake
        self.api_client = config.new_client_from_config(config_file=str(kubeconfig))
        self.api_client.user_agent = USER_AGENT
        self._core = client.CoreV1Api(self.api_client)
        self._nodes: set[str] = set()
        self._namespaces: list[str] = []

    @property
    def kubeconfig(self) -> Path:
        return self._kubeconfig

    @property
    def namespace(self) -> str:
        return self._namespace

    @property
    def is_fake(self) -> bool:
        return self._fake is not None

    @property
    def fake(self) -> FakeKubeAPI | None:
        return self._fake

    @property
    def core(self) -> client.CoreV1Api:
        return self._core

    def _dict(self, model: Any) -> Obj:
        out: Obj = self.api_client.sanitize_for_serialization(model)
        return out

    # --- namespaces and nodes ----------------------------------------------------------------

    def create_namespace(self, name: str) -> None:
        """Create a namespace that cleanup() deletes; "already exists" is fine."""
        self._require_test_name(name)
        try:
            self.core.create_namespace({"metadata": {"name": name}})
        except client.ApiException as err:
            if err.status != 409:
                raise
        if name not in self._namespaces:
            self._namespaces.append(name)
        if not self.is_fake:
            # No controller manager creates the "default" service account, and the
            # ServiceAccount admission plugin refuses pods without it.
            try:
                self.core.create_namespaced_service_account(name, {"metadata": {"name": "default"}})
            except client.ApiException as err:
                if err.status != 409:
                    raise

    def _require_test_name(self, name: str) -> None:
        if not self.is_fake:
            assert name.startswith(NAME_PREFIX), f"{name!r}: on a real cluster use {NAME_PREFIX}*"

    def add_gpu_node(
        self,
        name: str,
        *,
        gpus: int = 8,
        product: str = "NVIDIA-A100-SXM4-80GB",
        memory_mib: int = 81920,
        labels: dict[str, str] | None = None,
        taints: list[Obj] | None = None,
        ready: bool = True,
        unschedulable: bool = False,
        region: str = "us-central1",
        zone: str = "us-central1-a",
    ) -> Obj:
        """A Node as the kubelet and the NVIDIA GPU feature discovery would register it."""
        self._require_test_name(name)
        node_labels = {
            "kubernetes.io/hostname": name,
            "kubernetes.io/os": "linux",
            "nvidia.com/gpu.product": product,
            "nvidia.com/gpu.memory": str(memory_mib),
            "nvidia.com/gpu.count": str(gpus),
            "topology.kubernetes.io/region": region,
            "topology.kubernetes.io/zone": zone,
        } | (labels or {})
        spec: Obj = {}
        if taints:
            spec["taints"] = taints
        if unschedulable:
            spec["unschedulable"] = True
        body = {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {"name": name, "labels": node_labels},
        }
        self.core.create_node(body | {"spec": spec})
        self._nodes.add(name)
        resources = {"cpu": "96", "memory": "1056Gi", "pods": "110", "nvidia.com/gpu": str(gpus)}
        status = {
            "capacity": resources,
            "allocatable": resources,
            "conditions": [ready_condition(ready, now())],
        }
        # Through the status subresource: a real server may drop status given on create.
        return self._dict(self.core.patch_node_status(name, {"status": status}))

    def node(self, name: str) -> Obj | None:
        try:
            return self._dict(self.core.read_node(name))
        except client.ApiException as err:
            if is_not_found(err):
                return None
            raise

    def set_node_ready(self, name: str, ready: bool) -> Obj:
        node = self._dict(self.core.read_node(name))
        conditions = (node.get("status") or {}).get("conditions") or []
        old = next((c for c in conditions if c.get("type") == "Ready"), None)
        condition = ready_condition(ready, now())
        if old is not None and old.get("status") == condition["status"]:
            condition["lastTransitionTime"] = old.get("lastTransitionTime")
        # Strategic merge: conditions merge by type, the other conditions stay.
        return self._dict(
            self.core.patch_node_status(name, {"status": {"conditions": [condition]}})
        )

    def cordon(self, name: str) -> Obj:
        return self._dict(self.core.patch_node(name, {"spec": {"unschedulable": True}}))

    def uncordon(self, name: str) -> Obj:
        return self._dict(self.core.patch_node(name, {"spec": {"unschedulable": False}}))

    def taint(self, name: str, key: str, value: str = "", effect: str = "NoSchedule") -> Obj:
        node = self._dict(self.core.read_node(name))
        taints = [
            t
            for t in (node.get("spec") or {}).get("taints") or []
            if (t.get("key"), t.get("effect")) != (key, effect)
        ]
        taint: Obj = {"key": key, "effect": effect} | ({"value": value} if value else {})
        return self._patch_taints(node, [*taints, taint])

    def untaint(self, name: str, key: str) -> Obj:
        node = self._dict(self.core.read_node(name))
        taints = [t for t in (node.get("spec") or {}).get("taints") or [] if t.get("key") != key]
        return self._patch_taints(node, taints)

    def _patch_taints(self, node: Obj, taints: list[Obj]) -> Obj:
        # taints is a plain list for strategic merge: the patch replaces it. The RV makes a
        # concurrent change a 409 instead of a lost update.
        meta = {"resourceVersion": node["metadata"]["resourceVersion"]}
        patched = self.core.patch_node(
            node["metadata"]["name"], {"metadata": meta, "spec": {"taints": taints}}
        )
        return self._dict(patched)

    def delete_node(self, name: str) -> None:
        self.core.delete_node(name)
        self._nodes.discard(name)

    # --- pods --------------------------------------------------------------------------------

    def pods(self, selector: str = "") -> list[Obj]:
        found = self.core.list_namespaced_pod(self.namespace, label_selector=selector)
        return [self._dict(p) for p in found.items]

    def pod(self, name: str) -> Obj | None:
        try:
            return self._dict(self.core.read_namespaced_pod(name, self.namespace))
        except client.ApiException as err:
            if is_not_found(err):
                return None
            raise

    def bind(self, pod_name: str, node_name: str) -> None:
        self._bind(self.namespace, pod_name, node_name)

    def _bind(self, namespace: str, pod_name: str, node_name: str) -> None:
        body = {
            "apiVersion": "v1",
            "kind": "Binding",
            "metadata": {"name": pod_name},
            "target": {"apiVersion": "v1", "kind": "Node", "name": node_name},
        }
        # The server answers with a Status, which this client cannot parse as the V1Binding it
        # declares; errors still raise ApiException.
        response = self.core.create_namespaced_pod_binding(
            pod_name, namespace, body, _preload_content=False
        )
        response.read()
        response.release_conn()

    def set_pod_status(
        self,
        pod_name: str,
        phase: str,
        *,
        container_state: Obj | None = None,
        reason: str = "",
        message: str = "",
        conditions: list[Obj] | None = None,
    ) -> Obj:
        """Write the pod's status as a kubelet would (status subresource)."""
        return self._set_status(
            self.namespace, pod_name, phase, container_state, reason, message, conditions
        )

    def _set_status(
        self,
        namespace: str,
        pod_name: str,
        phase: str,
        container_state: Obj | None,
        reason: str,
        message: str,
        conditions: list[Obj] | None,
    ) -> Obj:
        pod = self._dict(self.core.read_namespaced_pod(pod_name, namespace))
        stamp = now()
        container = pod["spec"]["containers"][0]
        state = container_state if container_state is not None else default_state(phase, stamp)
        running = "running" in state
        container_status: Obj = {
            "name": container["name"],
            "image": container["image"],
            "imageID": "" if "waiting" in state else f"{container['image']}@sha256:{'0' * 64}",
            "ready": running and phase == "Running",
            "restartCount": 0,
            "started": running,
            "state": state,
        }
        if "waiting" not in state:
            container_status["containerID"] = f"containerd://{uuid.uuid4().hex}"
        old_status = pod.get("status") or {}
        by_type = {c["type"]: c for c in old_status.get("conditions") or []}
        for condition in phase_conditions(phase, stamp) + (conditions or []):
            by_type[condition["type"]] = condition
        status: Obj = {
            "phase": phase,
            "conditions": list(by_type.values()),
            "containerStatuses": [container_status],
            # null removes a field in a strategic merge patch
            "reason": reason or None,
            "message": message or None,
        }
        if phase != "Pending":
            status["startTime"] = old_status.get("startTime") or stamp
        meta = {"resourceVersion": pod["metadata"]["resourceVersion"]}
        patched = self.core.patch_namespaced_pod_status(
            pod_name, namespace, {"metadata": meta, "status": status}
        )
        return self._dict(patched)

    def run(self, pod_name: str, node_name: str) -> Obj:
        """What scheduler and kubelet do for a pod that starts fine: bind it, then Running."""
        self.bind(pod_name, node_name)
        return self.set_pod_status(pod_name, "Running")

    def finish(self, pod_name: str, exit_code: int = 0, reason: str = "Completed") -> Obj:
        """The container exited: Succeeded on 0, else Failed, with the terminated state."""
        pod = self.pod(pod_name) or {}
        statuses = (pod.get("status") or {}).get("containerStatuses") or [{}]
        started = ((statuses[0].get("state") or {}).get("running") or {}).get("startedAt")
        if exit_code != 0 and reason == "Completed":
            reason = "Error"
        terminated: Obj = {"exitCode": exit_code, "reason": reason, "finishedAt": now()}
        terminated["startedAt"] = started or terminated["finishedAt"]
        phase = "Succeeded" if exit_code == 0 else "Failed"
        return self.set_pod_status(pod_name, phase, container_state={"terminated": terminated})

    def finish_deletion(self, pod_name: str) -> None:
        """What a kubelet does once a deleted pod's containers stopped: delete with grace 0."""
        try:
            self.core.delete_namespaced_pod(pod_name, self.namespace, grace_period_seconds=0)
        except client.ApiException as err:
            if not is_not_found(err):
                raise

    def create_foreign_pod(
        self, name: str, node: str, gpus: int, namespace: str | None = None
    ) -> Obj:
        """A pod someone else runs on node, using gpus GPUs: bound and Running."""
        namespace = namespace or self.namespace
        if namespace != self.namespace:
            self.create_namespace(namespace)
        container = {
            "name": "main",
            "image": IMAGE,
            "resources": {"limits": {"nvidia.com/gpu": str(gpus)}},
        }
        body = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name, "labels": {"app": "not-fleet"}},
            "spec": {"containers": [container]},
        }
        self.core.create_namespaced_pod(namespace, body)
        self._bind(namespace, name, node)
        return self._set_status(namespace, name, "Running", None, "", "", None)

    def set_log(self, pod_name: str, text: str) -> None:
        if self._fake is None:
            pytest.skip("pod logs need a kubelet")
        self._fake.set_pod_log(self.namespace, pod_name, text)

    # --- teardown ----------------------------------------------------------------------------

    def cleanup(self) -> None:
        """Delete what this driver created. Pods go first, with grace 0: a real API server
        without controllers never empties a deleted namespace by itself."""
        try:
            for namespace in self._namespaces:
                for pod in self.core.list_namespaced_pod(namespace).items:
                    self._ignore_missing(
                        self.core.delete_namespaced_pod,
                        pod.metadata.name,
                        namespace,
                        grace_period_seconds=0,
                    )
                # The server answers with the Namespace, which this client cannot parse as
                # the V1Status it declares.
                response = self._ignore_missing(
                    self.core.delete_namespace, namespace, _preload_content=False
                )
                if response is not None:
                    response.release_conn()
            for name in sorted(self._nodes):
                self._ignore_missing(self.core.delete_node, name)
            self._nodes.clear()
            self._namespaces.clear()
        finally:
            self.api_client.close()

    @staticmethod
    def _ignore_missing(call: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return call(*args, **kwargs)
        except client.ApiException as err:
            if not is_not_found(err):
                raise
            return None


def ready_condition(ready: bool, stamp: str) -> Obj:
    return {
        "type": "Ready",
        "status": "True" if ready else "False",
        "reason": "KubeletReady" if ready else "KubeletNotReady",
        "message": "kubelet is posting ready status" if ready else "container runtime is down",
        "lastHeartbeatTime": stamp,
        "lastTransitionTime": stamp,
    }


def default_state(phase: str, stamp: str) -> Obj:
    if phase == "Running":
        return {"running": {"startedAt": stamp}}
    if phase in ("Succeeded", "Failed"):
        code, reason = (0, "Completed") if phase == "Succeeded" else (1, "Error")
        return {
            "terminated": {
                "exitCode": code,
                "reason": reason,
                "startedAt": stamp,
                "finishedAt": stamp,
            }
        }
    return {"waiting": {"reason": "ContainerCreating"}}


def phase_conditions(phase: str, stamp: str) -> list[Obj]:
    """The conditions a kubelet reports with each phase."""

    def condition(type_: str, ok: bool, reason: str = "") -> Obj:
        out: Obj = {
            "type": type_,
            "status": "True" if ok else "False",
            "lastProbeTime": None,
            "lastTransitionTime": stamp,
        }
        return out | ({"reason": reason} if reason else {})

    if phase == "Running":
        return [condition(t, True) for t in ("Initialized", "ContainersReady", "Ready")]
    if phase in ("Succeeded", "Failed"):
        why = "PodCompleted" if phase == "Succeeded" else "PodFailed"
        return [condition("Initialized", True, why)] + [
            condition(t, False, why) for t in ("ContainersReady", "Ready")
        ]
    return [condition("Initialized", True)] + [
        condition(t, False, "ContainersNotReady") for t in ("ContainersReady", "Ready")
    ]
