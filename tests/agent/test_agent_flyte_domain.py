"""Flyte's task contract as pure functions: placeholders, store layout, environment, results."""

from __future__ import annotations

import pytest

from dataplane_agent.domain.attempt import (
    FolderFacts,
    Outcome,
    OutcomeKind,
    Phase,
    TaskResult,
    Verdict,
    derive_status,
)
from dataplane_agent.domain.flyte import (
    MAX_OUTPUTS_BYTES,
    ErrorOrigin,
    TaskError,
    TaskFiles,
    TaskLocations,
    attempt_prefix,
    is_store_prefix,
    join_url,
    local_path,
    needs_staging,
    render_command,
    task_environment,
    task_result,
    trim_message,
)

PREFIX = "s3://bucket/eu/flytesnacks/development/j-1/j-1-2"
WHERE = TaskLocations(PREFIX, "j-1-2", previous_checkpoint="s3://bucket/eu/p/d/j-1/j-1-1/checkpoint")


@pytest.mark.parametrize(
    ("argument", "rendered"),
    [
        ("{{.input}}", f"{PREFIX}/inputs.pb"),
        ("{{.inputPrefix}}", PREFIX),
        ("{{.outputPrefix}}", PREFIX),
        ("{{.rawOutputDataPrefix}}", f"{PREFIX}/raw"),
        ("{{.checkpointOutputPrefix}}", f"{PREFIX}/checkpoint"),
        ("{{.prevCheckpointPrefix}}", "s3://bucket/eu/p/d/j-1/j-1-1/checkpoint"),
        ("{{.perRetryUniqueKey}}", "j-1-2"),
        # As propeller matches them: any case, spaces inside the braces, '$' for '.'.
        ("{{ .OutputPrefix }}", PREFIX),
        ("{{$input}}", f"{PREFIX}/inputs.pb"),
        # Several in one argument, in one pass.
        ("--paths={{.outputPrefix}}:{{.input}}:{{.outputPrefix}}",
         f"--paths={PREFIX}:{PREFIX}/inputs.pb:{PREFIX}"),
        # None, or ones the agent does not know: unchanged.
        ("task-module", "task-module"),
        ("{{.Inputs.x}}", "{{.Inputs.x}}"),
        ("{{.input", "{{.input"),
    ],
)
def test_render_command_replaces_each_placeholder(argument: str, rendered: str) -> None:
    assert render_command(["prog", argument], WHERE) == ("prog", rendered)


def test_a_rendered_value_is_not_rendered_again() -> None:
    tricky = TaskLocations("/store/{{.input}}", "a-1")

    assert render_command(["{{.outputPrefix}}"], tricky) == ("/store/{{.input}}",)


def test_without_a_previous_checkpoint_the_placeholder_becomes_empty() -> None:
    # pyflyte-execute reads "" as "no previous checkpoint" (normalize_inputs).
    first = TaskLocations(PREFIX, "j-1-1")

    assert render_command(["--prev-checkpoint", "{{.prevCheckpointPrefix}}"], first) == (
        "--prev-checkpoint", "",
    )


def test_a_pyflyte_execute_command_is_rendered_whole() -> None:
    command = [
        "pyflyte-execute", "--inputs", "{{.input}}", "--output-prefix", "{{.outputPrefix}}",
        "--raw-output-data-prefix", "{{.rawOutputDataPrefix}}",
        "--checkpoint-path", "{{.checkpointOutputPrefix}}",
        "--prev-checkpoint", "{{.prevCheckpointPrefix}}",
        "--resolver", "flytekit.core.python_auto_container.default_task_resolver", "--",
        "task-module", "examples.x", "task-name", "train",
    ]

    assert render_command(command, TaskLocations("/srv/store/p/d/j/a", "a")) == (
        "pyflyte-execute", "--inputs", "/srv/store/p/d/j/a/inputs.pb",
        "--output-prefix", "/srv/store/p/d/j/a",
        "--raw-output-data-prefix", "/srv/store/p/d/j/a/raw",
        "--checkpoint-path", "/srv/store/p/d/j/a/checkpoint", "--prev-checkpoint", "",
        "--resolver", "flytekit.core.python_auto_container.default_task_resolver", "--",
        "task-module", "examples.x", "task-name", "train",
    )


