"""The fake Kubernetes API server, checked through the official client. These are contract
tests: with FLEET_TEST_KUBECONFIG set they run against a real API server and must pass there
too, except the tests that ask for `fake_api` (compaction, logs, request records, stop)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client, config, watch
from kubernetes.watch.watch import iter_resp_lines

from tests.kube.cluster import Cluster
from tests.kube.fake_api import FakeKubeAPI

NODE = "fleet-test-node-a"  # bindings do not need the Node to exist


def pod_body(name: str, labels: dict[str, str] | None = None, **extra: Any) -> dict[str, Any]:
    container = {"name": "main", "image": "registry.k8s.io/pause:3.10"}
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": labels or {}},
        "spec": {"containers": [container]},
    } | extra


def api_error(call: Callable[..., Any], *args: Any, **kwargs: Any) -> tuple[int, dict[str, Any]]:
    """The HTTP code and the Status body of a call that must fail."""
    try:
        call(*args, **kwargs)
    except client.ApiException as err:
        return err.status, json.loads(err.body or "{}")
    pytest.fail(f"{call.__name__} did not fail")


def stream_events(cluster: Cluster, **kwargs: Any) -> list[tuple[str, str]]:
    """(type, name) of the pod events a Watch().stream of the test namespace yields."""
    stream = watch.Watch().stream(cluster.core.list_namespaced_pod, cluster.namespace, **kwargs)
    return [(e["type"], e["object"].metadata.name) for e in stream if e["type"] != "BOOKMARK"]


def raw_watch_all_namespaces(cluster: Cluster, **kwargs: Any) -> list[dict[str, Any]]:
    """A raw all-namespaces pod watch read line by line, as an agent's own loop would."""
    response = cluster.core.list_pod_for_all_namespaces(
        watch=True, _preload_content=False, **kwargs
    )
    try:
        return [json.loads(line) for line in iter_resp_lines(response) if line]
    finally:
        response.release_conn()


def test_create_sets_server_fields_and_pod_defaults(cluster: Cluster) -> None:
    body = pod_body("p1", status={"phase": "Running"})
    body["spec"]["containers"][0]["resources"] = {"limits": {"nvidia.com/gpu": "2"}}
    cluster.core.create_namespaced_pod(cluster.namespace, body)

    pod = cluster.pod("p1")
    assert pod is not None
    meta, spec = pod["metadata"], pod["spec"]
    assert meta["uid"] and meta["resourceVersion"] and meta["namespace"] == cluster.namespace
    created = datetime.fromisoformat(meta["creationTimestamp"])
    assert abs((datetime.now(UTC) - created).total_seconds()) < 60
    assert pod["status"]["phase"] == "Pending"  # status in a create body is ignored
    assert spec["restartPolicy"] == "Always" and spec["terminationGracePeriodSeconds"] == 30
    assert spec["dnsPolicy"] == "ClusterFirst" and spec["schedulerName"] == "default-scheduler"
    assert spec["containers"][0]["resources"]["requests"] == {"nvidia.com/gpu": "2"}

    patched = cluster.core.patch_namespaced_pod(
        "p1", cluster.namespace, {"metadata": {"labels": {"a": "b"}}}
    )
    assert patched.metadata.resource_version != meta["resourceVersion"]
    generated = cluster.core.create_namespaced_pod(
        cluster.namespace, pod_body("") | {"metadata": {"generateName": "gen-"}}
    )
    assert generated.metadata.name.startswith("gen-") and len(generated.metadata.name) == 9


def test_duplicate_name_is_409_already_exists(cluster: Cluster) -> None:
    cluster.core.create_namespaced_pod(cluster.namespace, pod_body("p1"))
    code, status = api_error(cluster.core.create_namespaced_pod, cluster.namespace, pod_body("p1"))
    assert (code, status["reason"]) == (409, "AlreadyExists")
    assert status["details"]["name"] == "p1"


@pytest.mark.parametrize(
    ("name", "change", "field", "text"),
    [
        ("Bad_Name", {}, "metadata.name", 'metadata.name: Invalid value: "Bad_Name"'),
        ("p1", {"spec": {"containers": []}}, "spec.containers", "spec.containers: Required value"),
        ("p1", {"spec": {"containers": [{"name": "main"}]}}, "spec.containers[0].image", "image"),
        ("p1", {"metadata": {"name": "p1", "labels": {"a": "b c"}}}, "metadata.labels", "b c"),
    ],
    ids=["name", "no-containers", "no-image", "label-value"],
)
def test_invalid_objects_are_422_naming_the_field(
    cluster: Cluster, name: str, change: dict[str, Any], field: str, text: str
) -> None:
    body = pod_body(name) | change
    code, status = api_error(cluster.core.create_namespaced_pod, cluster.namespace, body)
    assert (code, status["reason"]) == (422, "Invalid")
    assert text in status["message"] and status["message"].startswith(f'Pod "{name}" is invalid')
    assert field in [cause["field"] for cause in status["details"]["causes"]]


