"""Every RPC of every service, fuzzed against one in-process control plane (SQLite).

The RPCs are read from the generated descriptors of `fleet.v1`, so a new one is fuzzed
without a change here (and a test fails if one is of a kind this file cannot call). Each
gets two kinds of input: structurally valid messages with random field values (strategies
built from the message descriptor: odd and huge strings, boundary and negative numbers,
unknown enum numbers, maps, repeated fields), and raw random bytes. AgentService.Connect
gets random sequences of agent messages, with or without a hello first.

Every call must end with OK or a documented refusal, never UNKNOWN or INTERNAL; afterwards
the control plane still serves (health, a submit and a get), and its state holds together:
every job listed is gettable with a valid phase, no attempt without its job, no job with
two live attempts.

The control plane runs on an event loop in a thread of its own; the tests are plain
functions (hypothesis drives them) that run client coroutines on that loop.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import pkgutil
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, TypeVar

import fleet.v1
import grpc
import pytest
import sqlalchemy as sa
from fleet.v1 import admin_pb2, agent_pb2, jobs_pb2, types_pb2
from google.protobuf import descriptor as D
from google.protobuf import message_factory
from google.protobuf.message import DecodeError, Message
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from control_plane.registry.tables import AttemptRow, JobRow
from control_plane.server import SERVICE_NAMES
from tests.control_plane.harness import FakeAgent, control_plane, gpu_pool, job_spec

T = TypeVar("T")
P = types_pb2
# FUZZ_EXAMPLES=500 for a deeper run than the suite's.
EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "50"))
CALL_TIMEOUT_S = 10.0
GET_EACH = 25
STREAM_TIMEOUT_S = 0.3    # Watch and Logs of live jobs wait; we cut them
OK = grpc.StatusCode.OK
# Documented refusals. DEADLINE_EXCEEDED only for the server streams this file cuts.
ALLOWED = {
    OK,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.UNAUTHENTICATED,
    grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.ALREADY_EXISTS,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.UNAVAILABLE,
}
# Bytes that are not the request's message (the server's ErrorTranslation refuses them,
# where grpc.aio alone would answer UNKNOWN).
UNDECODABLE = "request: not a /fleet.v1."
WROTE_LATE = "Internal error from Core"
BIG = 32 * 1024 * 1024
CHANNEL_OPTIONS = [
    ("grpc.max_receive_message_length", BIG),
    ("grpc.max_send_message_length", BIG),
]
# Placeholder for authentication: a control plane with auth on needs an API key here.
METADATA: tuple[tuple[str, str], ...] = ()


# -- the RPCs, from the descriptors -------------------------------------------------------


@dataclass(frozen=True)
class Rpc:
    path: str                       # /fleet.v1.JobService/Submit
    service: str
    request: type[Message]
    client_streaming: bool
    server_streaming: bool

    def __str__(self) -> str:
        return self.path.strip("/")


def _rpcs() -> list[Rpc]:
    found = []
    for module in pkgutil.iter_modules(fleet.v1.__path__):
        if not module.name.endswith("_pb2"):
            continue
        file = __import__(f"fleet.v1.{module.name}", fromlist=["DESCRIPTOR"]).DESCRIPTOR
        for service in file.services_by_name.values():
            for method in service.methods:
                found.append(
                    Rpc(
                        f"/{service.full_name}/{method.name}",
                        service.full_name,
                        message_factory.GetMessageClass(method.input_type),
                        method.client_streaming,
                        method.server_streaming,
                    )
                )
    return sorted(found, key=lambda rpc: rpc.path)


RPCS = _rpcs()
UNARY_REQUEST = [rpc for rpc in RPCS if not rpc.client_streaming]
STREAMS = [rpc for rpc in RPCS if rpc.client_streaming]


def test_every_rpc_the_server_serves_is_fuzzed() -> None:
    served = set(SERVICE_NAMES)
    fuzzed = {rpc.service for rpc in RPCS}
    assert served <= fuzzed, f"services without descriptors here: {served - fuzzed}"
    # This file calls unary and server-streaming RPCs generically and knows one
    # bidirectional stream (the agent's); anything else needs a fuzzer of its own.
    unknown = [str(r) for r in STREAMS if r.path != "/fleet.v1.AgentService/Connect"]
    assert not unknown, f"client-streaming RPCs this file does not fuzz: {unknown}"
    assert len(RPCS) >= 18


# -- strategies from descriptors ----------------------------------------------------------

HUGE = "x" * (1 << 20)
ODD_TEXT = [
    "", "a", "a" * 63, "a" * 64, "a" * 65, "A", "-a", "a-", "a\n", "\x00", "a\x00b", "é" * 3000,
    "../../etc/passwd", "%s%n", "' OR 1=1 --", "\u202e", "😀" * 10, HUGE,
]
INT_RANGES = {
    D.FieldDescriptor.TYPE_INT32: (-(2**31), 2**31 - 1),
    D.FieldDescriptor.TYPE_SINT32: (-(2**31), 2**31 - 1),
    D.FieldDescriptor.TYPE_SFIXED32: (-(2**31), 2**31 - 1),
    D.FieldDescriptor.TYPE_UINT32: (0, 2**32 - 1),
    D.FieldDescriptor.TYPE_FIXED32: (0, 2**32 - 1),
    D.FieldDescriptor.TYPE_INT64: (-(2**63), 2**63 - 1),
    D.FieldDescriptor.TYPE_SINT64: (-(2**63), 2**63 - 1),
    D.FieldDescriptor.TYPE_SFIXED64: (-(2**63), 2**63 - 1),
    D.FieldDescriptor.TYPE_UINT64: (0, 2**64 - 1),
    D.FieldDescriptor.TYPE_FIXED64: (0, 2**64 - 1),
}


@dataclass
class Known:
    """Ids and names that exist, so that some fuzzed requests reach past the lookups."""

    job_ids: list[str] = field(default_factory=list)
    attempt_ids: list[str] = field(default_factory=list)
    dataplanes: list[str] = field(default_factory=lambda: ["fuzz-dp"])


KNOWN = Known()


def _strings(name: str) -> st.SearchStrategy[str]:
    plain = st.text(max_size=80) | st.from_regex(r"[a-z0-9-]{0,70}", fullmatch=True)
    odd = st.sampled_from(ODD_TEXT)
    # Deferred: the known ids exist once the fixture has seeded the control plane.
    if name.endswith("job_id"):
        return st.one_of(st.deferred(lambda: st.sampled_from(KNOWN.job_ids)), plain, odd)
    if name.endswith("attempt_id"):
        return st.one_of(st.deferred(lambda: st.sampled_from(KNOWN.attempt_ids)), plain, odd)
    if name in ("dataplane", "name", "pin_dataplane", "project"):
        return st.one_of(st.sampled_from([*KNOWN.dataplanes, "vision"]), plain, odd)
    return st.one_of(plain, odd)


def _scalar(fd: D.FieldDescriptor) -> st.SearchStrategy[Any]:
    t = fd.type
    if t == D.FieldDescriptor.TYPE_STRING:
        return _strings(fd.name)
    if t == D.FieldDescriptor.TYPE_BYTES:
        return st.binary(max_size=64) | st.sampled_from([b"", b"\x00" * 70_000, b"x" * (5 << 20)])
    if t == D.FieldDescriptor.TYPE_BOOL:
        return st.booleans()
    if t == D.FieldDescriptor.TYPE_DOUBLE:
        return st.floats()
    if t == D.FieldDescriptor.TYPE_FLOAT:
        return st.floats(width=32)
    if t == D.FieldDescriptor.TYPE_ENUM:
        known = [v.number for v in fd.enum_type.values]
        return st.sampled_from(known) | st.integers(-(2**31), 2**31 - 1)
    low, high = INT_RANGES[t]
    return st.integers(low, high) | st.sampled_from([low, high, 0, 1, -1 if low < 0 else 2])


def _value(fd: D.FieldDescriptor, depth: int) -> st.SearchStrategy[Any]:
    if fd.type == D.FieldDescriptor.TYPE_MESSAGE:
        return messages(fd.message_type, depth + 1)
    return _scalar(fd)


MANY_BYTES = 20 * 1024 * 1024   # past the server's 16 MiB, and no more (memory)


def _size(value: Any) -> int:
    if isinstance(value, Message):
        return value.ByteSize()
    return len(value) if isinstance(value, str | bytes) else 8


def _many(value: T, count: int) -> int:
    """How many copies of value to send: count, unless they would be more than MANY_BYTES."""
    return max(1, min(count, MANY_BYTES // max(1, _size(value))))


def _repeated(element: st.SearchStrategy[T]) -> st.SearchStrategy[list[T]]:
    """Short lists, and now and then one element many times (past count limits)."""
    many = st.tuples(element, st.sampled_from([65, 257, 10_001])).map(
        lambda pair: [pair[0]] * _many(pair[0], pair[1])
    )
    return st.lists(element, max_size=4) | many


@functools.cache
def messages(descriptor: D.Descriptor, depth: int = 0) -> st.SearchStrategy[Message]:
    cls = message_factory.GetMessageClass(descriptor)
    if depth > 4:
        return st.just(cls())
    parts: dict[str, st.SearchStrategy[Any]] = {}
    for fd in descriptor.fields:
        if fd.message_type is not None and fd.message_type.GetOptions().map_entry:
            key = _scalar(fd.message_type.fields_by_name["key"])
            value = _value(fd.message_type.fields_by_name["value"], depth)
            many = st.builds(lambda v: {f"k{i}": v for i in range(_many(v, 300))}, value)
            if fd.message_type.fields_by_name["key"].type != D.FieldDescriptor.TYPE_STRING:
                many = st.just({})
            parts[fd.name] = st.dictionaries(key, value, max_size=4) | many
        elif fd.is_repeated:
            parts[fd.name] = _repeated(_value(fd, depth))
        else:
            parts[fd.name] = _value(fd, depth)
    # Each field is set or left unset; a oneof keeps the last one set.
    chosen = st.fixed_dictionaries({}, optional=parts)
    return chosen.map(functools.partial(_build, cls))


def _build(cls: type[Message], values: dict[str, Any]) -> Message:
    message = cls()
    for name, value in values.items():
        fd = cls.DESCRIPTOR.fields_by_name[name]
        target = getattr(message, name)
        if fd.message_type is not None and fd.message_type.GetOptions().map_entry:
            is_message = fd.message_type.fields_by_name["value"].message_type is not None
            for key, item in value.items():
                if is_message:
                    target[key].CopyFrom(item)
                else:
                    target[key] = item
        elif fd.is_repeated:
            target.extend(value)
        elif fd.type == D.FieldDescriptor.TYPE_MESSAGE:
            target.CopyFrom(value)
        else:
            setattr(message, name, value)
    return message


# -- the control plane on a loop of its own -----------------------------------------------


class Fleet:
    """A control plane served from a thread; `run` runs a coroutine on its loop."""

    def __init__(self, database_url: str) -> None:
        self._url = database_url
        self._loop = asyncio.new_event_loop()
        self._ready: Future[None] = Future()
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._serve, name="fuzzed-control-plane")
        self.port = 0
        self.cp: Any = None
        self.channel: grpc.aio.Channel | None = None
        self.agent: FakeAgent | None = None
        self.metadata = METADATA
        self.statuses: dict[str, dict[grpc.StatusCode, int]] = {}
        self.server_errors = ServerErrors()

    def __enter__(self) -> Fleet:
        self._thread.start()
        self._ready.result(timeout=60)
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._stop is not None
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout=30)

    def _serve(self) -> None:
        self._loop.run_until_complete(self._main())

    async def _main(self) -> None:
        self._stop = asyncio.Event()
        try:
            async with control_plane(self._url) as (cp, _):
                self.cp, self.port = cp, cp.port
                self.channel = grpc.aio.insecure_channel(
                    f"127.0.0.1:{cp.port}", options=CHANNEL_OPTIONS
                )
                await self._seed()
                self._ready.set_result(None)
                await self._stop.wait()
                if self.agent is not None:
                    await self.agent.close()
                await self.channel.close()
        except BaseException as error:
            if not self._ready.done():
                self._ready.set_exception(error)
            raise

    async def _seed(self) -> None:
        """A dataplane with pools, jobs queued and placed, one policy version."""
        self.agent = FakeAgent(self.port, "fuzz-dp", [gpu_pool("h100", total=2)])
        await self.agent.join()
        for index in range(4):
            job = await self.submit(job_spec(gpus=1), key=f"seed-{index}")
            KNOWN.job_ids.append(job.id)
            KNOWN.attempt_ids.append(f"{job.id}-1")
        await self.unary(
            "/fleet.v1.PolicyService/ApplyPolicy",
            admin_pb2.ApplyPolicyRequest(document="rules: []\n", author="fuzz"),
        )

    def run(self, make: Callable[[], Awaitable[T]], timeout: float = 60) -> T:
        async def call() -> T:
            return await make()

        return asyncio.run_coroutine_threadsafe(call(), self._loop).result(timeout)

    # -- calls, on the control plane's loop --

    async def unary(self, path: str, request: Message | bytes) -> Message | bytes:
        assert self.channel is not None
        raw = isinstance(request, bytes)
        method = self.channel.unary_unary(
            path,
            request_serializer=None if raw else type(request).SerializeToString,
            response_deserializer=None,
        )
        response: bytes = await method(request, timeout=CALL_TIMEOUT_S, metadata=self.metadata)
        return response

    async def submit(self, spec: types_pb2.JobSpec, key: str = "") -> types_pb2.Job:
        raw = await self.unary(
            "/fleet.v1.JobService/Submit", jobs_pb2.SubmitRequest(spec=spec, client_key=key)
        )
        assert isinstance(raw, bytes)
        return jobs_pb2.SubmitResponse.FromString(raw).job

    async def call(self, rpc: Rpc, request: Message | bytes) -> tuple[grpc.StatusCode, str]:
        """The status a call ends with, and its details."""
        assert self.channel is not None
        serializer = None if isinstance(request, bytes) else type(request).SerializeToString
        try:
            if rpc.server_streaming:
                stream = self.channel.unary_stream(
                    rpc.path, request_serializer=serializer, response_deserializer=None
                )
                call = stream(request, timeout=STREAM_TIMEOUT_S, metadata=self.metadata)
                async for _ in call:
                    pass
            else:
                method = self.channel.unary_unary(
                    rpc.path, request_serializer=serializer, response_deserializer=None
                )
                await method(request, timeout=CALL_TIMEOUT_S, metadata=self.metadata)
        except grpc.aio.AioRpcError as error:
            return error.code(), error.details() or ""
        return OK, ""

    async def connect(self, messages: list[agent_pb2.AgentMessage] | list[bytes]) -> tuple[
        grpc.StatusCode, str
    ]:
        """Send these on an agent stream, half-close it, and read to its end."""
        assert self.channel is not None
        raw = bool(messages) and isinstance(messages[0], bytes)
        stream = self.channel.stream_stream(
            "/fleet.v1.AgentService/Connect",
            request_serializer=None if raw else agent_pb2.AgentMessage.SerializeToString,
            response_deserializer=None,
        )

        async def requests() -> AsyncIterator[Any]:
            for message in messages:
                yield message

        call = stream(requests(), timeout=CALL_TIMEOUT_S, metadata=self.metadata)
        try:
            async for _ in call:
                pass
        except grpc.aio.AioRpcError as error:
            return error.code(), error.details() or ""
        return OK, ""


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    url = f"sqlite+aiosqlite:///{tmp_path_factory.mktemp('fuzz') / 'fleet.db'}"
    grpc_log = logging.getLogger("grpc._cython.cygrpc")
    with Fleet(url) as running:
        grpc_log.addHandler(running.server_errors)
        try:
            yield running
        finally:
            grpc_log.removeHandler(running.server_errors)
        # What the fuzz saw per RPC (pytest -s shows it).
        for rpc, counts in sorted(running.statuses.items()):
            seen = sorted(counts.items(), key=lambda item: -item[1])
            print(f"  {rpc}: " + ", ".join(f"{code.name} {n}" for code, n in seen))


def record(
    fleet: Fleet,
    rpc: str,
    code: grpc.StatusCode,
    details: str,
    *,
    cut: bool = False,
    undecodable: bool = False,
    client_wrote_late: bool = False,
) -> None:
    """Check how a call ended, as the client saw it and as the server logged it.

    undecodable: the request's bytes may be no message: refused with INVALID_ARGUMENT.
    client_wrote_late: a client stream; grpc.aio's client reports INTERNAL "Internal error
    from Core" when it was still writing as the server ended the call (grpc/grpc#36066),
    and the server's status is lost: the server's log says whether the server failed.
    """
    counts = fleet.statuses.setdefault(rpc, {})
    counts[code] = counts.get(code, 0) + 1
    failures = fleet.server_errors.take()
    if undecodable and code == grpc.StatusCode.INVALID_ARGUMENT and details.startswith(
        UNDECODABLE
    ):
        assert not failures, f"{rpc}: the server failed: {failures}"
        return
    assert not failures, f"{rpc}: the server failed: {failures}"
    if client_wrote_late and (code, details) == (grpc.StatusCode.INTERNAL, WROTE_LATE):
        return
    allowed = ALLOWED | ({grpc.StatusCode.DEADLINE_EXCEEDED} if cut else set())
    assert code in allowed, f"{rpc}: {code.name}: {details[:500]}"
    # UNAVAILABLE is for a database out of reach, not for what was sent.
    assert "could not record the report" not in details, f"{rpc}: {details[:500]}"


class ServerErrors(logging.Handler):
    """What grpc logs when a servicer raises (it then answers UNKNOWN): none may happen."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self._seen: list[str] = []
        self._lock = threading.Lock()

    def emit(self, record: logging.LogRecord) -> None:
        with self._lock:
            self._seen.append(record.getMessage())

    def take(self) -> list[str]:
        with self._lock:
            seen, self._seen = self._seen, []
        return seen


FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                           HealthCheck.function_scoped_fixture],
    derandomize=False,
)


# -- the fuzz -----------------------------------------------------------------------------


@pytest.mark.parametrize("rpc", UNARY_REQUEST, ids=str)
def test_random_messages(fleet: Fleet, rpc: Rpc) -> None:
    @FUZZ
    @given(request=messages(rpc.request.DESCRIPTOR))
    def fuzz(request: Message) -> None:
        code, details = fleet.run(lambda: fleet.call(rpc, request))
        record(fleet, str(rpc), code, details, cut=rpc.server_streaming)

    fuzz()
    assert_still_serving(fleet)


@pytest.mark.parametrize("rpc", UNARY_REQUEST, ids=str)
def test_random_bytes(fleet: Fleet, rpc: Rpc) -> None:
    @FUZZ
    @given(raw=st.binary(max_size=200) | st.sampled_from([b"\xff" * 10, b"\x0a\xff\xff\xff\x0f"]))
    def fuzz(raw: bytes) -> None:
        code, details = fleet.run(lambda: fleet.call(rpc, raw))
        record(fleet, str(rpc), code, details, cut=rpc.server_streaming,
               undecodable=not _decodes(rpc.request, raw))

    fuzz()
    assert_still_serving(fleet)


def _decodes(cls: type[Message], raw: bytes) -> bool:
    try:
        cls.FromString(raw)
    except DecodeError:
        return False
    return True


