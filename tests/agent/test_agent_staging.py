"""Flyte tasks through the process launcher, with a local store and a stand-in for
pyflyte-execute: inputs staged, command rendered, outputs and errors read back."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
from flyteidl.core import errors_pb2, execution_pb2, literals_pb2

from dataplane_agent import wire
from dataplane_agent.domain.attempt import AttemptStatus, Phase
from dataplane_agent.launcher import LaunchRequest, ProcessLauncher
from tests.agent.pools import CPU_ONLY

Eventually = Callable[[Callable[[], object], str], Awaitable[None]]

# Stands in for pyflyte-execute: records what it was given, copies prepared files into its
# output prefix as outputs.pb / error.pb, saves a checkpoint, waits for a go file.
STAND_IN = """\
import json, os, shutil, sys, time
args = dict(zip(sys.argv[1::2], sys.argv[2::2]))
strip = lambda url: url[len("file://"):] if url.startswith("file://") else url
out = strip(args["--output-prefix"])
if "--wait-for" in args:
    while not os.path.exists(args["--wait-for"]):
        time.sleep(0.02)
inputs = strip(args["--inputs"])
record = {
    "argv": sys.argv[1:],
    "env": {k: v for k, v in os.environ.items()
            if k.startswith("FLYTE") or k == "FLEET_ATTEMPT_PREFIX"},
    "inputs": open(inputs, "rb").read().hex() if os.path.exists(inputs) else None,
}
with open(args["--record"], "w") as f:
    json.dump(record, f)
os.makedirs(out, exist_ok=True)
if "--save-checkpoint" in args:
    os.makedirs(strip(args["--checkpoint-path"]), exist_ok=True)
    with open(os.path.join(strip(args["--checkpoint-path"]), "state"), "w") as f:
        f.write(args["--save-checkpoint"])
if "--emit-outputs" in args:
    shutil.copy(args["--emit-outputs"], os.path.join(out, "outputs.pb"))
if "--emit-error" in args:
    shutil.copy(args["--emit-error"], os.path.join(out, "error.pb"))
