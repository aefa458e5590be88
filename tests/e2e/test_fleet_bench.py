"""End to end: the fleet benchmark (bench/fleet_bench.py) runs at its tiny size and prints its
table with a figure in every row.

A real Postgres with durability on, control planes and hosts of simulated agents as
subprocesses, a load generator: the run must complete (exit 0) and print every row of the
table with a number. No timing is asserted: the figures depend on the machine. The rows
whose server side is still being built (SubmitBatch, the heartbeat histogram) may say
"n/a" instead.
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
TIMEOUT_S = 300
# The tiny size's rows, by the start of their measure (agent counts: bench/fleet_bench.py SIZES).
ROWS = [
    "submit, single",
    "submit, batched (",
    "submit, batched, while the fleet runs those jobs",
    "submit→launch at 50% of max",
    "submit→launch at 100% of max",
    "end to end: submit→launch→succeeded",
    "placement decisions/s",
    "join → first placement",
    *(f"{n} agents heartbeating every" for n in (5, 10, 20)),
    *(f"{n} agents: heartbeat handling p99" for n in (5, 10, 20)),
    "failover: agent killed",
    "machine: Postgres single-row INSERT commits/s",
    "machine: bare grpc.aio unary echo",
]
MAY_BE_MISSING = ("submit, batched", "agents: heartbeat handling p99")


def table_rows(output: str) -> dict[str, str]:
    """measure -> value, from the markdown table the benchmark prints."""
    rows = {}
    for line in output.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if line.startswith("| ") and len(cells) == 5 and cells[0] != "measure":
            rows[cells[0]] = cells[1]
    return rows


def test_tiny_fleet_benchmark_prints_a_figure_in_every_row() -> None:
    process = subprocess.Popen(
        [sys.executable, str(ROOT / "bench" / "fleet_bench.py"), "--size", "tiny", "--no-record"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        output, _ = process.communicate(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        # SIGTERM: the benchmark stops its control planes, agents and Postgres.
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=60)
        pytest.fail(f"the tiny benchmark did not finish in {TIMEOUT_S}s:\n{output}")

    assert process.returncode == 0, output
    rows = table_rows(output)
    assert len(rows) == len(ROWS), output
    for start in ROWS:
        found = [measure for measure in rows if measure.startswith(start)]
        assert len(found) == 1, f"no single row for {start!r}:\n{output}"
        value = rows[found[0]]
        if any(part in start for part in MAY_BE_MISSING) and value.startswith("n/a"):
            continue
        assert re.search(r"\d", value), f"{found[0]}: no figure in {value!r}"
