"""MANIFEST.sha256: the sha256 of every regular file in an archive, in ``sha256sum`` format.

An unpacked archive can be checked with ``sha256sum -c MANIFEST.sha256``; names holding a
backslash, newline or carriage return are escaped the way coreutils does it.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from typing import BinaryIO

MANIFEST_NAME = "MANIFEST.sha256"
MANIFEST_KEY = b"PULLBACK.manifest"
"""The PAX record of a delta's ``MANIFEST.sha256`` member when it lists only some files:
:data:`PARTIAL`. Such a member lists every file but the ``base`` and ``same`` members
(whose bytes are the base's, and so are their digests); the day's complete manifest,
the one the sidecar's ``manifest_sha256`` names, is rebuilt by whoever holds the base."""
PARTIAL = b"partial"
NOTICE_NAME = (
    "MANIFEST.sha256 of a delta archive lists only what changed: "
    "restore it with pullback-client restore --from"
)
"""The name of the first line of a partial manifest (its digest all zeros): no file of an
archive has it (every name starts with ``services/``), so ``sha256sum --check`` of a
delta extracted by hand fails on it, naming the way to restore instead of passing
while the files the base supplies came out empty."""
NOTICE_LINE = b"0" * 64 + b"  " + NOTICE_NAME.encode() + b"\n"
MAX_LINE = 32 << 10
"""Bytes a manifest line may have, its newline included: a digest and a name of at most
4,095 bytes, escaped (at most 4 bytes each), fit in 16.5 KB. Every reader of a
manifest holds to this bound, so that a line without an end costs at most this much
memory (read whole, a 45 MB line cost all of it)."""


def order(name: str) -> bytes:
    """The sort key of a manifest's lines: the name's bytes (as the server's index sorts
    its names, so that it can rebuild a complete manifest byte for byte)."""
    return os.fsencode(name)


def format_line(name: str, digest: str) -> bytes:
    """One manifest line for ``name`` (as stored in the archive) and its hex digest."""
    return labelled_line(digest.encode(), os.fsencode(name))


def labelled_line(label: bytes, raw: bytes) -> bytes:
    """``label``, two spaces and the name ``raw``, as ``sha256sum`` writes a line: a name
    holding a backslash, newline or carriage return escaped, the line then starting with
    a backslash (:func:`unescape` reverses it)."""
    if any(c in raw for c in b"\\\n\r"):
        raw = raw.replace(b"\\", b"\\\\").replace(b"\n", b"\\n").replace(b"\r", b"\\r")
        return b"\\" + label + b"  " + raw + b"\n"
    return label + b"  " + raw + b"\n"


def unescape(raw: bytes) -> bytes:
    """A name of an escaped line (:func:`labelled_line`) as its bytes."""
    out = bytearray()
    i = 0
    while i < len(raw):
        c = raw[i : i + 1]
        if c == b"\\" and i + 1 < len(raw):
            nxt = raw[i + 1 : i + 2]
            out += {b"n": b"\n", b"r": b"\r", b"\\": b"\\"}.get(nxt, b"\\" + nxt)
            i += 2
        else:
            out += c
            i += 1
    return bytes(out)


def read_lines(handle: BinaryIO) -> Iterator[bytes]:
    """The lines of the manifest file ``handle``, each read at most :data:`MAX_LINE`
    bytes at a time. Raises ValueError naming a line that is longer."""
    number = 0
    while line := handle.readline(MAX_LINE + 1):
        number += 1
        if len(line) > MAX_LINE:
            raise ValueError(f"{MANIFEST_NAME} line {number} is longer than {MAX_LINE:,} bytes")
        yield line


def parse(data: bytes) -> dict[str, str]:
    """Map every name in a manifest to its hex digest. Raises ValueError on a bad line."""
    return dict(entries(data.split(b"\n")))


def entries(lines: Iterable[bytes]) -> Iterator[tuple[str, str]]:
    """Each ``(name, hex digest)`` of a manifest's ``lines`` (with or without their
    newline), in the file's order, one line at a time: a file object can be read without
    holding it whole. Raises ValueError naming the first line that is not one."""
    for raw, digest in raw_entries(lines):
        yield os.fsdecode(raw), digest


def raw_entries(lines: Iterable[bytes]) -> Iterator[tuple[bytes, str]]:
    """As :func:`entries`, each name as its bytes (its sort key, :func:`order`)."""
    for number, line in enumerate(lines, 1):
        line = line.rstrip(b"\n")
        if not line:
            continue
        escaped = line.startswith(b"\\")
        if escaped:
            line = line[1:]
        digest, sep, raw = line.partition(b"  ")
        if not sep or len(digest) != 64:
            raise ValueError(f"{MANIFEST_NAME} line {number} is malformed")
        if escaped:
            raw = unescape(raw)
        yield raw, digest.decode("ascii")
