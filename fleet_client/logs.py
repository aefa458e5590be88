"""Logging for the fleet's long-running roles (control plane, agent): JSON lines or text.

`configure_logging(level, fmt)` puts one handler on the root logger, writing to stderr:

- ``json``: one JSON object per line with ``ts`` (UTC, ISO 8601, milliseconds), ``level``,
  ``logger`` and ``message``; any of ``job_id``, ``attempt_id``, ``dataplane`` and
  ``project`` given through ``extra=``; ``traceback`` when an exception is logged.
- ``text``: ``<time> <LEVEL> <logger>: <message>``, the same context as ``[key=value ...]``.
- ``auto`` (the default): JSON when stderr is not a terminal (a pod, a service, a file),
  text when a person is watching.

    log.warning("attempt lost", extra={"job_id": job.id, "dataplane": name})

Calling it again replaces the handler it installed before (other handlers stay). Without
an explicit stream the handler writes to whatever ``sys.stderr`` is at each record, as
logging's last-resort handler does, so a replaced stderr (a test runner) is followed.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any, Literal, TextIO

LogFormat = Literal["auto", "json", "text"]
FORMATS: tuple[LogFormat, ...] = ("auto", "json", "text")
# The record attributes that say what a line is about; set them with extra={...}.
CONTEXT_FIELDS = ("job_id", "attempt_id", "dataplane", "project")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def configure_logging(
    level: str | int, fmt: str = "auto", stream: TextIO | None = None
) -> logging.Handler:
    """Log records at `level` and above to `stream` (default: stderr) as `fmt` says;
    returns the handler installed."""
    if fmt not in FORMATS:
        raise ValueError(f"log format {fmt!r}: choose from {', '.join(FORMATS)}")
    handler = _Handler(stream)
    use_json = fmt == "json" or (fmt == "auto" and not _is_terminal(handler.stream))
    handler.setFormatter(JsonFormatter() if use_json else TextFormatter())
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _Handler)]:
        root.removeHandler(old)
        old.close()
    root.addHandler(handler)
    root.setLevel(level.upper() if isinstance(level, str) else level)
    return handler


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": _timestamp(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry.update(_context(record))
        if record.exc_info:
            entry["traceback"] = self.formatException(record.exc_info)
        elif record.exc_text:
            entry["traceback"] = record.exc_text
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        # default=str: a context value of another type (an enum, a UUID) still logs.
        return json.dumps(entry, ensure_ascii=False, default=str)


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)

    def formatMessage(self, record: logging.LogRecord) -> str:
        line = super().formatMessage(record)
        context = _context(record)
        if context:
            line += " [" + " ".join(f"{key}={value}" for key, value in context.items()) + "]"
        return line


class _Handler(logging.StreamHandler[TextIO]):
    """The handler configure_logging installs (and replaces on the next call)."""

    def __init__(self, stream: TextIO | None) -> None:
        super().__init__(stream)
        self._follow_stderr = stream is None

    @property
    def stream(self) -> TextIO:
        return sys.stderr if self._follow_stderr else self._stream

    @stream.setter
    def stream(self, value: TextIO) -> None:
        self._stream = value


def _context(record: logging.LogRecord) -> dict[str, Any]:
    return {
        key: getattr(record, key)
        for key in CONTEXT_FIELDS
        if getattr(record, key, None) not in (None, "")
    }


def _timestamp(created: float) -> str:
    moment = datetime.fromtimestamp(created, UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):   # no isatty, or a closed stream
        return False
