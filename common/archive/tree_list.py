"""TREE.list: the entries of a stored snapshot that ``MANIFEST.sha256`` does not list.

The manifest names every regular file; a snapshot also holds directories, symbolic links
and FIFOs. The server's unpacker writes this list into staging as it sweeps the tree
(``Unpacker.finish``), so every snapshot stored since holds it beside the manifest and the
sidecar. ``pullback-client restore --from DIR`` checks a fetched directory against both:
an entry neither lists was left there by another snapshot (a fetch into a directory
that was not empty) and is refused, not restored.

One line per entry, its kind as ``find -printf %y`` says it (``d``, ``l``, ``p``), two
spaces and its name below the snapshot's root, escaped as the manifest escapes names::

    d  services
    d  services/app/files/srv
    l  services/app/files/srv/current
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable

from .manifest import labelled_line, unescape

TREE_NAME = "TREE.list"

KINDS = {stat.S_IFDIR: b"d", stat.S_IFLNK: b"l", stat.S_IFIFO: b"p"}
"""The kinds listed, by the file type bits of ``st_mode``; a regular file is the
manifest's, and a device node or socket is never unpacked."""


def kind_of(mode: int) -> bytes | None:
    """The kind letter of an entry of ``st_mode`` ``mode``; None for one not listed."""
    return KINDS.get(stat.S_IFMT(mode))


def format_entry(kind: bytes, name: str) -> bytes:
    """The line of the entry ``name`` (relative to the snapshot's root) of ``kind``."""
    return labelled_line(kind, os.fsencode(name))


def read_below(lines: Iterable[bytes], prefix: str) -> dict[bytes, bytes]:
    """The entries listed below ``prefix`` (a directory's name, relative to the root) as
    ``{name's bytes: kind}``. Holds them all: about 150 bytes per directory, symbolic link
    and FIFO of that directory. Raises ValueError naming a line that does not parse."""
    start = os.fsencode(prefix.rstrip("/") + "/")
    found: dict[bytes, bytes] = {}
    for number, line in enumerate(lines, 1):
        line = line.rstrip(b"\n")
        if not line:
            continue
        escaped = line.startswith(b"\\")
        kind, sep, raw = line.removeprefix(b"\\").partition(b"  ")
        if not sep or kind not in KINDS.values():
            raise ValueError(f"{TREE_NAME} line {number} is malformed")
        name = unescape(raw) if escaped else raw
        if name.startswith(start):
            found[name] = kind
    return found
