"""The TLS flags of `fleet`, `fleet control-plane` and `fleet agent`, and the rule for
plaintext: TLS unless told otherwise, plaintext only with --insecure (FLEET_INSECURE=1)."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from fleet.v1 import admin_pb2, admin_pb2_grpc, jobs_pb2_grpc
from typer.testing import CliRunner, Result

import dataplane_agent
from control_plane.settings import ControlPlaneSettings
from dataplane_agent.settings import AgentSettings
from fleet_cli.main import app
from tests.cli.fakes import FakeFleet
from tests.tls_certs import CertificateAuthority, Issued

TRANSPORT_ENV = (
    "FLEET_INSECURE", "FLEET_TLS_CERT", "FLEET_TLS_KEY", "FLEET_TLS_CA", "FLEET_TLS_CLIENT_CA",
    "FLEET_AGENT_LISTEN", "FLEET_TLS_SERVER_NAME", "FLEET_ADDRESS",
)


def fleet(*args: str, env: dict[str, str | None] | None = None) -> Result:
    cleared: dict[str, str | None] = {name: None for name in TRANSPORT_ENV}
    runner = CliRunner(env={"COLUMNS": "250", "FLEET_JOIN_TOKEN": "t", **cleared, **(env or {})})
    return runner.invoke(app, list(args))


@dataclass(frozen=True)
class Pki:
    ca: CertificateAuthority
    server: Issued
    agent: Issued


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    ca = CertificateAuthority.create(tmp_path_factory.mktemp("pki"))
    return Pki(ca, ca.server("localhost", "127.0.0.1"), ca.client("eu-west"))


@pytest.fixture
def tls_fleet(pki: Pki) -> Iterator[FakeFleet]:
    """The fake control plane, serving TLS with a certificate of the test CA."""
    fake = FakeFleet()
    fake.dataplanes.append(admin_pb2.Dataplane(name="eu-west", connected=True))
    server = grpc.server(ThreadPoolExecutor(max_workers=4))
    jobs_pb2_grpc.add_JobServiceServicer_to_server(fake, server)
    admin_pb2_grpc.add_AdminServiceServicer_to_server(fake, server)
    credentials = grpc.ssl_server_credentials(
        [(pki.server.key.read_bytes(), pki.server.cert.read_bytes())]
    )
    fake.address = f"127.0.0.1:{server.add_secure_port('127.0.0.1:0', credentials)}"
    server.start()
    yield fake
    server.stop(grace=None)


# -- the client commands ----------------------------------------------------------------------


def test_the_cli_trusting_the_ca_reaches_a_tls_control_plane(
    tls_fleet: FakeFleet, pki: Pki
) -> None:
    by_flag = fleet("--address", tls_fleet.address, "--tls-ca", str(pki.ca.cert),
                    "dataplanes", "list")  # fmt: skip
    assert by_flag.exit_code == 0, by_flag.output
    assert "eu-west" in by_flag.stdout
    by_env = fleet("--address", tls_fleet.address, "dataplanes", "list",
                   env={"FLEET_TLS_CA": str(pki.ca.cert)})  # fmt: skip
    assert by_env.exit_code == 0, by_env.output


def test_the_cli_without_the_ca_exits_3_saying_the_certificate_is_not_trusted(
    tls_fleet: FakeFleet,
) -> None:
    result = fleet("--address", tls_fleet.address, "dataplanes", "list")
    assert result.exit_code == 3
    assert "CERTIFICATE_VERIFY_FAILED" in result.stderr
    assert "--tls-ca" in result.stderr


def test_plaintext_against_tls_and_tls_against_plaintext_exit_3_with_a_hint(
    tls_fleet: FakeFleet, fake_fleet: FakeFleet, pki: Pki
) -> None:
    plaintext = fleet("--address", tls_fleet.address, "--insecure", "dataplanes", "list")
    assert plaintext.exit_code == 3
    assert "plaintext (--insecure) was refused" in plaintext.stderr
    tls = fleet("--address", fake_fleet.address, "--tls-ca", str(pki.ca.cert),
                "dataplanes", "list")  # fmt: skip
    assert tls.exit_code == 3
    assert "answered in plaintext" in tls.stderr and "--insecure" in tls.stderr
    assert fleet("--address", fake_fleet.address, "--insecure", "dataplanes", "list",
                 ).exit_code == 0  # fmt: skip


def test_the_cli_refuses_plaintext_and_a_ca_together(pki: Pki) -> None:
    result = fleet("--insecure", "--tls-ca", str(pki.ca.cert), "dataplanes", "list")
    assert result.exit_code == 2
    assert "choose one" in result.stderr


# -- fleet control-plane ----------------------------------------------------------------------


def test_the_control_plane_refuses_to_start_without_tls_unless_told_plaintext(
    served: list[ControlPlaneSettings],
) -> None:
    result = fleet("control-plane")
    assert result.exit_code == 2
    for flag in ("--tls-cert", "--tls-key", "--insecure", "FLEET_INSECURE=1"):
        assert flag in result.stderr
    assert served == []
    assert fleet("control-plane", "--insecure").exit_code == 0
    assert fleet("control-plane", env={"FLEET_INSECURE": "1"}).exit_code == 0
    assert [settings.insecure for settings in served] == [True, True]


def test_the_control_plane_tls_flags_reach_the_settings(
    served: list[ControlPlaneSettings], pki: Pki
) -> None:
    result = fleet(
        "control-plane", "--listen", "0.0.0.0:50051", "--tls-cert", str(pki.server.cert),
        "--tls-key", str(pki.server.key), "--tls-client-ca", str(pki.ca.cert),
        "--agent-listen", "0.0.0.0:50052", "--tls-server-name", "fleet.example.com",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    [settings] = served
    assert (settings.tls_cert, settings.tls_key) == (str(pki.server.cert), str(pki.server.key))
    assert settings.tls_client_ca == str(pki.ca.cert)
    assert settings.agent_listen == "0.0.0.0:50052"
    assert settings.tls_server_name == "fleet.example.com"
    assert settings.insecure is False and settings.tls_ca is None

    by_env = fleet("control-plane", env={
        "FLEET_TLS_CERT": str(pki.server.cert), "FLEET_TLS_KEY": str(pki.server.key),
        "FLEET_TLS_CA": str(pki.ca.cert),
    })  # fmt: skip
    assert by_env.exit_code == 0, by_env.output
    assert served[-1].tls_cert == str(pki.server.cert)
    assert served[-1].tls_ca == str(pki.ca.cert)


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["--tls-cert", "{cert}"], ["--tls-cert", "--tls-key"]),
        (["--insecure", "--tls-cert", "{cert}", "--tls-key", "{key}"], ["--insecure"]),
        (["--tls-cert", "{cert}", "--tls-key", "{key}", "--tls-client-ca", "{ca}"],
         ["--tls-client-ca", "--agent-listen"]),
        (["--tls-cert", "/no/such/cert.pem", "--tls-key", "{key}"], ["--tls-cert"]),
    ],
)
def test_the_control_plane_tls_flags_that_do_not_fit_exit_2_without_serving(
    served: list[ControlPlaneSettings], pki: Pki, args: list[str], named: list[str]
) -> None:
    paths = {"cert": pki.server.cert, "key": pki.server.key, "ca": pki.ca.cert}
    result = fleet("control-plane", *(arg.format(**paths) for arg in args))
    assert result.exit_code == 2, result.output
    assert all(flag in result.stderr for flag in named), result.stderr
    assert served == []


# -- fleet agent ------------------------------------------------------------------------------


@pytest.fixture
def agents_run(monkeypatch: pytest.MonkeyPatch) -> list[AgentSettings]:
    calls: list[AgentSettings] = []

    def run_agent(settings: AgentSettings) -> int:
        calls.append(settings)
        return 0

    monkeypatch.setattr(dataplane_agent, "run_agent", run_agent, raising=False)
    return calls


def test_the_agent_tls_flags_reach_the_settings(
    agents_run: list[AgentSettings], pki: Pki, tmp_path: Path
) -> None:
    pools = tmp_path / "pools.yaml"
    pools.write_text("dataplane: {name: eu-west}\n")
    common = ["agent", "--control-plane", "cp.example:50052", "--pools", str(pools)]
    result = fleet(*common, "--tls-ca", str(pki.ca.cert), "--tls-cert", str(pki.agent.cert),
                   "--tls-key", str(pki.agent.key))  # fmt: skip
    assert result.exit_code == 0, result.output
    [settings] = agents_run
    assert (settings.tls_ca, settings.tls_cert, settings.tls_key) == (
        pki.ca.cert, pki.agent.cert, pki.agent.key
    )
    assert settings.insecure is False
    assert fleet(*common, env={"FLEET_INSECURE": "1"}).exit_code == 0
    assert agents_run[-1].insecure is True
    assert fleet(*common).exit_code == 0   # TLS, the system's roots
    assert agents_run[-1].insecure is False and agents_run[-1].tls_ca is None

    lone = fleet(*common, "--tls-cert", str(pki.agent.cert))
    assert lone.exit_code == 2 and "--tls-key" in lone.stderr
    both = fleet(*common, "--insecure", "--tls-ca", str(pki.ca.cert))
    assert both.exit_code == 2 and "--insecure" in both.stderr
    assert len(agents_run) == 3