@pytest.mark.parametrize(
    ("command", "inputs", "staged"),
    [
        (["pyflyte-execute", "--inputs", "{{.input}}"], b"", True),
        (["python", "train.py"], b"\n\x01x", True),
        (["python", "train.py"], b"", False),
    ],
)
def test_needs_staging(command: list[str], inputs: bytes, staged: bool) -> None:
    assert needs_staging(command, inputs) is staged


@pytest.mark.parametrize(
    ("base", "joined"),
    [
        ("s3://bucket/fleet/eu", "s3://bucket/fleet/eu/p/d"),
        ("s3://bucket/fleet/eu/", "s3://bucket/fleet/eu/p/d"),
        ("s3://bucket", "s3://bucket/p/d"),
        ("file:///srv/fleet-store", "file:///srv/fleet-store/p/d"),
        ("file:///", "file:///p/d"),
        ("/srv/fleet-store//", "/srv/fleet-store/p/d"),
        ("/", "/p/d"),
    ],
)
def test_join_url(base: str, joined: str) -> None:
    assert join_url(base, "p", "d") == joined


def test_attempt_prefix_is_flyte_style() -> None:
    assert attempt_prefix("s3://b/eu/", "flytesnacks", "development", "j-1", "j-1-1") == (
        "s3://b/eu/flytesnacks/development/j-1/j-1-1"
    )


@pytest.mark.parametrize("project", ["", "..", "a/b", "../../etc"])
def test_attempt_prefix_refuses_parts_that_are_not_folder_names(project: str) -> None:
    with pytest.raises(ValueError, match="cannot name a folder in the store"):
        attempt_prefix("/srv/store", project, "development", "j-1", "j-1-1")


@pytest.mark.parametrize(
    ("text", "valid", "local"),
    [
        ("/srv/fleet-store", True, "/srv/fleet-store"),
        ("file:///srv/fleet-store", True, "/srv/fleet-store"),
        ("s3://bucket/fleet/eu", True, None),
        ("gs://bucket", True, None),
        ("relative/store", False, None),
        ("~/store", False, None),
        ("s3://", False, None),
        ("", False, None),
    ],
)
def test_store_prefix_forms(text: str, valid: bool, local: str | None) -> None:
    assert is_store_prefix(text) is valid
    assert local_path(text) == local


FLYTE_COMMAND = ["pyflyte-execute", "--inputs", "{{.input}}"]


def test_a_flyte_task_runs_as_an_execution_named_after_its_job_and_fails_on_error() -> None:
    env = task_environment(
        {"FLYTE_FAIL_ON_ERROR": "false", "GREETING": "hi"}, FLYTE_COMMAND, prefix=PREFIX,
        project="flytesnacks", domain="development", job_id="j-1", name="examples.x.train",
    )

    assert env == {
        "GREETING": "hi",
        "FLYTE_FAIL_ON_ERROR": "true",
        "FLYTE_INTERNAL_EXECUTION_PROJECT": "flytesnacks",
        "FLYTE_INTERNAL_EXECUTION_DOMAIN": "development",
        "FLYTE_INTERNAL_EXECUTION_ID": "j-1",
        "FLYTE_INTERNAL_TASK_PROJECT": "flytesnacks",
        "FLYTE_INTERNAL_TASK_DOMAIN": "development",
        "FLYTE_INTERNAL_TASK_NAME": "examples.x.train",
        "FLEET_ATTEMPT_PREFIX": PREFIX,
    }


def test_the_spec_s_own_flyte_identity_wins_in_the_long_or_the_short_form() -> None:
    spec_env = {"FLYTE_INTERNAL_EXECUTION_ID": "f8a3b", "_F_PRJ": "from-flyte"}

    env = task_environment(spec_env, FLYTE_COMMAND, prefix=PREFIX, project="p",
                           domain="d", job_id="j-1", name="")

    assert env["FLYTE_INTERNAL_EXECUTION_ID"] == "f8a3b"
    assert env["_F_PRJ"] == "from-flyte"
    assert "FLYTE_INTERNAL_EXECUTION_PROJECT" not in env
    assert env["FLYTE_INTERNAL_TASK_NAME"] == "j-1"   # no name: the job's id


