"""Content-defined chunks: cut by the rule whatever the feed() pieces, resistant to shifts,
and a delta of copies and literals that rebuilds the new file exactly."""

from __future__ import annotations

import hashlib
import itertools
import random
import zlib
from concurrent.futures import ThreadPoolExecutor

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pullback.common.archive.chunker import (
    CHUNK_MAX,
    CHUNK_MIN,
    HOLE_ID,
    ID_SIZE,
    LITERAL_MAX,
    MASK,
    WINDOW,
    Chunk,
    Chunker,
    ChunkerAside,
    Copy,
    Hole,
    Literal,
    SparseCutter,
    delta_ops,
    holes,
    pack,
    unpack,
)

BIG = settings(max_examples=50, deadline=None)
STATUSES = ("new", "paid", "shipped", "delivered", "returned")


def dump_lines(rnd: random.Random, count: int, first_row: int = 1) -> list[bytes]:
    """``count`` SQL INSERT lines of ~100 bytes."""
    return [
        (
            f"INSERT INTO public.orders VALUES ({row}, 'customer_{rnd.randrange(100000)}', "
            f"{rnd.randrange(1, 50)}, {rnd.randrange(100000) / 100}, "
            f"'2026-11-{rnd.randrange(1, 29):02d} {rnd.randrange(24):02d}:"
            f"{rnd.randrange(60):02d}', '{rnd.choice(STATUSES)}');\n"
        ).encode()
        for row in range(first_row, first_row + count)
    ]


def reference_cuts(data: bytes) -> list[int]:
    """The end of every chunk of ``data``, by the rule read literally, on the whole stream."""
    cuts = []
    start = 0
    while start < len(data):
        end = min(start + CHUNK_MAX, len(data))
        cut = end
        at = data.find(b"\n", start + CHUNK_MIN - 1, end)
        while at >= 0:
            if zlib.crc32(data[max(at - WINDOW + 1, 0) : at + 1]) & MASK == 0:
                cut = at + 1
                break
            at = data.find(b"\n", at + 1, end)
        cuts.append(cut)
        start = cut
    return cuts


def chunked(pieces, keep_data: bool = False):
    """The (chunk, bytes) pairs of the stream fed as ``pieces``."""
    chunker = Chunker(keep_data=keep_data)
    out = []
    for piece in pieces:
        out.extend(chunker.feed(piece))
    return out + chunker.finish()


def chunks_of(data: bytes) -> list[Chunk]:
    return [chunk for chunk, _ in chunked([data])]


