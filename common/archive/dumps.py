"""Where database dumps live in an archive, and how their files are named.

A database task of service ``S`` writes ``services/S/<engine>/<file>``: PostgreSQL
``<database>.dump`` (``pg_dump --format=custom``), MariaDB ``<database>.sql``
(``mariadb-dump --databases``), SQLite a copy under ``sqlite/``. In a database name the
characters that a file name cannot hold or that would mislead a reader are
percent-encoded (:func:`file_name`), so every name the engine allows makes one safe file
name and is read back exactly.
"""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import quote, unquote_to_bytes

_SAFE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
SUFFIXES = {"postgresql": ".dump", "mariadb": ".sql"}
"""The dump file suffix of each engine that dumps to one file per database."""


def file_name(name: str, suffix: str) -> str:
    """A file name for a database name: ``%``, ``/``, ``\\``, ASCII whitespace and control
    characters and a leading ``.`` are written as ``%XX`` escapes, every other character as
    it is (UTF-8). Every name maps to one file name and back, and the
    longest name an engine allows stays far below 255 bytes (PostgreSQL's 63 bytes make
    at most 189, MariaDB's 64 characters at most 192)."""
    if _SAFE.match(name):
        return name + suffix
    escaped = [quote(c, safe="") if _escaped(c) else c for c in name]
    if name.startswith("."):
        escaped[0] = "%2E"
    return "".join(escaped) + suffix


def _escaped(c: str) -> bool:
    """ASCII only: a character above it stays as it is (at most 3 bytes in a name)."""
    return c.isascii() and (c in "%/\\" or c.isspace() or not c.isprintable())


def database_of(file: Path, suffix: str) -> str:
    """The database name a dump file was named after (see :func:`file_name`).

    Older archives escaped a character as ``%`` and its code point in two
    or more hex digits; such a name that is not valid UTF-8 escapes is read the old way
    (for characters up to U+00FF, which is all that could be read back then)."""
    stem = file.name.removesuffix(suffix)
    try:
        return unquote_to_bytes(stem).decode("utf-8")
    except UnicodeDecodeError:
        return re.sub(r"%([0-9A-F]{2})", lambda m: chr(int(m.group(1), 16)), stem)
