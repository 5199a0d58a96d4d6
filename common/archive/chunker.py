"""Content-defined chunks of a large file, and the delta of a new version against an old one.

A client splits every large file into chunks while it reads it once and keeps the chunk
list (length and a 16-byte id per chunk, :func:`pack`). The next day it splits the new
version the same way; :func:`delta_ops` turns each chunk whose id the old list holds into
a copy of the old file and the rest into literal bytes. The cut points depend only on the
bytes, so an edit moves at most the cuts next to it: inserting or deleting a line changes
1-3 chunks, appending changes the last 1-2.

The rule: a chunk (but the last) holds at least :data:`CHUNK_MIN` bytes. From there the
first newline at absolute position ``p`` whose window (the :data:`WINDOW` bytes of the
stream ending at ``p`` inclusive, fewer only at the very start of the stream; it may reach
back into the previous chunk) has ``zlib.crc32(window) & MASK == 0`` ends the chunk, right
after ``p``. A chunk that reaches :data:`CHUNK_MAX` bytes without such a newline is cut
there (zeros, binary data without usable newlines). The chunk id is
``sha256(chunk)[:ID_SIZE]``. Newlines are found with ``bytes.find`` and windows hashed
with ``zlib.crc32``, so Python runs once per newline after ``CHUNK_MIN``, not once per
byte. :data:`PARAMS` names the rule; it is stored beside chunk lists, so a list made under
another rule is never used.

Throughput (``python -m bench.chunker --size-mib 256 --repeat 5``, best of 5, on an idle
2-core AMD EPYC with SHA-NI, Python 3.11.2, 256 MiB fed in 1 MiB ``bytes`` pieces; sha256
alone over the same pieces runs at ~1800 MB/s there):

- dump-like text (seeded SQL ``INSERT`` lines of ~100 bytes): 884 MB/s with
  ``keep_data=False``, 834 MB/s with ``keep_data=True``; average chunk 38.6 KiB;
- random binary: 976 MB/s, 930 MB/s kept; average chunk 47.9 KiB;
- zeros: 1610 MB/s, 1368 MB/s kept; every chunk CHUNK_MAX.

Single-threaded, what bounds it is, per chunk, sha256 (~21 us for 38 KiB) and the Python
step per newline looked at after ``CHUNK_MIN`` (~64 newlines per chunk, ~330 ns each for
a ``find``, a 64-byte slice and its crc32: ~21 us); the scan alone runs at ~1.8 GB/s on
text, ~2.2 GB/s on random data. The figures halve when other work shares the 2 cores.
"""

from __future__ import annotations

import hashlib
import itertools
import struct
import zlib
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Executor, Future
from dataclasses import dataclass

CHUNK_MIN = 32 << 10
"""No cut before this many bytes into a chunk."""
CHUNK_MAX = 512 << 10
"""A forced cut here (data without usable newlines: zeros, some binary)."""
WINDOW = 64
"""The bytes ending at a newline whose crc32 decides a cut."""
MASK = 63
"""Cut after a newline when ``crc32(window) & MASK == 0``: on average ~CHUNK_MIN + 64 lines."""
ID_SIZE = 16
"""The bytes of sha256 kept as a chunk's id."""
PARAMS = "nl-crc32-w64-m63-32k-512k-sha256/16"
"""Names the rule above; stored beside chunk lists so that a change invalidates them."""

HOLE_ID = bytes(ID_SIZE)
"""The id of a hole of a sparse file in a chunk list: its bytes read as zeros and are
not stored (no chunk's sha256 starts with 16 zero bytes). A hole is never copied from,
and the new file's holes travel as :class:`Hole`."""
MAX_LENGTH = (1 << 32) - 1
"""The longest entry a chunk list holds (a longer hole takes several)."""

LITERAL_MAX = 1 << 20
"""Adjacent literal chunks are merged into one :class:`Literal` up to this many bytes."""

_ENTRY = struct.Struct(">I16s")
_NL = b"\n"


