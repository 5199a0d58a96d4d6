"""The client's file cache: a row vouches for a file only while all five stat fields are
unchanged and the file was not racy when read; the new cache replaces the old one only
when swapped; anything doubtful makes the cache unusable (a full archive), never wrong."""

from __future__ import annotations

import os
import sqlite3
import time

from pullback.common.archive import chunker
from pullback.common.archive.filecache import RACY_NS, CachedFile, FileCache

HOST = "web1"


def row_for(path, sha="a" * 64, read_at=None) -> CachedFile:
    st = os.stat(path)
    return CachedFile.of(st, sha, None, read_at or time.time_ns() + 10 * RACY_NS)


def test_a_row_vouches_only_for_an_unchanged_file(tmp_path):
    path = tmp_path / "f"
    path.write_text("one")
    row = row_for(path)
    assert row.unchanged(os.stat(path))
    os.chmod(path, 0o600)  # ctime moves: a chmod, chown, xattr or ACL change
    assert not row.unchanged(os.stat(path))
    row = row_for(path)
    path.write_text("two")  # same size, new bytes
    os.utime(path, ns=(row.mtime_ns, row.mtime_ns))  # mtime put back: ctime still tells
    assert not row.unchanged(os.stat(path))


def test_a_file_read_within_the_racy_window_is_read_again(tmp_path):
    path = tmp_path / "f"
    path.write_text("just written")
    racy = CachedFile.of(os.stat(path), "a" * 64, None, time.time_ns())
    assert not racy.cacheable and not racy.unchanged(os.stat(path))
    settled = CachedFile.of(os.stat(path), "a" * 64, None, time.time_ns() + RACY_NS + 1)
    assert settled.unchanged(os.stat(path))
    assert not settled.uncacheable().unchanged(os.stat(path))


def test_the_new_cache_counts_only_once_swapped(tmp_path):
    cache = FileCache(tmp_path / "cache", HOST)
    assert cache.load() == "there is no file cache yet"
    cache.start()
    path = tmp_path / "f"
    path.write_text("x")
    chunks = chunker.pack([chunker.Chunk(1, b"\0" * 16)])
    cache.record("services/app/f", CachedFile.of(os.stat(path), "b" * 64, chunks, 0))
    cache.finish("web1-20261130T030000Z.tar.zst", "c" * 64)
    again = FileCache(tmp_path / "cache", HOST)
    assert again.load() == "there is no file cache yet"  # not swapped: a crash here
    cache.swap()
    assert again.load() is None
    assert again.base is not None and again.base.name == "web1-20261130T030000Z.tar.zst"
    row = again.lookup("services/app/f")
    assert row is not None and row.sha256 == "b" * 64 and row.chunks == chunks
    assert again.lookup("services/app/other") is None
    again.close()
    assert FileCache(tmp_path / "cache", "web2").load() is not None  # another host name


def test_an_unfinished_or_broken_cache_is_not_used(tmp_path):
    cache = FileCache(tmp_path / "cache", HOST)
    cache.start()
    cache.close()  # a run that failed: its new cache is removed
    assert not (tmp_path / "cache" / "files.db.new").exists()
    (tmp_path / "cache" / "files.db").write_bytes(b"not a database at all" * 100)
    assert "unreadable" in (FileCache(tmp_path / "cache", HOST).load() or "")
    (tmp_path / "cache" / "files.db").unlink()
    db = sqlite3.connect(tmp_path / "cache" / "files.db")
    db.execute("CREATE TABLE meta (k TEXT PRIMARY KEY, v TEXT NOT NULL)")
    db.execute("INSERT INTO meta VALUES ('format', '0')")
    db.commit()
    db.close()
    assert "another version" in (FileCache(tmp_path / "cache", HOST).load() or "")


def test_a_name_that_is_not_utf8_is_kept_as_its_bytes(tmp_path):
    cache = FileCache(tmp_path / "cache", HOST)
    cache.start()
    path = tmp_path / "f"
    path.write_text("x")
    name = "services/app/caf\udce9.txt"
    cache.record(name, CachedFile.of(os.stat(path), "d" * 64, None, 0))
    cache.finish("web1-20261130T030000Z.tar.zst", "c" * 64)
    cache.swap()
    again = FileCache(tmp_path / "cache", HOST)
    assert again.load() is None
    row = again.lookup(name)
    assert row is not None and row.sha256 == "d" * 64
    again.close()


def test_times_and_inode_numbers_past_sqlites_integers_are_kept(tmp_path):
    """A file dated after 2262 (ext4 holds times to 2446) has more nanoseconds than
    SQLite's signed 64-bit INTEGER: the run ended in an OverflowError (helper-114). Its
    row keeps it through ordered.stat_number, and still vouches for it, and only it."""
    path = tmp_path / "future"
    path.write_text("dated 2300")
    when = 10_413_792_000 * 1_000_000_000  # 2300-01-01, above 2**63
    os.utime(path, ns=(when, when))
    assert os.stat(path).st_mtime_ns == when > 1 << 63
    cache = FileCache(tmp_path / "cache", HOST)
    cache.load()
    cache.start()
    # (a run reads a file dated ahead of it every time: "racy"; here, one read later)
    cache.record("services/app/future", row_for(path, read_at=when + 10 * RACY_NS))
    cache.finish("web1-20261130T030000Z.tar.zst", "c" * 64)
    cache.swap()
    again = FileCache(tmp_path / "cache", HOST)
    assert again.load() is None
    row = again.lookup("services/app/future")
    assert row is not None and row.unchanged(os.stat(path))
    st = os.stat(path)
    assert again.lookup_inode(st.st_dev, st.st_ino) is not None
    os.utime(path, ns=(when + 1, when + 1))
    assert not row.unchanged(os.stat(path))
    again.close()


def test_stat_number_is_itself_in_range_and_maps_the_rest_into_it():
    from pullback.common.archive.ordered import stat_number

    for value in (0, 1, -1, (1 << 63) - 1, -(1 << 63)):
        assert stat_number(value) == value
    for value in (1 << 63, (1 << 64) - 1, 10_413_792_000 * 10**9, (1 << 63) * 10**9 - 1):
        mapped = stat_number(value)
        assert -(1 << 63) <= mapped < 1 << 63 and stat_number(mapped) == mapped
    assert stat_number(1 << 63) != stat_number((1 << 63) + 1)
