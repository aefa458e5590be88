"""Fleet tasks and workflows the tests run; the agents' job processes import this module."""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

from flytekit import Resources, task, workflow
from flytekit.extras.accelerators import H100, L4
from flytekit.types.file import FlyteFile

from flyte_plugin import Fleet

GPU = Resources(gpu="1")


@task(task_config=Fleet(labels={"team": "tests"}, priority=2), requests=GPU, accelerator=H100)
def add_one(x: int) -> int:
    return x + 1


@task(task_config=Fleet(labels={"team": "tests"}), requests=Resources(cpu="100m"))
def double(x: int) -> int:
    return 2 * x


@task(task_config=Fleet(), requests=GPU, accelerator=H100)
def where_am_i() -> str:
    return os.environ.get("FLEET_DATAPLANE", "") + "/" + os.environ.get("FLEET_POOL", "")


@workflow
def add_then_double(x: int) -> int:
    return double(x=add_one(x=x))


@task(task_config=Fleet(), requests=GPU, accelerator=H100)
def fail_with(text: str) -> int:
    if text:
        raise ValueError(f"the model diverged: {text}")
    return 0


@workflow
def failing(text: str) -> int:
    return fail_with(text=text)


@task(task_config=Fleet(), requests=GPU, accelerator=H100)
def sleep_long(pid_file: str) -> int:
    Path(pid_file).write_text(str(os.getpid()))
    time.sleep(300)
    return 0


@workflow
def sleeping(pid_file: str) -> int:
    return sleep_long(pid_file=pid_file)


@task(task_config=Fleet(), requests=Resources(gpu="1"), accelerator=L4)
def needs_an_l4() -> int:
    return 0


@workflow
def on_an_l4() -> int:
    return needs_an_l4()


def residency_payload(seed: str) -> str:
    """The file's content: derived from the seed inside the task, so only the seed travels."""
    return "payload-" + hashlib.sha256(f"eu-only:{seed}".encode()).hexdigest()


@task(task_config=Fleet(pin_dataplane="eu"), requests=GPU, accelerator=H100)
def write_eu_file(seed: str) -> FlyteFile:
    # Written straight into the dataplane's store (the task's raw output prefix).
    data = FlyteFile.new_remote_file("eu-data.txt")
    with data.open("w") as out:
        out.write(residency_payload(seed) * 64)
    return data


@workflow
def eu_file(seed: str) -> FlyteFile:
    return write_eu_file(seed=seed)