@dataclass(frozen=True, slots=True)
class Chunk:
    """One chunk of a file: its length and id (``sha256(chunk bytes)[:ID_SIZE]``)."""

    length: int
    digest: bytes


_Piece = tuple[Chunk, bytes | None]
"""A chunk, with its bytes when the chunker keeps them, else None."""


class Chunker:
    """Splits a byte stream into content-defined chunks. The cut points depend only on the
    bytes (never on how the stream is split into :meth:`feed` calls).

    It holds at most the current, unfinished chunk (and only its running sha256 when the
    bytes are not kept) plus the last ``WINDOW - 1`` bytes of the stream. After
    :meth:`finish` it is ready for a new stream.
    """

    def __init__(self, keep_data: bool = False) -> None:
        self._keep = keep_data
        self._reset()

    def _reset(self) -> None:
        self._filled = 0
        """Bytes of the stream in the current, unfinished chunk."""
        self._parts: list[bytes | memoryview] = []
        """Those bytes (only when kept)."""
        self._hash = hashlib.sha256()
        """Their running sha256 (only when not kept)."""
        self._tail = b""
        """The last ``WINDOW - 1`` bytes of the stream (fewer at its start)."""

    def feed(self, data: bytes | bytearray | memoryview) -> list[_Piece]:
        """Add the next bytes of the stream.

        Returns the chunks these bytes complete, in order, each with its bytes when the
        chunker keeps them, else None. Nothing of ``data`` is referenced once this returns
        (it may be a buffer the caller reuses, but not while this runs): a ``memoryview``
        is copied to ``bytes`` first (a ``bytearray`` is read in place), and the bytes
        that start a chunk still open are copied.
        """
        if not isinstance(data, bytes | bytearray):
            data = bytes(data)
        size = len(data)
        if not size:
            return []
        view = memoryview(data)
        out: list[_Piece] = []
        start = -self._filled  # where the current chunk starts, relative to data
        while True:
            end = start + CHUNK_MAX
            cut = _find_cut(data, self._tail, max(start + CHUNK_MIN - 1, 0), min(end, size))
            if cut < 0:
                if end > size:
                    break
                cut = end
            out.append(self._close(view, max(start, 0), cut))
            start = cut
        if start < size:
            self._open(view[max(start, 0) :], size - start)
        self._tail = bytes(data[-(WINDOW - 1) :]) if size >= WINDOW - 1 else _tail(self._tail, data)
        return out

    def finish(self) -> list[_Piece]:
        """End the stream.

        Returns its last chunk (the one still open), or nothing for an empty stream or one
        that ended on a cut. The chunker then starts over for a new stream.
        """
        out = [self._close(memoryview(b""), 0, 0)] if self._filled else []
        self._reset()
        return out

    def _open(self, rest: memoryview, filled: int) -> None:
        """Keep ``rest``, the start of the chunk still open, now ``filled`` bytes long."""
        if self._keep:
            self._parts.append(bytes(rest))
        else:
            self._hash.update(rest)
        self._filled = filled

    def _close(self, view: memoryview, start: int, cut: int) -> _Piece:
        """The chunk that ends with ``view[start:cut]`` (and begins with what was kept)."""
        part = view[start:cut]
        if self._keep:
            if self._parts:
                self._parts.append(part)
                data = b"".join(self._parts)
                self._parts = []
            else:
                data = bytes(part)
            digest = hashlib.sha256(data).digest()
        else:
            data = None
            if self._filled:
                self._hash.update(part)
                digest = self._hash.digest()
                self._hash = hashlib.sha256()
            else:
                digest = hashlib.sha256(part).digest()
        length = self._filled + cut - start
        self._filled = 0
        return Chunk(length, digest[:ID_SIZE]), data


