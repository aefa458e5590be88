"""Progress as the registry records it, for bench/chaos.py's recovery times.

A thread counts SUCCEEDED attempts per dataplane a few times a second, straight from
Postgres (a fresh connection after any error: the server is one of the parts that die), and
remembers when each count grew. "Recovered" after a kill means: progress after the victim
came back (on the victim's own dataplane when the victim is an agent).
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable

import psycopg

POLL_S = 0.2
CONNECT_TIMEOUT_S = 2


class ProgressMonitor:
    def __init__(self, conninfo: str) -> None:
        self._conninfo = conninfo
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._counts: dict[str, int] = {}
        # (time.monotonic(), dataplane) for every poll at which its count grew.
        self._progress: list[tuple[float, str]] = []
        self._thread = threading.Thread(target=self._run, name="chaos-monitor", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5.0)

    def progress_after(self, after: float, dataplane: str | None = None) -> float | None:
        """The first time after `after` at which (that dataplane's) count grew."""
        with self._lock:
            for at, where in self._progress:
                if at > after and (dataplane is None or where == dataplane):
                    return at
        return None

    def wait_progress(self, after: float, dataplane: str | None, timeout_s: float,
                      tick: Callable[[], None] | None = None) -> float | None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            found = self.progress_after(after, dataplane)
            if found is not None:
                return found
            if tick is not None:
                tick()
            time.sleep(POLL_S / 2)
        return None

    def _run(self) -> None:
        conn: psycopg.Connection[tuple[str, int]] | None = None
        while not self._stop.is_set():
            try:
                if conn is None:
                    conn = psycopg.connect(self._conninfo, autocommit=True,
                                           connect_timeout=CONNECT_TIMEOUT_S)
                rows = conn.execute(
                    "SELECT dataplane, count(*) FROM attempts WHERE phase = 'succeeded' "
                    "GROUP BY dataplane").fetchall()
                self._record({str(name): int(count) for name, count in rows})
            except psycopg.Error:
                if conn is not None:
                    with contextlib.suppress(psycopg.Error):
                        conn.close()
                conn = None
            self._stop.wait(POLL_S)
        if conn is not None:
            with contextlib.suppress(psycopg.Error):
                conn.close()

    def _record(self, counts: dict[str, int]) -> None:
        now = time.monotonic()
        with self._lock:
            for name, count in counts.items():
                if count > self._counts.get(name, 0):
                    self._progress.append((now, name))
            self._counts = counts
