"""The pure translations: GPU names, placeholders, quantities, hints, client keys, phases."""

from __future__ import annotations

import pytest
from fleet.v1 import types_pb2 as P
from flyteidl.core.execution_pb2 import TaskExecution
from flytekit.extras import accelerators

from flyte_plugin.mapping import (
    MAX_CLIENT_KEY,
    GpuModel,
    client_key,
    cpu_millis,
    flyte_phase,
    gpu_count,
    gpu_model_for_device,
    hints_from_custom,
    memory_bytes,
    retemplate_command,
)


@pytest.mark.parametrize(
    ("device", "expected"),
    [
        (accelerators.H100, GpuModel("H100")),
        (accelerators.H200, GpuModel("H200")),
        (accelerators.A100, GpuModel("A100")),
        (accelerators.A100_80GB, GpuModel("A100", 80)),
        (accelerators.L4, GpuModel("L4")),
        (accelerators.L40S, GpuModel("L40S")),
        (accelerators.A10G, GpuModel("A10G")),
        (accelerators.T4, GpuModel("T4")),
        (accelerators.V100, GpuModel("V100")),
    ],
    ids=lambda v: getattr(v, "device", None) or getattr(v, "_device", None) or str(v),
)
def test_flytekit_accelerators_map_to_the_fleet_gpu_models(
    device: accelerators.BaseAccelerator, expected: GpuModel
) -> None:
    assert gpu_model_for_device(device.to_flyte_idl().device) == expected


@pytest.mark.parametrize(
    ("device", "model"),
    [
        ("nvidia-b200", "B200"),
        ("nvidia-tesla-x9", "X9"),
        ("amd-mi300x", "MI300X"),
        ("NVIDIA-GB200", "GB200"),
        ("tpu-v5p-slice", "TPU-V5P-SLICE"),
        ("", ""),
    ],
)
def test_unknown_devices_pass_through_upper_cased_without_the_vendor(
    device: str, model: str
) -> None:
    assert gpu_model_for_device(device) == GpuModel(model)


RENDERED = [
    "pyflyte-execute",
    "--inputs", "/tmp/flyte-x/raw/abc/inputs.pb",
    "--output-prefix", "/tmp/flyte-x/raw/abc",
    "--raw-output-data-prefix", "/tmp/flyte-x/raw/abc/raw_output",
    "--checkpoint-path", "/tmp/flyte-x/raw/abc/checkpoint_output",
    "--prev-checkpoint", "/tmp/flyte-x/raw/abc/prev_checkpoint",
    "--resolver", "flytekit.core.python_auto_container.default_task_resolver",
    "--", "task-module", "wf", "task-name", "train",
]  # fmt: skip
TEMPLATED = [
    "pyflyte-execute",
    "--inputs", "{{.input}}",
    "--output-prefix", "{{.outputPrefix}}",
    "--raw-output-data-prefix", "{{.rawOutputDataPrefix}}",
    "--checkpoint-path", "{{.checkpointOutputPrefix}}",
    "--prev-checkpoint", "{{.prevCheckpointPrefix}}",
    "--resolver", "flytekit.core.python_auto_container.default_task_resolver",
    "--", "task-module", "wf", "task-name", "train",
]  # fmt: skip


def test_a_rendered_command_gets_its_placeholders_back() -> None:
    assert retemplate_command(RENDERED) == TEMPLATED


def test_an_unrendered_command_is_unchanged() -> None:
    assert retemplate_command(TEMPLATED) == TEMPLATED


def test_flags_with_equals_and_fast_execute_wrappers_are_retemplated() -> None:
    command = [
        "pyflyte-fast-execute", "--additional-distribution", "s3://bucket/code.tar.gz",
        "--dest-dir", ".", "--", "pyflyte-execute", "--inputs=s3://x/inputs.pb",
        "--output-prefix", "s3://x", "--", "task-module", "wf", "task-name", "train",
    ]  # fmt: skip
    assert retemplate_command(command) == [
        "pyflyte-fast-execute", "--additional-distribution", "s3://bucket/code.tar.gz",
        "--dest-dir", ".", "--", "pyflyte-execute", "--inputs={{.input}}",
        "--output-prefix", "{{.outputPrefix}}", "--", "task-module", "wf", "task-name", "train",
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("value", "millis"), [("500m", 500), ("2", 2000), ("0.25", 250), ("1.5", 1500)]
)
def test_cpu_quantities(value: str, millis: int) -> None:
    assert cpu_millis(value) == millis


@pytest.mark.parametrize(
    ("value", "size"),
    [
        ("1Gi", 2**30),
        ("512Mi", 512 * 2**20),
        ("8G", 8 * 10**9),
        ("1000", 1000),
        ("1.5Gi", 3 * 2**29),
    ],
)
def test_memory_quantities(value: str, size: int) -> None:
    assert memory_bytes(value) == size


def test_gpu_counts_are_whole() -> None:
    assert gpu_count("2") == 2
    with pytest.raises(ValueError, match="whole number of GPUs"):
        gpu_count("0.5")
    with pytest.raises(ValueError, match="not a resource quantity"):
        memory_bytes("lots")


def test_hints_that_crossed_grpc_as_floats_become_ints() -> None:
    # A protobuf Struct carries every number as a double.
    hints = hints_from_custom(
        {"labels": {"team": "nlp", "tier": 3.0}, "priority": 7.0, "allow_spot": False,
         "origin_region": "europe-west4", "pin_dataplane": None}
    )  # fmt: skip
    assert hints.priority == 7 and isinstance(hints.priority, int)
    assert hints.labels == {"team": "nlp", "tier": "3"}
    assert hints.allow_spot is False
    assert hints.origin_region == "europe-west4" and hints.pin_dataplane == ""


