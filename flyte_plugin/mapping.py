"""Pure translations between Flyte's vocabulary and the fleet's (no I/O, no flytekit).

- GPU device names (flytekit's ``accelerator=``) to the fleet's GPU models.
- A rendered ``pyflyte-execute`` command back to Flyte's placeholders, which the agent renders
  again to its own regional store.
- Kubernetes resource quantities to the fleet's units.
- Routing hints that crossed gRPC as a protobuf Struct (where every number is a float).
- The idempotency key of one Flyte task attempt.
- A fleet job's phase (and its last attempt's reason) to a Flyte task phase.
"""

# flytekit and flyteidl ship no type information (no py.typed): their names are Any here.
from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation

from fleet.v1 import types_pb2
from flyteidl.core.execution_pb2 import TaskExecution  # type: ignore[import-untyped]

# flytekit.extras.accelerators device names to the fleet's GPU model names, with the GPU
# memory a device name implies (0: any). Device names not listed pass through upper-cased
# without the vendor prefix: "nvidia-b200" -> "B200", "amd-mi300x" -> "MI300X".
KNOWN_DEVICES: dict[str, tuple[str, int]] = {
    "nvidia-h100": ("H100", 0),
    "nvidia-h100-80gb": ("H100", 80),
    "nvidia-h100-mega-80gb": ("H100", 80),
    "nvidia-h200": ("H200", 0),
    "nvidia-tesla-a100": ("A100", 0),
    "nvidia-a100-80gb": ("A100", 80),
    "nvidia-l4": ("L4", 0),
    "nvidia-l4-vws": ("L4", 0),
    "nvidia-l40s": ("L40S", 0),
    "nvidia-a10g": ("A10G", 0),
    "nvidia-tesla-t4": ("T4", 0),
    "nvidia-tesla-v100": ("V100", 0),
    "nvidia-tesla-p100": ("P100", 0),
    "nvidia-tesla-p4": ("P4", 0),
    "nvidia-tesla-k80": ("K80", 0),
    "nvidia-tesla-m60": ("M60", 0),
    "nvidia-rtx-pro-6000": ("RTX-PRO-6000", 0),
}
_VENDOR_PREFIXES = ("nvidia-tesla-", "nvidia-", "amd-instinct-", "amd-", "intel-")


@dataclass(frozen=True)
class GpuModel:
    model: str
    min_memory_gb: int = 0


def gpu_model_for_device(device: str) -> GpuModel:
    """The fleet's GPU model for a flytekit accelerator device name ("" for none)."""
    name = device.strip().lower()
    if not name:
        return GpuModel("")
    if name in KNOWN_DEVICES:
        model, memory_gb = KNOWN_DEVICES[name]
        return GpuModel(model, memory_gb)
    for prefix in _VENDOR_PREFIXES:
        if name.startswith(prefix) and len(name) > len(prefix):
            name = name[len(prefix) :]
            break
    return GpuModel(name.upper())


# The pyflyte-execute flags whose values flytekit renders from these Flyte placeholders.
PLACEHOLDER_FLAGS: dict[str, str] = {
    "--inputs": "{{.input}}",
    "--output-prefix": "{{.outputPrefix}}",
    "--raw-output-data-prefix": "{{.rawOutputDataPrefix}}",
    "--checkpoint-path": "{{.checkpointOutputPrefix}}",
    "--prev-checkpoint": "{{.prevCheckpointPrefix}}",
}


def retemplate_command(args: Sequence[str]) -> list[str]:
    """The command with every storage location put back to its Flyte placeholder.

    A locally run task arrives rendered to a local temporary prefix (flytekit's
    render_task_template); the dataplane's agent must render it to its own regional store
    instead. A template that still has its placeholders comes out unchanged.
    """
    command: list[str] = []
    expecting: str | None = None
    for arg in args:
        if expecting is not None:
            command.append(expecting)
            expecting = None
            continue
        flag, equals, _value = arg.partition("=")
        if equals and flag in PLACEHOLDER_FLAGS:
            command.append(f"{flag}={PLACEHOLDER_FLAGS[flag]}")
            continue
        command.append(arg)
        expecting = PLACEHOLDER_FLAGS.get(arg)
    return command


_QUANTITY = re.compile(r"^\s*([0-9.eE+-]+)\s*([A-Za-z]*)\s*$")
_SUFFIXES: dict[str, Decimal] = {
    "": Decimal(1),
    "m": Decimal("0.001"),
    "k": Decimal(10) ** 3,
    "K": Decimal(10) ** 3,
    "M": Decimal(10) ** 6,
    "G": Decimal(10) ** 9,
    "T": Decimal(10) ** 12,
    "P": Decimal(10) ** 15,
    "Ki": Decimal(2) ** 10,
    "Mi": Decimal(2) ** 20,
    "Gi": Decimal(2) ** 30,
    "Ti": Decimal(2) ** 40,
    "Pi": Decimal(2) ** 50,
}


