"""The load of bench/chaos.py: a steady stream of idempotent submits, and the job they run.

A ticker makes one client key per 1/rate seconds; a few workers submit each key until a
control plane acknowledges it, re-sending the same key after any transient error (the
answer may have been lost after the job was stored: the same key returns the same job).
Only acknowledged jobs count as submitted. Now and then an acknowledged key is submitted
again, and the answer must be the same job, not a new one.

The job appends "start <job> <attempt> <pid>" to the shared runs log, sleeps, then appends
"end <job> <attempt> 0" and exits 0 (appends with O_APPEND, one short write per line, so
lines from concurrent jobs never interleave).
"""

from __future__ import annotations

import queue
import random
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from fleet.v1 import types_pb2

from fleet_client import (
    PLAINTEXT,
    AlreadyExists,
    FleetClient,
    FleetError,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    Unauthenticated,
)

PROJECT = "chaos"
WORKERS = 4
SUBMIT_TIMEOUT_S = 5.0
RETRY_MIN_S, RETRY_MAX_S = 0.1, 1.0
RESUBMIT_FRACTION = 0.1
# Errors that a retry cannot cure: the harness (or the API) is wrong, stop the run.
FATAL_ERRORS = (InvalidArgument, Unauthenticated, PermissionDenied, NotFound, AlreadyExists)

JOB_SCRIPT = (
    'echo "start $FLEET_JOB_ID $FLEET_ATTEMPT_ID $$" >> "$1"; '
    'sleep "$2"; '
    'echo "end $FLEET_JOB_ID $FLEET_ATTEMPT_ID 0" >> "$1"'
)


def job_spec(
    key: str, runs_log: Path, seconds: float, retry_budget: int | None
) -> types_pb2.JobSpec:
    spec = types_pb2.JobSpec(
        project=PROJECT,
        name=key,
        command=["/bin/sh", "-c", JOB_SCRIPT, "chaos-job", str(runs_log), f"{seconds:.2f}"],
        resources=types_pb2.Resources(gpus=1, gpu_model="H100"),
    )
    if retry_budget is not None:
        spec.retry_budget = retry_budget
    return spec


@dataclass
class Acknowledged:
    job_id: str
    at: float            # time.monotonic() of the answer


@dataclass
class LoadStats:
    acknowledged: dict[str, Acknowledged] = field(default_factory=dict)
    generated: int = 0
    errors: Counter[str] = field(default_factory=Counter)   # transient, by status code
    fatal: list[str] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)        # FailedPrecondition and such
    resubmits: int = 0
    resubmit_mismatches: list[str] = field(default_factory=list)


class LoadGenerator:
    def __init__(
        self,
        addresses: list[str],
        rate: float,
        seed: int,
        runs_log: Path,
        job_seconds: tuple[float, float],
        retry_budget: int | None,
    ) -> None:
        self._addresses = addresses
        self._rate = rate
        self._random = random.Random(seed)
        self._runs_log = runs_log
        self._job_seconds = job_seconds
        self._retry_budget = retry_budget
        self._keys: queue.Queue[tuple[str, types_pb2.JobSpec] | None] = queue.Queue()
        self._generating = threading.Event()
        self._abort = threading.Event()
        self._lock = threading.Lock()
        self._in_flight = 0
        self._threads: list[threading.Thread] = []
        self.stats = LoadStats()

    def start(self) -> None:
        self._generating.set()
        self._threads = [threading.Thread(target=self._tick, name="chaos-ticker", daemon=True)]
        self._threads += [
            threading.Thread(target=self._work, args=(i,), name=f"chaos-submit-{i}", daemon=True)
            for i in range(WORKERS)
        ]
        for thread in self._threads:
            thread.start()

    def stop_generating(self) -> None:
        self._generating.clear()

    def idle(self) -> bool:
        """True once every generated key is acknowledged (or refused)."""
        with self._lock:
            return self._keys.empty() and self._in_flight == 0

    def abort(self) -> None:
        self._generating.clear()
        self._abort.set()
        for _ in range(WORKERS):
            self._keys.put(None)

    @property
    def unacknowledged(self) -> int:
        with self._lock:
            done = len(self.stats.acknowledged) + len(self.stats.refused) + len(self.stats.fatal)
            return self.stats.generated - done

    # -- threads -----------------------------------------------------------------------------

    def _tick(self) -> None:
        interval = 1.0 / self._rate
        next_at = time.monotonic()
        n = 0
        while self._generating.is_set():
            n += 1
            key = f"chaos-{n:06d}"
            seconds = self._random.uniform(*self._job_seconds)
            with self._lock:
                self.stats.generated += 1
                self._in_flight += 1   # counted from the queue on, so drain() sees it
            self._keys.put((key, job_spec(key, self._runs_log, seconds, self._retry_budget)))
            next_at += interval
            time.sleep(max(0.0, next_at - time.monotonic()))

    def _work(self, index: int) -> None:
        address = index % len(self._addresses)
        client = _plaintext_client(self._addresses[address])
        chooser = random.Random(index)
        try:
            while not self._abort.is_set():
                item = self._keys.get()
                if item is None:
                    return
                key, spec = item
                try:
                    client, address = self._submit_until_answered(client, address, key, spec)
                    if key in self.stats.acknowledged and chooser.random() < RESUBMIT_FRACTION:
                        self._resubmit(client, key, spec)
                finally:
                    with self._lock:
                        self._in_flight -= 1
        finally:
            client.close()

    def _submit_until_answered(
        self, client: FleetClient, address: int, key: str, spec: types_pb2.JobSpec
    ) -> tuple[FleetClient, int]:
        backoff = RETRY_MIN_S
        while not self._abort.is_set():
            try:
                answer = client.submit(spec, client_key=key)
            except FATAL_ERRORS as error:
                with self._lock:
                    self.stats.fatal.append(f"{key}: {error!r}")
                self.abort()
                return client, address
            except FleetError as error:
                if error.code.name == "FAILED_PRECONDITION":
                    with self._lock:
                        self.stats.refused.append(f"{key}: {error.message}")
                    return client, address
                with self._lock:
                    self.stats.errors[error.code.name] += 1
                # A fresh channel dials at once (a broken one backs off on its own), and
                # the next control plane may be up when this one is not.
                client.close()
                address = (address + 1) % len(self._addresses)
                client = _plaintext_client(self._addresses[address])
                time.sleep(backoff)
                backoff = min(backoff * 2, RETRY_MAX_S)
                continue
            with self._lock:
                self.stats.acknowledged[key] = Acknowledged(answer.job.id, time.monotonic())
            return client, address
        return client, address

    def _resubmit(self, client: FleetClient, key: str, spec: types_pb2.JobSpec) -> None:
        """The same key again: the same job must come back, and nothing new be created."""
        try:
            answer = client.submit(spec, client_key=key)
        except FleetError:
            return   # transient; the check needs an answer
        first = self.stats.acknowledged[key].job_id
        with self._lock:
            self.stats.resubmits += 1
            if answer.job.id != first or answer.created:
                self.stats.resubmit_mismatches.append(
                    f"{key}: first answer {first}, again {answer.job.id} (created={answer.created})"
                )


def _plaintext_client(address: str) -> FleetClient:
    """The chaos fleet listens on 127.0.0.1 in plaintext."""
    return FleetClient(address, timeout_s=SUBMIT_TIMEOUT_S, tls=PLAINTEXT)
