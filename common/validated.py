"""A record of documents already found valid, so a command whose configuration and
sidecars have not changed does not load a JSON Schema validator to check them again.

``jsonschema``'s import costs about 0.1 s of CPU, in every command: the client's run, the
serve endpoint's process (one per pull) and the server's pull among them, and most days
every document they validate is one they validated the day before. The record is a
directory of empty files, each named by the SHA-256 of what was validated: this module's
version of the rules (pullback's version and the validating module's own source), the
schema and the document's data, serialised so that two documents of different types
never meet (``{1: x}`` and ``{"1": x}`` differ). A hit stands for "exactly this data
passed exactly this schema", which a later validation could not change: nothing in a
schema's rules here depends on anything but the data.

The directory is ``/var/lib/pullback/validated``, made by pullback-common's postinst
(root:pullback, 0750: every unit may write below /var/lib/pullback; /var/cache/pullback
is the client's file cache, root's alone). It is used only when it is a directory owned
by root that nobody else may write to, and only a process running as root adds to it;
the serve endpoint (the ``pullback`` user) reads it. Without it every document is
validated, as before. It holds at most :data:`MAX_ENTRIES` names (the least recently
used go first); removing it, or any name in it, is always safe. A name is a hash of a
whole document, secrets included: only root and the pullback group may list them, and
that group reads the archives themselves.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import stat
from pathlib import Path
from typing import Any

from . import __version__

MEMO_DIR = Path("/var/lib/pullback/validated")
"""Where the record lives (pullback-common's postinst makes it)."""
MAX_ENTRIES = 512
"""Names kept: a client's configuration and service files, its archives' sidecars."""
_RULES = (Path(__file__).with_name("schema.py"), Path(__file__).parent / "archive" / "sidecar.py")
"""The modules whose code decides what is valid: a change to either is a new record."""


def fingerprint(kind: str, schema: Any, data: Any) -> str:
    """The name under which ``data`` validated against ``schema`` is recorded: a SHA-256
    over ``kind``, pullback's version, the validating code, the schema and the data; the
    empty string (never recorded) for data nested too deep to serialise (a hostile
    client's sidecar may be: it is then validated, as every document without a record)."""
    digest = hashlib.sha256()
    try:
        parts = (kind, __version__, _rules(), _canonical(schema), _canonical(data))
    except RecursionError:
        return ""
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
    if not stat.S_ISREG(entry.st_mode) or entry.st_uid != 0:
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
    with os.scandir(directory) as entries:
        names = [(e.stat(follow_symlinks=False).st_mtime_ns, e.name) for e in entries]
    if len(names) <= MAX_ENTRIES:
        return
    names.sort()
    for _, name in names[: len(names) - MAX_ENTRIES]:
        with contextlib.suppress(OSError):
            os.unlink(directory / name)


_rules_text: str | None = None


def _rules() -> str:
    global _rules_text
    if _rules_text is None:
        digest = hashlib.sha256()
        for module in _RULES:
            with contextlib.suppress(OSError):  # not installed as files: the version alone
                digest.update(module.read_bytes())
        _rules_text = digest.hexdigest()
    return _rules_text


def _canonical(value: Any) -> str:
    return json.dumps(_tagged(value), sort_keys=True, separators=(",", ":"))


def _tagged(value: Any) -> Any:
    """``value`` as JSON in which every scalar carries its type and every mapping is a
    sorted list of pairs (keys of any type)."""
    if value is None:
        return None
    if isinstance(value, bool):
        return ["b", value]
    if isinstance(value, int):
        return ["i", str(value)]
    if isinstance(value, float):
        return ["f", repr(value)]
    if isinstance(value, str):
        return ["s", value]
    if isinstance(value, dict):
        pairs = [[_tagged(k), _tagged(v)] for k, v in value.items()]
        pairs.sort(key=lambda pair: json.dumps(pair[0], sort_keys=True))
        return ["d", pairs]
    if isinstance(value, (list, tuple)):
        return ["l", [_tagged(v) for v in value]]
    return ["o", type(value).__qualname__, repr(value)]
