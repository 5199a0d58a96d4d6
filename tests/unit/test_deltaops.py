"""PBD1 delta records: a round trip over random edits, and every rule a hostile stream
could break refused before the bytes it would make are written."""

from __future__ import annotations

import io
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pullback.common.archive.deltaops import (
    PIECE,
    Copy,
    Data,
    DeltaError,
    Hole,
    Survey,
    apply,
    apply_in_place,
    encode,
    survey,
)

Q = struct.Struct(">Q")


def made(ops, base: bytes) -> bytes:
    """What ``ops`` should make of ``base``."""
    return b"".join(
        base[op.offset : op.offset + op.length]
        if isinstance(op, Copy)
        else bytes(op.length)
        if isinstance(op, Hole)
        else op.payload
        for op in ops
    )


@st.composite
def edits(draw):
    base = draw(st.binary(min_size=1, max_size=4096))
    ops = []
    for _ in range(draw(st.integers(0, 12))):
        if draw(st.booleans()):
            offset = draw(st.integers(0, len(base) - 1))
            ops.append(Copy(offset, draw(st.integers(1, len(base) - offset))))
        elif draw(st.integers(0, 3)):
            ops.append(Data(draw(st.binary(min_size=1, max_size=300))))
        else:
            ops.append(Hole(draw(st.integers(1, 3 * PIECE))))
    return base, ops


@settings(max_examples=200, deadline=None)
@given(edits())
def test_what_is_encoded_is_what_apply_makes(case):
    base, ops = case
    stream = io.BytesIO()
    encode(ops, stream)
    expected = made(ops, base)
    out = io.BytesIO()
    stream.seek(0)
    assert apply(stream, io.BytesIO(base), len(base), out, len(expected)) == len(expected)
    assert out.getvalue() == expected


def test_adjacent_copies_travel_as_one_record():
    stream = io.BytesIO()
    encode([Copy(0, 10), Copy(10, 5), Data(b"x"), Copy(3, 2)], stream)
    assert stream.getvalue().count(b"C") == 2
    assert len(stream.getvalue()) == 4 + 17 + 10 + 17 + 1


def record(kind: bytes, *numbers: int, payload: bytes = b"") -> bytes:
    return kind + b"".join(Q.pack(n) for n in numbers) + payload


BASE = b"0123456789" * 10


@pytest.mark.parametrize(
    ("body", "realsize", "said"),
    [
        (b"XXXX" + b"E", 0, "no magic"),
        (b"PBD1" + record(b"C", 95, 10) + b"E", 10, "reaches past the base"),
        (b"PBD1" + record(b"C", 2**64 - 1, 1) + b"E", 1, "reaches past the base"),
        (b"PBD1" + record(b"C", 0, 0) + b"E", 0, "a record of 0 bytes"),
        (b"PBD1" + record(b"D", 5, payload=b"abcde") + b"E", 4, "more than the 4 bytes"),
        (b"PBD1" + record(b"D", 5, payload=b"abcde") + b"E", 6, "makes 5 bytes where 6"),
        (b"PBD1" + record(b"D", 5, payload=b"abc"), 5, "the delta ended 2 bytes early"),
        (b"PBD1" + record(b"C", 0, 5), 5, "cut short"),
        (b"PBD1" + record(b"C", 0, 5) + b"E" + b"more", 5, "bytes after the end"),
        (b"PBD1" + b"Z" + b"E", 0, "an unknown record"),
        (b"PBD1" + record(b"D", 2**40) + b"E", 2**40, "ended"),
        (b"PBD1" + record(b"H", 0) + b"E", 0, "a record of 0 bytes"),
        (b"PBD1" + record(b"H", 11) + b"E", 10, "more than the 10 bytes"),
        (b"PBD1" + record(b"H", 2**64 - 1) + b"E", 2**40, "more than the"),
        (b"PBD1" + record(b"H", 3), 3, "cut short"),
    ],
)
def test_a_broken_stream_is_refused(body, realsize, said):
    out = io.BytesIO()
    with pytest.raises(DeltaError, match=said):
        apply(io.BytesIO(body), io.BytesIO(BASE), len(BASE), out, realsize)
    # nothing past the announced size is ever written, and a claimed 1 TiB record
    # costs one piece of memory, never its claim
    assert len(out.getvalue()) <= max(realsize, 0) and len(out.getvalue()) <= PIECE


def test_a_cancelled_pull_stops_within_a_piece():
    class Cancelled(Exception):
        pass

    calls = []

    def check():
        calls.append(1)
        if len(calls) > 2:
            raise Cancelled

    payload = b"x" * (5 * PIECE)
    out = io.BytesIO()
    with pytest.raises(Cancelled):
        apply(
            io.BytesIO(b"PBD1" + record(b"D", len(payload), payload=payload) + b"E"),
            io.BytesIO(b""),
            0,
            out,
            len(payload),
            check,
        )
    assert len(out.getvalue()) == 2 * PIECE


