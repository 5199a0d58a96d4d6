"""The archive writer and verifier: exact round trips, and corruption is caught."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from pullback.common.archive.manifest import MANIFEST_NAME, parse
from pullback.common.archive.reader import verify_archive
from pullback.common.archive.writer import ArchiveWriter
from pullback.common.errors import ArchiveError
from tests.helpers.archives import unpacked
from tests.helpers.tree import make_rich_tree, snapshot

SUFFIX = {"zstd": ".tar.zst", "gzip": ".tar.gz", "none": ".tar"}


def write_archive(tmp_path: Path, source: Path, compression: str = "zstd") -> Path:
    path = tmp_path / f"host-20260101T000000Z{SUFFIX[compression]}"
    with ArchiveWriter(path, compression) as writer:
        stats = writer.add_tree(source, "services/svc/files/src")
        assert not [w for w in stats.warnings if w.startswith("error")]
        writer.finish()
    return path


def gnu_tar_extract(archive: Path, target: Path) -> None:
    """Unpack with GNU tar, an independent reader, keeping owners, xattrs and ACLs."""
    target.mkdir()
    subprocess.run(
        [
            "tar",
            "--extract",
            "--file",
            str(archive),
            "--directory",
            str(target),
            "--same-owner",
            "--numeric-owner",
            "--preserve-permissions",
            "--xattrs",
            "--xattrs-include=*",
            "--acls",
            "--auto-compress",
        ],
        check=True,
        capture_output=True,
    )


@pytest.mark.parametrize("compression", ["zstd", "gzip", "none"])
def test_round_trip_keeps_every_byte_owner_mode_mtime_link_xattr_and_acl(
    tmp_path, compression, is_root
):
    source = make_rich_tree(tmp_path / "src", as_root=is_root)
    archive = write_archive(tmp_path, source, compression)
    out = tmp_path / "out"
    gnu_tar_extract(archive, out)
    assert snapshot(out / "services/svc/files/src") == snapshot(source)


def test_manifest_lists_every_regular_file_and_sha256sum_agrees(tmp_path, is_root):
    source = make_rich_tree(tmp_path / "src", as_root=is_root)
    archive = write_archive(tmp_path, source)
    out = tmp_path / "out"
    gnu_tar_extract(archive, out)
    manifest = parse((out / MANIFEST_NAME).read_bytes())
    regular = {
        os.path.relpath(os.path.join(d, f), out)
        for d, _, files in os.walk(out)
        for f in files
        if not os.path.islink(os.path.join(d, f)) and f != MANIFEST_NAME
    }
    assert set(manifest) == regular
    check = subprocess.run(
        ["sha256sum", "--check", "--strict", MANIFEST_NAME], cwd=out, capture_output=True, text=True
    )
    assert check.returncode == 0, check.stdout + check.stderr


def test_verify_reports_counts_and_hash(tmp_path):
    source = make_rich_tree(tmp_path / "src", as_root=False)
    archive = write_archive(tmp_path, source)
    result = verify_archive(archive)
    digest = subprocess.run(
        ["sha256sum", str(archive)], capture_output=True, text=True, check=True
    ).stdout.split()[0]
    assert result.sha256 == digest
    assert result.size == archive.stat().st_size
    assert result.files == len(result.manifest) == 8


def test_verify_catches_a_flipped_byte(tmp_path):
    source = make_rich_tree(tmp_path / "src", as_root=False)
    archive = write_archive(tmp_path, source)
    data = bytearray(archive.read_bytes())
    data[len(data) // 2] ^= 0xFF
    archive.write_bytes(bytes(data))
    with pytest.raises(ArchiveError):
        verify_archive(archive)


def test_verify_catches_truncation(tmp_path):
    source = make_rich_tree(tmp_path / "src", as_root=False)
    archive = write_archive(tmp_path, source)
    with open(archive, "r+b") as handle:
        handle.truncate(archive.stat().st_size // 2)
    with pytest.raises(ArchiveError):
        verify_archive(archive)


def test_verify_catches_content_that_differs_from_the_manifest(tmp_path):
    # An uncompressed archive lets us change file data without breaking any framing.
    source = tmp_path / "src"
    source.mkdir()
    (source / "a.txt").write_text("original content\n")
    archive = write_archive(tmp_path, source, "none")
    data = archive.read_bytes()
    archive.write_bytes(data.replace(b"original content", b"tampered content"))
    with pytest.raises(ArchiveError, match=r"services/svc/files/src/a\.txt has changed"):
        verify_archive(archive)


def test_an_archive_without_manifest_is_refused(tmp_path):
    (tmp_path / "f").write_text("x")
    archive = tmp_path / "host-20260101T000000Z.tar"
    subprocess.run(["tar", "-cf", str(archive), "-C", str(tmp_path), "f"], check=True)
    with pytest.raises(ArchiveError, match=r"has no MANIFEST\.sha256"):
        verify_archive(archive)


def test_abort_removes_the_partial_file(tmp_path):
    path = tmp_path / "host-20260101T000000Z.tar.zst"
    (tmp_path / "data").write_bytes(b"data")
    writer = ArchiveWriter(path, "zstd").open()
    writer.add_tree(tmp_path / "data", "x/y")
    writer.abort()
    assert not path.exists()


def test_a_large_sparse_region_is_archived_in_pieces_and_gnu_tar_agrees(tmp_path):
    """A sparse file whose data region is larger than the read-ahead limit is read in
    pieces (the writer's memory stays a few pieces, not the region's 40 MiB), and GNU tar
    extracts it byte for byte."""
    import tracemalloc

    source = tmp_path / "src"
    source.mkdir()
    region = os.urandom(40 << 20)
    with open(source / "disk.img", "wb") as handle:
        handle.seek(8 << 20)
        handle.write(region)
        handle.truncate(100 << 20)
    tracemalloc.start()
    try:
        archive = write_archive(tmp_path, source, compression="none")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 8 << 20, peak
    gnu_tar_extract(archive, tmp_path / "out")
    extracted = tmp_path / "out" / "services/svc/files/src/disk.img"
    assert extracted.stat().st_size == 100 << 20
    with open(extracted, "rb") as handle:
        assert handle.read(8 << 20) == bytes(8 << 20)
        assert handle.read(40 << 20) == region
        assert handle.read() == bytes(52 << 20)


def test_overlapping_paths_write_each_symlink_and_fifo_once(tmp_path):
    """A task whose paths overlap (``[d, d/sub]``) walks ``sub`` twice: a file was
    written once, but a symlink or FIFO twice, and the server refused the archive
    ("appears twice") every day (found by an outside review)."""
    source = tmp_path / "d"
    (source / "sub").mkdir(parents=True)
    (source / "sub" / "f").write_text("f")
    os.symlink("f", source / "sub" / "lnk")
    os.mkfifo(source / "sub" / "fifo")
    path = tmp_path / "host-20260101T000000Z.tar"
    with ArchiveWriter(path, "none") as writer:
        writer.add_tree(source, "services/svc/files/d")
        writer.add_tree(source / "sub", "services/svc/files/d/sub")
        writer.finish()
    listing = subprocess.run(["tar", "-tf", str(path)], capture_output=True, text=True)
    names = [n.rstrip("/") for n in listing.stdout.split()]
    for name in ("lnk", "fifo", "f"):
        assert names.count(f"services/svc/files/d/sub/{name}") == 1, names
    verify_archive(path)
    staging = unpacked(path, tmp_path / "staging")
    assert os.readlink(staging / "services/svc/files/d/sub/lnk") == "f"


def test_a_path_below_a_symlink_the_archive_holds_is_skipped_said_and_the_archive_unpacks(
    tmp_path,
):
    """The writer never puts a member below a symlink or a file it wrote (``[d,
    d/lnk/x]`` with ``d/lnk`` a symlink): the server would refuse the whole archive,
    every day. The files plugin says so first (``below_a_link``); this is the
    writer's own guard for any caller."""
    source = tmp_path / "d"
    (tmp_path / "real" / "x").mkdir(parents=True)
    (tmp_path / "real" / "x" / "f").write_text("f")
    source.mkdir()
    os.symlink(tmp_path / "real", source / "lnk")
    (source / "file").write_text("plain")
    path = tmp_path / "host-20260101T000000Z.tar"
    with ArchiveWriter(path, "none") as writer:
        writer.add_tree(source, "services/svc/files/d")
        below_link = writer.add_tree(source / "lnk" / "x", "services/svc/files/d/lnk/x")
        below_file = writer.add_tree(tmp_path / "real", "services/svc/files/d/file/real")
        writer.finish()
    assert below_link.warnings == [
        f"{source}/lnk/x: skipped: the archive already holds services/svc/files/d/lnk "
        "as a file or symlink, not a directory"
    ]
    assert below_file.files == 0 and "services/svc/files/d/file " in below_file.warnings[0]
    staging = unpacked(path, tmp_path / "staging")
    assert os.readlink(staging / "services/svc/files/d/lnk") == str(tmp_path / "real")
    assert (staging / "services/svc/files/d/file").read_text() == "plain"


