"""Logs of the control plane and the agent: JSON lines off a terminal, text on one."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from typer.testing import CliRunner

import control_plane
import dataplane_agent
from control_plane.settings import ControlPlaneSettings
from dataplane_agent.settings import AgentSettings
from fleet_cli.main import app
from fleet_client.logs import configure_logging


class Terminal(io.StringIO):
    """What stderr is when a person watches the process."""

    def isatty(self) -> bool:
        return True


@pytest.fixture(autouse=True)
def root_logger() -> Iterator[logging.Logger]:
    """configure_logging sets up the root logger: each test gets it back as it was."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield root
    root.handlers[:] = handlers
    root.setLevel(level)


def lines(stream: io.StringIO) -> list[str]:
    return stream.getvalue().splitlines()


def test_off_a_terminal_each_record_is_one_json_object() -> None:
    stream = io.StringIO()
    before = datetime.now(UTC)
    configure_logging("info", "auto", stream)
    log = logging.getLogger("control_plane.scheduler")
    log.info("placed %d jobs", 3, extra={"job_id": "j1", "attempt_id": "j1-1",
                                         "dataplane": "east", "project": "vision"})
    log.warning("dataplane %s went silent", "west", extra={"dataplane": "west"})
    log.debug("not at info")

    first, second = (json.loads(line) for line in lines(stream))
    assert {key: first[key] for key in first if key != "ts"} == {
        "level": "info", "logger": "control_plane.scheduler", "message": "placed 3 jobs",
        "job_id": "j1", "attempt_id": "j1-1", "dataplane": "east", "project": "vision",
    }
    assert set(second) == {"ts", "level", "logger", "message", "dataplane"}
    assert (second["level"], second["message"]) == ("warning", "dataplane west went silent")
    logged_at = datetime.fromisoformat(first["ts"])
    assert first["ts"].endswith("Z") and logged_at.tzinfo is not None
    assert before - timedelta(seconds=1) <= logged_at <= datetime.now(UTC)


def test_an_exception_s_traceback_is_a_field_of_its_line() -> None:
    stream = io.StringIO()
    configure_logging("info", "json", stream)
    try:
        {}["missing"]
    except KeyError:
        logging.getLogger("dataplane_agent.connection").exception(
            "could not act on a \"launch\" — résumé", extra={"attempt_id": "a1"}
        )

    [line] = lines(stream)   # the traceback's newlines stay inside the JSON string
    entry = json.loads(line)
    assert entry["message"] == "could not act on a \"launch\" — résumé"
    assert entry["level"] == "error" and entry["attempt_id"] == "a1"
    assert entry["traceback"].startswith("Traceback (most recent call last):")
    assert entry["traceback"].endswith("KeyError: 'missing'")


def test_on_a_terminal_lines_are_text_with_their_context() -> None:
    terminal = Terminal()
    configure_logging("debug", "auto", terminal)
    log = logging.getLogger("dataplane_agent.agent")
    log.debug("launching", extra={"attempt_id": "a1", "dataplane": "east"})
    log.info("plain")

    launching, plain = lines(terminal)
    assert launching.endswith(" DEBUG dataplane_agent.agent: launching [attempt_id=a1 "
                              "dataplane=east]")
    assert plain.endswith(" INFO dataplane_agent.agent: plain")
    assert not launching.startswith("{")


def test_the_format_given_wins_over_the_terminal_and_a_second_call_replaces_the_first(
    root_logger: logging.Logger,
) -> None:
    terminal, other = Terminal(), io.StringIO()
    configure_logging("info", "json", terminal)
    logging.getLogger("x").info("as json")
    configure_logging("warning", "text", other)
    logging.getLogger("x").warning("as text")
    logging.getLogger("x").info("below warning")

    assert json.loads(lines(terminal)[0])["message"] == "as json"
    assert len(lines(terminal)) == 1   # the first handler is gone
    assert lines(other)[0].endswith(" WARNING x: as text") and len(lines(other)) == 1
    assert root_logger.level == logging.WARNING
    with pytest.raises(ValueError, match="log format 'yaml'"):
        configure_logging("info", "yaml")


# -- the roles' flags -------------------------------------------------------------------------


@pytest.fixture
def roles_log(monkeypatch: pytest.MonkeyPatch) -> None:
    """Both roles log one line instead of running."""

    def serve(settings: ControlPlaneSettings, *_: object) -> None:
        logging.getLogger("control_plane.server").info("serving", extra={"project": "p"})

    def run_agent(settings: AgentSettings) -> int:
        logging.getLogger("dataplane_agent.agent").info("running", extra={"dataplane": "d"})
        return 0

    monkeypatch.setattr(control_plane, "serve", serve)
    monkeypatch.setattr(dataplane_agent, "run_agent", run_agent, raising=False)


@pytest.mark.usefixtures("roles_log")
def test_log_format_on_both_roles(tmp_path: Path) -> None:
    pools = tmp_path / "pools.yaml"
    pools.write_text("dataplane: {name: d}\n")
    runner = CliRunner(env={"FLEET_INSECURE": "1", "FLEET_JOIN_TOKEN": "t",
                            "FLEET_LOG_FORMAT": None})
    control = ["control-plane"]
    agent = ["agent", "--control-plane", "cp:443", "--pools", str(pools)]

    for role, message, context in ((control, "serving", {"project": "p"}),
                                   (agent, "running", {"dataplane": "d"})):
        auto = runner.invoke(app, role)   # the runner's stderr is no terminal
        assert auto.exit_code == 0, auto.output
        entry = json.loads(auto.stderr.splitlines()[-1])
        assert {"message": message, "level": "info", **context}.items() <= entry.items()

        text = runner.invoke(app, [*role, "--log-format", "text"])
        assert text.stderr.splitlines()[-1].endswith(
            f"{message} [{' '.join(f'{k}={v}' for k, v in context.items())}]"
        )

    bad = runner.invoke(app, [*agent, "--log-format", "xml"])
    assert bad.exit_code == 2 and "--log-format" in bad.stderr
