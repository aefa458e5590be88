"""Reading a YAML node tree field by field, collecting every problem with its position.

Walking PyYAML's composed nodes (rather than the constructed dicts) keeps each value's line
and column at hand, so a problem points at the very key or value, and one wrong field never
hides the next: each reader records its problem and returns None, and the caller goes on.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence

import yaml
from yaml.constructor import SafeConstructor

from control_plane.domain.policy.errors import FieldPath, Problem

_STR = "tag:yaml.org,2002:str"
_MERGE = "tag:yaml.org,2002:merge"


class Reader:
    def __init__(self, source: str, root: yaml.Node) -> None:
        self.source = source
        self.root = root
        self.problems: list[Problem] = []
        self._constructor = SafeConstructor()

    # -- reporting ---------------------------------------------------------------------------

    def report(self, node: yaml.Node, path: FieldPath, reason: str) -> None:
        mark = node.start_mark
        self.problems.append(Problem(mark.line + 1, mark.column + 1, self.source, path, reason))

    def report_at(self, path: FieldPath, reason: str) -> None:
        """Report at the node the path leads to (the deepest one that exists)."""
        self.report(self.node_at(path), path, reason)

    def node_at(self, path: FieldPath) -> yaml.Node:
        node = self.root
        for part in path:
            child = _child(node, part)
            if child is None:
                break
            node = child
        return node

    # -- structure ---------------------------------------------------------------------------

    def fields(
        self,
        node: yaml.Node,
        path: FieldPath,
        known: Sequence[str],
        required: Sequence[str] = (),
    ) -> dict[str, yaml.Node] | None:
        """The value nodes of a mapping with a fixed set of fields."""
        entries = self.entries(node, path)
        if entries is None:
            return None
        found: dict[str, yaml.Node] = {}
        for key_node, name, value in entries:
            if name not in known:
                self.report(key_node, (*path, name), _unknown_field(name, known))
            else:
                found[name] = value
        for name in required:
            if name not in found:
                self.report(node, (*path, name), "required field is missing")
        return found

    def entries(
        self, node: yaml.Node, path: FieldPath
    ) -> list[tuple[yaml.Node, str, yaml.Node]] | None:
        """(key node, key, value node) of a mapping with string keys, duplicates reported."""
        if not isinstance(node, yaml.MappingNode):
            self.report(node, path, f"must be a mapping (got {self.show(node)})")
            return None
        seen: dict[str, yaml.Node] = {}
        result: list[tuple[yaml.Node, str, yaml.Node]] = []
        for key_node, value in node.value:
            if key_node.tag == _MERGE:
                self.report(key_node, path, "merge keys (<<) are not supported: write the "
                            "fields out (anchors and aliases of whole values are fine)")
                continue
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag != _STR:
                shown = self.show(key_node)
                self.report(key_node, path, f"keys must be strings (got {shown}; quote it)")
                continue
            key = str(key_node.value)
            if key in seen:
                first = seen[key].start_mark.line + 1
                self.report(key_node, (*path, key), f"duplicate key (first on line {first})")
                continue
            seen[key] = key_node
            result.append((key_node, key, value))
        return result

    def items(self, node: yaml.Node, path: FieldPath) -> list[yaml.Node] | None:
        if not isinstance(node, yaml.SequenceNode):
            self.report(node, path, f"must be a list (got {self.show(node)})")
            return None
        return list(node.value)

    # -- values ------------------------------------------------------------------------------

    def value(self, node: yaml.Node) -> object:
        if isinstance(node, yaml.ScalarNode):
            return self._constructor.construct_object(node, deep=True)
        return node

    def string(self, node: yaml.Node, path: FieldPath) -> str | None:
        value = self.value(node)
        if isinstance(value, str) and value.strip():
            return value
        self.report(node, path, f"must be a non-empty string (got {self.show(node)})")
        return None

    def integer(
        self, node: yaml.Node, path: FieldPath, minimum: int = 0, maximum: int = 2**31 - 1
    ) -> int | None:
        value = self.value(node)
        if isinstance(value, int) and not isinstance(value, bool) and minimum <= value <= maximum:
            return value
        if maximum != 2**31 - 1:
            bound = f" from {minimum} to {maximum}"
        else:
            bound = f" >= {minimum}" if minimum > -(2**31) else ""
        self.report(node, path, f"must be an integer{bound} (got {self.show(node)})")
        return None

    def number(self, node: yaml.Node, path: FieldPath, *, positive: bool = False) -> float | None:
        value = self.value(node)
        if isinstance(value, int | float) and not isinstance(value, bool):
            number = float(value)
            if number > 0 or (number == 0 and not positive):
                return number
        bound = "> 0" if positive else ">= 0"
        self.report(node, path, f"must be a number {bound} (got {self.show(node)})")
        return None

    def coordinate(self, node: yaml.Node, path: FieldPath, limit: float) -> float | None:
        value = self.value(node)
        if (
            isinstance(value, int | float)
            and not isinstance(value, bool)
            and -limit <= value <= limit
        ):
            return float(value)
        shown = self.show(node)
        self.report(node, path, f"must be a number from {-limit:g} to {limit:g} (got {shown})")
        return None

    def strings(self, node: yaml.Node, path: FieldPath) -> tuple[str, ...] | None:
        """A list of non-empty strings; an empty list is returned as () for the caller to judge."""
        items = self.items(node, path)
        if items is None:
            return None
        result = [self.string(item, (*path, index)) for index, item in enumerate(items)]
        if any(item is None for item in result):
            return None
        return tuple(item for item in result if item is not None)

    def string_map(self, node: yaml.Node, path: FieldPath) -> dict[str, str] | None:
        entries = self.entries(node, path)
        if entries is None:
            return None
        result: dict[str, str] = {}
        for _key_node, key, value in entries:
            item = self.value(value)
            if isinstance(item, str):
                result[key] = item
            else:
                shown = self.show(value)
                self.report(value, (*path, key), f"must be a string (got {shown}; quote it)")
        return result

    def show(self, node: yaml.Node) -> str:
        if isinstance(node, yaml.MappingNode):
            return "a mapping"
        if isinstance(node, yaml.SequenceNode):
            return "a list"
        value = self.value(node)
        if value is None:
            return "nothing"
        if isinstance(value, str):
            return repr(value)
        return str(node.value)


def _child(node: yaml.Node, part: str | int) -> yaml.Node | None:
    if isinstance(node, yaml.MappingNode) and isinstance(part, str):
        for key_node, value_node in node.value:
            if key_node.value == part:
                return value_node  # type: ignore[no-any-return]
    if isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
        return node.value[part]  # type: ignore[no-any-return]
    return None


def _unknown_field(name: str, known: Sequence[str]) -> str:
    close = difflib.get_close_matches(name, known, n=1)
    if close:
        return f"unknown field (did you mean {close[0]}?)"
    return "unknown field (fields here: " + ", ".join(known) + ")"
