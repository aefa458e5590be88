"""Stopping every attempt under a workdir, for `fleet demo`'s cleanup on exit."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import time
from pathlib import Path

from dataplane_agent.launcher.folder import AttemptFolder, CancelRequest, attempt_folders

log = logging.getLogger(__name__)


def stop_all_attempts(workdir: Path) -> int:
    """Kill every attempt still running under workdir (runner and job); how many were killed.

    Each is marked cancelled first, so an agent that adopts the folder later reports it
    CANCELLED rather than LOST.
    """
    killed: list[AttemptFolder] = []
    jobs: list[int] = []
    for folder in attempt_folders(workdir):
        if not folder.runner_alive():
            continue
        folder.write_cancel(CancelRequest("stopped by stop_all_attempts", 0.0))
        runner_pid = folder.runner_pid()
        if runner_pid is not None:
            _kill_group(runner_pid)   # the runner leads its own session and group
        started = folder.started()
        if started is not None:
            _kill_group(started[0])   # the job leads its own group
            jobs.append(started[0])
        killed.append(folder)
    # A signal is delivered asynchronously: wait until they are really gone.
    deadline = time.monotonic() + 5.0
    while time.monotonic() < deadline and (
        any(folder.runner_alive() for folder in killed) or not all(map(_exited, jobs))
    ):
        time.sleep(0.02)
    if killed:
        log.info("stopped %d running attempts under %s", len(killed), workdir)
    return len(killed)


def _exited(pid: int) -> bool:
    """True when the process is gone or a zombie (its parent may never reap it)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as stat:
            state = stat.read().rpartition(")")[2].split()[0]
    except FileNotFoundError:
        return True
    except OSError:   # no /proc: ask the kernel whether the pid exists
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        return False
    return state in ("Z", "X")


def _kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)
