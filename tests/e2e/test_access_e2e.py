"""End to end with auth on: a control plane and an agent as subprocesses, the first admin
key made in the database, the agent enrolled for its own join token, and the `fleet` CLI
with project-scoped keys. No secret shows up in any log."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fleet_cli.local_fleet import LocalFleet
from tests.e2e.test_local_fleet import pools
from tests.fleet_waits import wait_until

pytestmark = pytest.mark.e2e


def fleet_cmd(fleet: LocalFleet, key: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **fleet.client_env(), "FLEET_API_KEY": key}
    return subprocess.run([sys.executable, "-m", "fleet_cli", *args],
                          capture_output=True, text=True, timeout=60, env=env)


def test_keys_scope_what_people_may_do_and_agents_join_with_their_token(
    tmp_path: Path,
) -> None:
    with LocalFleet(tmp_path / "fleet", heartbeat_interval_s=0.5, auth=True) as fleet:
        fleet.start_control_plane()
        admin = fleet.admin_key
        assert admin.startswith("fleet_")
        fleet.add_agent("east", pools("east", "us-east-1", "reserved"))
        token = fleet.agents["east"].join_token
        assert token.startswith("fleetdp_")

        made = fleet_cmd(fleet, admin, "keys", "create", "vision-ci", "--role", "submitter",
                         "--project", "vision")
        assert made.returncode == 0, made.stderr
        vision = made.stdout.strip()
        assert "not shown again" in made.stderr

        anonymous = fleet_cmd(fleet, "", "jobs", "list")
        assert anonymous.returncode == 1
        assert "metadata authorization: missing" in anonymous.stderr

        wait_until(lambda: "east" in fleet_cmd(fleet, admin, "dataplanes", "list").stdout,
                   60, "the agent to join with its token", fleet)
        done = fleet_cmd(fleet, vision, "-o", "json", "jobs", "submit", "--project", "vision",
                         "--gpus", "1", "--wait", "--", sys.executable, "-c", "print('hi')")
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)["phase"] == "JOB_PHASE_SUCCEEDED"
        other = fleet_cmd(fleet, vision, "jobs", "submit", "--project", "nlp", "--", "true")
        assert other.returncode == 1
        assert "may not submit in project 'nlp'" in other.stderr
        policy = fleet_cmd(fleet, vision, "dataplanes", "cordon", "east")
        assert policy.returncode == 1 and "needs the admin role" in policy.stderr

        audit = fleet_cmd(fleet, admin, "-o", "json", "audit")
        assert audit.returncode == 0, audit.stderr
        actions = [e["action"] for e in json.loads(audit.stdout)]
        assert actions == ["key.create", "dataplane.enroll"]

    logs = "".join(p.read_text(errors="replace") for p in fleet.root.rglob("*.log"))
    for secret in (admin, vision, token):
        assert secret not in logs
