"""The `fleet` task type: a Python function task that runs on a dataplane of the fleet.

    from flytekit import Resources, task
    from flytekit.extras.accelerators import H100
    from flyte_plugin import Fleet

    @task(task_config=Fleet(labels={"team": "nlp"}), requests=Resources(gpu="1"), accelerator=H100)
    def train(x: int) -> int: ...

GPU needs come from flytekit's own ``requests``/``limits`` and ``accelerator``; ``Fleet``
holds only the routing hints. On a Flyte cluster propeller sends the task to the fleet's
connector; in a local run (calling the workflow in Python, ``pyflyte run`` without
``--remote``) flytekit calls the same connector in-process. Either way the function itself
runs as ``pyflyte-execute`` on the dataplane the control plane picked.
"""

# flytekit and flyteidl ship no type information (no py.typed): their names are Any here.
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from flytekit import FlyteContextManager, PythonFunctionTask  # type: ignore[import-untyped]
from flytekit.configuration import ImageConfig, SerializationSettings  # type: ignore[import-untyped]
from flytekit.extend import TaskPlugins  # type: ignore[import-untyped]
from flytekit.extend.backend.base_connector import AsyncConnectorExecutorMixin  # type: ignore[import-untyped]

TASK_TYPE = "fleet"


@dataclass
class Fleet:
    """Routing hints for the fleet's control plane; the admins' routing policy has the last word.

    labels: matched by routing rules (e.g. team, cost centre).
    origin_region: where the task's data lives, for latency budgets.
    priority: higher runs first when capacity is short.
    allow_spot: None lets the policy decide; False keeps the task off spot capacity.
    pin_dataplane: run only on this dataplane (by name).
    """

    labels: dict[str, str] = field(default_factory=dict)
    origin_region: str = ""
    priority: int = 0
    allow_spot: bool | None = None
    pin_dataplane: str = ""

    def to_custom(self) -> dict[str, Any]:
        """The hints as a JSON-able dict (the task template's ``custom`` field)."""
        return {
            "labels": dict(self.labels),
            "origin_region": self.origin_region,
            "priority": self.priority,
            "allow_spot": self.allow_spot,
            "pin_dataplane": self.pin_dataplane,
        }


class FleetTask(AsyncConnectorExecutorMixin, PythonFunctionTask[Fleet]):  # type: ignore[misc]  # flytekit's bases are untyped
    """A function task of type ``fleet``; made by ``@task(task_config=Fleet(...))``."""

    _TASK_TYPE = TASK_TYPE

    def __init__(
        self,
        task_config: Fleet | None,
        task_function: Callable[..., Any],
        **kwargs: Any,
    ) -> None:
        super().__init__(
            task_config=task_config or Fleet(),
            task_function=task_function,
            task_type=self._TASK_TYPE,
            **kwargs,
        )

    def get_custom(self, settings: SerializationSettings) -> dict[str, Any]:
        config: Fleet = self.task_config
        return config.to_custom()

    def execute(self, **kwargs: Any) -> Any:
        """Hand the task to the fleet in a local run; run the function itself on the dataplane.

        The same class serves both sides: in the user's local run flytekit is in a local
        execution mode and the connector submits the job; inside the job (pyflyte-execute on
        the dataplane) the mode is task execution and the function simply runs.
        """
        ctx = FlyteContextManager.current_context()
        state = ctx.execution_state
        if state is None or not state.is_local_execution():
            return PythonFunctionTask.execute(self, **kwargs)
        if ctx.serialization_settings is not None:  # pyflyte run sets them (with --image)
            return AsyncConnectorExecutorMixin.execute(self, **kwargs)
        # Called from plain Python: serialize as pyflyte run would, with flytekit's default
        # image (the process launcher ignores it; Kubernetes dataplanes use container_image).
        settings = SerializationSettings(image_config=ImageConfig.auto_default_image())
        with FlyteContextManager.with_context(ctx.with_serialization_settings(settings)):
            return AsyncConnectorExecutorMixin.execute(self, **kwargs)


def register() -> None:
    TaskPlugins.register_pythontask_plugin(Fleet, FleetTask)
