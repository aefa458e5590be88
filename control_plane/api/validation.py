"""Checks on what callers and agents send, with messages that name the field and the reason.

Pure functions: they return the problems found (None or an empty list when the input is
valid); the numbers are in limits.py. `check` is the one call a servicer makes with them.
Values are echoed clipped (`shown`), so that a refusal stays small whatever was sent.
"""

from __future__ import annotations

import base64
import math
import re
from collections.abc import Iterable, Mapping, Sequence, Sized
from datetime import UTC, datetime

import grpc
import yaml
from fleet.v1 import admin_pb2, agent_pb2, jobs_pb2, replica_pb2, types_pb2
from google.protobuf import duration_pb2, timestamp_pb2

from control_plane.api.errors import Context, refuse
from control_plane.domain.limits import (
    MAX_AGENT_VERSION,
    MAX_ARG_BYTES,
    MAX_ATTEMPTS,
    MAX_AUTHOR,
    MAX_CLIENT_KEY,
    MAX_COMMAND_ARGS,
    MAX_COMMAND_BYTES,
    MAX_COMMENT,
    MAX_CPU_MILLIS,
    MAX_CREDENTIAL,
    MAX_DELIVER_MESSAGES,
    MAX_ENV_BYTES,
    MAX_ENV_ENTRIES,
    MAX_ENV_NAME,
    MAX_ENV_VALUE_BYTES,
    MAX_GPU_MEMORY_GB,
    MAX_GPU_MODEL,
    MAX_GPUS,
    MAX_ID,
    MAX_IMAGE,
    MAX_INPUTS_BYTES,
    MAX_INTERCONNECT,
    MAX_JOB_NAME,
    MAX_LABEL_NAME,
    MAX_LABEL_VALUE,
    MAX_LABELS,
    MAX_LIST_PHASES,
    MAX_LOG_CHUNK_BYTES,
    MAX_LOG_TAIL,
    MAX_MEMORY_BYTES,
    MAX_NAME,
    MAX_OUTPUTS_BYTES,
    MAX_PAGE_TOKEN,
    MAX_POLICY_BYTES,
    MAX_POLICY_DEPTH,
    MAX_POLICY_VERSION,
    MAX_POOL_GPUS,
    MAX_POOLS,
    MAX_PRICE_PER_GPU_HOUR,
    MAX_REASON,
    MAX_REGION,
    MAX_RETRY_BUDGET,
    MAX_SEQ,
    MAX_SUBDOMAIN,
    MAX_TIMEOUT,
    MAX_UPDATE_STATUSES,
)

# fullmatch everywhere: re's "$" also matches before a trailing newline.
DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
LABEL_NAME = re.compile(r"[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?")
ID = re.compile(r"[A-Za-z0-9._-]+")

DEFAULT_DOMAIN = "development"
DEFAULT_RETRY_BUDGET = 2
# The proto's own range of a Duration (about 10,000 years).
MAX_DURATION_S = 315_576_000_000
NANOS = 1_000_000_000

Problems = Sequence[str | None]


async def check(context: Context, problems: Problems) -> None:
    """Refuse the call with INVALID_ARGUMENT naming every problem, if there is one."""
    if any(problems):
        await refuse(context, grpc.StatusCode.INVALID_ARGUMENT, joined(problems))


def shown(value: str, limit: int = 40) -> str:
    return repr(value if len(value) <= limit else value[:limit] + "…")


def utf8_len(value: str) -> int:
    return len(value.encode("utf-8", "replace"))


# -- single values ------------------------------------------------------------------------


def name_problem(field: str, value: str, *, required: bool = True) -> str | None:
    if not value:
        return f"{field}: required" if required else None
    if len(value) > MAX_NAME or not DNS_LABEL.fullmatch(value):
        return (
            f"{field}: {shown(value)} is not a valid name (lowercase letters, digits and '-', "
            "at most 63, starting and ending with a letter or digit)"
        )
    return None


def text_problem(field: str, value: str, max_chars: int, *, required: bool = False) -> str | None:
    if not value:
        return f"{field}: required" if required else None
    if len(value) > max_chars:
        return f"{field}: longer than {max_chars} characters ({len(value)})"
    if "\x00" in value:
        return f"{field}: contains a NUL character"
    return None


