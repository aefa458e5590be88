"""`fleet control-plane` and `fleet agent` build their settings from the flags."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

import dataplane_agent
from control_plane.settings import ControlPlaneSettings
from dataplane_agent.settings import AgentSettings
from fleet_cli.main import app

TRANSPORT_ENV = (
    "FLEET_INSECURE", "FLEET_TLS_CERT", "FLEET_TLS_KEY", "FLEET_TLS_CA", "FLEET_TLS_CLIENT_CA",
    "FLEET_AGENT_LISTEN", "FLEET_TLS_SERVER_NAME",
)


def fleet(*args: str, env: dict[str, str | None] | None = None) -> Result:
    cleared = {name: None for name in TRANSPORT_ENV}
    runner = CliRunner(
        env={"COLUMNS": "250", "FLEET_JOIN_TOKEN": None, **cleared, **(env or {})}
    )
    return runner.invoke(app, list(args))


@pytest.fixture
def agents_run(monkeypatch: pytest.MonkeyPatch) -> list[AgentSettings]:
    calls: list[AgentSettings] = []

    def run_agent(settings: AgentSettings) -> int:
        calls.append(settings)
        return 7 if settings.join_token == "wrong" else 0

    monkeypatch.setattr(dataplane_agent, "run_agent", run_agent, raising=False)
    return calls


def test_control_plane_flags_reach_the_settings(
    served: list[ControlPlaneSettings], tmp_path: Path
) -> None:
    result = fleet(
        "control-plane", "--listen", "0.0.0.0:0", "--db", "postgresql+psycopg://fleet@db/fleet",
        "--heartbeat-interval", "2", "--stale-after", "10s",
        "--lost-after", "1m", "--no-migrate", "--port-file", str(tmp_path / "port"),
        "--log-level", "debug", "--insecure",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert served == [
        ControlPlaneSettings(
            listen="0.0.0.0:0",
            database_url="postgresql+psycopg://fleet@db/fleet",
            heartbeat_interval_s=2.0,
            stale_after_s=10.0,
            lost_after_s=60.0,
            migrate=False,
            port_file=str(tmp_path / "port"),
            insecure=True,
        )
    ]


def test_control_plane_defaults_are_the_settings_defaults(
    served: list[ControlPlaneSettings],
) -> None:
    result = fleet("control-plane", env={"FLEET_INSECURE": "1"})
    assert result.exit_code == 0, result.output
    assert served == [ControlPlaneSettings(insecure=True)]
    assert served[0].auth   # keys and join tokens unless --no-auth


def test_control_plane_without_auth_only_on_loopback(served: list[ControlPlaneSettings]) -> None:
    local = fleet("control-plane", "--no-auth", "--insecure")
    assert local.exit_code == 0, local.output
    assert served == [ControlPlaneSettings(auth=False, insecure=True)]
    exposed = fleet("control-plane", "--no-auth", "--insecure", "--listen", "0.0.0.0:50051")
    assert exposed.exit_code == 2
    assert "--no-auth: only on a loopback address" in exposed.stderr


@pytest.mark.parametrize(
    ("args", "option", "reason"),
    [
        (["--listen", "50051"], "--listen", "is not HOST:PORT"),
        (["--stale-after", "soon"], "--stale-after", "is not a duration"),
        (["--stale-after", "2m", "--lost-after", "1m"], "--lost-after", "stale after (120s)"),
        (["--log-level", "loud"], "--log-level", "loud"),
    ],
)
def test_control_plane_bad_flags_exit_2_without_serving(
    served: list[ControlPlaneSettings], args: list[str], option: str, reason: str
) -> None:
    result = fleet("control-plane", *args)
    assert result.exit_code == 2
    assert option in result.stderr and reason in result.stderr
    assert served == []


def test_agent_flags_reach_the_settings_and_its_exit_code_is_ours(
    agents_run: list[AgentSettings], tmp_path: Path
) -> None:
    pools = tmp_path / "pools.yaml"
    pools.write_text("dataplane: {name: eu-west}\n")
    common = ["agent", "--control-plane", "cp.example:443", "--pools", str(pools)]
    result = fleet(*common, "--workdir", str(tmp_path / "work"), env={"FLEET_JOIN_TOKEN": "t"})
    assert result.exit_code == 0, result.output
    assert agents_run == [
        AgentSettings(
            control_plane="cp.example:443",
            pools_file=pools,
            join_token="t",
            workdir=tmp_path / "work",
        )
    ]
    assert fleet(*common, "--join-token", "wrong").exit_code == 7

    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text("apiVersion: v1\nkind: Config\n")
    assert fleet(*common, "--kubeconfig", str(kubeconfig)).exit_code == 0
    assert agents_run[-1].kubeconfig == kubeconfig
    missing = fleet(*common, "--kubeconfig", str(tmp_path / "nope"))
    assert missing.exit_code == 2 and "--kubeconfig" in missing.stderr


def test_agent_needs_an_existing_pools_file(
    agents_run: list[AgentSettings], tmp_path: Path
) -> None:
    missing = tmp_path / "nope.yaml"
    result = fleet("agent", "--control-plane", "cp:443", "--pools", str(missing))
    assert result.exit_code == 2
    assert "--pools" in result.stderr
    assert agents_run == []
