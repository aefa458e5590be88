"""The detached runner of one attempt: ``python -m dataplane_agent.launcher.runner <folder>``.

Started in its own session by the launcher, it outlives the agent (a restart, a Ctrl-C in
the agent's terminal) and needs nothing but the attempt's folder. It holds the folder's
runner.lock for its whole life, runs the job in the job's own process group, enforces the
timeout and any cancel request (SIGTERM to the group, SIGKILL after the grace period),
writes result.json, and exits. Standard library only: it stays small in memory.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import fcntl
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO

from dataplane_agent.domain.attempt import Outcome, OutcomeKind
from dataplane_agent.launcher.folder import RUNNER_NOTE, AttemptFolder, AttemptMeta, now_utc

WAIT_STEP_S = 0.1
PR_SET_PDEATHSIG = 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="dataplane_agent.launcher.runner")
    parser.add_argument("folder", type=Path)
    parser.add_argument("--lock-fd", type=int, default=None,
                        help="runner.lock, already locked by the launcher")
    args = parser.parse_args(argv)
    folder = AttemptFolder(args.folder)
    lock_fd = args.lock_fd if args.lock_fd is not None else folder.take_lock()
    if lock_fd is None:
        print(f"another runner holds {folder.lock_path}", file=sys.stderr)
        return 0
    try:
        outcome = run_attempt(folder, folder.meta(), folder.spawned_devices() or ())
    except Exception as error:  # recorded as the attempt's failure, not lost
        outcome = Outcome(OutcomeKind.START_ERROR, message=f"runner error: {error!r}")
    folder.write_outcome(outcome)
    # The lock is released only now, after the result exists (see derive_status).
    fcntl.flock(lock_fd, fcntl.LOCK_UN)
    return 0


def run_attempt(folder: AttemptFolder, meta: AttemptMeta, devices: tuple[int, ...]) -> Outcome:
    cancel = folder.cancel_request()
    if cancel is not None:
        return Outcome(OutcomeKind.CANCELLED, message=cancel.reason)
    if not meta.command:
        return Outcome(OutcomeKind.START_ERROR, message="the job spec has no command")
    with open(folder.log_path, "ab", buffering=0) as log:
        try:
            job = subprocess.Popen(
                list(meta.command), cwd=folder.path, env=job_environment(meta, devices),
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                process_group=0, preexec_fn=_die_with_runner(os.getpid()),
            )
        except OSError as error:
            message = f"cannot start {meta.command[0]!r}: {error.strerror or error}"
            log.write(f"{RUNNER_NOTE}{message}\n".encode())
            return Outcome(OutcomeKind.START_ERROR, message=message)
        folder.write_started(job.pid, now_utc())
        return _watch(folder, meta, job, log)


def job_environment(meta: AttemptMeta, devices: tuple[int, ...]) -> dict[str, str]:
    return {
        **os.environ,
        **meta.env,
        "FLEET_JOB_ID": meta.job_id,
        "FLEET_ATTEMPT_ID": meta.attempt_id,
        "FLEET_EPOCH": str(meta.epoch),
        "FLEET_DATAPLANE": meta.dataplane,
        "FLEET_POOL": meta.pool,
        "FLEET_GPUS": str(len(devices)),
        "CUDA_VISIBLE_DEVICES": ",".join(str(d) for d in devices),
    }


def _watch(
    folder: AttemptFolder, meta: AttemptMeta, job: subprocess.Popen[bytes], log: IO[bytes]
) -> Outcome:
    deadline = None if meta.timeout_s is None else time.monotonic() + meta.timeout_s
    stopping: OutcomeKind | None = None
    stop_message = ""
    kill_at = 0.0
    while True:
        try:
            code = job.wait(timeout=WAIT_STEP_S)
            break
        except subprocess.TimeoutExpired:
            pass
        now = time.monotonic()
        if stopping is None:
            cancel = folder.cancel_request()
            if cancel is not None:
                stopping, stop_message = OutcomeKind.CANCELLED, cancel.reason
                kill_at = now + cancel.grace_s
            elif deadline is not None and now >= deadline:
                stopping = OutcomeKind.DEADLINE_EXCEEDED
                stop_message = f"killed at its deadline of {meta.timeout_s:g}s"
                kill_at = now + meta.kill_grace_s
            if stopping is not None:
                note = f"{RUNNER_NOTE}{stop_message or 'cancelled'}: sending SIGTERM\n"
                log.write(note.encode())
                _signal_group(job.pid, signal.SIGTERM)
        elif now >= kill_at:
            _signal_group(job.pid, signal.SIGKILL)
    # Whatever the job left behind in its group ends with it, as in a pod.
    _signal_group(job.pid, signal.SIGKILL)
    exit_code = 128 - code if code < 0 else code
    return Outcome(stopping or OutcomeKind.EXITED, exit_code=exit_code, message=stop_message)


def _signal_group(pgid: int, signum: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signum)


def _die_with_runner(runner_pid: int) -> Callable[[], None] | None:
    """A preexec_fn that has Linux SIGKILL the job if its runner dies (no orphan runs on)."""
    if not sys.platform.startswith("linux"):
        return None
    libc = ctypes.CDLL(None, use_errno=True)

    def arrange() -> None:
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != runner_pid:   # the runner died before prctl took effect
            os._exit(137)

    return arrange


if __name__ == "__main__":
    sys.exit(main())