def id_problem(field: str, value: str, *, required: bool = True) -> str | None:
    if not value:
        return f"{field}: required" if required else None
    if len(value) > MAX_ID or not ID.fullmatch(value):
        return (
            f"{field}: {shown(value)} is not an id (letters, digits, '.', '_' and '-', "
            f"at most {MAX_ID})"
        )
    return None


def most_problem(
    field: str, value: int | float, maximum: int | float, unit: str = ""
) -> str | None:
    if value > maximum:
        return f"{field}: {value}{unit} is more than {maximum}{unit}"
    return None


def count_problem(field: str, items: Sized, maximum: int) -> str | None:
    if len(items) > maximum:
        return f"{field}: {len(items)} entries, at most {maximum}"
    return None


def duration_problem(field: str, value: duration_pb2.Duration) -> str | None:
    """A Duration the proto allows (so that it converts): range, and nanos of the same sign."""
    seconds, nanos = value.seconds, value.nanos
    if abs(seconds) > MAX_DURATION_S or abs(nanos) >= NANOS or seconds * nanos < 0:
        return f"{field}: not a valid duration ({seconds} s, {nanos} ns)"
    return None


def timestamp_problem(field: str, value: timestamp_pb2.Timestamp) -> str | None:
    """A Timestamp the proto allows: years 1 to 9999, nanos 0 to 999,999,999."""
    if not -62_135_596_800 <= value.seconds <= 253_402_300_799 or not 0 <= value.nanos < NANOS:
        return f"{field}: not a valid time ({value.seconds} s, {value.nanos} ns)"
    return None


def label_problems(field: str, labels: Mapping[str, str]) -> list[str | None]:
    """Kubernetes label rules: key [prefix/]name, prefix a DNS subdomain of at most 253, name
    and value at most 63 of letters, digits, '-', '_', '.', starting and ending alphanumeric
    (a value may be empty)."""
    if len(labels) > MAX_LABELS:
        return [count_problem(field, labels, MAX_LABELS)]
    problems: list[str | None] = []
    for key, value in labels.items():
        prefix, slash, name = key.rpartition("/")
        if not (
            len(name) <= MAX_LABEL_NAME
            and LABEL_NAME.fullmatch(name)
            and (not slash or (len(prefix) <= MAX_SUBDOMAIN and DNS_SUBDOMAIN.fullmatch(prefix)))
        ):
            problems.append(
                f"{field}: {shown(key)} is not a valid label key ([prefix/]name: name at most "
                "63 letters, digits, '-', '_' or '.', starting and ending with a letter or "
                "digit; prefix a DNS subdomain)"
            )
        elif value and (len(value) > MAX_LABEL_VALUE or not LABEL_NAME.fullmatch(value)):
            problems.append(
                f"{field}[{key}]: {shown(value)} is not a valid label value (at most 63 "
                "letters, digits, '-', '_' or '.', starting and ending with a letter or digit)"
            )
    return problems


# -- JobService ---------------------------------------------------------------------------


def spec_problems(
    spec: types_pb2.JobSpec, client_key: str = "", *, what_if: bool = False
) -> list[str]:
    """Problems of a job spec (what_if: for an explanation, where no command is needed)."""
    resources = spec.resources
    problems: list[str | None] = [
        name_problem("spec.project", spec.project),
        name_problem("spec.domain", spec.domain, required=False),
        name_problem("routing.pin_dataplane", spec.routing.pin_dataplane, required=False),
        text_problem("routing.origin_region", spec.routing.origin_region, MAX_REGION),
        text_problem("spec.name", spec.name, MAX_JOB_NAME),
        text_problem("spec.image", spec.image, MAX_IMAGE),
        text_problem("client_key", client_key, MAX_CLIENT_KEY),
        text_problem("resources.gpu_model", resources.gpu_model, MAX_GPU_MODEL),
        most_problem("resources.gpus", resources.gpus, MAX_GPUS),
        most_problem(
            "resources.min_gpu_memory_gb", resources.min_gpu_memory_gb, MAX_GPU_MEMORY_GB
        ),
        most_problem("resources.cpu_millis", resources.cpu_millis, MAX_CPU_MILLIS),
        most_problem("resources.memory_bytes", resources.memory_bytes, MAX_MEMORY_BYTES),
        *([] if what_if else _command_problems(spec.command)),
        *_env_problems(spec.env),
        *label_problems("spec.labels", spec.labels),
    ]
    if resources.gpu_model and resources.gpus == 0:
        problems.append("resources.gpu_model: given, but resources.gpus is 0")
    if spec.service_account and (
        len(spec.service_account) > MAX_SUBDOMAIN
        or not DNS_SUBDOMAIN.fullmatch(spec.service_account)
    ):
        problems.append(
            f"spec.service_account: {shown(spec.service_account)} is not a valid Kubernetes "
            "name (lowercase letters, digits, '-' and '.', at most 253)"
        )
    if spec.HasField("timeout"):
        problems.append(_timeout_problem(spec.timeout))
    if spec.HasField("retry_budget"):
        problems.append(most_problem("spec.retry_budget", spec.retry_budget, MAX_RETRY_BUDGET))
    if len(spec.inputs) > MAX_INPUTS_BYTES:
        problems.append(
            f"spec.inputs: {len(spec.inputs)} bytes is more than {MAX_INPUTS_BYTES} "
            "(4 MiB); pass large data by URI (FlyteFile, FlyteDirectory), not by value"
        )
    return [p for p in problems if p]


