"""Load description files as untrusted input, keeping the line of every value.

Files come from users and from the internet (imported topologies), so loading is
defensive:

- only plain YAML data (mappings, sequences, scalars; no Python tags);
- a size limit (:data:`MAX_FILE_BYTES`);
- aliases are allowed (anchors are handy for shared defaults) but the document
  they expand to is counted before it is built: a "billion laughs" file fails
  with a clear error instead of eating memory (:data:`MAX_EXPANDED_NODES`);
- duplicate keys are errors (PyYAML silently keeps the last one).

The result is plain Python data plus a :class:`LineMap` from dotted paths
(``spans.3.length``) to 1-based line numbers, used to point errors at the file.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from twin.errors import Problem, ValidationError

MAX_FILE_BYTES = 2 * 1024 * 1024
MAX_EXPANDED_NODES = 200_000
_PLAIN_COLLECTION_TAGS = {"tag:yaml.org,2002:seq", "tag:yaml.org,2002:map"}


@dataclass
class LineMap:
    """Dotted path -> line number of the value (or key) in the source file."""

    lines: dict[str, int] = field(default_factory=dict)

    def line_of(self, path: str) -> int | None:
        """Line of ``path`` or of its nearest ancestor that has one."""
        parts = path.split(".") if path else []
        while parts:
            key = ".".join(parts)
            if key in self.lines:
                return self.lines[key]
            parts.pop()
        return self.lines.get("", 1)


@dataclass
class LoadedFile:
    path: str
    data: Any
    lines: LineMap


def _problem(file: str, line: int | None, message: str, fix: str) -> ValidationError:
    return ValidationError([Problem(file, line, "", message, fix)])


def _count_expanded(root: Node, file: str) -> None:
    """Count the nodes the document has once every alias is expanded.

    PyYAML composes an alias as a reference to the anchored node, so composing is
    cheap; the blow-up happens in whoever walks the result. Counting with a memo
    per node is linear in the composed graph.
    """
    memo: dict[int, int] = {}
    # Iterative post-order walk: a deep document must not hit Python's recursion limit.
    stack: list[tuple[Node, bool]] = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        if id(node) in memo:
            continue
        if isinstance(node, ScalarNode):
            memo[id(node)] = 1
            continue
        children: list[Node] = []
        if isinstance(node, SequenceNode):
            children = list(node.value)
        elif isinstance(node, MappingNode):
            for key, value in node.value:
                children.extend((key, value))
        if not children_done:
            stack.append((node, True))
            stack.extend((child, False) for child in children if id(child) not in memo)
            continue
        total = 1 + sum(memo.get(id(child), 0) for child in children)
        memo[id(node)] = total
        if total > MAX_EXPANDED_NODES:
            raise _problem(
                file, node.start_mark.line + 1,
                f"document expands to more than {MAX_EXPANDED_NODES} values through YAML aliases",
                "remove the nested anchors/aliases (a 'billion laughs' pattern) or write the values out",
            )


def _build(node: Node, path: str, lines: LineMap, file: str) -> Any:
    """Turn a composed node into plain data, recording lines; no tags beyond YAML core."""
    lines.lines.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, ScalarNode):
        return _scalar(node, file)
    if not isinstance(node, ScalarNode) and node.tag not in _PLAIN_COLLECTION_TAGS:
        # A tag on a list or mapping (e.g. !!python/object/apply) would otherwise be dropped
        # silently, and the file would mean something other than what it says.
        raise _problem(file, node.start_mark.line + 1, f"unsupported YAML tag {node.tag!r}",
                       "remove the YAML tag and write plain data")
    if isinstance(node, SequenceNode):
        return [_build(child, _join(path, str(i)), lines, file) for i, child in enumerate(node.value)]
    if isinstance(node, MappingNode):
        result: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, ScalarNode):
                raise _problem(file, key_node.start_mark.line + 1, "a mapping key must be a plain value",
                               "write keys as simple words")
            if key_node.tag == "tag:yaml.org,2002:merge":
                raise _problem(file, key_node.start_mark.line + 1, "YAML merge keys ('<<') are not supported",
                               "write the keys out in full")
            key = _scalar(key_node, file)
            child_path = _join(path, str(key))
            if key in result:
                raise ValidationError([Problem(file, key_node.start_mark.line + 1, child_path,
                                               f"duplicate key {key!r}", "remove one of the two entries")])
            # Point errors about a value at its key's line, where a reader looks for it.
            lines.lines.setdefault(child_path, key_node.start_mark.line + 1)
            result[key] = _build(value_node, child_path, lines, file)
        return result
    raise _problem(file, node.start_mark.line + 1, f"unsupported YAML node {node.tag}", "use plain YAML data")


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _scalar(node: ScalarNode, file: str) -> Any:
    """Resolve one scalar with YAML's safe rules (ints, floats, bools, null, strings)."""
    try:
        return yaml.SafeLoader("").construct_object(node, deep=True)
    except yaml.constructor.ConstructorError as err:
        raise _problem(file, node.start_mark.line + 1, f"unsupported value: {err.problem}",
                       "remove the YAML tag and write plain data") from None


def load_text(text: str, file: str = "<string>") -> LoadedFile:
    """Parse YAML text into data and a line map; raises :class:`ValidationError`."""
    if len(text.encode("utf-8", "surrogatepass")) > MAX_FILE_BYTES:
        raise _problem(file, None, f"file is larger than {MAX_FILE_BYTES // 1024} KiB",
                       "split it or check that it is the right file")
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        line = mark.line + 1 if mark else None
        raise _problem(file, line, f"not valid YAML: {err.problem or err.context}",
                       "fix the YAML syntax at this line") from None
    except yaml.YAMLError as err:
        raise _problem(file, None, f"not valid YAML: {err}", "fix the YAML syntax") from None
    except RecursionError:
        # PyYAML's parser and composer recurse once per nesting level.
        raise _problem(file, None, "the YAML is nested too deeply", "flatten the structure") from None
    if root is None or (isinstance(root, ScalarNode) and root.tag == "tag:yaml.org,2002:null"
                        and root.value in ("", "~", "null")):
        raise _problem(file, 1, "file is empty", "write a topology or scenario description")
    _count_expanded(root, file)
    lines = LineMap()
    try:
        data = _build(root, "", lines, file)
    except RecursionError:
        raise _problem(file, None, "the YAML is nested too deeply", "flatten the structure") from None
    return LoadedFile(file, data, lines)


def load_file(path: str | Path) -> LoadedFile:
    """Read and parse a description file; raises :class:`ValidationError` with a located problem."""
    path = Path(path)
    name = str(path)
    try:
        size = path.stat().st_size
    except OSError as err:
        raise _problem(name, None, f"cannot read file: {err.strerror}", "check the path") from None
    if size > MAX_FILE_BYTES:
        raise _problem(name, None, f"file is {size} bytes, more than the {MAX_FILE_BYTES // 1024} KiB limit",
                       "split it or check that it is the right file")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise _problem(name, None, "file is not UTF-8 text", "save it as UTF-8") from None
    except OSError as err:
        raise _problem(name, None, f"cannot read file: {err.strerror}", "check the path") from None
    return load_text(text, name)
