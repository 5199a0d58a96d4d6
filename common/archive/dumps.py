"""Where database dumps live in an archive, and how their files are named.

A database task of service ``S`` writes ``services/S/<engine>/<file>``: PostgreSQL
``<database>.dump`` (``pg_dump --format=custom``), MariaDB ``<database>.sql``
(``mariadb-dump --databases``), SQLite a copy under ``sqlite/``. A database name that is
not plain letters, digits, ``.``, ``_`` and ``-`` is percent-encoded in the file name, so
every name the engine allows makes one safe file name and can be read back from it.
"""

from __future__ import annotations

import re
from pathlib import Path

_SAFE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
SUFFIXES = {"postgresql": ".dump", "mariadb": ".sql"}
"""The dump file suffix of each engine that dumps to one file per database."""


def file_name(name: str, suffix: str) -> str:
    """A file name for a database name (odd characters percent-encoded)."""
    if _SAFE.match(name):
        return name + suffix
    return "".join(c if c.isalnum() or c in "._-" else f"%{ord(c):02X}" for c in name) + suffix


def database_of(file: Path, suffix: str) -> str:
    """The database name a dump file was named after (see :func:`file_name`)."""
    stem = file.name.removesuffix(suffix)
    return re.sub(r"%([0-9A-F]{2})", lambda m: chr(int(m.group(1), 16)), stem)