def _hello(dataplane: str) -> agent_pb2.AgentMessage:
    return agent_pb2.AgentMessage(
        hello=agent_pb2.Hello(dataplane=dataplane, region="us-east-1", cloud="test")
    )


PHASES = st.sampled_from([v.number for v in P.AttemptPhase.DESCRIPTOR.values])
PLAUSIBLE_STATUS = st.builds(
    lambda attempt_id, phase, reason, message: agent_pb2.AttemptStatus(
        attempt_id=attempt_id,
        job_id=attempt_id.rpartition("-")[0],
        epoch=1,
        phase=phase,
        reason=reason,
        message=message,
    ),
    _strings("attempt_id"),
    PHASES,
    st.sampled_from(["", "OOMKilled", "R" * 500, "\x00"]),
    st.sampled_from(["", "done", "m" * 10_000, "a\x00b"]),
)
PLAUSIBLE = st.one_of(
    st.builds(
        lambda pools, attempts: agent_pb2.AgentMessage(
            heartbeat=agent_pb2.Heartbeat(pools=pools, attempts=attempts)
        ),
        st.lists(st.sampled_from([gpu_pool("h100", total=2), gpu_pool("l4", model="L4")]),
                 max_size=2, unique_by=lambda p: p.name),
        st.lists(PLAUSIBLE_STATUS, max_size=4),
    ),
    st.builds(
        lambda status: agent_pb2.AgentMessage(
            attempt_update=agent_pb2.AttemptUpdate(status=status)
        ),
        PLAUSIBLE_STATUS,
    ),
)