def _command_problems(command: Sequence[str]) -> list[str | None]:
    if not command:
        return ["spec.command: required (the program and its arguments to run)"]
    if len(command) > MAX_COMMAND_ARGS:
        return [f"spec.command: {len(command)} arguments, at most {MAX_COMMAND_ARGS}"]
    problems: list[str | None] = []
    if not command[0]:
        problems.append("spec.command[0]: the program to run is empty")
    sizes = [utf8_len(arg) for arg in command]
    for index, (arg, size) in enumerate(zip(command, sizes, strict=True)):
        if size > MAX_ARG_BYTES:
            problems.append(f"spec.command[{index}]: {size} bytes, at most {MAX_ARG_BYTES}")
        elif "\x00" in arg:
            problems.append(f"spec.command[{index}]: contains a NUL character")
    if sum(sizes) > MAX_COMMAND_BYTES:
        problems.append(f"spec.command: {sum(sizes)} bytes in all, at most {MAX_COMMAND_BYTES}")
    return problems


def _env_problems(env: Mapping[str, str]) -> list[str | None]:
    if len(env) > MAX_ENV_ENTRIES:
        return [count_problem("spec.env", env, MAX_ENV_ENTRIES)]
    problems: list[str | None] = []
    total = 0
    for key, value in env.items():
        size = utf8_len(value)
        total += utf8_len(key) + size
        if len(key) > MAX_ENV_NAME or not ENV_NAME.fullmatch(key):
            problems.append(
                f"spec.env: {shown(key)} is not a valid environment variable name "
                f"(letters, digits and '_', not starting with a digit, at most {MAX_ENV_NAME})"
            )
        elif size > MAX_ENV_VALUE_BYTES:
            problems.append(f"spec.env[{key}]: {size} bytes, at most {MAX_ENV_VALUE_BYTES}")
        elif "\x00" in value:
            problems.append(f"spec.env[{key}]: contains a NUL character")
    if total > MAX_ENV_BYTES:
        problems.append(f"spec.env: {total} bytes in all, at most {MAX_ENV_BYTES}")
    return problems


def _timeout_problem(timeout: duration_pb2.Duration) -> str | None:
    if timeout.seconds < 0 or timeout.nanos < 0:
        return "spec.timeout: must not be negative"
    invalid = duration_problem("spec.timeout", timeout)
    if invalid is not None:
        return invalid
    limit = int(MAX_TIMEOUT.total_seconds())
    if timeout.seconds > limit or (timeout.seconds == limit and timeout.nanos > 0):
        return f"spec.timeout: longer than {MAX_TIMEOUT.days} days"
    return None


def list_problems(request: jobs_pb2.ListJobsRequest) -> list[str | None]:
    return [
        name_problem("project", request.project, required=False),
        name_problem("dataplane", request.dataplane, required=False),
        count_problem("phases", request.phases, MAX_LIST_PHASES),
        page_token_problem(request.page_token),
    ]


def page_token_problem(token: str) -> str | None:
    """A token List returned: base64 of 'CREATED_AT|JOB_ID' (see api/jobs.py), whose parts
    the registry can compare (an aware time, an id)."""
    if not token:
        return None
    try:
        if len(token) > MAX_PAGE_TOKEN:
            raise ValueError(token)
        created, job_id = base64.urlsafe_b64decode(token.encode("ascii")).decode().split("|", 1)
        when = datetime.fromisoformat(created)
        if when.tzinfo is None or id_problem("", job_id) is not None:
            raise ValueError(token)
        when.astimezone(UTC)
    except (ValueError, OverflowError):
        return "page_token: not a token this service returned"
    return None