def quantity(value: str, what: str) -> Decimal:
    """A Kubernetes quantity ("500m", "2", "1.5Gi", "8G") as a number."""
    match = _QUANTITY.match(value)
    suffix = match.group(2) if match else ""
    if match is None or suffix not in _SUFFIXES:
        raise ValueError(f"{what}: {value!r} is not a resource quantity (e.g. 2, 500m, 16Gi)")
    try:
        number = Decimal(match.group(1))
    except InvalidOperation:
        raise ValueError(f"{what}: {value!r} is not a resource quantity") from None
    if number < 0:
        raise ValueError(f"{what}: {value!r} must not be negative")
    return number * _SUFFIXES[suffix]


def cpu_millis(value: str) -> int:
    return math.ceil(quantity(value, "cpu") * 1000)


def memory_bytes(value: str) -> int:
    return math.ceil(quantity(value, "memory"))


def gpu_count(value: str) -> int:
    count = quantity(value, "gpu")
    if count != count.to_integral_value():
        raise ValueError(f"gpu: {value!r} must be a whole number of GPUs")
    return int(count)


# -- routing hints ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Hints:
    """Fleet task-config hints after the trip through a protobuf Struct, normalised."""

    labels: dict[str, str]
    origin_region: str = ""
    priority: int = 0
    allow_spot: bool | None = None
    pin_dataplane: str = ""


def whole_number(value: object, field: str) -> int:
    """An int, also when it arrives as a float (protobuf Struct numbers are doubles)."""
    if isinstance(value, bool):
        raise ValueError(f"{field}: must be a whole number (got {value!r})")
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    raise ValueError(f"{field}: must be a whole number (got {value!r})")


def hints_from_custom(custom: Mapping[str, object] | None) -> Hints:
    """Read the task template's custom field as written by FleetTask.get_custom()."""
    custom = custom or {}
    labels = custom.get("labels") or {}
    if not isinstance(labels, Mapping):
        raise ValueError(f"labels: must be a mapping of strings (got {labels!r})")
    allow_spot = custom.get("allow_spot")
    if allow_spot is not None and not isinstance(allow_spot, bool):
        raise ValueError(f"allow_spot: must be true, false or unset (got {allow_spot!r})")
    priority = custom.get("priority")
    return Hints(
        labels={str(key): _label_value(value) for key, value in labels.items()},
        origin_region=str(custom.get("origin_region") or ""),
        priority=0 if priority is None else whole_number(priority, "priority"),
        allow_spot=allow_spot,
        pin_dataplane=str(custom.get("pin_dataplane") or ""),
    )


def _label_value(value: object) -> str:
    # A label typed as a number in Python came back as a float: "3.0" would surprise.
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


# -- idempotency -----------------------------------------------------------------------------

MAX_CLIENT_KEY = 256


def client_key(project: str, domain: str, execution: str, node_id: str, retry: int) -> str:
    """The key under which the control plane keeps one Flyte task attempt's job.

    The same Flyte attempt (execution, node, retry) always maps to the same job, so a
    repeated create (propeller retrying a timed-out call) does not start a second run; a
    Flyte retry (a new retry attempt) is a new job.
    """
    key = f"flyte/{project}/{domain}/{execution}/{node_id}/{retry}"
    if len(key) <= MAX_CLIENT_KEY:
        return key
    digest = hashlib.sha256(key.encode()).hexdigest()
    return f"flyte/{project}/{domain}/{execution[:64]}/sha256:{digest}"


# -- phases ----------------------------------------------------------------------------------

# Endings that are the infrastructure's fault, not the task's: Flyte retries them as system
# errors with a new retry attempt (the fleet itself does not retry: its budget is 0).
INFRASTRUCTURE_REASONS = frozenset(
    {"DataplaneLost", "AgentLostAttempt", "RunnerVanished", "SystemError"}
)

_WAITING: dict[types_pb2.JobPhase.ValueType, TaskExecution.Phase.ValueType] = {
    # No placement yet: the fleet waits for capacity that fits (its message says why).
    types_pb2.JOB_PHASE_QUEUED: TaskExecution.WAITING_FOR_RESOURCES,
    # Placed on a dataplane; its agent has not started the task yet.
    types_pb2.JOB_PHASE_SCHEDULED: TaskExecution.QUEUED,
}


def lost_to_infrastructure(last_attempt: types_pb2.Attempt | None) -> bool:
    if last_attempt is None:
        return False
    return (
        last_attempt.phase == types_pb2.ATTEMPT_PHASE_LOST
        or last_attempt.reason in INFRASTRUCTURE_REASONS
    )


def flyte_phase(job: types_pb2.Job) -> TaskExecution.Phase.ValueType:
    """The Flyte task phase of a fleet job."""
    if job.phase in _WAITING:
        return _WAITING[job.phase]
    if job.phase == types_pb2.JOB_PHASE_RUNNING:
        return TaskExecution.RUNNING
    if job.phase == types_pb2.JOB_PHASE_SUCCEEDED:
        return TaskExecution.SUCCEEDED
    if job.phase == types_pb2.JOB_PHASE_CANCELLED:
        return TaskExecution.ABORTED
    if job.phase == types_pb2.JOB_PHASE_FAILED:
        last = job.attempts[-1] if job.attempts else None
        if lost_to_infrastructure(last):
            return TaskExecution.RETRYABLE_FAILED
        return TaskExecution.FAILED
    raise ValueError(f"job {job.id} has an unknown phase {job.phase}")
