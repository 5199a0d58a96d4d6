"""Reading ``pg_dumpall --globals-only`` back without touching what a server has.

A globals dump creates every role and then sets its attributes and password (``CREATE
ROLE app; ALTER ROLE app WITH ... PASSWORD '...';``), its settings and memberships, and
the tablespaces with their options and grants. Fed to ``psql`` as it is, the ``CREATE`` of
a role that exists fails, but its ``ALTER ROLE`` runs: it would put back yesterday's
password of every role, the restoring one included. A restore must only add what is
missing, so every statement about an existing role or tablespace (and every grant to an
existing role) is left out, and the administrator is told which roles were left alone.

Statements are split the way PostgreSQL's lexer does for this dump: a ``;`` ends one
only outside single-quoted strings, double-quoted names and ``--`` comments, so a name
like ``"o'brien"`` or a comment holding a ``;`` cannot glue statements together.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field

_TOKEN = re.compile(r'"(?:[^"]|"")*"|\'(?:[^\']|\'\')*\'|[^\s,;()"\']+|[,;()]')


def statements(text: str) -> Iterator[str]:
    """The dump's statements, each whole with the comment and blank lines before it."""
    start, i, n = 0, 0, len(text)
    while i < n:
        c = text[i]
        if c in "'\"":
            end = i + 1
            while end < n:  # a doubled quote stays inside
                if text[end] == c:
                    if end + 1 < n and text[end + 1] == c:
                        end += 2
                        continue
                    break
                end += 1
            i = end + 1
        elif text.startswith("--", i):
            newline = text.find("\n", i)
            i = n if newline < 0 else newline + 1
        elif c == ";":
            i += 1
            if i < n and text[i] == "\n":
                i += 1
            yield text[start:i]
            start = i
        else:
            i += 1
    if start < n:
        yield text[start:]


def _name(token: str) -> str:
    """An identifier as PostgreSQL stores it (pg_dumpall quotes every name that needs it)."""
    if token.startswith('"'):
        return token[1:-1].replace('""', '"')
    return token


@dataclass
class Subjects:
    """What one statement touches: roles it creates or changes, a tablespace."""

    roles: set[str] = field(default_factory=set)
    tablespace: str | None = None


def _code(statement: str) -> list[str]:
    """The statement's tokens, its comment lines left out."""
    lines = [line for line in statement.splitlines(keepends=True) if not line.startswith("--")]
    return _TOKEN.findall("".join(lines))


def subjects(statement: str) -> Subjects:
    """The roles and tablespace ``statement`` changes (the grantees of a ``GRANT``)."""
    tokens = _code(statement)
    words = [t.upper() for t in tokens]
    if not tokens:
        return Subjects()
    if words[0] in ("CREATE", "ALTER", "DROP"):
        rest = tokens[4:] if words[2:4] == ["IF", "EXISTS"] else tokens[2:]
        return _subject(words[1] if len(words) > 1 else "", rest[:1])
    if words[0] in ("COMMENT", "SECURITY"):
        for kind in ("ROLE", "TABLESPACE"):
            if kind in words[:-1]:
                return _subject(kind, tokens[words.index(kind) + 1 :][:1])
    if words[0] in ("GRANT", "REVOKE"):
        found = Subjects(_grantees(tokens, words))
        if "TABLESPACE" in words:  # GRANT ... ON TABLESPACE ts TO ...
            found.tablespace = _subject(
                "TABLESPACE", tokens[words.index("TABLESPACE") + 1 :][:1]
            ).tablespace
        return found
    return Subjects()


def _subject(kind: str, name: list[str]) -> Subjects:
    """What a statement about one ``kind`` of object named ``name`` (one token) touches."""
    if not name:
        return Subjects()
    if kind in ("ROLE", "USER", "GROUP"):
        return Subjects(roles={_name(name[0])})
    if kind == "TABLESPACE":
        return Subjects(tablespace=_name(name[0]))
    return Subjects()


def _grantees(tokens: list[str], words: list[str]) -> set[str]:
    """The roles after ``TO`` (``FROM`` for a revoke), up to ``WITH``/``GRANTED``/``;``."""
    marker = "TO" if words[0] == "GRANT" else "FROM"
    if marker not in words:
        return set()
    found = set()
    after = words.index(marker) + 1
    for item, word in zip(tokens[after:], words[after:], strict=True):
        if word in ("WITH", "GRANTED", "CASCADE", "RESTRICT", ";"):
            break
        if word not in (",", "GROUP"):
            found.add(_name(item))
    return found


def only_new(text: str, roles: set[str], tablespaces: set[str]) -> tuple[str, list[str]]:
    """``text`` (a globals dump) without the statements about the ``roles`` and
    ``tablespaces`` the server has.

    Returns the SQL to run and the existing roles it left alone, sorted."""
    kept, left_alone = [], set()
    for statement in statements(text):
        touched = subjects(statement)
        existing = touched.roles & roles
        if existing or touched.tablespace in tablespaces:
            left_alone |= existing
            continue
        kept.append(statement)
    return "".join(kept), sorted(left_alone)