class ChunkerAside:
    """A :class:`Chunker` (bytes not kept) that cuts on a thread of ``pool`` while the
    caller goes on with the same bytes (hashing, writing them): a large file costs the
    longer of the two, not their sum, where there is a core to spare. The two overlap
    because the caller's reads, writes and hashing let go of the GIL, as the chunks'
    sha256 does (the cut search in Python and ``bytes.find`` hold it). ``pool`` must run
    one task at a time, in order (a ``ThreadPoolExecutor(1)``), for the feeds to reach
    the chunker in order.

    A buffer given to :meth:`feed` is read on that thread: the caller changes it only
    after :meth:`settle` has waited for that feed.
    """

    def __init__(self, pool: Executor) -> None:
        self._pool = pool
        self._cutter = Chunker()
        self._pending: deque[Future[None]] = deque()
        self.chunks: list[Chunk] = []
        """The chunks found so far (all of them after :meth:`finish`)."""

    def feed(self, data: bytes | bytearray) -> None:
        """Queue the next bytes of the stream (see the class for a reused buffer)."""
        self._pending.append(self._pool.submit(self._feed, data))

    def settle(self, pending: int = 0) -> None:
        """Wait until at most the newest ``pending`` feeds are still queued or running.
        Raises what a feed raised."""
        while len(self._pending) > pending:
            self._pending.popleft().result()

    def finish(self) -> list[Chunk]:
        """Wait for every feed and end the stream. Returns the file's chunks."""
        self.settle()
        self.chunks.extend(chunk for chunk, _ in self._cutter.finish())
        return self.chunks

    def _feed(self, data: bytes | bytearray) -> None:
        self.chunks.extend(chunk for chunk, _ in self._cutter.feed(data))


class SparseCutter:
    """Splits a file with holes into chunk list entries: each data region cut on its own
    (a :class:`Chunker` per region, so a region's cuts never depend on another's), every
    hole as :func:`holes` entries. The data is fed piece by piece with the offset where
    each piece lies; a piece that does not follow the one before starts a new region."""

    def __init__(self, keep_data: bool = False) -> None:
        self._cutter = Chunker(keep_data)
        self._position = 0

    def feed(self, offset: int, data: bytes) -> list[_Piece]:
        """The entries that the bytes ``data`` at ``offset`` complete (with the hole
        before them, if any). Raises ValueError for an offset before the last piece's end."""
        if offset < self._position:
            raise ValueError(f"a piece at {offset} goes back before {self._position}")
        out: list[_Piece] = []
        if offset > self._position:
            out.extend(self._cutter.finish())
            out.extend((chunk, None) for chunk in holes(offset - self._position))
        out.extend(self._cutter.feed(data))
        self._position = offset + len(data)
        return out

    def finish(self, size: int) -> list[_Piece]:
        """The last entries of a file of ``size`` bytes (a trailing hole's among them)."""
        out = self._cutter.finish()
        out.extend((chunk, None) for chunk in holes(size - self._position))
        self._position = 0
        return out


def _tail(before: bytes, data: bytes | bytearray) -> bytes:
    """The last ``WINDOW - 1`` bytes of ``before`` followed by ``data``."""
    return (before + data)[-(WINDOW - 1) :]


def _find_cut(data: bytes | bytearray, tail: bytes, low: int, high: int) -> int:
    """Where the first newline in ``data[low:high]`` whose window passes ends a chunk.

    ``tail`` is the stream just before ``data`` (the window may reach into it). Returns
    the position right after that newline, or -1 when there is none.
    """
    reach = WINDOW - 1
    find = data.find
    crc32 = zlib.crc32
    at = find(_NL, low, high)
    while at >= 0:
        if at >= reach:
            window = crc32(data[at - reach : at + 1])
        else:
            window = crc32(data[: at + 1], crc32(tail[at - reach :]))
        if not window & MASK:
            return at + 1
        at = find(_NL, at + 1, high)
    return -1


def pack(chunks: Iterable[Chunk]) -> bytes:
    """A chunk list as bytes: per chunk a 4-byte big-endian length and the 16-byte id.

    Raises ValueError for a chunk whose length does not fit (0 or 2**32 and over) or
    whose id is not ID_SIZE bytes.
    """
    entries = []
    for chunk in chunks:
        if not 0 < chunk.length < 1 << 32 or len(chunk.digest) != ID_SIZE:
            raise ValueError(f"cannot pack {chunk!r}")
        entries.append(_ENTRY.pack(chunk.length, chunk.digest))
    return b"".join(entries)


