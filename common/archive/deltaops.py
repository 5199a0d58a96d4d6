"""``PBD1``: how a changed file travels in a delta archive, as copies from the file the
server already holds (its base) and literal bytes (docs/archive-format.md, *Delta
archives*).

The stream is ``b"PBD1"``, then records, then ``b"E"``:

- ``b"C"`` ``offset`` ``length`` (two unsigned 64-bit big-endian numbers): copy
  ``length`` bytes of the base file from ``offset``;
- ``b"D"`` ``length`` ``<length bytes>``: these bytes;
- ``b"H"`` ``length``: ``length`` zero bytes left unwritten, a hole (a sparse file's).

Every length is at least 1, a copy lies inside the base, and the lengths add up to the
size the member's header announced (already counted against the server's budgets before
a byte is read). :func:`apply` checks each rule before it writes the bytes a record
makes, reads and writes in pieces of at most :data:`PIECE` bytes (memory is constant
whatever a record claims), and asks ``check`` between pieces, so a cancelled pull stops
within one piece. A stream from a hostile client can therefore cost no more time than
its own length and the announced size, no more memory than one piece, and no more disk
than the announced size.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from ..errors import ArchiveError

DATA_KEY = b"PULLBACK.data"
"""The PAX record of a regular-file member in a delta archive that says where its bytes
come from: ``full`` (the member's data, also when absent), ``base``, ``same`` (the base's
bytes and metadata: the header's are left empty) or ``delta``."""
BASE_KEY = b"PULLBACK.base"
"""The PAX record of a ``base`` or ``delta`` member whose base file has another name (the
file was renamed): that name, as a member name of the base archive."""
REALSIZE_KEY = b"PULLBACK.realsize"
"""The PAX record of a ``delta`` member: the size of the file it makes (decimal)."""
FULL, BASE, SAME, DELTA = b"full", b"base", b"same", b"delta"
MAGIC = b"PBD1"
COPY, DATA, HOLE, END = b"C", b"D", b"H", b"E"
PIECE = 1 << 20
"""Bytes read or written at once."""
CHECK_EVERY = 4096
"""Records between two looks at the deadline (each record costs about a microsecond)."""
_NUMBER = struct.Struct(">Q")


class Readable(Protocol):
    def read(self, size: int, /) -> bytes: ...


class Writable(Protocol):
    def write(self, data: bytes, /) -> int: ...


class Seekable(Readable, Protocol):
    def seek(self, offset: int, _whence: int = 0, /) -> int: ...


class DeltaError(ArchiveError):
    """A PBD1 stream breaks a rule; nothing it made may be used."""


@dataclass(frozen=True)
class Copy:
    """``length`` bytes of the base file from ``offset``."""

    offset: int
    length: int


@dataclass(frozen=True)
class Data:
    """Literal bytes."""

    payload: bytes


@dataclass(frozen=True)
class Hole:
    """``length`` zero bytes that stay a hole in the file made."""

    length: int


Op = Copy | Data | Hole


@runtime_checkable
class HoleWritable(Writable, Protocol):
    """A writer that can leave ``length`` bytes unwritten: it moves on without writing
    (its caller sets the file's size at the end, for a trailing hole)."""

    def hole(self, length: int, /) -> None: ...


def encode(ops: Iterable[Op], out: Writable) -> int:
    """Write ``ops`` as a PBD1 stream (adjacent copies merged); return the bytes written.

    Raises ValueError for an empty op (a zero length or no bytes)."""
    written = out.write(MAGIC)
    pending: Copy | None = None
    for op in ops:
        if isinstance(op, Copy):
            if op.length < 1 or op.offset < 0:
                raise ValueError(f"a copy of {op.length} bytes at {op.offset}")
            if pending and pending.offset + pending.length == op.offset:
                pending = Copy(pending.offset, pending.length + op.length)
                continue
            written += _flush(pending, out)
            pending = op
            continue
        if isinstance(op, Hole):
            if op.length < 1:
                raise ValueError(f"a hole of {op.length} bytes")
            written += _flush(pending, out)
            pending = None
            written += out.write(HOLE + _NUMBER.pack(op.length))
            continue
        if not op.payload:
            raise ValueError("an empty data record")
        written += _flush(pending, out)
        pending = None
        written += out.write(DATA + _NUMBER.pack(len(op.payload)))
        written += out.write(op.payload)
    written += _flush(pending, out)
    return written + out.write(END)


def _flush(copy: Copy | None, out: Writable) -> int:
    if copy is None:
        return 0
    return out.write(COPY + _NUMBER.pack(copy.offset) + _NUMBER.pack(copy.length))


@dataclass(frozen=True)
class _Literal:
    """``length`` literal bytes follow the record in the stream; whoever takes the
    record reads or skips them before asking for the next."""

    length: int


def _records(
    stream: Readable, base_size: int, realsize: int, check: Callable[[], None]
) -> Iterator[tuple[int, Copy | _Literal | Hole]]:
    """Each record of a PBD1 ``stream`` with the offset it writes at, every rule checked
    on the way (the magic, known records, no zero length, a copy inside the base, no
    more than ``realsize`` bytes, and exactly ``realsize`` at the end); ``check`` asked
    every CHECK_EVERY records. Raises DeltaError."""
    if _exactly(stream, len(MAGIC)) != MAGIC:
        raise DeltaError("not a PBD1 delta (no magic)")
    made, records = 0, 0
    while (kind := _exactly(stream, 1)) != END:
        records += 1
        if records % CHECK_EVERY == 0:
            check()
        record: Copy | _Literal | Hole
        if kind == COPY:
            offset, length = _number(stream), _number(stream)
            _count(made, length, realsize)
            if offset > base_size or length > base_size - offset:
                raise DeltaError(
                    f"a copy of {length} bytes at {offset} reaches past the base "
                    f"({base_size} bytes)"
                )
            record = Copy(offset, length)
        elif kind == DATA:
            length = _number(stream)
            _count(made, length, realsize)
            record = _Literal(length)
        elif kind == HOLE:
            length = _number(stream)
            _count(made, length, realsize)
            record = Hole(length)
        else:
            raise DeltaError(f"an unknown record {kind!r}")
        yield made, record
        made += length
    if made != realsize:
        raise DeltaError(f"the delta makes {made} bytes where {realsize} were announced")


def _ended(stream: Readable) -> None:
    """Raises DeltaError when bytes follow the end record."""
    if stream.read(1):
        raise DeltaError("bytes after the end of the delta")


def apply(
    stream: Readable,
    base: Seekable,
    base_size: int,
    out: Writable,
    realsize: int,
    check: Callable[[], None] = lambda: None,
) -> int:
    """Write the file a PBD1 ``stream`` describes to ``out``, copying from ``base`` (of
    ``base_size`` bytes); return the bytes made, which equal ``realsize``. A hole is left
    unwritten when ``out`` is a :class:`HoleWritable` (the caller then sets the file's
    size to ``realsize``), else written as zeros.

    Raises DeltaError for any broken rule (no magic, an unknown record, a zero length,
    a copy outside the base, more or fewer bytes than ``realsize``, a stream cut short or
    with bytes after its end); whatever ``check`` raises (the pull's cancel)."""
    for _, record in _records(stream, base_size, realsize, check):
        if isinstance(record, Copy):
            base.seek(record.offset)
            _pipe(base, out, record.length, check, "the base file")
        elif isinstance(record, Hole):
            _hole(out, record.length, check)
        else:
            _pipe(stream, out, record.length, check, "the delta")
    _ended(stream)
    return realsize


def _hole(out: Writable, length: int, check: Callable[[], None]) -> None:
    """Leave ``length`` bytes of ``out`` a hole, or write them as zeros."""
    if isinstance(out, HoleWritable):
        check()
        out.hole(length)
        return
    zeros = bytes(min(PIECE, length))
    while length:
        check()
        length -= out.write(zeros[: min(PIECE, length)])


BLOCK = 4096
"""The file system block a survey counts allocation in (ext4's and xfs's)."""


@dataclass(frozen=True)
class Survey:
    """What a PBD1 stream will do, read from its record headers alone."""

    in_place: bool
    """Every copy keeps its offset (appends, blocks rewritten in place), so the stream
    can be applied to its base file in place: no copy reads bytes an earlier record
    wrote (a hole reads nothing)."""
    in_place_bytes: int
    """The most that applying it in place allocates: every block its data records touch
    (a hole punched, or zeros written over data, frees or keeps)."""
    new_bytes: int
    """The most a new file made of it allocates: every block its data and copy records
    touch (its holes allocate nothing)."""


class _Blocks:
    """Counts the blocks that records write, a block two records share once."""

    def __init__(self) -> None:
        self.count = 0
        self._last = -1

    def add(self, start: int, length: int) -> None:
        first, last = start // BLOCK, (start + length - 1) // BLOCK
        self.count += last - first + (first != self._last)
        self._last = last


def survey(
    stream: Seekable,
    base_size: int,
    realsize: int,
    check: Callable[[], None] = lambda: None,
) -> Survey:
    """Read the record headers of the PBD1 ``stream`` (data is skipped) and say what it
    will do, counting what it allocates by whole blocks: a byte of data every 4 KiB
    allocates 4 KiB. Leaves the stream where it was. Raises DeltaError for any rule
    :func:`apply` checks but a stream cut short in its literal bytes (refused when
    applied)."""
    start = stream.seek(0, 1)
    try:
        identity = True
        literal, written = _Blocks(), _Blocks()
        for made, record in _records(stream, base_size, realsize, check):
            if isinstance(record, Copy):
                identity = identity and record.offset == made
                written.add(made, record.length)
            elif isinstance(record, _Literal):
                stream.seek(record.length, 1)
                literal.add(made, record.length)
                written.add(made, record.length)
        most = -(-realsize // BLOCK) * BLOCK
        return Survey(identity, min(literal.count * BLOCK, most), min(written.count * BLOCK, most))
    finally:
        stream.seek(start)


def apply_in_place(
    stream: Readable,
    write_at: Callable[[bytes, int], None],
    base_size: int,
    realsize: int,
    check: Callable[[], None] = lambda: None,
    *,
    hole_at: Callable[[int, int], object] | None = None,
) -> None:
    """Apply a PBD1 stream that :func:`survey` found in place: only its literal bytes are
    written (``write_at(data, offset)``) and its holes made (``hole_at(offset,
    length)``, else zeros written); the caller truncates to ``realsize``.
    Raises DeltaError for a stream that breaks a rule."""
    for made, record in _records(stream, base_size, realsize, check):
        if isinstance(record, _Literal):
            _pipe(stream, _At(write_at, made), record.length, check, "the delta")
        elif isinstance(record, Hole):
            if hole_at is None:
                _hole(_At(write_at, made), record.length, check)
            else:
                check()
                hole_at(made, record.length)
    _ended(stream)


class _At:
    """A writer that writes at successive offsets from ``start`` through ``write_at``."""

    def __init__(self, write_at: Callable[[bytes, int], None], start: int):
        self._write_at, self._position = write_at, start

    def write(self, data: bytes) -> int:
        self._write_at(data, self._position)
        self._position += len(data)
        return len(data)


def _count(made: int, length: int, realsize: int) -> None:
    if length < 1:
        raise DeltaError("a record of 0 bytes")
    if length > realsize - made:
        raise DeltaError(f"the delta makes more than the {realsize} bytes announced")


def _number(stream: Readable) -> int:
    return int(_NUMBER.unpack(_exactly(stream, _NUMBER.size))[0])


def _exactly(stream: Readable, size: int) -> bytes:
    data = stream.read(size)
    if len(data) != size:
        raise DeltaError("the delta is cut short")
    return data


def _pipe(
    source: Readable, out: Writable, length: int, check: Callable[[], None], what: str
) -> None:
    """Copy ``length`` bytes in pieces. Raises DeltaError when ``source`` ends first."""
    left = length
    while left:
        check()
        piece = source.read(min(PIECE, left))
        if not piece:
            raise DeltaError(f"{what} ended {left} bytes early")
        out.write(piece)
        left -= len(piece)
