"""End to end: the short chaos run (bench/chaos.py) passes its own checks.

A real Postgres with durability on, a control plane and three agents as subprocesses, jobs
submitted at a steady rate while agents, the control plane and Postgres are killed and
restarted. The harness checks the registry, the jobs' runs log and the attempt folders; this
test reads its verdict: exit 0, jobs acknowledged, none lost, none run twice. The seed picks
kills of every kind (an agent, the control plane, Postgres by kill -9 and by immediate stop).
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
# lost_after well above the agent's longest reconnect backoff (10 s) plus its restart, so
# that no dataplane is declared lost: then nothing may run twice (the harness's default
# 6 s is shorter than that backoff; see the README's "Chaos harness").
SHORT_RUN = [
    "--seconds", "30", "--kills", "5", "--agents", "3", "--rate", "5", "--seed", "23",
    "--gap", "0.5", "2", "--stale-after", "5", "--lost-after", "20",
]
TIMEOUT_S = 300


def table_value(output: str, measure: str) -> str:
    match = re.search(rf"^\| {re.escape(measure)} \| (.*?) \|$", output, re.MULTILINE)
    assert match is not None, f"no '{measure}' row in the table:\n{output}"
    return match.group(1)


def test_short_chaos_run_loses_nothing_and_runs_nothing_twice(tmp_path: Path) -> None:
    command = [sys.executable, str(ROOT / "bench" / "chaos.py"), *SHORT_RUN]
    process = subprocess.Popen(
        [*command, "--dir", str(tmp_path / "chaos")],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        output, _ = process.communicate(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        # SIGTERM: the harness stops its fleet (agents, runners, control plane, Postgres).
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=60)
        pytest.fail(f"the chaos run did not finish in {TIMEOUT_S}s:\n{output}")

    assert process.returncode == 0, output
    assert int(table_value(output, "submitted (acknowledged)")) > 0, output
    assert table_value(output, "lost") == "0", output
    assert table_value(output, "duplicated") == "0", output
    assert int(table_value(output, "succeeded")) == int(
        table_value(output, "submitted (acknowledged)")
    ), output
