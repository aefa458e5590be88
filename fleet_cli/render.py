"""How fleet objects look on a terminal (rich tables) and to scripts (JSON).

Everything here is pure: functions take messages (and `now` where an age is shown) and
return text or rich renderables; the commands print them.
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

from fleet.v1 import admin_pb2, types_pb2
from google.protobuf.descriptor import EnumDescriptor
from google.protobuf.json_format import MessageToDict
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp
from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

NONE = "-"


# -- words ----------------------------------------------------------------------------------


def enum_word(descriptor: EnumDescriptor, number: int) -> str:
    """JOB_PHASE_QUEUED -> 'queued', PURCHASE_TYPE_ON_DEMAND -> 'on_demand'."""
    value = descriptor.values_by_number.get(number)
    if value is None:
        return str(number)
    prefix = descriptor.values_by_number[0].name.removesuffix("UNSPECIFIED")
    return value.name.removeprefix(prefix).lower()


def job_phase_word(phase: int) -> str:
    return enum_word(types_pb2.JobPhase.DESCRIPTOR, phase)


def attempt_phase_word(phase: int) -> str:
    return enum_word(types_pb2.AttemptPhase.DESCRIPTOR, phase)


def health_word(health: int) -> str:
    return enum_word(types_pb2.DataplaneHealth.DESCRIPTOR, health)


def state_text(dataplane: admin_pb2.Dataplane, now: datetime) -> str:
    """active, cordoned, draining (12m left), drained; with the operator's reason."""
    word = enum_word(admin_pb2.DataplaneState.DESCRIPTOR, dataplane.state)
    if dataplane.state == admin_pb2.DATAPLANE_STATE_DRAINING:
        deadline = dataplane.drain_deadline.ToDatetime(tzinfo=UTC)
        left = max(timedelta(0), deadline - now)
        word += f" ({duration_text(left)} left)" if left else " (deadline passed)"
    return f"{word}: {dataplane.cordon_reason}" if dataplane.cordon_reason else word


def purchase_word(purchase_type: int) -> str:
    return enum_word(types_pb2.PurchaseType.DESCRIPTOR, purchase_type)


# -- times, sizes ---------------------------------------------------------------------------


def _is_set(ts: Timestamp) -> bool:
    return ts.seconds != 0 or ts.nanos != 0


def timestamp_text(ts: Timestamp) -> str:
    """ISO-8601 in UTC to the second ('2025-01-02T03:04:05Z'); '-' when unset."""
    if not _is_set(ts):
        return NONE
    moment = ts.ToDatetime(tzinfo=UTC)
    return moment.isoformat(timespec="seconds").replace("+00:00", "Z")