sys.exit(int(args.get("--exit", "0")))
"""

PLACEHOLDER_ARGS = (
    "--inputs", "{{.input}}", "--output-prefix", "{{.outputPrefix}}",
    "--raw-output-data-prefix", "{{.rawOutputDataPrefix}}",
    "--checkpoint-path", "{{.checkpointOutputPrefix}}",
    "--prev-checkpoint", "{{.prevCheckpointPrefix}}",
)


def literal_map(**values: int) -> bytes:
    literals = literals_pb2.LiteralMap()
    for name, value in values.items():
        literals.literals[name].scalar.primitive.integer = value
    return literals.SerializeToString()


def error_document(message: str, origin: int) -> bytes:
    error = errors_pb2.ContainerError(
        code="USER:ValueError", message=message, origin=origin,
        kind=errors_pb2.ContainerError.NON_RECOVERABLE,
    )
    return errors_pb2.ErrorDocument(error=error).SerializeToString()


class Task:
    """One stand-in task run: its launch request and what it recorded."""

    def __init__(self, tmp_path: Path, attempt_id: str, *extra: str, job_id: str = "j-1",
                 epoch: int = 1, inputs: bytes = b"") -> None:
        self.record = tmp_path / f"{attempt_id}.json"
        program = tmp_path / "stand_in.py"
        program.write_text(STAND_IN)
        self.request = LaunchRequest(
            attempt_id=attempt_id, job_id=job_id, epoch=epoch, pool="cpu", gpus=0,
            command=(sys.executable, str(program), *PLACEHOLDER_ARGS,
                     "--record", str(self.record), *extra),
            env={"GREETING": "hi"}, project="flytesnacks", domain="development",
            name="examples.x.train", inputs=inputs,
        )

    def recorded(self) -> dict[str, object]:
        data = json.loads(self.record.read_text())
        assert isinstance(data, dict)
        return data


def prepared(tmp_path: Path, name: str, data: bytes) -> str:
    path = tmp_path / name
    path.write_bytes(data)
    return str(path)


class Recorder:
    def __init__(self) -> None:
        self.changes: list[AttemptStatus] = []

    def __call__(self, status: AttemptStatus) -> None:
        self.changes.append(status)


def new_launcher(workdir: Path, store: str, recorder: Recorder | None = None) -> ProcessLauncher:
    return ProcessLauncher(workdir, "eu", CPU_ONLY, recorder, poll_interval_s=0.05,
                           kill_grace_s=1.0, store_prefix=store)


@pytest.fixture
def store(tmp_path: Path) -> Path:
    return tmp_path / "store"


@pytest.fixture
async def recorder() -> Recorder:
    return Recorder()


@pytest.fixture
async def launcher(
    workdir: Path, store: Path, recorder: Recorder
) -> AsyncIterator[ProcessLauncher]:
    async with new_launcher(workdir, str(store), recorder) as running:
        yield running


def status_of(launcher: ProcessLauncher, attempt_id: str) -> AttemptStatus:
    found = [s for s in launcher.statuses() if s.attempt_id == attempt_id]
    assert found, f"{attempt_id} is not reported"
    return found[0]


async def finished(launcher: ProcessLauncher, attempt_id: str,
                   eventually: Eventually) -> AttemptStatus:
    await eventually(lambda: status_of(launcher, attempt_id).phase.final, f"{attempt_id} ended")
    return status_of(launcher, attempt_id)


async def test_inputs_are_staged_and_the_command_sees_the_attempt_s_paths(
    launcher: ProcessLauncher, store: Path, tmp_path: Path, eventually: Eventually
) -> None:
    inputs = literal_map(x=21)
    task = Task(tmp_path, "j-1-1", "--both", "{{.outputPrefix}}:{{.input}}", inputs=inputs)

    await launcher.launch(task.request)
    status = await finished(launcher, "j-1-1", eventually)

    prefix = store / "flytesnacks" / "development" / "j-1" / "j-1-1"
    assert (status.phase, status.outputs) == (Phase.SUCCEEDED, b"")
    assert (prefix / "inputs.pb").read_bytes() == inputs
    recorded = task.recorded()
    assert recorded["inputs"] == inputs.hex()
    argv = recorded["argv"]
    assert isinstance(argv, list)
    assert argv[:10] == [
        "--inputs", f"{prefix}/inputs.pb", "--output-prefix", str(prefix),
        "--raw-output-data-prefix", f"{prefix}/raw",
        "--checkpoint-path", f"{prefix}/checkpoint", "--prev-checkpoint", "",
    ]
    assert argv[-2:] == ["--both", f"{prefix}:{prefix}/inputs.pb"]
    assert recorded["env"] == {
        "FLYTE_FAIL_ON_ERROR": "true",
        "FLYTE_INTERNAL_EXECUTION_PROJECT": "flytesnacks",
        "FLYTE_INTERNAL_EXECUTION_DOMAIN": "development",
        "FLYTE_INTERNAL_EXECUTION_ID": "j-1",
        "FLYTE_INTERNAL_TASK_PROJECT": "flytesnacks",
        "FLYTE_INTERNAL_TASK_DOMAIN": "development",
        "FLYTE_INTERNAL_TASK_NAME": "examples.x.train",
        "FLEET_ATTEMPT_PREFIX": str(prefix),
    }


async def test_a_task_without_inputs_still_finds_an_empty_inputs_pb(
    launcher: ProcessLauncher, store: Path, tmp_path: Path, eventually: Eventually
) -> None:
    task = Task(tmp_path, "j-1-1")

    await launcher.launch(task.request)
    await finished(launcher, "j-1-1", eventually)

    assert task.recorded()["inputs"] == ""   # an empty LiteralMap is zero bytes


async def test_a_task_s_outputs_come_back_with_succeeded_in_every_report(
    launcher: ProcessLauncher, recorder: Recorder, tmp_path: Path, eventually: Eventually
) -> None:
    outputs = literal_map(o0=42)
    task = Task(tmp_path, "j-1-1", "--emit-outputs", prepared(tmp_path, "out.pb", outputs))

    await launcher.launch(task.request)
    status = await finished(launcher, "j-1-1", eventually)

    assert (status.phase, status.exit_code, status.outputs) == (Phase.SUCCEEDED, 0, outputs)
    returned = literals_pb2.LiteralMap.FromString(status.outputs)
    assert returned.literals["o0"].scalar.primitive.integer == 42
    announced = [s for s in recorder.changes if s.phase is Phase.SUCCEEDED]
    assert [s.outputs for s in announced] == [outputs]   # the first SUCCEEDED carries them
    beat = wire.heartbeat(1, [], launcher.statuses())
    assert [a.outputs for a in beat.heartbeat.attempts] == [outputs]


async def test_a_user_error_document_fails_the_attempt_with_its_message(
    launcher: ProcessLauncher, tmp_path: Path, eventually: Eventually
) -> None:
    message = "Trace:\n\n    Traceback ...\nMessage:\n\n    ValueError: bad input"
    document = error_document(message, execution_pb2.ExecutionError.USER)
    task = Task(tmp_path, "j-1-1", "--emit-error", prepared(tmp_path, "error.pb", document),
                "--exit", "1")

    await launcher.launch(task.request)
    status = await finished(launcher, "j-1-1", eventually)

    assert (status.phase, status.reason, status.exit_code) == (Phase.FAILED, "UserError", 1)
    assert status.message == message
    assert status.outputs == b""


async def test_a_system_error_document_is_a_system_error(
    launcher: ProcessLauncher, tmp_path: Path, eventually: Eventually
) -> None:
    document = error_document("OSError: disk full", execution_pb2.ExecutionError.SYSTEM)
    task = Task(tmp_path, "j-1-1", "--emit-error", prepared(tmp_path, "error.pb", document),
                "--exit", "1")

    await launcher.launch(task.request)
    status = await finished(launcher, "j-1-1", eventually)

    assert (status.phase, status.reason, status.message) == (
        Phase.FAILED, "SystemError", "OSError: disk full"
    )


@pytest.mark.parametrize(
    ("data", "reason", "words"),
    [
        (b"\x0a" * (4 * 1024 * 1024 + 1), "OutputsTooLarge", "return large data as files"),
        (b"not a literal map", "InvalidOutputs", "not a flyteidl LiteralMap"),
    ],
)
async def test_outputs_that_cannot_travel_fail_the_attempt(
    launcher: ProcessLauncher, tmp_path: Path, eventually: Eventually,
    data: bytes, reason: str, words: str,
) -> None:
    task = Task(tmp_path, "j-1-1", "--emit-outputs", prepared(tmp_path, "out.pb", data))

    await launcher.launch(task.request)
    status = await finished(launcher, "j-1-1", eventually)

    assert (status.phase, status.reason, status.outputs) == (Phase.FAILED, reason, b"")
    assert words in status.message


async def test_a_restarted_launcher_still_reports_the_outputs(
    workdir: Path, store: Path, tmp_path: Path, eventually: Eventually
) -> None:
    outputs = literal_map(o0=42)
    done = Task(tmp_path, "done", "--emit-outputs", prepared(tmp_path, "a.pb", outputs))
    go = tmp_path / "go"
    later = Task(tmp_path, "later", "--emit-outputs", prepared(tmp_path, "b.pb", outputs),
                 "--wait-for", str(go), job_id="j-2")
    async with new_launcher(workdir, str(store)) as before:
        await before.launch(done.request)
        await before.launch(later.request)
        await finished(before, "done", eventually)
        await eventually(lambda: status_of(before, "later").phase is Phase.RUNNING, "running")
    go.touch()   # "later" ends while no launcher watches
    await eventually(lambda: (workdir / "attempts" / "later" / "result.json").exists(),
                     "later exited")
    (store / "flytesnacks").rename(tmp_path / "moved")   # adopted results come from the folder...

    recorder = Recorder()
    async with new_launcher(workdir, str(store), recorder) as after:
        assert status_of(after, "done").outputs == outputs
        (tmp_path / "moved").rename(store / "flytesnacks")   # ...new ones from the store
        status = await finished(after, "later", eventually)

    assert (status.phase, status.outputs) == (Phase.SUCCEEDED, outputs)
    assert [(s.attempt_id, s.phase) for s in recorder.changes] == [("later", Phase.SUCCEEDED)]


async def test_a_retry_restores_from_the_previous_attempt_s_checkpoint(
    launcher: ProcessLauncher, store: Path, tmp_path: Path, eventually: Eventually
) -> None:
    first = Task(tmp_path, "j-1-1", "--save-checkpoint", "epoch 1", "--exit", "1")
    await launcher.launch(first.request)
    await finished(launcher, "j-1-1", eventually)
    await launcher.forget("j-1-1")

    second = Task(tmp_path, "j-1-2", epoch=2)
    other_job = Task(tmp_path, "j-9-2", job_id="j-9", epoch=2)
    await launcher.launch(second.request)
    await launcher.launch(other_job.request)
    await finished(launcher, "j-1-2", eventually)
    await finished(launcher, "j-9-2", eventually)

    checkpoint = store / "flytesnacks" / "development" / "j-1" / "j-1-1" / "checkpoint"
    assert (checkpoint / "state").read_text() == "epoch 1"
    assert_prev_checkpoint(first, "")
    assert_prev_checkpoint(second, str(checkpoint))
    assert_prev_checkpoint(other_job, "")


def assert_prev_checkpoint(task: Task, expected: str) -> None:
    argv = task.recorded()["argv"]
    assert isinstance(argv, list)
    assert argv[argv.index("--prev-checkpoint") + 1] == expected


async def test_a_file_url_store_works_like_a_path(
    workdir: Path, store: Path, tmp_path: Path, eventually: Eventually
) -> None:
    outputs = literal_map(o0=1)
    task = Task(tmp_path, "j-1-1", "--emit-outputs", prepared(tmp_path, "out.pb", outputs),
                inputs=literal_map(x=1))
    async with new_launcher(workdir, f"file://{store}/") as launcher:
        await launcher.launch(task.request)
        status = await finished(launcher, "j-1-1", eventually)

    prefix = f"file://{store}/flytesnacks/development/j-1/j-1-1"
    assert (status.phase, status.outputs) == (Phase.SUCCEEDED, outputs)
    argv = task.recorded()["argv"]
    assert isinstance(argv, list)
    assert argv[:4] == ["--inputs", f"{prefix}/inputs.pb", "--output-prefix", prefix]
    assert (store / "flytesnacks/development/j-1/j-1-1/inputs.pb").read_bytes() == literal_map(x=1)


@pytest.mark.parametrize(
    ("change", "reason", "words"),
    [
        ({"project": "../elsewhere"}, "InvalidSpec", "cannot name a folder in the store"),
        ({"inputs": b"not a literal map"}, "InvalidInputs", "not a flyteidl LiteralMap"),
    ],
)
async def test_a_task_that_cannot_be_staged_is_refused_without_running(
    launcher: ProcessLauncher, store: Path, tmp_path: Path,
    change: dict[str, object], reason: str, words: str,
) -> None:
    task = Task(tmp_path, "j-1-1")
    fields = {**task.request.__dict__, **change}

    status = await launcher.launch(LaunchRequest(**fields))  # type: ignore[arg-type]

    assert (status.phase, status.reason) == (Phase.FAILED, reason)
    assert words in status.message
    assert not task.record.exists()
    assert list(store.iterdir()) == []


async def test_a_plain_command_is_not_staged(
    launcher: ProcessLauncher, store: Path, eventually: Eventually
) -> None:
    script = "echo fail=${FLYTE_FAIL_ON_ERROR:-unset} prefix=${FLEET_ATTEMPT_PREFIX:-unset}"
    await launcher.launch(LaunchRequest(
        attempt_id="plain", job_id="j-3", epoch=1, pool="cpu", gpus=0,
        command=("sh", "-c", script), project="flytesnacks", domain="development",
    ))

    status = await finished(launcher, "plain", eventually)

    assert status.phase is Phase.SUCCEEDED
    assert await launcher.read_log("plain", 1000) == b"fail=unset prefix=unset\n"
    assert list(store.iterdir()) == []


def test_the_runner_loads_neither_fsspec_nor_flyteidl() -> None:
    probe = (
        "import sys, dataplane_agent.launcher.runner; "
        "print(sorted(m for m in ('fsspec', 'flyteidl', 'google.protobuf', 'grpc') "
        "if m in sys.modules))"
    )

    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                            check=True).stdout.strip()

    assert loaded == "[]"
