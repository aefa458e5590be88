"""The on-disk record of one attempt: ``workdir/attempts/<attempt_id>/``.

The folder is the attempt's whole state, so that a restarted agent re-adopts it and the
detached runner needs nothing but the folder. Files:

    attempt.json      what to run (written once, at launch)
    spawned.json      the GPU devices given to it; present once a runner was spawned
    runner.pid        the runner's pid (it leads its own session and process group)
    runner.lock       flock-ed by the runner for its whole life: a free lock = no runner
    started.json      the job's pid (= its process group) and start time, by the runner
    result.json       how it ended (atomic: written to a temporary name, then renamed)
    cancel_requested  reason and grace period of a cancel
    forgotten         the control plane recorded the end: stop reporting, delete later
    task_result.json  a staged attempt's end as read from the store (after outputs.pb)
    outputs.pb        the LiteralMap its task wrote, copied here so that every heartbeat
                      carries it without reading the store again
    log               the job's stdout and stderr; runner.log holds the runner's own

Only the standard library here: the runner imports this module.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from dataplane_agent.domain.attempt import FolderFacts, Outcome, OutcomeKind, TaskResult

LAST_LINE_WINDOW = 4096
LAST_LINE_MAX = 300
RUNNER_NOTE = "fleet runner: "   # the runner's own lines in the job's log start so


def now_utc() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class AttemptMeta:
    attempt_id: str
    job_id: str
    epoch: int
    dataplane: str
    pool: str
    gpus: int
    command: tuple[str, ...]
    env: dict[str, str] = field(default_factory=dict)
    timeout_s: float | None = None
    kill_grace_s: float = 10.0
    created_ns: int = 0   # launch order: waiting attempts start oldest first
    spec: dict[str, Any] = field(default_factory=dict)
    # A staged attempt's folder in the region's store ("" for a plain command): the store
    # prefix may change between agent runs, an adopted attempt keeps its own.
    attempt_prefix: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "attempt_id": self.attempt_id, "job_id": self.job_id, "epoch": self.epoch,
            "dataplane": self.dataplane, "pool": self.pool, "gpus": self.gpus,
            "command": list(self.command), "env": self.env, "timeout_s": self.timeout_s,
            "kill_grace_s": self.kill_grace_s, "created_ns": self.created_ns, "spec": self.spec,
            "attempt_prefix": self.attempt_prefix,
        }

    @staticmethod
    def from_json(data: dict[str, Any]) -> AttemptMeta:
        return AttemptMeta(
            attempt_id=str(data["attempt_id"]), job_id=str(data["job_id"]),
            epoch=int(data["epoch"]), dataplane=str(data["dataplane"]), pool=str(data["pool"]),
            gpus=int(data["gpus"]), command=tuple(str(a) for a in data["command"]),
            env={str(k): str(v) for k, v in data["env"].items()},
            timeout_s=None if data["timeout_s"] is None else float(data["timeout_s"]),
            kill_grace_s=float(data["kill_grace_s"]), created_ns=int(data["created_ns"]),
            spec=dict(data.get("spec") or {}),
            attempt_prefix=str(data.get("attempt_prefix") or ""),
        )


@dataclass(frozen=True)
class CancelRequest:
    reason: str
    grace_s: float


class AttemptFolder:
    def __init__(self, path: Path) -> None:
        self.path = path

    @property
    def attempt_id(self) -> str:
        return self.path.name

    @property
    def log_path(self) -> Path:
        return self.path / "log"

    @property
    def lock_path(self) -> Path:
        return self.path / "runner.lock"

    # -- creation: os.mkdir is the idempotency point ---------------------------------------

    def create(self, meta: AttemptMeta) -> None:
        """Create the folder; raises FileExistsError when the attempt already exists."""
        os.mkdir(self.path)
        self._write_json("attempt.json", meta.to_json())

    def meta(self) -> AttemptMeta:
        return AttemptMeta.from_json(self._read_json("attempt.json"))

    def has_meta(self) -> bool:
        return (self.path / "attempt.json").exists()

    def remove(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)

    # -- runner liveness ---------------------------------------------------------------------

    def take_lock(self) -> int | None:
        """Lock runner.lock for a runner about to be spawned: the fd, or None when a runner
        holds it already. The runner inherits the fd, so the lock is never free in between."""
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        return fd

    def runner_alive(self) -> bool:
        if not self.lock_path.exists():
            return False
        fd = self.take_lock()
        if fd is None:
            return True
        os.close(fd)   # closing the only fd of this open file releases the lock
        return False

    # -- records -----------------------------------------------------------------------------

    def write_spawned(self, devices: tuple[int, ...]) -> None:
        self._write_json("spawned.json", {"devices": list(devices), "at": _iso(now_utc())})

    def spawned_devices(self) -> tuple[int, ...] | None:
        data = self._read_json_or_none("spawned.json")
        return None if data is None else tuple(int(d) for d in data["devices"])

    def write_runner_pid(self, pid: int) -> None:
        self._write_text("runner.pid", str(pid))

    def runner_pid(self) -> int | None:
        return _int_or_none(self.path / "runner.pid")

    def write_started(self, job_pid: int, at: datetime) -> None:
        self._write_json("started.json", {"pid": job_pid, "at": _iso(at)})

    def started(self) -> tuple[int, datetime] | None:
        data = self._read_json_or_none("started.json")
        return None if data is None else (int(data["pid"]), _parse(data["at"]))

    def write_outcome(self, outcome: Outcome) -> None:
        self._write_json("result.json", {
            "kind": outcome.kind.value, "exit_code": outcome.exit_code,
            "reason": outcome.reason, "message": outcome.message,
            "finished_at": _iso(outcome.finished_at or now_utc()),
        })

    def outcome(self) -> Outcome | None:
        data = self._read_json_or_none("result.json")
        if data is None:
            return None
        code = data.get("exit_code")
        return Outcome(
            kind=OutcomeKind(data["kind"]), exit_code=None if code is None else int(code),
            reason=str(data.get("reason", "")), message=str(data.get("message", "")),
            finished_at=_parse(data["finished_at"]),
        )

    def write_task_result(self, result: TaskResult, outputs: bytes) -> None:
        """outputs.pb first: task_result.json present means outputs.pb is complete."""
        if outputs:
            self._write_bytes("outputs.pb", outputs)
        self._write_json("task_result.json", {"reason": result.reason, "message": result.message})

    def task_result(self) -> TaskResult | None:
        data = self._read_json_or_none("task_result.json")
        if data is None:
            return None
        return TaskResult(str(data.get("reason", "")), str(data.get("message", "")))

    def task_outputs(self) -> bytes:
        try:
            return (self.path / "outputs.pb").read_bytes()
        except FileNotFoundError:
            return b""

    def write_cancel(self, request: CancelRequest) -> None:
        if not self.cancel_request():
            self._write_json("cancel_requested", {
                "reason": request.reason, "grace_s": request.grace_s, "at": _iso(now_utc()),
            })

    def cancel_request(self) -> CancelRequest | None:
        data = self._read_json_or_none("cancel_requested")
        if data is None:
            return None
        return CancelRequest(str(data.get("reason", "")), float(data.get("grace_s", 0.0)))

    def write_forgotten(self) -> None:
        if not self.forgotten_since():
            self._write_json("forgotten", {"at": _iso(now_utc())})

    def forgotten_since(self) -> float | None:
        """When the attempt was forgotten, as a time.time() value, or None."""
        try:
            return (self.path / "forgotten").stat().st_mtime
        except FileNotFoundError:
            return None

    # -- logs --------------------------------------------------------------------------------

    def log_tail(self, max_bytes: int) -> bytes:
        try:
            with open(self.log_path, "rb") as log:
                size = log.seek(0, os.SEEK_END)
                log.seek(max(0, size - max_bytes))
                return log.read(max_bytes)
        except FileNotFoundError:
            return b""

    def last_log_line(self) -> str:
        lines = self.log_tail(LAST_LINE_WINDOW).decode("utf-8", "replace").splitlines()
        for line in reversed(lines):
            if line.strip() and not line.startswith(RUNNER_NOTE):
                return line.strip()[:LAST_LINE_MAX]
        return ""

    # -- everything derive_status needs --------------------------------------------------------

    def facts(self, meta: AttemptMeta, spawned: bool) -> FolderFacts:
        # Liveness first: a runner writes its result and only then exits (see derive_status).
        alive = spawned and self.runner_alive()
        outcome = self.outcome()
        cancel = self.cancel_request()
        failed = outcome is not None and outcome.kind in (
            OutcomeKind.EXITED, OutcomeKind.DEADLINE_EXCEEDED
        ) and outcome.exit_code != 0
        staged = bool(meta.attempt_prefix)
        exited = outcome is not None and outcome.kind is OutcomeKind.EXITED
        return FolderFacts(
            gpus=meta.gpus, pool=meta.pool, spawned=spawned, runner_alive=alive,
            job_started=(self.path / "started.json").exists(), outcome=outcome,
            cancel_requested=cancel is not None,
            cancel_reason=cancel.reason if cancel else "",
            last_log_line=self.last_log_line() if failed else "",
            staged=staged, task_result=self.task_result() if staged and exited else None,
        )

    # -- small atomic file helpers -----------------------------------------------------------

    def _write_json(self, name: str, data: dict[str, Any]) -> None:
        self._write_text(name, json.dumps(data, indent=1, sort_keys=True))

    def _write_text(self, name: str, text: str) -> None:
        self._write_bytes(name, text.encode("utf-8"))

    def _write_bytes(self, name: str, data: bytes) -> None:
        target = self.path / name
        tmp = self.path / f".{name}.tmp-{os.getpid()}"
        with open(tmp, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, target)

    def _read_json(self, name: str) -> dict[str, Any]:
        with open(self.path / name, encoding="utf-8") as source:
            data = json.load(source)
        if not isinstance(data, dict):
            raise ValueError(f"{self.path / name}: not a JSON object")
        return data

    def _read_json_or_none(self, name: str) -> dict[str, Any] | None:
        try:
            return self._read_json(name)
        except FileNotFoundError:
            return None


def attempt_folders(workdir: Path) -> list[AttemptFolder]:
    root = workdir / "attempts"
    if not root.is_dir():
        return []
    return [
        AttemptFolder(path) for path in sorted(root.iterdir())
        if path.is_dir() and not path.name.startswith(".")
    ]


def _iso(at: datetime) -> str:
    return at.isoformat()


def _parse(text: object) -> datetime:
    return datetime.fromisoformat(str(text))


def _int_or_none(path: Path) -> int | None:
    try:
        return int(path.read_text(encoding="utf-8").strip())
    except (FileNotFoundError, ValueError):
        return None
