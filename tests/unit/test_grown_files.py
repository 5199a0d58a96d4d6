"""A large file (streamed: REREAD_LIMIT or more) that only grew (a dump with rows
appended) is proved unchanged up to its old size by its old chunks' digests, on two
threads, and hashed on from the hash state the file cache kept (*Hash states of grown
files*); any other change, or a state that does not hash to the row, takes the
one-thread path that reads and hashes it whole. The manifest's digest is the sha256 of
the whole file either way."""

from __future__ import annotations

import errno
import hashlib
import io
import os
import sqlite3
import time
from pathlib import Path

import pytest

from pullback.common.archive import chunker, sha256state, writer
from pullback.common.archive.deltaops import DATA_KEY, DELTA
from pullback.common.archive.filecache import FileCache
from pullback.common.archive.filedata import REREAD_LIMIT
from pullback.common.archive.manifest import MANIFEST_NAME
from pullback.common.archive.tarformat import TarReader
from pullback.common.archive.writer import ArchiveWriter, Incremental

NAME = "services/db/files/src/dump.sql"


def rows(first: int, count: int) -> bytes:
    return b"".join(
        b"INSERT INTO t VALUES (%d, 'row number %d');\n" % (n, n)
        for n in range(first, first + count)
    )


@pytest.fixture
def src(tmp_path) -> Path:
    src = tmp_path / "src"
    src.mkdir()
    settle(src / "dump.sql", rows(0, 440_000))  # past REREAD_LIMIT: streamed
    assert (src / "dump.sql").stat().st_size > REREAD_LIMIT
    return src


def settle(path: Path, data: bytes) -> None:
    """Write ``data``, its times past the cache's racy window (without waiting)."""
    path.write_bytes(data)
    old = time.time_ns() - 10 * 1_000_000_000
    os.utime(path, ns=(old, old))


def day(tmp_path: Path, src: Path, number: int, delta: bool = True) -> dict:
    """One run of the files task over ``src``; returns the dump's member kind and the
    digest the manifest gives it (None when a delta's manifest leaves it out)."""
    cache = FileCache(tmp_path / "cache", "db1")
    cache.load()
    cache.start()
    out = tmp_path / f"db1-2026120{number}T030000Z.tar"
    with ArchiveWriter(out, "none", incremental=Incremental(cache, delta, tmp_path)) as archive:
        archive.add_tree(src, "services/db/files/src")
        written = archive.finish()
    cache.finish(out.name, written.manifest_sha256)
    cache.swap()
    kind, listed = None, {}
    reader = TarReader(io.BytesIO(out.read_bytes()))
    for member in reader:
        if member.name == NAME:
            kind = member.pax.get(DATA_KEY)
        elif member.name == MANIFEST_NAME:
            for line in b"".join(reader.chunks()).splitlines():
                digest, _, name = line.partition(b"  ")
                listed[name.decode()] = digest.decode()
    return {"kind": kind, "sha256": listed.get(NAME)}


def cached_state(tmp_path: Path) -> bytes | None:
    with sqlite3.connect(tmp_path / "cache" / "files.db") as db:
        row = db.execute("SELECT state FROM states WHERE name = ?", (NAME.encode(),)).fetchone()
    return row[0] if row else None


@pytest.fixture
def proved_by_chunks(monkeypatch):
    """What each look at an old prefix by its chunks found (True: unchanged)."""
    found: list[bool] = []
    real = writer._chunks_match

    def spy(fd, chunks, size):
        found.append(real(fd, chunks, size))
        return found[-1]

    monkeypatch.setattr(writer, "_chunks_match", spy)
    return found


def test_an_appended_file_is_proved_by_its_chunks_and_hashed_from_its_state(
    tmp_path, src, proved_by_chunks
):
    day(tmp_path, src, 1, delta=False)
    assert cached_state(tmp_path) is not None  # the full day's read kept the state
    dump = src / "dump.sql"
    settle(dump, dump.read_bytes() + rows(440_000, 500))
    seen = day(tmp_path, src, 2)
    assert seen["kind"] == DELTA
    assert seen["sha256"] == hashlib.sha256(dump.read_bytes()).hexdigest()
    assert proved_by_chunks == [True]
    # a day that leaves it alone carries the state over; the next append uses it again
    assert day(tmp_path, src, 3)["sha256"] is None  # (unchanged: not listed)
    assert cached_state(tmp_path) is not None
    settle(dump, dump.read_bytes() + rows(440_500, 500))
    seen = day(tmp_path, src, 4)
    assert seen["sha256"] == hashlib.sha256(dump.read_bytes()).hexdigest()
    assert proved_by_chunks == [True, True]


