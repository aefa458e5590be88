"""A Flyte task's data in this dataplane's store, through fsspec (any store URL).

Before an attempt starts: write its inputs.pb under the attempt prefix, look for an earlier
attempt's checkpoint, render the command (see ``domain.flyte``). After it exited: read what
the task left (error.pb, outputs.pb). Every function blocks (fsspec does): the launcher runs
them in worker threads. Only literal maps and error messages come out of here, never the
data behind them.

Imports fsspec and flyteidl: the runner process must not import this module.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import fsspec  # type: ignore[import-untyped]
from flyteidl.core import errors_pb2, literals_pb2  # type: ignore[import-untyped]
from google.protobuf.message import DecodeError

from dataplane_agent.domain.attempt import TaskResult
from dataplane_agent.domain.flyte import (
    CHECKPOINT_FOLDER,
    ERROR_FILE,
    INPUTS_FILE,
    MAX_OUTPUTS_BYTES,
    OUTPUTS_FILE,
    ErrorOrigin,
    TaskError,
    TaskFiles,
    TaskLocations,
    attempt_prefix,
    join_url,
    local_path,
    placeholders_in,
    render_command,
    task_environment,
    task_result,
)
from dataplane_agent.launcher.base import LaunchRequest

log = logging.getLogger(__name__)

MAX_ERROR_FILE_BYTES = 4 * 1024 * 1024
_ORIGINS = {1: ErrorOrigin.USER, 2: ErrorOrigin.SYSTEM}   # flyteidl ExecutionError.ErrorKind


class StagingError(Exception):
    """The attempt cannot start: reason is the attempt's reason word, str() the message."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class StagedTask:
    prefix: str
    command: tuple[str, ...]
    env: dict[str, str]


def stage(
    request: LaunchRequest, store_prefix: str, earlier_prefixes: Sequence[str]
) -> StagedTask:
    """Write the attempt's inputs.pb and render its command and environment.

    earlier_prefixes: the prefixes of this job's earlier attempts on this dataplane, newest
    first; the newest one with a checkpoint becomes {{.prevCheckpointPrefix}}.
    """
    try:
        prefix = attempt_prefix(
            store_prefix, request.project, request.domain, request.job_id, request.attempt_id
        )
    except ValueError as error:
        raise StagingError("InvalidSpec", str(error)) from None
    if not is_literal_map(request.inputs):
        raise StagingError("InvalidInputs", "the job's inputs are not a flyteidl LiteralMap")
    used = placeholders_in(request.command)
    # An empty LiteralMap serializes to no bytes; pyflyte-execute reads inputs.pb anyway.
    if request.inputs or used & {"input", "inputprefix"}:
        inputs = join_url(prefix, INPUTS_FILE)
        try:
            write_file(inputs, request.inputs)
        except Exception as error:   # fsspec backends raise their own errors
            raise StagingError(
                "SystemError", f"cannot write the task's inputs to {inputs}: {_describe(error)}"
            ) from error
    previous = ""
    if "prevcheckpointprefix" in used:
        previous = previous_checkpoint(earlier_prefixes)
    where = TaskLocations(prefix, request.attempt_id, previous)
    env = task_environment(
        request.env, request.command, prefix=prefix, project=request.project,
        domain=request.domain, job_id=request.job_id, name=request.name,
    )
    return StagedTask(prefix, render_command(request.command, where), env)


def previous_checkpoint(earlier_prefixes: Sequence[str]) -> str:
    """The checkpoint of the newest earlier attempt that saved one, or ""."""
    for earlier in earlier_prefixes:
        checkpoint = join_url(earlier, CHECKPOINT_FOLDER)
        try:
            if has_files(checkpoint):
                return checkpoint
        except Exception as error:   # no restore is better than no run
            log.warning("cannot look for a checkpoint in %s: %s", checkpoint, _describe(error))
    return ""


def collect(prefix: str, exit_code: int | None) -> tuple[TaskResult, bytes]:
    """What a finished task left under its prefix: its result, and its outputs (when it
    succeeded). Raises what the store raises when it cannot be read."""
    fs, root = _filesystem(prefix)
    fs.invalidate_cache(root)   # a listing cached before the task wrote its files
    error = _read_error(fs, join_url(root, ERROR_FILE))
    files = TaskFiles(error=error)
    outputs = b""
    if error is None and exit_code == 0:
        path = join_url(root, OUTPUTS_FILE)
        size = _size_or_none(fs, path)
        if size is not None and size <= MAX_OUTPUTS_BYTES:
            outputs = bytes(fs.cat_file(path))
        files = TaskFiles(outputs_size=size, outputs_valid=is_literal_map(outputs))
    result = task_result(exit_code, files)
    return result, b"" if result.reason else outputs


# -- small fsspec helpers -------------------------------------------------------------------------


def write_file(url: str, data: bytes) -> None:
    fs, path = _filesystem(url)
    if local_path(url) is not None:   # object stores have no folders to make
        fs.makedirs(path.rsplit("/", 1)[0] or "/", exist_ok=True)
    fs.pipe_file(path, data)


def has_files(url: str) -> bool:
    fs, path = _filesystem(url)
    fs.invalidate_cache(path)
    try:
        return bool(fs.ls(path, detail=False))
    except FileNotFoundError:
        return False


def is_literal_map(data: bytes) -> bool:
    try:
        literals_pb2.LiteralMap.FromString(data)
    except DecodeError:
        return False
    return True


def _read_error(fs: Any, path: str) -> TaskError | None:
    size = _size_or_none(fs, path)
    if size is None:
        return None
    if size > MAX_ERROR_FILE_BYTES:
        return TaskError(ErrorOrigin.UNKNOWN, f"the task failed; its error.pb is {size} bytes")
    try:
        document = errors_pb2.ErrorDocument.FromString(bytes(fs.cat_file(path)))
    except DecodeError:
        return TaskError(ErrorOrigin.UNKNOWN, "the task failed; its error.pb is not a "
                         "flyteidl ErrorDocument")
    container = document.error
    origin = _ORIGINS.get(int(container.origin), ErrorOrigin.UNKNOWN)
    return TaskError(origin, str(container.message))


def _size_or_none(fs: Any, path: str) -> int | None:
    try:
        return int(fs.size(path))
    except FileNotFoundError:
        return None


def _filesystem(url: str) -> tuple[Any, str]:
    fs, path = fsspec.core.url_to_fs(url)
    return fs, str(path)


def _describe(error: Exception) -> str:
    text = str(error) or type(error).__name__
    return text if len(text) <= 500 else text[:500] + "…"
