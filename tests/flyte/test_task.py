"""The `fleet` task type as flytekit sees it: registration, serialization, and where it runs."""

from __future__ import annotations

import json
import subprocess
import sys
from importlib.metadata import entry_points

from flytekit import FlyteContextManager
from flytekit.core.context_manager import ExecutionState

from flyte_plugin import Fleet, FleetTask
from tests.flyte import workflows
from tests.flyte.flyte_models import template_of


def test_task_config_fleet_makes_a_fleet_task() -> None:
    assert isinstance(workflows.add_one, FleetTask)
    template = template_of(workflows.add_one)
    assert template.type == "fleet"


def test_the_template_carries_only_the_routing_hints_as_json() -> None:
    custom = template_of(workflows.add_one).custom
    assert json.loads(json.dumps(custom)) == {
        "labels": {"team": "tests"},
        "origin_region": "",
        "priority": 2,
        "allow_spot": None,
        "pin_dataplane": "",
    }
    assert Fleet(allow_spot=False).to_custom()["allow_spot"] is False


def test_inside_the_job_the_function_itself_runs() -> None:
    # pyflyte-execute on the dataplane runs in task-execution mode: no connector, no fleet.
    ctx = FlyteContextManager.current_context()
    state = ctx.new_execution_state().with_params(mode=ExecutionState.Mode.TASK_EXECUTION)
    with FlyteContextManager.with_context(ctx.with_execution_state(state)):
        assert workflows.add_one.execute(x=1) == 2


def test_flytekit_loads_the_plugin_through_its_entry_point() -> None:
    [plugin] = [e for e in entry_points(group="flytekit.plugins") if e.name == "fleet"]
    assert plugin.value == "flyte_plugin"
    # A fresh interpreter that imports only flytekit finds the task type and the connector.
    check = (
        "import flytekit\n"
        "from flytekit.extend.backend.base_connector import ConnectorRegistry\n"
        "print(ConnectorRegistry.get_connector('fleet').name)\n"
        "from flytekit.extend import TaskPlugins\n"
        "from flyte_plugin import Fleet, FleetTask\n"
        "assert TaskPlugins.find_pythontask_plugin(Fleet) is FleetTask\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", check], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "Fleet Connector"
