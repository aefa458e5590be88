"""TLS on the control plane's port, mutual TLS for agents, and plaintext only when chosen.

An in-process control plane on 127.0.0.1 with throwaway certificates (tests/tls_certs.py).
Sync clients run in a thread: the server shares this test's event loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from fleet.v1 import agent_pb2, agent_pb2_grpc, jobs_pb2

import fleet_client
from control_plane import SettingsError
from control_plane.relay import Relay
from control_plane.server import self_credentials
from control_plane.settings import ControlPlaneSettings
from fleet_client import PLAINTEXT, FleetClient, TlsConfig
from tests.control_plane.harness import control_plane
from tests.tls_certs import CertificateAuthority, Issued


@dataclass(frozen=True)
class Pki:
    ca: CertificateAuthority
    server: Issued              # 127.0.0.1 and localhost
    named_server: Issued        # only fleet-cp.internal (as a certificate for a Service)
    eu_west: Issued             # an agent's client certificate: CN eu-west
    us_east: Issued
    san_only: Issued            # CN agent-7, SAN eu-west
    stranger: Issued            # eu-west, but from another CA


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pki]:
    root = tmp_path_factory.mktemp("pki")
    ca = CertificateAuthority.create(root / "ca")
    other = CertificateAuthority.create(root / "other", "another CA")
    yield Pki(
        ca,
        ca.server("localhost", "127.0.0.1"),
        ca.server("fleet-cp.internal"),
        ca.client("eu-west"),
        ca.client("us-east"),
        ca.client("agent-7", "eu-west"),
        other.client("eu-west"),
    )


def tls(pki: Pki, server: Issued | None = None, **more: Any) -> dict[str, Any]:
    server = server or pki.server
    return {"insecure": False, "tls_cert": str(server.cert), "tls_key": str(server.key), **more}


def mutual_tls(pki: Pki) -> dict[str, Any]:
    return tls(pki, tls_client_ca=str(pki.ca.cert), agent_listen="127.0.0.1:0")


def agent_channel(port: int, pki: Pki, cert: Issued | None) -> grpc.aio.Channel:
    credentials = grpc.ssl_channel_credentials(
        pki.ca.cert.read_bytes(),
        cert.key.read_bytes() if cert else None,
        cert.cert.read_bytes() if cert else None,
    )
    return grpc.aio.secure_channel(f"127.0.0.1:{port}", credentials)


async def hello(channel: grpc.aio.Channel, dataplane: str) -> agent_pb2.ControlMessage:
    """Open an agent stream, say hello as dataplane, return the control plane's answer."""
    call = agent_pb2_grpc.AgentServiceStub(channel).Connect()
    try:
        await call.write(
            agent_pb2.AgentMessage(
                hello=agent_pb2.Hello(
                    dataplane=dataplane, region="us-east-1", cloud="test", credential="t",
                    agent_version="test",
                )
            )
        )
        answer = await call.read()
        assert isinstance(answer, agent_pb2.ControlMessage), answer
        return answer
    finally:
        call.cancel()


async def refused(channel: grpc.aio.Channel, dataplane: str) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await hello(channel, dataplane)
    return raised.value


async def list_dataplanes(address: str, tls: TlsConfig) -> list[str]:
    def call() -> list[str]:
        with FleetClient(address, timeout_s=5, tls=tls) as client:
            return [d.name for d in client.list_dataplanes()]

    return await asyncio.to_thread(call)


# -- TLS on the port --------------------------------------------------------------------------


async def test_a_client_trusting_the_ca_reaches_a_tls_control_plane(
    sqlite_url: str, pki: Pki
) -> None:
    async with control_plane(sqlite_url, **tls(pki)) as (cp, _):
        address = f"127.0.0.1:{cp.port}"
        assert await list_dataplanes(address, TlsConfig(ca_file=str(pki.ca.cert))) == []
        # The name in the certificate also works when dialing it.
        localhost = f"localhost:{cp.port}"
        assert await list_dataplanes(localhost, TlsConfig(ca_file=str(pki.ca.cert))) == []


async def test_a_client_without_the_ca_is_told_the_certificate_is_not_trusted(
    sqlite_url: str, pki: Pki
) -> None:
    async with control_plane(sqlite_url, **tls(pki)) as (cp, _):
        with pytest.raises(fleet_client.Unavailable) as raised:
            await list_dataplanes(f"127.0.0.1:{cp.port}", TlsConfig())   # the system's roots
    assert "CERTIFICATE_VERIFY_FAILED" in raised.value.message


async def test_plaintext_does_not_reach_a_tls_control_plane_nor_tls_a_plaintext_one(
    sqlite_url: str, pki: Pki
) -> None:
    async with control_plane(sqlite_url, **tls(pki)) as (cp, _):
        with pytest.raises(fleet_client.Unavailable):
            await list_dataplanes(f"127.0.0.1:{cp.port}", PLAINTEXT)
    async with control_plane(sqlite_url) as (cp, _):   # the harness: insecure=True
        with pytest.raises(fleet_client.Unavailable) as raised:
            await list_dataplanes(f"127.0.0.1:{cp.port}", TlsConfig(ca_file=str(pki.ca.cert)))
        assert "WRONG_VERSION_NUMBER" in raised.value.message
        assert await list_dataplanes(f"127.0.0.1:{cp.port}", PLAINTEXT) == []


