"""Read a YAML file and remember the line of every key, so errors can point at it.

Duplicate keys, tabs, bad syntax, empty, missing and unreadable files all come back as
:class:`Problem` records instead of exceptions from PyYAML; so do hostile documents
(control characters, recursive aliases, alias bombs, absurd nesting, values of an
explicit tag that cannot be read, numbers no setting can mean).
"""

from __future__ import annotations

import bisect
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .fsutil import OthersMayChange, read_regular

KeyPath = tuple[str | int, ...]

_MERGE_TAG = "tag:yaml.org,2002:merge"
MAX_DEPTH = 64
"""Deeper nesting than this is refused (no configuration needs a tenth of it)."""
MAX_VALUES = 100_000
"""Refused when aliases expand the document to more values than this."""
MAX_INT = 2**63
"""Integers must fit in 64 bits."""


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


MAX_KEY = 100
"""Characters of one key shown in a problem (an unknown key of 10 MiB was printed whole)."""


def format_key(path: KeyPath) -> str:
    """Render a key path like ``hosts[0].port`` (an unprintable key quoted, escaped; each
    key cut at :data:`MAX_KEY` characters)."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
            continue
        text = str(part)
        cut = len(text) > MAX_KEY
        text = text[:MAX_KEY] if text.isprintable() else repr(text[:MAX_KEY])
        if cut or len(text) > MAX_KEY:
            text = text[: MAX_KEY - 1] + "…"
        out += f".{text}" if out else text
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


def _syntax_message(exc: yaml.MarkedYAMLError, line: int, at: _Lines) -> str:
    """What is wrong, said at ``line``; the line where the construct PyYAML was reading
    began, when that is another (an unclosed ``[`` or quote is found lines later)."""
    problem = exc.problem or "invalid YAML"
    if "'\\t'" in problem or "\\t" in problem:
        return "a tab character: YAML must be indented with spaces"
    text = f"YAML syntax error: {problem}"
    if exc.context:
        began = at(exc.context_mark) if exc.context_mark else line
        text += (
            f" ({exc.context}, which began at line {began})"
            if began != line
            else f" ({exc.context})"
        )
    return text


class _Lines:
    """Line numbers as editors and ``grep -n`` count them: lines end at ``\\n`` only (PyYAML
    also breaks lines at a lone ``\\r``, NEL, U+2028 and U+2029)."""

    def __init__(self, text: str):
        self._ends = [match.start() for match in re.finditer("\n", text)]

    def index(self, index: int) -> int:
        """The line of the character at ``index``."""
        return bisect.bisect_left(self._ends, index) + 1

    def __call__(self, mark: yaml.Mark) -> int:
        return self.index(mark.index)


class _Loader(yaml.SafeLoader):
    """SafeLoader whose constructors fail with a marked error, not a bare exception
    (``!!int foo``, ``!!timestamp 2020-13-45``, an int of 5000 digits...)."""

    def construct_object(self, node, deep=False):
        try:
            return super().construct_object(node, deep=deep)
        except (ValueError, TypeError, KeyError, AttributeError, OverflowError):
            tag = str(node.tag).replace("tag:yaml.org,2002:", "!!")
            raise yaml.constructor.ConstructorError(
                None, None, f"the value cannot be read as {tag}", node.start_mark
            ) from None


_INT_TAG = "tag:yaml.org,2002:int"
_FLOAT_TAG = "tag:yaml.org,2002:float"
_DECIMAL = re.compile(r"[-+]?(0|[1-9][0-9_]*)")


def _octal_as_written(text: str) -> bool:
    """Whether ``text``, an octal number to YAML 1.1, means the same read as decimal."""
    digits = text.lstrip("+-").replace("_", "")
    return bool(re.fullmatch(r"0[0-7]*", digits)) and int(digits, 8) == int(digits, 10)


def _ambiguous_number(node: yaml.Node) -> str | None:
    """Why an unquoted number is refused: YAML 1.1 (PyYAML's) reads ``0755`` as octal
    (493), ``0x10`` and ``0b101`` as hexadecimal and binary, ``1:30`` as base 60 (90), so
    ``max_age: 1:30`` was 90 seconds and an ``environment:`` value ``012345`` reached the
    command as 5349 (an outside review); None for a decimal number or anything else."""
    if not isinstance(node, yaml.ScalarNode) or node.style is not None:
        return None
    text = node.value
    if node.tag == _INT_TAG and not _DECIMAL.fullmatch(text):
        if _octal_as_written(text):
            return None  # 07, 00: the same number either way
        lowered = text.lower()
        kind = (
            "base 60" if ":" in text
            else "hexadecimal" if "x" in lowered
            else "binary" if "b" in lowered
            else "octal"
        )  # fmt: skip
    elif node.tag == _FLOAT_TAG and ":" in text:
        kind = "base 60"
    else:
        return None
    shown = text if len(text) <= 40 else text[:39] + "…"
    return (
        f"{shown} is a YAML 1.1 {kind} number, not what it reads as: write the number in "
        f'decimal or a duration such as "90s", or quote it ("{shown}") for text'
    )


def _check_nodes(root: yaml.Node, file: str, at: _Lines) -> list[Problem]:
    """Duplicate keys, recursive aliases, too deep nesting and alias bombs, as problems.

    Every node is walked once (a node reached again through an alias is measured, not
    walked again), so a hostile document cannot make this slow.
    """
    problems: list[Problem] = []
    seen_nodes: dict[int, tuple[int, int]] = {}  # id(node) -> (values, depth) below it
    too_deep: list[Problem] = []

    def visit(node: yaml.Node, path: KeyPath, ancestors: frozenset[int]) -> tuple[int, int]:
        line = at(node.start_mark)
        if id(node) in ancestors:
            problems.append(Problem(file, line, format_key(path), "an alias refers to itself"))
            return 1, 0
        count, depth = seen_nodes.get(id(node)) or walk(node, path, ancestors)
        if len(path) + depth > MAX_DEPTH and not too_deep:
            message = f"nested more than {MAX_DEPTH} levels deep"
            too_deep.append(Problem(file, line, format_key(path[:1]), message))
        return count, depth

    def walk(node: yaml.Node, path: KeyPath, ancestors: frozenset[int]) -> tuple[int, int]:
        if len(path) > MAX_DEPTH:
            return 1, 0
        said = _ambiguous_number(node)
        if said:
            problems.append(Problem(file, at(node.start_mark), format_key(path), said))
        inner = ancestors | {id(node)}
        below: list[tuple[int, int]] = []
        if isinstance(node, yaml.MappingNode):
            keys: dict[str, int] = {}
            for key_node, value_node in node.value:
                if key_node.tag == _MERGE_TAG:
                    below.append(visit(value_node, path, inner))
                    continue
                key = str(key_node.value) if isinstance(key_node, yaml.ScalarNode) else "?"
                key_line = at(key_node.start_mark)
                if key in keys and isinstance(key_node, yaml.ScalarNode):
                    problems.append(
                        Problem(
                            file,
                            key_line,
                            format_key((*path, key)),
                            f"duplicate key (first given on line {keys[key]})",
                        )
                    )
                keys.setdefault(key, key_line)
                below.append(visit(value_node, (*path, key), inner))
        elif isinstance(node, yaml.SequenceNode):
            for index, item in enumerate(node.value):
                below.append(visit(item, (*path, index), inner))
        count = 1 + sum(c for c, _ in below)
        depth = 1 + max((d for _, d in below), default=0) if below else 0
        seen_nodes[id(node)] = count, depth
        return count, depth

    total, _ = visit(root, (), frozenset())
    problems.extend(too_deep)
    if total > MAX_VALUES and not problems:
        problems.append(
            Problem(
                file,
                at(root.start_mark),
                "",
                f"aliases expand the document to {total} values (at most {MAX_VALUES})",
            )
        )
    return problems


_UNUSABLE_TEXT = re.compile(r"[\x00\ud800-\udfff]")


def _value_problems(doc: YamlDocument) -> list[Problem]:
    """Values no setting can mean: infinite or NaN floats, integers past 64 bits, and text
    with a NUL or a lone surrogate (escapes like ``"\\0"`` or ``"\\ud800"``), which no
    path, argument or output can hold."""
    found: list[Problem] = []

    def visit(value: Any, path: KeyPath) -> None:
        if isinstance(value, float) and not math.isfinite(value):
            found.append(doc.problem(path, f"{value} is not a usable number"))
        elif isinstance(value, int) and not isinstance(value, bool) and abs(value) >= MAX_INT:
            found.append(doc.problem(path, "the number is too large (more than 64 bits)"))
        elif isinstance(value, str) and _UNUSABLE_TEXT.search(value):
            found.append(doc.problem(path, "holds a NUL or a lone surrogate escape"))
        elif isinstance(value, dict):
            for key, item in value.items():
                if isinstance(key, str) and _UNUSABLE_TEXT.search(key):
                    found.append(doc.problem(path, "a key holds a NUL or a lone surrogate escape"))
                    continue
                visit(item, (*path, key if isinstance(key, str | int) else str(key)))
        elif isinstance(value, list):
            for index, item in enumerate(value):
                visit(item, (*path, index))

    visit(doc.data, ())
    return found


def _record_lines(node: yaml.Node, lines: dict[KeyPath, int], at: _Lines, path: KeyPath = ()):
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            key = key_node.value
            key = key if isinstance(key, str) else str(key)
            lines.setdefault((*path, key), at(key_node.start_mark))
            _record_lines(value_node, lines, at, (*path, key))
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            lines[(*path, index)] = at(item.start_mark)
            _record_lines(item, lines, at, (*path, index))


MAX_BYTES = 16 << 20
"""A configuration or service file (or a backup-suite file to import) is read up to this
size; a longer one is refused (one holds a few kilobytes)."""


def _read_text(path: Path, obeyed: bool = False) -> str:
    """The file's text. Raises YamlFileError when it is missing, unreadable, not a regular
    file (a FIFO is refused, not waited on: a command the boot runs would hang on it),
    longer than :data:`MAX_BYTES` or not UTF-8."""
    file = str(path)
    try:
        raw = read_regular(path, MAX_BYTES, obeyed=obeyed)
    except OthersMayChange as exc:
        raise YamlFileError([Problem(file, None, "", str(exc))]) from None
    except ValueError as exc:
        what = "is a directory, expected a file" if path.is_dir() else str(exc)
        raise YamlFileError([Problem(file, None, "", what)]) from None
    except FileNotFoundError:
        raise YamlFileError([Problem(file, None, "", "file not found")]) from None
    except PermissionError:
        # pullback's commands run as root (the files hold or name secrets): a newcomer
        # who typed one without sudo read only "permission denied"
        hint = "" if os.geteuid() == 0 else " (pullback's commands run as root: use sudo)"
        raise YamlFileError(
            [Problem(file, None, "", f"permission denied: cannot read the file{hint}")]
        ) from None
    except IsADirectoryError:
        raise YamlFileError([Problem(file, None, "", "is a directory, expected a file")]) from None
    except OSError as exc:
        raise YamlFileError([Problem(file, None, "", f"cannot read: {exc.strerror}")]) from None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise YamlFileError([Problem(file, line, "", "not valid UTF-8 text")]) from None


def _parse(text: str, file: str, at: _Lines) -> tuple[yaml.Node | None, Any]:
    """The node tree and the data of ``text``. Raises YamlFileError for invalid or
    hostile YAML (see the module's docstring)."""
    try:
        loader = _Loader(text)
    except yaml.reader.ReaderError as exc:
        line = at.index(exc.position)
        message = f"character #x{exc.character:04x} is not allowed in YAML (control character)"
        raise YamlFileError([Problem(file, line, "", message)]) from None
    try:
        node = loader.get_single_node()
        problems = _check_nodes(node, file, at) if node is not None else []
        if problems:
            raise YamlFileError(problems)
        return node, (loader.construct_document(node) if node is not None else None)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = at(mark) if mark else at.index(loader.index)
        raise YamlFileError([Problem(file, line, "", _syntax_message(exc, line, at))]) from None
    except yaml.YAMLError as exc:
        raise YamlFileError(
            [Problem(file, at.index(loader.index), "", f"YAML error: {exc}")]
        ) from None
    except RecursionError:
        message = f"nested more than {MAX_DEPTH} levels deep"
        raise YamlFileError([Problem(file, at.index(loader.index), "", message)]) from None
    finally:
        loader.dispose()


def load(path: str | os.PathLike, *, obeyed: bool = False) -> YamlDocument:
    """Parse the YAML file at ``path``; ``obeyed``: a file pullback does what it says (a
    configuration or service file), refused when another user may change it
    (:func:`.fsutil.others_may_change`).

    Returns a :class:`YamlDocument` (``data`` is None for an empty file). Raises
    :class:`YamlFileError` when the file is missing, unreadable, not UTF-8, not valid YAML,
    has duplicate keys or is hostile (see the module's docstring), or, obeyed, another
    user may change it.
    """
    path = Path(path)
    text = _read_text(path, obeyed)
    at = _Lines(text)
    node, data = _parse(text, str(path), at)
    lines: dict[KeyPath, int] = {}
    if node is not None:
        lines[()] = at(node.start_mark)
        _record_lines(node, lines, at)
    doc = YamlDocument(path, data, lines)
    problems = _value_problems(doc)
    if problems:
        raise YamlFileError(problems)
    return doc
