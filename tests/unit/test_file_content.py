"""What the writer archives of one file: changes while it is read, holes, FIFOs, depth.

GNU tar is the oracle for the format: what pullback writes, GNU tar must list and
extract the same way (sparse files included), and what GNU tar writes, pullback reads.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import resource
import stat
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from pullback.common.archive import filedata, sparse
from pullback.common.archive import writer as writer_module
from pullback.common.archive.reader import verify_archive
from pullback.common.archive.stats import TaskStats
from pullback.common.archive.unpack import Unpacker
from pullback.common.archive.writer import MAX_ARCNAME, ArchiveWriter
from pullback.common.fsutil import make_hole

MIB = 1 << 20


def archive_of(tmp_path: Path, source: Path, compression: str = "none") -> tuple[Path, TaskStats]:
    suffix = {"none": ".tar", "zstd": ".tar.zst"}[compression]
    path = tmp_path / f"host-20260101T000000Z{suffix}"
    with ArchiveWriter(path, compression) as writer:
        stats = writer.add_tree(source, "services/app/files")
        writer.finish()
    return path, stats


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def make_sparse(path: Path, size: int, pieces: dict[int, bytes]) -> None:
    with open(path, "wb") as handle:
        handle.truncate(size)
        for offset, data in pieces.items():
            handle.seek(offset)
            handle.write(data)


# -- a file that changes while it is read ------------------------------------------------


class ChangesOnce:
    """Wraps the reader so that the file changes right after its first read, as a live
    application's write would land: deterministic, unlike a racing thread."""

    def __init__(self, monkeypatch, path: Path, new_content: bytes, times: int = 1):
        self.path, self.new_content, self.left = path, new_content, times
        self.real = filedata._pread_all
        monkeypatch.setattr(filedata, "_pread_all", self)

    def __call__(self, fd, length, offset):
        data = self.real(fd, length, offset)
        if self.left:
            self.left -= 1
            self.path.write_bytes(self.new_content)  # same inode: truncated and rewritten
        return data


def test_a_file_rewritten_while_read_is_read_again(tmp_path, monkeypatch):
    source = tmp_path / "src"
    source.mkdir()
    (source / "orders.csv").write_bytes(b"")  # truncated by the application...
    ChangesOnce(monkeypatch, source / "orders.csv", b"id,total\n1,20\n")  # ...and rewritten
    archive, stats = archive_of(tmp_path, source)
    with tarfile.open(archive) as tar:
        data = tar.extractfile("services/app/files/orders.csv").read()
    assert data == b"id,total\n1,20\n"  # never silently 0 bytes
    assert stats.warnings == [f"{source / 'orders.csv'}: changed while being read; read again"]
    assert verify_archive(archive).files == 1


def test_a_file_that_keeps_changing_is_archived_as_read_the_second_time(tmp_path, monkeypatch):
    source = tmp_path / "src"
    source.mkdir()
    (source / "log").write_bytes(b"one\n")
    ChangesOnce(monkeypatch, source / "log", b"one\ntwo\n", times=2)
    archive, stats = archive_of(tmp_path, source)
    assert "changed while being read, twice; archived as read the second time" in stats.warnings[0]
    assert verify_archive(archive).files == 1  # whatever was read, the manifest matches it


def test_a_large_file_that_shrinks_while_streamed_keeps_the_stream_valid(tmp_path):
    source = tmp_path / "src"
    source.mkdir()
    big = source / "big"
    big.write_bytes(b"a" * (filedata.REREAD_LIMIT + MIB))

    class ShrinkingWriter(ArchiveWriter):
        def _copy_data(self, fd, size, path, stats, found=None):
            os.truncate(path, 1000)  # the application truncates it as it is streamed
            return super()._copy_data(fd, size, path, stats, found)

    path = tmp_path / "host-20260101T000000Z.tar"
    with ShrinkingWriter(path, "none") as writer:
        stats = writer.add_tree(source, "services/app/files")
        writer.finish()
    assert any("shrank while being read; padded with zeros" in w for w in stats.warnings)
    assert any("changed while being read; archived as read" in w for w in stats.warnings)
    assert verify_archive(path).files == 1


# -- holes ----------------------------------------------------------------------------------