def test_a_plain_command_with_inputs_gets_only_its_prefix() -> None:
    env = task_environment({}, ["python", "train.py"], prefix=PREFIX, project="p",
                           domain="d", job_id="j", name="n")

    assert env == {"FLEET_ATTEMPT_PREFIX": PREFIX}


@pytest.mark.parametrize(
    ("origin", "reason"),
    [(ErrorOrigin.USER, "UserError"), (ErrorOrigin.SYSTEM, "SystemError"),
     (ErrorOrigin.UNKNOWN, "Error")],
)
@pytest.mark.parametrize("exit_code", [1, 0])
def test_an_error_document_decides_even_after_exit_code_zero(
    origin: ErrorOrigin, reason: str, exit_code: int
) -> None:
    files = TaskFiles(error=TaskError(origin, "  Trace: ...\nValueError: bad input\n"))

    assert task_result(exit_code, files) == TaskResult(reason, "Trace: ...\nValueError: bad input")


@pytest.mark.parametrize(
    ("exit_code", "files", "reason"),
    [
        (0, TaskFiles(outputs_size=120), ""),
        (0, TaskFiles(), ""),                                   # no outputs.pb (no outputs)
        (3, TaskFiles(), ""),                                   # the exit code decides
        (0, TaskFiles(outputs_size=MAX_OUTPUTS_BYTES), ""),
        (0, TaskFiles(outputs_size=MAX_OUTPUTS_BYTES + 1), "OutputsTooLarge"),
        (0, TaskFiles(outputs_size=10, outputs_valid=False), "InvalidOutputs"),
    ],
)
def test_outputs_are_checked_after_a_clean_exit(
    exit_code: int, files: TaskFiles, reason: str
) -> None:
    assert task_result(exit_code, files).reason == reason


def test_too_large_outputs_say_to_return_files() -> None:
    result = task_result(0, TaskFiles(outputs_size=5 * 1024 * 1024))

    assert "5242880 bytes" in result.message
    assert "return large data as files" in result.message


def test_long_messages_keep_their_end() -> None:
    message = "Traceback\n" + "  frame\n" * 2000 + "ValueError: bad input"

    trimmed = trim_message(message, limit=100)

    assert len(trimmed) == 100
    assert trimmed.startswith("…")
    assert trimmed.endswith("ValueError: bad input")
    assert trim_message("short") == "short"


def staged_facts(result: TaskResult | None, exit_code: int = 0) -> FolderFacts:
    return FolderFacts(
        gpus=0, pool="cpu", spawned=True, runner_alive=False, job_started=True,
        outcome=Outcome(OutcomeKind.EXITED, exit_code=exit_code), cancel_requested=False,
        last_log_line="last words", staged=True, task_result=result,
    )


def test_a_staged_attempt_stays_running_until_its_result_is_read() -> None:
    assert derive_status(staged_facts(None)) == Verdict(Phase.RUNNING)


def test_a_failure_read_from_the_store_wins_over_the_exit_code() -> None:
    verdict = derive_status(staged_facts(TaskResult("UserError", "ValueError: bad"), exit_code=1))

    assert verdict == Verdict(Phase.FAILED, "UserError", "ValueError: bad", 1)


@pytest.mark.parametrize(
    ("exit_code", "verdict"),
    [(0, Verdict(Phase.SUCCEEDED, exit_code=0)),
     (2, Verdict(Phase.FAILED, "Error", "exit code 2: last words", 2))],
)
def test_nothing_read_from_the_store_leaves_the_exit_code_to_decide(
    exit_code: int, verdict: Verdict
) -> None:
    assert derive_status(staged_facts(TaskResult(), exit_code)) == verdict


def test_a_cancelled_staged_attempt_needs_no_result() -> None:
    facts = FolderFacts(
        gpus=0, pool="cpu", spawned=True, runner_alive=False, job_started=True,
        outcome=Outcome(OutcomeKind.CANCELLED, exit_code=143, message="user"),
        cancel_requested=True, staged=True,
    )

    assert derive_status(facts).phase is Phase.CANCELLED