def unpack(blob: bytes) -> list[Chunk]:
    """The chunk list that :func:`pack` made ``blob`` of.

    Raises ValueError for a blob that is not a multiple of 20 bytes long or that holds a
    chunk of length 0.
    """
    if len(blob) % _ENTRY.size:
        raise ValueError(f"a chunk list of {len(blob)} bytes is not a multiple of {_ENTRY.size}")
    chunks = [Chunk(length, digest) for length, digest in _ENTRY.iter_unpack(blob)]
    if any(chunk.length == 0 for chunk in chunks):
        raise ValueError("a chunk list holds a chunk of length 0")
    return chunks


@dataclass(frozen=True, slots=True)
class Copy:
    """``length`` bytes of the old file from ``offset``."""

    offset: int
    length: int


@dataclass(frozen=True, slots=True)
class Literal:
    """Bytes the old file does not have."""

    data: bytes


@dataclass(frozen=True, slots=True)
class Hole:
    """``length`` bytes of the new file that are a hole."""

    length: int


def holes(length: int) -> list[Chunk]:
    """The chunk list entries of a hole of ``length`` bytes (none for 0)."""
    return [
        Chunk(min(MAX_LENGTH, length - start), HOLE_ID) for start in range(0, length, MAX_LENGTH)
    ]


def _offsets(old: Sequence[Chunk]) -> dict[tuple[bytes, int], int]:
    """Where in the old file each of its chunks first begins, by (id, length)."""
    where: dict[tuple[bytes, int], int] = {}
    offset = 0
    for chunk in old:
        if chunk.digest != HOLE_ID:
            where.setdefault((chunk.digest, chunk.length), offset)
        offset += chunk.length
    return where


def delta_ops(old: Sequence[Chunk], new: Iterable[_Piece]) -> Iterator[Copy | Literal | Hole]:
    """How to make the new file of the old one, chunk by chunk.

    Yields for each new chunk ``Copy(offset of the first old chunk with the same id and
    length, length)`` when the old file has it, ``Hole(length)`` for a hole (id
    :data:`HOLE_ID`), else ``Literal(its bytes)``. Adjacent
    copies that are contiguous in the old file are merged into one Copy; adjacent
    literals are merged up to :data:`LITERAL_MAX` bytes each. Raises ValueError when a
    literal is needed but the chunk's bytes are None (a chunker that did not keep them).
    """
    where = _offsets(old)
    for is_hole, pieces in itertools.groupby(new, key=lambda piece: piece[0].digest == HOLE_ID):
        if is_hole:
            yield from (Hole(chunk.length) for chunk, _ in pieces)
        else:
            yield from _data_ops(where, pieces)


def _data_ops(where: dict[tuple[bytes, int], int], new: Iterable[_Piece]):
    """:func:`delta_ops` of a run of new chunks without a hole."""
    copy: Copy | None = None
    literal: list[bytes] = []
    pending = 0
    for chunk, data in new:
        offset = where.get((chunk.digest, chunk.length))
        if offset is not None:
            if literal:
                yield Literal(b"".join(literal))
                literal, pending = [], 0
            if copy is not None and copy.offset + copy.length == offset:
                copy = Copy(copy.offset, copy.length + chunk.length)
                continue
            if copy is not None:
                yield copy
            copy = Copy(offset, chunk.length)
            continue
        if data is None:
            raise ValueError(f"a new chunk of {chunk.length} bytes needs its bytes")
        if copy is not None:
            yield copy
            copy = None
        if literal and pending + len(data) > LITERAL_MAX:
            yield Literal(b"".join(literal))
            literal, pending = [], 0
        literal.append(data)
        pending += len(data)
    if copy is not None:
        yield copy
    if literal:
        yield Literal(b"".join(literal))