def test_missing_namespace_is_404_and_a_foreign_body_namespace_400(cluster: Cluster) -> None:
    missing = cluster.namespace + "-missing"
    code, status = api_error(cluster.core.create_namespaced_pod, missing, pod_body("p1"))
    assert (code, status["reason"]) == (404, "NotFound")
    assert status["message"] == f'namespaces "{missing}" not found'

    body = pod_body("p1")
    body["metadata"]["namespace"] = "default"
    code, status = api_error(cluster.core.create_namespaced_pod, cluster.namespace, body)
    assert (code, status["reason"]) == (400, "BadRequest")


def test_label_selectors(cluster: Cluster) -> None:
    for name, labels in [("a", {"app": "x", "tier": "1"}), ("b", {"app": "y"}), ("c", {})]:
        cluster.core.create_namespaced_pod(cluster.namespace, pod_body(name, labels))
    cases = {
        "app=x": {"a"},
        "app==x": {"a"},
        "app!=x": {"b", "c"},
        "app in (x, y)": {"a", "b"},
        "app notin (x)": {"b", "c"},
        "app": {"a", "b"},
        "!app": {"c"},
        "app,tier=1": {"a"},
        "app=y,tier": set(),
    }
    for selector, expected in cases.items():
        found = {p["metadata"]["name"] for p in cluster.pods(selector)}
        assert found == expected, selector
    code, status = api_error(
        cluster.core.list_namespaced_pod, cluster.namespace, label_selector="a in b"
    )
    assert (code, status["reason"]) == (400, "BadRequest")


def test_field_selectors(cluster: Cluster) -> None:
    for name in ("a", "b", "c"):
        cluster.core.create_namespaced_pod(cluster.namespace, pod_body(name))
    cluster.run("a", NODE)
    cases = {
        "metadata.name=b": {"b"},
        f"spec.nodeName={NODE}": {"a"},
        "spec.nodeName=": {"b", "c"},
        "status.phase=Running": {"a"},
        "status.phase!=Running,metadata.name!=c": {"b"},
        f"metadata.namespace=={cluster.namespace}": {"a", "b", "c"},
    }
    for selector, expected in cases.items():
        found = cluster.core.list_namespaced_pod(cluster.namespace, field_selector=selector).items
        assert {p.metadata.name for p in found} == expected, selector
    code, status = api_error(
        cluster.core.list_namespaced_pod, cluster.namespace, field_selector="x=1"
    )
    assert (code, status["reason"]) == (400, "BadRequest")
    assert "field label not supported: x" in status["message"]


def test_watch_from_a_list_resource_version_gets_only_later_events(cluster: Cluster) -> None:
    cluster.core.create_namespaced_pod(cluster.namespace, pod_body("a"))
    listed = cluster.core.list_namespaced_pod(cluster.namespace)
    cluster.core.create_namespaced_pod(cluster.namespace, pod_body("b"))
    cluster.core.patch_namespaced_pod("a", cluster.namespace, {"metadata": {"labels": {"x": "1"}}})

    events = stream_events(
        cluster, resource_version=listed.metadata.resource_version, timeout_seconds=1
    )
    assert events == [("ADDED", "b"), ("MODIFIED", "a")]


def test_raw_all_namespaces_watch_shows_a_deletion_as_marked_then_deleted(
    cluster: Cluster,
) -> None:
    created = cluster.core.create_namespaced_pod(cluster.namespace, pod_body("a"))
    cluster.core.delete_namespaced_pod("a", cluster.namespace)  # unbound: gone at once

    events = raw_watch_all_namespaces(
        cluster, resource_version=created.metadata.resource_version, timeout_seconds=1
    )
    ours = [e for e in events if e["object"]["metadata"].get("namespace") == cluster.namespace]
    assert [e["type"] for e in ours] == ["MODIFIED", "DELETED"]
    marked, final = ours[0]["object"]["metadata"], ours[1]["object"]
    assert marked["deletionTimestamp"] and marked["deletionGracePeriodSeconds"] == 0
    assert final["kind"] == "Pod" and final["metadata"]["uid"] == created.metadata.uid
    versions = [created.metadata.resource_version, marked["resourceVersion"]]
    assert final["metadata"]["resourceVersion"] not in versions