def test_a_sparse_file_travels_without_its_holes_and_gnu_tar_agrees(tmp_path):
    source = tmp_path / "src"
    source.mkdir()
    hole = source / "disk.img"
    make_sparse(hole, 64 * MIB, {5 * MIB: b"x" * 8192, 64 * MIB - 3: b"end"})
    archive, stats = archive_of(tmp_path, source)
    assert stats.warnings == []
    assert archive.stat().st_size < MIB  # 64 MiB of file, 12 KiB of data
    listing = subprocess.run(
        ["tar", "-tvf", str(archive)], capture_output=True, text=True, check=True
    ).stdout
    assert "services/app/files/disk.img" in listing and "GNUSparseFile" not in listing
    out = tmp_path / "gnu"
    out.mkdir()
    subprocess.run(["tar", "-xf", str(archive), "-C", str(out)], check=True)
    extracted = out / "services/app/files/disk.img"
    assert sha(extracted) == sha(hole)
    assert extracted.stat().st_blocks * 512 < MIB  # GNU tar restores the holes
    assert verify_archive(archive).content_bytes == 64 * MIB


def test_a_sparse_file_is_unpacked_sparse(tmp_path):
    source = tmp_path / "src"
    source.mkdir()
    make_sparse(source / "db.sparse", 32 * MIB, {MIB: b"data" * 1024})
    archive, _ = archive_of(tmp_path, source, "zstd")
    staging = tmp_path / "staging"
    from pullback.common.archive.reader import TarStream

    for _ in range(2):  # and again over the first copy: a hole never fills up
        with (
            open(archive, "rb") as raw,
            TarStream(raw, "zstd") as stream,
            Unpacker(staging) as unpacker,
        ):
            for member in stream.members():
                unpacker.add(member, stream.read_data(member))
            unpacker.finish()
    copy = staging / "services/app/files/db.sparse"
    assert sha(copy) == sha(source / "db.sparse")
    assert copy.stat().st_size == 32 * MIB and copy.stat().st_blocks * 512 < MIB


@pytest.mark.parametrize("tail", [1, 100, 511])
def test_a_file_whose_only_hole_is_a_short_tail_unpacks_at_its_size(tmp_path, tail):
    """``truncate -s +100`` on a file of whole pages leaves its last 100 bytes a hole:
    the member's map and data (512 + 8192 bytes) are more than the file (8292), the
    unpacker made the file that long, and the host's whole archive was refused (any
    user of a client could stop its backups so). GNU tar, the format's oracle, extracts
    it at its size, as the unpacker now does."""
    source = tmp_path / "src"
    source.mkdir()
    grown = source / "grown"
    with open(grown, "wb") as handle:
        handle.write(b"a" * 8192)
        handle.truncate(8192 + tail)  # (the last block never written)
    assert grown.stat().st_blocks * 512 < grown.stat().st_size  # (it has a hole)
    archive, _ = archive_of(tmp_path, source)
    out = tmp_path / "gnu"
    out.mkdir()
    subprocess.run(["tar", "-xf", str(archive), "-C", str(out)], check=True)
    assert (out / "services/app/files/grown").stat().st_size == 8192 + tail
    unpack_into(tmp_path / "staging", archive, "none")
    copy = tmp_path / "staging/services/app/files/grown"
    assert copy.stat().st_size == 8192 + tail and sha(copy) == sha(grown)


def unpack_into(staging: Path, archive: Path, compression: str = "zstd"):
    """The statistics of ``archive`` unpacked over ``staging``."""
    from pullback.common.archive.reader import TarStream

    with (
        open(archive, "rb") as raw,
        TarStream(raw, compression) as stream,
        Unpacker(staging) as unpacker,
    ):
        for member in stream.members():
            unpacker.add(member, stream.read_data(member))
        return unpacker.finish()


