"""A database's own properties, read back from its dump onto a database of another name.

A dump in pg_dump's custom format (``-Fc``, with or without ``--create``, which pg_dump
ignores for its archives) keeps what belongs to the database itself rather than to an
object in it: its owner, comment, connection limit, settings (``ALTER DATABASE ... SET``, also
per role), and its grants (``REVOKE CONNECT ON DATABASE ... FROM PUBLIC``). ``pg_restore``
without ``--create`` leaves all of that out, and a restore loads the dump into a new
database (``shop_restored_<stamp>``), so it would come back owned by the restoring role
and open to every role again (an outside walk saw an application's role locked out of
its own database after a ``--replace``). ``pg_restore --create --file=-`` writes these
statements for the dump's own name; :func:`renamed_properties` keeps those of them that
have exactly one of the shapes in :data:`SHAPES`, named for the new database.

The statements run as the restoring role, often a superuser, and their words come from
the dump: the database's owner chose its comment and settings. So the text is split the
way PostgreSQL's lexer does (:func:`.pg_globals.statements`), nothing is removed from it
before (an outside attack ended a comment early by cutting a line and ran its own
``GRANT``), and a statement runs only when the whole of it has one of the shapes below,
every name and value in it a quoted identifier or literal. The template flag and
``ALLOW_CONNECTIONS`` are not carried (a restored copy is neither). The encoding and
locales of its ``CREATE DATABASE`` are (:func:`create_options`): the copy is made with
them.
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

_IDENT = r'(?:"(?:[^"]|"")+"|[a-z_][a-z0-9_$]*)'
_LITERAL = r"'(?:[^']|'')*'"
_VALUE = rf"(?:{_LITERAL}|{_IDENT}|-?[0-9][0-9.]*[a-zA-Z]*)"
_SETTING = rf"{_IDENT}(?:\.{_IDENT})? TO {_VALUE}(?:, {_VALUE})*"
_PRIVILEGES = r"(?:ALL|CONNECT|CREATE|TEMPORARY)(?:,(?:CONNECT|CREATE|TEMPORARY))*"
_DB = rf"(?P<db>{_IDENT})"
SHAPES = tuple(
    re.compile(shape, re.DOTALL)
    for shape in (
        rf"ALTER DATABASE {_DB} OWNER TO {_IDENT};",
        rf"ALTER DATABASE {_DB} CONNECTION LIMIT = -?[0-9]+;",
        rf"ALTER DATABASE {_DB} SET {_SETTING};",
        rf"ALTER ROLE {_IDENT} IN DATABASE {_DB} SET {_SETTING};",
        rf"COMMENT ON DATABASE {_DB} IS {_LITERAL};",
        rf"GRANT {_PRIVILEGES} ON DATABASE {_DB} TO (?:PUBLIC|{_IDENT})(?: WITH GRANT OPTION)?;",
        rf"REVOKE {_PRIVILEGES} ON DATABASE {_DB} FROM (?:PUBLIC|{_IDENT});",
    )
)
"""The whole statements carried, each naming the database once (``db``)."""

_CARRIED = re.compile(r"^(ALTER DATABASE |ALTER ROLE |COMMENT ON DATABASE |GRANT |REVOKE )")


CREATE_KEYS = (
    "ENCODING",
    "LOCALE_PROVIDER",
    "LOCALE",
    "LC_COLLATE",
    "LC_CTYPE",
    "ICU_LOCALE",
    "ICU_RULES",
    "BUILTIN_LOCALE",
)
"""The options of a dump's ``CREATE DATABASE`` that a restored copy is made with: its
encoding and its locales (collation and character classes), which decide how its text
sorts and compares, and so what its indexes hold."""

MAX_CREATE_OPTIONS = 1000
"""Longer options (a dump's words) are not carried."""

_OPTION = re.compile(rf"({'|'.join(CREATE_KEYS)}) = ('(?:[^']|'')*'|[a-z]+)")
_CREATE = re.compile(
    rf"CREATE DATABASE {_DB} WITH TEMPLATE = template0"
    rf"(?P<options>(?: (?:{'|'.join(CREATE_KEYS)}) = (?:'(?:[^'\x00-\x1f\x7f]|'')*'|[a-z]+))*);",
    re.DOTALL,
)


def create_options(sql: str, name: str) -> str:
    """The encoding and locale options of the ``CREATE DATABASE`` of ``name`` in ``sql``
    (``pg_restore --create`` of :func:`wanted_entries`), as ``" ENCODING = 'LATIN1'
    LOCALE = 'C'"``: "" when it has none, or another shape (only :data:`CREATE_KEYS`,
    each a quoted literal without control characters or a lowercase word, up to
    :data:`MAX_CREATE_OPTIONS` characters)."""
    for statement in statements(sql):
        body = "\n".join(
            line for line in statement.split("\n") if line.strip() and not line.startswith("--")
        ).strip()
        match = _CREATE.fullmatch(body)
        if match and _unquoted(match["db"]) == name:
            options = match["options"]
            if len(options) > MAX_CREATE_OPTIONS:
                return ""
            return "".join(f" {key} = {_plain(value)}" for key, value in _OPTION.findall(options))
    return ""


def _plain(value: str) -> str:
    """``value`` (a lowercase word, or a literal as pg_dump writes it, for
    ``standard_conforming_strings`` on) written so that any server reads it the same: a
    literal holding a backslash as ``E'...'`` (an outside attack: a server set off read
    the database owner's ``\\'`` as the literal's end, and the rest as more options)."""
    if not value.startswith("'") or "\\" not in value:
        return value
    text = value[1:-1].replace("''", "'")
    return "E'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def wanted_entries(listing: str) -> str:
    """The lines of a ``pg_restore --create --list`` output naming :data:`KINDS`: a list
    for ``pg_restore --use-list`` ("" when the dump holds none)."""
    kept = []
    for line in listing.splitlines():
        if line.startswith(";") or ";" not in line:
            continue
        words = line.split(";", 1)[1].split()  # ``1262 16387 DATABASE - shop owner``
        described = " ".join(words[2:])
        if any(described.startswith(f"{kind} ") for kind in KINDS):
            kept.append(line)
    return "".join(f"{line}\n" for line in kept)


def quoted(name: str) -> str:
    """``name`` as a quoted identifier."""
    return '"' + name.replace('"', '""') + '"'


def _unquoted(ident: str) -> str:
    return ident[1:-1].replace('""', '"') if ident.startswith('"') else ident


def renamed_properties(sql: str, name: str, into: str) -> tuple[list[str], int]:
    """The statements of ``sql`` (``pg_restore --create`` of :func:`wanted_entries`) that
    set database ``name``'s owner, comment, settings and grants, each naming ``into``
    instead, at most :data:`MAX_STATEMENTS`; and how many statements of the kinds carried
    had another shape and are left out."""
    found: list[str] = []
    odd = 0
    for statement in statements(sql):
        lines = statement.split("\n")
        while lines and (not lines[0].strip() or lines[0].startswith(("--", "\\"))):
            lines.pop(0)  # the comment before it, psql's \connect; one inside a literal stays
        body = "\n".join(lines).strip()
        if not _CARRIED.match(body):
            continue  # CREATE DATABASE, SET, SELECT set_config: not carried
        match = next((m for shape in SHAPES if (m := shape.fullmatch(body))), None)
        if match is None or _unquoted(match["db"]) != name:
            odd += 1
            continue
        found.append(body[: match.start("db")] + quoted(into) + body[match.end("db") :])
        if len(found) >= MAX_STATEMENTS:
            break
    return found, odd