def cancel_problems(request: jobs_pb2.CancelJobRequest) -> list[str | None]:
    return [
        id_problem("job_id", request.job_id),
        text_problem("reason", request.reason, MAX_REASON),
    ]


def watch_problems(request: jobs_pb2.WatchJobRequest) -> list[str | None]:
    return [
        id_problem("job_id", request.job_id),
        most_problem("after_seq", request.after_seq, MAX_SEQ),
    ]


def logs_problems(request: jobs_pb2.JobLogsRequest) -> list[str | None]:
    return [
        id_problem("job_id", request.job_id),
        id_problem("attempt_id", request.attempt_id, required=False),
        most_problem("tail_bytes", request.tail_bytes, MAX_LOG_TAIL),
    ]


# -- AgentService -------------------------------------------------------------------------


def hello_problems(hello: agent_pb2.Hello) -> list[str | None]:
    return [
        name_problem("hello.dataplane", hello.dataplane),
        text_problem("hello.region", hello.region, MAX_REGION, required=True),
        text_problem("hello.cloud", hello.cloud, MAX_REGION),
        text_problem("hello.agent_version", hello.agent_version, MAX_AGENT_VERSION),
        # The credential is never echoed.
        f"hello.credential: longer than {MAX_CREDENTIAL} characters"
        if len(hello.credential) > MAX_CREDENTIAL else None,
        *label_problems("hello.labels", hello.labels),
    ]


def agent_message_problems(message: agent_pb2.AgentMessage) -> list[str | None]:
    """Structural problems of a message after the hello (which messages are allowed when is
    the servicer's business). Free text (reasons, messages) is cut by wire.py instead."""
    kind = message.WhichOneof("body")
    if kind == "heartbeat":
        return _heartbeat_problems(message.heartbeat)
    if kind == "attempt_update":
        update = message.attempt_update
        if problem := count_problem("attempt_update.more", update.more, MAX_UPDATE_STATUSES - 1):
            return [problem]
        problems = _status_problems("attempt_update.status", update.status)
        for index, status in enumerate(update.more):
            problems += _status_problems(f"attempt_update.more[{index}]", status)
        return problems
    if kind == "log_chunk":
        chunk = message.log_chunk
        return [
            id_problem("log_chunk.request_id", chunk.request_id),
            most_problem("log_chunk.data", len(chunk.data), MAX_LOG_CHUNK_BYTES, " bytes"),
        ]
    return []


def _heartbeat_problems(heartbeat: agent_pb2.Heartbeat) -> list[str | None]:
    too_many = [
        count_problem("heartbeat.pools", heartbeat.pools, MAX_POOLS),
        count_problem("heartbeat.attempts", heartbeat.attempts, MAX_ATTEMPTS),
    ]
    if any(too_many):
        return too_many
    problems: list[str | None] = []
    for index, pool in enumerate(heartbeat.pools):
        problems += _pool_problems(f"heartbeat.pools[{index}]", pool)
    seen: set[str] = set()
    for index, status in enumerate(heartbeat.attempts):
        problems += _status_problems(f"heartbeat.attempts[{index}]", status)
        if status.attempt_id in seen:
            # Two reports of one attempt could move it backwards within one transaction.
            problems.append(f"heartbeat.attempts[{index}]: {shown(status.attempt_id)} repeats")
        seen.add(status.attempt_id)
    return problems


def _pool_problems(field: str, pool: types_pb2.Pool) -> list[str | None]:
    price = pool.price_per_gpu_hour
    return [
        name_problem(f"{field}.name", pool.name),
        text_problem(f"{field}.region", pool.region, MAX_REGION),
        text_problem(f"{field}.cloud", pool.cloud, MAX_REGION),
        text_problem(f"{field}.gpu_model", pool.gpu_model, MAX_GPU_MODEL),
        text_problem(f"{field}.interconnect", pool.interconnect, MAX_INTERCONNECT),
        most_problem(f"{field}.gpu_total", pool.gpu_total, MAX_POOL_GPUS),
        most_problem(f"{field}.gpu_memory_gb", pool.gpu_memory_gb, MAX_GPU_MEMORY_GB),
        None if math.isfinite(price) and 0 <= price <= MAX_PRICE_PER_GPU_HOUR else
        f"{field}.price_per_gpu_hour: {price} is not between 0 and {MAX_PRICE_PER_GPU_HOUR:.0f}",
        *label_problems(f"{field}.labels", pool.labels),
    ]