def test_empty_ops_cannot_be_encoded():
    for op in (Copy(0, 0), Data(b""), Copy(-1, 3), Hole(0)):
        with pytest.raises(ValueError):
            encode([op], io.BytesIO())


def test_in_place_only_when_every_copy_keeps_its_offset():
    def stream(ops):
        out = io.BytesIO()
        encode(ops, out)
        out.seek(0)
        return out

    base = bytearray(b"0123456789")
    appended = stream([Copy(0, 10), Data(b"ab")])
    found = survey(appended, 10, 12)
    assert found.in_place and appended.tell() == 0
    # counted in blocks: 2 bytes in place touch one block; 12 bytes made anew one
    assert (found.in_place_bytes, found.new_bytes) == (4096, 4096)
    apply_in_place(
        appended, lambda data, at: base.__setitem__(slice(at, at + len(data)), data), 10, 12
    )
    assert bytes(base) == b"0123456789ab"
    assert not survey(stream([Copy(1, 9), Data(b"x")]), 10, 10).in_place  # a move
    assert survey(stream([Data(b"x"), Copy(1, 9)]), 10, 10).in_place  # a byte rewritten
    with pytest.raises(DeltaError, match="past the base"):
        survey(stream([Copy(0, 11)]), 10, 11)
    with pytest.raises(DeltaError, match="more than the"):
        survey(stream([Copy(0, 10), Data(b"ab")]), 10, 11)
    short = io.BytesIO(b"PBD1D" + Q.pack(5) + b"ab")
    with pytest.raises(DeltaError, match="cut short"):
        survey(short, 10, 5)
    with pytest.raises(DeltaError, match="ended 3 bytes early"):
        apply_in_place(short, lambda data, at: None, 10, 5)
    with pytest.raises(DeltaError, match="past the base"):  # checked again as applied
        apply_in_place(stream([Copy(0, 11)]), lambda data, at: None, 10, 11)


class SparseFile(io.BytesIO):
    """A file that records the holes it is asked to leave (a HoleWritable)."""

    def __init__(self):
        super().__init__()
        self.holes: list[tuple[int, int]] = []

    def hole(self, length: int) -> None:
        self.holes.append((self.tell(), length))
        self.seek(length, io.SEEK_CUR)


def test_a_hole_is_left_unwritten_by_a_writer_that_can_and_written_as_zeros_else():
    ops = [Copy(0, 4), Hole(3 * PIECE + 5), Data(b"xy"), Hole(7)]
    stream = io.BytesIO()
    encode(ops, stream)
    realsize = 4 + 3 * PIECE + 5 + 2 + 7
    sparse_out = SparseFile()
    stream.seek(0)
    assert apply(stream, io.BytesIO(BASE), len(BASE), sparse_out, realsize) == realsize
    assert sparse_out.holes == [(4, 3 * PIECE + 5), (4 + 3 * PIECE + 7, 7)]
    sparse = sparse_out.getvalue()
    assert len(sparse) == realsize - 7  # the trailing hole: the caller sets the size
    dense_out = io.BytesIO()
    stream.seek(0)
    apply(stream, io.BytesIO(BASE), len(BASE), dense_out, realsize)
    assert sparse + bytes(7) == dense_out.getvalue() == made(ops, BASE)


def test_holes_apply_in_place_through_hole_at_or_as_zeros():
    stream = io.BytesIO()
    encode([Copy(0, 3), Hole(4), Copy(7, 3), Data(b"ab"), Hole(2)], stream)
    stream.seek(0)
    # a hole reads nothing: still in place; and it allocates nothing
    assert survey(stream, 10, 14) == Survey(in_place=True, in_place_bytes=4096, new_bytes=4096)
    punched: list[tuple[int, int]] = []
    base = bytearray(BASE[:10])

    def write_at(data, at):
        base[at : at + len(data)] = data

    apply_in_place(stream, write_at, 10, 14, hole_at=lambda at, n: punched.append((at, n)))
    assert punched == [(3, 4), (12, 2)]
    assert bytes(base) == b"0123456789ab"  # the holes are the caller's to make
    stream.seek(0)
    apply_in_place(stream, write_at, 10, 14)
    assert bytes(base) == b"012" + bytes(4) + b"789ab" + bytes(2)


def test_a_survey_counts_every_block_a_record_touches():
    """A byte every 4 KiB allocates a block each: 19 bytes of stream cost 4 KiB of disk,
    and are counted so; neighbours in one block count it once; holes count nothing."""
    ops = [op for _ in range(1000) for op in (Data(b"x"), Hole(4095))]
    stream = io.BytesIO()
    encode(ops, stream)
    stream.seek(0)
    found = survey(stream, 0, 1000 * 4096)
    assert found.in_place_bytes == found.new_bytes == 1000 * 4096
    stream = io.BytesIO()
    encode([Copy(0, 3000), Data(b"y" * 2000), Hole(1 << 30), Copy(5000, 5)], stream)
    stream.seek(0)
    found = survey(stream, 8192, 5000 + (1 << 30) + 5)
    assert found == Survey(in_place=False, in_place_bytes=2 * 4096, new_bytes=3 * 4096)
