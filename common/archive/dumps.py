"""Where database dumps live in an archive, and how their files are named.

A database task of service ``S`` writes ``services/S/<engine>/<file>``: PostgreSQL
``<database>.dump`` (``pg_dump --format=custom``), MariaDB ``<database>.sql``
(``mariadb-dump --databases``), SQLite a copy under ``sqlite/``. In a database name every
character but ASCII letters, digits, ``.``, ``_`` and ``-`` is percent-encoded as its
UTF-8 bytes in the file name, so every name the engine allows makes one safe file name
and is read back exactly.
"""

from __future__ import annotations

import re
import string
from pathlib import Path
from urllib.parse import quote, unquote_to_bytes

_SAFE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_PLAIN = frozenset(string.ascii_letters + string.digits + "._-")
SUFFIXES = {"postgresql": ".dump", "mariadb": ".sql"}
"""The dump file suffix of each engine that dumps to one file per database."""


def file_name(name: str, suffix: str) -> str:
    """A file name for a database name: ASCII letters and digits, ``.``, ``_`` and ``-``
    stay, every other character is written as the ``%XX`` escapes of its UTF-8 bytes (as
    in a URL), so every name maps to one file name and back."""
    if _SAFE.match(name):
        return name + suffix
    return "".join(c if c in _PLAIN else quote(c, safe="") for c in name) + suffix


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