def test_agent_streams(fleet: Fleet) -> None:
    """Random message sequences on AgentService.Connect, with or without a hello first."""

    @FUZZ
    @given(
        hello=st.sampled_from([None, "fuzz-dp", "fuzz-other"]),
        body=st.lists(messages(agent_pb2.AgentMessage.DESCRIPTOR) | PLAUSIBLE, max_size=5),
    )
    def fuzz(hello: str | None, body: list[agent_pb2.AgentMessage]) -> None:
        sequence = ([_hello(hello)] if hello else []) + body
        code, details = fleet.run(lambda: fleet.connect(sequence))
        record(fleet, "AgentService/Connect", code, details, client_wrote_late=True)

    fuzz()
    assert_still_serving(fleet)


def test_agent_streams_of_random_bytes(fleet: Fleet) -> None:
    @FUZZ
    @given(chunks=st.lists(st.binary(min_size=1, max_size=100), min_size=1, max_size=3))
    def fuzz(chunks: list[bytes]) -> None:
        code, details = fleet.run(lambda: fleet.connect(chunks))
        record(fleet, "AgentService/Connect (bytes)", code, details, client_wrote_late=True)

    fuzz()
    assert_still_serving(fleet)


# -- afterwards ---------------------------------------------------------------------------


def assert_still_serving(fleet: Fleet) -> None:
    """Health says SERVING, and a job submitted to a fresh dataplane can be read back."""
    fleet.run(lambda: _still_serving(fleet))
    fleet.run(lambda: _state_holds_together(fleet))


