"""The pure parsers behind the CLI's options."""

from __future__ import annotations

from datetime import timedelta

import pytest
from fleet.v1 import types_pb2

from fleet_cli import parse


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("90s", timedelta(seconds=90)),
        ("30m", timedelta(minutes=30)),
        ("2h", timedelta(hours=2)),
        ("1h30m", timedelta(hours=1, minutes=30)),
        ("1d", timedelta(days=1)),
        ("500ms", timedelta(milliseconds=500)),
        ("1.5h", timedelta(minutes=90)),
        ("45", timedelta(seconds=45)),
        (" 5m ", timedelta(minutes=5)),
    ],
)
def test_durations(text: str, expected: timedelta) -> None:
    assert parse.parse_duration(text) == expected


@pytest.mark.parametrize("text", ["5x", "", "m", "1h 30m", "30m1", "-5s", "h1", "1.h"])
def test_bad_durations_say_what_is_accepted(text: str) -> None:
    with pytest.raises(ValueError, match=r"is not a duration.*90s, 30m, 2h"):
        parse.parse_duration(text)


@pytest.mark.parametrize("text", ["0", "0s", "0h0m"])
def test_zero_duration_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match="longer than zero"):
        parse.parse_duration(text)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("17179869184", 17179869184),
        ("16Gi", 16 * 2**30),
        ("16GiB", 16 * 2**30),
        ("512Mi", 512 * 2**20),
        ("16G", 16 * 10**9),
        ("2k", 2000),
        ("2K", 2000),
        ("1Ti", 2**40),
        ("1.5Gi", 3 * 2**29),
        ("0.5Ki", 512),
        ("1.0001Ki", 1025),  # rounds up to a whole byte
        ("100B", 100),
    ],
)
def test_quantities(text: str, expected: int) -> None:
    assert parse.parse_quantity(text) == expected


@pytest.mark.parametrize("text", ["16Xi", "Gi", "", "ki", "3ki", "-1Gi", "16 gigs", "1e9"])
def test_bad_quantities_say_what_is_accepted(text: str) -> None:
    with pytest.raises(ValueError, match=r"is not a quantity of bytes.*16Gi"):
        parse.parse_quantity(text)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("team=ml", ("team", "ml")),
        ("empty=", ("empty", "")),
        ("url=a=b", ("url", "a=b")),
        ("example.com/tier=gold", ("example.com/tier", "gold")),
    ],
)
def test_key_values(text: str, expected: tuple[str, str]) -> None:
    assert parse.parse_key_value(text) == expected


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("novalue", "has no '='"),
        ("=x", "empty key"),
        (" =x", "empty key"),
        ("my key=x", "may not contain spaces"),
    ],
)
def test_bad_key_values(text: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        parse.parse_key_value(text)


def test_env_vars_need_shell_names() -> None:
    assert parse.parse_env_var("CUDA_VISIBLE_DEVICES=0,1") == ("CUDA_VISIBLE_DEVICES", "0,1")
    with pytest.raises(ValueError, match="not an environment variable name"):
        parse.parse_env_var("1X=y")
    with pytest.raises(ValueError, match="not an environment variable name"):
        parse.parse_env_var("A-B=y")
    with pytest.raises(ValueError, match="empty key"):
        parse.parse_env_var("=x")


def test_a_key_given_twice_is_refused() -> None:
    assert parse.to_mapping([("a", "1"), ("b", "2")]) == {"a": "1", "b": "2"}
    with pytest.raises(ValueError, match="'a' is given more than once"):
        parse.to_mapping([("a", "1"), ("a", "2")])


@pytest.mark.parametrize("text", ["127.0.0.1:50051", "0.0.0.0:0", "[::]:50051", "cp.example:443"])
def test_host_ports(text: str) -> None:
    assert parse.parse_host_port(text) == text


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("localhost", "is not HOST:PORT"),
        (":50051", "is not HOST:PORT"),
        ("host:port", "is not HOST:PORT"),
        ("host:70000", "above 65535"),
    ],
)
def test_bad_host_ports(text: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        parse.parse_host_port(text)


def test_job_phases_read_as_printed() -> None:
    assert parse.parse_job_phase("queued") == types_pb2.JOB_PHASE_QUEUED
    assert parse.parse_job_phase("RUNNING") == types_pb2.JOB_PHASE_RUNNING
    assert parse.job_phase_words() == [
        "queued", "scheduled", "running", "succeeded", "failed", "cancelled",
    ]  # fmt: skip
    with pytest.raises(ValueError, match="choose from queued, scheduled"):
        parse.parse_job_phase("unspecified")
