"""The Kubernetes launcher against an API server (the fake by default, a real one with
FLEET_TEST_KUBECONFIG): capacity from GPU nodes, launch, phases, logs, cancel, re-adoption
after a restart, spot reclaim. The tests play scheduler and kubelet through the API."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from dataplane_agent.domain.attempt import AttemptStatus, Phase
from dataplane_agent.domain.kube_nodes import NodeRules, PriceRule
from dataplane_agent.domain.kube_pods import NOTE_CANCEL, pod_name
from dataplane_agent.launcher.base import LaunchRequest
from dataplane_agent.launcher.kube_api import USER_AGENT, KubeApi, KubeError
from dataplane_agent.launcher.kube_plan import ClusterSettings
from dataplane_agent.launcher.kubernetes import KubernetesLauncher
from tests.agent.test_agent_staging import PLACEHOLDER_ARGS, error_document, literal_map
from tests.deploy.rbac import agent_rbac_allows
from tests.kube.cluster import Cluster
from tests.kube.fake_api import FakeKubeAPI

SPOT = {"eks.amazonaws.com/capacityType": "SPOT"}
RULES = NodeRules(prices=(PriceRule(1.1, "spot", "A100"), PriceRule(3.5, "", "A100")))


class Recorder:
    def __init__(self) -> None:
        self.changes: list[AttemptStatus] = []

    def __call__(self, status: AttemptStatus) -> None:
        self.changes.append(status)

    def changes_of(self, attempt_id: str) -> list[AttemptStatus]:
        return [s for s in self.changes if s.attempt_id == attempt_id]

    def phases(self, attempt_id: str) -> list[Phase]:
        return [s.phase for s in self.changes_of(attempt_id)]


async def eventually(check: Callable[[], object], what: str, timeout_s: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while asyncio.get_running_loop().time() < deadline:
        if check():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out waiting for: {what}")


@contextlib.asynccontextmanager
async def running_launcher(
    cluster: Cluster, recorder: Recorder | None = None, **overrides: Any
) -> AsyncIterator[KubernetesLauncher]:
    settings = ClusterSettings(
        **{
            "dataplane": "test-dp",
            "namespace": cluster.namespace,
            "rules": RULES,
            "kill_grace_s": 30.0,
            "tick_s": 0.05,
            **overrides,
        }
    )
    api = KubeApi(cluster.kubeconfig)
    try:
        async with KubernetesLauncher(api, settings, recorder) as launcher:
            yield launcher
    finally:
        api.close()


def request(
    attempt_id: str, pool: str = "a100-80gb-reserved", gpus: int = 1, **spec: Any
) -> LaunchRequest:
    return LaunchRequest(
        attempt_id=attempt_id,
        job_id=attempt_id.rsplit("-", 1)[0],
        epoch=1,
        pool=pool,
        gpus=gpus,
        command=("python", "train.py"),
        env={"EPOCHS": "3"},
        spec={"image": "ghcr.io/acme/train:1", **spec},
        project="vision",
        domain="dev",
        name="train",
        timeout_s=spec.pop("timeout_s", None) if "timeout_s" in spec else None,
    )


def status_of(launcher: KubernetesLauncher, attempt_id: str) -> AttemptStatus | None:
    return next((s for s in launcher.statuses() if s.attempt_id == attempt_id), None)


def phase_of(launcher: KubernetesLauncher, attempt_id: str) -> Phase | None:
    status = status_of(launcher, attempt_id)
    return None if status is None else status.phase


def reason_of(launcher: KubernetesLauncher, attempt_id: str) -> str | None:
    status = status_of(launcher, attempt_id)
    return None if status is None else status.reason


def free(launcher: KubernetesLauncher) -> dict[str, tuple[int, int]]:
    return {p.name: (p.gpu_total, p.gpu_free) for p in launcher.pools()}


@pytest.fixture
def gpu_nodes(cluster: Cluster) -> Cluster:
    cluster.add_gpu_node("fleet-test-a1", gpus=8)
    cluster.add_gpu_node("fleet-test-a2", gpus=4)
    cluster.add_gpu_node("fleet-test-s1", gpus=8, labels=SPOT)
    return cluster


# -- capacity ------------------------------------------------------------------------------------


async def test_pools_come_from_the_labelled_gpu_nodes(cluster: Cluster) -> None:
    cluster.add_gpu_node("fleet-test-a1", gpus=8)
    cluster.add_gpu_node("fleet-test-a2", gpus=8)
    cluster.add_gpu_node(
        "fleet-test-s1",
        gpus=8,
        labels=SPOT,
        taints=[{"key": "eks.amazonaws.com/capacityType", "value": "SPOT", "effect": "NoSchedule"}],
    )
    cluster.add_gpu_node("fleet-test-l4", gpus=2, product="NVIDIA-L4", memory_mib=23034)
    cluster.add_gpu_node("fleet-test-cordoned", gpus=8, unschedulable=True)
    cluster.add_gpu_node("fleet-test-notready", gpus=8, ready=False)
    cluster.add_gpu_node(
        "fleet-test-tainted",
        gpus=8,
        taints=[{"key": "team", "value": "research", "effect": "NoSchedule"}],
    )
    cluster.add_gpu_node("fleet-test-cpu", gpus=0)
    cluster.create_foreign_pod("someone-elses", "fleet-test-a1", gpus=3)

    async with running_launcher(cluster) as launcher:
        pools = {p.name: p for p in launcher.pools()}

    assert set(pools) == {"a100-80gb-reserved", "a100-80gb-spot", "l4-24gb-reserved"}
    reserved, spot = pools["a100-80gb-reserved"], pools["a100-80gb-spot"]
    assert (reserved.gpu_total, reserved.gpu_free) == (16, 13)  # another team's pod uses 3
    assert (reserved.gpu_model, reserved.gpu_memory_gb, reserved.region) == (
        "A100",
        80,
        "us-central1",
    )
    assert (spot.purchase_type, spot.gpu_total, spot.gpu_free) == ("spot", 8, 8)
    assert (spot.price_per_gpu_hour, reserved.price_per_gpu_hour) == (1.1, 3.5)


async def test_capacity_follows_the_nodes_without_relisting(cluster: Cluster) -> None:
    cluster.add_gpu_node("fleet-test-a1", gpus=8)
    async with running_launcher(cluster) as launcher:
        assert free(launcher) == {"a100-80gb-reserved": (8, 8)}

        cluster.add_gpu_node("fleet-test-a2", gpus=4)
        await eventually(lambda: free(launcher) == {"a100-80gb-reserved": (12, 12)}, "join")
        cluster.cordon("fleet-test-a1")
        await eventually(lambda: free(launcher) == {"a100-80gb-reserved": (4, 4)}, "cordon")
        cluster.uncordon("fleet-test-a1")
        cluster.set_node_ready("fleet-test-a2", False)
        await eventually(lambda: free(launcher) == {"a100-80gb-reserved": (8, 8)}, "not ready")
        cluster.create_foreign_pod("batch-job", "fleet-test-a1", gpus=2)
        await eventually(lambda: free(launcher) == {"a100-80gb-reserved": (8, 6)}, "foreign pod")
        cluster.delete_node("fleet-test-a1")
        await eventually(lambda: free(launcher) == {}, "node deleted")


# -- launch and phases ---------------------------------------------------------------------------


async def test_a_launch_makes_one_pod_as_the_job_asks(gpu_nodes: Cluster) -> None:
    cluster = gpu_nodes
    recorder = Recorder()
    async with running_launcher(cluster, recorder, service_account="trainer") as launcher:
        status = await launcher.launch(request("j-000000000001-1", gpus=2, timeout_s=90.5))
        again = await launcher.launch(request("j-000000000001-1", gpus=2))
        spot = await launcher.launch(request("j-000000000002-1", pool="a100-80gb-spot"))

        assert status.phase is Phase.STARTING and again == status
        await eventually(lambda: len(cluster.pods()) == 2, "two pods")
        # While its pod waits for a node, the attempt's GPUs are promised already.
        assert free(launcher)["a100-80gb-reserved"] == (12, 10)
        assert spot.phase is Phase.STARTING

    pod = cluster.pod(pod_name("j-000000000001-1"))
    assert pod is not None
    labels = pod["metadata"]["labels"]
    assert (labels["fleet.flyte.org/attempt"], labels["fleet.flyte.org/job"]) == (
        "j-000000000001-1",
        "j-000000000001",
    )
    assert labels["fleet.flyte.org/project"] == "vision"
    spec = pod["spec"]
    container = spec["containers"][0]
    assert (spec["restartPolicy"], spec["activeDeadlineSeconds"]) == ("Never", 91)
    assert spec["serviceAccountName"] == "trainer"
    assert container["image"] == "ghcr.io/acme/train:1"
    assert container["command"] == ["python", "train.py"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "2"
    env = {item["name"]: item["value"] for item in container["env"]}
    assert env["EPOCHS"] == "3" and env["FLEET_ATTEMPT_ID"] == "j-000000000001-1"
    terms = spec["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    expressions = terms["nodeSelectorTerms"][0]["matchExpressions"]
    assert {
        "key": "nvidia.com/gpu.product",
        "operator": "In",
        "values": ["NVIDIA-A100-SXM4-80GB"],
    } in expressions
    # Not allowed onto spot: no spot toleration, and the spot label must be absent.
    assert {"key": "eks.amazonaws.com/capacityType", "operator": "DoesNotExist"} in expressions
    assert all("SPOT" not in str(t) for t in spec["tolerations"])
    spot_pod = cluster.pod(pod_name("j-000000000002-1"))
    assert spot_pod is not None
    assert {
        "key": "eks.amazonaws.com/capacityType",
        "operator": "Equal",
        "value": "SPOT",
        "effect": "NoSchedule",
    } in spot_pod["spec"]["tolerations"]


async def test_phases_follow_the_pod(gpu_nodes: Cluster) -> None:
    cluster = gpu_nodes
    recorder = Recorder()
    async with running_launcher(cluster, recorder) as launcher:
        for attempt_id in ("j-00000000000a-1", "j-00000000000b-1", "j-00000000000c-1"):
            await launcher.launch(request(attempt_id))
        a, b, c = (pod_name(f"j-00000000000{x}-1") for x in "abc")

        cluster.run(a, "fleet-test-a1")
        await eventually(lambda: phase_of(launcher, "j-00000000000a-1") is Phase.RUNNING, "run")
        running = status_of(launcher, "j-00000000000a-1")
        assert running is not None and running.started_at is not None
        # One GPU bound to a node, two promised to pods that wait for one.
        await eventually(lambda: free(launcher)["a100-80gb-reserved"] == (12, 9), "accounted")
        cluster.finish(a, exit_code=0)
        await eventually(lambda: phase_of(launcher, "j-00000000000a-1") is Phase.SUCCEEDED, "ok")

        cluster.run(b, "fleet-test-a2")
        cluster.finish(b, exit_code=137, reason="OOMKilled")
        await eventually(lambda: phase_of(launcher, "j-00000000000b-1") is Phase.FAILED, "oom")

        cluster.set_pod_status(
            c,
            "Pending",
            conditions=[
                {
                    "type": "PodScheduled",
                    "status": "False",
                    "reason": "Unschedulable",
                    "message": "0/3 nodes are available: 3 Insufficient nvidia.com/gpu.",
                }
            ],
        )
        await eventually(
            lambda: (
                (status_of(launcher, "j-00000000000c-1") or status_of(launcher, "?")) is not None
                and status_of(launcher, "j-00000000000c-1").reason == "Unschedulable"
            ),
            "unschedulable",
        )

    assert recorder.phases("j-00000000000a-1") == [Phase.STARTING, Phase.RUNNING, Phase.SUCCEEDED]
    oom = recorder.changes_of("j-00000000000b-1")[-1]
    assert (oom.phase, oom.reason, oom.exit_code) == (Phase.FAILED, "OOMKilled", 137)
    waiting = status_of(launcher, "j-00000000000c-1")
    assert waiting is not None and waiting.phase is Phase.STARTING
    assert "Insufficient nvidia.com/gpu" in waiting.message


async def test_a_pod_that_cannot_start_is_given_up(gpu_nodes: Cluster) -> None:
    cluster = gpu_nodes
    async with running_launcher(
        cluster, unschedulable_grace_s=0.5, image_pull_grace_s=0.5
    ) as launcher:
        await launcher.launch(request("j-0000000000d1-1"))
        await launcher.launch(request("j-0000000000d2-1"))
        cluster.set_pod_status(
            pod_name("j-0000000000d1-1"),
            "Pending",
            conditions=[
                {
                    "type": "PodScheduled",
                    "status": "False",
                    "reason": "Unschedulable",
                    "message": "0/3 nodes are available",
                }
            ],
        )
        cluster.bind(pod_name("j-0000000000d2-1"), "fleet-test-a1")
        cluster.set_pod_status(
            pod_name("j-0000000000d2-1"),
            "Pending",
            container_state={
                "waiting": {"reason": "ImagePullBackOff", "message": "pull access denied"}
            },
        )

        await eventually(
            lambda: phase_of(launcher, "j-0000000000d1-1") is Phase.PREEMPTED,
            "unschedulable given up",
        )
        await eventually(
            lambda: phase_of(launcher, "j-0000000000d2-1") is Phase.FAILED, "image pull given up"
        )
        # Given up means gone: neither pod may start later and run the job twice.
        await eventually(
            lambda: all(p["metadata"].get("deletionTimestamp") for p in cluster.pods()),
            "pods deleted",
        )
    pulled = status_of(launcher, "j-0000000000d2-1")
    assert pulled is not None and pulled.reason == "ImagePullBackOff"
    assert "pull access denied" in pulled.message


async def test_launches_that_cannot_run_here(gpu_nodes: Cluster) -> None:
    async with running_launcher(gpu_nodes) as launcher:
        gone = await launcher.launch(request("j-0000000000e1-1", pool="h100-80gb-spot"))
        too_big = await launcher.launch(request("j-0000000000e2-1", gpus=9))
        no_image = await launcher.launch(
            LaunchRequest(
                attempt_id="j-0000000000e3-1",
                job_id="j-0000000000e3",
                epoch=1,
                pool="a100-80gb-reserved",
                gpus=1,
                command=("true",),
            )
        )

    assert (gone.phase, gone.reason) == (Phase.PREEMPTED, "PoolUnavailable")
    assert (too_big.phase, too_big.reason) == (Phase.FAILED, "InvalidPool")
    assert "largest node" in too_big.message
    assert (no_image.phase, no_image.reason) == (Phase.FAILED, "InvalidSpec")
    assert gpu_nodes.pods() == []


# -- logs and cancel -----------------------------------------------------------------------------


async def test_logs_come_from_the_pod(gpu_nodes: Cluster) -> None:
    cluster = gpu_nodes
    async with running_launcher(cluster) as launcher:
        await launcher.launch(request("j-0000000000f1-1"))
        name = pod_name("j-0000000000f1-1")
        cluster.run(name, "fleet-test-a1")
        cluster.set_log(name, "".join(f"epoch {i} loss {1 / (i + 1):.3f}\n" for i in range(200)))

        tail = await launcher.read_log("j-0000000000f1-1", 64)

    assert len(tail) <= 64
    assert tail.endswith(b"epoch 199 loss 0.005\n")


async def test_cancel_deletes_the_pod_and_ends_when_it_is_gone(gpu_nodes: Cluster) -> None:
    cluster = gpu_nodes
    recorder = Recorder()
    async with running_launcher(cluster, recorder) as launcher:
        await launcher.launch(request("j-0000000000c1-1"))
        await launcher.launch(request("j-0000000000c2-1"))
        running = pod_name("j-0000000000c1-1")
        cluster.run(running, "fleet-test-a1")
        await eventually(lambda: phase_of(launcher, "j-0000000000c1-1") is Phase.RUNNING, "run")

        assert await launcher.cancel("j-0000000000c1-1", "user asked", 20.0)
        assert await launcher.cancel("j-0000000000c2-1", "user asked", 20.0)
        assert not await launcher.cancel("j-unknown-1", "user asked", 20.0)

        # The unbound pod goes at once; the running one is stopping until the kubelet is done.
        await eventually(
            lambda: phase_of(launcher, "j-0000000000c2-1") is Phase.CANCELLED,
            "waiting pod cancelled",
        )
        pod = cluster.pod(running)
        assert pod is not None and pod["metadata"].get("deletionTimestamp")
        assert pod["metadata"]["annotations"][NOTE_CANCEL] == "user asked"
        assert phase_of(launcher, "j-0000000000c1-1") is Phase.RUNNING
        cluster.finish_deletion(running)
        await eventually(
            lambda: phase_of(launcher, "j-0000000000c1-1") is Phase.CANCELLED,
            "running pod cancelled",
        )
    cancelled = status_of(launcher, "j-0000000000c1-1")
    assert cancelled is not None and cancelled.message == "cancelled: user asked"


# -- restarts ------------------------------------------------------------------------------------


async def test_a_restarted_agent_adopts_its_pods_and_launches_nothing_twice(
    gpu_nodes: Cluster,
) -> None:
    cluster = gpu_nodes
    async with running_launcher(cluster) as first:
        for attempt_id in ("j-0000000000a1-1", "j-0000000000a2-1", "j-0000000000a3-1"):
            await first.launch(request(attempt_id))
        cluster.run(pod_name("j-0000000000a1-1"), "fleet-test-a1")
        cluster.run(pod_name("j-0000000000a2-1"), "fleet-test-a2")
        await eventually(lambda: phase_of(first, "j-0000000000a2-1") is Phase.RUNNING, "run")
    # While no agent watches, one pod finishes and another is cancelled by hand.
    cluster.finish(pod_name("j-0000000000a2-1"), exit_code=3)

    recorder = Recorder()
    async with running_launcher(cluster, recorder) as second:
        phases = {s.attempt_id: s.phase for s in second.statuses()}
        assert phases == {
            "j-0000000000a1-1": Phase.RUNNING,
            "j-0000000000a2-1": Phase.FAILED,
            "j-0000000000a3-1": Phase.STARTING,
        }
        assert recorder.changes == []  # adopting is not news
        again = await second.launch(request("j-0000000000a1-1"))
        assert again.phase is Phase.RUNNING
        assert len(cluster.pods()) == 3

        assert await second.forget("j-0000000000a2-1")
        await eventually(lambda: cluster.pod(pod_name("j-0000000000a2-1")) is None, "forgotten")
        assert "j-0000000000a2-1" not in {s.attempt_id for s in second.statuses()}


async def test_a_second_create_of_the_same_attempt_is_a_no_op(gpu_nodes: Cluster) -> None:
    """Two launchers (an old agent still shutting down and a new one) launch the same id."""
    cluster = gpu_nodes
    async with running_launcher(cluster) as first, running_launcher(cluster) as second:
        one, two = await asyncio.gather(
            first.launch(request("j-0000000000b1-1")), second.launch(request("j-0000000000b1-1"))
        )
        assert one.phase is two.phase is Phase.STARTING
    assert len(cluster.pods()) == 1

    api = KubeApi(cluster.kubeconfig)
    try:
        pod = cluster.pod(pod_name("j-0000000000b1-1"))
        assert pod is not None
        with pytest.raises(KubeError) as refused:
            api.create_pod(
                cluster.namespace,
                {
                    "apiVersion": "v1",
                    "kind": "Pod",
                    "metadata": {"name": pod["metadata"]["name"]},
                    "spec": {"containers": [{"name": "main", "image": "busybox"}]},
                },
            )
        assert refused.value.code == 409
    finally:
        api.close()


# -- spot reclaim --------------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["interruption taint", "node deleted"])
async def test_a_reclaimed_spot_node_preempts_its_attempts_at_once(
    gpu_nodes: Cluster, how: str
) -> None:
    cluster = gpu_nodes
    recorder = Recorder()
    async with running_launcher(cluster, recorder) as launcher:
        await launcher.launch(request("j-0000000000s1-1", pool="a100-80gb-spot", gpus=4))
        name = pod_name("j-0000000000s1-1")
        cluster.run(name, "fleet-test-s1")
        await eventually(lambda: phase_of(launcher, "j-0000000000s1-1") is Phase.RUNNING, "run")
        assert free(launcher)["a100-80gb-spot"] == (8, 4)

        if how == "interruption taint":
            cluster.taint(
                "fleet-test-s1", "aws-node-termination-handler/spot-itn", "", "NoSchedule"
            )
        else:
            cluster.delete_node("fleet-test-s1")

        await eventually(
            lambda: phase_of(launcher, "j-0000000000s1-1") is Phase.PREEMPTED, "preempted"
        )
        assert "a100-80gb-spot" not in free(launcher)  # the pool went with its only node
        if how == "interruption taint":
            await eventually(
                lambda: (cluster.pod(name) or {}).get("metadata", {}).get("deletionTimestamp"),
                "pod deleted",
            )
    preempted = status_of(launcher, "j-0000000000s1-1")
    assert preempted is not None and preempted.reason == "SpotReclaimed"
    assert recorder.phases("j-0000000000s1-1") == [Phase.STARTING, Phase.RUNNING, Phase.PREEMPTED]


# -- Flyte tasks ---------------------------------------------------------------------------------


def flyte_request(attempt_id: str, inputs: bytes) -> LaunchRequest:
    return LaunchRequest(
        attempt_id=attempt_id,
        job_id=attempt_id.rsplit("-", 1)[0],
        epoch=1,
        pool="a100-80gb-reserved",
        gpus=1,
        command=("pyflyte-execute", *PLACEHOLDER_ARGS),
        spec={"image": "ghcr.io/acme/flyte-task:1"},
        project="flytesnacks",
        domain="development",
        name="train",
        inputs=inputs,
    )


@pytest.mark.parametrize("ending", ["outputs", "user error"])
async def test_a_flyte_task_is_staged_and_its_result_read_back(
    gpu_nodes: Cluster, tmp_path: Path, ending: str
) -> None:
    cluster = gpu_nodes
    store = tmp_path / "store"
    async with running_launcher(cluster, store_prefix=str(store)) as launcher:
        await launcher.launch(flyte_request("j-0000000000f7-1", literal_map(x=21)))
        name = pod_name("j-0000000000f7-1")
        pod = cluster.pod(name)
        assert pod is not None
        prefix = pod["metadata"]["annotations"]["fleet.flyte.org/attempt-prefix"]
        command = pod["spec"]["containers"][0]["command"]
        inputs_url = command[command.index("--inputs") + 1]
        output_prefix = command[command.index("--output-prefix") + 1]
        assert inputs_url.startswith(prefix) and output_prefix.startswith(prefix)
        assert "{{" not in " ".join(command)
        assert local(inputs_url).read_bytes() == literal_map(x=21)

        # What pyflyte-execute in the pod would leave in the store, then its exit.
        cluster.run(name, "fleet-test-a1")
        local(output_prefix).mkdir(parents=True, exist_ok=True)
        if ending == "outputs":
            (local(output_prefix) / "outputs.pb").write_bytes(literal_map(y=42))
        else:
            (local(output_prefix) / "error.pb").write_bytes(
                error_document("ValueError: x must be even", origin=1)
            )
        cluster.finish(name, exit_code=0 if ending == "outputs" else 1)
        await eventually(
            lambda: phase_of(launcher, "j-0000000000f7-1") in (Phase.SUCCEEDED, Phase.FAILED),
            "ended",
        )

    ended = status_of(launcher, "j-0000000000f7-1")
    assert ended is not None
    if ending == "outputs":
        assert (ended.phase, ended.outputs) == (Phase.SUCCEEDED, literal_map(y=42))
    else:
        assert (ended.phase, ended.reason) == (Phase.FAILED, "UserError")
        assert "x must be even" in ended.message


async def test_a_flyte_task_needs_a_store_the_pods_can_reach(gpu_nodes: Cluster) -> None:
    async with running_launcher(gpu_nodes) as launcher:
        refused = await launcher.launch(flyte_request("j-0000000000f8-1", literal_map(x=1)))
    assert (refused.phase, refused.reason) == (Phase.FAILED, "InvalidSpec")
    assert "store_prefix" in refused.message
    assert gpu_nodes.pods() == []


def local(url: str) -> Path:
    return Path(url.removeprefix("file://"))


# -- what the agent may do -----------------------------------------------------------------------


async def test_the_agent_needs_no_more_than_deploy_rbac_grants(
    gpu_nodes: Cluster, fake_api: FakeKubeAPI
) -> None:
    """Every request the launcher makes in a busy life is allowed by deploy/agent's RBAC,
    and every verb that RBAC grants is one the agent uses (least privilege)."""
    cluster = gpu_nodes
    async with running_launcher(cluster) as launcher:
        for attempt_id in ("j-0000000000r1-1", "j-0000000000r2-1", "j-0000000000r3-1"):
            await launcher.launch(request(attempt_id))
        cluster.run(pod_name("j-0000000000r1-1"), "fleet-test-a1")
        cluster.set_log(pod_name("j-0000000000r1-1"), "hello\n")
        assert await launcher.read_log("j-0000000000r1-1", 100) == b"hello\n"
        await launcher.cancel("j-0000000000r2-1", "user asked", 5.0)
        cluster.finish(pod_name("j-0000000000r1-1"))
        await eventually(lambda: phase_of(launcher, "j-0000000000r1-1") is Phase.SUCCEEDED, "ok")
        await launcher.forget("j-0000000000r1-1")
        # A pod that took the attempt's name (409, then a look at it) is not adopted.
        taken = pod_name("j-0000000000r4-1")
        cluster.core.create_namespaced_pod(cluster.namespace, {
            "metadata": {"name": taken},
            "spec": {"containers": [{"name": "main", "image": "busybox"}]}})
        refused = await launcher.launch(request("j-0000000000r4-1"))
        assert (refused.phase, refused.reason) == (Phase.FAILED, "SystemError")
        assert f"a pod named {taken} exists" in refused.message

    made = {
        (r.verb, r.resource, r.subresource, "fleet-jobs" if r.namespace else None)
        for r in fake_api.requests if r.user_agent.startswith(USER_AGENT)
    }
    assert [m for m in made if not agent_rbac_allows(*m)] == []
    namespaced = (("pods", ""), ("pods", "log"), ("pods", "status"), ("pods", "binding"),
                  ("pods", "eviction"), ("secrets", ""), ("configmaps", ""), ("events", ""))
    cluster_scoped = (("nodes", ""), ("nodes", "status"), ("namespaces", ""))
    verbs = ("get", "list", "watch", "create", "update", "patch", "delete", "deletecollection")
    candidates = {
        *((v, r, sub, ns) for v in verbs for r, sub in namespaced for ns in ("fleet-jobs", None)),
        *((v, r, sub, None) for v in verbs for r, sub in cluster_scoped),
    }
    granted = {c for c in candidates if agent_rbac_allows(*c)}
    # A cluster-wide grant covers the namespace too: it is used when used cluster-wide.
    unused = {c for c in granted - made if not (c[3] and (*c[:3], None) in made)}
    assert unused == set()
