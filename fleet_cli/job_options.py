"""The options that say what a job is and where it may run.

`fleet jobs submit` and `fleet policy explain` (a what-if of a submit) take the same
options with the same names, limits and defaults, so that a submit line can be explained
by changing only its verb.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated

import typer
from fleet.v1 import types_pb2

from fleet_cli import parse
from fleet_cli.context import parsed_pairs

UINT32_MAX = 2**32 - 1

DEFAULT_DOMAIN = "development"

ProjectOption = Annotated[str, typer.Option(help="Project the job belongs to.")]
DomainOption = Annotated[str, typer.Option(help="Domain within the project.")]
NameOption = Annotated[
    str, typer.Option(metavar="TASK", help="A name for people, e.g. the task's.")
]
GpusOption = Annotated[int, typer.Option(min=0, max=UINT32_MAX, help="GPUs needed.")]
GpuModelOption = Annotated[
    str, typer.Option(metavar="MODEL", help="GPU model, e.g. H100 (any if unset).")
]
MinGpuMemoryOption = Annotated[
    int, typer.Option(min=0, max=UINT32_MAX, metavar="GB", help="Memory per GPU, GB.")
]
LabelOption = Annotated[
    list[str] | None, typer.Option(metavar="KEY=VALUE", help="Task label (repeatable).")
]
OriginRegionOption = Annotated[
    str,
    typer.Option(
        "--origin-region", "--origin", metavar="REGION", help="Where the job's data lives."
    ),
]
AllowSpotOption = Annotated[
    bool | None,
    typer.Option(
        "--allow-spot/--no-spot",
        help="Allow or forbid spot capacity (default: the routing policy decides).",
        show_default=False,
    ),
]
PinOption = Annotated[str, typer.Option(metavar="DATAPLANE", help="Run only there.")]


def job_spec(
    *,
    project: str,
    domain: str,
    name: str,
    labels: Sequence[str],
    gpus: int,
    gpu_model: str,
    min_gpu_memory: int,
    origin_region: str,
    allow_spot: bool | None,
    pin: str,
) -> types_pb2.JobSpec:
    """The part of a JobSpec that routing looks at; raises a usage error on a bad --label."""
    return types_pb2.JobSpec(
        project=project,
        domain=domain,
        name=name,
        labels=parsed_pairs(labels, parse.parse_key_value, "--label"),
        resources=types_pb2.Resources(
            gpus=gpus, gpu_model=gpu_model, min_gpu_memory_gb=min_gpu_memory
        ),
        routing=types_pb2.RoutingHints(
            origin_region=origin_region, allow_spot=allow_spot, pin_dataplane=pin
        ),
    )