def test_watch_without_version_starts_with_current_objects_and_ends_on_timeout(
    cluster: Cluster,
) -> None:
    for name in ("a", "b"):
        cluster.core.create_namespaced_pod(cluster.namespace, pod_body(name))
    started = time.monotonic()
    events = stream_events(cluster, timeout_seconds=1)
    assert sorted(events) == [("ADDED", "a"), ("ADDED", "b")]
    assert time.monotonic() - started < 5


def test_watch_with_selector_sees_a_pod_that_stops_matching_as_deleted(cluster: Cluster) -> None:
    created = cluster.core.create_namespaced_pod(cluster.namespace, pod_body("a", {"app": "x"}))
    cluster.core.patch_namespaced_pod(
        "a", cluster.namespace, {"metadata": {"labels": {"app": "y"}}}
    )
    cluster.core.patch_namespaced_pod(
        "a", cluster.namespace, {"metadata": {"labels": {"app": "x"}}}
    )

    events = stream_events(
        cluster,
        label_selector="app=x",
        resource_version=created.metadata.resource_version,
        timeout_seconds=1,
    )
    assert events == [("DELETED", "a"), ("ADDED", "a")]


def test_watch_from_a_compacted_version_is_410_expired(
    cluster: Cluster, fake_api: FakeKubeAPI
) -> None:
    created = cluster.core.create_namespaced_pod(cluster.namespace, pod_body("a"))
    cluster.core.patch_namespaced_pod("a", cluster.namespace, {"metadata": {"labels": {"x": "1"}}})
    fake_api.compact()

    events = raw_watch_all_namespaces(
        cluster, resource_version=created.metadata.resource_version, timeout_seconds=5
    )
    assert [e["type"] for e in events] == ["ERROR"]
    assert (events[0]["object"]["code"], events[0]["object"]["reason"]) == (410, "Expired")
    with pytest.raises(client.ApiException) as raised:
        stream_events(
            cluster, resource_version=created.metadata.resource_version, timeout_seconds=5
        )
    assert raised.value.status == 410

    # A short history expires old versions the same way.
    fake_api.max_history = 2
    listed = cluster.core.list_namespaced_pod(cluster.namespace).metadata.resource_version
    for value in ("2", "3", "4"):
        cluster.core.patch_namespaced_pod(
            "a", cluster.namespace, {"metadata": {"labels": {"x": value}}}
        )
    with pytest.raises(client.ApiException):
        stream_events(cluster, resource_version=listed, timeout_seconds=5)


def test_graceful_delete_keeps_a_bound_pod_until_a_grace_zero_delete(cluster: Cluster) -> None:
    cluster.core.create_namespaced_pod(cluster.namespace, pod_body("a"))
    cluster.run("a", NODE)

    answer = cluster.core.delete_namespaced_pod("a", cluster.namespace)
    assert answer.metadata.deletion_timestamp is not None
    pod = cluster.pod("a")
    assert pod is not None and pod["metadata"]["deletionGracePeriodSeconds"] == 30
    cluster.core.delete_namespaced_pod("a", cluster.namespace, grace_period_seconds=60)
    assert (cluster.pod("a") or {})["metadata"]["deletionGracePeriodSeconds"] == 30
    cluster.core.delete_namespaced_pod("a", cluster.namespace, grace_period_seconds=10)
    assert (cluster.pod("a") or {})["metadata"]["deletionGracePeriodSeconds"] == 10

    cluster.finish_deletion("a")
    assert cluster.pod("a") is None


def test_unbound_and_finished_pods_are_deleted_at_once(cluster: Cluster) -> None:
    for name in ("unbound", "done"):
        cluster.core.create_namespaced_pod(cluster.namespace, pod_body(name))
    cluster.run("done", NODE)
    cluster.finish("done", exit_code=137, reason="OOMKilled")

    for name in ("unbound", "done"):
        cluster.core.delete_namespaced_pod(name, cluster.namespace)
        assert cluster.pod(name) is None, name


def test_binding_sets_the_node_and_conflicts_when_bound(cluster: Cluster) -> None:
    cluster.core.create_namespaced_pod(cluster.namespace, pod_body("a"))
    cluster.bind("a", NODE)

    pod = cluster.pod("a") or {}
    assert pod["spec"]["nodeName"] == NODE
    scheduled = [c for c in pod["status"]["conditions"] if c["type"] == "PodScheduled"]
    assert [c["status"] for c in scheduled] == ["True"]
    with pytest.raises(client.ApiException) as raised:
        cluster.bind("a", "fleet-test-node-b")
    assert raised.value.status == 409