def test_a_row_changed_in_the_middle_is_caught_by_its_chunk(tmp_path, src, proved_by_chunks):
    """The first and last old chunks are unchanged, so only the chunk comparison can
    tell; the file is then read whole as a changed file."""
    day(tmp_path, src, 1, delta=False)
    dump = src / "dump.sql"
    data = bytearray(dump.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 6] = b"CHANGE"
    settle(dump, bytes(data) + rows(440_000, 10))
    seen = day(tmp_path, src, 2)
    assert proved_by_chunks == [False]
    assert seen["kind"] == DELTA
    assert seen["sha256"] == hashlib.sha256(dump.read_bytes()).hexdigest()


def test_a_state_of_other_bytes_is_not_used(tmp_path, src, proved_by_chunks):
    """A cache state that does not finish to the row's digest (damaged, or another
    file's) is passed over: the prefix is read and hashed on one thread, as before."""
    day(tmp_path, src, 1, delta=False)
    dump = src / "dump.sql"
    other = sha256state.new()
    assert other is not None
    other.update(bytes(dump.stat().st_size))
    with sqlite3.connect(tmp_path / "cache" / "files.db") as db:
        db.execute("UPDATE states SET state = ? WHERE name = ?", (other.state(), NAME.encode()))
    settle(dump, dump.read_bytes() + rows(440_000, 10))
    seen = day(tmp_path, src, 2)
    assert proved_by_chunks == []
    assert seen["sha256"] == hashlib.sha256(dump.read_bytes()).hexdigest()
    assert cached_state(tmp_path) is not None  # (the one-thread path saves a state too)


def test_chunks_that_do_not_cover_the_old_size_prove_nothing(tmp_path):
    path = tmp_path / "f"
    path.write_bytes(b"x" * 100)
    fd = os.open(path, os.O_RDONLY)
    try:
        chunks = [chunker.Chunk(100, hashlib.sha256(b"x" * 100).digest()[: chunker.ID_SIZE])]
        assert writer._chunks_match(fd, chunks, 100)
        assert not writer._chunks_match(fd, chunks, 101)
        assert not writer._chunks_match(fd, chunks * 2, 100)
    finally:
        os.close(fd)


def cut_list(data: bytes) -> bytes:
    """The chunk list of ``data`` cut in one go."""
    cutter = chunker.Chunker()
    return chunker.pack([c for c, _ in cutter.feed(data)] + [c for c, _ in cutter.finish()])


def cached_list(tmp_path: Path) -> tuple[bytes, bool]:
    """The dump's chunk list in the file cache, and whether its row is trusted."""
    with sqlite3.connect(tmp_path / "cache" / "files.db") as db:
        return db.execute(
            "SELECT chunks, cacheable FROM files WHERE name = ?", (NAME.encode(),)
        ).fetchone()


