"""A control plane in-process on 127.0.0.1 and a fake agent that speaks the real stream.

The fake agent sends exactly what the test tells it to (hello, heartbeats, updates) and
records every control message, so each contract rule can be driven step by step.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import grpc
from fleet.v1 import (
    admin_pb2,
    admin_pb2_grpc,
    agent_pb2,
    agent_pb2_grpc,
    jobs_pb2,
    jobs_pb2_grpc,
    types_pb2,
)

from control_plane import ControlPlaneSettings, RunningControlPlane, start
from control_plane.clock import ManualClock

TOKEN = "test-join-token"
P = types_pb2


@asynccontextmanager
async def control_plane(
    database_url: str, **overrides: Any
) -> AsyncIterator[tuple[RunningControlPlane, ManualClock]]:
    clock = ManualClock()
    fields: dict[str, Any] = {
        "listen": "127.0.0.1:0",
        "database_url": database_url,
        # Without API keys and join tokens (127.0.0.1); tests of access turn them on.
        "auth": False,
        "insecure": True,   # plaintext on 127.0.0.1; tests of TLS give tls_cert and tls_key
        "heartbeat_interval_s": 1.0,
        "stale_after_s": 15.0,
        "lost_after_s": 60.0,
        "schedule_interval_s": 0.05,
    }
    settings = ControlPlaneSettings(**(fields | overrides))
    running = await start(settings, clock=clock)
    try:
        yield running, clock
    finally:
        await running.stop(grace_s=0.1)


def gpu_pool(
    name: str,
    *,
    model: str = "H100",
    total: int = 8,
    free: int | None = None,
    tier: int = P.PURCHASE_TYPE_RESERVED,
    mem: int = 80,
    price: float = 2.0,
) -> types_pb2.Pool:
    return P.Pool(
        name=name,
        purchase_type=tier,
        gpu_model=model,
        gpu_memory_gb=mem,  # type: ignore[arg-type]
        gpu_total=total,
        gpu_free=total if free is None else free,
        price_per_gpu_hour=price,
    )


def job_spec(
    project: str = "vision", gpus: int = 1, model: str = "H100", **fields: Any
) -> types_pb2.JobSpec:
    return P.JobSpec(
        project=project,
        command=["train.py"],
        resources=P.Resources(gpus=gpus, gpu_model=model if gpus else ""),
        **fields,
    )


def status(
    attempt_id: str, phase: int, epoch: int | None = None, **fields: Any
) -> agent_pb2.AttemptStatus:
    job_id, _, ep = attempt_id.rpartition("-")
    return agent_pb2.AttemptStatus(
        attempt_id=attempt_id,
        job_id=job_id,
        epoch=int(ep) if epoch is None else epoch,
        phase=phase,
        **fields,
    )  # type: ignore[arg-type]


class FakeAgent:
    def __init__(
        self,
        port: int,
        name: str,
        pools: Sequence[types_pb2.Pool],
        region: str = "us-east-1",
        token: str = TOKEN,
        admin_key: str = "",
    ) -> None:
        self.name, self.pools, self.region, self.token = name, list(pools), region, token
        self.cloud = "test"
        # For registered(): a control plane with auth lists dataplanes to keys only.
        self.metadata = (("authorization", f"Bearer {admin_key}"),) if admin_key else ()
        self.channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
        self.outbox: asyncio.Queue[agent_pb2.AgentMessage | None] = asyncio.Queue()
        self.inbox: asyncio.Queue[agent_pb2.ControlMessage] = asyncio.Queue()
        self.held: dict[str, agent_pb2.AttemptStatus] = {}
        self.call: Any = None
        self._reader: asyncio.Task[None] | None = None
        self._seq = 0

    async def connect(self) -> agent_pb2.Welcome:
        stub = agent_pb2_grpc.AgentServiceStub(self.channel)
        self.call = stub.Connect(self._messages())
        await self.outbox.put(
            agent_pb2.AgentMessage(
                hello=agent_pb2.Hello(
                    dataplane=self.name,
                    region=self.region,
                    cloud=self.cloud,
                    credential=self.token,
                    agent_version="fake",
                )
            )
        )
        first = await asyncio.wait_for(self.call.read(), 5)
        assert first.WhichOneof("body") == "welcome", first
        self._reader = asyncio.create_task(self._read())
        return first.welcome  # type: ignore[no-any-return]

    async def _messages(self) -> AsyncIterator[agent_pb2.AgentMessage]:
        while (message := await self.outbox.get()) is not None:
            yield message

    async def _read(self) -> None:
        try:
            while (message := await self.call.read()) is not grpc.aio.EOF:
                await self.inbox.put(message)
        except grpc.aio.AioRpcError:
            pass  # the stream ended: the test closed it or stopped the server

    async def join(self) -> None:
        """Connect, send a first heartbeat and wait until the control plane shows the pools."""
        await self.connect()
        await self.heartbeat()
        await self.registered()

    async def registered(self) -> None:
        """Wait until the control plane shows this agent's pools (its heartbeat landed)."""
        admin = admin_pb2_grpc.AdminServiceStub(self.channel)
        for _ in range(250):
            listed = await admin.ListDataplanes(
                admin_pb2.ListDataplanesRequest(), metadata=self.metadata
            )
            if any(
                d.name == self.name and len(d.pools) == len(self.pools) for d in listed.dataplanes
            ):
                return
            await asyncio.sleep(0.02)
        raise AssertionError(f"{self.name}'s pools never showed up")

    async def heartbeat(self, *statuses: agent_pb2.AttemptStatus) -> None:
        """Report full state: the given statuses replace what the agent holds."""
        self.held = {s.attempt_id: s for s in statuses}
        self._seq += 1
        await self.outbox.put(
            agent_pb2.AgentMessage(
                heartbeat=agent_pb2.Heartbeat(
                    seq=self._seq, pools=self.pools, attempts=list(self.held.values())
                )
            )
        )

    async def update(self, status_: agent_pb2.AttemptStatus) -> None:
        self.held[status_.attempt_id] = status_
        await self.outbox.put(
            agent_pb2.AgentMessage(attempt_update=agent_pb2.AttemptUpdate(status=status_))
        )

    async def expect(self, kind: str, timeout: float = 5.0) -> Any:
        """The next control message of this kind (others before it are dropped)."""

        async def wait() -> Any:
            while True:
                message = await self.inbox.get()
                if message.WhichOneof("body") == kind:
                    return getattr(message, kind)

        return await asyncio.wait_for(wait(), timeout)

    def drain_inbox(self) -> list[agent_pb2.ControlMessage]:
        messages = []
        while not self.inbox.empty():
            messages.append(self.inbox.get_nowait())
        return messages

    async def close(self) -> None:
        await self.outbox.put(None)
        if self._reader is not None:
            self._reader.cancel()
        await self.channel.close()


@asynccontextmanager
async def policy_client(port: int) -> AsyncIterator[admin_pb2_grpc.PolicyServiceStub]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        yield admin_pb2_grpc.PolicyServiceStub(channel)


@asynccontextmanager
async def job_client(port: int) -> AsyncIterator[jobs_pb2_grpc.JobServiceStub]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        yield jobs_pb2_grpc.JobServiceStub(channel)


async def submit(
    jobs: jobs_pb2_grpc.JobServiceStub, spec: types_pb2.JobSpec, key: str = ""
) -> types_pb2.Job:
    response = await jobs.Submit(jobs_pb2.SubmitRequest(spec=spec, client_key=key))
    return response.job


async def wait_for_phase(
    jobs: jobs_pb2_grpc.JobServiceStub, job_id: str, phase: int, timeout: float = 5.0
) -> types_pb2.Job:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        job = await jobs.Get(jobs_pb2.GetJobRequest(job_id=job_id))
        if job.phase == phase:
            return job
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(
                f"job {job_id} is {P.JobPhase.Name(job.phase)}, "
                f"not {P.JobPhase.Name(phase)}: {job.message}"
            )
        await asyncio.sleep(0.02)
