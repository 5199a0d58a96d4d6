"""``REMOVED.list``: the base's files a lean delta's tree no longer has as files
(docs/archive-format.md, *Lean deltas*; docs/architecture.md, *Lean deltas: unchanged
files not named at all*).

A lean delta leaves its unchanged files out, so the server needs to be told which of the
base's files are gone: their member names, each followed by a NUL byte, in the order of
their bytes. The client writes it with :func:`pack`; the server reads a client's bytes
with :class:`RemovedReader`, which bounds them.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from ..errors import ArchiveError

REMOVED_NAME = "REMOVED.list"
"""The member's name, at the archive's root, just before ``MANIFEST.sha256``."""
MAX_NAME = 4096
"""Bytes a listed name may have (PATH_MAX)."""


class RemovedListError(ArchiveError):
    """``REMOVED.list`` breaks its form (the unpacker reports it as a hostile archive)."""


def pack(names: Iterable[bytes]) -> bytes:
    """The member's data for ``names`` (raw member names, in byte order, no NUL inside)."""
    return b"".join(name + b"\0" for name in names)


class RemovedReader:
    """Reads the member's data piece by piece: the names, each checked.

    ``most``: names it may hold (the base index's rows). Memory is the longest name plus
    one piece.
    """

    def __init__(self, most: int):
        self.most = most
        self.count = 0
        self._rest = b""
        self._last: bytes | None = None

    def max_size(self) -> int:
        """Bytes the member may have at most."""
        return self.most * (MAX_NAME + 1)

    def feed(self, chunks: Iterable[bytes]) -> Iterator[str]:
        """The names in ``chunks`` (the whole member), in order. Raises
        RemovedListError for a name that is empty, too long, out of order, repeated,
        past ``most``, or not ended by NUL."""
        for data in chunks:
            pieces = (self._rest + data).split(b"\0")
            self._rest = pieces.pop()
            if len(self._rest) > MAX_NAME:
                raise RemovedListError(f"{REMOVED_NAME} names a file of more than {MAX_NAME} bytes")
            for raw in pieces:
                yield self._name(raw)
        if self._rest:
            raise RemovedListError(f"{REMOVED_NAME} does not end with a NUL byte")

    def _name(self, raw: bytes) -> str:
        if not raw or len(raw) > MAX_NAME:
            raise RemovedListError(f"{REMOVED_NAME} names an empty or too long file name")
        if self._last is not None and raw <= self._last:
            raise RemovedListError(f"{REMOVED_NAME} is not in strictly increasing byte order")
        self._last = raw
        self.count += 1
        if self.count > self.most:
            raise RemovedListError(
                f"{REMOVED_NAME} names more files than the base has ({self.most:,})"
            )
        return raw.decode("utf-8", "surrogateescape")