def test_hints_reject_what_is_not_a_whole_priority() -> None:
    with pytest.raises(ValueError, match=r"priority: must be a whole number \(got 2.5\)"):
        hints_from_custom({"priority": 2.5})
    with pytest.raises(ValueError, match="allow_spot"):
        hints_from_custom({"allow_spot": "yes"})


def test_missing_hints_mean_no_preference() -> None:
    hints = hints_from_custom(None)
    assert (hints.labels, hints.priority, hints.allow_spot) == ({}, 0, None)


def test_client_key_names_the_flyte_attempt() -> None:
    key = client_key("ml", "production", "f3a9", "n2", 1)
    assert key == "flyte/ml/production/f3a9/n2/1"
    assert key == client_key("ml", "production", "f3a9", "n2", 1)
    assert key != client_key("ml", "production", "f3a9", "n2", 2)
    assert key != client_key("ml", "production", "f3a9", "n3", 1)


def test_very_long_client_keys_are_hashed_but_stay_distinct() -> None:
    long_node = "dn0-" * 100
    first = client_key("ml", "production", "f3a9", long_node, 0)
    second = client_key("ml", "production", "f3a9", long_node, 1)
    assert len(first) <= MAX_CLIENT_KEY and len(second) <= MAX_CLIENT_KEY
    assert first != second
    assert first == client_key("ml", "production", "f3a9", long_node, 0)


def job(phase: int, *attempts: tuple[int, str]) -> P.Job:
    return P.Job(
        id="j1",
        phase=phase,
        message="why",
        attempts=[P.Attempt(id=f"a{i}", phase=p, reason=r) for i, (p, r) in enumerate(attempts)],
    )


@pytest.mark.parametrize(
    ("fleet_job", "expected"),
    [
        (job(P.JOB_PHASE_QUEUED), TaskExecution.WAITING_FOR_RESOURCES),
        (job(P.JOB_PHASE_SCHEDULED, (P.ATTEMPT_PHASE_PENDING, "")), TaskExecution.QUEUED),
        (job(P.JOB_PHASE_RUNNING, (P.ATTEMPT_PHASE_RUNNING, "")), TaskExecution.RUNNING),
        (job(P.JOB_PHASE_SUCCEEDED, (P.ATTEMPT_PHASE_SUCCEEDED, "")), TaskExecution.SUCCEEDED),
        (
            job(P.JOB_PHASE_CANCELLED, (P.ATTEMPT_PHASE_CANCELLED, "Cancelled")),
            TaskExecution.ABORTED,
        ),
        (job(P.JOB_PHASE_CANCELLED), TaskExecution.ABORTED),
        (job(P.JOB_PHASE_FAILED, (P.ATTEMPT_PHASE_FAILED, "UserError")), TaskExecution.FAILED),
        (job(P.JOB_PHASE_FAILED, (P.ATTEMPT_PHASE_FAILED, "Error")), TaskExecution.FAILED),
        (job(P.JOB_PHASE_FAILED, (P.ATTEMPT_PHASE_FAILED, "OOMKilled")), TaskExecution.FAILED),
        (
            job(P.JOB_PHASE_FAILED, (P.ATTEMPT_PHASE_FAILED, "DeadlineExceeded")),
            TaskExecution.FAILED,
        ),
        (job(P.JOB_PHASE_FAILED, (P.ATTEMPT_PHASE_FAILED, "InvalidPool")), TaskExecution.FAILED),
        (job(P.JOB_PHASE_FAILED, (P.ATTEMPT_PHASE_LOST, "")), TaskExecution.RETRYABLE_FAILED),
        (
            job(P.JOB_PHASE_FAILED, (P.ATTEMPT_PHASE_LOST, "DataplaneLost")),
            TaskExecution.RETRYABLE_FAILED,
        ),
        (
            job(P.JOB_PHASE_FAILED, (P.ATTEMPT_PHASE_LOST, "AgentLostAttempt")),
            TaskExecution.RETRYABLE_FAILED,
        ),
        (
            job(P.JOB_PHASE_FAILED, (P.ATTEMPT_PHASE_LOST, "RunnerVanished")),
            TaskExecution.RETRYABLE_FAILED,
        ),
        (
            job(P.JOB_PHASE_FAILED, (P.ATTEMPT_PHASE_FAILED, "SystemError")),
            TaskExecution.RETRYABLE_FAILED,
        ),
        # Only the last attempt counts: a lost one before a user error is still a user error.
        (
            job(
                P.JOB_PHASE_FAILED,
                (P.ATTEMPT_PHASE_LOST, "DataplaneLost"),
                (P.ATTEMPT_PHASE_FAILED, "UserError"),
            ),
            TaskExecution.FAILED,
        ),
        (job(P.JOB_PHASE_FAILED), TaskExecution.FAILED),
    ],
    ids=lambda v: TaskExecution.Phase.Name(v) if isinstance(v, int) else "",
)
def test_job_phase_to_flyte_phase(fleet_job: P.Job, expected: int) -> None:
    assert TaskExecution.Phase.Name(flyte_phase(fleet_job)) == TaskExecution.Phase.Name(expected)


def test_an_unknown_job_phase_is_an_error_not_a_guess() -> None:
    with pytest.raises(ValueError, match="unknown phase"):
        flyte_phase(job(P.JOB_PHASE_UNSPECIFIED))