def duration_text(span: timedelta) -> str:
    """'450ms', '12s', '3m 4s', '2h 5m', '3d 4h': the two largest units."""
    seconds = span.total_seconds()
    if seconds < 0:
        return NONE
    if seconds < 1:
        return f"{round(seconds * 1000)}ms"
    if seconds < 60:
        return f"{seconds:.0f}s" if seconds >= 10 else f"{seconds:.1f}s".replace(".0s", "s")
    whole = int(seconds)
    days, rest = divmod(whole, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    parts = [(days, "d"), (hours, "h"), (minutes, "m"), (secs, "s")]
    while parts[0][0] == 0:
        parts.pop(0)
    major, minor = parts[0], parts[1]
    return f"{major[0]}{major[1]}" + (f" {minor[0]}{minor[1]}" if minor[0] else "")


def age_text(ts: Timestamp, now: datetime) -> str:
    """'12s ago'; '-' when unset."""
    if not _is_set(ts):
        return NONE
    return f"{duration_text(now - ts.ToDatetime(tzinfo=UTC))} ago"


def run_time(job: types_pb2.Job, now: datetime) -> str:
    """How long the job ran (or has been running)."""
    if not _is_set(job.started_at):
        return NONE
    end = job.finished_at.ToDatetime(tzinfo=UTC) if _is_set(job.finished_at) else now
    return duration_text(end - job.started_at.ToDatetime(tzinfo=UTC))


def bytes_text(count: int) -> str:
    """17179869184 -> '16Gi'; keeps exact values exact, else one decimal."""
    for suffix, factor in (("Ei", 2**60), ("Pi", 2**50), ("Ti", 2**40), ("Gi", 2**30),
                           ("Mi", 2**20), ("Ki", 2**10)):  # fmt: skip
        if count >= factor:
            value = count / factor
            return f"{value:.0f}{suffix}" if value == int(value) else f"{value:.1f}{suffix}"
    return f"{count}B"


# -- one-line summaries ---------------------------------------------------------------------


def resources_text(resources: types_pb2.Resources) -> str:
    parts = []
    if resources.gpus:
        gpu = f"{resources.gpus}x {resources.gpu_model or 'any GPU'}"
        if resources.min_gpu_memory_gb:
            gpu += f" >={resources.min_gpu_memory_gb}GB"
        parts.append(gpu)
    if resources.cpu_millis:
        parts.append(f"{resources.cpu_millis}m CPU")
    if resources.memory_bytes:
        parts.append(f"{bytes_text(resources.memory_bytes)} memory")
    return ", ".join(parts) or NONE


def pool_text(pool: types_pb2.Pool) -> str:
    """'h100: 6/8 H100 80GB reserved $2.10' (free/total GPUs, price per GPU-hour)."""
    return (
        f"{pool.name}: {pool.gpu_free}/{pool.gpu_total} {pool.gpu_model} "
        f"{pool.gpu_memory_gb}GB {purchase_word(pool.purchase_type)} "
        f"${pool.price_per_gpu_hour:.2f}"
    )


def mapping_text(mapping: dict[str, str]) -> str:
    return ", ".join(f"{k}={v}" for k, v in sorted(mapping.items())) or NONE


def placement_text(dataplane: str, pool: str) -> str:
    if not dataplane:
        return NONE
    return f"{dataplane}/{pool}" if pool else dataplane


def event_line(event: types_pb2.JobEvent) -> str:
    """'2025-01-02T03:04:05Z  started    running    a-1  message'."""
    fields = [
        timestamp_text(event.at),
        f"{event.kind or NONE:<10}",
        f"{job_phase_word(event.phase):<10}",
        event.attempt_id or NONE,
    ]
    if event.message:
        fields.append(event.message)
    return "  ".join(fields)


# -- tables ---------------------------------------------------------------------------------


def _cells(*values: str) -> list[Text]:
    # Text, not str: rich would read '[...]' in a command or message as markup.
    return [Text(value) for value in values]


def _fields(rows: Sequence[tuple[str, str]]) -> Table:
    """Label/value pairs, one a line, without borders."""
    fields = Table(show_header=False, box=None, pad_edge=False)
    fields.add_column(style="bold")
    fields.add_column(overflow="fold")
    for label, value in rows:
        fields.add_row(*_cells(label, value))
    return fields


def job_detail(job: types_pb2.Job, now: datetime) -> RenderableType:
    spec = job.spec
    rows = [
        ("id", job.id),
        ("name", spec.name or NONE),
        ("project", f"{spec.project}/{spec.domain}" if spec.domain else spec.project),
        ("phase", job_phase_word(job.phase)),
        ("message", job.message or NONE),
        ("dataplane", placement_text(job.dataplane, job.pool)),
        ("resources", resources_text(spec.resources)),
        ("command", shlex.join(spec.command) or NONE),
        ("image", spec.image or NONE),
        ("labels", mapping_text(dict(spec.labels))),
        ("retries", f"{job.retries_used} of {job.retry_budget} used"),
        ("created", timestamp_text(job.created_at)),
        ("started", timestamp_text(job.started_at)),
        ("finished", timestamp_text(job.finished_at)),
        ("run time", run_time(job, now)),
    ]
    if job.client_key:
        rows.insert(1, ("client key", job.client_key))
    fields = _fields(rows)
    if not job.attempts:
        return fields
    return Group(fields, Text(""), attempts_table(job.attempts, now))


def attempts_table(attempts: Sequence[types_pb2.Attempt], now: datetime) -> Table:
    table = Table(title="attempts", title_justify="left")
    for column in ("attempt", "dataplane", "phase", "reason", "exit", "started", "ran"):
        table.add_column(column)
    for attempt in attempts:
        started = attempt.started_at.ToDatetime(tzinfo=UTC) if _is_set(attempt.started_at) else None
        end = attempt.finished_at.ToDatetime(tzinfo=UTC) if _is_set(attempt.finished_at) else now
        table.add_row(
            *_cells(
                attempt.id,
                placement_text(attempt.dataplane, attempt.pool),
                attempt_phase_word(attempt.phase),
                attempt.reason or NONE,
                str(attempt.exit_code) if attempt.HasField("exit_code") else NONE,
                timestamp_text(attempt.started_at),
                duration_text(end - started) if started else NONE,
            )
        )
    return table


def jobs_table(jobs: Sequence[types_pb2.Job], now: datetime) -> Table:
    table = Table()
    for column in ("job", "project", "name", "phase", "dataplane", "gpus", "created", "ran"):
        table.add_column(column)
    table.add_column("message", overflow="fold")
    for job in jobs:
        resources = job.spec.resources
        table.add_row(
            *_cells(
                job.id,
                job.spec.project,
                job.spec.name or NONE,
                job_phase_word(job.phase),
                placement_text(job.dataplane, job.pool),
                f"{resources.gpus}x {resources.gpu_model}".strip() if resources.gpus else NONE,
                timestamp_text(job.created_at),
                run_time(job, now),
                job.message,
            )
        )
    return table


def dataplanes_table(dataplanes: Sequence[admin_pb2.Dataplane], now: datetime) -> Table:
    table = Table()
    for column in ("dataplane", "region", "cloud", "state", "health", "connected", "heartbeat"):
        table.add_column(column)
    table.add_column("pools (free/total GPUs)")
    table.add_column("active", justify="right")
    for dataplane in dataplanes:
        table.add_row(
            *_cells(
                dataplane.name,
                dataplane.region,
                dataplane.cloud,
                state_text(dataplane, now),
                health_word(dataplane.health),
                "yes" if dataplane.connected else "no",
                age_text(dataplane.last_heartbeat_at, now),
                "\n".join(pool_text(pool) for pool in dataplane.pools) or NONE,
                str(dataplane.active_attempts),
            )
        )
    return table


def keys_table(keys: Sequence[admin_pb2.ApiKey], now: datetime) -> Table:
    table = Table()
    for column in ("id", "name", "role", "projects", "created", "by", "revoked"):
        table.add_column(column)
    for key in keys:
        table.add_row(*_cells(
            key.id, key.name, key.role, ", ".join(key.projects),
            age_text(key.created_at, now), key.created_by,
            age_text(key.revoked_at, now) if _is_set(key.revoked_at) else NONE,
        ))
    return table


def audit_table(events: Sequence[admin_pb2.AuditEvent], now: datetime) -> Table:
    table = Table()
    for column in ("when", "actor", "action", "target"):
        table.add_column(column)
    table.add_column("detail", overflow="fold")
    for event in events:
        table.add_row(*_cells(
            timestamp_text(event.at), event.actor, event.action, event.target,
            event.detail or NONE,
        ))
    return table


# -- routing policy -------------------------------------------------------------------------

CHOSEN = "✓ chosen"
EXCLUDED = "✗ excluded"


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}" if number == 1 else f"{number} {noun}s"


