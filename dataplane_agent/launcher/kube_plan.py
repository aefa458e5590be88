"""What the Kubernetes launcher is configured with, and the pod a launch becomes: a Flyte
task is staged in the region's store first (its pod needs a store it can reach), and the
job's image, resources and service account fill in the plan (domain.kube_pods)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field

from dataplane_agent.domain.flyte import needs_staging
from dataplane_agent.domain.kube_nodes import NodeRules, Pool
from dataplane_agent.domain.kube_pods import PodPlan
from dataplane_agent.launcher import staging
from dataplane_agent.launcher.base import LaunchRequest


@dataclass(frozen=True)
class ClusterSettings:
    dataplane: str
    namespace: str
    rules: NodeRules = field(default_factory=NodeRules)
    store_prefix: str | None = None
    service_account: str = ""
    default_image: str = ""
    image_pull_grace_s: float = 300.0
    unschedulable_grace_s: float = 600.0
    kill_grace_s: float = 30.0
    tick_s: float = 1.0


async def plan_pod(
    request: LaunchRequest,
    pool: Pool,
    image: str,
    settings: ClusterSettings,
    earlier_prefixes: Sequence[str],
) -> PodPlan:
    """The pod for this launch; raises staging.StagingError when a Flyte task cannot be
    staged (earlier_prefixes: this job's earlier attempts here, newest first)."""
    command, env, prefix = request.command, dict(request.env), ""
    if needs_staging(request.command, request.inputs):
        if not settings.store_prefix:
            raise staging.StagingError(
                "InvalidSpec", "this dataplane has no store_prefix for Flyte tasks")
        staged = await asyncio.to_thread(
            staging.stage, request, settings.store_prefix, earlier_prefixes
        )
        command, env, prefix = staged.command, staged.env, staged.prefix
    resources = request.spec.get("resources") or {}
    assert isinstance(resources, dict)
    return PodPlan(
        namespace=settings.namespace, dataplane=settings.dataplane,
        attempt_id=request.attempt_id, job_id=request.job_id, epoch=request.epoch,
        pool=request.pool, gpus=request.gpus, image=image, command=command, env=env,
        terms=pool.terms, tolerations=settings.rules.pod_tolerations(pool.key.purchase_type),
        node_selector=settings.rules.node_selector, project=request.project,
        service_account=str(request.spec.get("serviceAccount") or settings.service_account),
        timeout_s=request.timeout_s, grace_s=settings.kill_grace_s,
        cpu_millis=int(resources.get("cpuMillis") or 0),
        memory_bytes=int(resources.get("memoryBytes") or 0), attempt_prefix=prefix,
    )
