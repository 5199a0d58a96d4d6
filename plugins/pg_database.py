"""A database's own properties, read back from its dump onto a database of another name.

``pg_dump --create`` keeps what belongs to the database itself rather than to an object
in it: its owner, comment, connection limit, settings (``ALTER DATABASE ... SET``, also
per role), and its grants (``REVOKE CONNECT ON DATABASE ... FROM PUBLIC``). ``pg_restore``
without ``--create`` leaves all of that out, and a restore loads the dump into a new
database (``shop_restored_<stamp>``), so it would come back owned by the restoring role
and open to every role again (an outside walk saw an application's role locked out of
its own database after a ``--replace``). ``pg_restore --create --file=-`` writes these
statements for the dump's own name; :func:`renamed_properties` keeps only them, named
for the new database.
"""

from __future__ import annotations

import re

from .pg_globals import statements

KINDS = ("DATABASE", "COMMENT - DATABASE", "ACL - DATABASE", "DATABASE PROPERTIES")
"""The entries of a dump's table of contents (``pg_restore --create --list``) that hold
the database's own properties."""

MAX_STATEMENTS = 500
"""At most this many statements are read back (a database's grants and settings number
a handful; a dump cannot make a restore run thousands of commands)."""

_KEPT = re.compile(
    r"^(ALTER DATABASE |ALTER ROLE .+ IN DATABASE |COMMENT ON DATABASE |GRANT |REVOKE )",
    re.DOTALL,
)


def wanted_entries(listing: str) -> str:
    """The lines of a ``pg_restore --create --list`` output naming :data:`KINDS`: a list
    for ``pg_restore --use-list`` ("" when the dump holds none: made without
    ``--create``)."""
    kept = []
    for line in listing.splitlines():
        if line.startswith(";") or ";" not in line:
            continue
        words = line.split(";", 1)[1].split()  # ``1262 16387 DATABASE - shop owner``
        described = " ".join(words[2:])
        if any(described.startswith(f"{kind} ") for kind in KINDS):
            kept.append(line)
    return "".join(f"{line}\n" for line in kept)


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def renamed_properties(sql: str, name: str, into: str) -> list[str]:
    """The statements of ``sql`` (``pg_restore --create`` of :func:`wanted_entries`) that
    set database ``name``'s owner, comment, settings and grants, each naming ``into``
    instead; its ``CREATE DATABASE``, ``SET`` lines and psql's meta-commands
    (``\\connect``) are left out. At most :data:`MAX_STATEMENTS`."""
    plain = re.escape(name) if re.fullmatch(r"[a-z_][a-z0-9_$]*", name) else None
    forms = re.escape(_ident(name)) + (f"|{plain}" if plain else "")
    target = re.compile(rf'(?<![\w"])DATABASE (?:{forms})(?=[\s;])')
    text = "\n".join(line for line in sql.splitlines() if not line.startswith("\\"))
    found = []
    for statement in statements(text):
        lines = statement.strip().splitlines()
        while lines and (not lines[0].strip() or lines[0].startswith("--")):
            lines.pop(0)  # the comment before it; one inside a literal stays
        body = "\n".join(lines).strip()
        if _KEPT.match(body) and target.search(body):
            found.append(target.sub(f"DATABASE {_ident(into)}", body, count=1))
        if len(found) >= MAX_STATEMENTS:
            break
    return found
