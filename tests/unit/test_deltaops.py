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
    apply,
    encode,
)

Q = struct.Struct(">Q")


def made(ops, base: bytes) -> bytes:
    """What ``ops`` should make of ``base``."""
    return b"".join(
        base[op.offset : op.offset + op.length] if isinstance(op, Copy) else op.payload
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
        else:
            ops.append(Data(draw(st.binary(min_size=1, max_size=300))))
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
    for op in (Copy(0, 0), Data(b""), Copy(-1, 3)):
        with pytest.raises(ValueError):
            encode([op], io.BytesIO())


def test_in_place_only_when_every_copy_keeps_its_offset():
    from pullback.common.archive.deltaops import apply_in_place, in_place

    def stream(ops):
        out = io.BytesIO()
        encode(ops, out)
        out.seek(0)
        return out

    base = bytearray(b"0123456789")
    appended = stream([Copy(0, 10), Data(b"ab")])
    assert in_place(appended, 10, 12) and appended.tell() == 0
    apply_in_place(
        appended, lambda data, at: base.__setitem__(slice(at, at + len(data)), data), 10, 12
    )
    assert bytes(base) == b"0123456789ab"
    assert not in_place(stream([Copy(1, 9), Data(b"x")]), 10, 10)  # a move
    assert in_place(stream([Data(b"x"), Copy(1, 9)]), 10, 10)  # a byte rewritten in place
    with pytest.raises(DeltaError, match="past the base"):
        in_place(stream([Copy(0, 11)]), 10, 11)
    with pytest.raises(DeltaError, match="more than the"):
        in_place(stream([Copy(0, 10), Data(b"ab")]), 10, 11)
    short = io.BytesIO(b"PBD1D" + Q.pack(5) + b"ab")
    with pytest.raises(DeltaError, match="cut short"):
        in_place(short, 10, 5)
    with pytest.raises(DeltaError, match="ended 3 bytes early"):
        apply_in_place(short, lambda data, at: None, 10, 5)
    with pytest.raises(DeltaError, match="past the base"):  # checked again as applied
        apply_in_place(stream([Copy(0, 11)]), lambda data, at: None, 10, 11)
