"""A record of documents already found valid, so a command whose configuration and
sidecars have not changed does not load a JSON Schema validator to check them again.

``jsonschema``'s import costs about 0.1 s of CPU, in every command: the client's run, the
serve endpoint's process (one per pull) and the server's pull among them, and most days
every document they validate is one they validated the day before. The record is a
directory of empty files, each named by the SHA-256 of what was validated: pullback's
version, the source of the modules whose code decides validity (schema.py, units.py,
sidecar.py) and where jsonschema is installed, the schema and the document's data,
serialised with its types (``{1: x}`` and ``{"1": x}`` differ; data holding anything
but JSON's types is not recorded). A hit stands for "exactly this data passed exactly
this schema under exactly this code".

What is recorded: configuration and service files that passed, and the sidecars of the
client's own archive directory (validated when the run publishes one, or when a command
lists one). A server never records what a client sends it: a client could otherwise make
it hash megabytes of junk and evict its records; it validates those as before.

The directory is ``/var/lib/pullback/validated``, made by pullback-common's postinst
(root:pullback, 0750: every unit may write below /var/lib/pullback; /var/cache/pullback
is the client's file cache, root's alone). It is used only when it is a directory owned
by root that nobody else may write to, and only a process running as root adds to it;
the serve endpoint (the ``pullback`` user) reads it. Without it every document is
validated, as before. It holds at most :data:`MAX_ENTRIES` names (when more, the least
recently used go, down to three quarters; a time ahead of the clock counts as oldest);
removing it, or any name in it, is always safe. The pullback group may list the names:
a document only root may read (a service file holding a password) is named by an HMAC
keyed with a secret only root reads (:data:`KEY_NAME`), so its name tells nothing.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import hmac
import importlib.util
import json
import os
import stat
import time
from pathlib import Path
from typing import Any

from . import __version__

MEMO_DIR = Path("/var/lib/pullback/validated")
"""Where the record lives (pullback-common's postinst makes it)."""
KEY_NAME = ".key"
"""The record's secret (32 random bytes, root's alone, 0600), made by the first root
process that records a private document."""
MAX_ENTRIES = 512
"""Names kept: a client's configuration and service files, its archives' sidecars."""
_RULES = (
    Path(__file__).with_name("schema.py"),
    Path(__file__).with_name("units.py"),
    Path(__file__).parent / "archive" / "sidecar.py",
    Path(__file__).parent.parent / "plugins" / "manager.py",  # a plugin's task schema
)
"""The modules whose code decides what is valid: a change to any is a new record."""


def fingerprint(kind: str, schema: Any, data: Any, *, private: bool = False) -> str:
    """The name under which ``data`` validated against ``schema`` is recorded: a SHA-256
    over ``kind``, pullback's version, the validating code, the schema and the data.

    ``private``: the document is one only root may read (a service file, 0600): its
    name is keyed with a random secret only root can read (:data:`KEY_NAME`), so that
    the names, which the pullback group may list, cannot be used to guess a password in
    it offline; a process that cannot read the key gets the empty string.

    The empty string (never recorded, so the document is validated) also when there is
    no trusted record directory, for data nested too deep to serialise, and for data
    holding anything but JSON's types (a tuple from ``!!pairs``, a date, bytes: the
    validator may see them otherwise than their serialisation suggests)."""
    directory = _trusted()
    if directory is None:
        return ""
    key = b""
    if private:
        key = _key(directory)
        if not key:
            return ""
    try:
        parts = (kind, __version__, _rules(), _schema_text(schema), _canonical(data))
    except (RecursionError, _NotJson):
        return ""
    digest = hmac.new(key, digestmod=hashlib.sha256) if key else hashlib.sha256()
    for part in parts:
        digest.update(part.encode("utf-8", "surrogatepass"))
        digest.update(b"\0")
    return digest.hexdigest()


def known(name: str) -> bool:
    """True when ``name`` (a :func:`fingerprint`) is recorded in a trusted directory."""
    directory = _trusted()
    if directory is None or not name:
        return False
    try:
        entry = os.lstat(directory / name)
    except OSError:
        return False
    if not stat.S_ISREG(entry.st_mode) or entry.st_uid != 0 or name.startswith("."):
        return False
    if os.geteuid() == 0:  # recently used: kept when the oldest go
        with contextlib.suppress(OSError):
            os.utime(directory / name, follow_symlinks=False)
    return True


def remember(name: str) -> None:
    """Record ``name`` as valid (as root only; nothing happens otherwise or without the
    directory). Never raises: a record that cannot be written costs a validation later."""
    directory = _trusted()
    if directory is None or not name or os.geteuid() != 0:
        return
    try:
        fd = os.open(directory / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
        os.close(fd)
        _prune(directory)
    except OSError:
        pass


def _trusted() -> Path | None:
    try:
        info = os.lstat(MEMO_DIR)
    except OSError:
        return None
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != 0 or info.st_mode & 0o022:
        return None
    return MEMO_DIR


def _prune(directory: Path) -> None:
    now = time.time_ns()
    with os.scandir(directory) as entries:
        names = [
            (e.stat(follow_symlinks=False).st_mtime_ns, e.name)
            for e in entries
            if not e.name.startswith(".")
        ]
    if len(names) <= MAX_ENTRIES:
        return
    # a time ahead of the clock (a clock set back) counts as the oldest
    names = [(0 if when > now else when, name) for when, name in names]
    names.sort()
    for _, name in names[: len(names) - MAX_ENTRIES * 3 // 4]:  # room for a while
        with contextlib.suppress(OSError):
            os.unlink(directory / name)


def _key(directory: Path) -> bytes:
    """The record's secret; made by root when missing; b"" for anyone else."""
    path = directory / KEY_NAME
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        if os.geteuid() != 0:
            return b""
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
            os.write(fd, os.urandom(32))
            os.close(fd)
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        except OSError:
            return b""
    except OSError:
        return b""
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_uid != 0 or info.st_mode & 0o077:
            return b""
        return os.read(fd, 64)
    finally:
        os.close(fd)


@functools.cache
def _rules() -> str:
    """A digest of the code that decides validity (read once a process)."""
    digest = hashlib.sha256()
    for module in _RULES:
        with contextlib.suppress(OSError):  # not installed as files: the version alone
            digest.update(module.read_bytes())
    spec = importlib.util.find_spec("jsonschema")  # its version, without importing it
    if spec is not None and spec.origin:
        with contextlib.suppress(OSError):
            info = os.stat(Path(spec.origin).parent)
            digest.update(f"{spec.origin}:{info.st_mtime_ns}:{info.st_ino}".encode())
    return digest.hexdigest()


class _NotJson(Exception):
    """Data holding a value of none of JSON's types."""


_schemas: dict[int, tuple[Any, str]] = {}
"""Each schema object's serialisation (the object kept alive, so its id is not reused)."""


def _schema_text(schema: Any) -> str:
    known = _schemas.get(id(schema))
    if known is None or known[0] is not schema:
        known = _schemas[id(schema)] = (schema, json.dumps(schema, sort_keys=True, default=repr))
    return known[1]


def _canonical(value: Any) -> str:
    return json.dumps(_tagged(value), separators=(",", ":"))


def _tagged(value: Any) -> Any:
    """``value`` as JSON in which every scalar carries its type and every mapping is a
    sorted list of pairs (keys of any type). Raises _NotJson for any other type."""
    if value is None:
        return None
    kind = type(value)
    if kind is bool:
        return ["b", value]
    if kind is int:
        return ["i", str(value)]
    if kind is float:
        return ["f", repr(value)]
    if kind is str:
        return ["s", value]
    if kind is dict:
        pairs = sorted(([_tagged(k), _tagged(v)] for k, v in value.items()), key=_pair_key)
        return ["d", pairs]
    if kind is list:
        return ["l", [_tagged(v) for v in value]]
    raise _NotJson(kind.__qualname__)


def _pair_key(pair: list) -> str:
    return json.dumps(pair[0])