def test_a_full_archives_unchanged_sparse_file_keeps_its_staging_file(tmp_path):
    """A full archive (a periodic one, or a pull that fell back) of a disk image that did
    not change leaves staging's file alone: same inode, nothing written, so the backend
    does not read it again. A change inside its data is written in place (the holes stay
    holes); data where a hole was writes it afresh."""
    source = tmp_path / "src"
    source.mkdir()
    image = source / "disk.img"
    make_sparse(image, 32 * MIB, {MIB: b"data" * 1024, 20 * MIB: b"more" * 2048})
    assert image.stat().st_blocks * 512 < MIB
    staging = tmp_path / "staging"
    copy = staging / "services/app/files/disk.img"
    archive, _ = archive_of(tmp_path, source, "zstd")
    first = unpack_into(staging, archive)
    assert first.written == 1
    inode = copy.stat().st_ino
    archive.unlink()

    archive, _ = archive_of(tmp_path, source, "zstd")  # the same image, a full archive again
    again = unpack_into(staging, archive)
    assert (again.written, again.unchanged) == (0, 1)
    assert copy.stat().st_ino == inode and sha(copy) == sha(image)
    archive.unlink()

    with open(image, "r+b") as handle:  # inside a data region
        handle.seek(20 * MIB + 100)
        handle.write(b"EDIT")
    archive, _ = archive_of(tmp_path, source, "zstd")
    edited = unpack_into(staging, archive)
    assert (edited.written, edited.unchanged) == (1, 0)
    assert copy.stat().st_ino == inode and sha(copy) == sha(image)
    assert copy.stat().st_blocks * 512 < MIB  # the holes stayed holes
    archive.unlink()

    with open(image, "r+b") as handle:  # a data region made a hole: the regions differ
        assert make_hole(handle.fileno(), MIB, 4096)
    archive, _ = archive_of(tmp_path, source, "zstd")
    moved = unpack_into(staging, archive)
    assert moved.written == 1
    assert sha(copy) == sha(image)  # (written in place, the old data would have stayed)
    assert copy.stat().st_blocks * 512 < MIB


def test_a_full_archives_unchanged_hard_linked_file_keeps_its_staging_inode(tmp_path):
    """A full archive of a hard-linked pair that did not change leaves staging's shared
    file alone (same inode: restic does not read it again). When the client broke the
    link and gave both names other bytes, each name gets its own bytes: the second name
    is not written into the inode the first one just wrote."""
    source = tmp_path / "src"
    source.mkdir()
    (source / "a").write_bytes(b"shared\n" * 1000)
    os.link(source / "a", source / "b")
    staging = tmp_path / "staging"
    files = staging / "services/app/files"
    for number in (1, 2):
        archive, _ = archive_of(tmp_path, source, "zstd")
        stats = unpack_into(staging, archive)
        archive.unlink()
        if number == 1:
            inode = (files / "a").stat().st_ino
    assert (stats.written, stats.unchanged) == (0, 2)
    assert (files / "a").stat().st_ino == (files / "b").stat().st_ino == inode

    (source / "b").unlink()  # the link broken: two files of other bytes
    (source / "a").write_bytes(b"first\n" * 500)
    (source / "b").write_bytes(b"second\n" * 700)
    archive, _ = archive_of(tmp_path, source, "zstd")
    stats = unpack_into(staging, archive)
    assert (files / "a").read_bytes() == (source / "a").read_bytes()
    assert (files / "b").read_bytes() == (source / "b").read_bytes()
    assert (files / "a").stat().st_nlink == (files / "b").stat().st_nlink == 1


def test_what_gnu_tar_writes_sparse_pullback_reads(tmp_path):
    make_sparse(tmp_path / "f", 10 * MIB, {3 * MIB: b"abc", 10 * MIB - 1: b"z"})
    archive = tmp_path / "gnu.tar"
    subprocess.run(
        ["tar", "--format=posix", "--sparse", "--sparse-version=1.0", "-cf", str(archive), "f"],
        cwd=tmp_path,
        check=True,
    )
    from pullback.common.archive.tarformat import TarReader

    with open(archive, "rb") as handle:
        reader = TarReader(handle)
        member = next(iter(reader))
        assert member.name == "f" and sparse.is_sparse(member.pax)
        data = sparse.SparseData(reader.chunks(), member.size, 10 * MIB)
        assert data.logical_digest().hexdigest() == sha(tmp_path / "f")


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        (b"2\n0\n10\n5\n10\n", "overlap"),  # the second region starts inside the first
        (b"1\n0\n99999999\n", "lie past the file"),
        (b"x\n", "not a list of numbers"),
        (b"70000\n", "not plausible"),
        (b"1\n0\n10\n", "does not add up"),  # the member holds no data after the map
    ],
)
def test_a_hostile_sparse_map_is_refused(body, problem):
    member_size = 512 + (10 if problem == "lie past the file" else 0)
    with pytest.raises(sparse.SparseMapError, match=problem):
        padded = body + bytes((-len(body)) % 512)
        sparse.SparseData(iter([padded]), member_size, 1000)


