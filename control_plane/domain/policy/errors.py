"""What is wrong with a policy document: every problem, each with its place and field."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

FieldPath = tuple[str | int, ...]


def field_path(path: FieldPath) -> str:
    """rules[2].match.projects, or (top level) for the document itself."""
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else part)
    return text or "(top level)"


@dataclass(frozen=True, order=True)
class Problem:
    line: int  # 1-based, as editors count
    column: int
    source: str
    path: FieldPath
    reason: str

    def __str__(self) -> str:
        return f"{self.source}:{self.line}:{self.column}: {field_path(self.path)}: {self.reason}"


class PolicyError(ValueError):
    """A document that cannot be applied; nothing of it is. str() lists every problem."""

    def __init__(self, problems: Iterable[Problem]) -> None:
        self.problems = tuple(sorted(problems, key=lambda p: (p.line, p.column, p.reason)))
        super().__init__("\n".join(str(p) for p in self.problems))
