"""YAML loading that remembers where each value came from.

Validation errors are only useful if they point at the line to fix. We compose the YAML node
tree (which carries line marks) next to the plain data and map a pydantic error location such as
`('workloads', 'training', 0, 'dataset', 'synthetic', 'num_samples')` back to a dotted path and a
line. Duplicate keys, which PyYAML silently resolves to the last value, are rejected here.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import yaml


@dataclass(frozen=True)
class YamlDocument:
    data: Any
    root: yaml.Node | None

    def locate(self, loc: Sequence[str | int]) -> tuple[str, int | None]:
        """Map an error location to (dotted path, 1-based line).

        Elements that do not name a key or index in the document (pydantic's union tags) are
        skipped; a trailing element that is absent (a missing field) is kept in the path and the
        line of its parent mapping is returned.
        """
        node = self.root
        line = node.start_mark.line + 1 if node is not None else None
        parts: list[str] = []
        for i, element in enumerate(loc):
            child = _child(node, element)
            if child is not None:
                node = child
                line = child.start_mark.line + 1
                parts.append(f"[{element}]" if isinstance(element, int) else str(element))
            elif i == len(loc) - 1:
                parts.append(f"[{element}]" if isinstance(element, int) else str(element))
        return ".".join(parts).replace(".[", "["), line

    def node(self, loc: Sequence[str | int]) -> yaml.Node | None:
        """The node at an error location (union tags skipped, as in `locate`), or None if absent."""
        node = self.root
        for element in loc:
            child = _child(node, element)
            if child is not None:
                node = child
            elif not _is_union_tag(node, element):
                return None
        return node

    def line_of(self, dotted: str) -> int | None:
        """The 1-based line of a dotted path such as `workloads.training[0].cpus`, if present."""
        loc = parse_dotted(dotted)
        if loc is None:
            return None
        path, line = self.locate(loc)
        return line if path == dotted.replace(".[", "[") else None


def _is_union_tag(node: yaml.Node | None, element: str | int) -> bool:
    """A location element that names a union member rather than a key: the mapping has no such key."""
    return isinstance(node, yaml.MappingNode) and isinstance(element, str)


_DOTTED_PART = re.compile(r"([A-Za-z_][A-Za-z0-9_<>-]*)((?:\[\d+\])*)")


def parse_dotted(dotted: str) -> tuple[str | int, ...] | None:
    """`workloads.training[0].cpus` as ('workloads', 'training', 0, 'cpus'); None if not a path."""
    loc: list[str | int] = []
    for part in dotted.split("."):
        match = _DOTTED_PART.fullmatch(part)
        if match is None:
            return None
        loc.append(match.group(1))
        loc.extend(int(i) for i in re.findall(r"\[(\d+)\]", match.group(2)))
    return tuple(loc)


def _child(node: yaml.Node | None, element: str | int) -> yaml.Node | None:
    if isinstance(node, yaml.MappingNode) and isinstance(element, str):
        for key, value in node.value:
            if isinstance(key, yaml.ScalarNode) and key.value == element:
                return value  # type: ignore[no-any-return]
        return None
    if isinstance(node, yaml.SequenceNode) and isinstance(element, int) and 0 <= element < len(node.value):
        return node.value[element]  # type: ignore[no-any-return]
    return None


class DuplicateKeyError(ValueError):
    """A key given twice in one mapping: YAML loaders silently keep the last, which hides mistakes."""

    def __init__(self, line: int, path: str, first_line: int) -> None:
        super().__init__(f"line {line}: duplicate key {path!r} (first at line {first_line})")
        self.line, self.path, self.first_line = line, path, first_line


def _check_duplicates(node: yaml.Node | None, path: str = "", seen_nodes: set[int] | None = None) -> None:
    """Walk the node graph once: an alias shares its node, and may even point back at a parent."""
    seen_nodes = set() if seen_nodes is None else seen_nodes
    if node is None or id(node) in seen_nodes:
        return
    seen_nodes.add(id(node))
    if isinstance(node, yaml.MappingNode):
        seen: dict[str, int] = {}
        for key, value in node.value:
            if isinstance(key, yaml.ScalarNode):
                line = key.start_mark.line + 1
                if key.value in seen:
                    where = f"{path}.{key.value}" if path else key.value
                    raise DuplicateKeyError(line, where, seen[key.value])
                seen[key.value] = line
                _check_duplicates(value, f"{path}.{key.value}" if path else key.value, seen_nodes)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _check_duplicates(item, f"{path}[{i}]", seen_nodes)


def syntax_error_text(exc: yaml.YAMLError) -> tuple[int | None, int | None, str]:
    """(1-based line, 1-based column, one-line message) of a YAML syntax error."""
    if isinstance(exc, yaml.MarkedYAMLError):
        mark = exc.problem_mark or exc.context_mark
        problem = " ".join(str(exc.problem or "").split()) or "not valid YAML"
        context = " ".join(str(exc.context or "").split())
        if context and context not in problem:
            started = exc.context_mark
            if started is not None and mark is not None and started.line != mark.line:
                context += f" started at line {started.line + 1}, column {started.column + 1}"
            message = f"{problem} ({context})"
        else:
            message = problem
        if mark is not None:
            return mark.line + 1, mark.column + 1, message
        return None, None, message
    return None, None, " ".join(str(exc).split())


def load_yaml_document(text: str) -> YamlDocument:
    """Parse one YAML document safely. Raises yaml.YAMLError, or ValueError on duplicate keys."""
    root = yaml.compose(text, Loader=yaml.SafeLoader)
    _check_duplicates(root)
    data = yaml.safe_load(text)
    return YamlDocument(data=data, root=root)