# -- FIFOs, devices, depth ----------------------------------------------------------------


def test_a_file_swapped_for_a_fifo_before_it_is_opened_is_skipped_not_waited_on(
    tmp_path, monkeypatch
):
    """A local user who may write below a backed-up path (an uploads directory) swaps a
    file for a FIFO between the walk's lstat and the open: the open waited for a writer
    that never came, and the client's run hung (the unit's timeout, or for ever)."""
    import signal

    source = tmp_path / "src"
    source.mkdir()
    (source / "upload.bin").write_bytes(b"x" * 100)
    (source / "other.txt").write_text("o")
    real = writer_module._open_noatime

    def swapped(at):
        if at.name == "upload.bin":
            os.unlink(at.shown)
            os.mkfifo(at.shown)
        return real(at)

    monkeypatch.setattr(writer_module, "_open_noatime", swapped)

    def hung(*_):
        raise TimeoutError("the writer waited on the FIFO")

    previous = signal.signal(signal.SIGALRM, hung)
    signal.alarm(10)
    try:
        archive, stats = archive_of(tmp_path, source)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    assert stats.warnings == [
        f"{source / 'upload.bin'}: skipped, no longer a regular file when opened (a FIFO)"
    ]
    with tarfile.open(archive) as tar:
        names = tar.getnames()
    assert "services/app/files/other.txt" in names
    assert "services/app/files/upload.bin" not in names


def secret_tree(tmp_path: Path) -> Path:
    secret = tmp_path / "root-only"
    secret.mkdir()
    (secret / "a.txt").write_text("root's secret\n")
    (secret / "token").write_text("root's token\n")
    return secret


def test_a_directory_swapped_for_a_symlink_before_it_is_opened_is_not_followed(
    tmp_path, monkeypatch
):
    """A user who may write below a backed-up path swaps a directory for a symlink to
    a directory of root's between the walk's look at it and its listing: the walk
    listed and archived root's files under the user's directory."""
    secret = secret_tree(tmp_path)
    source = tmp_path / "src"
    (source / "uploads").mkdir(parents=True)
    (source / "uploads" / "a.txt").write_text("mine\n")
    real = writer_module.anchored_dir

    def swapped(dir_fd, name, looked):
        if name == "uploads":
            os.rename(source / "uploads", source / "uploads.old")
            os.symlink(secret, source / "uploads")
        return real(dir_fd, name, looked)

    monkeypatch.setattr(writer_module, "anchored_dir", swapped)
    archive, stats = archive_of(tmp_path, source)
    with tarfile.open(archive) as tar:
        names = tar.getnames()
    assert not [n for n in names if "uploads" in n]  # nor its header, xattrs and all
    assert stats.warnings == [
        f"{source / 'uploads'}: replaced while being read; skipped with what is in it"
    ]


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give a directory to another user")
def test_a_configured_path_through_another_users_symlink_is_refused(tmp_path):
    """An outside attack: a user owning a directory on a configured path
    (``/srv/www/up/site/keys`` with ``up`` theirs) replaced ``site`` by a symlink to a
    directory of root's that also has a ``keys/``; no race needed: root's files were
    archived, exit 0, no warning. The path is now reached by descriptors from /,
    following only symlinks root alone could have made."""
    secret = tmp_path / "root-only"
    (secret / "keys").mkdir(parents=True)
    (secret / "keys" / "token").write_text("ROOT-ONLY-SECRET\n")
    up = tmp_path / "www" / "up"
    up.mkdir(parents=True)
    os.chown(up, 65534, 65534)  # nobody's
    os.symlink(secret, up / "site")
    os.lchown(up / "site", 65534, 65534)
    tmp_path.chmod(0o755)
    archive, stats = archive_of(tmp_path, up / "site" / "keys")
    with tarfile.open(archive) as tar:
        names = tar.getnames()
    assert not [n for n in names if "token" in n], names
    assert stats.warnings == [
        f"{up / 'site' / 'keys'}: skipped: {up / 'site'} on its way is a symlink another "
        "user could have made or swapped; name the real path"
    ]


