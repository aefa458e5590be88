"""Fixtures of the agent tests: a workdir whose processes are all gone after the test."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest

from dataplane_agent import stop_all_attempts

Eventually = Callable[[Callable[[], object], str], Awaitable[None]]


def processes_under(folder: Path) -> list[int]:
    """Pids of the processes whose working directory lies under folder (runners and jobs)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            cwd = Path(os.readlink(entry / "cwd"))
            if cwd == folder or folder in cwd.parents:
                found.append(int(entry.name))
    return found


@pytest.fixture
def workdir(tmp_path: Path) -> Iterator[Path]:
    work = tmp_path / "work"
    work.mkdir()
    yield work
    stop_all_attempts(work)
    for pid in processes_under(work):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


@pytest.fixture
def processes_in() -> Callable[[Path], list[int]]:
    """processes_under, for tests that check nothing is left running."""
    return processes_under


@pytest.fixture
def eventually() -> Eventually:
    """Wait until check() is truthy (polling); fail with what was awaited after 15 s."""

    async def wait(check: Callable[[], object], what: str) -> None:
        for _ in range(300):
            if check():
                return
            await asyncio.sleep(0.05)
        raise AssertionError(f"timed out waiting for: {what}")

    return wait
