"""The local-process launcher: real runner and job processes in a temporary workdir."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from dataplane_agent import stop_all_attempts
from dataplane_agent.domain.attempt import AttemptStatus, Phase
from dataplane_agent.launcher import (
    InvalidAttemptId,
    LaunchRequest,
    ProcessLauncher,
    UnknownAttempt,
    WorkdirBusy,
)
from tests.agent.pools import fixed_pools

# The `eventually` fixture of conftest.py: wait until check() is truthy.
Eventually = Callable[[Callable[[], object], str], Awaitable[None]]

POOLS = fixed_pools({"h100": 3, "cpu": 0})


class Recorder:
    """A launcher listener that keeps every phase change."""

    def __init__(self) -> None:
        self.changes: list[AttemptStatus] = []

    def __call__(self, status: AttemptStatus) -> None:
        self.changes.append(status)

    def phases(self, attempt_id: str) -> list[Phase]:
        return [s.phase for s in self.changes if s.attempt_id == attempt_id]


def new_launcher(
    workdir: Path, recorder: Recorder | None = None, retention_s: float = 24 * 3600.0
) -> ProcessLauncher:
    return ProcessLauncher(
        workdir, "test-dp", POOLS, recorder, poll_interval_s=0.05, kill_grace_s=1.0,
        retention_s=retention_s,
    )


@pytest.fixture
async def recorder() -> Recorder:
    return Recorder()


@pytest.fixture
async def launcher(workdir: Path, recorder: Recorder) -> AsyncIterator[ProcessLauncher]:
    async with new_launcher(workdir, recorder) as running:
        yield running


def request(attempt_id: str, *command: str, gpus: int = 0, pool: str = "h100",
            timeout_s: float | None = None, env: dict[str, str] | None = None) -> LaunchRequest:
    return LaunchRequest(
        attempt_id=attempt_id, job_id=f"job-{attempt_id}", epoch=7, pool=pool, gpus=gpus,
        command=command, env=env or {}, timeout_s=timeout_s,
    )


def sh(script: str) -> tuple[str, ...]:
    return ("sh", "-c", script)


def status_of(launcher: ProcessLauncher, attempt_id: str) -> AttemptStatus | None:
    return next((s for s in launcher.statuses() if s.attempt_id == attempt_id), None)


def phase_of(launcher: ProcessLauncher, attempt_id: str) -> Phase | None:
    status = status_of(launcher, attempt_id)
    return None if status is None else status.phase


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with contextlib.suppress(OSError):   # a zombie is not running
        return "\nState:\tZ" not in Path(f"/proc/{pid}/status").read_text()
    return False


async def test_launch_runs_the_command_and_captures_exit_code_log_and_environment(
    launcher: ProcessLauncher, recorder: Recorder, workdir: Path, eventually: Eventually
) -> None:
    script = ("echo out $FLEET_JOB_ID $FLEET_ATTEMPT_ID $FLEET_EPOCH $FLEET_DATAPLANE $FLEET_POOL "
              "gpus=$FLEET_GPUS cuda=$CUDA_VISIBLE_DEVICES $GREETING; echo err >&2; pwd")

    first = await launcher.launch(request("a1", *sh(script), gpus=2, env={"GREETING": "hi"}))

    await eventually(lambda: phase_of(launcher, "a1") == Phase.SUCCEEDED, "a1 succeeded")
    status = status_of(launcher, "a1")
    assert status is not None
    assert (status.exit_code, status.job_id, status.epoch, status.pool) == (0, "job-a1", 7, "h100")
    assert status.started_at is not None and status.finished_at is not None
    assert first.phase in (Phase.STARTING, Phase.RUNNING)
    assert recorder.phases("a1")[-1] == Phase.SUCCEEDED
    folder = workdir / "attempts" / "a1"
    log = (await launcher.read_log("a1", 10_000)).decode()
    assert log.splitlines() == [
        "out job-a1 a1 7 test-dp h100 gpus=2 cuda=0,1 hi", "err", str(folder),
    ]
    assert await launcher.read_log("a1", 4) == f"{folder}\n".encode()[-4:]


async def test_a_repeated_launch_is_a_no_op(
    launcher: ProcessLauncher, workdir: Path, tmp_path: Path, eventually: Eventually
) -> None:
    runs = tmp_path / "runs.txt"
    go = tmp_path / "go"
    job = request("once", *sh(f"echo ran >> {runs}; while [ ! -e {go} ]; do sleep 0.02; done"))

    await launcher.launch(job)
    await eventually(lambda: phase_of(launcher, "once") == Phase.RUNNING, "running")
    again = await launcher.launch(job)
    go.touch()
    await eventually(lambda: phase_of(launcher, "once") == Phase.SUCCEEDED, "succeeded")
    after_the_end = await launcher.launch(job)

    assert again.phase == Phase.RUNNING
    assert after_the_end.phase == Phase.SUCCEEDED
    assert runs.read_text() == "ran\n"
    assert len(launcher.statuses()) == 1


async def test_a_failing_command_is_failed_with_exit_code_and_last_log_line(
    launcher: ProcessLauncher, eventually: Eventually
) -> None:
    await launcher.launch(request("bad", *sh("echo starting; echo 'bad thing happened'; exit 3")))

    await eventually(lambda: phase_of(launcher, "bad") == Phase.FAILED, "failed")
    status = status_of(launcher, "bad")
    assert status is not None
    assert (status.reason, status.exit_code) == ("Error", 3)
    assert status.message == "exit code 3: bad thing happened"


async def test_a_missing_executable_is_failed_not_a_crash(
    launcher: ProcessLauncher, eventually: Eventually
) -> None:
    await launcher.launch(request("ghost", "definitely-not-a-program-xyz", "arg"))

    await eventually(lambda: phase_of(launcher, "ghost") == Phase.FAILED, "failed")
    status = status_of(launcher, "ghost")
    assert status is not None
    assert status.reason == "Error"
    assert status.message == (
        "cannot start 'definitely-not-a-program-xyz': No such file or directory"
    )
    assert b"cannot start" in await launcher.read_log("ghost", 1000)


async def test_the_runner_kills_the_job_at_its_deadline(
    launcher: ProcessLauncher, eventually: Eventually
) -> None:
    await launcher.launch(request("slow", *sh("echo working; exec sleep 30"), timeout_s=0.3))

    await eventually(lambda: phase_of(launcher, "slow") == Phase.FAILED, "failed")
    status = status_of(launcher, "slow")
    assert status is not None
    assert (status.reason, status.exit_code) == ("DeadlineExceeded", 143)
    assert status.message == "killed at its deadline of 0.3s (exit code 143): working"


async def test_cancel_stops_the_job_and_reports_cancelled(
    launcher: ProcessLauncher, tmp_path: Path, eventually: Eventually
) -> None:
    pid_file = tmp_path / "pid"
    await launcher.launch(request("c1", *sh(f"echo $$ > {pid_file}; exec sleep 30")))
    await eventually(lambda: pid_file.exists() and pid_file.read_text().strip(), "job started")
    pid = int(pid_file.read_text())

    assert await launcher.cancel("c1", "user asked", grace_s=5.0)

    await eventually(lambda: phase_of(launcher, "c1") == Phase.CANCELLED, "cancelled")
    status = status_of(launcher, "c1")
    assert status is not None
    assert (status.reason, status.message) == ("Cancelled", "cancelled: user asked")
    assert not alive(pid)


async def test_cancel_kills_a_job_that_ignores_sigterm_after_the_grace_period(
    launcher: ProcessLauncher, tmp_path: Path, eventually: Eventually
) -> None:
    ready = tmp_path / "ready"
    stubborn = (
        "import signal, time, pathlib; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
        f"pathlib.Path({str(ready)!r}).touch(); time.sleep(30)"
    )
    await launcher.launch(request("stubborn", sys.executable, "-c", stubborn))
    await eventually(ready.exists, "job ignoring SIGTERM")

    await launcher.cancel("stubborn", "", grace_s=0.2)

    await eventually(lambda: phase_of(launcher, "stubborn") == Phase.CANCELLED, "cancelled")
    status = status_of(launcher, "stubborn")
    assert status is not None and status.exit_code == 128 + signal.SIGKILL


async def test_cancel_of_a_waiting_attempt_is_immediate(launcher: ProcessLauncher) -> None:
    await launcher.launch(request("big", "sleep", "30", gpus=3))
    await launcher.launch(request("queued", "true", gpus=1))

    assert await launcher.cancel("queued", "not needed", grace_s=1.0)

    assert phase_of(launcher, "queued") == Phase.CANCELLED
    assert not await launcher.cancel("never-launched", "", grace_s=1.0)


async def test_a_new_launcher_adopts_a_running_attempt_and_sees_it_finish_without_rerunning(
    workdir: Path, tmp_path: Path, eventually: Eventually
) -> None:
    runs, go = tmp_path / "runs.txt", tmp_path / "go"
    job = request("kept", *sh(f"echo ran >> {runs}; while [ ! -e {go} ]; do sleep 0.02; done"))
    async with new_launcher(workdir) as before_restart:
        await before_restart.launch(request("done-before", "true"))
        await before_restart.launch(job)
        await eventually(lambda: phase_of(before_restart, "kept") == Phase.RUNNING, "running")
        await eventually(
            lambda: phase_of(before_restart, "done-before") == Phase.SUCCEEDED, "succeeded"
        )

    recorder = Recorder()
    async with new_launcher(workdir, recorder) as after_restart:
        assert phase_of(after_restart, "kept") == Phase.RUNNING
        assert phase_of(after_restart, "done-before") == Phase.SUCCEEDED
        again = await after_restart.launch(job)
        go.touch()
        await eventually(lambda: phase_of(after_restart, "kept") == Phase.SUCCEEDED, "succeeded")

    assert again.phase == Phase.RUNNING
    assert recorder.phases("kept") == [Phase.SUCCEEDED]
    assert runs.read_text() == "ran\n"


async def test_a_second_launcher_on_a_busy_workdir_is_refused(
    launcher: ProcessLauncher, workdir: Path
) -> None:
    with pytest.raises(WorkdirBusy, match="another agent is using the workdir"):
        new_launcher(workdir).open()


async def test_a_runner_killed_hard_makes_the_attempt_lost_and_takes_its_job_along(
    launcher: ProcessLauncher, workdir: Path, tmp_path: Path, eventually: Eventually
) -> None:
    pid_file = tmp_path / "pid"
    await launcher.launch(request("doomed", *sh(f"echo $$ > {pid_file}; exec sleep 30")))
    await eventually(lambda: pid_file.exists() and pid_file.read_text().strip(), "job started")
    job_pid = int(pid_file.read_text())
    runner_pid = int((workdir / "attempts" / "doomed" / "runner.pid").read_text())

    os.kill(runner_pid, signal.SIGKILL)

    await eventually(lambda: phase_of(launcher, "doomed") == Phase.LOST, "lost")
    status = status_of(launcher, "doomed")
    assert status is not None and status.reason == "RunnerVanished"
    await eventually(lambda: not alive(job_pid), "the orphaned job is gone")


async def test_an_attempt_waits_for_gpus_of_its_pool_and_starts_when_others_end(
    launcher: ProcessLauncher, tmp_path: Path, eventually: Eventually
) -> None:
    go = tmp_path / "go"
    wait_for_go = sh(f"while [ ! -e {go} ]; do sleep 0.02; done")
    await launcher.launch(request("first", *wait_for_go, gpus=2))
    await launcher.launch(request("second", *sh("echo cuda=$CUDA_VISIBLE_DEVICES"), gpus=2))
    await eventually(lambda: phase_of(launcher, "first") == Phase.RUNNING, "first running")

    waiting = status_of(launcher, "second")
    assert waiting is not None
    assert (waiting.phase, waiting.message) == (Phase.STARTING, "waiting for 2 GPUs in pool h100")
    # The 1 GPU left over is promised to nobody, but the waiting attempt's 2 count as
    # taken: the control plane must not place more here.
    assert [(p.name, p.gpu_total, p.gpu_free) for p in launcher.pools()] == [
        ("h100", 3, 0), ("cpu", 0, 0)
    ]

    go.touch()

    await eventually(lambda: phase_of(launcher, "second") == Phase.SUCCEEDED, "second done")
    assert await launcher.read_log("second", 100) == b"cuda=0,1\n"
    assert [(p.name, p.gpu_free) for p in launcher.pools()] == [("h100", 3), ("cpu", 0)]


@pytest.mark.parametrize(
    ("pool", "gpus", "message"),
    [
        ("v100", 1, "unknown pool 'v100' (this dataplane has: cpu, h100)"),
        ("h100", 4, "wants 4 GPUs but pool 'h100' has only 3"),
    ],
)
async def test_a_launch_that_cannot_fit_this_dataplane_is_failed_invalid_pool(
    launcher: ProcessLauncher, recorder: Recorder, pool: str, gpus: int, message: str
) -> None:
    status = await launcher.launch(request("misfit", "true", pool=pool, gpus=gpus))

    assert (status.phase, status.reason, status.message) == (Phase.FAILED, "InvalidPool", message)
    assert recorder.phases("misfit") == [Phase.FAILED]
    assert phase_of(launcher, "misfit") == Phase.FAILED


async def test_unsafe_attempt_ids_are_refused(launcher: ProcessLauncher, workdir: Path) -> None:
    for bad in ("../escape", "", ".hidden", "a/b", "x" * 200):
        with pytest.raises(InvalidAttemptId):
            await launcher.launch(request(bad, "true"))
    assert not (workdir / "escape").exists()
    assert launcher.statuses() == []


async def test_forget_stops_reporting_keeps_the_log_and_later_deletes_the_folder(
    workdir: Path, eventually: Eventually
) -> None:
    async with new_launcher(workdir) as launcher:
        await launcher.launch(request("old", *sh("echo bye")))
        await eventually(lambda: phase_of(launcher, "old") == Phase.SUCCEEDED, "succeeded")

        assert await launcher.forget("old")

        assert launcher.statuses() == []
        assert await launcher.read_log("old", 100) == b"bye\n"
        with pytest.raises(UnknownAttempt):
            await launcher.read_log("never", 100)

    async with new_launcher(workdir) as restarted:   # within the retention: kept, not reported
        assert restarted.statuses() == []
        assert (workdir / "attempts" / "old" / "log").exists()

    async with new_launcher(workdir, retention_s=0.0) as expired:
        assert expired.statuses() == []
        assert not (workdir / "attempts" / "old").exists()


async def test_stop_all_attempts_kills_every_running_attempt(
    workdir: Path, eventually: Eventually, processes_in: Callable[[Path], list[int]]
) -> None:
    async with new_launcher(workdir) as launcher:
        for name in ("s1", "s2"):
            await launcher.launch(request(name, "sleep", "30"))
        await launcher.launch(request("finished", "true"))
        await eventually(
            lambda: [s.phase for s in launcher.statuses()]
            == [Phase.RUNNING, Phase.RUNNING, Phase.SUCCEEDED],
            "two running, one finished",
        )

    assert stop_all_attempts(workdir) == 2

    assert processes_in(workdir) == []
    assert stop_all_attempts(workdir) == 0
    async with new_launcher(workdir) as restarted:
        assert [s.phase for s in restarted.statuses()] == [
            Phase.CANCELLED, Phase.CANCELLED, Phase.SUCCEEDED
        ]
