"""Which large files a run cuts into chunks (architecture.md, *Which files are cut*):
cutting costs about as much as hashing a file again, so a file is cut only when its list
may serve. A read-ahead file (CHUNKED_FROM up to REREAD_LIMIT) seen for the first time
is cut when its bytes compress, else at its first change; bytes that are the cached
row's keep the row's list, uncut (a periodic full archive); a streamed file the cache
vouches for is not cut, and keeps its list only when its digest is the row's."""

from __future__ import annotations

import hashlib
import io
import os
import sqlite3
import time
from pathlib import Path

import pytest

from pullback.common.archive import chunker, filecache
from pullback.common.archive.deltaops import DATA_KEY, DELTA
from pullback.common.archive.filecache import CHUNKED_FROM, FileCache
from pullback.common.archive.filedata import REREAD_LIMIT
from pullback.common.archive.manifest import MANIFEST_NAME
from pullback.common.archive.tarformat import TarReader
from pullback.common.archive.writer import ArchiveWriter, Incremental

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


def day(tmp_path: Path, src: Path, number: int, delta: bool = True) -> dict:
    """One run over ``src``: each file's member kind (None: whole) and listed digest."""
    cache = FileCache(tmp_path / "cache", "db1")
    cache.load()
    cache.start()
    out = tmp_path / f"db1-2026120{number}T030000Z.tar"
    with ArchiveWriter(out, "none", incremental=Incremental(cache, delta, tmp_path)) as archive:
        archive.add_tree(src, PREFIX.rstrip("/"))
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
    return {"kinds": kinds, "listed": listed}


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