@pytest.mark.parametrize(
    ("settings", "named"),
    [
        ({"insecure": False}, ["--tls-cert", "--tls-key", "--insecure"]),
        ({"insecure": False, "tls_cert": "cert.pem"}, ["--tls-cert", "--tls-key"]),
        ({"insecure": True, "tls_cert": "c", "tls_key": "k"}, ["--insecure", "--tls-cert"]),
        (
            {"insecure": False, "tls_cert": "c", "tls_key": "k", "tls_client_ca": "ca"},
            ["--tls-client-ca", "--agent-listen"],
        ),
    ],
)
async def test_the_control_plane_refuses_to_start_without_tls_unless_told_plaintext(
    sqlite_url: str, settings: dict[str, Any], named: list[str]
) -> None:
    with pytest.raises(SettingsError) as raised:
        async with control_plane(sqlite_url, **settings):
            pytest.fail("started")
    assert all(flag in str(raised.value) for flag in named), str(raised.value)


async def test_an_unreadable_certificate_stops_the_start_naming_its_flag(
    sqlite_url: str, pki: Pki, tmp_path: Path
) -> None:
    missing = tmp_path / "nope.pem"
    with pytest.raises(SettingsError, match=f"--tls-key: cannot read {missing}"):
        async with control_plane(sqlite_url, **tls(pki, tls_key=str(missing))):
            pytest.fail("started")


def test_plaintext_is_never_the_default() -> None:
    assert ControlPlaneSettings().insecure is False
    assert TlsConfig() == fleet_client.client.DEFAULT_TLS and not TlsConfig().insecure


# -- mutual TLS for agents --------------------------------------------------------------------


async def test_an_agent_with_a_certificate_for_its_dataplane_is_welcomed(
    sqlite_url: str, pki: Pki
) -> None:
    async with control_plane(sqlite_url, **mutual_tls(pki)) as (cp, _):
        assert cp.agent_port not in (0, cp.port)
        for cert in (pki.eu_west, pki.san_only):   # the CN, or a subject alternative name
            async with agent_channel(cp.agent_port, pki, cert) as channel:
                answer = await hello(channel, "eu-west")
            assert answer.HasField("welcome")


async def test_an_agent_without_a_certificate_is_refused_unauthenticated(
    sqlite_url: str, pki: Pki
) -> None:
    async with control_plane(sqlite_url, **mutual_tls(pki)) as (cp, _):
        async with agent_channel(cp.port, pki, None) as channel:
            error = await refused(channel, "eu-west")
        assert error.code() == grpc.StatusCode.UNAUTHENTICATED
        assert "requires a client certificate for agents" in (error.details() or "")
        # The agent port asks every client for a certificate at the handshake.
        async with agent_channel(cp.agent_port, pki, None) as channel:
            assert (await refused(channel, "eu-west")).code() == grpc.StatusCode.UNAVAILABLE
        async with agent_channel(cp.agent_port, pki, pki.stranger) as channel:
            assert (await refused(channel, "eu-west")).code() == grpc.StatusCode.UNAVAILABLE
        # People and Flyte need none: the main port answers them (no dataplane joined).
        ca = TlsConfig(ca_file=str(pki.ca.cert))
        assert await list_dataplanes(f"127.0.0.1:{cp.port}", ca) == []


async def test_a_certificate_binds_the_stream_to_its_own_dataplane(
    sqlite_url: str, pki: Pki
) -> None:
    async with control_plane(sqlite_url, **mutual_tls(pki)) as (cp, _):
        async with agent_channel(cp.agent_port, pki, pki.us_east) as channel:
            error = await refused(channel, "eu-west")
        assert error.code() == grpc.StatusCode.PERMISSION_DENIED
        details = error.details() or ""
        assert "'eu-west'" in details and "us-east" in details, details
        names = await list_dataplanes(f"127.0.0.1:{cp.port}", TlsConfig(ca_file=str(pki.ca.cert)))
        assert "eu-west" not in names


async def test_without_a_client_ca_agents_need_no_certificate(sqlite_url: str, pki: Pki) -> None:
    async with control_plane(sqlite_url, **tls(pki)) as (cp, _):
        assert cp.agent_port == 0
        async with agent_channel(cp.port, pki, None) as channel:
            assert (await hello(channel, "eu-west")).HasField("welcome")


# -- the control plane dialing its own kind (relay, its own Flyte connector) ------------------


async def test_replicas_dial_each_other_trusting_their_own_certificate_and_its_name(
    sqlite_url: str, pki: Pki
) -> None:
    """A Service's certificate names no pod IP: the relay checks tls_server_name instead."""
    settings = tls(pki, pki.named_server, tls_server_name="fleet-cp.internal")
    request = jobs_pb2.JobLogsRequest(job_id="no-such-job")
    async with control_plane(sqlite_url, **settings) as (cp, _):
        address = f"127.0.0.1:{cp.port}"
        relay = Relay(
            cp.replicas, "another-replica",
            credentials=self_credentials(ControlPlaneSettings(**settings)),
            server_name="fleet-cp.internal",
        )
        unnamed = Relay(
            cp.replicas, "another-replica",
            credentials=self_credentials(ControlPlaneSettings(**settings)),
        )
        try:
            with pytest.raises(grpc.aio.AioRpcError) as answered:
                _ = [chunk async for chunk in relay.logs(address, request)]
            assert answered.value.code() == grpc.StatusCode.NOT_FOUND   # TLS worked
            with pytest.raises(grpc.aio.AioRpcError) as failed:
                _ = [chunk async for chunk in unnamed.logs(address, request)]
            assert failed.value.code() == grpc.StatusCode.UNAVAILABLE
            assert "Hostname Verification" in (failed.value.details() or "")
        finally:
            await relay.close()
            await unnamed.close()
