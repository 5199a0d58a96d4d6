"""Reading ``pg_dumpall --globals-only`` back without touching the roles a server has.

A globals dump creates every role and then sets its attributes and password (``CREATE
ROLE app; ALTER ROLE app WITH ... PASSWORD '...';``), its settings and memberships. Fed to
``psql`` as it is, the ``CREATE`` of a role that exists fails, but its ``ALTER ROLE`` runs:
it would put back yesterday's password of every role, the restoring one included. A
restore must only add what is missing, so the statements about an existing role are left
out, and the administrator is told which roles were left as they are.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

_IDENT = r'"(?:[^"]|"")+"|[^\s,;"]+'
_SUBJECTS = (
    re.compile(rf"^(?:CREATE|ALTER|DROP) ROLE (?:IF EXISTS )?({_IDENT})"),
    re.compile(rf"^COMMENT ON ROLE ({_IDENT})"),
    re.compile(rf"^SECURITY LABEL FOR \S+ ON ROLE ({_IDENT})"),
    re.compile(rf"^GRANT (?:{_IDENT})(?:\s*,\s*(?:{_IDENT}))* TO ({_IDENT})"),
)
"""The statements about one role (for a membership: the member), as pg_dumpall writes
them; the group is the role's name."""


def _name(ident: str) -> str:
    """A role name as PostgreSQL stores it (quotes taken off; bare names are as written:
    pg_dumpall quotes every name that is not already lower case)."""
    if ident.startswith('"'):
        return ident[1:-1].replace('""', '"')
    return ident


def statements(lines: Iterable[str]) -> Iterable[str]:
    """The dump's statements, each whole (a quoted value may span lines), and its comment
    and blank lines as they are."""
    pending: list[str] = []
    for line in lines:
        if not pending and (not line.strip() or line.startswith("--")):
            yield line
            continue
        pending.append(line)
        text = "".join(pending)
        if text.rstrip().endswith(";") and text.count("'") % 2 == 0:
            yield text
            pending = []
    if pending:
        yield "".join(pending)


def role_of(statement: str) -> str | None:
    """The role a statement creates, changes or adds to a group; None for any other."""
    for pattern in _SUBJECTS:
        match = pattern.match(statement)
        if match:
            return _name(match.group(1))
    return None


def only_new_roles(text: str, existing: set[str]) -> tuple[str, list[str]]:
    """``text`` (a globals dump) without the statements about roles in ``existing``.

    Returns the SQL to run and the existing roles it left alone, sorted."""
    kept, left_alone = [], set()
    for statement in statements(text.splitlines(keepends=True)):
        role = role_of(statement)
        if role is not None and role in existing:
            left_alone.add(role)
            continue
        kept.append(statement)
    return "".join(kept), sorted(left_alone)
