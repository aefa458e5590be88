"""The Kubernetes launcher: one Pod per attempt in the agent's namespace.

Three informers keep local copies of what matters (see informer.py): the GPU nodes, the
live pods bound to nodes in any namespace (they use GPUs), and this agent's own pods.
Pools and their free GPUs are computed from those copies (``domain.kube_nodes``), never by
listing the cluster on a heartbeat. An attempt's phase is derived from its pod
(``domain.kube_pods``) whenever the pod, its node or the clock moves.

The pods are the record: after a restart the agent lists its pods by label and re-adopts
them from their annotations, so nothing is launched twice (the pod name derives from the
attempt id; a second create answers 409 and the existing pod is adopted). Cancel marks the
pod with the reason, then deletes it with a grace period. When a node is reclaimed (spot
interruption taints, deletion), its attempts are PREEMPTED at once, their pods deleted, and
the pool loses the node's GPUs in the same heartbeat.

A Flyte task is staged in the region's store before its pod is created (the pod needs a
store it can reach: set ``dataplane.store_prefix`` to s3://, gs://, ...), and its result
is read from there once the pod ended.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from types import TracebackType
from typing import Any

from dataplane_agent.domain.attempt import AttemptStatus, Phase, TaskResult, Verdict
from dataplane_agent.domain.capacity import PoolReport
from dataplane_agent.domain.kube_nodes import (
    GpuNode,
    Pool,
    pod_ended,
    pool_reports,
    pools_of,
    read_node,
)
from dataplane_agent.domain.kube_pods import (
    CONTAINER,
    LABEL_DATAPLANE,
    NOTE_CANCEL,
    PodFacts,
    PodIdentity,
    PodPlan,
    exit_code_of,
    finished_at,
    pod_identity,
    pod_manifest,
    pod_name,
    pod_verdict,
    started_at,
)
from dataplane_agent.launcher import staging
from dataplane_agent.launcher.base import (
    LaunchRequest,
    StatusListener,
    UnknownAttempt,
    check_attempt_id,
)
from dataplane_agent.launcher.informer import Informer
from dataplane_agent.launcher.kube_api import KubeApi, KubeError, KubeUnavailable
from dataplane_agent.launcher.kube_plan import ClusterSettings, plan_pod

log = logging.getLogger(__name__)

READ_GIVE_UP_S = 120.0
LOG_LINE_GUESS_BYTES = 32      # the log API cuts by lines; ask for enough lines, then slice
MAX_LOG_TAIL = 16 * 1024 * 1024
MAX_DELETED_NODES = 1000
# Pods bound to a node and not ended: the ones that use its GPUs right now.
BOUND_LIVE_PODS = "spec.nodeName!=,status.phase!=Succeeded,status.phase!=Failed"


@dataclass
class _Attempt:
    identity: PodIdentity
    order: int
    pod: dict[str, Any] | None = None
    pod_exists: bool = False        # a create succeeded or the informer showed the pod
    verdict: Verdict | None = None
    cancel_reason: str | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    task_result: TaskResult | None = None
    outputs: bytes = b""
    reading: bool = False                  # a read of its task result is under way
    read_failing_since: float | None = None
    deleting: bool = False
    forgotten: bool = False

    @property
    def final(self) -> bool:
        return self.verdict is not None and self.verdict.phase.final

    def status(self) -> AttemptStatus:
        verdict = self.verdict or Verdict(Phase.STARTING)
        ident = self.identity
        return AttemptStatus(
            attempt_id=ident.attempt_id, job_id=ident.job_id, epoch=ident.epoch,
            pool=ident.pool, phase=verdict.phase, reason=verdict.reason,
            message=verdict.message, exit_code=verdict.exit_code, started_at=self.started_at,
            finished_at=self.finished_at,
            outputs=self.outputs if verdict.phase is Phase.SUCCEEDED else b"",
        )


class KubernetesLauncher:
    """Use as ``async with KubernetesLauncher(api, settings, on_change) as launcher:``."""

    def __init__(
        self,
        api: KubeApi,
        settings: ClusterSettings,
        on_change: StatusListener | None = None,
        on_pools_changed: Callable[[], None] | None = None,
    ) -> None:
        self._api = api
        self._settings = settings
        self._on_change = on_change
        # Called when a pool appears, vanishes or changes its total (not its free GPUs).
        self._on_pools_changed = on_pools_changed
        self._attempts: dict[str, _Attempt] = {}
        self._order = 0
        self._nodes: dict[str, GpuNode] = {}
        self._deleted_nodes: dict[str, GpuNode] = {}   # the last view of nodes now gone
        self._pools: dict[str, Pool] = {}
        self._synced = False
        self._tasks: set[asyncio.Task[None]] = set()
        self._ticker: asyncio.Task[None] | None = None
        rules = settings.rules
        node_labels = ",".join(f"{k}={v}" for k, v in sorted(rules.node_selector.items()))
        self._node_informer = Informer(api, "nodes", None, self._on_node,
                                       label_selector=node_labels)
        self._bound_informer = Informer(api, "pods", None, self._on_bound_pod,
                                        field_selector=BOUND_LIVE_PODS)
        self._own_informer = Informer(api, "pods", settings.namespace, self._on_own_pod,
                                      label_selector=f"{LABEL_DATAPLANE}={settings.dataplane}")

    # -- lifetime ------------------------------------------------------------------------------

    async def __aenter__(self) -> KubernetesLauncher:
        informers = (self._node_informer, self._bound_informer, self._own_informer)
        try:
            for informer in informers:
                await informer.start()
        except BaseException:
            for informer in informers:
                informer.stop()
            raise
        self._synced = True
        self._recompute_pools()
        self._refresh_all(announce=False)
        live = sum(1 for a in self._attempts.values() if not a.final)
        log.info("watching %d GPU nodes in %d pools; adopted %d pods (%d not finished) in %s",
                 sum(1 for n in self._nodes.values() if n.key), len(self._pools),
                 len(self._attempts), live, self._settings.namespace)
        self._ticker = asyncio.create_task(self._tick_forever(), name="kubernetes-tick")
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        for informer in (self._node_informer, self._bound_informer, self._own_informer):
            informer.stop()
        background = [t for t in (self._ticker, *self._tasks) if t is not None]
        for task in background:
            task.cancel()
        for task in background:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    @property
    def store_prefix(self) -> str:
        return self._settings.store_prefix or "(none: Flyte tasks are refused)"

    # -- the Launcher protocol -----------------------------------------------------------------

    async def launch(self, request: LaunchRequest) -> AttemptStatus:
        check_attempt_id(request.attempt_id)
        if request.attempt_id in self._attempts:
            return self._attempts[request.attempt_id].status()
        pool = self._pools.get(request.pool)
        if pool is None:
            known = ", ".join(sorted(self._pools)) or "none"
            return self._hold(request, Verdict(
                Phase.PREEMPTED, "PoolUnavailable",
                f"pool {request.pool!r} has no schedulable nodes now (pools: {known})"))
        if request.gpus > pool.largest_node:
            return await self.reject(request, "InvalidPool",
                                     f"wants {request.gpus} GPUs but the largest node of pool "
                                     f"{pool.name!r} has {pool.largest_node}")
        image = str(request.spec.get("image") or self._settings.default_image)
        if not image:
            return await self.reject(request, "InvalidSpec", "the job names no image and this "
                                     "dataplane has no kubernetes.default_image")
        attempt = self._new_attempt(request)    # claims the id while the pod is made
        pod: dict[str, Any] | None
        try:
            plan = await self._plan(request, pool, image)
            attempt.identity = _with_prefix(attempt.identity, plan.attempt_prefix)
            pod = await asyncio.to_thread(self._api.create_pod, self._settings.namespace,
                                          pod_manifest(plan))
        except staging.StagingError as error:
            return self._settle(attempt, Verdict(Phase.FAILED, error.reason, str(error)))
        except KubeUnavailable:
            del self._attempts[request.attempt_id]   # nothing made: the next launch retries
            raise
        except KubeError as error:
            if error.code != 409:
                word = "InvalidSpec" if error.code == 422 else "SystemError"
                return self._settle(attempt, Verdict(Phase.FAILED, word, error.message))
            pod = await asyncio.to_thread(self._api.get_pod, self._settings.namespace,
                                          pod_name(request.attempt_id))
            owner = pod_identity(pod) if pod is not None else None
            if pod is not None and (owner is None or owner.attempt_id != request.attempt_id):
                return self._settle(attempt, Verdict(
                    Phase.FAILED, "SystemError",
                    f"a pod named {pod_name(request.attempt_id)} exists and is not this "
                    "attempt's"))
            log.info("attempt %s: its pod existed already; adopted it", request.attempt_id)
        if pod is not None and attempt.pod is None:
            attempt.pod, attempt.pod_exists = pod, True
        if attempt.cancel_reason is not None:      # cancelled while the pod was made
            await self._delete(attempt, self._settings.kill_grace_s)
        log.info("launched attempt %s as pod %s (pool %s, %d GPUs)", request.attempt_id,
                 pod_name(request.attempt_id), request.pool, request.gpus)
        self._refresh(attempt)
        return attempt.status()

    async def reject(self, request: LaunchRequest, reason: str, message: str) -> AttemptStatus:
        check_attempt_id(request.attempt_id)
        if request.attempt_id in self._attempts:
            return self._attempts[request.attempt_id].status()
        log.warning("refused attempt %s: %s: %s", request.attempt_id, reason, message)
        return self._hold(request, Verdict(Phase.FAILED, reason, message))

    async def cancel(self, attempt_id: str, reason: str, grace_s: float) -> bool:
        attempt = self._attempts.get(attempt_id)
        if attempt is None:
            return False
        if attempt.final or attempt.cancel_reason is not None:
            return True
        attempt.cancel_reason = reason
        log.info("cancelling attempt %s: %s", attempt_id, reason or "requested")
        if attempt.pod_exists:
            name = pod_name(attempt_id)
            with contextlib.suppress(KubeError):   # the reason is only for a later agent
                await asyncio.to_thread(self._api.annotate_pod, self._settings.namespace,
                                        name, {NOTE_CANCEL: reason})
            await self._delete(attempt, grace_s)
        else:
            self._refresh(attempt)
        return True

    async def forget(self, attempt_id: str) -> bool:
        attempt = self._attempts.get(attempt_id)
        if attempt is None:
            return False
        if not attempt.final:
            await self.cancel(attempt_id, "forgotten by the control plane",
                              self._settings.kill_grace_s)
        attempt.forgotten = True
        if attempt.pod_exists:
            await self._delete(attempt, self._settings.kill_grace_s)
        else:
            del self._attempts[attempt_id]
        return True

    async def read_log(self, attempt_id: str, tail_bytes: int) -> bytes:
        attempt = self._attempts.get(attempt_id)
        if attempt is None:
            raise UnknownAttempt(attempt_id)
        if not attempt.pod_exists:
            return b""
        tail = min(max(tail_bytes, 0), MAX_LOG_TAIL)
        lines = max(1, tail // LOG_LINE_GUESS_BYTES)
        try:
            data = await asyncio.to_thread(self._api.read_pod_log, self._settings.namespace,
                                           pod_name(attempt_id), CONTAINER, lines)
        except KubeError as error:
            if error.code in (400, 404):     # not started yet, or gone with its log
                return b""
            raise
        return data[-tail:] if tail else b""

    def statuses(self) -> list[AttemptStatus]:
        ordered = sorted(self._attempts.values(), key=lambda a: a.order)
        return [a.status() for a in ordered if not a.forgotten]

    def pools(self) -> list[PoolReport]:
        waiting: dict[str, int] = {}
        for attempt in self._attempts.values():
            bound = ((attempt.pod or {}).get("spec") or {}).get("nodeName")
            if not attempt.final and not bound:
                pool = attempt.identity.pool
                waiting[pool] = waiting.get(pool, 0) + attempt.identity.gpus
        return pool_reports(self._pools, waiting, self._settings.rules)

    def knows(self, attempt_id: str) -> bool:
        return attempt_id in self._attempts

    # -- making pods ---------------------------------------------------------------------------

    async def _plan(self, request: LaunchRequest, pool: Pool, image: str) -> PodPlan:
        """The pod for a launch; its job's earlier attempts here may have left a checkpoint."""
        earlier = sorted(
            ((a.identity.epoch, a.identity.attempt_prefix) for a in self._attempts.values()
             if a.identity.job_id == request.job_id and a.identity.attempt_prefix
             and a.identity.epoch < request.epoch),
            reverse=True,
        )
        return await plan_pod(request, pool, image, self._settings, [p for _e, p in earlier])

    def _new_attempt(self, request: LaunchRequest) -> _Attempt:
        identity = PodIdentity(request.attempt_id, request.job_id, request.epoch, request.pool,
                               request.gpus, "", None)
        self._order += 1
        attempt = _Attempt(identity, self._order)
        self._attempts[request.attempt_id] = attempt
        return attempt

    def _hold(self, request: LaunchRequest, verdict: Verdict) -> AttemptStatus:
        return self._settle(self._new_attempt(request), verdict)

    def _settle(self, attempt: _Attempt, verdict: Verdict) -> AttemptStatus:
        """An attempt that ends without a pod (refused, or its pool is gone)."""
        attempt.verdict = verdict
        attempt.finished_at = datetime.now(UTC)
        self._announce(attempt)
        return attempt.status()

    async def _delete(self, attempt: _Attempt, grace_s: float) -> None:
        attempt.deleting = True
        gone = not await asyncio.to_thread(
            self._api.delete_pod, self._settings.namespace,
            pod_name(attempt.identity.attempt_id), max(0, int(grace_s)))
        if gone:
            self._pod_gone(attempt)

    # -- informer events (on the loop's thread) ------------------------------------------------

    def _on_node(self, kind: str, node: dict[str, Any]) -> None:
        name = str((node.get("metadata") or {}).get("name", ""))
        if kind == "DELETED":
            gone = self._nodes.pop(name, None)
            if gone is not None:
                self._deleted_nodes[name] = gone
                while len(self._deleted_nodes) > MAX_DELETED_NODES:
                    del self._deleted_nodes[next(iter(self._deleted_nodes))]
        else:
            self._nodes[name] = read_node(node, self._settings.rules)
        if self._synced:
            self._recompute_pools()
            self._refresh_all()

    def _on_bound_pod(self, kind: str, pod: dict[str, Any]) -> None:
        if self._synced:
            self._recompute_pools()

    def _on_own_pod(self, kind: str, pod: dict[str, Any]) -> None:
        identity = pod_identity(pod)
        if identity is None:
            return
        attempt = self._attempts.get(identity.attempt_id)
        if attempt is None:
            if kind == "DELETED":
                return
            self._order += 1
            attempt = _Attempt(identity, self._order, cancel_reason=identity.cancel_reason)
            self._attempts[identity.attempt_id] = attempt
        if kind == "DELETED":
            self._pod_gone(attempt, last=pod)
            return
        attempt.pod, attempt.pod_exists = pod, True
        if self._synced:
            self._refresh(attempt)

    def _pod_gone(self, attempt: _Attempt, last: dict[str, Any] | None = None) -> None:
        if attempt.forgotten:
            self._attempts.pop(attempt.identity.attempt_id, None)
            return
        if last is not None and attempt.pod is not None:
            attempt.pod = last
        attempt.pod_exists = False
        self._refresh(attempt)

    # -- deriving phases -----------------------------------------------------------------------

    def _recompute_pools(self) -> None:
        before = {name: pool.gpu_total for name, pool in self._pools.items()}
        self._pools = pools_of(self._nodes.values(), self._bound_informer.objects.values())
        after = {name: pool.gpu_total for name, pool in self._pools.items()}
        if after != before and self._on_pools_changed is not None and self._synced:
            self._on_pools_changed()

    def _refresh_all(self, *, announce: bool = True) -> None:
        for attempt in sorted(self._attempts.values(), key=lambda a: a.order):
            self._refresh(attempt, announce=announce)

    def _refresh(self, attempt: _Attempt, *, announce: bool = True) -> None:
        if attempt.final or (attempt.verdict is None and not attempt.pod_exists
                             and attempt.pod is None):
            return      # ended for good, or its pod is still being created
        settings = self._settings
        pod = attempt.pod if attempt.pod_exists else None
        node_name = str(((attempt.pod or {}).get("spec") or {}).get("nodeName") or "")
        node = self._nodes.get(node_name)
        facts = PodFacts(
            pod=pod, now=datetime.now(UTC), cancel_reason=attempt.cancel_reason,
            node_reclaimed=bool(node_name) and (node is None or node.reclaiming),
            node_spot=self._node_is_spot(node_name),
            staged=bool(attempt.identity.attempt_prefix), task_result=attempt.task_result,
            image_pull_grace_s=settings.image_pull_grace_s,
            unschedulable_grace_s=settings.unschedulable_grace_s,
        )
        verdict = pod_verdict(facts)
        if verdict.phase is Phase.RUNNING and pod is not None and facts.staged and pod_ended(pod):
            self._read_result_soon(attempt, exit_code_of(pod))
        if verdict == attempt.verdict:
            return
        attempt.verdict = verdict
        attempt.started_at = attempt.started_at or started_at(attempt.pod)
        if verdict.phase.final:
            attempt.finished_at = finished_at(attempt.pod) or datetime.now(UTC)
            log.info("attempt %s finished: %s %s %s", attempt.identity.attempt_id,
                     verdict.phase.value.upper(), verdict.reason, verdict.message)
            if pod is not None and not attempt.deleting and not pod_ended(pod):
                # Preempted or given up while the pod lives: it must not run on later.
                self._background(self._delete(attempt, settings.kill_grace_s))
        if announce:
            self._announce(attempt)

    def _node_is_spot(self, node_name: str) -> bool:
        node = self._nodes.get(node_name) or self._deleted_nodes.get(node_name)
        return node is not None and node.purchase_type == "spot"

    def _announce(self, attempt: _Attempt) -> None:
        if self._on_change is not None and not attempt.forgotten:
            self._on_change(attempt.status())

    # -- staged results and the clock ----------------------------------------------------------

    def _read_result_soon(self, attempt: _Attempt, exit_code: int | None) -> None:
        if not attempt.reading:
            attempt.reading = True
            self._background(self._read_result(attempt, exit_code))

    async def _read_result(self, attempt: _Attempt, exit_code: int | None) -> None:
        """Read what the task left in the store; retried on the next tick when the store
        fails, until READ_GIVE_UP_S, then the attempt fails with SystemError."""
        prefix = attempt.identity.attempt_prefix
        try:
            result, outputs = await asyncio.to_thread(staging.collect, prefix, exit_code)
        except Exception as error:  # the store's errors are many; all mean "not now"
            now = time.monotonic()
            since = attempt.read_failing_since = attempt.read_failing_since or now
            if now - since < READ_GIVE_UP_S:
                log.warning("attempt %s: cannot read its result under %s (retrying): %s",
                            attempt.identity.attempt_id, prefix, error)
                return
            result, outputs = TaskResult("SystemError", f"cannot read the result: {error}"), b""
        finally:
            attempt.reading = False
        attempt.task_result, attempt.outputs = result, outputs
        self._refresh(attempt)

    async def _tick_forever(self) -> None:
        """Grace periods run out with the clock, not with events."""
        while True:
            await asyncio.sleep(self._settings.tick_s)
            self._refresh_all()

    def _background(self, work: Any) -> None:
        task: asyncio.Task[None] = asyncio.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.warning("kubernetes launcher: %s", task.exception())


def _with_prefix(identity: PodIdentity, prefix: str) -> PodIdentity:
    return PodIdentity(identity.attempt_id, identity.job_id, identity.epoch, identity.pool,
                       identity.gpus, prefix, identity.cancel_reason)
