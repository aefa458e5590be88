"""Translations between the agent's own values and the wire contract (fleet.v1)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import UTC, datetime

from fleet.v1 import agent_pb2, types_pb2
from google.protobuf import json_format
from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp

from dataplane_agent.domain.attempt import AttemptStatus, Phase
from dataplane_agent.domain.capacity import PoolReport
from dataplane_agent.launcher.base import LaunchRequest
from dataplane_agent.pool_file import PoolFile

PHASES = {
    Phase.STARTING: types_pb2.ATTEMPT_PHASE_STARTING,
    Phase.RUNNING: types_pb2.ATTEMPT_PHASE_RUNNING,
    Phase.SUCCEEDED: types_pb2.ATTEMPT_PHASE_SUCCEEDED,
    Phase.FAILED: types_pb2.ATTEMPT_PHASE_FAILED,
    Phase.CANCELLED: types_pb2.ATTEMPT_PHASE_CANCELLED,
    Phase.PREEMPTED: types_pb2.ATTEMPT_PHASE_PREEMPTED,
    Phase.LOST: types_pb2.ATTEMPT_PHASE_LOST,
}

PURCHASE_TYPES = {
    "reserved": types_pb2.PURCHASE_TYPE_RESERVED,
    "on_demand": types_pb2.PURCHASE_TYPE_ON_DEMAND,
    "spot": types_pb2.PURCHASE_TYPE_SPOT,
}


def launch_request(launch: agent_pb2.Launch) -> LaunchRequest:
    spec = launch.spec
    timeout = seconds(spec.timeout) if spec.HasField("timeout") else 0.0
    recorded = types_pb2.JobSpec()
    recorded.CopyFrom(spec)
    recorded.ClearField("inputs")   # staged as inputs.pb, not kept twice
    return LaunchRequest(
        attempt_id=launch.attempt_id, job_id=launch.job_id, epoch=launch.epoch,
        pool=launch.pool, gpus=spec.resources.gpus, command=tuple(spec.command),
        env=dict(spec.env), timeout_s=timeout if timeout > 0 else None,
        spec=json_format.MessageToDict(recorded), project=spec.project, domain=spec.domain,
        name=spec.name, inputs=spec.inputs,
    )


def attempt_status(status: AttemptStatus) -> agent_pb2.AttemptStatus:
    message = agent_pb2.AttemptStatus(
        attempt_id=status.attempt_id, job_id=status.job_id, epoch=status.epoch,
        pool=status.pool, phase=PHASES[status.phase], reason=status.reason,
        message=status.message, exit_code=status.exit_code, outputs=status.outputs,
    )
    if status.started_at is not None:
        message.started_at.CopyFrom(timestamp(status.started_at))
    if status.finished_at is not None:
        message.finished_at.CopyFrom(timestamp(status.finished_at))
    return message


def pools(pool_file: PoolFile, reports: Sequence[PoolReport]) -> list[types_pb2.Pool]:
    dataplane = pool_file.dataplane
    return [
        types_pb2.Pool(
            name=pool.name, region=pool.region or dataplane.region, cloud=dataplane.cloud,
            purchase_type=PURCHASE_TYPES[pool.purchase_type], gpu_model=pool.gpu_model,
            gpu_memory_gb=pool.gpu_memory_gb, gpu_total=pool.gpu_total,
            gpu_free=pool.gpu_free, interconnect=pool.interconnect,
            price_per_gpu_hour=pool.price_per_gpu_hour, labels=dict(pool.labels),
            gpu_node_size=pool.gpu_node_size, gpu_node_free=pool.gpu_node_free,
        )
        for pool in reports
    ]


def hello(pool_file: PoolFile, credential: str, agent_version: str) -> agent_pb2.AgentMessage:
    dataplane = pool_file.dataplane
    return agent_pb2.AgentMessage(hello=agent_pb2.Hello(
        dataplane=dataplane.name, region=dataplane.region, cloud=dataplane.cloud,
        credential=credential, agent_version=agent_version, labels=dataplane.labels,
        accepts_batches=True,
    ))


def heartbeat(
    seq: int, pool_list: Sequence[types_pb2.Pool], statuses: Sequence[AttemptStatus]
) -> agent_pb2.AgentMessage:
    beat = agent_pb2.Heartbeat(
        seq=seq, pools=pool_list, attempts=[attempt_status(s) for s in statuses]
    )
    beat.sent_at.CopyFrom(timestamp(datetime.now(UTC)))
    return agent_pb2.AgentMessage(heartbeat=beat)


def attempt_update(status: AttemptStatus) -> agent_pb2.AgentMessage:
    return agent_pb2.AgentMessage(
        attempt_update=agent_pb2.AttemptUpdate(status=attempt_status(status))
    )


# Attempt changes carried by one AttemptUpdate at most (the control plane's limit too).
MAX_UPDATE_STATUSES = 1000


def coalesce_updates(
    message: agent_pb2.AgentMessage, outbox: asyncio.Queue[agent_pb2.AgentMessage]
) -> agent_pb2.AgentMessage | None:
    """Fold the attempt updates already waiting behind `message` (an update) into it, in
    order: an agent that fell behind (many attempts ending at once) sends one message
    instead of hundreds. Returns the first waiting message that is not an update (taken
    from the outbox: the caller sends it next), or None."""
    if not message.HasField("attempt_update"):
        return None
    update = message.attempt_update
    while len(update.more) + 1 < MAX_UPDATE_STATUSES and not outbox.empty():
        waiting = outbox.get_nowait()
        if not waiting.HasField("attempt_update"):
            return waiting
        update.more.append(waiting.attempt_update.status)
        update.more.extend(waiting.attempt_update.more)
    return None


def timestamp(at: datetime) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(at)
    return stamp


def seconds(duration: Duration) -> float:
    return duration.seconds + duration.nanos / 1e9


def seconds_since_epoch(stamp: Timestamp) -> float:
    return stamp.seconds + stamp.nanos / 1e9
