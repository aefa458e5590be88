"""flyte-fleet's flytekit plugin: the `fleet` task type and its connector.

    from flyte_plugin import Fleet

    @task(task_config=Fleet(labels={"team": "nlp"}), requests=Resources(gpu="1"))
    def train(x: int) -> int: ...

flytekit imports this package at its own import (entry point ``flytekit.plugins``); doing
so registers the task type and the connector, and nothing else.
"""

from flyte_plugin.connector import FleetConnector, FleetMetadata, FleetRejected
from flyte_plugin.connector import register as _register_connector
from flyte_plugin.task import Fleet, FleetTask
from flyte_plugin.task import register as _register_task

_register_task()
_register_connector()

__all__ = ["Fleet", "FleetConnector", "FleetMetadata", "FleetRejected", "FleetTask"]
