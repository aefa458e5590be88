"""Every limit of the API (control_plane/domain/limits.py), at the limit and just over it.

Just over a limit is refused with INVALID_ARGUMENT naming the field, and changes nothing;
at the limit the call goes through, and what is stored reads back intact. Each test runs on
SQLite and on a real Postgres, whose text columns refuse what SQLite takes (NUL characters,
strings longer than the column, integers past 32 bits).
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
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

from control_plane.domain import limits as L
from tests.control_plane.harness import (
    FakeAgent,
    control_plane,
    gpu_pool,
    job_spec,
    status,
    wait_for_phase,
)

P = types_pb2
INVALID = grpc.StatusCode.INVALID_ARGUMENT
OK = grpc.StatusCode.OK
KIB, MIB = 1024, 1024 * 1024
# Answers with a 4 MiB input in them are larger than gRPC's default 4 MiB receive limit.
OPTIONS = [("grpc.max_receive_message_length", 32 * MIB)]


@dataclass
class Clients:
    jobs: jobs_pb2_grpc.JobServiceStub
    admin: admin_pb2_grpc.AdminServiceStub
    policy: admin_pb2_grpc.PolicyServiceStub
    port: int


@asynccontextmanager
async def fleet(database_url: str) -> AsyncIterator[Clients]:
    async with control_plane(database_url) as (cp, _), grpc.aio.insecure_channel(
        f"127.0.0.1:{cp.port}", options=OPTIONS
    ) as channel:
        yield Clients(
            jobs_pb2_grpc.JobServiceStub(channel),
            admin_pb2_grpc.AdminServiceStub(channel),
            admin_pb2_grpc.PolicyServiceStub(channel),
            cp.port,
        )


async def outcome(call: Any) -> tuple[grpc.StatusCode, str]:
    try:
        await call
    except grpc.aio.AioRpcError as error:
        return error.code(), error.details() or ""
    return OK, ""


def mismatches(results: list[tuple[str, grpc.StatusCode, str, grpc.StatusCode, str]]) -> str:
    """Every case that went otherwise than expected, one per line (empty: all went well)."""
    return "\n".join(
        f"{name}: {code.name} {details[:200]!r}, expected {want.name} with {text!r}"
        for name, code, details, want, text in results
        if code != want or text not in details
    )


# -- JobService.Submit --------------------------------------------------------------------

Edit = Callable[[types_pb2.JobSpec], Any]


def _set(**fields: Any) -> Edit:
    def edit(spec: types_pb2.JobSpec) -> None:
        for name, value in fields.items():
            target, _, leaf = name.rpartition(".")
            message = spec
            for part in filter(None, target.split(".")):
                message = getattr(message, part)
            if isinstance(value, dict):
                getattr(message, leaf).update(value)
            elif isinstance(value, list):
                del getattr(message, leaf)[:]
                getattr(message, leaf).extend(value)
            else:
                setattr(message, leaf, value)

    return edit


def _timeout(seconds: int, nanos: int = 0) -> Edit:
    def edit(spec: types_pb2.JobSpec) -> None:
        spec.timeout.seconds, spec.timeout.nanos = seconds, nanos

    return edit


def _env(count: int, name_len: int = 8, value_len: int = 1) -> dict[str, str]:
    return {f"V{i:0{name_len - 1}d}": "v" * value_len for i in range(count)}


def _labels(count: int) -> dict[str, str]:
    return {f"k{i}": "v" for i in range(count)}


PREFIX = ".".join(["a" * 63] * 4)[:253]          # a DNS subdomain of 253
# (case, the field named in the refusal, the spec at the limit, the spec just over it)
SPEC_CASES: list[tuple[str, str, Edit, Edit]] = [
    ("name", "spec.name", _set(name="n" * 253), _set(name="n" * 254)),
    ("name NUL", "spec.name: contains a NUL", _set(name="a b"), _set(name="a\x00b")),
    ("project", "spec.project", _set(project="p" * 63), _set(project="p" * 64)),
    ("project newline", "spec.project", _set(project="vision"), _set(project="vision\n")),
    ("image", "spec.image", _set(image="i" * 512), _set(image="i" * 513)),
    ("args", "spec.command: 257 arguments, at most 256",
     _set(command=["a"] * 256), _set(command=["a"] * 257)),
    ("arg size", "spec.command[1]: 16385 bytes",
     _set(command=["x", "a" * 16 * KIB]), _set(command=["x", "a" * (16 * KIB + 1)])),
    ("arg size utf-8", "spec.command[1]: 16386 bytes",
     _set(command=["x", "é" * 8 * KIB]), _set(command=["x", "é" * (8 * KIB + 1)])),
    ("command size", "spec.command: 262145 bytes in all",
     _set(command=["a" * 16 * KIB] * 16), _set(command=["a" * 16 * KIB] * 16 + ["b"])),
    ("arg NUL", "spec.command[0]: contains a NUL",
     _set(command=["train.py"]), _set(command=["train\x00.py"])),
    ("env entries", "spec.env: 257 entries, at most 256",
     _set(env=_env(256)), _set(env=_env(257))),
    ("env name", "spec.env", _set(env={"E" * 256: "1"}), _set(env={"E" * 257: "1"})),
    ("env value", "spec.env[V]: 32769 bytes",
     _set(env={"V": "v" * 32 * KIB}), _set(env={"V": "v" * (32 * KIB + 1)})),
    ("env size", "spec.env: 262145 bytes in all",
     _set(env=_env(8, name_len=8, value_len=32 * KIB - 8)),
     _set(env=_env(8, name_len=8, value_len=32 * KIB - 8) | {"X": ""})),
    ("labels", "spec.labels: 65 entries, at most 64",
     _set(labels=_labels(64)), _set(labels=_labels(65))),
    ("label key prefix", "is not a valid label key",
     _set(labels={PREFIX + "/n": "v"}), _set(labels={"b" + PREFIX + "/n": "v"})),
    ("label key name", "is not a valid label key",
     _set(labels={"n" * 63: "v"}), _set(labels={"n" * 64: "v"})),
    ("label key charset", "is not a valid label key",
     _set(labels={"team.name_x-1": "v"}), _set(labels={"team name": "v"})),
    ("label value", "is not a valid label value",
     _set(labels={"k": "v" * 63}), _set(labels={"k": "v" * 64})),
    ("label value charset", "is not a valid label value",
     _set(labels={"k": ""}), _set(labels={"k": "eu west"})),
    ("inputs", "spec.inputs: 4194305 bytes",
     _set(inputs=b"i" * 4 * MIB), _set(inputs=b"i" * (4 * MIB + 1))),
    ("service account", "spec.service_account",
     _set(service_account=PREFIX), _set(service_account="b" + PREFIX)),
    ("retry budget", "spec.retry_budget: 101 is more than 100",
     _set(retry_budget=100), _set(retry_budget=101)),
    ("timeout", "spec.timeout: longer than 30 days",
     _timeout(30 * 86400), _timeout(30 * 86400, 1)),
    ("timeout negative", "spec.timeout: must not be negative", _timeout(0), _timeout(-1)),
    ("timeout invalid", "spec.timeout: not a valid duration",
     _timeout(1, 999_999_999), _timeout(1, 1_000_000_000)),
    ("cpu", "resources.cpu_millis", _set(**{"resources.cpu_millis": 1_024_000}),
     _set(**{"resources.cpu_millis": 1_024_001})),
    ("memory", "resources.memory_bytes", _set(**{"resources.memory_bytes": 64 * 1024**4}),
     _set(**{"resources.memory_bytes": 64 * 1024**4 + 1})),
    ("gpu model", "resources.gpu_model", _set(**{"resources.gpu_model": "H100"}),
     _set(**{"resources.gpu_model": "H" * 65})),
    ("origin region", "routing.origin_region",
     _set(**{"routing.origin_region": "r" * 64}), _set(**{"routing.origin_region": "r" * 65})),
    ("pin", "routing.pin_dataplane", _set(**{"routing.pin_dataplane": "onprem"}),
     _set(**{"routing.pin_dataplane": "On-Prem"})),
]
# Over a limit, but not to be refused as invalid: these can never run, and say why.
NEVER_FITS_AT_LIMIT: list[tuple[str, str, Edit, Edit]] = [
    ("gpus", "resources.gpus: 1025 is more than 1024",
     _set(**{"resources.gpus": 1024}), _set(**{"resources.gpus": 1025})),
    ("gpu memory", "resources.min_gpu_memory_gb: 65537",
     _set(**{"resources.min_gpu_memory_gb": 65536}),
     _set(**{"resources.min_gpu_memory_gb": 65537})),
]


async def test_job_spec_limits(database_url: str) -> None:
    async with fleet(database_url) as c:
        agent = FakeAgent(c.port, "onprem", [gpu_pool("h100")])
        await agent.join()
        # Nothing is launched: a launch of a 4 MiB input is more than the fake agent takes.
        await c.admin.CordonDataplane(admin_pb2.CordonDataplaneRequest(name="onprem"))
        await asyncio.sleep(0.2)   # a scheduling pass begun before the cordon ends meanwhile
        results = []
        accepted: dict[str, types_pb2.JobSpec] = {}
        for case in SPEC_CASES + NEVER_FITS_AT_LIMIT:
            name, text, at, over = case
            at_limit = (grpc.StatusCode.FAILED_PRECONDITION, "no pool") if (
                case in NEVER_FITS_AT_LIMIT) else (OK, "")
            for side, edit, (want, expected) in (("at", at, at_limit),
                                                 ("over", over, (INVALID, text))):
                spec = job_spec()
                edit(spec)
                code, details = await outcome(c.jobs.Submit(jobs_pb2.SubmitRequest(spec=spec)))
                results.append((f"{name} {side}", code, details, want, expected))
                if code == OK:
                    accepted[f"{name} {side}"] = spec
        for key, want, text in (("k" * 256, OK, ""), ("k" * 257, INVALID, "client_key"),
                                ("k\x00", INVALID, "client_key: contains a NUL")):
            code, details = await outcome(
                c.jobs.Submit(jobs_pb2.SubmitRequest(spec=job_spec(), client_key=key))
            )
            results.append((f"client_key {len(key)}", code, details, want, text))
        assert not mismatches(results), mismatches(results)

        # What was accepted reads back intact; what was refused left nothing behind.
        listed = await c.jobs.List(jobs_pb2.ListJobsRequest(page_size=1000))
        assert len(listed.jobs) == len(accepted) + 1
        for job in listed.jobs:
            got = await c.jobs.Get(jobs_pb2.GetJobRequest(job_id=job.id))
            if got.client_key:
                assert got.client_key == "k" * 256
                continue
            assert any(_same(sent, got.spec) for sent in accepted.values()), got.spec.name
        await agent.close()


def _same(sent: types_pb2.JobSpec, stored: types_pb2.JobSpec) -> bool:
    expected = types_pb2.JobSpec()
    expected.CopyFrom(sent)
    expected.domain = expected.domain or "development"
    return expected == stored


# -- the other JobService calls -----------------------------------------------------------


def _token(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).decode()


async def test_job_call_limits(database_url: str) -> None:
    async with fleet(database_url) as c:
        agent = FakeAgent(c.port, "onprem", [gpu_pool("h100")])
        await agent.join()
        await c.admin.CordonDataplane(admin_pb2.CordonDataplaneRequest(name="onprem"))
        job = (await c.jobs.Submit(jobs_pb2.SubmitRequest(spec=job_spec()))).job
        done = (await c.jobs.Submit(jobs_pb2.SubmitRequest(spec=job_spec()))).job
        await c.jobs.Cancel(jobs_pb2.CancelJobRequest(job_id=done.id))
        J = jobs_pb2
        List, Get = unary(c.jobs.List, J.ListJobsRequest), unary(c.jobs.Get, J.GetJobRequest)
        Cancel = unary(c.jobs.Cancel, J.CancelJobRequest)
        Watch, Logs = stream(c.jobs.Watch, J.WatchJobRequest), stream(c.jobs.Logs, J.JobLogsRequest)
        naive, aware = "2030-01-01T00:00:00", "2030-01-01T00:00:00+00:00"
        cases = [
            ("page_size", List(page_size=1000), OK, ""),
            ("page_size over", List(page_size=1001), INVALID, "page_size: 1001 is more than 1000"),
            ("phases", List(phases=[1] * 16), OK, ""),
            ("phases over", List(phases=[1] * 17), INVALID, "phases: 17 entries, at most 16"),
            ("project filter", List(project="p" * 64), INVALID, "project:"),
            ("dataplane filter", List(dataplane="a\x00"), INVALID, "dataplane:"),
            ("token", List(page_token=_token(f"{aware}|j-1")), OK, ""),
            ("token naive time", List(page_token=_token(f"{naive}|j-1")), INVALID, "page_token"),
            ("token NUL id", List(page_token=_token(f"{aware}|\x00")), INVALID, "page_token"),
            ("token year 1", List(page_token=_token("0001-01-01T00:00:00+01:00|j")), INVALID,
             "page_token"),
            ("job_id", Get(job_id="j" * 64), grpc.StatusCode.NOT_FOUND, "job_id: no job"),
            ("job_id over", Get(job_id="j" * 65), INVALID, "job_id:"),
            ("job_id NUL", Get(job_id="j-\x00"), INVALID, "job_id:"),
            ("job_id huge", Get(job_id="é" * 100_000), INVALID, "job_id: 'éééé"),
            ("cancel reason", Cancel(job_id=job.id, reason="r" * 1025), INVALID,
             "reason: longer than 1024 characters"),
            ("cancel reason NUL", Cancel(job_id=job.id, reason="r\x00"), INVALID, "reason"),
            ("after_seq", Watch(job_id=done.id, after_seq=L.MAX_SEQ), OK, ""),
            ("after_seq over", Watch(job_id=done.id, after_seq=L.MAX_SEQ + 1), INVALID,
             "after_seq"),
            ("tail_bytes", Logs(job_id="j-0", tail_bytes=16 * MIB), grpc.StatusCode.NOT_FOUND,
             "job_id: no job"),
            ("tail_bytes over", Logs(job_id=job.id, tail_bytes=16 * MIB + 1), INVALID,
             "tail_bytes"),
            ("log attempt_id", Logs(job_id=job.id, attempt_id="a" * 65), INVALID, "attempt_id"),
        ]
        results = []
        for name, call, want, text in cases:
            code, details = await outcome(call())
            results.append((name, code, details, want, text))
        assert not mismatches(results), mismatches(results)
        # The refused cancels changed nothing; one within the limit cancels.
        assert (await c.jobs.Get(J.GetJobRequest(job_id=job.id))).phase != P.JOB_PHASE_CANCELLED
        cancelled = await c.jobs.Cancel(J.CancelJobRequest(job_id=job.id, reason="r" * 1024))
        assert cancelled.message == "r" * 1024
        await agent.close()


Call = Callable[[], Awaitable[Any]]


def unary(method: Any, request: type[Any]) -> Callable[..., Call]:
    """method(request(**fields)) to call later."""
    return lambda **fields: lambda: method(request(**fields))


def stream(method: Any, request: type[Any]) -> Callable[..., Call]:
    """The stream method(request(**fields)) read to its end, later."""
    return lambda **fields: lambda: _drain(method(request(**fields)))


async def _drain(stream: Any) -> None:
    async for _ in stream:
        pass


# -- AgentService.Connect -----------------------------------------------------------------


async def _connect(port: int, name: str, **hello: Any) -> tuple[grpc.StatusCode, str]:
    agent = HelloAgent(port, name, hello)
    try:
        await agent.connect()
    except grpc.aio.AioRpcError as error:
        return error.code(), error.details() or ""
    finally:
        await agent.close()
    return OK, ""


class HelloAgent(FakeAgent):
    """A fake agent whose hello carries the given fields."""

    def __init__(self, port: int, name: str, hello: dict[str, Any]) -> None:
        super().__init__(port, name, [gpu_pool("h100")])
        self.hello = hello

    async def connect(self) -> agent_pb2.Welcome:
        fields = {"dataplane": self.name, "region": self.region, "cloud": "test"} | self.hello
        labels = fields.pop("labels", {})
        self.call = agent_pb2_grpc.AgentServiceStub(self.channel).Connect(self._messages())
        message = agent_pb2.AgentMessage(hello=agent_pb2.Hello(**fields))
        message.hello.labels.update(labels)
        await self.outbox.put(message)
        first = await asyncio.wait_for(self.call.read(), 5)
        return first.welcome  # type: ignore[no-any-return]


async def test_hello_limits(database_url: str) -> None:
    async with fleet(database_url) as c:
        cases: list[tuple[str, dict[str, Any], grpc.StatusCode, str]] = [
            ("region", {"region": "r" * 64}, OK, ""),
            ("region over", {"region": "r" * 65}, INVALID, "hello.region: longer than 64"),
            ("region NUL", {"region": "us\x00"}, INVALID, "hello.region: contains a NUL"),
            ("cloud", {"cloud": "c" * 64}, OK, ""),
            ("cloud over", {"cloud": "c" * 65}, INVALID, "hello.cloud"),
            ("version", {"agent_version": "v" * 64}, OK, ""),
            ("version over", {"agent_version": "v" * 65}, INVALID, "hello.agent_version"),
            ("credential", {"credential": "c" * 1024}, OK, ""),
            ("credential over", {"credential": "s" * 1025}, INVALID, "hello.credential: longer"),
            ("labels", {"labels": _labels(64)}, OK, ""),
            ("labels over", {"labels": _labels(65)}, INVALID, "hello.labels: 65 entries"),
            ("label key", {"labels": {"bad key": "x"}}, INVALID, "hello.labels: 'bad key'"),
            ("dataplane", {"dataplane": "d" * 64}, INVALID, "hello.dataplane"),
        ]
        results = []
        for index, (name, hello, want, text) in enumerate(cases):
            code, details = await _connect(c.port, f"hello-{index}", **hello)
            results.append((name, code, details, want, text))
        assert not mismatches(results), mismatches(results)
        listed = await c.admin.ListDataplanes(admin_pb2.ListDataplanesRequest())
        stored = {d.name: d for d in listed.dataplanes}
        accepted = {f"hello-{i}" for i, case in enumerate(cases) if case[2] == OK}
        assert set(stored) == accepted
        assert stored["hello-0"].region == "r" * 64 and stored["hello-3"].cloud == "c" * 64
        assert stored["hello-5"].agent_version == "v" * 64


async def _on_stream(agent: FakeAgent, message: agent_pb2.AgentMessage) -> tuple[
    grpc.StatusCode, str
]:
    """Send the message; OK if a heartbeat after it still lands, else how the stream ended."""
    await agent.outbox.put(message)
    agent.pools = [gpu_pool("marker", total=1)]
    await agent.heartbeat()
    landed = asyncio.create_task(agent.registered())
    ended = asyncio.create_task(agent.call.code())
    await asyncio.wait({landed, ended}, timeout=10, return_when=asyncio.FIRST_COMPLETED)
    took = landed.done() and landed.exception() is None
    landed.cancel()
    if ended.done():
        return ended.result(), await agent.call.details()
    ended.cancel()
    assert took, "the stream neither took the message nor ended"
    return OK, ""


def _heartbeat(pools: list[types_pb2.Pool] = (), attempts: list[Any] = ()) -> Any:  # type: ignore[assignment]
    return agent_pb2.AgentMessage(
        heartbeat=agent_pb2.Heartbeat(pools=list(pools), attempts=list(attempts))
    )


def _update(**fields: Any) -> agent_pb2.AgentMessage:
    fields = {"attempt_id": "j-0-1", "phase": P.ATTEMPT_PHASE_SUCCEEDED} | fields
    return agent_pb2.AgentMessage(attempt_update=agent_pb2.AttemptUpdate(
        status=agent_pb2.AttemptStatus(**fields)
    ))


def _pool(**fields: Any) -> types_pb2.Pool:
    pool = gpu_pool("p")
    labels = fields.pop("labels", {})
    for name, value in fields.items():
        setattr(pool, name, value)
    pool.labels.update(labels)
    return pool


def _statuses(count: int) -> list[agent_pb2.AttemptStatus]:
    return [
        agent_pb2.AttemptStatus(attempt_id=f"j-{i}-1", phase=P.ATTEMPT_PHASE_SUCCEEDED)
        for i in range(count)
    ]


def _timestamp(seconds: int) -> agent_pb2.AgentMessage:
    message = _update()
    message.attempt_update.status.started_at.seconds = seconds
    return message


STREAM_CASES: list[tuple[str, agent_pb2.AgentMessage, grpc.StatusCode, str]] = [
    ("pools", _heartbeat([gpu_pool(f"p{i}") for i in range(256)]), OK, ""),
    ("pools over", _heartbeat([gpu_pool(f"p{i}") for i in range(257)]), INVALID,
     "heartbeat.pools: 257 entries, at most 256"),
    ("attempts", _heartbeat(attempts=_statuses(10_000)), OK, ""),
    ("attempts over", _heartbeat(attempts=_statuses(10_001)), INVALID,
     "heartbeat.attempts: 10001 entries, at most 10000"),
    ("attempt twice", _heartbeat(attempts=_statuses(2) * 2), INVALID,
     "heartbeat.attempts[2]: 'j-0-1' repeats"),
    ("pool name", _heartbeat([_pool(name="p" * 63)]), OK, ""),
    ("pool name over", _heartbeat([_pool(name="p" * 64)]), INVALID, "heartbeat.pools[0].name"),
    ("pool gpus", _heartbeat([_pool(gpu_total=1_000_000, gpu_free=0)]), OK, ""),
    ("pool gpus over", _heartbeat([_pool(gpu_total=1_000_001, gpu_free=0)]), INVALID,
     "heartbeat.pools[0].gpu_total: 1000001 is more than 1000000"),
    ("pool gpus 2**32-1", _heartbeat([_pool(gpu_total=2**32 - 1, gpu_free=0)]), INVALID,
     "heartbeat.pools[0].gpu_total"),
    ("pool memory", _heartbeat([_pool(gpu_memory_gb=65536)]), OK, ""),
    ("pool memory over", _heartbeat([_pool(gpu_memory_gb=65537)]), INVALID,
     "heartbeat.pools[0].gpu_memory_gb"),
    ("price", _heartbeat([_pool(price_per_gpu_hour=1_000_000.0)]), OK, ""),
    ("price NaN", _heartbeat([_pool(price_per_gpu_hour=float("nan"))]), INVALID,
     "heartbeat.pools[0].price_per_gpu_hour: nan"),
    ("price inf", _heartbeat([_pool(price_per_gpu_hour=float("inf"))]), INVALID,
     "price_per_gpu_hour"),
    ("price negative", _heartbeat([_pool(price_per_gpu_hour=-1.0)]), INVALID,
     "price_per_gpu_hour"),
    ("pool region", _heartbeat([_pool(region="r" * 64)]), OK, ""),
    ("pool region over", _heartbeat([_pool(region="r" * 65)]), INVALID,
     "heartbeat.pools[0].region"),
    ("pool model NUL", _heartbeat([_pool(gpu_model="H\x00")]), INVALID,
     "heartbeat.pools[0].gpu_model: contains a NUL"),
    ("pool interconnect", _heartbeat([_pool(interconnect="i" * 65)]), INVALID,
     "heartbeat.pools[0].interconnect"),
    ("pool labels", _heartbeat([_pool(labels=_labels(64))]), OK, ""),
    ("pool labels over", _heartbeat([_pool(labels={"rack a": "1"})]), INVALID,
     "heartbeat.pools[0].labels"),
    ("attempt id", _update(attempt_id="a" * 64), OK, ""),
    ("attempt id over", _update(attempt_id="a" * 65), INVALID, "attempt_update.status.attempt_id"),
    ("attempt id missing", _update(attempt_id=""), INVALID,
     "attempt_update.status.attempt_id: required"),
    ("outputs", _update(outputs=b"o" * 4 * MIB), OK, ""),
    ("outputs over", _update(outputs=b"o" * (4 * MIB + 1)), INVALID,
     "attempt_update.status.outputs: 4194305 bytes is more than 4194304 bytes"),
    ("time", _timestamp(253_402_300_799), OK, ""),
    ("time over", _timestamp(253_402_300_800), INVALID, "attempt_update.status.started_at"),
    ("log chunk", agent_pb2.AgentMessage(log_chunk=P.LogChunk(
        request_id="log-1", data=b"d" * 64 * KIB)), OK, ""),
    ("log chunk over", agent_pb2.AgentMessage(log_chunk=P.LogChunk(
        request_id="log-1", data=b"d" * (64 * KIB + 1))), INVALID, "log_chunk.data: 65537 bytes"),
    ("second hello", agent_pb2.AgentMessage(hello=agent_pb2.Hello(dataplane="x")), INVALID,
     "hello: not allowed after the hello"),
]


async def test_agent_stream_limits(database_url: str) -> None:
    async with fleet(database_url) as c:
        results = []
        for index, (name, message, want, text) in enumerate(STREAM_CASES):
            agent = FakeAgent(c.port, f"agent-{index}", [gpu_pool("h100")])
            await agent.connect()
            code, details = await _on_stream(agent, message)
            results.append((name, code, details, want, text))
            await agent.close()
        assert not mismatches(results), mismatches(results)
        listed = await c.admin.ListDataplanes(admin_pb2.ListDataplanesRequest())
        pools = {d.name: d.pools for d in listed.dataplanes}
        refused = [f"agent-{i}" for i, case in enumerate(STREAM_CASES) if case[2] != OK]
        # A refused heartbeat left the dataplane's pools as they were: none reported yet.
        assert all(not pools[name] for name in refused)


async def test_what_an_attempt_reports_is_cut_not_refused(database_url: str) -> None:
    """reason is a String(64) column: a longer one used to fail the insert on Postgres."""
    async with fleet(database_url) as c:
        agent = FakeAgent(c.port, "onprem", [gpu_pool("h100")])
        await agent.join()
        job = (await c.jobs.Submit(jobs_pb2.SubmitRequest(spec=job_spec()))).job
        launch = await agent.expect("launch")
        await agent.update(status(launch.attempt_id, P.ATTEMPT_PHASE_RUNNING, reason="R" * 200,
                                  message="m" * 10_000 + "\x00"))
        running = await wait_for_phase(c.jobs, job.id, P.JOB_PHASE_RUNNING)
        attempt = running.attempts[0]
        assert attempt.reason == "R" * 63 + "…"
        assert len(attempt.message) == L.MAX_ATTEMPT_MESSAGE
        assert attempt.message.startswith("m" * 4000) and "\x00" not in attempt.message
        await agent.update(status(launch.attempt_id, P.ATTEMPT_PHASE_FAILED, reason="E" * 64,
                                  message="bad \x00 byte", exit_code=3))
        for _ in range(250):
            first = (await c.jobs.Get(jobs_pb2.GetJobRequest(job_id=job.id))).attempts[0]
            if first.phase == P.ATTEMPT_PHASE_FAILED:
                break
            await asyncio.sleep(0.02)
        assert (first.reason, first.message) == ("E" * 64, "bad \ufffd byte")

        # A log error the agent sends comes back cut, in a status a client can read.
        logs = c.jobs.Logs(jobs_pb2.JobLogsRequest(job_id=job.id, attempt_id=launch.attempt_id))
        reading = asyncio.create_task(outcome(_drain(logs)))
        request = await agent.expect("log_request")
        await agent.outbox.put(agent_pb2.AgentMessage(log_chunk=P.LogChunk(
            request_id=request.request_id, eof=True, error="é" * 100_000)))
        code, details = await reading
        assert code == grpc.StatusCode.NOT_FOUND
        assert details.startswith(f"log of {launch.attempt_id}: éé") and len(details) < 4096
        await agent.close()


async def test_a_log_chunk_at_the_limit_reaches_the_reader(database_url: str) -> None:
    async with fleet(database_url) as c:
        agent = FakeAgent(c.port, "onprem", [gpu_pool("h100")])
        await agent.join()
        job = (await c.jobs.Submit(jobs_pb2.SubmitRequest(spec=job_spec()))).job
        await agent.expect("launch")
        logs = c.jobs.Logs(jobs_pb2.JobLogsRequest(job_id=job.id, tail_bytes=16 * MIB))

        async def read() -> bytes:
            return b"".join([chunk.data async for chunk in logs])

        reading = asyncio.create_task(read())
        request = await agent.expect("log_request")
        assert request.tail_bytes == 16 * MIB
        await agent.outbox.put(agent_pb2.AgentMessage(log_chunk=P.LogChunk(
            request_id=request.request_id, data=b"d" * 64 * KIB, eof=True)))
        assert await reading == b"d" * 64 * KIB
        await agent.close()


# -- PolicyService and AdminService -------------------------------------------------------


def _padded(size: int) -> str:
    """A valid policy document of exactly `size` bytes."""
    head = "version: 1\nrules: []\n"
    return head + "#" * (size - len(head) - 1) + "\n"


def _nested(depth: int) -> str:
    return "rules: " + "[" * (depth - 1) + "]" * (depth - 1) + "\n"


async def test_policy_and_admin_limits(database_url: str) -> None:
    async with fleet(database_url) as c:
        agent = FakeAgent(c.port, "onprem", [gpu_pool("h100")])
        await agent.join()
        A = admin_pb2
        Apply = unary(c.policy.ApplyPolicy, A.ApplyPolicyRequest)
        GetPolicy = unary(c.policy.GetPolicy, A.GetPolicyRequest)
        Rollback = unary(c.policy.RollbackPolicy, A.RollbackPolicyRequest)
        Cordon = unary(c.admin.CordonDataplane, A.CordonDataplaneRequest)
        Drain = unary(c.admin.DrainDataplane, A.DrainDataplaneRequest)
        empty = "rules: []"
        cases = [
            ("document", Apply(document=_padded(256 * KIB), author="a"), OK, ""),
            ("document over", Apply(document=_padded(256 * KIB + 1), author="a"), INVALID,
             "document: 262145 bytes, at most 262144"),
            ("nested", Apply(document=_nested(64), author="a"), INVALID, "policy.yaml:1:"),
            ("nested over", Apply(document=_nested(65), author="a"), INVALID,
             "document: nested more than 64 levels deep"),
            ("nested deep", Apply(document="- " * 5000 + "x", author="a"), INVALID,
             "document: nested more than 64 levels deep"),
            ("author", Apply(document=empty, author="a" * 256), OK, ""),
            ("author over", Apply(document=empty, author="a" * 257), INVALID,
             "author: longer than 256 characters"),
            ("comment", Apply(document=empty, author="a", comment="c" * 4096), OK, ""),
            ("comment over", Apply(document=empty, author="a", comment="c" * 4097), INVALID,
             "comment: longer than 4096 characters"),
            ("comment NUL", Apply(document=empty, author="a", comment="\x00"), INVALID,
             "comment"),
            ("version", GetPolicy(version=2**31 - 1), grpc.StatusCode.NOT_FOUND,
             "version: no policy version"),
            ("version over", GetPolicy(version=2**64 - 1), INVALID,
             "version: 18446744073709551615 is more than 2147483647"),
            ("rollback over", Rollback(version=2**31, author="a"), INVALID, "version"),
            ("rollback author", Rollback(version=1, author="a" * 257), INVALID, "author"),
            ("explain job_id", unary(c.policy.ExplainJob, A.ExplainJobRequest)(job_id="j\x00"),
             INVALID, "job_id"),
            ("explain spec", unary(c.policy.ExplainPlacement, A.ExplainPlacementRequest)(
                spec=P.JobSpec(project="vision", timeout={"seconds": 10**15})),
             INVALID, "spec.timeout"),
            ("cordon name", Cordon(name="d" * 63), grpc.StatusCode.NOT_FOUND,
             "name: no dataplane"),
            ("cordon name over", Cordon(name="d" * 64), INVALID, "name:"),
            ("cordon reason NUL", Cordon(name="onprem", reason="\x00"), INVALID,
             "reason: contains a NUL"),
            ("drain deadline", Drain(name="onprem", deadline={"seconds": 2**62}), INVALID,
             "deadline: not a valid duration"),
            ("cordon reason", Cordon(name="onprem", reason="r" * 1024), OK, ""),
        ]
        results = []
        for name, call, want, text in cases:
            code, details = await outcome(call())
            results.append((name, code, details, want, text))
        assert not mismatches(results), mismatches(results)
        history = await c.policy.ListPolicyVersions(A.ListPolicyVersionsRequest())
        assert [v.author for v in history.versions] == ["a", "a" * 256, "a"]
        full = await c.policy.GetPolicy(A.GetPolicyRequest(version=1))
        assert len(full.document) == 256 * KIB
        listed = await c.admin.ListDataplanes(A.ListDataplanesRequest())
        assert listed.dataplanes[0].cordon_reason == "r" * 1024
        await agent.close()


async def test_a_long_refusal_is_cut_to_fit_a_status(database_url: str) -> None:
    """Every problem of a policy is listed, but a client drops a status message over 8 KiB
    (it would see RESOURCE_EXHAUSTED instead): the message is cut to fit."""
    document = "rules:\n" + "".join(f"  - name: r{i}\n    bogus{i}: 1\n" for i in range(3000))
    async with fleet(database_url) as c:
        code, details = await outcome(c.policy.ApplyPolicy(admin_pb2.ApplyPolicyRequest(
            document=document, author="a")))
        assert code == INVALID
        assert details.startswith("policy.yaml:2:5: rules[0].match: required field is missing")
        assert details.endswith(" … (cut)") and len(details.encode()) <= L.MAX_STATUS_BYTES
        code, details = await outcome(c.jobs.Submit(jobs_pb2.SubmitRequest(spec=P.JobSpec(
            project="vision", command=["x"], env={f"{i}bad": "" for i in range(256)}))))
        assert code == INVALID and details.startswith("invalid job: spec.env: '")
        assert details.endswith(" … (cut)")
