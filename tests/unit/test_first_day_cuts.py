"""Which large files a run cuts into chunks (architecture.md, *Which files are cut*):
cutting costs about as much as hashing a file again, so a file is cut only when its list
may serve. A read-ahead file (CHUNKED_FROM up to REREAD_LIMIT) seen for the first time
is cut when its bytes compress, else at its first change; bytes that are the cached
row's keep the row's list, uncut (a periodic full archive); a streamed file the cache
vouches for is not cut, and keeps its list only when its digest is the row's."""

from __future__ import annotations

import errno
import hashlib
import io
import os
import signal
import sqlite3
import time
from pathlib import Path

import pytest

from pullback.common.archive import chunker, filecache, writer
from pullback.common.archive.deltaops import DATA_KEY, DELTA, SAME
from pullback.common.archive.filecache import CHUNKED_FROM, FileCache
from pullback.common.archive.filedata import REREAD_LIMIT
from pullback.common.archive.manifest import MANIFEST_NAME
from pullback.common.archive.tarformat import TarReader
from pullback.common.archive.writer import ArchiveWriter, Incremental
from pullback.common.errors import ArchiveError, Interrupted

PREFIX = "services/db/files/src/"


def settle(path: Path, data: bytes) -> None:
    """Write ``data``, its times past the cache's racy window (without waiting)."""
    path.write_bytes(data)
    old = time.time_ns() - 10 * 1_000_000_000
    os.utime(path, ns=(old, old))


def edit(path: Path, offset: int, data: bytes) -> None:
    with open(path, "r+b") as handle:
        handle.seek(offset)
        handle.write(data)
    old = time.time_ns() - 10 * 1_000_000_000
    os.utime(path, ns=(old, old))


def day(tmp_path: Path, src: Path, number: int, delta: bool = True, fresh: bool = False) -> dict:
    """One run over ``src``: each file's member kind (None: whole) and listed digest
    (``fresh``: a full archive someone asked for, its lists cut afresh)."""
    cache = FileCache(tmp_path / "cache", "db1")
    cache.load()
    cache.start()
    out = tmp_path / f"db1-2026120{number}T030000Z.tar"
    inc = Incremental(cache, delta, tmp_path, fresh_cuts=fresh)
    with ArchiveWriter(out, "none", incremental=inc) as archive:
        stats = archive.add_tree(src, PREFIX.rstrip("/"))
        written = archive.finish()
    cache.finish(out.name, written.manifest_sha256)
    cache.swap()
    kinds, listed = {}, {}
    reader = TarReader(io.BytesIO(out.read_bytes()))
    for member in reader:
        if member.name == MANIFEST_NAME:
            for line in b"".join(reader.chunks()).splitlines():
                digest, _, name = line.partition(b"  ")
                listed[name.decode().removeprefix(PREFIX)] = digest.decode()
        elif member.name.startswith(PREFIX):
            kinds[member.name.removeprefix(PREFIX)] = member.pax.get(DATA_KEY)
    return {"kinds": kinds, "listed": listed, "warnings": stats.warnings}


def chunk_lists(tmp_path: Path) -> dict[str, bytes | None]:
    with sqlite3.connect(tmp_path / "cache" / "files.db") as db:
        rows = db.execute("SELECT name, chunks FROM files").fetchall()
    return {name.decode().removeprefix(PREFIX): chunks for name, chunks in rows}


@pytest.fixture(autouse=True)
def settled(monkeypatch):
    """Rows trusted at once: the files' ctimes are this second's (settle() can move
    only their mtimes back), and the cache doubts a file changed within RACY_NS."""
    monkeypatch.setattr(filecache, "RACY_NS", -(10**12))


@pytest.fixture
def cuts(monkeypatch) -> list[int]:
    """The sizes of the byte strings fed to a chunker, in this process."""
    fed: list[int] = []
    real = chunker.Chunker.feed

    def spy(self, data):
        fed.append(len(data))
        return real(self, data)

    monkeypatch.setattr(chunker.Chunker, "feed", spy)
    return fed


