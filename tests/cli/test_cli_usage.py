"""Bad input on the command line: exit 2, the option and the reason named, no call made."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner, Result

from fleet_cli.main import app
from tests.cli.fakes import FakeFleet


def fleet(*args: str) -> Result:
    # The fake control plane speaks plaintext.
    env = {"COLUMNS": "250", "FLEET_INSECURE": "1", "FLEET_TLS_CA": None}
    return CliRunner(env=env).invoke(app, list(args))


def submit(address: str, *args: str) -> Result:
    return fleet("--address", address, "jobs", "submit", "--project", "ml", *args)


@pytest.mark.parametrize(
    ("args", "option", "reason"),
    [
        (["--label", "novalue"], "--label", "'novalue' has no '='"),
        (["--label", "a=1", "--label", "a=2"], "--label", "'a' is given more than once"),
        (["--env", "=x"], "--env", "'=x' has an empty key"),
        (["--env", "1X=y"], "--env", "not an environment variable name"),
        (["--timeout", "5x"], "--timeout", "'5x' is not a duration"),
        (["--timeout", "0s"], "--timeout", "longer than zero"),
        (["--memory", "16Xi"], "--memory", "'16Xi' is not a quantity of bytes"),
        (["--gpus", "-1"], "--gpus", "greater than or equal to 0"),
        (["--gpus", "two"], "--gpus", "valid integer"),
        (["--retries", "-1"], "--retries", "greater than or equal to 0"),
    ],
)
def test_bad_submit_options_exit_2_before_any_call(
    fake_fleet: FakeFleet, args: list[str], option: str, reason: str
) -> None:
    result = submit(fake_fleet.address, *args, "--", "true")
    assert result.exit_code == 2, result.output
    assert option in result.stderr
    assert reason in result.stderr
    assert fake_fleet.submits == []


def test_submit_without_project_or_command_is_a_usage_error(fake_fleet: FakeFleet) -> None:
    result = fleet("--address", fake_fleet.address, "jobs", "submit", "--", "true")
    assert result.exit_code == 2
    assert "--project" in result.stderr
    result = submit(fake_fleet.address)
    assert result.exit_code == 2
    assert "COMMAND" in result.stderr
    assert fake_fleet.submits == []


def test_unknown_output_format_is_a_usage_error() -> None:
    result = fleet("--output", "yaml", "dataplanes", "list")
    assert result.exit_code == 2
    assert "--output" in result.stderr


def test_help_documents_the_exit_codes() -> None:
    result = fleet("--help")
    assert result.exit_code == 0
    text = " ".join(result.stdout.split())
    for code in ("0 ok", "1 the operation failed", "2 bad input", "3 the control plane could"):
        assert code in text
    for command in ("control-plane", "agent", "jobs", "dataplanes"):
        assert command in result.stdout
