"""One Pod per attempt (``domain.kube_pods``): names, labels, the manifest, reading it back,
and ``pod_verdict``'s table from a pod's state to the attempt's phase.

Pods are built as the API returns them (camelCase JSON, RFC 3339 timestamps).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from dataplane_agent.domain.attempt import Phase, TaskResult, Verdict
from dataplane_agent.domain.kube_nodes import PRODUCT_LABEL, NodeTerm, Toleration
from dataplane_agent.domain.kube_pods import (
    LABEL_ATTEMPT,
    LABEL_DATAPLANE,
    LABEL_JOB,
    LABEL_MANAGED_BY,
    LABEL_PROJECT,
    NOTE_CANCEL,
    PodFacts,
    PodIdentity,
    PodPlan,
    finished_at,
    label_value,
    parse_time,
    pod_identity,
    pod_manifest,
    pod_name,
    pod_verdict,
    started_at,
)
from dataplane_agent.launcher.base import ATTEMPT_ID

# What the API server accepts as an object name (IsDNS1123Subdomain): dot-separated labels,
# each starting and ending with a letter or digit.
DNS_LABEL = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
DNS_SUBDOMAIN = re.compile(rf"^{DNS_LABEL}(\.{DNS_LABEL})*$")
LABEL_VALUE = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?$")
HASHED = re.compile(r"^fleet-[a-z0-9-]*[0-9a-f]{10}$")

CREATED = "2026-11-24T21:00:00Z"
T0 = datetime(2026, 11, 24, 21, 0, 0, tzinfo=UTC)
EKS = "eks.amazonaws.com/capacityType"


def valid_pod_name(name: str) -> bool:
    return len(name) <= 253 and DNS_SUBDOMAIN.match(name) is not None


# -- names and labels ---------------------------------------------------------------------------


@pytest.mark.parametrize("attempt_id", ["j-0123456789ab-1", "a", "0", "j.1", "x" * 128])
def test_a_normal_attempt_id_gives_the_plain_name(attempt_id: str) -> None:
    assert pod_name(attempt_id) == f"fleet-{attempt_id}"


@pytest.mark.parametrize(
    ("attempt_id", "cleaned"),
    [
        pytest.param("J-0123456789AB-1", "j-0123456789ab-1", id="uppercase"),
        pytest.param("job_1_attempt_2", "job-1-attempt-2", id="underscores"),
        pytest.param("j-1.", "j-1", id="trailing-dot"),
        pytest.param("j-1-", "j-1", id="trailing-hyphen"),
        pytest.param("Job" * 100, "job" * 66 + "jo", id="very-long"),
        pytest.param("___", "", id="nothing-left"),
        pytest.param("ÄÖÜ ß", "", id="not-ascii"),
    ],
)
def test_an_odd_attempt_id_gives_a_cleaned_name_with_a_hash(
    attempt_id: str, cleaned: str
) -> None:
    name = pod_name(attempt_id)

    assert valid_pod_name(name)
    assert HASHED.match(name), name
    prefix = f"fleet-{cleaned}-" if cleaned else "fleet-"
    assert name.startswith(prefix) and len(name) == len(prefix) + 10


def test_a_pod_name_is_stable() -> None:
    assert pod_name("J_1") == pod_name("J_1")


def test_ids_that_clean_up_alike_get_different_names() -> None:
    names = {pod_name(i) for i in ("J-1", "j_1", "J_1", "j-1", "J.1-")}

    assert len(names) == 5
    assert "fleet-j-1" in names


@pytest.mark.parametrize("attempt_id", ["j..1", "j.-1", "j-.1"])
def test_dots_next_to_dots_or_hyphens_still_give_a_valid_name(attempt_id: str) -> None:
    assert ATTEMPT_ID.match(attempt_id)

    assert valid_pod_name(pod_name(attempt_id))


ATTEMPT_IDS = st.from_regex(ATTEMPT_ID, fullmatch=True)


@settings(max_examples=200, deadline=None)
@given(ATTEMPT_IDS)
@example("j-0123456789ab-1")
@example("J-0123456789AB-1")
@example("a" * 128)
@example("A" * 128)
def test_any_attempt_id_gives_a_valid_pod_name(attempt_id: str) -> None:
    assert ATTEMPT_ID.match(attempt_id)

    assert valid_pod_name(pod_name(attempt_id))


@settings(max_examples=200, deadline=None)
@given(st.lists(ATTEMPT_IDS, min_size=2, max_size=8, unique=True))
@example(["J-1", "j_1", "j-1", "J_1"])
def test_distinct_attempt_ids_give_distinct_names(attempt_ids: list[str]) -> None:
    names = [pod_name(i) for i in attempt_ids]

    assert len(set(names)) == len(names)
    assert all(len(name) <= 253 for name in names)


@pytest.mark.parametrize("text", ["", "j-1", "A_b.c-9", "x" * 63])
def test_a_valid_label_value_is_kept(text: str) -> None:
    assert label_value(text) == text


@pytest.mark.parametrize("text", ["x" * 64, "-lead", "trail_", "a b", "über", "a/b", "..."])
def test_an_invalid_label_value_is_replaced_by_a_valid_one(text: str) -> None:
    value = label_value(text)

    assert value != text
    assert LABEL_VALUE.match(value) and 0 < len(value) <= 63


def test_label_values_of_texts_alike_after_cleanup_differ() -> None:
    assert label_value("a b") != label_value("a/b")


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_label_value_is_valid_for_any_text(text: str) -> None:
    value = label_value(text)

    assert len(value) <= 63
    assert LABEL_VALUE.match(value)


# -- the manifest -------------------------------------------------------------------------------

A100_TERM = NodeTerm(PRODUCT_LABEL, "NVIDIA-A100-SXM4-80GB", absent=("karpenter.sh/capacity-type",))
PCIE_TERM = NodeTerm(PRODUCT_LABEL, "NVIDIA-A100-80GB-PCIe", EKS, "ON_DEMAND")
GPU_TOLERATION = Toleration("nvidia.com/gpu", "Exists", effect="NoSchedule")


def plan(**changes: Any) -> PodPlan:
    fields: dict[str, Any] = {
        "namespace": "fleet-jobs", "dataplane": "dp-east", "attempt_id": "j-0123456789ab-1",
        "job_id": "j-0123456789ab", "epoch": 3, "pool": "a100-80gb-on-demand", "gpus": 2,
        "image": "ghcr.io/acme/train:1.2", "command": ["python", "train.py"],
        "env": {"HF_HOME": "/cache"}, "terms": [A100_TERM], "tolerations": [GPU_TOLERATION],
    }
    fields.update(changes)
    return PodPlan(**fields)


def main_container(manifest: Mapping[str, Any]) -> Mapping[str, Any]:
    containers = manifest["spec"]["containers"]
    assert [c["name"] for c in containers] == ["main"]
    return containers[0]  # type: ignore[no-any-return]


def env_of(manifest: Mapping[str, Any]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in main_container(manifest)["env"]}


def test_the_manifest_is_a_never_restarting_pod_named_after_the_attempt() -> None:
    manifest = pod_manifest(plan())

    assert manifest["apiVersion"] == "v1" and manifest["kind"] == "Pod"
    assert manifest["metadata"]["name"] == "fleet-j-0123456789ab-1"
    assert manifest["metadata"]["namespace"] == "fleet-jobs"
    assert manifest["spec"]["restartPolicy"] == "Never"
    assert manifest["spec"]["terminationGracePeriodSeconds"] == 30
    container = main_container(manifest)
    assert container["image"] == "ghcr.io/acme/train:1.2"
    assert container["command"] == ["python", "train.py"]


def test_the_manifest_labels_say_whose_pod_it_is() -> None:
    labels = pod_manifest(plan(project="vision"))["metadata"]["labels"]

    assert labels == {
        LABEL_MANAGED_BY: "flyte-fleet", LABEL_DATAPLANE: "dp-east",
        LABEL_ATTEMPT: "j-0123456789ab-1", LABEL_JOB: "j-0123456789ab", LABEL_PROJECT: "vision",
    }


def test_odd_ids_still_give_valid_labels_and_name() -> None:
    manifest = pod_manifest(plan(attempt_id="Job_" * 20 + "1", job_id="Job " * 20))

    assert valid_pod_name(manifest["metadata"]["name"])
    for value in manifest["metadata"]["labels"].values():
        assert LABEL_VALUE.match(value) and len(value) <= 63


@pytest.mark.parametrize(
    ("changes", "limits", "requests"),
    [
        pytest.param({}, {"nvidia.com/gpu": "2"}, {"nvidia.com/gpu": "2"}, id="gpus-only"),
        pytest.param({"gpus": 8, "cpu_millis": 4500, "memory_bytes": 64 * 2**30},
                     {"nvidia.com/gpu": "8", "memory": str(64 * 2**30)},
                     {"nvidia.com/gpu": "8", "cpu": "4500m", "memory": str(64 * 2**30)},
                     id="gpus-cpu-memory"),
        pytest.param({"gpus": 0, "cpu_millis": 250}, {}, {"cpu": "250m"}, id="no-gpus"),
    ],
)
def test_resources(changes: dict[str, Any], limits: dict[str, str],
                   requests: dict[str, str]) -> None:
    resources = main_container(pod_manifest(plan(**changes)))["resources"]

    assert resources == {"limits": limits, "requests": requests}


@pytest.mark.parametrize(
    ("timeout_s", "deadline"),
    [(3600, 3600), (90.1, 91), (0.2, 1), (None, None), (0, None)],
)
def test_active_deadline_is_the_timeout_rounded_up(
    timeout_s: float | None, deadline: int | None
) -> None:
    assert pod_manifest(plan(timeout_s=timeout_s))["spec"].get("activeDeadlineSeconds") == deadline


def test_termination_grace_is_rounded_up() -> None:
    assert pod_manifest(plan(grace_s=2.5))["spec"]["terminationGracePeriodSeconds"] == 3


def test_service_account_only_when_set() -> None:
    assert "serviceAccountName" not in pod_manifest(plan())["spec"]
    assert pod_manifest(plan(service_account="trainer"))["spec"]["serviceAccountName"] == "trainer"


def test_tolerations_are_written_as_json() -> None:
    tolerations = [GPU_TOLERATION, Toleration("cloud.google.com/gke-spot", "Equal", "true",
                                              "NoSchedule")]

    assert pod_manifest(plan(tolerations=tolerations))["spec"]["tolerations"] == [
        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"},
        {"key": "cloud.google.com/gke-spot", "operator": "Equal", "value": "true",
         "effect": "NoSchedule"},
    ]


def test_node_affinity_ors_the_terms_and_ands_the_node_selector_into_each() -> None:
    manifest = pod_manifest(plan(terms=[A100_TERM, PCIE_TERM],
                                 node_selector={"team": "ml", "fleet": "yes"}))

    spec = manifest["spec"]
    assert "nodeSelector" not in spec
    required = spec["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    selector = [{"key": "fleet", "operator": "In", "values": ["yes"]},
                {"key": "team", "operator": "In", "values": ["ml"]}]
    assert required == {"nodeSelectorTerms": [
        {"matchExpressions": [
            {"key": PRODUCT_LABEL, "operator": "In", "values": ["NVIDIA-A100-SXM4-80GB"]},
            {"key": "karpenter.sh/capacity-type", "operator": "DoesNotExist"},
            *selector,
        ]},
        {"matchExpressions": [
            {"key": PRODUCT_LABEL, "operator": "In", "values": ["NVIDIA-A100-80GB-PCIe"]},
            {"key": EKS, "operator": "In", "values": ["ON_DEMAND"]},
            *selector,
        ]},
    ]}


def test_without_terms_the_node_selector_is_a_plain_node_selector() -> None:
    spec = pod_manifest(plan(terms=[], node_selector={"team": "ml"}))["spec"]

    assert spec["nodeSelector"] == {"team": "ml"}
    assert "affinity" not in spec
    assert "nodeSelector" not in pod_manifest(plan(terms=[]))["spec"]


def test_env_has_the_jobs_env_and_the_attempts_facts_which_win() -> None:
    manifest = pod_manifest(plan(env={"HF_HOME": "/cache", "FLEET_POOL": "spoofed"}))

    assert env_of(manifest) == {
        "HF_HOME": "/cache", "FLEET_JOB_ID": "j-0123456789ab",
        "FLEET_ATTEMPT_ID": "j-0123456789ab-1", "FLEET_EPOCH": "3", "FLEET_DATAPLANE": "dp-east",
        "FLEET_POOL": "a100-80gb-on-demand", "FLEET_GPUS": "2",
    }
    names = [e["name"] for e in main_container(manifest)["env"]]
    assert names == sorted(names)


@pytest.mark.parametrize("prefix", ["", "s3://bucket/runs/j-0123456789ab/1"])
def test_annotations_round_trip_through_pod_identity(prefix: str) -> None:
    manifest = pod_manifest(plan(attempt_prefix=prefix))

    assert pod_identity(manifest) == PodIdentity(
        attempt_id="j-0123456789ab-1", job_id="j-0123456789ab", epoch=3,
        pool="a100-80gb-on-demand", gpus=2, attempt_prefix=prefix, cancel_reason=None,
    )


def test_pod_identity_reads_the_cancel_reason() -> None:
    manifest = pod_manifest(plan())
    manifest["metadata"]["annotations"][NOTE_CANCEL] = "user asked"

    identity = pod_identity(manifest)

    assert identity is not None and identity.cancel_reason == "user asked"


def tampered(key: str, value: str | None) -> dict[str, Any]:
    manifest = pod_manifest(plan())
    notes = manifest["metadata"]["annotations"]
    if value is None:
        del notes[key]
    else:
        notes[key] = value
    return manifest


@pytest.mark.parametrize(
    "pod",
    [
        pytest.param({"metadata": {"name": "nginx", "annotations": {"a": "b"}}}, id="foreign"),
        pytest.param({"metadata": {"name": "nginx"}}, id="no-annotations"),
        pytest.param({}, id="empty"),
        pytest.param(tampered("fleet.flyte.org/epoch", "three"), id="bad-epoch"),
        pytest.param(tampered("fleet.flyte.org/epoch", None), id="no-epoch"),
        pytest.param(tampered("fleet.flyte.org/job-id", None), id="no-job"),
        pytest.param(tampered("fleet.flyte.org/gpus", "two"), id="bad-gpus"),
    ],
)
def test_pod_identity_is_none_for_a_pod_not_ours(pod: dict[str, Any]) -> None:
    assert pod_identity(pod) is None


# -- pod_verdict --------------------------------------------------------------------------------


def pod(
    phase: str | None = "Pending",
    *,
    reason: str | None = None,
    message: str | None = None,
    conditions: Sequence[Mapping[str, str]] = (),
    state: Mapping[str, Any] | None = None,
    last_state: Mapping[str, Any] | None = None,
    node: str | None = "gpu-1",
    start_time: str | None = None,
) -> dict[str, Any]:
    """The attempt's pod as GET returns it; None leaves a field out."""
    status: dict[str, Any] = {}
    if phase is not None:
        status["phase"] = phase
    if reason is not None:
        status["reason"] = reason
    if message is not None:
        status["message"] = message
    if conditions:
        status["conditions"] = [dict(c) for c in conditions]
    if start_time is not None:
        status["startTime"] = start_time
    if state is not None or last_state is not None:
        item: dict[str, Any] = {"name": "main", "image": "ghcr.io/acme/train:1.2",
                                "ready": False, "restartCount": 0, "state": dict(state or {})}
        if last_state is not None:
            item["lastState"] = dict(last_state)
        status["containerStatuses"] = [
            {"name": "sidecar", "state": {"running": {"startedAt": "2026-11-24T20:00:00Z"}}},
            item,
        ]
    spec: dict[str, Any] = {"containers": [{"name": "main", "image": "ghcr.io/acme/train:1.2"}]}
    if node is not None:
        spec["nodeName"] = node
    return {
        "metadata": {"name": "fleet-j-1", "namespace": "fleet-jobs", "creationTimestamp": CREATED},
        "spec": spec, "status": status,
    }


