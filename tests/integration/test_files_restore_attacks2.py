"""Outside review (helper-64) of the files restore's changes of 2026-12-03.

The two-descriptor walk (InStep) raced by a real hostile owner (a forked child that is
``nobody``, acting on the live tree by a descriptor it opened before it dropped root), the
sparse compare on ext4 and tmpfs with random maps, the nested-kind refusals, the
``--from DIR`` manifest check, and the systemd task that holds no data. Each test asserts
a promise of docs/restore.md or of the code's docstrings; a promise that did not hold was
marked ``xfail(strict=True)`` until mended; none is marked now. No
mocks, except one where a race is forced (said in its docstring).
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import logging
import os
import random
import re
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pullback.client.restore import check_listed
from pullback.common.archive import tree_list
from pullback.common.archive.manifest import MANIFEST_NAME, format_line
from pullback.common.archive.sparse import data_regions
from pullback.common.errors import PullbackError, UsageError
from pullback.plugins import before_restore, files
from pullback.plugins.before_restore import find_replaced, keep_aside
from pullback.plugins.task import TaskError
from tests.integration.test_files_restore import Restore, live_state

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="owners, users and mounts need root")

NOBODY = 65534
RACE_SECONDS = float(os.environ.get("PULLBACK_RACE_SECONDS", "4"))
"""How long each race runs: 4 s in CI (the hits before the fixes came within a second
or two: 79-335 restores at about 300 a second), as long as you like by the variable
(the attack ran them 10-20 s each)."""
SECRET = b"SECRET-OUTSIDE-THE-TREE"


# --- helpers -----------------------------------------------------------------------


def chown_tree(root: Path, uid: int) -> None:
    os.lchown(root, uid, uid)
    for directory, dirs, names in os.walk(root):
        for name in dirs + names:
            os.lchown(os.path.join(directory, name), uid, uid)


@contextlib.contextmanager
def hostile(top: Path, act, seconds: float = 60.0):
    """A forked child that opens ``top`` as root, becomes ``nobody`` and calls
    ``act(fd)`` in a loop (the tree's owner racing the restore) until it is stopped."""
    fd = os.open(top, os.O_RDONLY | os.O_DIRECTORY)
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        code = 0
        try:
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            deadline = time.monotonic() + seconds
            while time.monotonic() < deadline:
                with contextlib.suppress(OSError):
                    act(fd)
        except BaseException:
            code = 1
        os._exit(code)
    os.close(fd)
    try:
        yield pid
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)


def scan_and_keep(r: Restore, live: Path) -> str:
    """The scan and the keep of one restore (not its cp: the docs say the tree's owner
    can race cp), in this process; 'kept', 'nothing' or 'refused'."""
    plan = r.plan(stamp=f"{time.time_ns()}")
    try:
        found = [find_replaced(r.copy, live)]
        kept = keep_aside("files", logging.getLogger("t"), found, plan, r.snapshot)
    except TaskError:
        return "refused"
    return "kept" if kept else "nothing"


def all_kept_bytes(r: Restore) -> list[bytes]:
    out = []
    for kept_dir in r.kept_dirs():
        for p in kept_dir.rglob("*"):
            if p.is_file() and not p.is_symlink():
                out.append(p.read_bytes())
    return out


def deep_tree(r: Restore, depth: int = 12) -> tuple[list[str], Path]:
    """A chain d0/d1/.../dN below the live tree, each level holding ``f`` that differs
    from the snapshot's, all the user's; and a root-only directory outside with the same
    names holding a secret (where a symlink swapped in would lead)."""
    rels = []
    rel = "chain"
    for level in range(depth):
        rel = f"{rel}/d{level}"
        rels.append(rel)
        r.both(f"{rel}/f", b"snapshot %d" % level, b"live, edited %d" % level)
    outside = r.live.parent.parent / "outside"
    for level in range(depth):
        target = outside / "/".join(f"d{i}" for i in range(level + 1))
        target.mkdir(parents=True, exist_ok=True)
        (target / "f").write_bytes(SECRET + b" %d" % level)
        (target / "f").chmod(0o600)
    outside.chmod(0o700)
    chown_tree(r.live, NOBODY)
    return rels, outside


def outside_state(outside: Path) -> dict[str, tuple[bytes, dict]]:
    state = {}
    for p in sorted(outside.rglob("*")):
        if p.is_file():
            xattrs = {n: os.getxattr(p, n) for n in os.listxattr(p)}
            state[str(p)] = (p.read_bytes(), xattrs)
    return state


# --- 1. the walk (InStep) raced by the tree's owner ----------------------------------


