"""Task templates and attempt metadata as flytekit and propeller would hand them over."""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

from flyteidl.admin import agent_pb2
from flytekit import FlyteContextManager
from flytekit.configuration import ImageConfig, SerializationSettings
from flytekit.core.type_engine import TypeEngine
from flytekit.models.core.identifier import (
    Identifier,
    NodeExecutionIdentifier,
    ResourceType,
    TaskExecutionIdentifier,
    WorkflowExecutionIdentifier,
)
from flytekit.models.literals import LiteralMap
from flytekit.models.task import TaskExecutionMetadata, TaskTemplate
from flytekit.tools.translator import get_serializable

SETTINGS = SerializationSettings(image_config=ImageConfig.auto_default_image())


def template_of(task: Any) -> TaskTemplate:
    """The task's template as registration would serialize it (placeholders unrendered)."""
    return get_serializable(OrderedDict(), SETTINGS, task).template


def over_grpc(template: TaskTemplate) -> TaskTemplate:
    """The template after a trip through protobuf, as the connector service receives it."""
    return TaskTemplate.from_flyte_idl(template.to_flyte_idl())


def literals(task: Any, **values: Any) -> LiteralMap:
    ctx = FlyteContextManager.current_context()
    return TypeEngine.dict_to_literal_map(ctx, values, task.python_interface.inputs)


def attempt_metadata(
    project: str = "ml",
    domain: str = "production",
    execution: str = "f3a9c1",
    node_id: str = "n0",
    retry: int = 0,
    env: dict[str, str] | None = None,
) -> TaskExecutionMetadata:
    """What propeller sends with CreateTask for one attempt of one node."""
    return TaskExecutionMetadata(
        task_execution_id=TaskExecutionIdentifier(
            task_id=Identifier(ResourceType.TASK, project, domain, "tests.flyte.task", "v1"),
            node_execution_id=NodeExecutionIdentifier(
                node_id, WorkflowExecutionIdentifier(project, domain, execution)
            ),
            retry_attempt=retry,
        ),
        namespace=f"{project}-{domain}",
        labels={},
        annotations={},
        k8s_service_account="default",
        environment_variables=env or {},
        identity=None,
    )


def empty_metadata() -> TaskExecutionMetadata:
    """What the connector service builds when CreateTask carries no metadata."""
    return TaskExecutionMetadata.from_flyte_idl(agent_pb2.TaskExecutionMetadata())