def waiting(reason: str, message: str = "") -> dict[str, Any]:
    body = {"reason": reason}
    if message:
        body["message"] = message
    return {"waiting": body}


def terminated(exit_code: int, reason: str = "Error", message: str = "") -> dict[str, Any]:
    body: dict[str, Any] = {"exitCode": exit_code, "reason": reason,
                            "startedAt": "2026-11-24T21:01:00Z",
                            "finishedAt": "2026-11-24T21:05:00Z"}
    if message:
        body["message"] = message
    return {"terminated": body}


def condition(kind: str, status: str, reason: str = "", message: str = "") -> dict[str, str]:
    body = {"type": kind, "status": status, "lastTransitionTime": CREATED}
    if reason:
        body["reason"] = reason
    if message:
        body["message"] = message
    return body


def facts(pod_: Mapping[str, Any] | None, *, age_s: float = 10.0, **more: Any) -> PodFacts:
    return PodFacts(pod=pod_, now=T0 + timedelta(seconds=age_s), **more)


RUNNING = pod("Running", state={"running": {"startedAt": "2026-11-24T21:01:00Z"}})
SUCCEEDED = pod("Succeeded", state=terminated(0, "Completed"))
FAILED = pod("Failed", state=terminated(1))
UNSCHEDULABLE = condition("PodScheduled", "False", "Unschedulable",
                          "0/4 nodes are available: 4 Insufficient nvidia.com/gpu.")
