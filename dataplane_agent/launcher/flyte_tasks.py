"""The process launcher's part for Flyte tasks: staging an attempt before it starts, reading
its result after its process exited. The store calls block (fsspec), so they run in worker
threads; a store that cannot be read is retried for a while, then the attempt fails with
SystemError (Flyte retries those).
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from pathlib import Path

from dataplane_agent.domain.attempt import TaskResult
from dataplane_agent.domain.flyte import local_path, needs_staging
from dataplane_agent.launcher import staging
from dataplane_agent.launcher.base import LaunchRequest
from dataplane_agent.launcher.folder import AttemptFolder, AttemptMeta

log = logging.getLogger(__name__)

READ_RETRY_S = 2.0
READ_GIVE_UP_S = 120.0


@dataclass
class _Unread:
    folder: AttemptFolder
    prefix: str
    exit_code: int | None
    retry_at: float = 0.0                # time.monotonic()
    failing_since: float | None = None


class FlyteTasks:
    def __init__(self, store_prefix: str) -> None:
        self.store_prefix = store_prefix
        # Every staged attempt with a folder, forgotten ones too (a retry restores from
        # their checkpoints): attempt id -> (job id, epoch, prefix).
        self._prefixes: dict[str, tuple[str, int, str]] = {}
        self._unread: dict[str, _Unread] = {}

    def open(self) -> None:
        """Create the store's folder when it is local (the default <workdir>/store is)."""
        folder = local_path(self.store_prefix)
        if folder is not None:
            Path(folder).mkdir(parents=True, exist_ok=True)

    async def stage(self, request: LaunchRequest) -> staging.StagedTask | None:
        """Stage a Flyte task (None for a plain command); raises staging.StagingError."""
        if not needs_staging(request.command, request.inputs):
            return None
        earlier = sorted(
            ((epoch, prefix) for job_id, epoch, prefix in self._prefixes.values()
             if job_id == request.job_id and epoch < request.epoch),
            reverse=True,
        )
        return await asyncio.to_thread(
            staging.stage, request, self.store_prefix, [prefix for _epoch, prefix in earlier]
        )

    def remember(self, meta: AttemptMeta) -> None:
        if meta.attempt_prefix:
            self._prefixes[meta.attempt_id] = (meta.job_id, meta.epoch, meta.attempt_prefix)

    def drop(self, attempt_id: str) -> None:
        """The attempt's folder is gone."""
        self._prefixes.pop(attempt_id, None)
        self._unread.pop(attempt_id, None)

    def exited(self, folder: AttemptFolder, meta: AttemptMeta, exit_code: int | None) -> None:
        """The attempt's process exited and its result is still to be read."""
        if meta.attempt_id not in self._unread:
            self._unread[meta.attempt_id] = _Unread(folder, meta.attempt_prefix, exit_code)

    async def read_results(self) -> list[str]:
        """Read the due results into their folders: the attempt ids that now have one."""
        now = time.monotonic()
        due = [(attempt_id, unread) for attempt_id, unread in self._unread.items()
               if unread.retry_at <= now]
        if not due:
            return []
        reads = await asyncio.gather(*(
            asyncio.to_thread(staging.collect, unread.prefix, unread.exit_code)
            for _attempt_id, unread in due
        ), return_exceptions=True)
        done = []
        for (attempt_id, unread), read in zip(due, reads, strict=True):
            if isinstance(read, Exception):
                if not self._gave_up(attempt_id, unread, read):
                    continue
            elif isinstance(read, BaseException):
                raise read
            else:
                unread.folder.write_task_result(*read)
            del self._unread[attempt_id]
            done.append(attempt_id)
        return done

    def _gave_up(self, attempt_id: str, unread: _Unread, error: Exception) -> bool:
        now = time.monotonic()
        since = unread.failing_since = unread.failing_since or now
        if now - since < READ_GIVE_UP_S:
            unread.retry_at = now + READ_RETRY_S
            log.warning("attempt %s: cannot read its result under %s (retrying): %s",
                        attempt_id, unread.prefix, error)
            return False
        message = f"cannot read the task's result under {unread.prefix}: {error}"
        log.error("attempt %s: %s", attempt_id, message)
        unread.folder.write_task_result(TaskResult("SystemError", message[:1000]), b"")
        return True