@pytest.mark.parametrize("stat_shows_it", [True, False], ids=["stat-moved", "stat-still"])
def test_a_change_to_the_old_part_after_its_proof_does_not_reach_the_list(
    tmp_path, src, monkeypatch, stat_shows_it
):
    """Found by an outside review: a byte of the old last chunk rewritten between the
    prefix's proof and the tail's read left the cache's chunk list describing bytes the
    archive did not carry (the old last chunk was read a second time for the chunker),
    so the next delta copied a chunk the server does not hold. Now the chunker goes on
    from the old last chunk's bytes as they were proved: the list is the cut of exactly
    the archived bytes (the old part and what was appended), whether or not the file's
    stat shows the write (coarse timestamps: streamed_note sees nothing), and the
    following days, whose proof reads the file again, find the change."""
    day(tmp_path, src, 1, delta=False)
    dump = src / "dump.sql"
    old = dump.read_bytes()
    appended = rows(440_000, 500)
    settle(dump, old + appended)
    real = writer._grown_tail

    def racing(fd, position, *rest, **named):
        with open(dump, "r+b") as handle:  # another process, during the read
            handle.seek(position - 10)
            handle.write(b"#")
        yield from real(fd, position, *rest, **named)

    monkeypatch.setattr(writer, "_grown_tail", racing)
    if not stat_shows_it:
        monkeypatch.setattr(writer, "streamed_note", lambda before, fd: None)
    seen = day(tmp_path, src, 2)
    monkeypatch.setattr(writer, "_grown_tail", real)
    assert seen["kind"] == DELTA
    assert seen["sha256"] == hashlib.sha256(old + appended).hexdigest()  # what was proved
    chunks, cacheable = cached_list(tmp_path)
    assert chunks == cut_list(old + appended)
    if stat_shows_it:
        assert not cacheable  # a write the stat shows: read whole next run
    for number, first in ((3, 440_500), (4, 441_000)):
        settle(dump, dump.read_bytes() + rows(first, 500))
        seen = day(tmp_path, src, number)
        assert seen["sha256"] == hashlib.sha256(dump.read_bytes()).hexdigest(), number
        assert cached_list(tmp_path)[0] == cut_list(dump.read_bytes()), number


def test_a_file_cut_below_its_old_size_under_the_read_is_padded_and_read_again(
    tmp_path, src, monkeypatch
):
    """Found by an outside review (older than the states): a grown file truncated below
    its old size between the prefix's proof and the tail's read was sent as a copy of
    the old size into a smaller file, a delta the server refuses. Now the new part is
    zeros (the proved old part stands), as for any file read short, with a warning,
    and the next run reads the file whole."""
    day(tmp_path, src, 1, delta=False)
    dump = src / "dump.sql"
    old = dump.read_bytes()
    settle(dump, old + rows(440_000, 500))
    size = dump.stat().st_size
    real = writer._grown_tail

    def cut(fd, position, *rest, **named):
        os.truncate(dump, position - 100)
        yield from real(fd, position, *rest, **named)

    monkeypatch.setattr(writer, "_grown_tail", cut)
    seen = day(tmp_path, src, 2)
    monkeypatch.setattr(writer, "_grown_tail", real)
    padded = old + bytes(size - len(old))
    assert seen["kind"] == DELTA
    assert seen["sha256"] == hashlib.sha256(padded).hexdigest()
    assert cached_list(tmp_path) == (cut_list(padded), 0)
    settle(dump, dump.read_bytes() + rows(440_500, 500))
    seen = day(tmp_path, src, 3)
    assert seen["sha256"] == hashlib.sha256(dump.read_bytes()).hexdigest()


def test_an_old_part_that_cannot_be_read_proves_nothing(tmp_path, src, monkeypatch):
    """Found by an outside review: an OSError while proving the old part (its chunks
    read on two threads) failed the whole files task. It now proves nothing: the file is
    read whole, as a changed file (here that read succeeds)."""
    day(tmp_path, src, 1, delta=False)
    dump = src / "dump.sql"
    settle(dump, dump.read_bytes() + rows(440_000, 500))

    def broken(*args):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(writer.os, "preadv", broken)
    seen = day(tmp_path, src, 2)
    assert seen["kind"] == DELTA
    assert seen["sha256"] == hashlib.sha256(dump.read_bytes()).hexdigest()


def test_new_bytes_that_cannot_be_read_are_padded_and_read_next_run(tmp_path, src, monkeypatch):
    """A read error after the old part was proved (by its chunks: ``preadv``): the new
    part is zeros, named in a warning, and the file is read whole next run."""
    day(tmp_path, src, 1, delta=False)
    dump = src / "dump.sql"
    old = dump.read_bytes()
    settle(dump, old + rows(440_000, 500))
    size = dump.stat().st_size
    real = os.pread

    def broken(*args):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(writer.os, "pread", broken)
    seen = day(tmp_path, src, 2)
    monkeypatch.setattr(writer.os, "pread", real)
    assert seen["kind"] == DELTA
    assert seen["sha256"] == hashlib.sha256(old + bytes(size - len(old))).hexdigest()
    assert not cached_list(tmp_path)[1]
    seen = day(tmp_path, src, 3)
    assert seen["sha256"] == hashlib.sha256(dump.read_bytes()).hexdigest()