def test_a_configured_path_through_roots_own_symlink_is_followed(tmp_path):
    """A symlink root made in a directory only root may write to (``/var/run`` ->
    ``/run``) is followed as before."""
    real = tmp_path / "real"
    (real / "data").mkdir(parents=True)
    (real / "data" / "a.txt").write_text("a\n")
    os.symlink(real, tmp_path / "link")
    archive, stats = archive_of(tmp_path, tmp_path / "link" / "data")
    assert stats.warnings == []
    with tarfile.open(archive) as tar:
        assert "services/app/files/a.txt" in tar.getnames()


def test_a_parent_swapped_for_a_symlink_during_the_walk_leads_nowhere(tmp_path, monkeypatch):
    """Once the walk is in a directory, a swap of that directory (or one above) for a
    symlink cannot redirect what it reads there: the files come from the directory it
    listed (moved aside), never from where the symlink points."""
    secret = secret_tree(tmp_path)
    source = tmp_path / "src"
    (source / "uploads").mkdir(parents=True)
    (source / "uploads" / "a.txt").write_text("mine\n")
    real = writer_module._open_noatime
    swapped = []

    def open_after_a_swap(at):
        if at.name == "a.txt" and not swapped:
            swapped.append(True)
            os.rename(source / "uploads", source / "uploads.old")
            os.symlink(secret, source / "uploads")
        return real(at)

    monkeypatch.setattr(writer_module, "_open_noatime", open_after_a_swap)
    archive, _ = archive_of(tmp_path, source)
    with tarfile.open(archive) as tar:
        data = tar.extractfile("services/app/files/uploads/a.txt").read()
    assert swapped and data == b"mine\n"


def test_a_tree_deeper_than_the_open_files_limit_is_walked_whole(tmp_path):
    """One descriptor a level: a tree 1,500 directories deep (over the usual soft
    limit of 1,024 open files) is archived to its bottom."""
    source = tmp_path / "src"
    source.mkdir()
    deep = str(source)
    for _ in range(1500):  # (os.makedirs recurses once a level)
        deep += "/d"
        os.mkdir(deep)
    Path(deep, "bottom.txt").write_text("here\n")
    try:
        archive, stats = archive_of(tmp_path, source)
    finally:  # bottom up: shutil.rmtree (pytest's clean-up too) recurses once a level
        os.unlink(f"{deep}/bottom.txt")
        while deep != str(source):
            os.rmdir(deep)
            deep = os.path.dirname(deep)
    assert stats.warnings == []
    with tarfile.open(archive) as tar:
        bottom = [n for n in tar.getnames() if n.endswith("bottom.txt")]
    assert len(bottom) == 1 and bottom[0].count("/d") == 1500


LOW_LIMIT_WALK = """
import json, sys
from pullback.common.archive.writer import ArchiveWriter
with ArchiveWriter(sys.argv[2], "none") as writer:
    stats = writer.add_tree(sys.argv[1], "services/app/files")
    writer.finish()
print(json.dumps(stats.warnings))
"""


def test_a_tree_deeper_than_a_low_hard_limit_is_cut_and_says_how_to_raise_it(tmp_path):
    """A hard open-files limit below what 2,000 levels need cuts the walk at (limit -
    256) levels, said with the unit's setting to raise (an outside attack found the
    warning silent on why). The walk runs in a child: a hard limit cannot be raised
    again without CAP_SYS_RESOURCE."""
    source = tmp_path / "src"
    source.mkdir()
    deep = str(source)
    for _ in range(400):
        deep += "/d"
        os.mkdir(deep)
    Path(deep, "bottom.txt").write_text("here\n")
    archive = tmp_path / "host-20260101T000000Z.tar"
    try:
        done = subprocess.run(
            [sys.executable, "-c", LOW_LIMIT_WALK, str(source), str(archive)],
            preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (600, 600)),
            capture_output=True,
            text=True,
            check=True,
        )
    finally:
        os.unlink(f"{deep}/bottom.txt")
        while deep != str(source):
            os.rmdir(deep)
            deep = os.path.dirname(deep)
    (warning,) = json.loads(done.stdout)
    assert warning.endswith(
        "skipped what is in it, deeper than 344 directories (one open file a level: the "
        "open-files limit allows no more; raise LimitNOFILE)"
    ), warning
    with tarfile.open(archive) as tar:
        assert max(n.count("/d") for n in tar.getnames()) == 344


