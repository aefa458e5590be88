"""The load generator of bench/fleet_bench.py: grpc.aio stubs of the JobService (and the
AdminService, for cordons), submitting jobs back to back, in batches, or paced at a rate.

Every job is one GPU of a model ("H100" unless said) running `true`, with its own client
key, as the Flyte plugin sends one. Errors are counted by status code, not raised: a
benchmark reports how many submits failed and goes on.
"""

from __future__ import annotations

import asyncio
import time
import uuid

import grpc
import grpc.aio
from fleet.v1 import admin_pb2, admin_pb2_grpc, jobs_pb2, jobs_pb2_grpc, types_pb2

CALL_TIMEOUT_S = 60.0


def spec(project: str, model: str = "H100") -> types_pb2.JobSpec:
    return types_pb2.JobSpec(project=project, name="bench", command=["true"],
                             resources=types_pb2.Resources(gpus=1, gpu_model=model))


def submit_request(project: str, model: str = "H100") -> jobs_pb2.SubmitRequest:
    return jobs_pb2.SubmitRequest(spec=spec(project, model), client_key=uuid.uuid4().hex)


class Load:
    def __init__(self, address: str) -> None:
        self.channel = grpc.aio.insecure_channel(address)
        self.jobs = jobs_pb2_grpc.JobServiceStub(self.channel)
        self.admin = admin_pb2_grpc.AdminServiceStub(self.channel)
        self.errors: dict[str, int] = {}
        self.batch_missing = False

    async def close(self) -> None:
        await self.channel.close()

    def _error(self, error: grpc.aio.AioRpcError) -> None:
        self.errors[error.code().name] = self.errors.get(error.code().name, 0) + 1

    async def cordon(self, dataplane: str) -> None:
        request = admin_pb2.CordonDataplaneRequest(name=dataplane, reason="bench")
        await self.admin.CordonDataplane(request, timeout=CALL_TIMEOUT_S)

    async def submit(self, project: str, model: str = "H100") -> str | None:
        try:
            answer = await self.jobs.Submit(submit_request(project, model),
                                            timeout=CALL_TIMEOUT_S)
        except grpc.aio.AioRpcError as error:
            self._error(error)
            return None
        return answer.job.id

    async def submit_batch(self, project: str, size: int) -> int | None:
        """Jobs acknowledged; None when the server has no SubmitBatch."""
        request = jobs_pb2.SubmitBatchRequest(jobs=[submit_request(project) for _ in range(size)])
        try:
            answer = await self.jobs.SubmitBatch(request, timeout=CALL_TIMEOUT_S)
        except grpc.aio.AioRpcError as error:
            if error.code() == grpc.StatusCode.UNIMPLEMENTED:
                self.batch_missing = True
                return None
            self._error(error)
            return 0
        return len(answer.jobs)

    async def closed_loop(self, project: str, seconds: float, max_jobs: int, callers: int,
                          batch: int = 0) -> float | None:
        """Jobs acknowledged a second with `callers` calls back to back, for `seconds` or
        until about max_jobs were acknowledged (None: the server has no SubmitBatch)."""
        if batch and await self.submit_batch(project, 1) is None:
            return None
        loop = asyncio.get_running_loop()
        end, count = loop.time() + seconds, 0

        async def caller() -> None:
            nonlocal count
            while loop.time() < end and count < max_jobs:
                # Awaited first: `count += await ...` would read count before the await
                # and lose the other callers' additions meanwhile.
                if batch:
                    got = await self.submit_batch(project, batch) or 0
                else:
                    got = int(await self.submit(project) is not None)
                count += got

        started = loop.time()
        await asyncio.gather(*(caller() for _ in range(callers)))
        return count / (loop.time() - started)

    async def paced(self, project: str, rate: float,
                    jobs: int) -> dict[str, tuple[float, float]]:
        """Submit `jobs` at `rate` a second (open loop); job -> (time sent, acknowledged)."""
        sent: dict[str, tuple[float, float]] = {}

        async def one() -> None:
            at = time.time()
            job = await self.submit(project)
            if job is not None:
                sent[job] = (at, time.time())

        loop = asyncio.get_running_loop()
        started, tasks = loop.time(), []
        for index in range(jobs):
            delay = started + index / rate - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one()))
        await asyncio.gather(*tasks)
        return sent

    async def many(self, project: str, count: int, callers: int, batch: int,
                   model: str = "H100") -> int:
        """Submit `count` jobs as fast as possible (batched when the server can)."""
        left = count
        use_batch = batch and not self.batch_missing and model == "H100"

        async def caller() -> int:
            nonlocal left
            done = 0
            while left > 0:
                take = min(batch, left) if use_batch else 1
                left -= take
                if use_batch:
                    done += await self.submit_batch(project, take) or 0
                else:
                    done += int(await self.submit(project, model) is not None)
            return done

        return sum(await asyncio.gather(*(caller() for _ in range(callers))))