def test_an_entry_walked_twice_that_changed_kind_in_between_goes_in_once(tmp_path):
    """Overlapping paths walk an entry twice; a file replaced by a directory (or a
    directory by a symlink) in between went in as both kinds, and no unpacking takes
    that. The second is skipped, said; the first stays."""
    source = tmp_path / "d"
    (source / "sub" / "dir").mkdir(parents=True)
    (source / "sub" / "f").write_text("f")
    path = tmp_path / "host-20260101T000000Z.tar"
    with ArchiveWriter(path, "none") as writer:
        writer.add_tree(source, "services/svc/files/d")
        (source / "sub" / "f").unlink()
        (source / "sub" / "f").mkdir()
        (source / "sub" / "f" / "inner").write_text("inner")
        (source / "sub" / "dir").rmdir()
        os.symlink("f", source / "sub" / "dir")
        second = writer.add_tree(source / "sub", "services/svc/files/d/sub")
        writer.finish()
    assert sorted(second.warnings) == [
        f"{source}/sub/dir: skipped: it is a symlink or FIFO now, and the archive already "
        "holds it as a directory",
        f"{source}/sub/f: skipped: it is a directory now, and the archive already holds "
        "it as a file",
    ]
    staging = unpacked(path, tmp_path / "staging")
    assert (staging / "services/svc/files/d/sub/f").read_text() == "f"
    assert (staging / "services/svc/files/d/sub/dir").is_dir()
