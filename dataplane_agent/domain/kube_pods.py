"""One Pod per attempt: its name, its manifest, and what its status means for the attempt.

Pure: manifests and verdicts are built from plain values and the Pod JSON the API returns.

The pod's name derives from the attempt id, so a second create of the same attempt gets
409 AlreadyExists and changes nothing. Everything the agent must know to re-adopt a pod
after a restart is in its labels and annotations.

What a pod's state means (first matching row wins)::

    created ──▶ Pending ──scheduled, started──▶ Running ──▶ Succeeded / Failed
       │           │                               │
       └───────────┴──── deleted, node reclaimed ──┴──▶ CANCELLED / PREEMPTED / LOST

| pod                                            | attempt   | reason                  |
|------------------------------------------------|-----------|-------------------------|
| gone or ended, cancel asked                    | CANCELLED | Cancelled               |
| alive, cancel asked                            | STARTING / RUNNING | Cancelling     |
| not ended, its node reclaimed or gone          | PREEMPTED | SpotReclaimed, NodeReclaimed |
| Failed, DisruptionTarget condition             | PREEMPTED | the condition's reason  |
| Failed, reason Shutdown / Terminated (node)    | PREEMPTED | NodeShutdown            |
| Succeeded                                      | SUCCEEDED |                         |
| Failed, reason DeadlineExceeded                | FAILED    | DeadlineExceeded        |
| Failed, reason Evicted                         | FAILED    | Evicted                 |
| Failed, container OOMKilled                    | FAILED    | OOMKilled (exit code)   |
| Failed, otherwise                              | FAILED    | Error (exit code)       |
| gone, no cancel asked                          | LOST      | PodDeleted              |
| Running                                        | RUNNING   |                         |
| Unknown (its node stopped reporting)           | RUNNING   | NodeUnreachable         |
| Pending, image cannot be valid                 | FAILED    | InvalidImageName, ...   |
| Pending, image pull failing past its grace     | FAILED    | ImagePullBackOff        |
| Pending, unschedulable past its grace          | PREEMPTED | Unschedulable           |
| Pending, image pull failing / unschedulable    | STARTING  | ImagePullBackOff / Unschedulable |
| Pending                                        | STARTING  | the container's waiting reason |

A staged Flyte task that ended stays RUNNING until its result was read from the store;
a failure found there (UserError, SystemError, ...) wins over the exit code.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from dataplane_agent.domain.attempt import Phase, TaskResult, Verdict
from dataplane_agent.domain.kube_nodes import GPU_RESOURCE, NodeTerm, Toleration

CONTAINER = "main"
MANAGED_BY = "flyte-fleet"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
LABEL_DATAPLANE = "fleet.flyte.org/dataplane"
LABEL_ATTEMPT = "fleet.flyte.org/attempt"
LABEL_JOB = "fleet.flyte.org/job"
LABEL_PROJECT = "fleet.flyte.org/project"
NOTE_ATTEMPT = "fleet.flyte.org/attempt-id"
NOTE_JOB = "fleet.flyte.org/job-id"
NOTE_EPOCH = "fleet.flyte.org/epoch"
NOTE_POOL = "fleet.flyte.org/pool"
NOTE_GPUS = "fleet.flyte.org/gpus"
NOTE_PREFIX = "fleet.flyte.org/attempt-prefix"
NOTE_CANCEL = "fleet.flyte.org/cancel-reason"

# Waiting reasons that no amount of waiting fixes.
HOPELESS_WAITING = frozenset({"InvalidImageName", "ErrImageNeverPull"})
IMAGE_PULL_WAITING = frozenset({"ImagePullBackOff", "ErrImagePull"})

_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_LABEL_VALUE = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?$")


def pod_name(attempt_id: str) -> str:
    """fleet-<attempt id> when that is a valid pod name; otherwise a cleaned-up form with a
    hash of the id, so that two ids never share a name."""
    plain = f"fleet-{attempt_id}"
    if len(plain) <= 253 and _SUBDOMAIN.match(plain):
        return plain
    cleaned = re.sub(r"[^a-z0-9-]+", "-", attempt_id.lower()).strip("-")[:200]
    digest = hashlib.sha256(attempt_id.encode()).hexdigest()[:10]
    return f"fleet-{cleaned}-{digest}" if cleaned else f"fleet-{digest}"


def label_value(text: str) -> str:
    """A label value carrying text, or a hash of it when it cannot be one."""
    if len(text) <= 63 and _LABEL_VALUE.match(text):
        return text
    cleaned = re.sub(r"[^A-Za-z0-9_.-]+", "-", text)[:50].strip("-_.")
    return f"{cleaned}-{hashlib.sha256(text.encode()).hexdigest()[:10]}".strip("-")


@dataclass(frozen=True)
class PodPlan:
    """Everything a pod manifest is made of."""

    namespace: str
    dataplane: str
    attempt_id: str
    job_id: str
    epoch: int
    pool: str
    gpus: int
    image: str
    command: Sequence[str]
    env: Mapping[str, str]
    terms: Sequence[NodeTerm]                 # the pool's nodes; any one will do
    tolerations: Sequence[Toleration]
    node_selector: Mapping[str, str] = field(default_factory=dict)
    project: str = ""
    service_account: str = ""
    timeout_s: float | None = None
    grace_s: float = 30.0
    cpu_millis: int = 0
    memory_bytes: int = 0
    attempt_prefix: str = ""                  # a staged Flyte task's store prefix


def pod_manifest(plan: PodPlan) -> dict[str, Any]:
    env = {
        **plan.env,
        "FLEET_JOB_ID": plan.job_id, "FLEET_ATTEMPT_ID": plan.attempt_id,
        "FLEET_EPOCH": str(plan.epoch), "FLEET_DATAPLANE": plan.dataplane,
        "FLEET_POOL": plan.pool, "FLEET_GPUS": str(plan.gpus),
    }
    limits: dict[str, str] = {}
    requests: dict[str, str] = {}
    if plan.gpus:
        limits[GPU_RESOURCE] = requests[GPU_RESOURCE] = str(plan.gpus)
    if plan.cpu_millis:
        requests["cpu"] = f"{plan.cpu_millis}m"
    if plan.memory_bytes:
        requests["memory"] = limits["memory"] = str(plan.memory_bytes)
    annotations = {
        NOTE_ATTEMPT: plan.attempt_id, NOTE_JOB: plan.job_id, NOTE_EPOCH: str(plan.epoch),
        NOTE_POOL: plan.pool, NOTE_GPUS: str(plan.gpus),
    }
    if plan.attempt_prefix:
        annotations[NOTE_PREFIX] = plan.attempt_prefix
    spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "terminationGracePeriodSeconds": max(0, math.ceil(plan.grace_s)),
        "containers": [{
            "name": CONTAINER, "image": plan.image, "command": list(plan.command),
            "env": [{"name": k, "value": v} for k, v in sorted(env.items())],
            "resources": {"limits": limits, "requests": requests},
        }],
        "tolerations": [t.to_json() for t in plan.tolerations],
    }
    if plan.terms:
        spec["affinity"] = node_affinity(plan.terms, plan.node_selector)
    elif plan.node_selector:
        spec["nodeSelector"] = dict(plan.node_selector)
    if plan.service_account:
        spec["serviceAccountName"] = plan.service_account
    if plan.timeout_s:
        spec["activeDeadlineSeconds"] = max(1, math.ceil(plan.timeout_s))
    return {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {
            "name": pod_name(plan.attempt_id), "namespace": plan.namespace,
            "labels": {
                LABEL_MANAGED_BY: MANAGED_BY, LABEL_DATAPLANE: plan.dataplane,
                LABEL_ATTEMPT: label_value(plan.attempt_id), LABEL_JOB: label_value(plan.job_id),
                LABEL_PROJECT: label_value(plan.project),
            },
            "annotations": annotations,
        },
        "spec": spec,
    }


def node_affinity(terms: Sequence[NodeTerm], node_selector: Mapping[str, str]) -> dict[str, Any]:
    """Required node affinity: the node matches one of the pool's terms (terms are ORed)."""
    selector = [
        {"key": k, "operator": "In", "values": [v]} for k, v in sorted(node_selector.items())
    ]
    node_terms = []
    for term in terms:
        expressions = [{"key": term.product_label, "operator": "In", "values": [term.product]}]
        if term.purchase_label:
            expressions.append(
                {"key": term.purchase_label, "operator": "In", "values": [term.purchase_value]}
            )
        expressions += [{"key": k, "operator": "In", "values": [v]} for k, v in term.pinned]
        expressions += [{"key": key, "operator": "DoesNotExist"} for key in term.absent]
        node_terms.append({"matchExpressions": expressions + selector})
    return {"nodeAffinity": {
        "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": node_terms},
    }}