PULL_MESSAGE = 'Back-off pulling image "ghcr.io/acme/train:1.2"'
DISRUPTED = condition("DisruptionTarget", "True", "PreemptionByScheduler",
                      "Preempted in order to admit critical pod")


@pytest.mark.parametrize(
    ("facts_", "verdict"),
    [
        # cancel asked
        pytest.param(facts(None, cancel_reason="user asked"),
                     Verdict(Phase.CANCELLED, "Cancelled", "cancelled: user asked"),
                     id="cancel-pod-gone"),
        pytest.param(facts(None, cancel_reason=""),
                     Verdict(Phase.CANCELLED, "Cancelled", "cancelled"),
                     id="cancel-without-reason"),
        pytest.param(facts(SUCCEEDED, cancel_reason="user asked"),
                     Verdict(Phase.CANCELLED, "Cancelled", "cancelled: user asked"),
                     id="cancel-pod-succeeded"),
        pytest.param(facts(FAILED, cancel_reason="user asked"),
                     Verdict(Phase.CANCELLED, "Cancelled", "cancelled: user asked"),
                     id="cancel-pod-failed"),
        pytest.param(facts(pod("Pending"), cancel_reason="user asked"),
                     Verdict(Phase.STARTING, "Cancelling", "the pod is being stopped"),
                     id="cancel-pod-pending"),
        pytest.param(facts(RUNNING, cancel_reason="user asked"),
                     Verdict(Phase.RUNNING, "Cancelling", "the pod is being stopped"),
                     id="cancel-pod-running"),
        pytest.param(facts(RUNNING, cancel_reason="x", node_reclaimed=True, node_spot=True),
                     Verdict(Phase.RUNNING, "Cancelling", "the pod is being stopped"),
                     id="cancel-wins-over-reclaim"),
        # node reclaimed
        pytest.param(facts(RUNNING, node_reclaimed=True, node_spot=True),
                     Verdict(Phase.PREEMPTED, "SpotReclaimed", "node gpu-1 is being reclaimed"),
                     id="spot-reclaimed"),
        pytest.param(facts(RUNNING, node_reclaimed=True),
                     Verdict(Phase.PREEMPTED, "NodeReclaimed", "node gpu-1 is being reclaimed"),
                     id="on-demand-reclaimed"),
        pytest.param(facts(pod("Pending", state=waiting("ContainerCreating")),
                           node_reclaimed=True),
                     Verdict(Phase.PREEMPTED, "NodeReclaimed", "node gpu-1 is being reclaimed"),
                     id="reclaimed-while-pending"),
        pytest.param(facts(SUCCEEDED, node_reclaimed=True, node_spot=True),
                     Verdict(Phase.SUCCEEDED, exit_code=0), id="reclaimed-after-success"),
        pytest.param(facts(FAILED, node_reclaimed=True, node_spot=True),
                     Verdict(Phase.FAILED, "Error", "exit code 1", 1),
                     id="reclaimed-after-failure"),
        # ended
        pytest.param(facts(pod("Failed", conditions=[DISRUPTED], state=terminated(137))),
                     Verdict(Phase.PREEMPTED, "PreemptionByScheduler",
                             "Preempted in order to admit critical pod", 137),
                     id="disruption-target"),
        pytest.param(facts(pod("Failed", conditions=[condition(
                               "DisruptionTarget", "True", "DeletionByTaintManager")])),
                     Verdict(Phase.PREEMPTED, "DeletionByTaintManager", "the pod was disrupted"),
                     id="disruption-target-without-message"),
        pytest.param(facts(pod("Failed", conditions=[condition(
                               "DisruptionTarget", "False", "PreemptionByScheduler")],
                               state=terminated(1))),
                     Verdict(Phase.FAILED, "Error", "exit code 1", 1),
                     id="disruption-target-false"),
        pytest.param(facts(pod("Failed", reason="Shutdown", state=terminated(143),
                               message="Pod was terminated in response to imminent node "
                                       "shutdown.")),
                     Verdict(Phase.PREEMPTED, "NodeShutdown", "Pod was terminated in response "
                             "to imminent node shutdown.", 143),
                     id="node-shutdown"),
        pytest.param(facts(pod("Failed", reason="Terminated")),
                     Verdict(Phase.PREEMPTED, "NodeShutdown", "the node shut down"),
                     id="node-terminated"),
        pytest.param(facts(SUCCEEDED), Verdict(Phase.SUCCEEDED, exit_code=0), id="succeeded"),
        pytest.param(facts(pod("Failed", reason="DeadlineExceeded", state=terminated(137),
                               message="Pod was active on the node longer than the specified "
                                       "deadline")),
                     Verdict(Phase.FAILED, "DeadlineExceeded", "Pod was active on the node "
                             "longer than the specified deadline", 137),
                     id="deadline-exceeded"),
        pytest.param(facts(pod("Failed", reason="DeadlineExceeded")),
                     Verdict(Phase.FAILED, "DeadlineExceeded", "the job ran past its timeout"),
                     id="deadline-exceeded-without-message"),
        pytest.param(facts(pod("Failed", reason="Evicted",
                               message="The node was low on resource: ephemeral-storage.")),
                     Verdict(Phase.FAILED, "Evicted",
                             "The node was low on resource: ephemeral-storage."),
                     id="evicted"),
        pytest.param(facts(pod("Failed", reason="Evicted", state=terminated(137))),
                     Verdict(Phase.FAILED, "Evicted", "the kubelet evicted the pod", 137),
                     id="evicted-without-message"),
        pytest.param(facts(pod("Failed", state=terminated(137, "OOMKilled"))),
                     Verdict(Phase.FAILED, "OOMKilled", "out of memory (exit code 137)", 137),
                     id="oom-killed"),
        pytest.param(facts(FAILED), Verdict(Phase.FAILED, "Error", "exit code 1", 1),
                     id="failed"),
        pytest.param(facts(pod("Failed", state=terminated(2, message="ValueError: bad lr"))),
                     Verdict(Phase.FAILED, "Error", "exit code 2: ValueError: bad lr", 2),
                     id="failed-with-termination-message"),
        pytest.param(facts(pod("Failed", state={}, last_state=terminated(3))),
                     Verdict(Phase.FAILED, "Error", "exit code 3", 3),
                     id="failed-exit-in-last-state"),
        pytest.param(facts(pod("Failed")), Verdict(Phase.FAILED, "Error", "the pod failed"),
                     id="failed-without-container-status"),
        # gone
        pytest.param(facts(None),
                     Verdict(Phase.LOST, "PodDeleted", "the pod was deleted by someone else"),
                     id="pod-gone"),
        # alive
        pytest.param(facts(RUNNING), Verdict(Phase.RUNNING), id="running"),
        pytest.param(facts(pod("Pending", state=waiting("InvalidImageName",
                                                          'couldn\'t parse image "A:B"'))),
                     Verdict(Phase.FAILED, "InvalidImageName", 'couldn\'t parse image "A:B"'),
                     id="invalid-image-name"),
        pytest.param(facts(pod("Pending", state=waiting("ErrImageNeverPull"))),
                     Verdict(Phase.FAILED, "ErrImageNeverPull", "ErrImageNeverPull"),
                     id="image-never-pull"),
        pytest.param(facts(pod("Pending", state=waiting("ImagePullBackOff", PULL_MESSAGE)),
                           age_s=299),
                     Verdict(Phase.STARTING, "ImagePullBackOff", PULL_MESSAGE),
                     id="image-pull-just-before-grace"),
        pytest.param(facts(pod("Pending", state=waiting("ImagePullBackOff", PULL_MESSAGE)),
                           age_s=301),
                     Verdict(Phase.FAILED, "ImagePullBackOff",
                             f"the image could not be pulled for 301s: {PULL_MESSAGE}"),
                     id="image-pull-just-after-grace"),
        pytest.param(facts(pod("Pending", state=waiting("ErrImagePull", "not found")),
                           age_s=61, image_pull_grace_s=60),
                     Verdict(Phase.FAILED, "ImagePullBackOff",
                             "the image could not be pulled for 61s: not found"),
                     id="err-image-pull-past-configured-grace"),
        pytest.param(facts(pod("Pending", state=waiting("ErrImagePull", "not found")),
                           age_s=59, image_pull_grace_s=60),
                     Verdict(Phase.STARTING, "ImagePullBackOff", "not found"),
                     id="err-image-pull-within-configured-grace"),
        pytest.param(facts(pod("Pending", conditions=[UNSCHEDULABLE]), age_s=599),
                     Verdict(Phase.STARTING, "Unschedulable",
                             "0/4 nodes are available: 4 Insufficient nvidia.com/gpu."),
                     id="unschedulable-just-before-grace"),
        pytest.param(facts(pod("Pending", conditions=[UNSCHEDULABLE]), age_s=601),
                     Verdict(Phase.PREEMPTED, "Unschedulable", "unschedulable for 601s: "
                             "0/4 nodes are available: 4 Insufficient nvidia.com/gpu."),
                     id="unschedulable-just-after-grace"),
        pytest.param(facts(pod("Pending", conditions=[
                               condition("PodScheduled", "False", "Unschedulable")]),
                           age_s=31, unschedulable_grace_s=30),
                     Verdict(Phase.PREEMPTED, "Unschedulable",
                             "unschedulable for 31s: no node fits the pod"),
                     id="unschedulable-past-configured-grace"),
        pytest.param(facts(pod("Pending", conditions=[
                               condition("PodScheduled", "False", "SchedulingGated")]),
                           age_s=3600),
                     Verdict(Phase.STARTING), id="scheduling-gated-is-not-unschedulable"),
        pytest.param(facts(pod("Pending", conditions=[condition("PodScheduled", "True")],
                               state=waiting("ContainerCreating")), age_s=3600),
                     Verdict(Phase.STARTING, "ContainerCreating"), id="container-creating"),
        pytest.param(facts(pod(None, node=None)), Verdict(Phase.STARTING), id="just-created"),
        # staged Flyte tasks
        pytest.param(facts(SUCCEEDED, staged=True), Verdict(Phase.RUNNING),
                     id="staged-succeeded-result-unread"),
        pytest.param(facts(FAILED, staged=True), Verdict(Phase.RUNNING),
                     id="staged-failed-result-unread"),
        pytest.param(facts(RUNNING, staged=True), Verdict(Phase.RUNNING), id="staged-running"),
        pytest.param(facts(SUCCEEDED, staged=True,
                           task_result=TaskResult("UserError", "ValueError: bad input")),
                     Verdict(Phase.FAILED, "UserError", "ValueError: bad input", 0),
                     id="staged-task-failure-wins-over-exit-0"),
        pytest.param(facts(FAILED, staged=True, task_result=TaskResult("SystemError", "boom")),
                     Verdict(Phase.FAILED, "SystemError", "boom", 1),
                     id="staged-task-failure-wins-over-exit-code"),
        pytest.param(facts(SUCCEEDED, staged=True, task_result=TaskResult()),
                     Verdict(Phase.SUCCEEDED, exit_code=0), id="staged-empty-result-exit-0"),
        pytest.param(facts(pod("Failed", state=terminated(3)), staged=True,
                           task_result=TaskResult()),
                     Verdict(Phase.FAILED, "Error", "exit code 3", 3),
                     id="staged-empty-result-exit-3"),
        pytest.param(facts(pod("Failed", conditions=[DISRUPTED]), staged=True),
                     Verdict(Phase.PREEMPTED, "PreemptionByScheduler",
                             "Preempted in order to admit critical pod"),
                     id="staged-disrupted-is-preempted-without-result"),
    ],
)
def test_pod_verdict(facts_: PodFacts, verdict: Verdict) -> None:
    assert pod_verdict(facts_) == verdict


