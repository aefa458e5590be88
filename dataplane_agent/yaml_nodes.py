"""Where in a YAML file a value came from: line:column marks for error messages.

pydantic reports a location as a path of keys and indexes; these helpers walk PyYAML's
node tree along that path to the node, whose start mark gives the line and column.
"""

from __future__ import annotations

import yaml

Loc = tuple[int | str, ...]


def node_at(root: yaml.Node, loc: Loc) -> yaml.Node:
    """The deepest node along loc (the parent when the rest of the path does not exist)."""
    node = root
    for part in loc:
        child = _child(node, part)
        if child is None:
            break
        node = child
    return node


def key_node_at(root: yaml.Node, loc: Loc) -> yaml.Node | None:
    parent = node_at(root, loc[:-1])
    if isinstance(parent, yaml.MappingNode):
        for key_node, _value in parent.value:
            if key_node.value == loc[-1]:
                return key_node  # type: ignore[no-any-return]
    return None


def _child(node: yaml.Node, part: int | str) -> yaml.Node | None:
    if isinstance(node, yaml.MappingNode) and isinstance(part, str):
        for key_node, value_node in node.value:
            if key_node.value == part:
                return value_node  # type: ignore[no-any-return]
    if isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
        return node.value[part]  # type: ignore[no-any-return]
    return None


def mark(node: yaml.Node) -> str:
    return f"{node.start_mark.line + 1}:{node.start_mark.column + 1}"


def yaml_position(error: yaml.MarkedYAMLError) -> str:
    mark = error.problem_mark or error.context_mark
    return "1:1" if mark is None else f"{mark.line + 1}:{mark.column + 1}"


def field_path(loc: Loc) -> str:
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else part)
    return text


def show(value: object) -> str:
    if value is None:
        return "nothing"
    if isinstance(value, str):
        return repr(value)
    if isinstance(value, dict | list):
        return yaml.safe_dump(value, default_flow_style=True, width=80).strip()
    return str(value)


def os_reason(error: Exception) -> str:
    return error.strerror if isinstance(error, OSError) and error.strerror else str(error)


