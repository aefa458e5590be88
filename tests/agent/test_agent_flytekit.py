"""The staging contract against real flytekit: pyflyte-execute runs tasks under the process
launcher, reading the inputs the agent staged and leaving outputs or an error it reads back."""

from __future__ import annotations

import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

from flyteidl.core import literals_pb2

from dataplane_agent.domain.attempt import AttemptStatus, Phase
from dataplane_agent.launcher import LaunchRequest, ProcessLauncher
from tests.agent.pools import CPU_ONLY

Eventually = Callable[[Callable[[], object], str], Awaitable[None]]

TASKS = """\
from flytekit import task


@task
def double(x: int) -> int:
    return x * 2


@task
def explode(x: int) -> int:
    raise ValueError("bad input")


@task
def greet() -> str:
    return "hello"
"""


def pyflyte_execute() -> list[str]:
    script = Path(sys.executable).parent / "pyflyte-execute"
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", "flytekit.bin.entrypoint", "pyflyte-execute"]


def task_request(attempt_id: str, task_name: str, code: Path, inputs: bytes) -> LaunchRequest:
    # The container args flytekit serializes for a task, placeholders and all.
    command = (
        *pyflyte_execute(), "--inputs", "{{.input}}", "--output-prefix", "{{.outputPrefix}}",
        "--raw-output-data-prefix", "{{.rawOutputDataPrefix}}",
        "--checkpoint-path", "{{.checkpointOutputPrefix}}",
        "--prev-checkpoint", "{{.prevCheckpointPrefix}}",
        "--resolver", "flytekit.core.python_auto_container.default_task_resolver", "--",
        "task-module", "fleet_test_tasks", "task-name", task_name,
    )
    return LaunchRequest(
        attempt_id=attempt_id, job_id=f"job-{attempt_id}", epoch=1, pool="cpu", gpus=0,
        command=command, env={"PYTHONPATH": str(code)}, project="flytesnacks",
        domain="development", name=f"fleet_test_tasks.{task_name}", inputs=inputs,
    )


def int_inputs(**values: int) -> bytes:
    literals = literals_pb2.LiteralMap()
    for name, value in values.items():
        literals.literals[name].scalar.primitive.integer = value
    return literals.SerializeToString()


def output_of(status: AttemptStatus) -> literals_pb2.Literal:
    literals = literals_pb2.LiteralMap.FromString(status.outputs).literals
    assert list(literals) == ["o0"]
    return literals["o0"]


async def test_real_flytekit_tasks_run_on_staged_inputs_and_report_outputs_or_errors(
    workdir: Path, tmp_path: Path, eventually: Eventually
) -> None:
    code = tmp_path / "code"
    code.mkdir()
    (code / "fleet_test_tasks.py").write_text(TASKS)
    requests = [
        task_request("doubled", "double", code, int_inputs(x=21)),
        task_request("exploded", "explode", code, int_inputs(x=1)),
        task_request("greeted", "greet", code, b""),   # no inputs: an empty LiteralMap
    ]
    async with ProcessLauncher(workdir, "eu", CPU_ONLY, poll_interval_s=0.05,
                               store_prefix=str(tmp_path / "store")) as launcher:
        for request in requests:   # all three at once: pyflyte-execute takes a second or two
            await launcher.launch(request)
        await eventually(lambda: all(s.phase.final for s in launcher.statuses()), "all ended")
        doubled, exploded, greeted = launcher.statuses()
        log = (await launcher.read_log("exploded", 100_000)).decode()

    assert (doubled.phase, doubled.exit_code) == (Phase.SUCCEEDED, 0), doubled.message
    assert output_of(doubled).scalar.primitive.integer == 42
    assert (greeted.phase, output_of(greeted).scalar.primitive.string_value) == (
        Phase.SUCCEEDED, "hello"
    )
    assert (exploded.phase, exploded.reason, exploded.exit_code) == (
        Phase.FAILED, "UserError", 1
    ), exploded.message
    assert exploded.message.endswith("ValueError: bad input")
    assert exploded.outputs == b""
    assert "bad input" in log
    prefix = tmp_path / "store" / "flytesnacks" / "development" / "job-doubled" / "doubled"
    assert sorted(p.name for p in prefix.iterdir()) == ["inputs.pb", "outputs.pb"]