def policy_version_text(version: int) -> str:
    return f"{version} (built-in default)" if version == 0 else str(version)


def policy_versions_table(
    versions: Sequence[admin_pb2.PolicyVersion], current: int
) -> RenderableType:
    """Newest first as given; '*' marks the version in force."""
    if not versions:
        return Text("no policy applied yet: the built-in default is in force")
    table = Table()
    for column in ("current", "version", "created", "author"):
        table.add_column(column)
    table.add_column("comment", overflow="fold")
    for version in versions:
        table.add_row(
            *_cells(
                "*" if version.version == current else "",
                policy_version_text(version.version),
                timestamp_text(version.created_at),
                version.author or NONE,
                version.comment or NONE,
            )
        )
    return table


def dry_run_report(response: admin_pb2.ApplyPolicyResponse) -> RenderableType:
    """How many jobs were replayed, and each one that would route differently."""
    replayed = f"replayed {_count(response.replayed, 'recent job')}"
    if not response.changes:
        return Text(f"{replayed}; no job would route differently")
    table = Table()
    for column in ("job", "project", "name", "before", "after"):
        table.add_column(column)
    table.add_column("why", overflow="fold")
    for change in response.changes:
        table.add_row(
            *_cells(
                change.job_id,
                change.project,
                change.name or NONE,
                change.before or NONE,
                change.after or NONE,
                change.why or NONE,
            )
        )
    summary = f"{replayed}; {_count(len(response.changes), 'job')} would route differently:"
    return Group(Text(summary), table)


def explanation(explanation: admin_pb2.Explanation) -> RenderableType:
    """The decision in a few lines, then every candidate pool: the chosen one first."""
    rows = [
        ("summary", explanation.summary or NONE),
        ("rule", explanation.rule or NONE),
        ("priority", str(explanation.priority)),
        ("policy version", policy_version_text(explanation.policy_version)),
    ]
    if explanation.job_id:
        rows.insert(0, ("job", explanation.job_id))
    fields = _fields(rows)
    if not explanation.candidates:
        return Group(fields, Text(""), Text("no candidate pools: no dataplane reports any"))
    table = Table()
    for column in ("dataplane", "pool", "region", "tier", "decision"):
        table.add_column(column)
    table.add_column("reason", overflow="fold")
    # sorted() is stable: the excluded keep the server's order (and grouping).
    for candidate in sorted(explanation.candidates, key=lambda c: not c.chosen):
        table.add_row(
            *_cells(
                candidate.dataplane,
                candidate.pool or NONE,
                candidate.region or NONE,
                purchase_word(candidate.purchase_type) if candidate.purchase_type else NONE,
                CHOSEN if candidate.chosen else EXCLUDED,
                candidate.reason or NONE,
            )
        )
    return Group(fields, Text(""), table)


# -- JSON -----------------------------------------------------------------------------------


def to_dict(message: Message) -> dict[str, object]:
    return MessageToDict(message, preserving_proto_field_name=True)


def to_json(value: Message | Sequence[Message]) -> str:
    """One message as a JSON object, a sequence as a JSON array."""
    if isinstance(value, Message):
        return json.dumps(to_dict(value), indent=2)
    return json.dumps([to_dict(message) for message in value], indent=2)


def to_json_line(message: Message) -> str:
    """One message on one line, for streams (JSON Lines)."""
    return json.dumps(to_dict(message), separators=(",", ":"))