LEASE_HOLDER = """
import fcntl, os, signal, sys, time
fd = os.open(sys.argv[1], os.O_RDWR)
gives_up = sys.argv[2] == "gives-up"
def broken(*_):
    if gives_up:
        time.sleep(0.3)
        fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_UNLCK)
signal.signal(signal.SIGIO, broken)
fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_WRLCK)
print("held", flush=True)
time.sleep(30)
"""


@pytest.mark.parametrize("holder", ["gives-up", "holds-on"])
def test_a_file_under_another_process_lease_is_waited_for_a_while(tmp_path, monkeypatch, holder):
    """A write lease (an NFS delegation, a Samba oplock): the open without waiting
    (O_NONBLOCK, for FIFOs) fails at once; it is tried again while the holder gives the
    lease up (read whole), for at most LEASE_WAIT (skipped, said)."""
    import subprocess
    import sys

    monkeypatch.setattr(writer_module, "LEASE_WAIT", 2.0)
    source = tmp_path / "src"
    source.mkdir()
    leased = source / "leased.db"
    leased.write_bytes(b"rows\n")
    child = subprocess.Popen(
        [sys.executable, "-c", LEASE_HOLDER, str(leased), holder],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout.readline().strip() == "held"
        archive, stats = archive_of(tmp_path, source)
    finally:
        child.kill()
        child.wait()
    with tarfile.open(archive) as tar:
        names = tar.getnames()
    if holder == "gives-up":
        assert stats.warnings == []
        assert "services/app/files/leased.db" in names
    else:
        assert stats.warnings == [
            f"{leased}: skipped, another process held a lease on it for 2 s (a file server?)"
        ]
        assert "services/app/files/leased.db" not in names


def test_fifos_are_kept_sockets_are_skipped(tmp_path):
    import socket

    source = tmp_path / "src"
    source.mkdir()
    os.mkfifo(source / "fifo")
    os.chmod(source / "fifo", 0o620)
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(source / "sock"))
    (source / "file").write_text("f")
    try:
        archive, stats = archive_of(tmp_path, source)
    finally:
        listener.close()
    assert stats.warnings == [f"{source / 'sock'}: skipped, a socket is not backed up"]
    with tarfile.open(archive) as tar:
        fifo = tar.getmember("services/app/files/fifo")
    assert fifo.isfifo() and fifo.mode == 0o620
    staging = tmp_path / "staging"
    with open(archive, "rb") as raw, Unpacker(staging) as unpacker:
        from pullback.common.archive.reader import TarStream

        with TarStream(raw, "none") as stream:
            for member in stream.members():
                unpacker.add(member, stream.read_data(member))
        unpacker.finish()
    assert stat.S_ISFIFO(os.lstat(staging / "services/app/files/fifo").st_mode)


