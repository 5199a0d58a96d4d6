"""TREE.list: the entries of a stored snapshot that ``MANIFEST.sha256`` does not list.

The manifest names every regular file; a snapshot also holds directories, symbolic links
and FIFOs. The server's unpacker writes this list into staging as it sweeps the tree
(``Unpacker.finish``), so every snapshot stored since holds it beside the manifest and the
sidecar. ``pullback-client restore --from DIR`` checks a fetched directory against both:
an entry neither lists was left there by another snapshot (a fetch into a directory
that was not empty) and is refused, not restored; the drill proves the entries came back.

The first line ties the list to its snapshot: ``m``, two spaces and the sha256 of the
snapshot's ``MANIFEST.sha256`` (a list beside another snapshot's manifest is refused).
Then one line per entry, its kind as ``find -printf %y`` says it (``d``, ``l``, ``p``),
two spaces and its name below the snapshot's root, escaped as the manifest escapes
names::

    m  9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08
    d  services
    d  services/app/files/srv
    l  services/app/files/srv/current
"""

from __future__ import annotations

import hashlib
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from .manifest import MANIFEST_NAME, labelled_line, unescape

TREE_NAME = "TREE.list"

KINDS = {stat.S_IFDIR: b"d", stat.S_IFLNK: b"l", stat.S_IFIFO: b"p"}
"""The kinds listed, by the file type bits of ``st_mode``; a regular file is the
manifest's, and a device node or socket is never unpacked."""

MAX_LINE = 2 * 4096 + 8
"""The longest line a list can hold: a name of at most 4095 bytes, each escaped to at
most two, its kind, the separator and the newline. A longer one is refused, not read
whole (one line of a hand-made list must not cost gigabytes)."""

_HEADER = re.compile(rb"m  ([0-9a-f]{64})")


@dataclass(frozen=True)
class TreeList:
    """A list as read: the sha256 of the manifest it belongs to, and its entries."""

    manifest_sha256: str
    entries: dict[bytes, bytes]
    """``{name's bytes: kind}``, of the names below the prefix read."""

    def belongs_to(self, manifest: Path) -> bool:
        """Whether the manifest file at ``manifest`` is the one this list was written
        beside (its sha256, the file streamed). Raises OSError."""
        with open(manifest, "rb") as handle:
            return hashlib.file_digest(handle, "sha256").hexdigest() == self.manifest_sha256


class NotAList(ValueError):
    """The name ``TREE.list`` beside a snapshot's manifest is no regular file."""


class OtherManifests(ValueError):
    """The list was written beside another manifest than the one beside it now (two
    snapshots fetched into one directory)."""


def read_beside(root: Path, prefix: str) -> TreeList | None:
    """The list of the snapshot at ``root`` (``root/TREE.list``), with its entries below
    ``prefix``, once it is known to belong to ``root/MANIFEST.sha256``; None when there
    is none (a snapshot stored by pullback before 0.3.0). Nothing at that name is
    followed. Raises NotAList, OtherManifests, ValueError as :func:`read_below`, and
    OSError."""
    listing = root / TREE_NAME
    try:
        mode = listing.lstat().st_mode
    except FileNotFoundError:
        return None
    if not stat.S_ISREG(mode):
        raise NotAList(f"{TREE_NAME} is not a regular file")
    with open(os.open(listing, os.O_RDONLY | os.O_NOFOLLOW), "rb") as lines:
        read = read_below(lines, prefix)
    if not read.belongs_to(root / MANIFEST_NAME):
        raise OtherManifests(f"{TREE_NAME} was written beside another {MANIFEST_NAME}")
    return read


def kind_of(mode: int) -> bytes | None:
    """The kind letter of an entry of ``st_mode`` ``mode``; None for one not listed."""
    return KINDS.get(stat.S_IFMT(mode))


def format_header(manifest_sha256: str) -> bytes:
    """The first line: the list belongs to the manifest of that sha256."""
    return b"m  " + manifest_sha256.encode("ascii") + b"\n"


def format_entry(kind: bytes, name: str) -> bytes:
    """The line of the entry ``name`` (relative to the snapshot's root) of ``kind``."""
    return labelled_line(kind, os.fsencode(name))


def read_below(handle: BinaryIO, prefix: str) -> TreeList:
    """The list ``handle`` reads, with the entries below ``prefix`` (a directory's name,
    relative to the root). Holds those entries: about 150 bytes each (their number is
    bounded by the server's ``max_entries`` of the archive the list was written for).
    Raises ValueError naming a line that does not parse or is longer than
    :data:`MAX_LINE`, or a first line that is no header."""
    start = os.fsencode(prefix.rstrip("/") + "/")
    header = _line(handle, 1)
    matched = _HEADER.fullmatch(header or b"")
    if matched is None:
        raise ValueError(f"{TREE_NAME} line 1 is malformed (no m  <manifest's sha256>)")
    found: dict[bytes, bytes] = {}
    number = 1
    while (line := _line(handle, number := number + 1)) is not None:
        if not line:
            continue
        escaped = line.startswith(b"\\")
        kind, sep, raw = line.removeprefix(b"\\").partition(b"  ")
        if not sep or kind not in KINDS.values():
            raise ValueError(f"{TREE_NAME} line {number} is malformed")
        name = unescape(raw) if escaped else raw
        if name.startswith(start):
            found[name] = kind
    return TreeList(matched[1].decode("ascii"), found)


def _line(handle: BinaryIO, number: int) -> bytes | None:
    """The next line without its newline (None at the end). Raises ValueError for one
    longer than :data:`MAX_LINE`."""
    line = handle.readline(MAX_LINE + 1)
    if not line:
        return None
    if len(line) > MAX_LINE:
        raise ValueError(f"{TREE_NAME} line {number} is longer than any entry's")
    return line.rstrip(b"\n")