def test_status_subresource_and_main_resource_change_their_own_parts(cluster: Cluster) -> None:
    cluster.core.create_namespaced_pod(cluster.namespace, pod_body("a"))

    main = cluster.core.patch_namespaced_pod(
        "a", cluster.namespace, {"metadata": {"labels": {"l": "1"}}, "status": {"phase": "Running"}}
    )
    assert (main.metadata.labels, main.status.phase) == ({"l": "1"}, "Pending")
    status = cluster.core.patch_namespaced_pod_status(
        "a",
        cluster.namespace,
        {"spec": {"activeDeadlineSeconds": 5}, "status": {"phase": "Running"}},
    )
    assert (status.spec.active_deadline_seconds, status.status.phase) == (None, "Running")
    assert cluster.core.read_namespaced_pod_status("a", cluster.namespace).status.phase == "Running"


def test_stale_resource_version_is_409_conflict(cluster: Cluster) -> None:
    old = cluster.core.create_namespaced_pod(cluster.namespace, pod_body("a"))
    cluster.core.patch_namespaced_pod("a", cluster.namespace, {"metadata": {"labels": {"x": "1"}}})

    code, status = api_error(cluster.core.replace_namespaced_pod, "a", cluster.namespace, old)
    assert (code, status["reason"]) == (409, "Conflict")


def test_patch_formats(cluster: Cluster) -> None:
    cluster.core.create_namespaced_pod(cluster.namespace, pod_body("a", {"keep": "1", "x": "1"}))
    annotations = {"fleet/attempt": "7", "other": "y"}
    patched = cluster.core.patch_namespaced_pod(
        "a", cluster.namespace, {"metadata": {"annotations": annotations}}
    )
    assert patched.metadata.annotations == annotations

    merge = {"metadata": {"annotations": {"other": None}}}
    patched = cluster.core.patch_namespaced_pod(
        "a", cluster.namespace, merge, _content_type="application/merge-patch+json"
    )
    assert patched.metadata.annotations == {"fleet/attempt": "7"}
    ops = [
        {"op": "test", "path": "/metadata/labels/x", "value": "1"},
        {"op": "replace", "path": "/metadata/labels/x", "value": "2"},
    ]
    patched = cluster.core.patch_namespaced_pod("a", cluster.namespace, ops)
    assert patched.metadata.labels == {"keep": "1", "x": "2"}


def test_node_status_cordon_and_taints(cluster: Cluster) -> None:
    name = "fleet-test-gpu-1"
    node = cluster.add_gpu_node(name, gpus=4)
    assert node["status"]["allocatable"]["nvidia.com/gpu"] == "4"
    assert node["metadata"]["labels"]["nvidia.com/gpu.product"] == "NVIDIA-A100-SXM4-80GB"

    node = cluster.set_node_ready(name, False)
    ready = [c["status"] for c in node["status"]["conditions"] if c["type"] == "Ready"]
    assert ready == ["False"] and node["status"]["capacity"]["nvidia.com/gpu"] == "4"

    cluster.cordon(name)
    cordoned = cluster.core.list_node(field_selector="spec.unschedulable=true").items
    assert name in {n.metadata.name for n in cordoned}
    cluster.uncordon(name)
    cordoned = cluster.core.list_node(field_selector="spec.unschedulable=true").items
    assert name not in {n.metadata.name for n in cordoned}

    cluster.taint(name, "fleet/maintenance", "yes")
    node = cluster.taint(name, "fleet/draining", effect="NoExecute")
    assert {t["key"] for t in node["spec"]["taints"]} == {"fleet/maintenance", "fleet/draining"}
    assert (
        cluster.untaint(name, "fleet/maintenance")["spec"]["taints"][0]["key"] == "fleet/draining"
    )

    cluster.delete_node(name)
    assert cluster.node(name) is None


def test_pod_log_honours_tail_lines_and_limit_bytes(cluster: Cluster) -> None:
    cluster.core.create_namespaced_pod(cluster.namespace, pod_body("a"))
    cluster.run("a", NODE)
    cluster.set_log("a", "one\ntwo\nthree\n")

    read = cluster.core.read_namespaced_pod_log
    assert read("a", cluster.namespace) == "one\ntwo\nthree\n"
    assert read("a", cluster.namespace, tail_lines=2) == "two\nthree\n"
    assert read("a", cluster.namespace, limit_bytes=3) == "one"