def _status_problems(field: str, status: agent_pb2.AttemptStatus) -> list[str | None]:
    problems = [
        id_problem(f"{field}.attempt_id", status.attempt_id),
        id_problem(f"{field}.job_id", status.job_id, required=False),
        name_problem(f"{field}.pool", status.pool, required=False),
        most_problem(f"{field}.outputs", len(status.outputs), MAX_OUTPUTS_BYTES, " bytes"),
    ]
    for name in ("started_at", "finished_at"):
        if status.HasField(name):
            problems.append(timestamp_problem(f"{field}.{name}", getattr(status, name)))
    return problems


# -- AdminService, PolicyService, ReplicaService ------------------------------------------


def policy_problems(request: admin_pb2.ApplyPolicyRequest) -> list[str | None]:
    size = utf8_len(request.document)
    if size > MAX_POLICY_BYTES:
        document = f"document: {size} bytes, at most {MAX_POLICY_BYTES} (256 KiB)"
    elif _yaml_depth(request.document) > MAX_POLICY_DEPTH:
        document = f"document: nested more than {MAX_POLICY_DEPTH} levels deep"
    else:
        document = None
    return [
        document,
        text_problem("author", request.author, MAX_AUTHOR),
        text_problem("comment", request.comment, MAX_COMMENT),
    ]


def _yaml_depth(document: str) -> int:
    """How deep the document's collections nest, from YAML's tokens (the scanner does not
    recurse; the composer that parse_policy uses does, once per level). Stops counting past
    the limit; a document YAML cannot read counts 0 here and parse_policy says where."""
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    opens = (
        yaml.BlockSequenceStartToken,
        yaml.BlockMappingStartToken,
        yaml.FlowSequenceStartToken,
        yaml.FlowMappingStartToken,
    )
    closes = (yaml.BlockEndToken, yaml.FlowSequenceEndToken, yaml.FlowMappingEndToken)
    depth = deepest = 0
    try:
        for token in yaml.scan(document, Loader=loader):
            if isinstance(token, opens):
                depth += 1
                deepest = max(deepest, depth)
                if deepest > MAX_POLICY_DEPTH:
                    break
            elif isinstance(token, closes):
                depth -= 1
    except yaml.YAMLError:
        return deepest
    return deepest


def version_problem(version: int) -> str | None:
    return most_problem("version", version, MAX_POLICY_VERSION)


def rollback_problems(request: admin_pb2.RollbackPolicyRequest) -> list[str | None]:
    return [version_problem(request.version), text_problem("author", request.author, MAX_AUTHOR)]


def deliver_problems(request: replica_pb2.DeliverRequest) -> list[str | None]:
    return [
        name_problem("dataplane", request.dataplane),
        count_problem("messages", request.messages, MAX_DELIVER_MESSAGES),
    ]


def enroll_problems(request: admin_pb2.EnrollDataplaneRequest) -> list[str | None]:
    return [
        text_problem("region", request.region, MAX_REGION),
        text_problem("cloud", request.cloud, MAX_REGION),
        *label_problems("labels", request.labels),
    ]


def api_key_problems(request: admin_pb2.CreateApiKeyRequest) -> list[str | None]:
    """Bounds around the key rules of api/admin_keys.py (which name the rest)."""
    return [
        text_problem("name", request.name, MAX_AUTHOR),
        text_problem("role", request.role, MAX_NAME),
        count_problem("projects", request.projects, MAX_LABELS),
    ]


def audit_problems(request: admin_pb2.ListAuditEventsRequest) -> list[str | None]:
    return [
        text_problem("actor", request.actor, MAX_AUTHOR),
        text_problem("action", request.action, MAX_AUTHOR),
        text_problem("target", request.target, MAX_AUTHOR),
        timestamp_problem("since", request.since) if request.HasField("since") else None,
    ]


def joined(problems: Iterable[str | None]) -> str:
    return "; ".join(p for p in problems if p)
