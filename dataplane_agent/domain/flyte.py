"""Flyte's task contract, as the agent plays Flyte's part for one attempt. No I/O.

A Flyte task arrives with Flyte's placeholders still in its command (``{{.input}}``,
``{{.outputPrefix}}``, ...). The agent renders them to the attempt's own folder in this
dataplane's store, so that the task's data stays in the region::

    <store prefix>/<project>/<domain>/<job id>/<attempt id>/   the attempt prefix
        inputs.pb       the input LiteralMap, written by the agent before the task starts
        outputs.pb      the output LiteralMap, written by the task (pyflyte-execute)
        error.pb        an ErrorDocument, written by the task when it failed
        raw/            the task's raw output data (files, directories, dataframes)
        checkpoint/     the task's checkpoint; a later attempt of the job restores from it

After the task exited, what it left there decides the attempt's end (see
:func:`task_result`): an error document wins over the exit code, and outputs travel back
to the control plane only when they are small literals.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum

from dataplane_agent.domain.attempt import TaskResult

INPUTS_FILE = "inputs.pb"
OUTPUTS_FILE = "outputs.pb"
ERROR_FILE = "error.pb"
RAW_FOLDER = "raw"
CHECKPOINT_FOLDER = "checkpoint"

# Literals travel, data stays: larger outputs are refused (the control plane caps inputs alike).
MAX_OUTPUTS_BYTES = 4 * 1024 * 1024
MAX_ERROR_MESSAGE = 4096
TRIMMED = "…"

# As Flyte's propeller matches them: any case, optional spaces, a '.' or '$' before the name.
_PLACEHOLDER = re.compile(
    r"\{\{\s*[.$](input|inputprefix|outputprefix|rawoutputdataprefix|checkpointoutputprefix"
    r"|prevcheckpointprefix|perretryuniquekey)\s*\}\}",
    re.IGNORECASE,
)
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
_SEGMENT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")

# What pyflyte-execute reads to know which execution and task it runs (flytekit's entrypoint
# also accepts the short names). Without them it runs as execution "" of project "".
_EXECUTION_ENV = {
    "FLYTE_INTERNAL_EXECUTION_PROJECT": "_F_PRJ",
    "FLYTE_INTERNAL_EXECUTION_DOMAIN": "_F_DM",
    "FLYTE_INTERNAL_EXECUTION_ID": "_F_NM",
    "FLYTE_INTERNAL_TASK_PROJECT": "_F_TK_PRJ",
    "FLYTE_INTERNAL_TASK_DOMAIN": "_F_TK_DM",
    "FLYTE_INTERNAL_TASK_NAME": "_F_TK_NM",
}
# pyflyte-execute exits 0 after a user exception unless told otherwise (the error is in
# error.pb either way); a failed task must also fail its process.
FAIL_ON_ERROR_ENV = "FLYTE_FAIL_ON_ERROR"
ATTEMPT_PREFIX_ENV = "FLEET_ATTEMPT_PREFIX"


# -- where things go ----------------------------------------------------------------------------


def join_url(base: str, *parts: str) -> str:
    """base/part/part for local paths and URLs alike ("file:///", "s3://b/", "/srv/x")."""
    scheme = _SCHEME.match(base)
    head = base[: scheme.end()] if scheme else ""
    return head + "/".join([base[len(head):].rstrip("/"), *parts])


def local_path(prefix: str) -> str | None:
    """The local folder a store prefix names, or None for a remote store."""
    if prefix.startswith("file://"):
        return prefix[len("file://"):] or "/"
    if prefix.startswith("/"):
        return prefix
    return None


def is_store_prefix(text: str) -> bool:
    """An absolute local path or a URL with a scheme and something after it."""
    if text.startswith("/"):
        return True
    match = _SCHEME.match(text)
    return match is not None and len(text) > match.end()


def attempt_prefix(
    store_prefix: str, project: str, domain: str, job_id: str, attempt_id: str
) -> str:
    """<store prefix>/<project>/<domain>/<job id>/<attempt id>; ValueError for a part that
    cannot name a folder."""
    parts = {"project": project, "domain": domain, "job id": job_id, "attempt id": attempt_id}
    for what, part in parts.items():
        if not _SEGMENT.match(part):
            raise ValueError(
                f"the {what} {part!r} cannot name a folder in the store (letters, digits, "
                "'.', '_', '-', starting with a letter or digit)"
            )
    return join_url(store_prefix, project, domain, job_id, attempt_id)


@dataclass(frozen=True)
class TaskLocations:
    """Where one attempt's task reads and writes."""

    prefix: str
    attempt_id: str
    previous_checkpoint: str = ""   # "" is pyflyte-execute's "no previous checkpoint"

    @property
    def inputs(self) -> str:
        return join_url(self.prefix, INPUTS_FILE)

    @property
    def raw(self) -> str:
        return join_url(self.prefix, RAW_FOLDER)

    @property
    def checkpoint(self) -> str:
        return join_url(self.prefix, CHECKPOINT_FOLDER)

    def value_of(self, placeholder: str) -> str:
        """The value of a placeholder name, lower case and without braces and dot."""
        return {
            "input": self.inputs,
            "inputprefix": self.prefix,
            "outputprefix": self.prefix,
            "rawoutputdataprefix": self.raw,
            "checkpointoutputprefix": self.checkpoint,
            "prevcheckpointprefix": self.previous_checkpoint,
            "perretryuniquekey": self.attempt_id,
        }[placeholder]


