"""`fleet demo` as a user runs it: it succeeds, says where each job ran, and leaves nothing
behind, also when interrupted with Ctrl-C."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e


def fleet_processes(marker: str) -> list[str]:
    """Command lines of live processes that mention marker (our demo's temp folder)."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if marker in cmdline and str(os.getpid()) != proc.name:
            found.append(cmdline)
    return found


def demo_folder(output: str) -> str:
    match = re.search(r"flyte-fleet demo in (\S+)", output)
    assert match, output
    return match.group(1)


def run_demo(tmp: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "fleet_cli", "demo"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "TMPDIR": str(tmp)},
    )


def test_demo_runs_every_job_and_cleans_up(tmp_path: Path) -> None:
    demo = run_demo(tmp_path)
    output, _ = demo.communicate(timeout=240)
    assert demo.returncode == 0, output
    assert "12 of 12 jobs succeeded" in output
    for dataplane in ("onprem-dc1", "aws-us-east-1", "gcp-europe-west4-spot"):
        assert dataplane in output, f"{dataplane} ran nothing:\n{output}"
    assert "pretrain-llm" in output and "reserved" in output and "spot" in output
    # The Flyte workflow's EU-only task ran in the EU, the others elsewhere.
    result = next(line for line in output.splitlines() if line.startswith("workflow result:"))
    assert "embed_in_eu@gcp-europe-west4-spot/l4" in result
    assert "prepare_data@aws-us-east-1/cpu" in result
    folder = demo_folder(output)
    assert not Path(folder).exists(), "the demo's folder is removed"
    assert fleet_processes(folder) == []


def test_demo_interrupted_stops_everything(tmp_path: Path) -> None:
    demo = run_demo(tmp_path)
    assert demo.stdout is not None
    first_line = demo.stdout.readline()
    folder = demo_folder(first_line)
    deadline = time.monotonic() + 60
    while not list(Path(folder).glob("agents/*/work/attempts/*")):
        assert time.monotonic() < deadline, "no attempt started within 60 s"
        assert demo.poll() is None, demo.stdout.read()
        time.sleep(0.1)
    demo.send_signal(signal.SIGINT)
    rest, _ = demo.communicate(timeout=60)
    assert demo.returncode == 130, rest
    assert "interrupted" in rest
    assert not Path(folder).exists()
    assert fleet_processes(folder) == []


def test_demo_runs_again_cleanly(tmp_path: Path) -> None:
    # Two demos at once: free ports and separate folders, both succeed.
    demos = [run_demo(Path(tempfile.mkdtemp(dir=tmp_path))) for _ in range(2)]
    for demo in demos:
        output, _ = demo.communicate(timeout=240)
        assert demo.returncode == 0, output
