"""Exclude patterns with rsync's meaning, exactly as backup-suite's ``files`` task used them.

backup-suite copied each listed path with ``cd "$(dirname PATH)" && rsync -a
--delete-excluded --exclude P... "$(basename PATH)" DEST/``: rsync's transfer root is the
*parent* of the listed path, so the names patterns are matched against are
``<basename>``, ``<basename>/sub``, ... (:meth:`ExcludeMatcher.rooted` does the same):

- ``*.log`` (no slash): matches the last component at any depth, the listed item itself
  included;
- ``cache/`` (trailing slash): matches directories only;
- ``/media/tmp`` (leading slash): anchored at the listed path's parent;
- ``media/big.mp4``, ``**/x``: matched against the end of the path on a component
  boundary (the listed item's own name counts); ``*`` and ``?`` stop at ``/``, ``**``
  crosses it (``a/**/b`` needs a directory between; a leading ``**/`` may match none),
  ``[...]`` is a class (``[[:digit:]]``, ``[!a-z]``; never ``/``); ``dir/***`` is the
  directory and all below it;
- ``\\`` escapes the next character only in a pattern with a wildcard (``*``, ``?``,
  ``[``): ``q\\1`` is the name ``q\\1``, ``a\\*b`` the name ``a*b``; a pattern rsync's
  wildmatch cannot read (a ``[`` never closed, an unknown class) matches nothing.

The listed path ``/`` is rsync's transfer root itself: its names are ``proc``, ``var/x``.

An excluded directory is left out with everything below it. ``tests/integration/
test_exclude_oracle.py`` holds this to real rsync.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from ..common.trees import walk

_NEVER = "(?!)"
"""A regex that matches nothing: what rsync's wildmatch does with a pattern it cannot
read (a ``[`` never closed, an unknown ``[:class:]``, a trailing ``\\``)."""

_CLASSES = {
    "alnum": "a-zA-Z0-9",
    "alpha": "a-zA-Z",
    "blank": " \\t",
    "cntrl": "\\x00-\\x1f\\x7f",
    "digit": "0-9",
    "graph": "!-~",
    "lower": "a-z",
    "print": " -~",
    "punct": "!-/:-@\\[-`{-~",
    "space": " \\t\\n\\r\\f\\v",
    "upper": "A-Z",
    "xdigit": "0-9A-Fa-f",
}
"""The character classes wildmatch knows, as the C locale has them."""


class _Unreadable(Exception):
    """A pattern rsync's wildmatch gives up on: it matches nothing."""


class _Bracket:
    """One bracket expression read as rsync's wildmatch reads it (:meth:`regex`)."""

    def __init__(self, pattern: str, start: int):
        self.pattern = pattern
        self.at = start + 1
        self.members: list[str] = []
        self.previous: str | None = None
        """The last single character read (a range's low end), None after a range or
        a class."""

    def _take(self) -> str:
        """The next character (after a ``\\``, the one it escapes). Raises _Unreadable
        at the pattern's end."""
        if self.at >= len(self.pattern):
            raise _Unreadable
        c = self.pattern[self.at]
        self.at += 1
        if c == "\\":
            return self._take()
        return c

    def regex(self) -> tuple[str, int]:
        """The expression as a regex, and the index after its ``]``: ``!`` or ``^``
        first negates, a ``]`` first is a member, ``\\`` escapes, ``a-z`` is a range
        (one the wrong way round holds only its first character), ``[:digit:]`` a
        class; it never matches ``/``. Raises _Unreadable (wildmatch then matches
        nothing)."""
        negated = self.pattern[self.at : self.at + 1] in ("!", "^")
        self.at += negated
        first = True
        while True:
            if self.at >= len(self.pattern):
                raise _Unreadable
            ahead = self.pattern[self.at : self.at + 2]
            if ahead[:1] == "]" and not first:
                break
            first = False
            if ahead == "[:":
                self._class_name()
            elif ahead[:1] == "-" and self.previous is not None and self._range_follows():
                self._range()
            else:
                self.previous = self._take()
                self.members.append(re.escape(self.previous))
        body = "".join(self.members)
        if negated:
            return (f"[^/{body}]", self.at + 1)
        return (f"(?!/)[{body}]" if body else _NEVER, self.at + 1)

    def _range_follows(self) -> bool:
        return self.pattern[self.at + 1 : self.at + 2] not in ("", "]")

    def _range(self) -> None:
        low = self.previous
        self.at += 1  # (the "-")
        high = self._take()
        if low is not None and low <= high:  # (its low end stays a member either way)
            self.members.append(f"{re.escape(low)}-{re.escape(high)}")
        self.previous = None

    def _class_name(self) -> None:
        close = self.pattern.find("]", self.at + 2)
        if close == -1:
            raise _Unreadable
        if self.pattern[close - 1] != ":" or close - 1 < self.at + 2:  # no ":]": a "["
            self.previous = self._take()
            self.members.append(re.escape(self.previous))
            return
        name = self.pattern[self.at + 2 : close - 1]
        if name not in _CLASSES:
            raise _Unreadable
        self.members.append(_CLASSES[name])
        self.previous = None
        self.at = close + 1


def _translate(pattern: str, wild: bool) -> str:
    """``pattern`` (its leading and trailing slashes taken off) as a regex. ``wild``: it
    has a wildcard (``*``, ``?``, ``[``), and rsync reads it with wildmatch: ``*`` and
    ``?`` stop at ``/``, ``**`` crosses it (``a/**/b`` needs a directory between),
    ``\\`` escapes; without one rsync compares it as it is, backslashes and all."""
    if not wild:
        return re.escape(pattern)
    out = []
    i = 0
    try:
        while i < len(pattern):
            c = pattern[i]
            if pattern.startswith("**", i):
                out.append(".*")
                i += 2
                continue
            if c == "[":
                regex, i = _Bracket(pattern, i).regex()
                out.append(regex)
                continue
            if c == "*":
                out.append("[^/]*")
            elif c == "?":
                out.append("[^/]")
            elif c == "\\":
                i += 1
                if i >= len(pattern):
                    raise _Unreadable
                out.append(re.escape(pattern[i]))
            else:
                out.append(re.escape(c))
            i += 1
    except _Unreadable:
        return _NEVER
    return "".join(out)


@dataclass(frozen=True)
class _Rule:
    regex: re.Pattern
    dir_only: bool
    basename_only: bool


def compile_rules(pattern: str) -> list[_Rule]:
    """The rules of one pattern (``dir/***`` is two: the directory, and all below it).
    Raises ValueError for an empty or unusable one."""
    wild = any(c in pattern for c in "*?[")
    body = pattern[:-1] if pattern.endswith("/***/") else pattern
    if body.endswith("/***") and len(body) > 4:  # (the directory only: a file "dir" stays)
        return [compile_rule(body[:-4] + "/", wild), compile_rule(body[:-4] + "/**", wild)]
    return [compile_rule(pattern, wild)]


def _parts(pattern: str) -> tuple[str, bool, bool]:
    """``pattern`` without its trailing and leading slash (one each: rsync takes no
    more), whether it had them (directories only; anchored). Raises ValueError for an
    empty one."""
    if not pattern or pattern in ("/", "//"):
        raise ValueError(f"empty exclude pattern {pattern!r}")
    dir_only = pattern.endswith("/")
    body = pattern[:-1] if dir_only else pattern
    anchored = body.startswith("/")
    body = body[1:] if anchored else body
    if not body:
        raise ValueError(f"unusable exclude pattern {pattern!r}")
    return body, dir_only, anchored


def compile_rule(pattern: str, wild: bool | None = None) -> _Rule:
    """Compile one pattern (``wild``: whether rsync reads it with wildmatch; by default,
    whether it has ``*``, ``?`` or ``[``). Raises ValueError for an empty one."""
    if wild is None:
        wild = any(c in pattern for c in "*?[")
    body, dir_only, anchored = _parts(pattern)
    basename_only = not anchored and "/" not in body and "**" not in body
    if wild and not anchored and body.startswith("**/"):
        body = body[3:]  # (rsync: a leading "**/" may also match no directory at all)
    regex = _translate(body, wild)
    full = f"^{regex}$" if basename_only or anchored else f"^(?:.*/)?{regex}$"
    try:
        return _Rule(re.compile(full, re.DOTALL), dir_only, basename_only)
    except re.error as exc:
        raise ValueError(f"bad exclude pattern {pattern!r}: {exc}") from None


def _bytewise(text: str) -> str:
    """``text`` as its bytes (UTF-8, a name's undecodable bytes as they were), one
    character each: rsync matches bytes, so ``caf?`` does not match ``café`` (two bytes
    for the é) and ``caf??`` does."""
    return text.encode("utf-8", "surrogateescape").decode("latin-1")


class ExcludeMatcher:
    """Callable ``(relative_path, is_dir) -> bool``: True when the entry is excluded."""

    def __init__(self, patterns: Iterable[str]):
        self.patterns = list(patterns)
        self.rules = [rule for p in self.patterns for rule in compile_rules(_bytewise(p))]

    def __call__(self, relative: str, is_dir: bool) -> bool:
        relative = _bytewise(relative)
        name = relative.rsplit("/", 1)[-1]
        for rule in self.rules:
            if rule.dir_only and not is_dir:
                continue
            if rule.regex.match(name if rule.basename_only else relative):
                return True
        return False

    def __bool__(self) -> bool:
        return bool(self.rules)

    def rooted(self, path: str | os.PathLike) -> Callable[[str, bool], bool]:
        """The exclude function for the tree below the listed ``path``: its entries'
        paths (relative to ``path``) are matched as rsync saw them, below the listed
        item's own name (see the module's docstring)."""
        base = os.path.basename(os.path.normpath(path))
        if not base:  # "/": rsync's transfer root is "/" itself, its names "proc", "var/x"
            return self
        return lambda relative, is_dir: self(f"{base}/{relative}", is_dir)

    def kept_files(self, path: str | os.PathLike[str]) -> Iterator[str]:
        """The files below the listed ``path`` these patterns keep, relative to it (the
        listed file itself is ``""``), as the archive writer walks: an excluded
        directory is not entered."""
        if self.excludes_listed(path):
            return
        if not os.path.isdir(path) or os.path.islink(path):
            yield ""
            return
        excluded = self.rooted(path)
        for directory, dirs, names in walk(os.fspath(path)):
            rel = os.path.relpath(directory, path)
            rel = "" if rel == "." else rel + "/"
            dirs[:] = [d for d in dirs if not excluded(rel + d, True)]
            yield from (rel + n for n in names if not excluded(rel + n, False))

    def excludes_listed(self, path: str | os.PathLike) -> bool:
        """True when a pattern leaves out the listed ``path`` itself (rsync matched the
        item's own name: ``*.ini`` drops a listed ``/opt/app/config.ini``)."""
        base = os.path.basename(os.path.normpath(path))
        return bool(base) and self(base, os.path.isdir(path) and not os.path.islink(path))
