"""MANIFEST.sha256: the sha256 of every regular file in an archive, in ``sha256sum`` format.

An unpacked archive can be checked with ``sha256sum -c MANIFEST.sha256``; names holding a
backslash, newline or carriage return are escaped the way coreutils does it.
"""

from __future__ import annotations

import os

MANIFEST_NAME = "MANIFEST.sha256"


def _fs_bytes(name: str) -> bytes:
    return os.fsencode(name)


def format_line(name: str, digest: str) -> bytes:
    """One manifest line for ``name`` (as stored in the archive) and its hex digest."""
    raw = _fs_bytes(name)
    if any(c in raw for c in b"\\\n\r"):
        raw = raw.replace(b"\\", b"\\\\").replace(b"\n", b"\\n").replace(b"\r", b"\\r")
        return b"\\" + digest.encode() + b"  " + raw + b"\n"
    return digest.encode() + b"  " + raw + b"\n"


def _unescape(raw: bytes) -> bytes:
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


def parse(data: bytes) -> dict[str, str]:
    """Map every name in a manifest to its hex digest. Raises ValueError on a bad line."""
    entries: dict[str, str] = {}
    for number, line in enumerate(data.split(b"\n"), 1):
        if not line:
            continue
        escaped = line.startswith(b"\\")
        if escaped:
            line = line[1:]
        digest, sep, raw = line.partition(b"  ")
        if not sep or len(digest) != 64:
            raise ValueError(f"{MANIFEST_NAME} line {number} is malformed")
        if escaped:
            raw = _unescape(raw)
        entries[os.fsdecode(raw)] = digest.decode("ascii")
    return entries
