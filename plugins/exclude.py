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
  crosses it, ``[...]`` is a class; ``dir/***`` is the directory and all below it.

An excluded directory is left out with everything below it. ``tests/integration/
test_exclude_oracle.py`` holds this to real rsync.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass


def _translate(pattern: str) -> str:
    out = []
    i = 0
    while i < len(pattern):
        c = pattern[i]
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
            continue
        if pattern.startswith("**", i):
            out.append(".*")
            i += 2
            continue
        if c == "*":
            out.append("[^/]*")
        elif c == "?":
            out.append("[^/]")
        elif c == "[":
            end = pattern.find("]", i + 2 if pattern[i + 1 : i + 2] in ("!", "^") else i + 1)
            if end == -1:
                out.append(re.escape(c))
            else:
                body = pattern[i + 1 : end]
                if body[:1] in ("!", "^"):
                    body = "^" + body[1:]
                out.append(f"[{body.replace(chr(92), chr(92) * 2)}]")
                i = end
        elif c == "\\" and i + 1 < len(pattern):
            i += 1
            out.append(re.escape(pattern[i]))
        else:
            out.append(re.escape(c))
        i += 1
    return "".join(out)


@dataclass(frozen=True)
class _Rule:
    regex: re.Pattern
    dir_only: bool
    basename_only: bool


def compile_rules(pattern: str) -> list[_Rule]:
    """The rules of one pattern (``dir/***`` is two: the directory, and all below it).
    Raises ValueError for an empty or unusable one."""
    if pattern.endswith("/***") and len(pattern) > 4:
        return [compile_rule(pattern[:-4]), compile_rule(pattern[:-4] + "/**")]
    return [compile_rule(pattern)]


def compile_rule(pattern: str) -> _Rule:
    """Compile one pattern. Raises ValueError for an empty or unusable one."""
    if not pattern or pattern in ("/", "//"):
        raise ValueError(f"empty exclude pattern {pattern!r}")
    dir_only = pattern.endswith("/")
    body = pattern.rstrip("/")
    anchored = body.startswith("/")
    body = body.lstrip("/")
    if not body:
        raise ValueError(f"unusable exclude pattern {pattern!r}")
    basename_only = not anchored and "/" not in body and "**" not in body
    regex = _translate(body)
    full = f"^{regex}$" if basename_only or anchored else f"^(?:.*/)?{regex}$"
    try:
        return _Rule(re.compile(full, re.DOTALL), dir_only, basename_only)
    except re.error as exc:
        raise ValueError(f"bad exclude pattern {pattern!r}: {exc}") from None


class ExcludeMatcher:
    """Callable ``(relative_path, is_dir) -> bool``: True when the entry is excluded."""

    def __init__(self, patterns: Iterable[str]):
        self.patterns = list(patterns)
        self.rules = [rule for p in self.patterns for rule in compile_rules(p)]

    def __call__(self, relative: str, is_dir: bool) -> bool:
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
        for directory, dirs, names in os.walk(os.fspath(path)):
            rel = os.path.relpath(directory, path)
            rel = "" if rel == "." else rel + "/"
            dirs[:] = [d for d in dirs if not excluded(rel + d, True)]
            yield from (rel + n for n in names if not excluded(rel + n, False))

    def excludes_listed(self, path: str | os.PathLike) -> bool:
        """True when a pattern leaves out the listed ``path`` itself (rsync matched the
        item's own name: ``*.ini`` drops a listed ``/opt/app/config.ini``)."""
        base = os.path.basename(os.path.normpath(path))
        return self(base, os.path.isdir(path) and not os.path.islink(path))
