"""A small training pipeline whose tasks need different pools of the fleet.

    FLEET_ADDRESS=127.0.0.1:50051 pyflyte run examples/fleet_workflow.py training_pipeline

- prepare_data: CPU only, runs on any dataplane with a CPU pool.
- embed_in_eu: one L4 GPU, and only in the EU (pinned to the EU dataplane for now; a routing
  policy will express residency instead).
- train: one GPU of any model, anywhere.

Each task adds where it ran to a trail, so the printed result shows the routing.
"""

from __future__ import annotations

import math
import os
from typing import NamedTuple

from flytekit import Resources, task, workflow
from flytekit.extras.accelerators import L4

from flyte_plugin import Fleet

EU_DATAPLANE = "gcp-europe-west4-spot"


class Prepared(NamedTuple):
    samples: list[float]
    trail: str


class Embedded(NamedTuple):
    features: list[float]
    trail: str


def _where() -> str:
    # Set by the fleet's agent for every job it runs.
    return f"{os.environ.get('FLEET_DATAPLANE', '?')}/{os.environ.get('FLEET_POOL', '?')}"


@task(
    task_config=Fleet(labels={"team": "nlp", "stage": "prepare"}),
    requests=Resources(cpu="500m", mem="256Mi"),
)
def prepare_data(n: int) -> Prepared:
    samples = [math.sin(i / 3) for i in range(n)]
    return Prepared(samples, f"prepare_data@{_where()}")


@task(
    task_config=Fleet(
        labels={"team": "nlp", "stage": "embed", "data": "eu-resident"},
        origin_region="europe-west4",
        pin_dataplane=EU_DATAPLANE,
    ),
    requests=Resources(gpu="1"),
    accelerator=L4,
)
def embed_in_eu(samples: list[float], trail: str) -> Embedded:
    features = [round(x * x, 6) for x in samples]
    return Embedded(features, f"{trail} -> embed_in_eu@{_where()}")


@task(
    task_config=Fleet(labels={"team": "nlp", "stage": "train"}, allow_spot=True, priority=1),
    requests=Resources(gpu="1"),
)
def train(features: list[float], epochs: int, trail: str) -> str:
    weight = 0.0
    for _ in range(epochs):
        for x in features:
            weight += 0.1 * (x - weight)
    loss = sum((x - weight) ** 2 for x in features) / max(len(features), 1)
    return (
        f"trained on {len(features)} samples for {epochs} epochs: loss={loss:.4f} "
        f"[{trail} -> train@{_where()}]"
    )


@workflow
def training_pipeline(n: int = 8, epochs: int = 3) -> str:
    prepared = prepare_data(n=n)
    embedded = embed_in_eu(samples=prepared.samples, trail=prepared.trail)
    return train(features=embedded.features, epochs=epochs, trail=embedded.trail)
