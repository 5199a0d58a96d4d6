"""When the client may send a file as a ``same`` member (its name only): the cache row
vouches for its bytes and its metadata as this run would archive them. Found by an
outside review: a task's ``xattrs`` switched on, an extended attribute that could not
be read once, and a mode or owner that a mount option changes without a new ctime all
kept the base's metadata for good."""

from __future__ import annotations

import errno
import io
import os
import subprocess
import time
from pathlib import Path

import pytest

from pullback.common.archive import writer
from pullback.common.archive.deltaops import DATA_KEY
from pullback.common.archive.filecache import CachedFile, FileCache
from pullback.common.archive.reader import verify_archive
from pullback.common.archive.tarformat import TarReader
from pullback.common.archive.writer import ArchiveWriter, Incremental
from pullback.common.errors import ArchiveError


@pytest.fixture
def tree(tmp_path) -> Path:
    src = tmp_path / "src"
    src.mkdir()
    path = src / "f.txt"
    path.write_bytes(b"hello\n")
    try:
        os.setxattr(path, "user.tag", b"important")
    except OSError as exc:  # pragma: no cover - a file system without user xattrs
        pytest.skip(f"no user extended attributes here: {exc.strerror}")
    old = time.time_ns() - 10 * 1_000_000_000  # past the racy window, without waiting
    os.utime(path, ns=(old, old))
    return src


def day(tmp_path: Path, src: Path, number: int, delta: bool, xattrs: bool = True) -> dict:
    """One run of the files task over ``src``; returns its file members' kind and
    extended-attribute records."""
    cache = FileCache(tmp_path / "cache", "web1")
    cache.load()
    cache.start()
    out = tmp_path / f"web1-2026120{number}T030000Z.tar"
    with ArchiveWriter(out, "none", incremental=Incremental(cache, delta, tmp_path)) as archive:
        archive.add_tree(src, "services/app/files/src", xattrs=xattrs)
        written = archive.finish()
    cache.finish(out.name, written.manifest_sha256)
    cache.swap()
    return {
        member.name.rsplit("/", 1)[-1]: (
            member.pax.get(DATA_KEY),
            sorted(k for k in member.pax if k.startswith(b"SCHILY.xattr.")),
        )
        for member in TarReader(io.BytesIO(out.read_bytes()))
        if member.is_file and member.name != "MANIFEST.sha256"
    }


def ctime_settles() -> None:
    """Wait out the racy window of the files' ctime (set by setxattr at creation)."""
    time.sleep(2.1)


def test_a_file_is_same_only_with_the_xattrs_setting_it_was_read_with(tmp_path, tree):
    ctime_settles()
    assert day(tmp_path, tree, 1, delta=False, xattrs=False) == {"f.txt": (None, [])}
    # the task now archives extended attributes: the file is read again, a base member
    # carrying them, then same
    tag = [b"SCHILY.xattr.user.tag"]
    assert day(tmp_path, tree, 2, delta=True, xattrs=True) == {"f.txt": (b"base", tag)}
    assert day(tmp_path, tree, 3, delta=True, xattrs=True) == {"f.txt": (b"same", [])}
    # and off again: a base member without them (the server then removes them)
    assert day(tmp_path, tree, 4, delta=True, xattrs=False) == {"f.txt": (b"base", [])}


def test_extended_attributes_that_could_not_be_read_are_read_again(tmp_path, tree, monkeypatch):
    ctime_settles()

    def fails(*args, **kwargs):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(writer.os, "listxattr", fails)
    assert day(tmp_path, tree, 1, delta=False) == {"f.txt": (None, [])}
    monkeypatch.undo()
    tag = [b"SCHILY.xattr.user.tag"]
    assert day(tmp_path, tree, 2, delta=True) == {"f.txt": (b"base", tag)}
    assert day(tmp_path, tree, 3, delta=True) == {"f.txt": (b"same", [])}


@pytest.mark.parametrize("field", ["st_mode", "st_uid", "st_gid"])
def test_a_mode_or_owner_changed_without_a_new_ctime_is_not_unchanged(tmp_path, field):
    """vfat, exfat, cifs remounted with other uid=, gid= or umask=, or an idmapped mount:
    the mode or owner changes, the ctime does not."""
    path = tmp_path / "f"
    path.write_bytes(b"x")
    st = os.stat(path)
    row = CachedFile.of(st, "a" * 64, None, time.time_ns() + 10 * 1_000_000_000)
    assert row.unchanged(st)
    times = {key: getattr(st, key) for key in ("st_mtime_ns", "st_ctime_ns")}
    assert row.unchanged(os.stat_result(list(st), times))  # the copy is faithful
    fields = list(st)
    fields[{"st_mode": 0, "st_uid": 4, "st_gid": 5}[field]] += 1
    assert not row.unchanged(os.stat_result(fields, times))


def test_a_deltas_manifest_leaves_the_base_files_out_and_says_so(tmp_path, tree):
    """The delta's manifest member lists only what travels, after a notice line: the
    client's read-back accepts it, refuses it once it no longer says it is partial, and
    ``sha256sum --check`` of the delta extracted by hand fails, naming the way to
    restore, instead of passing over the base's files (extracted empty)."""
    (tree / "changed.txt").write_bytes(b"one\n")
    ctime_settles()
    day(tmp_path, tree, 1, delta=False)
    (tree / "changed.txt").write_bytes(b"two\n")
    assert day(tmp_path, tree, 2, delta=True)["f.txt"][0] == b"same"
    delta = tmp_path / "web1-20261202T030000Z.tar"
    verified = verify_archive(delta)
    assert list(verified.manifest) == ["services/app/files/src/changed.txt"]
    raw = delta.read_bytes()
    assert raw.count(b"PULLBACK.manifest=partial") == 1
    extracted = tmp_path / "by-hand"
    extracted.mkdir()
    subprocess.run(["tar", "-xf", str(delta), "-C", str(extracted)], check=True)
    check = subprocess.run(
        ["sha256sum", "--check", "--strict", "MANIFEST.sha256"],
        cwd=extracted,
        capture_output=True,
        text=True,
        env={**os.environ, "LC_ALL": "C"},
    )
    assert check.returncode != 0
    assert "restore it with pullback-client restore --from" in check.stdout + check.stderr
    delta.write_bytes(raw.replace(b"manifest=partial", b"manifest=Partial"))
    with pytest.raises(ArchiveError, match=r"f\.txt is missing"):
        verify_archive(delta)