def test_a_path_too_deep_to_back_up_is_skipped_and_named(tmp_path):
    source = tmp_path / "src"
    source.mkdir()
    (source / "shallow").write_text("kept")
    # directories of 200-byte names, made relative to each other: the whole path is
    # longer than the archive may hold, though each step is a legal name
    fd = os.open(source, os.O_RDONLY | os.O_DIRECTORY)
    depth = MAX_ARCNAME // 201 + 1
    for _ in range(depth):
        os.mkdir("d" * 200, dir_fd=fd)
        next_fd = os.open("d" * 200, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
        os.close(fd)
        fd = next_fd
    os.close(fd)
    archive, stats = archive_of(tmp_path, source)
    assert len(stats.warnings) == 1
    assert "skipped, its path is too long to back up" in stats.warnings[0]
    assert f"at most {MAX_ARCNAME})" in stats.warnings[0]
    with tarfile.open(archive) as tar:
        names = tar.getnames()
    assert "services/app/files/shallow" in names
    assert all(len(os.fsencode(n)) <= MAX_ARCNAME for n in names)


def test_an_entry_too_long_for_the_kernel_is_skipped_not_fatal(tmp_path):
    # the parent is still archived (under 4000 bytes), its child's absolute path is past
    # PATH_MAX (4096): even stat() of it fails, and that must cost only the child
    source = tmp_path / "src"
    source.mkdir()
    (source / "shallow").write_text("kept")
    fd = os.open(source, os.O_RDONLY | os.O_DIRECTORY)
    left = 3950 - len(os.fsencode(str(source)))
    while left > 0:
        name = "p" * min(200, left - 1) if left > 1 else "p"
        os.mkdir(name, dir_fd=fd)
        next_fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
        os.close(fd)
        fd = next_fd
        left -= len(name) + 1
    os.mkdir("c" * 200, dir_fd=fd)
    os.close(fd)
    archive, stats = archive_of(tmp_path, source)
    assert len(stats.warnings) == 1, stats.warnings
    assert "skipped, its path is too long to back up" in stats.warnings[0]
    with tarfile.open(archive) as tar:
        assert "services/app/files/shallow" in tar.getnames()


@pytest.mark.parametrize("failure", ["shrank", "eio"])
def test_a_file_read_short_is_padded_with_zeros_and_says_why(tmp_path, monkeypatch, failure):
    """One rule for bytes that cannot be read once a header or a proof promised them
    (``writer._padded``, beside the whole streamed file's ``_copy_data``): zeros to the
    promised end, and one warning naming why."""
    path = tmp_path / "f"
    path.write_bytes(b"x" * (3 * MIB))
    real = os.pread

    def eio(fd, length, offset):
        if offset >= 2 * MIB:
            raise OSError(errno.EIO, "Input/output error")
        return real(fd, length, offset)

    if failure == "shrank":
        os.truncate(path, 2 * MIB)
    else:
        monkeypatch.setattr(os, "pread", eio)
    warnings: list[str] = []
    fd = os.open(path, os.O_RDONLY)
    try:
        got = b"".join(writer_module._padded(fd, MIB, 3 * MIB, warnings))
    finally:
        os.close(fd)
    assert got == b"x" * MIB + bytes(MIB)
    assert warnings == [
        {
            "shrank": "shrank while being read; padded with zeros",
            "eio": "read failed: Input/output error; padded with zeros",
        }[failure]
    ]


def test_a_data_map_past_its_bound_merges_its_smallest_holes_and_counts_them_all(tmp_path):
    """A file with more regions than the map may list (InnoDB's page compression punches
    a hole in every page; a VM image of 100,000 extents) travelled whole, and the server
    wrote every hole as zeros (helper-157 F3). Past the bound neighbours are merged, the
    smallest holes first (taken as data), the large holes kept; the holes are still
    counted exactly, and ``most=0`` lists none."""
    path = tmp_path / "punched"
    with open(path, "wb") as handle:
        for i in range(20):  # 20 pages, a page apart: holes of 4 KiB
            handle.seek(i * 8192)
            handle.write(b"x" * 4096)
        for i in range(10):  # then ten, 1 MiB apart
            handle.seek(8 * MIB + i * MIB)
            handle.write(b"y")
        handle.truncate(20 * MIB)
    fd = os.open(path, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        listed, holes = sparse.data_map(fd, size)
        assert listed is not None and len(listed) == 31  # thirty regions and the end mark
        assert holes == size - sum(r.length for r in listed) > 18 * MIB
        merged, counted = sparse.data_map(fd, size, most=11)
        assert counted == holes  # (the holes taken as data still count as holes)
        # the 4 KiB holes merged into one region; the 1 MiB holes kept
        assert merged == [sparse.Region(0, 39 * 4096), *listed[20:]]
        fewer, _ = sparse.data_map(fd, size, most=3)
        assert fewer is not None and len(fewer) <= 4 and fewer[-1] == sparse.Region(size, 0)
        covered = {o for r in fewer for o in range(r.offset, r.offset + r.length, 4096)}
        assert all(r.offset in covered for r in listed[:-1])  # every byte of data in it
        assert sparse.data_map(fd, size, most=0) == (None, holes)
        assert sparse.data_map(fd, size, most=30)[0] == listed
        assert os.lseek(fd, 0, os.SEEK_CUR) == 0
    finally:
        os.close(fd)
    dense = tmp_path / "dense"
    dense.write_bytes(b"y" * 8192)
    fd = os.open(dense, os.O_RDONLY)
    try:
        assert sparse.data_map(fd, 8192, most=3) == (None, 0)
    finally:
        os.close(fd)