def test_a_reclaimed_nodes_pod_that_is_already_gone_is_preempted_not_lost() -> None:
    verdict = pod_verdict(facts(None, node_reclaimed=True, node_spot=True))

    assert (verdict.phase, verdict.reason) == (Phase.PREEMPTED, "SpotReclaimed")


@pytest.mark.parametrize(
    ("age_s", "phase"),
    [(0, Phase.STARTING), (299.9, Phase.STARTING), (300, Phase.FAILED), (1e6, Phase.FAILED)],
)
def test_image_pull_grace_boundary(age_s: float, phase: Phase) -> None:
    verdict = pod_verdict(facts(pod("Pending", state=waiting("ImagePullBackOff")), age_s=age_s))

    assert (verdict.phase, verdict.reason) == (phase, "ImagePullBackOff")


@pytest.mark.parametrize(
    ("age_s", "phase"),
    [(0, Phase.STARTING), (599.9, Phase.STARTING), (600, Phase.PREEMPTED)],
)
def test_unschedulable_grace_boundary(age_s: float, phase: Phase) -> None:
    verdict = pod_verdict(facts(pod("Pending", conditions=[UNSCHEDULABLE]), age_s=age_s))

    assert (verdict.phase, verdict.reason) == (phase, "Unschedulable")


def test_a_clock_behind_the_pods_creation_never_makes_it_old() -> None:
    verdict = pod_verdict(facts(pod("Pending", conditions=[UNSCHEDULABLE]), age_s=-1e6))

    assert verdict.phase is Phase.STARTING


