"""The end-of-run checks of bench/chaos.py, from three independent records:

- the registry (jobs and attempts tables): every acknowledged job SUCCEEDED, with exactly
  one SUCCEEDED attempt, which is its current attempt;
- the runs log the jobs write: one "end" line per job, from that same attempt;
- the agents' attempt folders: one attempt per job whose command exited 0.

A job with more than one completed run is duplicated. With --long-outages, a dataplane may
legitimately be declared lost while its runner carries on; a second run whose attempt the
control plane had already given up (LOST or CANCELLED) is then "fenced": reported, but it
is what the design allows. Without --long-outages every duplicate is a failure.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import psycopg
from psycopg.rows import dict_row

from dataplane_agent.domain.attempt import OutcomeKind
from dataplane_agent.launcher.folder import attempt_folders

FINAL_JOB_PHASES = ("succeeded", "failed", "cancelled")
GIVEN_UP = ("lost", "cancelled")


@dataclass
class Verdict:
    submitted: int = 0
    succeeded: int = 0
    failed: int = 0
    lost: int = 0
    duplicated: int = 0
    fenced_duplicates: int = 0
    mismatched: int = 0
    unacknowledged_in_db: int = 0
    attempts: int = 0
    attempts_lost: int = 0
    max_attempts: int = 0
    problems: list[str] = field(default_factory=list)

    def passed(self, long_outages: bool) -> bool:
        unfenced = self.duplicated - (self.fenced_duplicates if long_outages else 0)
        return (self.submitted > 0 and self.failed == 0 and self.lost == 0
                and unfenced == 0 and self.mismatched == 0)


@dataclass
class Run:
    attempt_id: str
    started: bool = False
    ended: bool = False


def read_runs_log(path: Path) -> dict[str, dict[str, Run]]:
    """job id -> attempt id -> what the job's command wrote."""
    runs: dict[str, dict[str, Run]] = defaultdict(dict)
    if not path.exists():
        return runs
    for line in path.read_text(errors="replace").splitlines():
        words = line.split()
        if len(words) != 4 or words[0] not in ("start", "end"):
            continue
        run = runs[words[1]].setdefault(words[2], Run(words[2]))
        if words[0] == "start":
            run.started = True
        else:
            run.ended = True
    return runs


def read_folders(workdirs: list[Path]) -> dict[str, list[tuple[str, str]]]:
    """job id -> (attempt id, agent) of every attempt folder whose command exited 0."""
    succeeded: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for workdir in workdirs:
        for folder in attempt_folders(workdir):
            if not folder.has_meta():
                continue
            outcome = folder.outcome()
            exited_0 = outcome is not None and outcome.kind is OutcomeKind.EXITED and (
                outcome.exit_code == 0
            )
            if exited_0:
                succeeded[folder.meta().job_id].append((folder.attempt_id, workdir.parent.name))
    return succeeded


def read_registry(conninfo: str, project: str) -> tuple[dict[str, dict[str, Any]],
                                                        dict[str, list[dict[str, Any]]]]:
    with psycopg.connect(conninfo, row_factory=dict_row) as conn:
        jobs = conn.execute(
            "SELECT id, client_key, phase, current_attempt_id, epoch, retries_used, message "
            "FROM jobs WHERE project = %s", (project,)).fetchall()
        attempts = conn.execute(
            "SELECT a.id, a.job_id, a.epoch, a.dataplane, a.phase, a.reason, a.message, "
            "a.exit_code, a.created_at, a.started_at, a.finished_at FROM attempts a "
            "JOIN jobs j ON j.id = a.job_id WHERE j.project = %s ORDER BY a.epoch",
            (project,)).fetchall()
    by_job: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for attempt in attempts:
        by_job[attempt["job_id"]].append(attempt)
    return {job["id"]: job for job in jobs}, by_job