# -- reading a pod back -------------------------------------------------------------------------


@dataclass(frozen=True)
class PodIdentity:
    """What a pod's annotations say about its attempt (for re-adoption)."""

    attempt_id: str
    job_id: str
    epoch: int
    pool: str
    gpus: int
    attempt_prefix: str
    cancel_reason: str | None


def pod_identity(pod: Mapping[str, Any]) -> PodIdentity | None:
    """None for a pod that is not one of ours or whose annotations were tampered with."""
    notes: Mapping[str, str] = (pod.get("metadata") or {}).get("annotations") or {}
    try:
        return PodIdentity(
            attempt_id=notes[NOTE_ATTEMPT], job_id=notes[NOTE_JOB], epoch=int(notes[NOTE_EPOCH]),
            pool=notes.get(NOTE_POOL, ""), gpus=int(notes.get(NOTE_GPUS, "0")),
            attempt_prefix=notes.get(NOTE_PREFIX, ""), cancel_reason=notes.get(NOTE_CANCEL),
        )
    except (KeyError, ValueError):
        return None


@dataclass(frozen=True)
class PodFacts:
    """What the launcher knows about an attempt's pod, beyond the pod itself."""

    pod: Mapping[str, Any] | None          # None: the pod is gone
    now: datetime
    cancel_reason: str | None = None       # set once a cancel was asked
    node_reclaimed: bool = False           # its node is being reclaimed or was deleted
    node_spot: bool = False
    staged: bool = False                   # a Flyte task: its result is read from the store
    task_result: TaskResult | None = None  # read after the pod ended
    image_pull_grace_s: float = 300.0
    unschedulable_grace_s: float = 600.0