def test_race_owner_swaps_directories_for_symlinks_out_reads_nothing_outside(tmp_path):
    """The owner loops: chain/d0 renamed away and a symlink to the root-only outside tree
        put in its place, then back; deeper, d3 renamed to d3.x and back; a file swapped for a
        symlink to the outside secret. Meanwhile the scan and the keep run again and again:
        no secret is ever read into a kept directory, the outside tree is untouched, and
        a run either refuses or keeps what it finds (or finds nothing: d0 was renamed away
    at its look, and cp would make a new one beside the owner's)."""
    r = Restore(tmp_path)
    _, outside = deep_tree(r)
    before = outside_state(outside)

    def act(fd: int) -> None:
        c = os.open("chain", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
        try:
            os.rename("d0", "d0.x", src_dir_fd=c, dst_dir_fd=c)
            os.symlink(str(outside / "d0"), "d0", dir_fd=c)
            os.unlink("d0", dir_fd=c)
            os.rename("d0.x", "d0", src_dir_fd=c, dst_dir_fd=c)
            d2 = os.open("d0/d1/d2", os.O_RDONLY | os.O_DIRECTORY, dir_fd=c)
            os.rename("d3", "d3.x", src_dir_fd=d2, dst_dir_fd=d2)
            os.rename("d3.x", "d3", src_dir_fd=d2, dst_dir_fd=d2)
            d4 = os.open("d3/d4", os.O_RDONLY | os.O_DIRECTORY, dir_fd=d2)
            os.rename("f", "f.x", src_dir_fd=d4, dst_dir_fd=d4)
            os.symlink(str(outside / "d0/d1/d2/d3/d4/f"), "f", dir_fd=d4)
            os.unlink("f", dir_fd=d4)
            os.rename("f.x", "f", src_dir_fd=d4, dst_dir_fd=d4)
            os.close(d4)
            os.close(d2)
        finally:
            os.close(c)

    outcomes: dict[str, int] = {}
    descriptors = len(os.listdir("/proc/self/fd"))
    with hostile(r.live, act, seconds=RACE_SECONDS + 25):
        deadline = time.monotonic() + RACE_SECONDS
        while time.monotonic() < deadline:
            outcome = scan_and_keep(r, r.live)
            outcomes[outcome] = outcomes.get(outcome, 0) + 1
    print("outcomes", outcomes, "kept dirs", len(r.kept_dirs()))
    # none left open by a refusal (fewer is no leak: a CI run saw 14 after 18, the
    # worker's earlier tests' files closed by the collector meanwhile)
    assert len(os.listdir("/proc/self/fd")) <= descriptors
    assert not any(SECRET in data for data in all_kept_bytes(r))
    assert outside_state(outside) == before
    assert outcomes.get("kept", 0) > 0 and outcomes.get("refused", 0) > 0


def test_race_every_file_kept_is_whole_and_the_live_bytes_of_its_name(tmp_path):
    """The owner rewrites chain's files (each with one of two contents of its own) and
    renames directories while the scan and the keep run: each kept file holds one of the
    contents the owner gave that very name, never another file's, never a part."""
    r = Restore(tmp_path)
    rels, _ = deep_tree(r, depth=6)
    contents = {
        rel: [b"A %s " % rel.encode() * 5000, b"B %s " % rel.encode() * 7000] for rel in rels
    }
    for rel in rels:
        (r.live / rel / "f").write_bytes(contents[rel][0])
    chown_tree(r.live, NOBODY)

    def act(fd: int) -> None:
        for rel in rels:
            d = os.open(rel, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            try:
                which = random.randrange(2)
                tmp = os.open("f.new", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644, dir_fd=d)
                os.write(tmp, contents[rel][which])
                os.close(tmp)
                os.rename("f.new", "f", src_dir_fd=d, dst_dir_fd=d)
            finally:
                os.close(d)
        c = os.open("chain/d0/d1", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
        os.rename("d2", "d2.x", src_dir_fd=c, dst_dir_fd=c)
        os.rename("d2.x", "d2", src_dir_fd=c, dst_dir_fd=c)
        os.close(c)

    with hostile(r.live, act, seconds=RACE_SECONDS + 20):
        deadline = time.monotonic() + RACE_SECONDS
        while time.monotonic() < deadline:
            scan_and_keep(r, r.live)
    checked = 0
    for kept_dir in r.kept_dirs():
        base = r.kept("", kept_dir)
        for rel in rels:
            kept = base / rel / "f"
            if kept.exists():
                assert kept.read_bytes() in contents[rel], rel
                checked += 1
    assert checked > 0


def test_race_the_attribute_pass_removes_nothing_outside_through_swapped_dirs(tmp_path):
    """After cp, _same_xattrs walks the live tree and removes the attributes the copy
    lacks. The owner swaps chain/d0 (and a file deep down) for symlinks into a root-only
    tree outside whose files carry user.* attributes: none of them is ever removed."""
    r = Restore(tmp_path)
    _, outside = deep_tree(r, depth=8)
    for p in outside.rglob("f"):
        os.setxattr(p, "user.keepme", b"outside")
    r.restore_here(r.plan())  # the tree is the snapshot's now, the user's again after
    chown_tree(r.live, NOBODY)
    before = outside_state(outside)

    def act(fd: int) -> None:
        c = os.open("chain", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
        try:
            os.rename("d0", "d0.x", src_dir_fd=c, dst_dir_fd=c)
            os.symlink(str(outside / "d0"), "d0", dir_fd=c)
            os.unlink("d0", dir_fd=c)
            os.rename("d0.x", "d0", src_dir_fd=c, dst_dir_fd=c)
        finally:
            os.close(c)

    results: dict[str, int] = {}
    with hostile(r.live, act, seconds=RACE_SECONDS + 20):
        deadline = time.monotonic() + RACE_SECONDS
        while time.monotonic() < deadline:
            try:
                files._same_xattrs(r.copy, r.live)
                results["ok"] = results.get("ok", 0) + 1
            except TaskError:
                results["stopped"] = results.get("stopped", 0) + 1
    print("xattr passes", results)
    assert outside_state(outside) == before


def test_a_bind_mount_of_etc_inside_the_tree_is_walked_back_up_and_etc_is_read_only(tmp_path):
    """A bind mount (root's) of a directory outside at a name the snapshot has: the walk
    goes into it and back up through ".." (the mount point's parent, as it came down);
    the scan reads, never writes, and the keep copies only what differs."""
    r = Restore(tmp_path)
    elsewhere = tmp_path / "etc-like"
    elsewhere.mkdir()
    (elsewhere / "same").write_bytes(b"same")
    (elsewhere / "other").write_bytes(b"live other")
    (r.live / "mnt").mkdir()
    r.both("mnt/same", b"same", b"same")
    r.both("mnt/other", b"snapshot other", b"x")
    r.both("zz-after/f", b"snap", b"live after the mount")
    subprocess.run(["mount", "--bind", str(elsewhere), str(r.live / "mnt")], check=True)
    try:
        found = find_replaced(r.copy, r.live)
        names = sorted("/".join(e.names) for e in found.entries)
        assert "mnt/other" in names and "zz-after/f" in names and "mnt/same" not in names
        keep_aside("files", logging.getLogger("t"), [found], r.plan(), r.snapshot)
        assert r.kept("mnt/other").read_bytes() == b"live other"
        assert (elsewhere / "other").read_bytes() == b"live other"
    finally:
        subprocess.run(["umount", "-l", str(r.live / "mnt")], check=False)


def test_a_directory_replaced_by_a_symlink_to_slash_is_refused_before_anything(tmp_path):
    r = Restore(tmp_path)
    r.both("data/deep/er/etc/hostname", b"snap", b"live")
    (r.live / "data/deep/er/etc/hostname").unlink()
    (r.live / "data/deep/er/etc").rmdir()
    (r.live / "data/deep/er/etc").symlink_to("/etc")
    before = live_state(r.live)
    hostname = Path("/etc/hostname").read_bytes()
    with pytest.raises(TaskError, match="is a symlink where the snapshot has a directory"):
        r.restore_here(r.plan())
    assert live_state(r.live) == before and Path("/etc/hostname").read_bytes() == hostname
    assert r.kept_dirs() == []


class Nested:
    """A task path ``srv/data/sub/data`` whose parent ``sub`` (and all below ``srv/data``)
    the user ``nobody`` owns; its snapshot copy with ``same`` (the live bytes) and
    ``secret`` (other); and, outside, a root-only ``outside/data`` with the same names:
    ``same`` of the snapshot's bytes carrying ``user.keepme`` (which the copy lacks), and
    ``secret`` holding a secret. A symlink ``sub -> outside`` makes the task path lead
    there."""

    def __init__(self, tmp_path: Path):
        self.r = Restore(tmp_path)
        self.path = self.r.live / "sub/data"
        self.copy = self.r.snapshot / "services/app/files" / str(self.path).lstrip("/")
        self.copy.mkdir(parents=True)
        self.path.mkdir(parents=True)
        for root, secret in ((self.copy, b"snapshot secret"), (self.path, b"live secret")):
            (root / "same").write_bytes(b"same bytes")
            (root / "secret").write_bytes(secret)
        self.outside = tmp_path / "outside"
        (self.outside / "data").mkdir(parents=True)
        (self.outside / "data/same").write_bytes(b"same bytes")
        os.setxattr(self.outside / "data/same", "user.keepme", b"outside")
        (self.outside / "data/secret").write_bytes(SECRET)
        self.outside.chmod(0o700)
        chown_tree(self.r.live, NOBODY)
        self.before = outside_state(self.outside)

    def swap(self) -> None:
        """What the owner of srv/data does (as nobody): sub for a symlink to outside."""
        (self.r.live / "sub").rename(self.r.live / "sub.x")
        (self.r.live / "sub").symlink_to(self.outside)
        os.lchown(self.r.live / "sub", NOBODY, NOBODY)

    def restore(self, plan=None) -> None:
        files.restore_paths(
            self.r.task(),
            [str(self.path)],
            self.r.snapshot / "services/app/files",
            None,
            plan or self.r.plan(stamp=f"{time.time_ns()}"),
        )


def test_a_parent_swapped_for_a_symlink_after_cp_leads_the_attribute_pass_nowhere(tmp_path):
    n = Nested(tmp_path)
    above = files._a_place_of_its_own(n.path)  # the restore's check, as restore_paths
    n.restore()  # checked, kept, copied: the tree is the snapshot's now
    n.swap()  # then, before the attribute pass, the owner of sub/ acts
    with contextlib.suppress(TaskError):
        files._same_xattrs(n.copy, n.path, above)
    assert outside_state(n.outside) == n.before


def test_a_parent_swapped_for_a_symlink_after_the_check_reads_nothing_outside(tmp_path):
    n = Nested(tmp_path)
    above = files._a_place_of_its_own(n.path)  # the restore's check: sub/ is a directory
    n.swap()
    with contextlib.suppress(TaskError):
        found = find_replaced(n.copy, n.path, above)
        keep_aside("files", logging.getLogger("t"), [found], n.r.plan(), n.r.snapshot)
    assert not any(SECRET in data for data in all_kept_bytes(n.r))


def test_a_parent_missing_at_the_check_and_a_symlink_at_the_scan_reads_nothing_outside(
    tmp_path, monkeypatch
):
    """The race the test below lost about 1 run of 4 (2026-12-04), forced: the owner of
    srv/data has ``sub`` renamed away while the restore checks the path (no directory
    to pin), and a symlink to the outside tree there when it compares. The check's
    answer is wrapped to act between the two (a forced race, said here)."""
    n = Nested(tmp_path)
    checked = files._a_place_of_its_own

    def check_then_swap(destination: Path):
        (n.r.live / "sub").rename(n.r.live / "sub.x")
        above = checked(destination)
        (n.r.live / "sub").symlink_to(n.outside)
        return above

    monkeypatch.setattr(files, "_a_place_of_its_own", check_then_swap)
    with pytest.raises(TaskError, match="appeared while the restore checked it"):
        n.restore()
    assert not any(SECRET in data for data in all_kept_bytes(n.r))
    assert outside_state(n.outside) == n.before


def test_race_a_parent_toggled_by_its_owner_during_real_restores_touches_nothing_outside(
    tmp_path,
):
    n = Nested(tmp_path)
    outside = str(n.outside)

    def act(fd: int) -> None:
        if os.path.lexists(f"/proc/self/fd/{fd}/sub.x"):  # cp's parents made a root sub/
            os.rename("sub", f"sub.{time.time_ns()}", src_dir_fd=fd, dst_dir_fd=fd)
            os.rename("sub.x", "sub", src_dir_fd=fd, dst_dir_fd=fd)
        os.rename("sub", "sub.x", src_dir_fd=fd, dst_dir_fd=fd)
        os.symlink(outside, "sub", dir_fd=fd)
        os.unlink("sub", dir_fd=fd)
        os.rename("sub.x", "sub", src_dir_fd=fd, dst_dir_fd=fd)

    outcomes: dict[str, int] = {}
    with hostile(n.r.live, act, seconds=RACE_SECONDS + 25):
        deadline = time.monotonic() + RACE_SECONDS
        while time.monotonic() < deadline:
            try:
                n.restore()
                outcome = "restored"
            except PullbackError as exc:  # a refusal, or cp failing half-way
                outcome = f"{type(exc).__name__}: {str(exc).split(':')[0][-40:]}"
            except OSError as exc:  # cp's mkdir of the path, its parent renamed away
                outcome = f"{type(exc).__name__} (not a TaskError)"
            outcomes[outcome] = outcomes.get(outcome, 0) + 1
            if hit(n):
                break
    print("outcomes", outcomes)
    assert not hit(n)


def test_a_parent_the_restore_makes_and_its_owner_swaps_for_a_symlink_leads_nowhere(
    tmp_path, monkeypatch
):
    """A forced race (said here): ``sub`` is missing, the restore makes it (the
    snapshot's ``sub`` is nobody's, 0777), and the owner of the directory above swaps
    the new directory for a symlink to the root-only outside tree before its owner and
    mode are set. Parents were made by name and then chowned and chmodded by name,
    which would hand the outside tree to nobody; now refused, outside untouched."""
    n = Nested(tmp_path)
    for entry in sorted((n.r.live / "sub").rglob("*"), reverse=True):
        entry.unlink() if entry.is_file() else entry.rmdir()
    (n.r.live / "sub").rmdir()
    os.chown(n.copy.parent, NOBODY, NOBODY)
    n.copy.parent.chmod(0o777)
    real_mkdir = os.mkdir

    def mkdir_then_swap(name, mode=0o777, *, dir_fd=None):
        real_mkdir(name, mode, dir_fd=dir_fd)
        if os.path.basename(name) == "sub":  # as the owner of srv/data (by name or fd)
            os.rename(name, f"{name}.x", src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
            os.symlink(n.outside, name, dir_fd=dir_fd)

    monkeypatch.setattr(os, "mkdir", mkdir_then_swap)
    refusal = ""
    try:
        n.restore()
    except TaskError as exc:
        refusal = str(exc)
    monkeypatch.undo()
    st = n.outside.stat()
    assert (stat.S_IMODE(st.st_mode), st.st_uid) == (0o700, 0)
    assert outside_state(n.outside) == n.before
    assert re.search(r"cannot restore .*sub/data: Not a directory", refusal)


def hit(n: Nested) -> bool:
    """Whether the outside tree's secret is in a kept directory, or its ``same`` lost an
    attribute (cp writing through the symlink is the documented limit: not counted)."""
    same = str(n.outside / "data/same")
    lost = outside_state(n.outside).get(same, (b"", {}))[1] != n.before[same][1]
    return lost or any(SECRET in data for data in all_kept_bytes(n.r))


# --- 2. the sparse compare -----------------------------------------------------------

_libc = ctypes.CDLL(None, use_errno=True)
_PUNCH = 0x01 | 0x02  # FALLOC_FL_KEEP_SIZE | FALLOC_FL_PUNCH_HOLE


def punch(fd: int, offset: int, length: int) -> None:
    _libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_long, ctypes.c_long]
    if _libc.fallocate(fd, _PUNCH, offset, length) != 0:
        raise OSError(ctypes.get_errno(), "fallocate")


def write_map(path: Path, content: bytes, dense: list[tuple[int, int]], zeros_too: bool) -> None:
    """``content`` written only in ``dense`` ranges (holes elsewhere; zeros elsewhere in
    ``content`` are not written), sometimes over a preallocated (unwritten) extent;
    optionally every zero range written as data too, then a few random punches of
    ranges that are zeros in ``content``."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.ftruncate(fd, len(content))
        if random.random() < 0.3:  # unwritten extents, then data written into parts
            a = random.randrange(len(content))
            os.posix_fallocate(fd, a, min(len(content) - a, random.randrange(1, 300000)))
        for start, end in dense:
            os.pwrite(fd, content[start:end], start)
        if zeros_too:
            os.pwrite(fd, content, 0)
            for _ in range(2):
                a = random.randrange(len(content))
                b = min(len(content), a + random.randrange(1, 40000))
                if not content[a:b].strip(b"\0"):
                    punch(fd, a, b - a)
    finally:
        os.close(fd)


def random_content(size: int) -> tuple[bytes, list[tuple[int, int]]]:
    buf = bytearray(size)
    ranges = []
    for _ in range(random.randrange(0, 5)):
        start = random.randrange(size)
        end = min(size, start + random.randrange(1, 20000))
        buf[start:end] = os.urandom(end - start)
        ranges.append((start, end))
    return bytes(buf), ranges


def compare_many(where: Path, cases: int, seed: int) -> tuple[int, int, int]:
    """Equal pairs seen, other pairs seen, equal pairs whose maps of data differ."""
    random.seed(seed)
    equal_seen = differ_seen = maps_differ = 0
    for case in range(cases):
        size = random.choice([1, 4095, 4096, 4097, 65536, 200_001, 1 << 20])
        size = random.randrange(1, size + 1) if case % 3 else size
        content, ranges = random_content(size)
        mine = bytearray(content)
        if case % 2:  # one byte other somewhere, often past the other's last data
            spot = random.randrange(size)
            mine[spot] = (mine[spot] + 1 + random.randrange(255)) % 256
        a, b = where / f"a{case}", where / f"b{case}"
        write_map(a, bytes(mine), [*ranges, (0, 0)], zeros_too=random.random() < 0.4)
        if case % 2:  # the other byte must be data in mine
            os.truncate(a, size)
            with open(a, "r+b") as fh:
                fh.seek(spot)
                fh.write(bytes([mine[spot]]))
        shuffled = [(s, e) for s, e in ranges if random.random() < 0.7]
        write_map(b, content, [*shuffled, (0, 0)], zeros_too=random.random() < 0.5)
        if not random.randrange(4):
            os.sync()  # delalloc pages written out: the map from the disk, not the cache
        expected = a.read_bytes() == b.read_bytes()
        fa, fb = os.open(a, os.O_RDONLY), os.open(b, os.O_RDONLY)
        try:
            regions = [data_regions(f, size) for f in (fa, fb)]
            maps_differ += expected and regions[0] != regions[1]
            got = before_restore.same_bytes(fa, fb)
            assert got == before_restore.same_bytes(fb, fa)
        finally:
            os.close(fa)
            os.close(fb)
        assert got == expected, (case, size, ranges, shuffled)
        equal_seen += expected
        differ_seen += not expected
        a.unlink()
        b.unlink()
    return equal_seen, differ_seen, maps_differ


def test_sparse_compare_random_maps_on_ext4(tmp_path):
    """/tmp's file system (ext4 here, delayed allocation): 1000 pairs of one size, holes
    and data in other places, zeros written as data or punched, one byte other in half
    of them (anywhere: in a hole of the other, past the other's last data, unaligned):
    equal exactly when their bytes are."""
    assert subprocess.run(
        ["stat", "-f", "-c", "%T", str(tmp_path)], capture_output=True, text=True
    ).stdout.strip() in (
        "ext2/ext3",
        "ext4",
        "xfs",
        "btrfs",
    )
    equal, differ, maps = compare_many(tmp_path, 1000, seed=64)
    print(f"ext4: {equal} equal ({maps} of other maps), {differ} other")
    assert equal > 100 and differ > 100 and maps > 50


@pytest.fixture
def tmpfs(tmp_path):
    mount = tmp_path / "tmpfs"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(mount)], check=True)
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def test_sparse_compare_random_maps_on_tmpfs(tmpfs):
    equal, differ, maps = compare_many(tmpfs, 1000, seed=65)
    print(f"tmpfs: {equal} equal ({maps} of other maps), {differ} other")
    assert equal > 100 and differ > 100 and maps > 50


def test_sparse_compare_across_file_systems_tmpfs_live_ext4_copy(tmp_path, tmpfs):
    """The live file on tmpfs (holes by page), the snapshot's on ext4 (by block), data
    in one only past the other's last data: compared where either holds data."""
    size = 3 * 1024 * 1024 + 5
    live, copy = tmpfs / "f", tmp_path / "f"
    for path in (live, copy):
        with open(path, "wb") as fh:
            fh.truncate(size)
            fh.seek(100)
            fh.write(b"same start")
    with open(live, "r+b") as fh:  # one byte past the copy's last data, in a hole of it
        fh.seek(size - 1)
        fh.write(b"\1")
    fa, fb = os.open(live, os.O_RDONLY), os.open(copy, os.O_RDONLY)
    try:
        assert not before_restore.same_bytes(fa, fb)
        assert not before_restore.same_bytes(fb, fa)
    finally:
        os.close(fa)
        os.close(fb)


def test_a_live_file_shrunk_and_grown_back_during_the_compare_is_kept(tmp_path, monkeypatch):
    """Forced race (a mock, to hit the window): the live file, the snapshot's size and
    bytes at the look, is truncated and written back to the same size with other bytes
    in its second half as the compare reads the first. It is never called equal."""
    r = Restore(tmp_path)
    data = os.urandom(3 * before_restore._PIECE)
    r.both("big", data, data)
    real = before_restore._same_span
    done = []

    def racing(mine, theirs, start, end):
        if not done:
            done.append(1)
            os.truncate(r.live / "big", before_restore._PIECE)
            with open(r.live / "big", "ab") as fh:
                fh.write(b"\7" * (2 * before_restore._PIECE))
        return real(mine, theirs, start, end)

    monkeypatch.setattr(before_restore, "_same_span", racing)
    found = find_replaced(r.copy, r.live)
    assert ("big",) in [e.names for e in found.entries]


def test_a_device_node_of_other_numbers_is_kept_before_cp_replaces_it(tmp_path):
    r = Restore(tmp_path)
    os.mknod(r.copy / "data/dev", stat.S_IFCHR | 0o600, os.makedev(1, 3))
    os.mknod(r.live / "data/dev", stat.S_IFCHR | 0o600, os.makedev(1, 5))
    found = find_replaced(r.copy, r.live)
    assert ("data", "dev") in [e.names for e in found.entries]


# --- 3. the nested-kind refusals -------------------------------------------------------


@pytest.mark.parametrize("dry_run", [False, True])
def test_a_clash_in_a_later_path_refuses_before_the_first_is_kept_or_replaced(
    tmp_path, dry_run, caplog
):
    r = Restore(tmp_path)
    r.both("etc/app/config.ini", b"snapshot config", b"live config, edited")
    r.both("data/deep/er/x/y/z", b"snap", b"x")
    (r.live / "data/deep/er/x/y/z").unlink()
    (r.live / "data/deep/er/x/y").rmdir()
    (r.live / "data/deep/er/x/y").write_bytes(b"a file where the snapshot has a directory")
    before = live_state(r.live)
    plan = r.plan()
    plan.dry_run = dry_run
    paths = [str(r.live / "etc"), str(r.live / "data")]
    with pytest.raises(TaskError, match=r"x/y is a file where the snapshot has a directory"):
        files.restore_paths(r.task(), paths, r.snapshot / "services/app/files", None, plan)
    assert live_state(r.live) == before
    assert r.kept_dirs() == []


@pytest.mark.parametrize(
    ("snap", "live", "words"),
    [
        ("fifo", "dir", "a directory where the snapshot has a FIFO"),
        ("symlink", "dir", "a directory where the snapshot has a symlink"),
        ("dir", "fifo", "a FIFO where the snapshot has a directory"),
        ("dir", "dirlink", "a symlink where the snapshot has a directory"),
    ],
)
def test_nested_kind_clashes_of_every_kind_are_refused_in_a_dry_run(tmp_path, snap, live, words):
    r = Restore(tmp_path)
    made = {"snap": r.copy / "data/deep/k", "live": r.live / "data/deep/k"}
    for side, kind in (("snap", snap), ("live", live)):
        path = made[side]
        if kind == "fifo":
            os.mkfifo(path)
        elif kind == "dir":
            path.mkdir()
            (path / "inner").write_bytes(side.encode())
        elif kind == "symlink":
            path.symlink_to("er")
        elif kind == "dirlink":
            path.symlink_to("/etc")
    before = live_state(r.live)
    plan = r.plan()
    plan.dry_run = True
    with pytest.raises(TaskError, match=words):
        r.restore_here(plan)
    assert live_state(r.live) == before and r.kept_dirs() == []


def test_a_dry_run_refuses_a_safety_dir_of_another_user(tmp_path):
    r = Restore(tmp_path)
    r.both("data/empty", b"snap", b"live")
    r.safety.mkdir()
    os.chown(r.safety, NOBODY, NOBODY)
    plan = r.plan()
    plan.dry_run = True
    with pytest.raises(TaskError, match="not a directory of root's"):
        r.restore_here(plan)


# --- 4. --from DIR against its MANIFEST.sha256 --------------------------------------


def write_manifest(snapshot: Path) -> None:
    """The snapshot's MANIFEST.sha256 and TREE.list, as the server's unpacker leaves them."""
    lines, others = [], []
    for directory, dirs, names in os.walk(snapshot / "services"):
        for name in [*dirs, *names]:
            full = os.path.join(directory, name)
            rel = os.path.relpath(full, snapshot)
            if os.path.isfile(full) and not os.path.islink(full):
                with open(full, "rb") as fh:
                    lines.append((rel, hashlib.sha256(fh.read()).hexdigest()))
            elif (kind := tree_list.kind_of(os.lstat(full).st_mode)) is not None:
                others.append(tree_list.format_entry(kind, rel))
    lines.sort(key=lambda x: os.fsencode(x[0]))
    manifest = b"".join(format_line(n, d) for n, d in lines)
    (snapshot / MANIFEST_NAME).write_bytes(manifest)
    header = tree_list.format_header(hashlib.sha256(manifest).hexdigest())
    (snapshot / tree_list.TREE_NAME).write_bytes(header + b"".join(others))


def test_listed_names_with_newlines_backslashes_and_non_utf8_pass(tmp_path):
    snap = tmp_path / "snap"
    base = snap / "services/app/files/srv"
    base.mkdir(parents=True)
    for name in ("new\nline", "back\\slash", "cr\rhere", "\\n literally"):
        (base / name).write_bytes(name.encode())
    with open(os.fsencode(base) + b"/bad-\xff-utf8", "wb") as fh:
        fh.write(b"x")
    write_manifest(snap)
    check_listed(snap, snap / "services/app")
    (base / "unlisted\\n").write_bytes(b"")  # a backslash-n name, not a newline one
    with pytest.raises(UsageError, match=r"1 file \(services/app/files/srv/unlisted"):
        check_listed(snap, snap / "services/app")


@pytest.mark.parametrize("stray", ["symlink", "fifo", "empty directory", "link for a dir"])
def test_a_symlink_of_an_older_snapshot_in_dir_is_not_restored(tmp_path, stray):
    """Only regular files were checked: a symlink (or FIFO, or empty directory) an older
    snapshot left in DIR was restored as if the chosen snapshot had it. The snapshot's
    TREE.list (written by the server's unpacker) names the others."""
    r = Restore(tmp_path)
    os.mkdir(r.copy / "data/release")
    write_manifest(r.snapshot)
    place = r.copy / "data/old-release-link"
    if stray == "symlink":
        os.symlink("/etc/shadow", place)  # the older snapshot's
    elif stray == "fifo":
        os.mkfifo(place)
    elif stray == "empty directory":
        os.mkdir(place)
    else:  # the snapshot's directory, a symlink in an older one
        os.rmdir(r.copy / "data/release")
        os.symlink("/etc", r.copy / "data/release")
        place = r.copy / "data/release"
    before = live_state(r.live)
    result = r.run()
    said = result.stdout + result.stderr
    assert result.returncode == 2, said
    name = place.relative_to(r.snapshot).as_posix()
    assert f"and TREE.list describe: 1 entry ({name}) not in it" in said, said
    assert not os.path.lexists(r.live / place.relative_to(r.copy))
    assert live_state(r.live) == before


def test_a_snapshot_stored_without_a_tree_list_is_restored_with_a_warning(tmp_path):
    """A snapshot an older server stored has no TREE.list: its symlinks are restored (they
    cannot be checked) and the warning says why."""
    r = Restore(tmp_path)
    os.symlink("config.ini", r.copy / "etc/app/current")
    write_manifest(r.snapshot)
    (r.snapshot / "TREE.list").unlink()
    result = r.run()
    said = result.stdout + result.stderr
    assert result.returncode == 0, said
    assert "has no TREE.list (a snapshot stored before pullback 0.3.0)" in said, said
    assert os.readlink(r.live / "etc/app/current") == "config.ini"


def test_a_tree_list_that_does_not_parse_is_named_and_nothing_changes(tmp_path):
    r = Restore(tmp_path)
    write_manifest(r.snapshot)
    listing = r.snapshot / "TREE.list"
    listing.write_bytes(listing.read_bytes().splitlines(keepends=True)[0] + b"x  services/app\n")
    before = live_state(r.live)
    result = r.run()
    said = result.stdout + result.stderr
    assert result.returncode == 1 and "TREE.list line 2 is malformed" in said, said
    assert live_state(r.live) == before


def test_files_below_a_symlinked_directory_in_dir_are_checked(tmp_path):
    r = Restore(tmp_path)
    write_manifest(r.snapshot)
    tree = r.snapshot / "services/app/files"
    other = tmp_path / "other-tree"
    tree.rename(other)
    os.symlink(other, tree)
    (other / str(r.live).lstrip("/") / "data/planted").write_bytes(b"not in the snapshot")
    result = r.run()
    assert result.returncode == 2, result.stderr
    assert not os.path.lexists(r.live / "data/planted")


def test_from_the_services_directory_is_checked_against_the_manifest_beside_it(tmp_path):
    r = Restore(tmp_path)
    write_manifest(r.snapshot)
    (r.copy / "data/stale-of-an-older-snapshot").write_bytes(b"old")
    result = r.box.cli(
        "restore", "--service", "app", "--from", str(r.snapshot / "services"), "--dry-run"
    )
    said = result.stdout + result.stderr
    assert "has no MANIFEST.sha256 beside services/" not in said, said
    assert result.returncode == 2, said


def test_a_file_of_an_older_snapshot_is_refused_exit_2_nothing_changed(tmp_path):
    r = Restore(tmp_path)
    write_manifest(r.snapshot)
    r.both("data/empty", b"snapshot", b"live, edited")
    write_manifest(r.snapshot)
    (r.copy / "data/deep/stale.conf").write_bytes(b"older snapshot's")
    before = live_state(r.live)
    result = r.run()
    assert result.returncode == 2, result.stderr
    assert "services/app/files" in result.stderr and "stale.conf" in result.stderr
    assert live_state(r.live) == before and r.kept_dirs() == []


def test_dir_that_is_the_service_directory_itself_warns_and_is_not_checked(tmp_path):
    r = Restore(tmp_path)
    write_manifest(r.snapshot)
    (r.copy / "data/stale").write_bytes(b"old")
    service_dir = tmp_path / "app"
    (r.snapshot / "services/app").rename(service_dir)
    r.snapshot = service_dir  # the Restore's --from
    r.copy = service_dir / "files" / str(r.live).lstrip("/")
    result = r.run("--dry-run")
    assert result.returncode == 0, result.stderr
    assert "has no MANIFEST.sha256 beside services/" in result.stdout + result.stderr


def test_a_manifest_of_a_million_lines_is_checked_in_bounded_time_and_memory(tmp_path):
    """1,000,000 listed names (a big snapshot) and a small service tree: measured in a
    child process, its peak RSS (and its time, printed only). The manifest is streamed
    (common/archive/listed): before, the check held every name, 566 MiB."""
    snap = tmp_path / "snap"
    (snap / "services/app/files").mkdir(parents=True)
    (snap / "services/app/files/a").write_bytes(b"a")
    digest = hashlib.sha256(b"a").hexdigest()
    with open(snap / MANIFEST_NAME, "wb") as fh:
        fh.write(format_line("services/app/files/a", digest))
        for number in range(1_000_000):
            fh.write(
                format_line(f"services/app/files/srv/some/longer/dir/n{number:07d}.dat", digest)
            )
    code = (
        "import re, sys, time, logging; from pathlib import Path;"
        "from pullback.client.restore import check_listed;"
        "logging.disable(logging.CRITICAL);"
        "t = time.monotonic(); s = Path(sys.argv[1]);"
        "check_listed(s, s / 'services/app');"
        # VmHWM, not ru_maxrss: Linux carries the peak of the memory the child had
        # before exec (the pytest worker's, 146 MiB late in a CI run) into ru_maxrss
        "hwm = re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read()).group(1);"
        "print(time.monotonic() - t, hwm)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(snap)], capture_output=True, text=True, check=True
    )
    seconds, kib = out.stdout.split()
    print(f"1M-line manifest: {float(seconds):.2f} s, peak RSS {int(kib) / 1024:.0f} MiB")
    assert int(kib) < 100 * 1024


# --- 5. a systemd task holds no data -------------------------------------------------


def test_a_systemd_task_is_not_looked_for_in_the_snapshot(tmp_path):
    r = Restore(tmp_path)
    r.box.add_service(
        "app",
        "service: {name: app}\nsystemd: {units: [app.service]}\n"
        f"files: {{paths: [{r.live}]}}\n",
    )
    result = r.run("--dry-run")
    said = result.stdout + result.stderr
    assert result.returncode == 0 and "nothing to restore" not in said, said
    assert "[app/systemd] would: stop the application first (systemd)" in said
    alone = r.run("--dry-run", "--task", "systemd")  # a restart only: exit 0, no warning
    said = alone.stdout + alone.stderr
    assert alone.returncode == 0 and "nothing to restore" not in said, said
    assert "would stop and start app; nothing restored: task systemd holds no data" in said
