"""From a real flytekit task template to the JobSpec the connector submits (no servers)."""

from __future__ import annotations

import copy
from datetime import timedelta

import pytest
from fleet.v1 import types_pb2 as P
from flyteidl.core import literals_pb2
from flytekit import Resources, task
from flytekit.extend.backend.utils import render_task_template
from flytekit.extras.accelerators import A100_80GB, L4
from flytekit.models.task import TaskExecutionMetadata

from flyte_plugin import Fleet
from flyte_plugin.job_spec import build_submission
from tests.flyte import workflows
from tests.flyte.flyte_models import (
    attempt_metadata,
    empty_metadata,
    literals,
    over_grpc,
    template_of,
)

PLACEHOLDERS = [
    "--inputs", "{{.input}}",
    "--output-prefix", "{{.outputPrefix}}",
    "--raw-output-data-prefix", "{{.rawOutputDataPrefix}}",
    "--checkpoint-path", "{{.checkpointOutputPrefix}}",
    "--prev-checkpoint", "{{.prevCheckpointPrefix}}",
]  # fmt: skip


@task(
    task_config=Fleet(
        labels={"team": "nlp"}, origin_region="europe-west4", priority=5,
        allow_spot=False, pin_dataplane="gcp-europe-west4-spot",
    ),
    requests=Resources(gpu="2", cpu="4", mem="16Gi"),
    limits=Resources(gpu="2", cpu="8", mem="32Gi"),
    accelerator=L4,
    timeout=timedelta(minutes=10),
    environment={"WANDB_MODE": "offline"},
)  # fmt: skip
def finetune(steps: int, lr: float) -> float:
    return lr * steps


@task(task_config=Fleet(), limits=Resources(gpu="1"), accelerator=A100_80GB)
def limits_only() -> None:
    return None


def test_a_flyte_attempt_becomes_a_job_spec() -> None:
    metadata = attempt_metadata(retry=1, env={"FLYTE_INTERNAL_EXECUTION_ID": "f3a9c1"})
    inputs = literals(finetune, steps=100, lr=0.5)
    submission = build_submission(template_of(finetune), inputs, metadata, env={})
    spec = submission.spec

    assert (spec.project, spec.domain) == ("ml", "production")
    assert spec.name == "tests.flyte.test_job_spec.finetune"
    assert submission.client_key == "flyte/ml/production/f3a9c1/n0/1"
    assert spec.command[0] == "pyflyte-execute"
    assert spec.command[1:11] == PLACEHOLDERS
    assert spec.command[-4:] == [
        "task-module",
        "tests.flyte.test_job_spec",
        "task-name",
        "finetune",
    ]
    assert spec.image.startswith("cr.flyte.org/flyteorg/flytekit:")
    assert spec.env["WANDB_MODE"] == "offline"
    assert spec.env["FLYTE_INTERNAL_EXECUTION_ID"] == "f3a9c1"
    assert spec.resources == P.Resources(
        gpus=2, gpu_model="L4", cpu_millis=4000, memory_bytes=16 * 2**30
    )
    assert dict(spec.labels) == {"team": "nlp"}
    assert spec.routing == P.RoutingHints(
        origin_region="europe-west4", allow_spot=False, pin_dataplane="gcp-europe-west4-spot"
    )
    assert spec.priority == 5
    assert spec.HasField("retry_budget") and spec.retry_budget == 0
    assert spec.timeout.ToTimedelta() == timedelta(minutes=10)
    assert spec.service_account == ""   # propeller's "default": the dataplane's default
    sent = literals_pb2.LiteralMap.FromString(spec.inputs)
    assert sent.literals["steps"].scalar.primitive.integer == 100
    assert sent.literals["lr"].scalar.primitive.float_value == 0.5


def test_the_executions_service_account_becomes_the_pods() -> None:
    metadata = attempt_metadata()
    chosen = TaskExecutionMetadata(
        task_execution_id=metadata.task_execution_id, namespace=metadata.namespace,
        labels={}, annotations={}, k8s_service_account="trainer",
        environment_variables={}, identity=None,
    )
    spec = build_submission(template_of(finetune), None, chosen, env={}).spec
    assert spec.service_account == "trainer"


def test_a_rendered_local_template_gets_the_same_command_as_a_registered_one() -> None:
    template = template_of(workflows.add_one)
    rendered = render_task_template(copy.deepcopy(template), "/tmp/flyte-abc/raw/0f0f")
    assert "{{.input}}" not in rendered.container.args
    from_rendered = build_submission(rendered, None, None, env={}).spec
    from_template = build_submission(template, None, None, env={}).spec
    assert list(from_rendered.command) == list(from_template.command)
    assert "/tmp/flyte-abc" not in " ".join(from_rendered.command)


def test_hints_that_crossed_grpc_keep_their_types() -> None:
    template = over_grpc(template_of(finetune))
    assert isinstance(template.custom["priority"], float), "the Struct made it a float"
    spec = build_submission(template, None, attempt_metadata(), env={}).spec
    assert spec.priority == 5
    assert spec.routing.allow_spot is False
    assert spec.resources.gpu_model == "L4"


def test_gpus_from_limits_and_memory_from_the_accelerator_name() -> None:
    spec = build_submission(template_of(limits_only), None, None, env={}).spec
    assert spec.resources == P.Resources(gpus=1, gpu_model="A100", min_gpu_memory_gb=80)
    assert spec.inputs == b"", "a task without inputs sends none"
    assert not spec.HasField("timeout")
    assert not spec.routing.HasField("allow_spot"), "unset: the policy decides"


def test_a_local_run_uses_the_environment_or_the_defaults_and_a_fresh_key() -> None:
    template = template_of(workflows.add_one)
    first = build_submission(template, None, None, env={})
    second = build_submission(template, None, None, env={})
    assert (first.spec.project, first.spec.domain) == ("flytesnacks", "development")
    assert first.client_key != second.client_key, "each local run is a new job"
    named = build_submission(
        template, None, None, {"FLEET_PROJECT": "nlp", "FLEET_DOMAIN": "staging"}
    )
    assert (named.spec.project, named.spec.domain) == ("nlp", "staging")


def test_metadata_without_an_execution_counts_as_a_local_run() -> None:
    submission = build_submission(template_of(workflows.add_one), None, empty_metadata(), env={})
    assert submission.spec.project == "flytesnacks"
    assert submission.client_key.startswith("local/")


def test_a_bad_quantity_names_the_resource() -> None:
    template = template_of(workflows.add_one)
    template.container.resources.requests[0]._value = "half"
    with pytest.raises(ValueError, match="gpu: 'half' is not a resource quantity"):
        build_submission(template, None, None, env={})
