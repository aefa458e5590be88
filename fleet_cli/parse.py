"""Pure parsers for what people type on the command line.

Each raises ValueError with a message that says what was wrong and what is accepted; the
CLI names the option in front of it.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from datetime import timedelta
from decimal import Decimal

from fleet.v1 import types_pb2

_DURATION_UNITS_S = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")

# Kubernetes quantity suffixes, plus K and the *B / *iB spellings people also type.
_QUANTITY_FACTORS = {
    "": 1,
    "k": 10**3, "K": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15, "E": 10**18,
    "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60,
}  # fmt: skip
_QUANTITY = re.compile(r"(\d+(?:\.\d+)?)\s*([kKMGTPE]i?)?(B)?")

_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_HOST_PORT = re.compile(r"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+):(\d+)")


def parse_duration(text: str) -> timedelta:
    """'90s', '30m', '2h', '1h30m', '1d', '500ms'; a bare number is seconds. Must be > 0."""
    text = text.strip()
    try:
        seconds = float(text) if re.fullmatch(r"\d+(\.\d+)?", text) else _duration_seconds(text)
    except ValueError:
        raise ValueError(
            f"{text!r} is not a duration (use e.g. 90s, 30m, 2h, 1h30m or 1d)"
        ) from None
    if seconds <= 0:
        raise ValueError(f"{text!r}: a duration must be longer than zero")
    return timedelta(seconds=seconds)


def _duration_seconds(text: str) -> float:
    position, seconds = 0, 0.0
    for part in _DURATION_PART.finditer(text):
        if part.start() != position:
            break
        seconds += float(part.group(1)) * _DURATION_UNITS_S[part.group(2)]
        position = part.end()
    if position == 0 or position != len(text):
        raise ValueError(text)
    return seconds


def parse_quantity(text: str) -> int:
    """Bytes: '17179869184', '16Gi', '16G', '512Mi', '1.5Gi', '16GiB'. Rounds up to a byte."""
    match = _QUANTITY.fullmatch(text.strip())
    factor = _QUANTITY_FACTORS.get(match.group(2) or "") if match else None
    if match is None or factor is None:
        raise ValueError(
            f"{text!r} is not a quantity of bytes (use e.g. 17179869184, 16Gi, 512Mi or 16G)"
        )
    return math.ceil(Decimal(match.group(1)) * factor)


def parse_key_value(text: str) -> tuple[str, str]:
    """'key=value' (the value may be empty and may hold '='); the key may not be empty."""
    key, sep, value = text.partition("=")
    if not sep:
        raise ValueError(f"{text!r} has no '=': use key=value")
    if not key.strip():
        raise ValueError(f"{text!r} has an empty key: use key=value")
    if key != key.strip() or any(c.isspace() for c in key):
        raise ValueError(f"{text!r}: a key may not contain spaces")
    return key, value


def parse_env_var(text: str) -> tuple[str, str]:
    """'NAME=value' where NAME is a shell variable name."""
    name, value = parse_key_value(text)
    if not _ENV_NAME.fullmatch(name):
        raise ValueError(
            f"{name!r} is not an environment variable name (letters, digits, _; no digit first)"
        )
    return name, value


def to_mapping(pairs: Iterable[tuple[str, str]]) -> dict[str, str]:
    """The pairs as a dict; a key given twice is an error, not a silent overwrite."""
    mapping: dict[str, str] = {}
    for key, value in pairs:
        if key in mapping:
            raise ValueError(f"{key!r} is given more than once")
        mapping[key] = value
    return mapping


def parse_host_port(text: str) -> str:
    """'host:port', '0.0.0.0:50051', '[::]:50051'; port 0-65535. Returned unchanged."""
    match = _HOST_PORT.fullmatch(text)
    if match is None:
        raise ValueError(f"{text!r} is not HOST:PORT (e.g. 127.0.0.1:50051 or [::]:50051)")
    if int(match.group(2)) > 65535:
        raise ValueError(f"{text!r}: port {match.group(2)} is above 65535")
    return text


def parse_host_ports(text: str) -> str:
    """One or more HOST:PORT, comma-separated (control-plane replicas). Returned unchanged."""
    for part in text.split(","):
        parse_host_port(part.strip())
    return text


def parse_job_phase(text: str) -> types_pb2.JobPhase.ValueType:
    """'queued', 'running', ... (as the CLI prints them), any case."""
    word = text.strip().lower()
    for value in types_pb2.JobPhase.DESCRIPTOR.values:
        if value.number != 0 and value.name.removeprefix("JOB_PHASE_").lower() == word:
            return types_pb2.JobPhase.Value(value.name)
    raise ValueError(f"{text!r} is not a job phase (choose from {', '.join(job_phase_words())})")


def job_phase_words() -> list[str]:
    return [
        value.name.removeprefix("JOB_PHASE_").lower()
        for value in types_pb2.JobPhase.DESCRIPTOR.values
        if value.number != 0
    ]
