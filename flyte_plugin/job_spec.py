"""From a Flyte task template (and the attempt's identity) to the fleet's JobSpec. No I/O."""

# flytekit and flyteidl ship no type information (no py.typed): their names are Any here.
from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta

from fleet.v1 import types_pb2
from flytekit.models.literals import LiteralMap  # type: ignore[import-untyped]
from flytekit.models.task import Resources, TaskExecutionMetadata, TaskTemplate  # type: ignore[import-untyped]

from flyte_plugin.mapping import (
    client_key,
    cpu_millis,
    gpu_count,
    gpu_model_for_device,
    hints_from_custom,
    memory_bytes,
    retemplate_command,
)

DEFAULT_PROJECT = "flytesnacks"
DEFAULT_DOMAIN = "development"


@dataclass(frozen=True)
class FlyteAttempt:
    """Who runs this task: one retry attempt of one node of one Flyte execution."""

    project: str
    domain: str
    execution: str
    node_id: str
    retry: int

    @property
    def client_key(self) -> str:
        return client_key(self.project, self.domain, self.execution, self.node_id, self.retry)


def flyte_attempt(metadata: TaskExecutionMetadata | None) -> FlyteAttempt | None:
    """The attempt's identity; None in a local run (no metadata, or an empty one over gRPC)."""
    if metadata is None or metadata.task_execution_id is None:
        return None
    task_execution = metadata.task_execution_id
    node = task_execution.node_execution_id
    if node is None or node.execution_id is None or not node.execution_id.name:
        return None
    execution = node.execution_id
    return FlyteAttempt(
        project=execution.project,
        domain=execution.domain,
        execution=execution.name,
        node_id=node.node_id,
        retry=int(task_execution.retry_attempt or 0),
    )


@dataclass(frozen=True)
class Submission:
    spec: types_pb2.JobSpec
    client_key: str


def build_submission(
    template: TaskTemplate,
    inputs: LiteralMap | None,
    metadata: TaskExecutionMetadata | None,
    env: Mapping[str, str],
) -> Submission:
    """The job to submit for one Flyte task attempt.

    env: the connector's own environment, for FLEET_PROJECT / FLEET_DOMAIN in local runs.
    """
    attempt = flyte_attempt(metadata)
    if attempt is not None:
        project, domain, key = attempt.project, attempt.domain, attempt.client_key
    else:
        project = env.get("FLEET_PROJECT") or DEFAULT_PROJECT
        domain = env.get("FLEET_DOMAIN") or DEFAULT_DOMAIN
        # A local run has no Flyte identity: every run is a new job.
        key = f"local/{uuid.uuid4()}"
    container = template.container
    if container is None:
        raise ValueError(f"task {template.id.name}: a fleet task needs a container (it has none)")
    hints = hints_from_custom(template.custom)
    spec = types_pb2.JobSpec(
        project=project,
        domain=domain,
        name=template.id.name,
        image=container.image or "",
        command=retemplate_command(list(container.args or [])),
        env={**_platform_env(metadata), **dict(container.env or {})},
        resources=_resources(container.resources, _accelerator_device(template)),
        labels=hints.labels,
        routing=types_pb2.RoutingHints(
            origin_region=hints.origin_region,
            allow_spot=hints.allow_spot,
            pin_dataplane=hints.pin_dataplane,
        ),
        priority=hints.priority,
        service_account=_service_account(template, metadata),
        # Flyte owns retries: a failure ends the job, and Flyte decides whether to try again.
        retry_budget=0,
        inputs=inputs.to_flyte_idl().SerializeToString() if inputs is not None else b"",
    )
    timeout = template.metadata.timeout if template.metadata is not None else None
    if isinstance(timeout, timedelta) and timeout > timedelta(0):
        spec.timeout.FromTimedelta(timeout)
    return Submission(spec, key)


def _service_account(template: TaskTemplate, metadata: TaskExecutionMetadata | None) -> str:
    """The Kubernetes service account chosen for the execution (a launch plan's or
    `pyflyte run --service-account`), else the task's own; empty: the dataplane's default.

    Propeller names "default" when nobody chose one: that is its namespace's default, not a
    choice, so the dataplane's own default applies then.
    """
    chosen = metadata.k8s_service_account if metadata is not None else ""
    if not chosen or chosen == "default":
        context = template.security_context
        run_as = context.run_as if context is not None else None
        chosen = run_as.k8s_service_account if run_as is not None else ""
    return "" if chosen in (None, "default") else str(chosen)


def _platform_env(metadata: TaskExecutionMetadata | None) -> dict[str, str]:
    # What propeller would set in the task's pod (FLYTE_INTERNAL_EXECUTION_ID, ...).
    if metadata is None or not metadata.environment_variables:
        return {}
    return {str(k): str(v) for k, v in metadata.environment_variables.items()}


def _accelerator_device(template: TaskTemplate) -> str:
    extended = template.extended_resources
    if extended is None or not extended.HasField("gpu_accelerator"):
        return ""
    return str(extended.gpu_accelerator.device)


def _resources(resources: Resources | None, device: str) -> types_pb2.Resources:
    """GPUs, CPU and memory from the container; a resource's request wins over its limit."""
    wanted: dict[int, str] = {}
    if resources is not None:
        for entry in [*(resources.limits or []), *(resources.requests or [])]:
            wanted[entry.name] = entry.value
    name = Resources.ResourceName
    gpu_model = gpu_model_for_device(device)
    return types_pb2.Resources(
        gpus=gpu_count(wanted[name.GPU]) if name.GPU in wanted else 0,
        gpu_model=gpu_model.model,
        min_gpu_memory_gb=gpu_model.min_memory_gb,
        cpu_millis=cpu_millis(wanted[name.CPU]) if name.CPU in wanted else 0,
        memory_bytes=memory_bytes(wanted[name.MEMORY]) if name.MEMORY in wanted else 0,
    )