# -- the command and its environment --------------------------------------------------------


def placeholders_in(command: Sequence[str]) -> set[str]:
    """The placeholder names the command uses, lower case ("input", "outputprefix", ...)."""
    return {m.group(1).lower() for arg in command for m in _PLACEHOLDER.finditer(arg)}


def is_flyte_task(command: Sequence[str]) -> bool:
    return bool(placeholders_in(command))


def needs_staging(command: Sequence[str], inputs: bytes) -> bool:
    """Whether the attempt gets a prefix in the store: it uses placeholders or has inputs."""
    return bool(inputs) or is_flyte_task(command)


def render_command(command: Sequence[str], where: TaskLocations) -> tuple[str, ...]:
    """Every placeholder in every argument replaced by its location (in one pass: a value
    is never rendered again)."""
    return tuple(
        _PLACEHOLDER.sub(lambda m: where.value_of(m.group(1).lower()), arg) for arg in command
    )


def task_environment(
    spec_env: Mapping[str, str],
    command: Sequence[str],
    *,
    prefix: str,
    project: str,
    domain: str,
    job_id: str,
    name: str,
) -> dict[str, str]:
    """The job's environment for a staged attempt.

    A Flyte task gets the execution's identity (the job's id as the execution name), unless
    the spec sets it (in the long or the short form), and always fails its process when it
    wrote error.pb.
    """
    env = dict(spec_env)
    if is_flyte_task(command):
        defaults = {
            "FLYTE_INTERNAL_EXECUTION_PROJECT": project,
            "FLYTE_INTERNAL_EXECUTION_DOMAIN": domain,
            "FLYTE_INTERNAL_EXECUTION_ID": job_id,
            "FLYTE_INTERNAL_TASK_PROJECT": project,
            "FLYTE_INTERNAL_TASK_DOMAIN": domain,
            "FLYTE_INTERNAL_TASK_NAME": name or job_id,
        }
        for key, value in defaults.items():
            if key not in env and _EXECUTION_ENV[key] not in env:
                env[key] = value
        env[FAIL_ON_ERROR_ENV] = "true"
    env[ATTEMPT_PREFIX_ENV] = prefix
    return env


# -- what the task left behind ----------------------------------------------------------------


class ErrorOrigin(StrEnum):
    """flyteidl's ExecutionError.ErrorKind: whose fault the error is."""

    UNKNOWN = "unknown"
    USER = "user"
    SYSTEM = "system"


ERROR_REASONS = {ErrorOrigin.USER: "UserError", ErrorOrigin.SYSTEM: "SystemError"}


@dataclass(frozen=True)
class TaskError:
    origin: ErrorOrigin
    message: str


@dataclass(frozen=True)
class TaskFiles:
    """What the staging read under a finished attempt's prefix."""

    error: TaskError | None = None      # None: no error.pb
    outputs_size: int | None = None     # None: no outputs.pb (or not looked for)
    outputs_valid: bool = True          # outputs.pb parsed as a LiteralMap


def task_result(exit_code: int | None, files: TaskFiles) -> TaskResult:
    """The end a finished staged attempt gets beyond its exit code.

    An error document decides (USER: UserError, SYSTEM: SystemError, else Error), even after
    exit code 0. After exit code 0 without one, outputs.pb must be a LiteralMap of at most
    MAX_OUTPUTS_BYTES. Anything else: nothing to add, the exit code decides.
    """
    if files.error is not None:
        message = trim_message(files.error.message) or "the task failed and gave no message"
        return TaskResult(ERROR_REASONS.get(files.error.origin, "Error"), message)
    if exit_code != 0 or files.outputs_size is None:
        return TaskResult()
    if files.outputs_size > MAX_OUTPUTS_BYTES:
        return TaskResult("OutputsTooLarge", (
            f"the task's outputs.pb holds {files.outputs_size} bytes, more than the "
            f"{MAX_OUTPUTS_BYTES} bytes (4 MiB) a result may carry: return large data as "
            "files (FlyteFile, FlyteDirectory, a StructuredDataset), which stay in the "
            "region's store"
        ))
    if not files.outputs_valid:
        return TaskResult("InvalidOutputs", "the task's outputs.pb is not a flyteidl LiteralMap")
    return TaskResult()


def trim_message(text: str, limit: int = MAX_ERROR_MESSAGE) -> str:
    """At most limit characters, keeping the end (where a traceback names the exception)."""
    text = text.strip()
    if len(text) <= limit:
        return text
    return TRIMMED + text[len(text) - limit + len(TRIMMED):]