def pod_verdict(facts: PodFacts) -> Verdict:
    """The attempt's phase, per the table in this module's docstring."""
    pod = facts.pod
    status: Mapping[str, Any] = (pod or {}).get("status") or {}
    phase = status.get("phase", "Pending")
    ended = pod is not None and phase in ("Succeeded", "Failed")
    if facts.cancel_reason is not None:
        # CANCELLED only once the pod has stopped: the job may be placed again at once.
        if pod is None or ended:
            reason = facts.cancel_reason
            return Verdict(Phase.CANCELLED, "Cancelled",
                           f"cancelled: {reason}" if reason else "cancelled")
        return Verdict(Phase.RUNNING if phase == "Running" else Phase.STARTING, "Cancelling",
                       "the pod is being stopped")
    if not ended and facts.node_reclaimed:
        word = "SpotReclaimed" if facts.node_spot else "NodeReclaimed"
        return Verdict(Phase.PREEMPTED, word, f"node {_node(pod)} is being reclaimed")
    if pod is None:
        return Verdict(Phase.LOST, "PodDeleted", "the pod was deleted by someone else")
    if ended:
        return _ended(status, facts)
    if phase == "Running":
        return Verdict(Phase.RUNNING)
    if phase == "Unknown":    # the node stopped reporting; the pod may well still run
        return Verdict(Phase.RUNNING, "NodeUnreachable", str(status.get("message") or ""))
    return _pending(pod, status, facts)


def _ended(status: Mapping[str, Any], facts: PodFacts) -> Verdict:
    terminated = _terminated(status)
    code = terminated.get("exitCode")
    exit_code = int(code) if isinstance(code, int) else None
    disruption = _condition(status, "DisruptionTarget")
    if status.get("phase") == "Failed" and disruption and disruption.get("status") == "True":
        return Verdict(Phase.PREEMPTED, str(disruption.get("reason") or "Disrupted"),
                       str(disruption.get("message") or "the pod was disrupted"), exit_code)
    pod_reason = str(status.get("reason") or "")
    if status.get("phase") == "Failed" and pod_reason in ("Shutdown", "Terminated", "NodeShutdown"):
        return Verdict(Phase.PREEMPTED, "NodeShutdown",
                       str(status.get("message") or "the node shut down"), exit_code)
    if facts.staged:
        if facts.task_result is None:
            return Verdict(Phase.RUNNING)   # its outputs or error are still to be read
        if facts.task_result.reason:
            return Verdict(Phase.FAILED, facts.task_result.reason, facts.task_result.message,
                           exit_code)
    if status.get("phase") == "Succeeded":
        return Verdict(Phase.SUCCEEDED, exit_code=0)
    message = str(status.get("message") or terminated.get("message") or "")
    if pod_reason == "DeadlineExceeded":
        return Verdict(Phase.FAILED, "DeadlineExceeded",
                       message or "the job ran past its timeout", exit_code)
    if pod_reason == "Evicted":
        return Verdict(Phase.FAILED, "Evicted", message or "the kubelet evicted the pod",
                       exit_code)
    container_reason = str(terminated.get("reason") or "")
    if container_reason == "OOMKilled":
        return Verdict(Phase.FAILED, "OOMKilled",
                       f"out of memory (exit code {exit_code})", exit_code)
    text = f"exit code {exit_code}" if exit_code is not None else "the pod failed"
    return Verdict(Phase.FAILED, "Error", f"{text}: {message}" if message else text, exit_code)