async def _still_serving(fleet: Fleet) -> None:
    assert fleet.channel is not None
    health = health_pb2_grpc.HealthStub(fleet.channel)
    answer = await health.Check(health_pb2.HealthCheckRequest(), timeout=5)
    assert answer.status == health_pb2.HealthCheckResponse.SERVING
    agent = FakeAgent(fleet.port, "sanity-dp", [gpu_pool("a100", model="A100")])
    try:
        await agent.join()
        job = await fleet.submit(job_spec(gpus=1, model="A100", routing=P.RoutingHints(
            pin_dataplane="sanity-dp")))
        raw = await fleet.unary("/fleet.v1.JobService/Get", jobs_pb2.GetJobRequest(job_id=job.id))
        assert isinstance(raw, bytes)
        assert P.Job.FromString(raw).spec.routing.pin_dataplane == "sanity-dp"
    finally:
        await agent.close()


async def _state_holds_together(fleet: Fleet) -> None:
    """Listed jobs (the newest GET_EACH read one by one) against the registry's rows."""
    listed: list[types_pb2.Job] = []
    token = ""
    while True:
        raw = await fleet.unary(
            "/fleet.v1.JobService/List", jobs_pb2.ListJobsRequest(page_size=1000, page_token=token)
        )
        assert isinstance(raw, bytes)
        page = jobs_pb2.ListJobsResponse.FromString(raw)
        listed += page.jobs
        token = page.next_page_token
        if not token:
            break
    valid_phases = {v.number for v in P.JobPhase.DESCRIPTOR.values} - {0}
    for job in listed[:GET_EACH]:
        raw = await fleet.unary("/fleet.v1.JobService/Get", jobs_pb2.GetJobRequest(job_id=job.id))
        assert isinstance(raw, bytes)
        got = P.Job.FromString(raw)
        assert got.phase in valid_phases, got
        assert all(a.job_id == job.id for a in got.attempts)
    async with fleet.cp.database.read() as session:
        job_rows = {row.id: row for row in await session.scalars(sa.select(JobRow))}
        attempts = list(await session.scalars(sa.select(AttemptRow)))
    assert {job.id for job in listed} == set(job_rows)
    assert all(row.phase in {"queued", "scheduled", "running", "succeeded", "failed",
                             "cancelled"} for row in job_rows.values())
    assert all(a.job_id in job_rows for a in attempts), "an attempt without its job"
    live: dict[str, int] = {}
    for attempt in attempts:
        if attempt.phase in ("pending", "starting", "running"):
            live[attempt.job_id] = live.get(attempt.job_id, 0) + 1
    assert all(count == 1 for count in live.values()), f"a job with two live attempts: {live}"
