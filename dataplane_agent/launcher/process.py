"""The local-process launcher: each attempt runs under a detached runner process.

All state lives in the attempt folders (see folder.py), so a new launcher on the same
workdir re-adopts everything and launches nothing twice. The launcher polls the folders
of live attempts, which works for runners it did not spawn itself (after a restart).
Cancels are carried out by the runner (it outlives the agent): the launcher writes the
cancel_requested marker and the runner sends SIGTERM to the job's process group, then
SIGKILL after the grace period.

A Flyte task (a command with Flyte's placeholders, or a job with inputs) is staged first:
its inputs go to its prefix in the dataplane's store and its command is rendered to that
prefix (see flyte_tasks.py). When its process has exited, the watcher reads what the task
left there, keeps it in the attempt folder, and only then ends the attempt, so that
SUCCEEDED always comes with its outputs.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from types import TracebackType

from dataplane_agent.domain.attempt import (
    AttemptStatus,
    Outcome,
    OutcomeKind,
    Phase,
    Verdict,
    derive_status,
)
from dataplane_agent.domain.capacity import (
    Holding,
    PoolReport,
    Waiting,
    admit,
    pool_problem,
    pool_usage,
)
from dataplane_agent.launcher import staging
from dataplane_agent.launcher.base import (
    LaunchRequest,
    StatusListener,
    UnknownAttempt,
    check_attempt_id,
)
from dataplane_agent.launcher.flyte_tasks import FlyteTasks
from dataplane_agent.launcher.folder import (
    AttemptFolder,
    AttemptMeta,
    CancelRequest,
    attempt_folders,
    now_utc,
)

log = logging.getLogger(__name__)

RUNNER_MODULE = "dataplane_agent.launcher.runner"
CLEANUP_EVERY_S = 60.0
MAX_LOG_TAIL = 16 * 1024 * 1024


class WorkdirBusy(RuntimeError):
    """Another agent uses this workdir."""


@dataclass
class _Held:
    folder: AttemptFolder
    meta: AttemptMeta
    verdict: Verdict | None = None
    devices: tuple[int, ...] | None = None    # None until a runner was spawned
    started_at: datetime | None = None
    finished_at: datetime | None = None
    forgotten: bool = False
    outputs: bytes = b""   # a staged attempt's, once SUCCEEDED

    @property
    def final(self) -> bool:
        return self.verdict is not None and self.verdict.phase.final

    def status(self) -> AttemptStatus:
        assert self.verdict is not None, "derived when the attempt was created or adopted"
        return AttemptStatus(
            attempt_id=self.meta.attempt_id, job_id=self.meta.job_id, epoch=self.meta.epoch,
            pool=self.meta.pool, phase=self.verdict.phase, reason=self.verdict.reason,
            message=self.verdict.message, exit_code=self.verdict.exit_code,
            started_at=self.started_at, finished_at=self.finished_at,
            outputs=self.outputs if self.verdict.phase is Phase.SUCCEEDED else b"",
        )


class ProcessLauncher:
    """Runs attempts as local processes; use as ``async with ProcessLauncher(...) as l:``."""

    def __init__(
        self,
        workdir: Path,
        dataplane: str,
        pools: Sequence[PoolReport],
        on_change: StatusListener | None = None,
        *,
        poll_interval_s: float = 0.25,
        kill_grace_s: float = 10.0,
        retention_s: float = 24 * 3600.0,
        python: str = sys.executable,
        store_prefix: str | None = None,
    ) -> None:
        self._workdir = workdir
        # Staged attempts keep their data under the store prefix (any fsspec URL).
        self._tasks = FlyteTasks(store_prefix or str(workdir / "store"))
        self._dataplane = dataplane
        self._reports = list(pools)
        self._pools = {pool.name: pool.gpu_total for pool in pools}
        self._on_change = on_change
        self._poll_interval_s = poll_interval_s
        self._kill_grace_s = kill_grace_s
        self._retention_s = retention_s
        self._python = python
        self._held: dict[str, _Held] = {}
        self._runners: list[subprocess.Popen[bytes]] = []
        self._workdir_lock: int | None = None
        self._watcher: asyncio.Task[None] | None = None
        self._next_cleanup = 0.0

    # -- lifetime ------------------------------------------------------------------------------

    async def __aenter__(self) -> ProcessLauncher:
        self.open()
        self._watcher = asyncio.create_task(self._watch(), name="launcher-watch")
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher
        self.close()

    def open(self) -> None:
        """Lock the workdir against a second agent and re-adopt every attempt folder."""
        (self._workdir / "attempts").mkdir(parents=True, exist_ok=True)
        self._tasks.open()
        fd = os.open(self._workdir / "agent.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise WorkdirBusy(f"another agent is using the workdir {self._workdir}") from None
        self._workdir_lock = fd
        for folder in attempt_folders(self._workdir):
            self._adopt(folder)
        self._tick()
        live = sum(1 for held in self._held.values() if not held.final)
        log.info("launcher adopted %d attempts (%d not finished) in %s",
                 len(self._held), live, self._workdir)

    def close(self) -> None:
        """Stop watching; the attempts' runners go on and a later launcher re-adopts them."""
        if self._workdir_lock is not None:
            os.close(self._workdir_lock)
            self._workdir_lock = None

    @property
    def store_prefix(self) -> str:
        return self._tasks.store_prefix

    # -- the Launcher protocol -------------------------------------------------------------

    async def launch(self, request: LaunchRequest) -> AttemptStatus:
        check_attempt_id(request.attempt_id)
        if request.attempt_id in self._held:
            return self._held[request.attempt_id].status()
        problem = pool_problem(self._pools, request.pool, request.gpus)
        if problem is not None:
            return await self.reject(request, "InvalidPool", problem)
        try:
            staged = await self._tasks.stage(request)
        except staging.StagingError as error:
            return await self.reject(request, error.reason, str(error))
        if request.attempt_id in self._held:   # a repeated launch got there while it staged
            return self._held[request.attempt_id].status()
        held = self._create(request, staged)
        if held.verdict is not None:   # the folder existed: the attempt was launched before
            return held.status()
        log.info("launched attempt %s (job %s, pool %s, %d GPUs)",
                 request.attempt_id, request.job_id, request.pool, request.gpus)
        self._admit()
        self._refresh(held)
        return held.status()

    async def reject(self, request: LaunchRequest, reason: str, message: str) -> AttemptStatus:
        check_attempt_id(request.attempt_id)
        if request.attempt_id in self._held:
            return self._held[request.attempt_id].status()
        held = self._create(request)
        if held.verdict is None:
            held.folder.write_outcome(Outcome(OutcomeKind.REJECTED, reason=reason, message=message))
            log.warning("refused attempt %s: %s: %s", request.attempt_id, reason, message)
            self._refresh(held)
        return held.status()

    async def cancel(self, attempt_id: str, reason: str, grace_s: float) -> bool:
        held = self._held.get(attempt_id)
        if held is None:
            return False
        if not held.final:
            held.folder.write_cancel(CancelRequest(reason, grace_s))
            log.info("cancelling attempt %s: %s", attempt_id, reason or "requested")
            self._refresh(held)   # a waiting attempt is CANCELLED at once
            self._admit()
        return True

    async def forget(self, attempt_id: str) -> bool:
        held = self._held.get(attempt_id)
        if held is None:
            return False
        if not held.final:
            await self.cancel(attempt_id, "forgotten by the control plane", self._kill_grace_s)
        held.forgotten = True
        held.folder.write_forgotten()
        self._drop_forgotten()
        return True

    async def read_log(self, attempt_id: str, tail_bytes: int) -> bytes:
        folder = self._folder(attempt_id)
        if folder is None or not folder.has_meta():
            raise UnknownAttempt(attempt_id)
        return folder.log_tail(min(max(tail_bytes, 0), MAX_LOG_TAIL))

    def statuses(self) -> list[AttemptStatus]:
        return [held.status() for held in self._in_order() if not held.forgotten]

    def pools(self) -> list[PoolReport]:
        usage = {u.name: u for u in pool_usage(self._pools, self._holdings(), self._waiting())}
        return [replace(report, gpu_free=usage[report.name].free) for report in self._reports]

    def knows(self, attempt_id: str) -> bool:
        return attempt_id in self._held

    # -- watching ------------------------------------------------------------------------------

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self._poll_interval_s)
            try:
                self._tick()
                for attempt_id in await self._tasks.read_results():
                    if attempt_id in self._held:
                        self._refresh(self._held[attempt_id])
            except OSError:
                log.exception("launcher: checking the attempt folders failed; retrying")

    def _tick(self) -> None:
        self._runners = [runner for runner in self._runners if runner.poll() is None]  # reap
        for held in self._in_order():
            self._refresh(held)
        self._admit()
        self._drop_forgotten()
        if time.monotonic() >= self._next_cleanup:
            self._next_cleanup = time.monotonic() + CLEANUP_EVERY_S
            self._delete_expired()

    def _refresh(self, held: _Held, *, announce: bool = True) -> None:
        """Re-derive the attempt's phase from its folder; report it when it changed."""
        if held.final:
            return
        facts = held.folder.facts(held.meta, spawned=held.devices is not None)
        verdict = derive_status(facts)
        if facts.awaits_task_result and facts.outcome is not None:
            self._tasks.exited(held.folder, held.meta, facts.outcome.exit_code)
        if verdict == held.verdict:
            return
        first = held.verdict is None
        held.verdict = verdict
        started = held.folder.started()
        if started is not None:
            held.started_at = started[1]
        if verdict.phase.final:
            if verdict.phase is Phase.SUCCEEDED and facts.staged:
                held.outputs = held.folder.task_outputs()
            outcome = held.folder.outcome()
            held.finished_at = outcome.finished_at if outcome and outcome.finished_at else now_utc()
            if not first:
                log.info("attempt %s finished: %s %s", held.meta.attempt_id,
                         verdict.phase.value.upper(), verdict.message)
        elif verdict.phase is Phase.RUNNING:
            log.info("attempt %s running", held.meta.attempt_id)
        if announce and self._on_change is not None and not held.forgotten:
            self._on_change(held.status())

    def _waiting(self) -> list[Waiting]:
        return [
            Waiting(held.meta.attempt_id, held.meta.pool, held.meta.gpus)
            for held in self._in_order() if held.devices is None and not held.final
        ]

    def _admit(self) -> None:
        for admission in admit(self._pools, self._holdings(), self._waiting()):
            held = self._held[admission.attempt_id]
            self._spawn(held, admission.devices)
            self._refresh(held)

    def _spawn(self, held: _Held, devices: tuple[int, ...]) -> None:
        folder = held.folder
        lock_fd = folder.take_lock()
        held.devices = devices
        if lock_fd is None:   # a runner holds it already: it was spawned before
            return
        try:
            folder.write_spawned(devices)
            argv = [self._python, "-m", RUNNER_MODULE, str(folder.path), "--lock-fd", str(lock_fd)]
            with open(folder.path / "runner.log", "ab") as runner_log:
                runner = subprocess.Popen(
                    argv,
                    pass_fds=(lock_fd,), start_new_session=True, cwd=folder.path,
                    stdin=subprocess.DEVNULL, stdout=runner_log, stderr=subprocess.STDOUT,
                )
            self._runners.append(runner)
            folder.write_runner_pid(runner.pid)
        except OSError as error:
            folder.write_outcome(
                Outcome(OutcomeKind.START_ERROR, message=f"cannot start the runner: {error}")
            )
        finally:
            os.close(lock_fd)

    # -- folders -------------------------------------------------------------------------------

    def _create(self, request: LaunchRequest, staged: staging.StagedTask | None = None) -> _Held:
        """A new attempt's folder, or (verdict already set) the one a launch made before."""
        folder = AttemptFolder(self._workdir / "attempts" / request.attempt_id)
        meta = AttemptMeta(
            attempt_id=request.attempt_id, job_id=request.job_id, epoch=request.epoch,
            dataplane=self._dataplane, pool=request.pool, gpus=request.gpus,
            command=staged.command if staged else request.command,
            env=staged.env if staged else dict(request.env), timeout_s=request.timeout_s,
            kill_grace_s=self._kill_grace_s, created_ns=time.time_ns(), spec=dict(request.spec),
            attempt_prefix=staged.prefix if staged else "",
        )
        try:
            folder.create(meta)
        except FileExistsError:
            adopted = self._adopt(folder)
            if adopted is None:
                raise
            return adopted
        held = _Held(folder, meta)
        self._held[request.attempt_id] = held
        self._tasks.remember(meta)
        return held

    def _adopt(self, folder: AttemptFolder) -> _Held | None:
        if not folder.has_meta():
            # The launch died between mkdir and writing attempt.json: nothing ran.
            log.warning("removing the incomplete attempt folder %s", folder.path)
            folder.remove()
            return None
        try:
            meta = folder.meta()
        except (OSError, ValueError, KeyError, TypeError) as error:
            log.warning("skipping the unreadable attempt folder %s: %s", folder.path, error)
            return None
        held = _Held(folder, meta, devices=folder.spawned_devices(),
                     forgotten=folder.forgotten_since() is not None)
        self._held[meta.attempt_id] = held
        self._tasks.remember(meta)
        self._refresh(held, announce=False)   # adopting is not a change
        return held

    def _folder(self, attempt_id: str) -> AttemptFolder | None:
        if attempt_id in self._held:
            return self._held[attempt_id].folder
        try:
            check_attempt_id(attempt_id)
        except ValueError:
            return None
        return AttemptFolder(self._workdir / "attempts" / attempt_id)

    def _drop_forgotten(self) -> None:
        for attempt_id in [a for a, held in self._held.items() if held.forgotten and held.final]:
            del self._held[attempt_id]

    def _delete_expired(self) -> None:
        cutoff = time.time() - self._retention_s
        for folder in attempt_folders(self._workdir):
            since = folder.forgotten_since()
            if since is None or since > cutoff or folder.attempt_id in self._held:
                continue
            if not folder.runner_alive():
                log.info("deleting the forgotten attempt folder %s", folder.path)
                folder.remove()
                self._tasks.drop(folder.attempt_id)

    def _holdings(self) -> list[Holding]:
        return [
            Holding(held.meta.attempt_id, held.meta.pool, held.devices)
            for held in self._held.values() if held.devices is not None and not held.final
        ]

    def _in_order(self) -> list[_Held]:
        return sorted(self._held.values(), key=lambda h: (h.meta.created_ns, h.meta.attempt_id))
