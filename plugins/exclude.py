"""Exclude patterns with rsync's meaning, as backup-suite's ``files`` task used them.

Patterns are matched against paths relative to each listed path:

- ``*.log`` (no slash): matches the last component at any depth;
- ``cache/`` (trailing slash): matches directories only;
- ``/tmp`` (leading slash): anchored at the listed path;
- ``a/b``, ``**/x``: matched against the whole relative path (at any depth unless
  anchored); ``*`` and ``?`` stop at ``/``, ``**`` crosses it, ``[...]`` is a class.

An excluded directory is left out with everything below it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
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
        self.rules = [compile_rule(p) for p in self.patterns]

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