def pages(size: int) -> bytes:
    """Binary bytes that compress (a database file's pages: data, then free space)."""
    return b"".join(os.urandom(1024) + bytes(3072) for _ in range(size // 4096))


def test_a_first_seen_file_that_does_not_compress_is_cut_at_its_first_change(tmp_path, cuts):
    src = tmp_path / "src"
    src.mkdir()
    settle(src / "photo.jpg", os.urandom(2 * CHUNKED_FROM))
    settle(src / "pages.db", pages(2 * CHUNKED_FROM))
    day(tmp_path, src, 1, delta=False)
    lists = chunk_lists(tmp_path)
    assert lists["photo.jpg"] is None and lists["pages.db"] is not None
    assert sum(cuts) == 2 * CHUNKED_FROM  # pages.db only
    for name in ("photo.jpg", "pages.db"):
        edit(src / name, 5000, os.urandom(100))
    seen = day(tmp_path, src, 2)
    assert seen["kinds"]["pages.db"] == DELTA
    assert seen["kinds"]["photo.jpg"] is None  # whole, once: it had no list to build on
    assert chunk_lists(tmp_path)["photo.jpg"] is not None  # ... and has one now
    edit(src / "photo.jpg", 900_000, os.urandom(100))
    seen = day(tmp_path, src, 3)
    assert seen["kinds"]["photo.jpg"] == DELTA
    assert (
        seen["listed"]["photo.jpg"] == hashlib.sha256((src / "photo.jpg").read_bytes()).hexdigest()
    )


def test_a_full_archive_keeps_the_lists_of_unchanged_files_without_cutting(tmp_path, cuts):
    src = tmp_path / "src"
    src.mkdir()
    settle(src / "pages.db", pages(2 * CHUNKED_FROM))
    text = b"".join(b"INSERT INTO t VALUES (%d);\n" % n for n in range(800_000))
    assert len(text) > REREAD_LIMIT  # streamed
    settle(src / "dump.sql", text)
    day(tmp_path, src, 1, delta=False)
    before = chunk_lists(tmp_path)
    assert before["pages.db"] and before["dump.sql"]
    cuts.clear()
    seen = day(tmp_path, src, 2, delta=False)  # a periodic full, its cache loaded
    assert cuts == []
    assert chunk_lists(tmp_path) == before
    assert seen["listed"]["dump.sql"] == hashlib.sha256(text).hexdigest()
    # the lists kept serve the next change as they would have if cut again
    edit(src / "dump.sql", len(text) // 2, b"CHANGE")
    edit(src / "pages.db", 9000, b"CHANGE")
    seen = day(tmp_path, src, 3)
    assert seen["kinds"] == {"dump.sql": DELTA, "pages.db": DELTA}
    assert seen["listed"]["dump.sql"] == hashlib.sha256((src / "dump.sql").read_bytes()).hexdigest()


def test_a_vouched_streamed_file_whose_bytes_are_not_the_rows_loses_its_list(tmp_path, cuts):
    """Bytes changed under an unchanged stat (the row's digest stands in for that here):
    the list described other bytes, so the file keeps none; its next change travels
    whole and is cut."""
    src = tmp_path / "src"
    src.mkdir()
    text = b"".join(b"INSERT INTO t VALUES (%d);\n" % n for n in range(800_000))
    settle(src / "dump.sql", text)
    day(tmp_path, src, 1, delta=False)
    with sqlite3.connect(tmp_path / "cache" / "files.db") as db:
        db.execute(
            "UPDATE files SET sha256 = ? WHERE name = ?", ("0" * 64, (PREFIX + "dump.sql").encode())
        )
    cuts.clear()
    seen = day(tmp_path, src, 2, delta=False)
    assert cuts == []
    assert seen["listed"]["dump.sql"] == hashlib.sha256(text).hexdigest()
    assert chunk_lists(tmp_path)["dump.sql"] is None
    edit(src / "dump.sql", 100, b"CHANGE")
    seen = day(tmp_path, src, 3)
    assert seen["kinds"]["dump.sql"] is None
    assert chunk_lists(tmp_path)["dump.sql"] is not None


def test_a_full_someone_asked_for_cuts_afresh_and_keeps_what_had_lists(tmp_path, cuts):
    """``--full`` or the server's request: the old cache is still read (decide() opens
    it), so a file of incompressible bytes that had a list is cut again rather than
    taken as first seen, and no cached list is reused."""
    src = tmp_path / "src"
    src.mkdir()
    settle(src / "vault.bin", os.urandom(2 * CHUNKED_FROM))
    day(tmp_path, src, 1, delta=False)
    edit(src / "vault.bin", 1000, os.urandom(100))
    day(tmp_path, src, 2)
    assert chunk_lists(tmp_path)["vault.bin"] is not None
    cuts.clear()
    day(tmp_path, src, 3, delta=False, fresh=True)
    assert sum(cuts) == 2 * CHUNKED_FROM  # cut again, not reused
    assert chunk_lists(tmp_path)["vault.bin"] is not None
    edit(src / "vault.bin", 900_000, os.urandom(100))
    assert day(tmp_path, src, 4)["kinds"]["vault.bin"] == DELTA


def test_a_file_renamed_before_a_full_keeps_its_list(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    settle(src / "a.bin", os.urandom(2 * CHUNKED_FROM))
    day(tmp_path, src, 1, delta=False)
    edit(src / "a.bin", 1000, os.urandom(100))
    day(tmp_path, src, 2)
    os.rename(src / "a.bin", src / "b.bin")
    day(tmp_path, src, 3, delta=False)
    assert chunk_lists(tmp_path)["b.bin"] is not None


def test_a_file_whose_holes_were_filled_with_zeros_does_not_keep_its_sparse_list(tmp_path):
    """Same bytes, but zeros that are data can be copied and a hole cannot: the list is
    cut again (found by an outside review: a 6-byte edit then cost a 4 MB delta)."""
    src = tmp_path / "src"
    src.mkdir()
    image = src / "disk.img"
    with open(image, "wb") as handle:
        handle.write(b"a line\n" * (CHUNKED_FROM // 7))
        handle.seek(5 * CHUNKED_FROM)
        handle.write(b"b line\n" * (CHUNKED_FROM // 7))
    if image.stat().st_blocks * 512 >= image.stat().st_size:
        pytest.skip("this file system does not keep holes")
    day(tmp_path, src, 1, delta=False)
    assert chunker.HOLE_ID in {c.digest for c in chunker.unpack(chunk_lists(tmp_path)["disk.img"])}
    edit(image, CHUNKED_FROM, bytes(4 * CHUNKED_FROM))
    day(tmp_path, src, 2)
    kept = chunker.unpack(chunk_lists(tmp_path)["disk.img"])
    assert chunker.HOLE_ID not in {c.digest for c in kept}


def member_sizes(tmp_path: Path, number: int) -> dict[str, int]:
    """The data size of every file member of day ``number``'s archive."""
    reader = TarReader(io.BytesIO((tmp_path / f"db1-2026120{number}T030000Z.tar").read_bytes()))
    return {m.name.removeprefix(PREFIX): m.size for m in reader if m.name.startswith(PREFIX)}


def grow(path: Path, data: bytes) -> None:
    with open(path, "ab") as handle:
        handle.write(data)
    old = time.time_ns() - 10 * 1_000_000_000
    os.utime(path, ns=(old, old))


@pytest.mark.parametrize("grown_to", [3 * CHUNKED_FROM, REREAD_LIMIT + 2 * CHUNKED_FROM])
def test_a_file_without_a_list_that_only_grew_sends_what_it_grew_by(tmp_path, grown_to):
    """Found by an outside review: a first-seen file whose bytes did not compress has no
    list, and when it then grew (past REREAD_LIMIT: streamed) it travelled whole. Its
    old part, proved by the row's digest, is now copied; only what it grew by travels,
    and the whole file is cut for its next change."""
    src = tmp_path / "src"
    src.mkdir()
    old = os.urandom(2 * CHUNKED_FROM)
    settle(src / "photo.raw", old)
    day(tmp_path, src, 1, delta=False)
    assert chunk_lists(tmp_path)["photo.raw"] is None
    grow(src / "photo.raw", os.urandom(grown_to - len(old)))
    seen = day(tmp_path, src, 2)
    whole = (src / "photo.raw").read_bytes()
    assert seen["kinds"]["photo.raw"] == DELTA
    assert seen["listed"]["photo.raw"] == hashlib.sha256(whole).hexdigest()
    sent = member_sizes(tmp_path, 2)["photo.raw"]
    assert grown_to - len(old) < sent < grown_to - len(old) + 4096  # the new bytes, framed
    listed = chunker.unpack(chunk_lists(tmp_path)["photo.raw"])
    cutter = chunker.Chunker()
    assert listed == [c for c, _ in (*cutter.feed(whole), *cutter.finish())]
    edit(src / "photo.raw", len(whole) // 2, os.urandom(100))  # ... which is a delta
    seen = day(tmp_path, src, 3)
    assert seen["kinds"]["photo.raw"] == DELTA
    assert member_sizes(tmp_path, 3)["photo.raw"] < 2 * chunker.CHUNK_MAX


def test_a_file_without_a_list_changed_before_its_old_end_travels_whole(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for name in ("small.raw", "large.raw"):
        settle(src / name, os.urandom(2 * CHUNKED_FROM))
    day(tmp_path, src, 1, delta=False)
    for name, size in (("small.raw", CHUNKED_FROM), ("large.raw", REREAD_LIMIT)):
        edit(src / name, 10, b"changed")
        grow(src / name, os.urandom(size))
    seen = day(tmp_path, src, 2)
    sizes = member_sizes(tmp_path, 2)
    for name in ("small.raw", "large.raw"):
        whole = (src / name).read_bytes()
        assert seen["kinds"][name] is None and sizes[name] == len(whole)
        assert seen["listed"][name] == hashlib.sha256(whole).hexdigest()


def test_a_small_file_that_grew_travels_whole(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    settle(src / "app.log", os.urandom(100_000))
    day(tmp_path, src, 1, delta=False)
    grow(src / "app.log", os.urandom(100_000))
    assert day(tmp_path, src, 2)["kinds"]["app.log"] is None  # below CHUNKED_FROM


def test_a_file_that_grew_by_more_than_the_tail_bound_travels_whole(tmp_path, monkeypatch):
    """The delta is spooled before it is sent: past GROWN_TAIL_MAX new bytes, the few
    MiB its old part would save do not pay for spooling the rest."""
    monkeypatch.setattr(writer, "GROWN_TAIL_MAX", REREAD_LIMIT)
    src = tmp_path / "src"
    src.mkdir()
    settle(src / "a.raw", os.urandom(2 * CHUNKED_FROM))
    settle(src / "b.raw", os.urandom(2 * CHUNKED_FROM))
    day(tmp_path, src, 1, delta=False)
    grow(src / "a.raw", os.urandom(REREAD_LIMIT))  # by the bound: a delta
    grow(src / "b.raw", os.urandom(REREAD_LIMIT + 1))  # past it: whole, and cut
    seen = day(tmp_path, src, 2)
    assert seen["kinds"]["a.raw"] == DELTA and seen["kinds"]["b.raw"] is None
    assert chunk_lists(tmp_path)["b.raw"] is not None


def test_a_grown_file_whose_old_part_cannot_be_read_is_sent_whole(tmp_path, monkeypatch):
    """Found by an outside review: an OSError in the proof failed the whole task; the
    file is now read as any streamed file is (which warns and pads if it fails too)."""
    src = tmp_path / "src"
    src.mkdir()
    settle(src / "a.raw", os.urandom(2 * CHUNKED_FROM))
    day(tmp_path, src, 1, delta=False)
    grow(src / "a.raw", os.urandom(REREAD_LIMIT))
    real = os.preadv

    def failing(fd, buffers, offset):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(writer.os, "preadv", failing)
    seen = day(tmp_path, src, 2)
    monkeypatch.setattr(writer.os, "preadv", real)
    whole = (src / "a.raw").read_bytes()
    assert seen["kinds"]["a.raw"] is None
    assert seen["listed"]["a.raw"] == hashlib.sha256(whole).hexdigest()


def test_a_grown_file_whose_new_part_cannot_be_read_is_padded_and_read_again(tmp_path, monkeypatch):
    src = tmp_path / "src"
    src.mkdir()
    settle(src / "a.raw", os.urandom(2 * CHUNKED_FROM))
    day(tmp_path, src, 1, delta=False)
    grow(src / "a.raw", os.urandom(REREAD_LIMIT))
    whole = (src / "a.raw").read_bytes()
    real = os.pread

    def failing(fd, length, offset):
        if offset >= 3 * CHUNKED_FROM:
            raise OSError(errno.EIO, "Input/output error")
        return real(fd, length, offset)

    monkeypatch.setattr(writer.os, "pread", failing)
    seen = day(tmp_path, src, 2)
    monkeypatch.setattr(writer.os, "pread", real)
    padded = whole[: 3 * CHUNKED_FROM] + bytes(len(whole) - 3 * CHUNKED_FROM)
    assert seen["kinds"]["a.raw"] == DELTA
    assert seen["warnings"] == [  # (named by its path, as every file's warning is)
        f"{src / 'a.raw'}: read failed: Input/output error; padded with zeros"
    ]
    assert seen["listed"]["a.raw"] == hashlib.sha256(padded).hexdigest()
    again = day(tmp_path, src, 3)  # doubted: read again, not vouched for
    assert again["kinds"]["a.raw"] != SAME
    assert again["listed"]["a.raw"] == hashlib.sha256(whole).hexdigest()


def test_a_streamed_file_that_could_not_be_read_whole_is_read_again_next_run(tmp_path, monkeypatch):
    """Found by an outside review (older than these rules): a read error left the
    archive with zeros and the row trusted, so the next delta said `same` and the
    server kept the zeros until the file's stat changed."""
    src = tmp_path / "src"
    src.mkdir()
    text = b"x = 1;\n" * (3 * (1 << 20))
    settle(src / "big.sql", text)
    real, calls = os.readv, [0]

    def failing(fd, buffers):
        calls[0] += 1
        if calls[0] == 5:
            raise OSError(errno.EIO, "Input/output error")
        return real(fd, buffers)

    monkeypatch.setattr(writer.os, "readv", failing)
    first = day(tmp_path, src, 1, delta=False)
    assert first["listed"]["big.sql"] != hashlib.sha256(text).hexdigest()  # zeros in it
    monkeypatch.setattr(writer.os, "readv", real)
    second = day(tmp_path, src, 2)
    assert second["kinds"]["big.sql"] != SAME  # read again, not vouched for
    assert second["listed"]["big.sql"] == hashlib.sha256(text).hexdigest()


@pytest.mark.parametrize(
    ("raised", "expected", "words"),
    [
        (RuntimeError("the chunker thread failed"), ArchiveError, r"broke off .*big\.sql"),
        (Interrupted(signal.SIGTERM), Interrupted, None),
    ],
    ids=["failure", "signal"],
)
def test_a_failure_in_the_middle_of_a_member_stops_the_archive(
    tmp_path, monkeypatch, raised, expected, words
):
    """A header promised bytes that did not follow: the stream is broken, so whatever
    failed becomes an ArchiveError (which the run does not swallow as one task's
    failure), and the archive is never finished; a signal (systemd stopping the run)
    stays an Interrupted, with its own exit status and words."""
    src = tmp_path / "src"
    src.mkdir()
    settle(src / "big.sql", b"x = 1;\n" * (3 * (1 << 20)))
    real, fed = chunker.ChunkerAside._feed, [0]

    def failing(self, data):
        fed[0] += 1
        if fed[0] == 4:
            raise raised
        return real(self, data)

    monkeypatch.setattr(chunker.ChunkerAside, "_feed", failing)
    cache = FileCache(tmp_path / "cache", "db1")
    cache.load()
    cache.start()
    out = tmp_path / "broken.tar"
    archive = ArchiveWriter(out, "none", incremental=Incremental(cache, False, tmp_path))
    with pytest.raises(expected, match=words), archive:
        archive.add_tree(src, PREFIX.rstrip("/"))
    assert not out.exists()
