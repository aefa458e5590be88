"""Group commit: writes that arrive together share one transaction.

A heartbeat, an attempt update or a submit is small; what costs is its transaction (the
round trips, the commit's flush to disk, the SQLite write lock). One writer task takes
every write waiting in the queue, applies them in one transaction, and answers each caller
with its own result, in arrival order. Under light load a batch is one write and nothing
waits longer than before; under heavy load a batch grows and the commits per second stay
few. Writes of one caller are applied in the order it made them (one queue, one writer).

A result may be an exception meant for that caller alone (a revoked token, say); an error
of the whole transaction (the database went away) is raised to every caller of the batch.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

log = logging.getLogger(__name__)

In = TypeVar("In")
Out = TypeVar("Out")

# Enough to amortise a commit, small enough that one batch's transaction stays short.
MAX_BATCH = 512
# How long a shutdown waits for the queued writes to be applied.
CLOSE_TIMEOUT_S = 5.0


class GroupCommit(Generic[In, Out]):
    """Queue writes and apply them in batches with `apply(batch) -> results` (same order;
    an exception in the results is raised to that caller only)."""

    def __init__(
        self,
        apply: Callable[[Sequence[In]], Awaitable[Sequence[Out | BaseException]]],
        *,
        max_batch: int = MAX_BATCH,
        linger_s: float = 0.0,
        name: str = "group-commit",
    ) -> None:
        self._apply = apply
        self._max_batch = max_batch
        self._linger_s = linger_s
        self._name = name
        self._queue: asyncio.Queue[tuple[In, asyncio.Future[Out]]] | None = None
        self._writer: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closing = asyncio.Event()   # set: no lingering, apply what is queued
        self._busy = False                # the writer holds a batch (not waiting for one)

    def write(self, item: In) -> asyncio.Future[Out]:
        """Queue one write (for some batch) and return its result to await. It is queued
        when called, not when awaited: writes keep the order of the calls."""
        loop = asyncio.get_running_loop()
        if self._writer is None or self._writer.done() or self._loop is not loop:
            # Started on first use, in the caller's loop (tests run several loops in turn).
            self._loop = loop
            self._queue = asyncio.Queue()
            self._closing = asyncio.Event()
            self._writer = loop.create_task(self._run(self._queue), name=self._name)
        assert self._queue is not None
        future: asyncio.Future[Out] = loop.create_future()
        self._queue.put_nowait((item, future))
        return future

    async def _run(self, queue: asyncio.Queue[tuple[In, asyncio.Future[Out]]]) -> None:
        while not (self._closing.is_set() and queue.empty()):
            self._busy = False
            batch = [await queue.get()]
            self._busy = True
            # A caller that gave up (its RPC was cancelled) still has its write applied:
            # it may already be acknowledged elsewhere, and results are idempotent anyway.
            try:
                if self._linger_s and queue.empty() and not self._closing.is_set():
                    # Alone: wait a moment for company. A transaction costs ten times what
                    # one more write in it does, and a fleet's heartbeats come spread out.
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(self._linger_s):   # see Scheduler.run
                            await self._closing.wait()
                while len(batch) < self._max_batch and not queue.empty():
                    batch.append(queue.get_nowait())
                results = await self._apply([item for item, _ in batch])
            except asyncio.CancelledError:
                for _, future in batch:
                    if not future.done():
                        future.cancel()
                raise
            except Exception as error:  # the whole transaction failed: everyone hears
                for _, future in batch:
                    if not future.done():
                        future.set_exception(error)
                continue
            for (_, future), result in zip(batch, results, strict=True):
                if future.done():
                    continue
                if isinstance(result, BaseException):
                    future.set_exception(result)
                else:
                    future.set_result(result)

    async def close(self, timeout_s: float = CLOSE_TIMEOUT_S) -> None:
        """Apply what is queued, then stop: a shutdown does not drop reports already
        received (an agent does not send them again). Whatever is left after `timeout_s`
        (the database went away) is cancelled."""
        if self._writer is not None and not self._writer.done():
            self._closing.set()
            assert self._queue is not None
            if self._queue.empty() and not self._busy:
                self._writer.cancel()   # idle: waiting for a write that will not come
            with contextlib.suppress(TimeoutError, asyncio.CancelledError, RuntimeError):
                async with asyncio.timeout(timeout_s):
                    await asyncio.shield(self._writer)
            self._writer.cancel()
            with contextlib.suppress(asyncio.CancelledError, RuntimeError):
                await self._writer
        self._writer = None