def test_log_of_a_pod_not_started_is_400_and_of_a_missing_pod_404(
    cluster: Cluster, fake_api: FakeKubeAPI
) -> None:
    cluster.core.create_namespaced_pod(cluster.namespace, pod_body("a"))
    cluster.bind("a", NODE)

    code, status = api_error(cluster.core.read_namespaced_pod_log, "a", cluster.namespace)
    assert (code, status["reason"]) == (400, "BadRequest")
    assert status["message"] == 'container "main" in pod "a" is waiting to start: ContainerCreating'
    code, status = api_error(cluster.core.read_namespaced_pod_log, "gone", cluster.namespace)
    assert (code, status["reason"]) == (404, "NotFound")


def test_deleting_a_namespace_deletes_its_pods(cluster: Cluster, fake_api: FakeKubeAPI) -> None:
    cluster.create_foreign_pod("other", NODE, gpus=2, namespace="fleet-test-others")
    listed = cluster.core.list_pod_for_all_namespaces().metadata.resource_version

    response = cluster.core.delete_namespace("fleet-test-others", _preload_content=False)
    assert response.status == 200
    events = raw_watch_all_namespaces(cluster, resource_version=listed, timeout_seconds=1)
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in events] == [("DELETED", "other")]


def test_requests_are_recorded_in_rbac_terms(cluster: Cluster, fake_api: FakeKubeAPI) -> None:
    cluster.core.create_namespaced_pod(cluster.namespace, pod_body("a"))
    cluster.run("a", NODE)
    cluster.core.list_node()
    cluster.core.read_namespaced_pod_log("a", cluster.namespace)
    cluster.core.delete_namespaced_pod("a", cluster.namespace, grace_period_seconds=0)

    seen = [(r.verb, r.resource, r.subresource, r.namespace, r.code) for r in fake_api.requests]
    ns = cluster.namespace
    assert seen == [
        ("create", "pods", "", ns, 201),
        ("create", "pods", "binding", ns, 201),
        ("get", "pods", "", ns, 200),
        ("patch", "pods", "status", ns, 200),
        ("list", "nodes", "", "", 200),
        ("get", "pods", "log", ns, 200),
        ("delete", "pods", "", ns, 200),
    ]
    assert {r.user_agent for r in fake_api.requests} == {"fleet-test-cluster-driver"}


def test_bookmarks_carry_the_current_version(cluster: Cluster, fake_api: FakeKubeAPI) -> None:
    cluster.core.create_namespaced_pod(cluster.namespace, pod_body("a"))
    listed = cluster.core.list_namespaced_pod(cluster.namespace).metadata.resource_version

    events = raw_watch_all_namespaces(
        cluster, resource_version=listed, allow_watch_bookmarks=True, timeout_seconds=1
    )
    assert [e["type"] for e in events] == ["BOOKMARK"]
    assert events[0]["object"]["metadata"]["resourceVersion"] == listed


def open_client(fake: FakeKubeAPI, tmp_path: Path) -> client.CoreV1Api:
    kubeconfig = fake.write_kubeconfig(tmp_path / "kubeconfig")
    return client.CoreV1Api(config.new_client_from_config(config_file=str(kubeconfig)))


def test_stop_returns_promptly_while_a_watch_is_open(tmp_path: Path) -> None:
    fake = FakeKubeAPI().start()
    core = open_client(fake, tmp_path)
    events: list[str] = []
    opened = threading.Event()

    def follow() -> None:
        response = core.list_namespace(watch=True, _preload_content=False)
        opened.set()
        events.extend(line for line in iter_resp_lines(response) if line)

    reader = threading.Thread(target=follow, daemon=True)
    reader.start()
    assert opened.wait(5)
    started = time.monotonic()
    fake.stop()
    reader.join(timeout=5)
    assert time.monotonic() - started < 3 and not reader.is_alive()
    assert len(events) == 4  # the namespaces every cluster starts with


def test_restart_keeps_objects_and_a_wrong_token_is_401(tmp_path: Path) -> None:
    with FakeKubeAPI() as fake:
        core = open_client(fake, tmp_path)
        core.create_namespace({"metadata": {"name": "kept"}})
        fake.stop()
        fake.start()
        assert core.read_namespace("kept").status.phase == "Active"

        fake.token = "other"
        code, status = api_error(core.list_namespace)
        assert (code, status["reason"]) == (401, "Unauthorized")