# -- times --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "when"),
    [
        pytest.param(RUNNING, datetime(2026, 11, 24, 21, 1, tzinfo=UTC), id="container-started"),
        pytest.param(pod("Running", start_time="2026-11-24T21:00:30Z",
                         state={"running": {"startedAt": "2026-11-24T21:02:00Z"}}),
                     datetime(2026, 11, 24, 21, 2, tzinfo=UTC), id="container-over-pod"),
        pytest.param(pod("Pending", start_time="2026-11-24T21:00:30Z",
                         state=waiting("ContainerCreating")),
                     datetime(2026, 11, 24, 21, 0, 30, tzinfo=UTC), id="pod-start-time"),
        pytest.param(pod("Pending"), None, id="not-started"),
        pytest.param(None, None, id="no-pod"),
    ],
)
def test_started_at(raw: Mapping[str, Any] | None, when: datetime | None) -> None:
    assert started_at(raw) == when


@pytest.mark.parametrize(
    ("raw", "when"),
    [
        pytest.param(SUCCEEDED, datetime(2026, 11, 24, 21, 5, tzinfo=UTC), id="terminated"),
        pytest.param(pod("Failed", state={}, last_state=terminated(1)),
                     datetime(2026, 11, 24, 21, 5, tzinfo=UTC), id="last-state"),
        pytest.param(RUNNING, None, id="running"),
        pytest.param(None, None, id="no-pod"),
    ],
)
def test_finished_at(raw: Mapping[str, Any] | None, when: datetime | None) -> None:
    assert finished_at(raw) == when


@pytest.mark.parametrize(
    ("stamp", "when"),
    [
        (CREATED, T0),
        ("2026-11-24T21:00:00.250000Z", T0 + timedelta(milliseconds=250)),
        ("2026-11-24T22:00:00+01:00", T0),
        ("", None),
        ("yesterday", None),
        (1764018000, None),
        (None, None),
    ],
)
def test_parse_time(stamp: object, when: datetime | None) -> None:
    parsed = parse_time(stamp)

    assert parsed == when
    assert parsed is None or parsed.tzinfo is UTC
