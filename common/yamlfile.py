"""Read a YAML file and remember the line of every key, so errors can point at it.

Duplicate keys, tabs, bad syntax, empty, missing and unreadable files all come back as
:class:`Problem` records instead of exceptions from PyYAML.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

KeyPath = tuple[str | int, ...]

_MERGE_TAG = "tag:yaml.org,2002:merge"


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a configuration file, printed as ``file:line: key: message``."""

    file: str
    line: int | None
    key: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        return f"{where}: {self.key}: {self.message}" if self.key else f"{where}: {self.message}"


def format_key(path: KeyPath) -> str:
    """Render a key path like ``hosts[0].port``."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


@dataclass
class YamlDocument:
    """A parsed YAML file: its data and the line of each key path."""

    path: Path
    data: Any
    lines: dict[KeyPath, int] = field(default_factory=dict)

    def line_of(self, path: KeyPath) -> int | None:
        """The line of ``path``, or of its nearest ancestor that has one."""
        path = tuple(path)
        while path:
            if path in self.lines:
                return self.lines[path]
            path = path[:-1]
        return self.lines.get((), 1)

    def problem(self, path: KeyPath, message: str) -> Problem:
        return Problem(str(self.path), self.line_of(path), format_key(path), message)

    def sub(self, prefix: KeyPath) -> YamlDocument:
        """The document rooted at ``prefix`` (lines re-keyed), for validating one section."""
        n = len(prefix)
        lines = {k[n:]: v for k, v in self.lines.items() if k[:n] == tuple(prefix)}
        data = self.data
        for part in prefix:
            data = data[part]
        return YamlDocument(self.path, data, lines)


class YamlFileError(Exception):
    """Raised by :func:`load` with the problems that stopped the file from being read."""

    def __init__(self, problems: list[Problem]):
        self.problems = problems
        super().__init__("\n".join(map(str, problems)))


def _syntax_message(exc: yaml.MarkedYAMLError) -> str:
    problem = exc.problem or "invalid YAML"
    if "'\\t'" in problem or "\\t" in problem:
        return "a tab character: YAML must be indented with spaces"
    text = f"YAML syntax error: {problem}"
    if exc.context:
        text += f" ({exc.context})"
    return text


def _check_duplicates(node: yaml.Node, file: str, problems: list[Problem], path: KeyPath = ()):
    if isinstance(node, yaml.MappingNode):
        seen: dict[str, int] = {}
        for key_node, value_node in node.value:
            if key_node.tag == _MERGE_TAG:
                continue
            key = str(key_node.value)
            line = key_node.start_mark.line + 1
            if key in seen:
                problems.append(
                    Problem(
                        file,
                        line,
                        format_key((*path, key)),
                        f"duplicate key (first given on line {seen[key]})",
                    )
                )
            else:
                seen[key] = line
            _check_duplicates(value_node, file, problems, (*path, key))
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _check_duplicates(item, file, problems, (*path, index))


def _record_lines(node: yaml.Node, lines: dict[KeyPath, int], path: KeyPath = ()):
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            key = key_node.value
            key = key if isinstance(key, str) else str(key)
            lines.setdefault((*path, key), key_node.start_mark.line + 1)
            _record_lines(value_node, lines, (*path, key))
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            lines[(*path, index)] = item.start_mark.line + 1
            _record_lines(item, lines, (*path, index))


def load(path: str | os.PathLike) -> YamlDocument:
    """Parse the YAML file at ``path``.

    Returns a :class:`YamlDocument` (``data`` is None for an empty file). Raises
    :class:`YamlFileError` when the file is missing, unreadable, not UTF-8, not valid YAML
    or has duplicate keys.
    """
    path = Path(path)
    file = str(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise YamlFileError([Problem(file, None, "", "file not found")]) from None
    except PermissionError:
        raise YamlFileError(
            [Problem(file, None, "", "permission denied: cannot read the file")]
        ) from None
    except IsADirectoryError:
        raise YamlFileError([Problem(file, None, "", "is a directory, expected a file")]) from None
    except OSError as exc:
        raise YamlFileError([Problem(file, None, "", f"cannot read: {exc.strerror}")]) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise YamlFileError([Problem(file, line, "", "not valid UTF-8 text")]) from None

    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        problems: list[Problem] = []
        if node is not None:
            _check_duplicates(node, file, problems)
        if problems:
            raise YamlFileError(problems)
        data = loader.construct_document(node) if node is not None else None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else None
        raise YamlFileError([Problem(file, line, "", _syntax_message(exc))]) from None
    except yaml.YAMLError as exc:
        raise YamlFileError([Problem(file, None, "", f"YAML error: {exc}")]) from None
    finally:
        loader.dispose()

    lines: dict[KeyPath, int] = {(): node.start_mark.line + 1} if node is not None else {}
    if node is not None:
        _record_lines(node, lines)
    return YamlDocument(path, data, lines)