def _pending(pod: Mapping[str, Any], status: Mapping[str, Any], facts: PodFacts) -> Verdict:
    waiting = _waiting(status)
    reason = str(waiting.get("reason") or "")
    message = str(waiting.get("message") or "")
    age = _age_s(pod, facts.now)
    if reason in HOPELESS_WAITING:
        return Verdict(Phase.FAILED, reason, message or reason)
    if reason in IMAGE_PULL_WAITING:
        if age >= facts.image_pull_grace_s:
            return Verdict(Phase.FAILED, "ImagePullBackOff",
                           f"the image could not be pulled for {age:.0f}s: {message}")
        return Verdict(Phase.STARTING, "ImagePullBackOff", message)
    scheduled = _condition(status, "PodScheduled")
    unschedulable = scheduled is not None and scheduled.get("status") == "False"
    if scheduled is not None and unschedulable and scheduled.get("reason") == "Unschedulable":
        text = str(scheduled.get("message") or "no node fits the pod")
        if age >= facts.unschedulable_grace_s:
            return Verdict(Phase.PREEMPTED, "Unschedulable",
                           f"unschedulable for {age:.0f}s: {text}")
        return Verdict(Phase.STARTING, "Unschedulable", text)
    return Verdict(Phase.STARTING, reason, message)


def exit_code_of(pod: Mapping[str, Any]) -> int | None:
    """The main container's exit code once it ended (0 for a Succeeded pod without one)."""
    code = _terminated(pod.get("status") or {}).get("exitCode")
    if isinstance(code, int):
        return code
    return 0 if (pod.get("status") or {}).get("phase") == "Succeeded" else None


def started_at(pod: Mapping[str, Any] | None) -> datetime | None:
    running = ((_container_status(pod) or {}).get("state") or {}).get("running") or {}
    stamp = running.get("startedAt") or ((pod or {}).get("status") or {}).get("startTime")
    return parse_time(stamp)


def finished_at(pod: Mapping[str, Any] | None) -> datetime | None:
    status = (pod or {}).get("status") or {}
    return parse_time(_terminated(status).get("finishedAt"))


def parse_time(stamp: object) -> datetime | None:
    if not isinstance(stamp, str) or not stamp:
        return None
    try:
        return datetime.fromisoformat(stamp.replace("Z", "+00:00")).astimezone(UTC)
    except ValueError:
        return None


def _node(pod: Mapping[str, Any] | None) -> str:
    return str(((pod or {}).get("spec") or {}).get("nodeName") or "?")


def _age_s(pod: Mapping[str, Any], now: datetime) -> float:
    created = parse_time((pod.get("metadata") or {}).get("creationTimestamp"))
    return 0.0 if created is None else max(0.0, (now - created).total_seconds())


def _condition(status: Mapping[str, Any], kind: str) -> Mapping[str, Any] | None:
    for condition in status.get("conditions") or []:
        if condition.get("type") == kind:
            return condition  # type: ignore[no-any-return]
    return None


def _container_status(pod: Mapping[str, Any] | None) -> Mapping[str, Any] | None:
    for item in ((pod or {}).get("status") or {}).get("containerStatuses") or []:
        if item.get("name") == CONTAINER:
            return item  # type: ignore[no-any-return]
    return None


def _terminated(status: Mapping[str, Any]) -> Mapping[str, Any]:
    container = _container_status({"status": status}) or {}
    state = container.get("state") or {}
    return state.get("terminated") or (container.get("lastState") or {}).get("terminated") or {}


def _waiting(status: Mapping[str, Any]) -> Mapping[str, Any]:
    container = _container_status({"status": status}) or {}
    return (container.get("state") or {}).get("waiting") or {}