def make_stream(seed: int, segments: list[tuple[str, int]]) -> bytes:
    """Bytes mixing text lines, random binary, zeros and short lines, the same for a seed."""
    rnd = random.Random(seed)
    parts = []
    for kind, size in segments:
        if kind == "text":
            part = b"".join(dump_lines(rnd, size // 90 + 1))[:size]
        elif kind == "binary":
            part = rnd.randbytes(size)
        elif kind == "zeros":
            part = bytes(size)
        else:  # short lines: many newlines, windows spanning several of them
            part = b"".join(b"x" * rnd.randrange(8) + b"\n" for _ in range(size // 4 + 1))[:size]
        parts.append(part)
    return b"".join(parts)


KINDS = st.sampled_from(["text", "binary", "zeros", "lines"])
streams = st.builds(
    make_stream,
    st.integers(0, 2**32 - 1),
    st.lists(
        st.tuples(KINDS, st.integers(1, 2_000) | st.integers(20_000, 400_000)),
        min_size=1,
        max_size=8,
    ),
)


def split(data: bytes, rnd: random.Random) -> list[bytes]:
    """``data`` in pieces of random sizes, a third of them under a window long."""
    pieces = []
    at = 0
    while at < len(data):
        size = rnd.randrange(1, WINDOW + 8) if rnd.random() < 0.3 else rnd.randrange(1, 300_000)
        pieces.append(data[at : at + size])
        at += size
    return pieces


@BIG
@given(streams, st.integers(0, 2**32 - 1))
def test_cuts_follow_the_rule_however_the_stream_is_fed(data, seed):
    whole = chunked([data], keep_data=True)
    pieces = split(data, random.Random(seed))
    assert chunked(pieces) == [(chunk, None) for chunk, _ in whole]
    assert chunked(pieces, keep_data=True) == whole
    assert b"".join(part for _, part in whole) == data
    lengths = [chunk.length for chunk, _ in whole]
    assert sum(lengths) == len(data)
    assert all(CHUNK_MIN <= length <= CHUNK_MAX for length in lengths[:-1])
    assert 0 < lengths[-1] <= CHUNK_MAX
    ends = [sum(lengths[: i + 1]) for i in range(len(lengths))]
    assert ends == reference_cuts(data)
    for chunk, part in whole:
        assert len(chunk.digest) == ID_SIZE
        assert chunk.digest == hashlib.sha256(part).digest()[:ID_SIZE]


def test_a_window_split_across_feed_calls():
    """Every feed boundary inside the window of a cut's newline, and around the cut."""
    data = b"".join(dump_lines(random.Random(7), 1200))
    cuts = reference_cuts(data)
    expected = chunks_of(data)
    assert len(expected) >= 3
    for cut in cuts[:2]:
        for at in range(cut - WINDOW - 2, cut + 3):
            assert chunked([data[:at], data[at:]]) == [(c, None) for c in expected]


def test_tiny_pieces_and_buffers_the_caller_reuses():
    data = make_stream(3, [("lines", 40_000), ("text", 120_000), ("binary", 60_000)])
    expected = chunked([data], keep_data=True)
    rnd = random.Random(5)
    chunker = Chunker(keep_data=True)
    out = []
    buffer = bytearray(WINDOW * 2)
    at = 0
    while at < len(data):
        size = rnd.randrange(1, len(buffer) + 1)
        piece = data[at : at + size]
        buffer[: len(piece)] = piece
        out.extend(chunker.feed(memoryview(buffer)[: len(piece)]))
        buffer[:] = bytes(len(buffer))  # the caller reuses its buffer
        at += size
    out.extend(chunker.finish())
    assert out == expected
    assert chunked([data], keep_data=True) == expected  # finish() starts over


def test_cutting_aside_from_two_buffers_the_caller_reuses():
    """The writer's way (:meth:`ArchiveWriter._copy_data`): bytearrays read in turn, each
    fed whole (or a copy of a short last piece) and refilled once ``settle(1)`` returned;
    the chunks are the ones a Chunker finds in one go, and the same for a bytearray fed
    in place as for bytes."""
    data = make_stream(11, [("lines", 40_000), ("binary", 30_000), ("text", 50_000)])
    expected = [chunk for chunk, _ in chunked([data])]
    size = 50_000
    with ThreadPoolExecutor(1) as pool:
        aside = ChunkerAside(pool)
        buffers = (bytearray(size), bytearray(size))
        for turn, at in enumerate(range(0, len(data), size)):
            buffer = buffers[turn % 2]
            aside.settle(pending=1)
            piece = data[at : at + size]
            buffer[: len(piece)] = piece
            aside.feed(buffer if len(piece) == size else bytes(piece))
        assert aside.finish() == expected
        broken = ChunkerAside(pool)
        broken.feed(None)  # type: ignore[arg-type]
        with pytest.raises(TypeError):
            broken.settle()
    whole = Chunker()
    in_place = whole.feed(bytearray(data)) + whole.finish()
    assert [chunk for chunk, _ in in_place] == expected


def test_empty_stream_and_empty_feeds():
    chunker = Chunker()
    assert chunker.feed(b"") == []
    assert chunker.finish() == []
    assert chunked([b"", b"a\n", b""]) == chunked([b"a\n"])
    assert [chunk.length for chunk in chunks_of(b"a\n")] == [2]


@pytest.mark.parametrize(
    "data",
    [bytes(3 * CHUNK_MAX + 5), random.Random(1).randbytes(2 * CHUNK_MAX + 9).replace(b"\n", b"x")],
    ids=["zeros", "no newlines"],
)
def test_data_without_newlines_is_cut_at_chunk_max(data):
    lengths = [chunk.length for chunk in chunks_of(data)]
    assert lengths[:-1] == [CHUNK_MAX] * (len(data) // CHUNK_MAX)
    assert lengths[-1] == len(data) % CHUNK_MAX
    assert chunked([data[:1000], data[1000:]]) == chunked([data])


@pytest.fixture(scope="module")
def dump() -> list[bytes]:
    """An 8 MiB dump, as lines."""
    lines = dump_lines(random.Random(42), (8 << 20) // 95)
    assert sum(map(len, lines)) >= 8 << 20
    return lines


def changed(old: bytes, new: bytes) -> int:
    """How many chunks of ``new`` the old file does not have."""
    before = {chunk.digest for chunk in chunks_of(old)}
    return sum(chunk.digest not in before for chunk in chunks_of(new))


def test_inserting_or_deleting_a_line_changes_at_most_three_chunks(dump):
    old = b"".join(dump)
    middle = len(dump) // 2
    extra = dump_lines(random.Random(9), 1, first_row=10**7)
    assert 1 <= changed(old, b"".join(dump[:middle] + extra + dump[middle:])) <= 3
    assert 1 <= changed(old, b"".join(dump[:middle] + dump[middle + 1 :])) <= 3
    assert len(chunks_of(old)) > 150


def test_appending_keeps_all_but_the_last_chunk(dump):
    old = b"".join(dump)
    new = old + b"".join(dump_lines(random.Random(10), (1 << 20) // 95, first_row=10**7))
    before, after = chunks_of(old), chunks_of(new)
    assert after[: len(before) - 1] == before[:-1]


def test_editing_one_byte_changes_one_or_two_chunks(dump):
    old = b"".join(dump)
    at = len(old) // 3
    while old[at : at + 1] in (b"\n", b"7"):
        at += 1
    new = old[:at] + b"7" + old[at + 1 :]
    assert 1 <= changed(old, new) <= 2


def rebuild(old: bytes, ops) -> bytes:
    return b"".join(
        old[op.offset : op.offset + op.length] if isinstance(op, Copy) else op.data for op in ops
    )


edits = st.lists(
    st.tuples(
        st.sampled_from(["insert", "delete", "overwrite", "append", "truncate"]),
        st.floats(0, 1),
        st.integers(1, 120_000),
    ),
    min_size=1,
    max_size=4,
)


def edited(data: bytes, changes, rnd: random.Random) -> bytes:
    for kind, where, size in changes:
        at = int(where * len(data))
        fresh = make_stream(rnd.randrange(2**32), [(rnd.choice(["text", "binary"]), size)])
        if kind == "insert":
            data = data[:at] + fresh + data[at:]
        elif kind == "delete":
            data = data[:at] + data[at + size :]
        elif kind == "overwrite":
            data = data[:at] + fresh + data[at + size :]
        elif kind == "append":
            data += fresh
        else:
            data = data[:at]
    return data


@BIG
@given(streams, edits, st.integers(0, 2**32 - 1))
def test_delta_ops_rebuild_the_new_file(old, changes, seed):
    new = edited(old, changes, random.Random(seed))
    ops = list(delta_ops(chunks_of(old), chunked([new], keep_data=True)))
    assert rebuild(old, ops) == new
    for first, second in itertools.pairwise(ops):
        if isinstance(first, Copy) and isinstance(second, Copy):
            assert first.offset + first.length != second.offset
        if isinstance(first, Literal) and isinstance(second, Literal):
            assert len(first.data) + len(second.data) > LITERAL_MAX
    assert all(len(op.data) <= LITERAL_MAX for op in ops if isinstance(op, Literal))


def test_copies_merge_and_literals_merge_up_to_the_limit():
    old = make_stream(1, [("text", 3 << 20)])
    assert list(delta_ops(chunks_of(old), chunked([old]))) == [Copy(0, len(old))]
    fresh = make_stream(2, [("binary", 3 << 20)])
    ops = list(delta_ops(chunks_of(old), chunked([fresh], keep_data=True)))
    assert all(isinstance(op, Literal) for op in ops)
    sizes = [len(op.data) for op in ops]
    assert len(sizes) >= 3
    assert all(size <= LITERAL_MAX < size + after for size, after in itertools.pairwise(sizes))
    assert rebuild(old, ops) == fresh


def test_a_repeated_chunk_is_copied_from_its_first_place():
    block = bytes(CHUNK_MAX)
    old = [Chunk(CHUNK_MAX, b"z" * ID_SIZE), *chunks_of(block * 2)]
    ops = list(delta_ops(old, chunked([block])))
    assert ops == [Copy(CHUNK_MAX, CHUNK_MAX)]


def test_a_literal_without_its_bytes_is_refused():
    old = make_stream(1, [("text", 200_000)])
    new = old[:100_000] + b"changed\n" + old[100_000:]
    with pytest.raises(ValueError, match="needs its bytes"):
        list(delta_ops(chunks_of(old), chunked([new])))


def test_pack_round_trip_and_bad_blobs():
    chunks = chunks_of(make_stream(4, [("text", 300_000), ("zeros", 600_000)]))
    blob = pack(chunks)
    assert len(blob) == 20 * len(chunks)
    assert unpack(blob) == chunks
    assert unpack(b"") == []
    with pytest.raises(ValueError, match="multiple of 20"):
        unpack(blob[:-1])
    with pytest.raises(ValueError, match="length 0"):
        unpack(blob + bytes(20))
    with pytest.raises(ValueError):
        pack([Chunk(0, bytes(ID_SIZE))])
    with pytest.raises(ValueError):
        pack([Chunk(1, bytes(ID_SIZE - 1))])


def sparse_file(regions: list[tuple[int, bytes]], size: int) -> bytes:
    """The bytes a file of these data regions reads as (holes as zeros)."""
    out = bytearray(size)
    for offset, data in regions:
        out[offset : offset + len(data)] = data
    return bytes(out)


def cut_sparse(regions: list[tuple[int, bytes]], size: int, keep_data: bool = False):
    cutter = SparseCutter(keep_data)
    out = []
    for offset, data in regions:
        for start in range(0, len(data), 100_000):  # fed in pieces, as read
            out.extend(cutter.feed(offset + start, data[start : start + 100_000]))
    return out + cutter.finish(size)


def test_a_sparse_file_is_cut_region_by_region_with_its_holes():
    one, two = make_stream(1, [("text", 700_000)]), make_stream(2, [("binary", 300_000)])
    size = 5 << 20
    pieces = cut_sparse([(4096, one), (3 << 20, two)], size)
    entries = [chunk for chunk, _ in pieces]
    assert sum(c.length for c in entries) == size
    assert [c for c in entries if c.digest == HOLE_ID] == [
        Chunk(4096, HOLE_ID),
        Chunk((3 << 20) - 4096 - len(one), HOLE_ID),
        Chunk(size - (3 << 20) - len(two), HOLE_ID),
    ]
    # each region is cut as if it were a file of its own: a region's cuts never depend
    # on the bytes of another
    assert [c for c in entries if c.digest != HOLE_ID] == chunks_of(one) + chunks_of(two)
    cutter = SparseCutter()
    cutter.feed(10, b"x")
    with pytest.raises(ValueError, match="goes back"):
        cutter.feed(5, b"y")


def test_a_hole_longer_than_an_entry_takes_several():
    assert holes(0) == []
    assert holes(3 << 32) == [Chunk((1 << 32) - 1, HOLE_ID)] * 3 + [Chunk(3, HOLE_ID)]
    assert unpack(pack(holes(1 << 40))) == holes(1 << 40)


def test_a_changed_sparse_file_travels_as_changes_and_holes_never_as_copies():
    old_regions = [(0, make_stream(3, [("binary", 600_000)])), (2 << 20, b"x" * 50_000)]
    size = 4 << 20
    old_bytes = sparse_file(old_regions, size)
    old = [chunk for chunk, _ in cut_sparse(old_regions, size)]
    edited = bytearray(old_regions[0][1])
    edited[300_000:300_010] = b"0123456789"  # blocks rewritten in place
    new_regions = [(0, bytes(edited)), (1 << 20, b"new" * 1000)]  # a hole filled, one made
    ops = list(delta_ops(old, cut_sparse(new_regions, size, keep_data=True)))
    new = rebuild_sparse(old_bytes, ops)
    assert new == sparse_file(new_regions, size)
    assert sum(len(op.data) for op in ops if isinstance(op, Literal)) < 200_000
    assert [op.length for op in ops if isinstance(op, Hole)] == [
        (1 << 20) - len(edited),
        size - (1 << 20) - 3000,
    ]
    # an old hole is no copy source, not even for zeros the new file holds as data
    zeros = [(0, bytes(CHUNK_MAX))]
    assert not any(
        isinstance(op, Copy)
        for op in delta_ops([Chunk(CHUNK_MAX, HOLE_ID)], cut_sparse(zeros, CHUNK_MAX, True))
    )


def rebuild_sparse(old: bytes, ops) -> bytes:
    return b"".join(
        old[op.offset : op.offset + op.length]
        if isinstance(op, Copy)
        else bytes(op.length)
        if isinstance(op, Hole)
        else op.data
        for op in ops
    )
