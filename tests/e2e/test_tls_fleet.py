"""End to end over TLS: a control plane serving TLS with mutual TLS for agents, real
`fleet agent` processes dialing its agent port with their own client certificates, a job
run to its end, and `fleet` commands that trust the CA (or do not)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from fleet.v1 import types_pb2 as P

from fleet_cli.local_fleet import FleetTls, LocalFleet
from fleet_client import FleetClient, FleetError
from tests.fleet_waits import fleet_logs, wait_until
from tests.tls_certs import CertificateAuthority, Issued

pytestmark = pytest.mark.e2e


def pools(name: str) -> dict[str, object]:
    return {
        "dataplane": {"name": name, "region": "us-east-1", "cloud": "test"},
        "pools": [{"name": "cpu", "purchase_type": "on_demand", "gpu_model": "",
                   "gpu_memory_gb": 0, "gpu_count": 0}],
    }  # fmt: skip


def cert_args(cert: Issued) -> tuple[str, ...]:
    return ("--tls-cert", str(cert.cert), "--tls-key", str(cert.key))


def fleet_cmd(
    fleet: LocalFleet, *args: str, env: dict[str, str]
) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("FLEET_")}
    return subprocess.run(
        [sys.executable, "-m", "fleet_cli", "--address", fleet.address, *args],
        capture_output=True, text=True, timeout=60, env={**clean, **env},
    )  # fmt: skip


def test_agents_with_their_certificates_run_a_job_over_mutual_tls(tmp_path: Path) -> None:
    ca = CertificateAuthority.create(tmp_path / "pki")
    server = ca.server("localhost", "127.0.0.1")
    tls = FleetTls(server.cert, server.key, ca.cert, client_ca=ca.cert)
    with LocalFleet(tmp_path / "fleet", heartbeat_interval_s=0.5, tls=tls) as fleet:
        fleet.start_control_plane()
        fleet.add_agent("east", pools("east"), extra_args=cert_args(ca.client("east")))
        # An agent presenting another dataplane's certificate is refused for good.
        fleet.add_agent("west", pools("west"), extra_args=cert_args(ca.client("east")))
        with fleet.client(timeout_s=10) as client:
            wait_until(lambda: _connected(client) == {"east"}, 60, "east to connect", fleet,
                       all_alive=False)  # fmt: skip
            job = client.submit(
                P.JobSpec(project="e2e", name="over-tls",
                          command=[sys.executable, "-c", "print('hello over mutual TLS')"])
            ).job  # fmt: skip
            done = client.wait(job.id, timeout_s=60)
            assert done.phase == P.JOB_PHASE_SUCCEEDED, fleet_logs(fleet)
            assert done.dataplane == "east"
            log = b"".join(client.logs(job.id))
            assert b"hello over mutual TLS" in log

            west = fleet.agents["west"].process
            assert west is not None
            assert west.wait(30) == 1, "a refused agent stops with exit code 1"
            west_log = fleet.agents["west"].log_file.read_text()
            assert "PERMISSION_DENIED" in west_log
            assert "'west'" in west_log and "east" in west_log
            assert _connected(client) == {"east"}

        listed = fleet_cmd(fleet, "-o", "json", "dataplanes", "list", env=fleet.client_env())
        assert listed.returncode == 0, listed.stderr
        assert '"east"' in listed.stdout
        untrusted = fleet_cmd(fleet, "dataplanes", "list", env={})
        assert untrusted.returncode == 3
        assert "CERTIFICATE_VERIFY_FAILED" in untrusted.stderr


def _connected(client: FleetClient) -> set[str]:
    try:
        return {d.name for d in client.list_dataplanes() if d.connected}
    except FleetError:
        return set()