def check(
    conninfo: str,
    project: str,
    acknowledged: dict[str, str],
    runs_log: Path,
    workdirs: list[Path],
) -> Verdict:
    """acknowledged: client key -> the job id its submit answered."""
    jobs, attempts = read_registry(conninfo, project)
    runs = read_runs_log(runs_log)
    folders = read_folders(workdirs)
    verdict = Verdict(submitted=len(acknowledged))
    acked_ids = set(acknowledged.values())
    verdict.unacknowledged_in_db = len(set(jobs) - acked_ids)
    for all_attempts in attempts.values():
        verdict.attempts += len(all_attempts)
        verdict.attempts_lost += sum(a["phase"] == "lost" for a in all_attempts)
        verdict.max_attempts = max(verdict.max_attempts, len(all_attempts))

    for key, job_id in sorted(acknowledged.items()):
        job = jobs.get(job_id)
        tried = attempts.get(job_id, [])
        job_runs = runs.get(job_id, {})
        ended = [r.attempt_id for r in job_runs.values() if r.ended]
        folder_ok = folders.get(job_id, [])

        def problem(what: str, job_id: str = job_id, key: str = key) -> None:
            verdict.problems.append(
                f"{what}: job {job_id} (key {key})\n"
                + describe(jobs.get(job_id), attempts.get(job_id, []), runs.get(job_id, {}),
                           folders.get(job_id, []))
            )

        if job is None or job["client_key"] != key:
            verdict.lost += 1
            problem("LOST (acknowledged, not in the registry under its key)")
            continue
        if job["phase"] not in FINAL_JOB_PHASES:
            verdict.lost += 1
            problem(f"LOST (acknowledged, still {job['phase']} at the end)")
            continue
        if job["phase"] != "succeeded":
            verdict.failed += 1
            problem(f"FAILED (ended {job['phase']})")
            continue
        verdict.succeeded += 1

        won = [a["id"] for a in tried if a["phase"] == "succeeded"]
        completed = set(ended) | {attempt_id for attempt_id, _ in folder_ok}
        if len(won) > 1 or len(ended) > 1 or len(folder_ok) > 1:
            verdict.duplicated += 1
            phase_of = {a["id"]: a["phase"] for a in tried}
            extra = completed - set(won[:1])
            if len(won) == 1 and all(phase_of.get(a) in GIVEN_UP for a in extra):
                verdict.fenced_duplicates += 1
                problem("DUPLICATED (fenced: the extra runs are attempts the control plane "
                        "had given up)")
            else:
                problem("DUPLICATED (more than one completed run)")
            continue
        if won != [job["current_attempt_id"]] or ended != won or [a for a, _ in folder_ok] != won:
            verdict.mismatched += 1
            problem("MISMATCHED records (registry, runs log and attempt folders disagree)")
    return verdict


def describe(
    job: dict[str, Any] | None,
    attempts: list[dict[str, Any]],
    runs: dict[str, Run],
    folders_ok: list[tuple[str, str]],
) -> str:
    lines = []
    if job is None:
        lines.append("    registry: no such job")
    else:
        lines.append(f"    registry job: phase={job['phase']} epoch={job['epoch']} "
                     f"current_attempt={job['current_attempt_id']} "
                     f"retries_used={job['retries_used']} message={job['message']!r}")
    for a in attempts:
        lines.append(
            f"    registry attempt {a['id']} epoch={a['epoch']} on {a['dataplane']}: "
            f"{a['phase']} reason={a['reason']!r} exit={a['exit_code']} "
            f"created={_at(a['created_at'])} started={_at(a['started_at'])} "
            f"finished={_at(a['finished_at'])} message={a['message']!r}")
    for run in runs.values():
        lines.append(f"    runs log: attempt {run.attempt_id} "
                     f"{'started' if run.started else 'no start line'}, "
                     f"{'ended' if run.ended else 'no end line'}")
    for attempt_id, agent in folders_ok:
        lines.append(f"    attempt folder {agent}/work/attempts/{attempt_id}: exited 0")
    return "\n".join(lines)


def dump_tables(conninfo: str, folder: Path) -> None:
    """jobs.csv, attempts.csv and job_events.csv: the registry as it ended, for a report."""
    with psycopg.connect(conninfo) as conn, conn.cursor() as cursor:
        for table in ("jobs", "attempts", "job_events"):
            with (folder / f"{table}.csv").open("wb") as out, cursor.copy(
                f"COPY {table} TO STDOUT WITH (FORMAT csv, HEADER)"
            ) as copy:
                for data in copy:
                    out.write(data)


def unfinished(conninfo: str, job_ids: list[str]) -> int:
    """How many of these jobs are missing or not final yet."""
    with psycopg.connect(conninfo) as conn:
        row = conn.execute(
            "SELECT count(*) FROM jobs WHERE id = ANY(%s) AND phase = ANY(%s)",
            (job_ids, list(FINAL_JOB_PHASES))).fetchone()
    final = int(row[0]) if row else 0
    return len(job_ids) - final


def _at(value: datetime | None) -> str:
    return "-" if value is None else value.strftime("%H:%M:%S.%f")[:-3]
