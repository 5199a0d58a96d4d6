"""Outside review (h58) of "a files restore keeps what it overwrites" (F3).

Each test states a promise of docs/restore.md and asserts it. The defects it found are
fixed (their docstrings tell what the code did before); the low limits it left were
``xfail(strict=True)`` tests until fixed (helper-61 and after: the words of overlapping
paths, a tree deeper than the descriptors, a kept path beyond PATH_MAX); none is marked
now.
"""

from __future__ import annotations

import contextlib
import logging
import os
import resource
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from pullback.plugins import before_restore
from pullback.plugins.before_restore import find_replaced
from pullback.plugins.files import restore_paths
from pullback.plugins.task import RestorePlan, TaskError
from tests.integration.test_files_restore import (  # noqa: F401 (a fixture)
    Restore,
    live_state,
    small_safety,
)

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="owners and mounts need root")


def kept_names(r: Restore, kept_dir: Path) -> list[str]:
    base = r.kept("", kept_dir)
    return sorted(str(p.relative_to(base)) for p in base.rglob("*"))


# --- 1. a restore never destroys live data it cannot rebuild -------------------------


def test_defect_a_task_path_of_slash_keeps_nothing(tmp_path):
    """paths: [/] (the schema allows it: pattern ^/) restores the snapshot over the whole
    system. _pairs looks the top entry up as name '' below '/', which fails with ENOENT,
    and takes it for "the live entry does not exist": nothing is compared, nothing kept,
    and cp -a then overwrites every live file. Read-only demonstration: find_replaced of a
    copy whose etc/hostname differs from the live /etc/hostname."""
    copy = tmp_path / "files"
    (copy / "etc").mkdir(parents=True)
    (copy / "etc/hostname").write_bytes(Path("/etc/hostname").read_bytes() + b"-snapshot\n")
    with pytest.raises(TaskError, match="cannot compare /"):  # never "nothing to keep"
        find_replaced(copy, Path("/"))
    r = Restore(tmp_path / "r")
    with pytest.raises(TaskError, match="restoring / in place is refused"):
        restore_paths(r.task(), ["/"], r.snapshot / "services/app/files", None, r.plan())


def test_defect_a_live_symlink_to_a_directory_at_a_symlink_path_is_written_through(tmp_path):
    """The configured path is a symlink in the snapshot (a capistrano-style `current`,
    /etc/localtime, ...); live it is a symlink to a directory (the tree owner's, or just
    a newer release). _same_kind_at_top sees two non-directories and passes, the scan
    keeps the live symlink, and `cp -a -- COPY DEST` (no -T) treats DEST as a directory:
    it puts the snapshot's symlink INSIDE the directory the live symlink points at,
    replacing the entry of that name there (a root-owned file outside the tree, not
    kept), and the live symlink itself is not restored. The restore reports success."""
    r = Restore(tmp_path)
    outside = tmp_path / "etc-like"
    outside.mkdir()
    (outside / "current").write_text("root's file outside the tree")
    os.symlink("releases/1", r.copy / "current")
    os.symlink(outside, r.live / "current")

    failed = None
    try:
        r.restore_here(r.plan(), r.live / "current")
    except TaskError as exc:
        failed = exc
    # promised: refused (or restored in place), nothing outside the tree written
    assert not (outside / "current").is_symlink(), "cp replaced a file outside the tree"
    assert (outside / "current").read_text() == "root's file outside the tree"
    assert failed is not None or os.readlink(r.live / "current") == "releases/1"


def test_defect_a_directory_swapped_during_the_scan_is_silently_not_kept(tmp_path, monkeypatch):
    """A directory whose inode changes between the scan's lstat and its open (a service
    replacing it, or the tree's owner) is skipped by _pairs as if cp would not touch it:
    nothing below it is compared or kept, yet cp then overwrites the files below the new
    directory. For a file the same swap is handled conservatively (_differs: "keep
    whatever is there then"); for a directory the subtree silently drops out."""
    r = Restore(tmp_path)
    edited = r.live / "data/deep/er/blob.bin"
    edited.write_bytes(b"edited after the backup, precious")
    real = before_restore._open_checked
    swapped = []

    def racing(dir_fd, name, looked, flags):
        if name == "er" and not swapped:  # the owner: mv er er.old && cp -a er.old er
            swapped.append(1)
            os.rename("er", "er.old", src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
            shutil.copytree(r.live / "data/deep/er.old", r.live / "data/deep/er")
            shutil.rmtree(r.live / "data/deep/er.old")
        return real(dir_fd, name, looked, flags)

    monkeypatch.setattr(before_restore, "_open_checked", racing)
    try:
        r.restore_here(r.plan())
    except TaskError:
        return  # a refusal keeps the promise
    kept = [r.kept("data/deep/er/blob.bin", d) for d in r.kept_dirs()]
    assert any(k.exists() for k in kept), (
        "the edited file was overwritten and is in no kept directory; "
        f"live now: {edited.read_bytes()[:20]!r}"
    )


def test_a_directory_moved_away_during_the_scan_stops_the_restore(tmp_path, monkeypatch):
    """The walk closes a directory as it goes into one below it and comes back up by
    "..": the tree's owner moving a directory it is below (mv data/deep elsewhere) would
    make ".." lead elsewhere (their directory, not the tree). It checks that ".." is
    the directory it came down from, and stops with nothing replaced."""
    r = Restore(tmp_path)
    (r.live / "data/empty").write_text("edited after the backup")
    before = live_state(r.live)
    elsewhere = tmp_path / "owners"
    elsewhere.mkdir()
    real = before_restore._open_checked
    moved = []

    def racing(dir_fd, name, looked, flags):
        opened = real(dir_fd, name, looked, flags)
        if name == "er" and not moved:  # the walk is below data/deep now
            moved.append(1)
            (r.live / "data/deep").rename(elsewhere / "deep")
        return opened

    monkeypatch.setattr(before_restore, "_open_checked", racing)
    with pytest.raises(TaskError, match="a directory was moved while it was walked"):
        r.restore_here(r.plan())
    assert moved
    (elsewhere / "deep").rename(r.live / "data/deep")
    assert live_state(r.live) == before
    assert r.kept_dirs() == []


def test_held_hard_linked_live_files_are_each_kept(tmp_path):
    """Two live names of one inode, the snapshot has them separate and both other: cp
    writes through the inode twice; both old names are kept with the old bytes."""
    r = Restore(tmp_path)
    r.both("hl/a", b"snapshot a", b"x")
    (r.copy / "hl/b").write_bytes(b"snapshot b")
    (r.live / "hl/a").write_bytes(b"live shared inode")
    os.link(r.live / "hl/a", r.live / "hl/b")
    r.restore_here(r.plan())
    (kept_dir,) = r.kept_dirs()
    assert r.kept("hl/a", kept_dir).read_bytes() == b"live shared inode"
    assert r.kept("hl/b", kept_dir).read_bytes() == b"live shared inode"


def test_held_a_hard_link_to_a_file_outside_the_tree_is_kept_by_its_inner_name(tmp_path):
    r = Restore(tmp_path)
    outside = tmp_path / "outside-name"
    r.both("hl/in", b"snapshot", b"x")
    (r.live / "hl/in").unlink()
    outside.write_bytes(b"live bytes, also outside")
    os.link(outside, r.live / "hl/in")
    r.restore_here(r.plan())
    (kept_dir,) = r.kept_dirs()
    assert r.kept("hl/in", kept_dir).read_bytes() == b"live bytes, also outside"
    assert outside.read_bytes() == b"live bytes, also outside"  # cp -a unlinks a linked dest


def test_held_sparse_big_file_and_set_uid_kept_with_holes(tmp_path):
    r = Restore(tmp_path)
    (r.copy / "img").write_bytes(b"snap")
    with open(r.live / "img", "wb") as f:
        f.truncate(8 << 30)
        f.seek(4 << 30)
        f.write(b"data in the middle")
    os.chown(r.live / "img", 1234, 4321)
    os.chmod(r.live / "img", 0o6750)
    os.setxattr(r.live / "img", "trusted.mark", b"t")
    r.restore_here(r.plan())
    (kept_dir,) = r.kept_dirs()
    st = r.kept("img", kept_dir).stat()
    assert st.st_size == 8 << 30 and st.st_blocks * 512 < 1 << 20
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (1234, 4321, 0o6750)
    assert os.getxattr(r.kept("img", kept_dir), "trusted.mark") == b"t"
    with open(r.kept("img", kept_dir), "rb") as f:
        f.seek(4 << 30)
        assert f.read(18) == b"data in the middle"


def test_held_a_tmpfs_mounted_inside_the_tree_is_scanned_and_kept(tmp_path):
    r = Restore(tmp_path)
    mnt = r.live / "data/deep/er"
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", mnt], check=True)
    try:
        (mnt / "blob.bin").write_bytes(b"on another file system")
        r.restore_here(r.plan())
        (kept_dir,) = r.kept_dirs()
        assert r.kept("data/deep/er/blob.bin", kept_dir).read_bytes() == b"on another file system"
    finally:
        subprocess.run(["umount", "-l", mnt], check=False)


def test_held_immutable_live_file_is_kept_and_cp_fails(tmp_path):
    r = Restore(tmp_path)
    (r.live / "data/empty").write_text("immutable, edited")
    subprocess.run(["chattr", "+i", r.live / "data/empty"], check=True)
    try:
        with pytest.raises(Exception, match="Operation not permitted"):
            r.restore_here(r.plan())
        (kept_dir,) = r.kept_dirs()
        assert r.kept("data/empty", kept_dir).read_text() == "immutable, edited"
    finally:
        subprocess.run(["chattr", "-i", r.live / "data/empty"], check=False)


def test_held_overlapping_paths_keep_each_file_once(tmp_path, caplog):
    r = Restore(tmp_path)
    (r.live / "etc/app/config.ini").write_text("edited")
    (r.live / "data/empty").write_text("edited")
    caplog.set_level(logging.INFO)
    r.restore_here(r.plan(), r.live, r.live / "etc")
    (kept_dir,) = r.kept_dirs()
    assert kept_names(r, kept_dir) == [
        "data",
        "data/empty",
        "etc",
        "etc/app",
        "etc/app/config.ini",
        "etc/app/hardlink.ini",
    ]
    print("\n".join(m for m in caplog.messages if "kept" in m))


def test_words_overlapping_paths_say_kept_files_once(tmp_path, caplog):
    """Low, fixed: with overlapping paths each path's line said "kept N files" from its
    scan, though the second path's were kept already (kept 3, lines said 3 + 2)."""
    r = Restore(tmp_path)
    (r.live / "etc/app/config.ini").write_text("edited")
    (r.live / "data/empty").write_text("edited")
    caplog.set_level(logging.INFO)
    r.restore_here(r.plan(), r.live, r.live / "etc")
    lines = [m for m in caplog.messages if m.startswith("kept ")]
    said = sum(int(m.split()[1]) for m in lines)
    assert said == 3, lines  # config.ini, its hard link hardlink.ini, data/empty


def test_words_overlapping_paths_inner_first_say_each_kept_file_once(tmp_path, caplog):
    """The inner path listed first is restored, and kept, with the outer one (whose copy
    holds it whole: helper-155 F6): one line of three kept files, in the dry run too,
    and a line saying so for the inner path."""
    r = Restore(tmp_path)
    (r.live / "etc/app/config.ini").write_text("edited")
    (r.live / "data/empty").write_text("edited")
    caplog.set_level(logging.INFO)
    dry = RestorePlan(stamp="20261203T183000Z", safety_dir=r.safety, dry_run=True)
    r.restore_here(dry, r.live / "etc", r.live)
    would = [m for m in caplog.messages if m.startswith("would: keep ")]
    assert [m.split()[2] for m in would] == ["3"], would
    assert f"{r.live}/etc is restored with {r.live}" in caplog.messages
    caplog.clear()
    r.restore_here(r.plan(), r.live / "etc", r.live)
    lines = [m for m in caplog.messages if m.startswith("kept ")]
    assert [m.split()[1] for m in lines] == ["3"], lines
    assert "/data/empty" in lines[0] and "/etc/app/config.ini" in lines[0], lines


def test_held_target_dir_onto_existing_entries_keeps_them(tmp_path):
    r = Restore(tmp_path)
    target = tmp_path / "target"
    dest = target / str(r.live).lstrip("/")
    shutil.copytree(r.copy, dest, symlinks=True)
    (dest / "data/empty").write_text("edited in the target")

    restore_paths(r.task(), [str(r.live)], r.snapshot / "services/app/files", target, r.plan())
    (kept_dir,) = r.kept_dirs()
    assert (kept_dir / str(dest).lstrip("/") / "data/empty").read_text() == "edited in the target"


def test_limits_a_deep_tree_under_the_usual_1024_descriptors(tmp_path):
    """A tree 1100 directories deep (2.2 KB paths, well below PATH_MAX): cp restores it,
    the scan held one descriptor per level and ran out of them under the default soft
    limit of 1024 (a login shell's, and systemd's LimitNOFILE default); so did the pass
    over extended attributes, and os.walk (recursive in Python 3.11) counting the files.
    Fixed: the walks hold two descriptors however deep."""
    r = Restore(tmp_path)
    deep_copy, deep_live = r.copy, r.live
    for _ in range(1100):
        deep_copy, deep_live = deep_copy / "d", deep_live / "d"
    subprocess.run(["mkdir", "-p", deep_copy, deep_live], check=True)
    (deep_copy / "f").write_text("snapshot")
    (deep_live / "f").write_text("live, edited")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (1024, hard))
    try:
        r.restore_here(r.plan())
        restored = (deep_live / "f").read_text()
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        for top in (r.copy / "d", r.live / "d"):  # shutil.rmtree of basetemp recurses
            subprocess.run(["rm", "-rf", top], check=False)
    (kept_dir,) = r.kept_dirs()
    try:
        assert r.kept("/".join(["d"] * 1100) + "/f", kept_dir).read_text() == "live, edited"
        assert restored == "snapshot"
    finally:
        subprocess.run(["rm", "-rf", kept_dir], check=False)


def test_limits_a_long_path_below_path_max_is_kept(tmp_path):
    """A live file whose path is legal and whose snapshot copy's path is legal too (cp
    restores it), but whose kept path (the safety dir, longer than the --from prefix,
    plus the absolute live path) is beyond PATH_MAX: keeping it failed, so the restore
    in place was impossible (nothing replaced: safe, but the message blamed "keeping
    failed" with ENAMETOOLONG and offered no way but --target). Fixed: kept entries are
    made by name below their open directory."""
    r = Restore(tmp_path)
    copy_prefix = len(str(r.copy)) - len(str(r.live))
    live_len = 4090 - copy_prefix
    rel_len = live_len - len(str(r.live)) - len("/f") - 1
    parts, left = [], rel_len
    while left > 0:
        take = min(200, left)
        parts.append("x" * take)
        left -= take + 1
    rel = "/".join(parts)
    subprocess.run(["mkdir", "-p", r.copy / rel, r.live / rel], check=True)
    (r.copy / rel / "f").write_text("snapshot")
    (r.live / rel / "f").write_text("live, edited")
    print("live", len(str(r.live / rel / "f")), "copy", len(str(r.copy / rel / "f")))
    r.restore_here(r.plan())
    assert (r.live / rel / "f").read_text() == "snapshot"
    (kept_dir,) = r.kept_dirs()
    kept = f"{str(r.live).lstrip('/')}/{rel}/f"
    assert len(f"{kept_dir}/{kept}") > 4096  # beyond PATH_MAX: reached a name at a time
    assert read_below(kept_dir, kept) == b"live, edited"


def read_below(top: Path, relative: str) -> bytes:
    """The bytes of the file ``relative`` below ``top``, opened a name at a time (its
    path may be longer than PATH_MAX)."""
    *directories, name = relative.split("/")
    fd = os.open(top, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for directory in directories:
            below = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
            os.close(fd)
            fd = below
        with open(os.open(name, os.O_RDONLY | os.O_NOFOLLOW, dir_fd=fd), "rb") as f:
            return f.read()
    finally:
        os.close(fd)


# --- 2. nothing is replaced unless keeping succeeded; the safety directory ------------


def test_defect_a_safety_dir_that_is_a_symlink_is_written_through(tmp_path):
    """/var/lib/pullback/before-restore is a symlink (to a directory someone else owns):
    the code mkdir(exist_ok)s and mkdtemps through it and keeps the live files there.
    Promised (brief): refuse or fix, never write through."""
    r = Restore(tmp_path)
    elsewhere = tmp_path / "someone-elses"
    elsewhere.mkdir(mode=0o777)
    os.chown(elsewhere, 65534, 65534)
    r.safety.symlink_to(elsewhere)
    (r.live / "data/secret.key").write_text("secret, edited")
    with pytest.raises(TaskError, match="not a directory of root's"):
        r.restore_here(r.plan())
    assert list(elsewhere.iterdir()) == [], "kept through the symlink into another's dir"


def test_defect_a_safety_dir_owned_by_another_user_lets_them_redirect_the_keep(
    tmp_path, monkeypatch
):
    """before-restore owned by uid 65534 (mode 0755) is used as is. Its owner may rename
    root's fresh mkdtemp directory (same parent: no write permission on it needed) and
    put one of theirs in its place with a symlink inside; every kept file is then made
    by path below it, so root creates files (the tree owner's content, mode and owner)
    wherever the symlink points. Simulated here at the moment after mkdtemp."""
    r = Restore(tmp_path)
    r.safety.mkdir(mode=0o755)
    os.chown(r.safety, 65534, 65534)
    target = tmp_path / "etc-cron-like"
    target.mkdir()
    (r.live / "data/secret.key").write_text("* * * * * root evil\n")
    real = before_restore._make_kept_dir

    def then_the_owner_acts(safety, prefix):
        kept = real(safety, prefix)
        # as uid 65534 could: rename root's 0700 dir away, make one with a symlink
        kept.rename(safety / "moved-away")
        kept.mkdir()
        os.chown(kept, 65534, 65534)
        anchor = kept / str(r.live / "data").lstrip("/")
        anchor.parent.mkdir(parents=True)
        anchor.symlink_to(target)
        return kept

    monkeypatch.setattr(before_restore, "_make_kept_dir", then_the_owner_acts)
    with contextlib.suppress(TaskError):
        r.restore_here(r.plan())
    assert list(target.iterdir()) == [], "root wrote the kept file through the owner's symlink"


def test_a_kept_directory_that_is_not_roots_alone_when_opened_keeps_nothing(tmp_path, monkeypatch):
    """Everything kept is made by name below the kept directory's descriptor: that
    directory, opened once, must still be root's 0700 one (here given to another user
    between mkdtemp and the open); else nothing is kept or replaced, and it is removed."""
    r = Restore(tmp_path)
    (r.live / "data/empty").write_text("edited")
    before = live_state(r.live)
    real = before_restore._make_kept_dir

    def given_away(safety, prefix):
        kept = real(safety, prefix)
        os.chown(kept, 65534, 65534)
        return kept

    monkeypatch.setattr(before_restore, "_make_kept_dir", given_away)
    with pytest.raises(TaskError, match=r"is not root's alone now.*nothing was replaced"):
        r.restore_here(r.plan())
    assert live_state(r.live) == before
    assert r.kept_dirs() == []


def test_a_dry_run_refuses_a_safety_dir_the_restore_would_refuse(tmp_path):
    """An outside walk: with before-restore a mode-1777 directory, the dry run said all
    was well and the restore then refused."""
    r = Restore(tmp_path)
    r.safety.mkdir()
    r.safety.chmod(0o1777)
    (r.live / "data/empty").write_text("edited")
    dry = RestorePlan(stamp="20261203T183000Z", safety_dir=r.safety, dry_run=True)
    with pytest.raises(TaskError, match="not a directory of root's that only root may write"):
        r.restore_here(dry)
    assert list(r.safety.iterdir()) == [] and (r.live / "data/empty").read_text() == "edited"


def test_held_before_restore_is_a_file(tmp_path):
    r = Restore(tmp_path)
    r.safety.write_text("a file")
    (r.live / "data/empty").write_text("edited")
    before = live_state(r.live)
    with pytest.raises(TaskError) as failed:
        r.restore_here(r.plan())
    assert live_state(r.live) == before
    print(failed.value)
    assert "nothing was replaced" in str(failed.value)


def test_room_check_is_by_the_scan_a_file_grown_afterwards_fills_the_safety_fs(
    tmp_path,
    small_safety,  # noqa: F811 (the fixture imported above)
    monkeypatch,
):
    """The tree's owner grows a file after the scan (the room check counts what the scan
    saw; the keep copies what is there then, without a bound): the keep fills the safety
    file system. Nothing is replaced (held); the part written is removed again, and the
    kept directory with it (nothing else was kept)."""
    r = Restore(tmp_path)
    safety = small_safety(r, "size=8m,mode=0700")
    (r.live / "data/empty").write_text("edited")
    real = before_restore._check_room

    def grown(s, found, min_free):
        real(s, found, min_free)
        (r.live / "data/empty").write_bytes(os.urandom(16 << 20))

    monkeypatch.setattr(before_restore, "_check_room", grown)
    with pytest.raises(TaskError) as failed:
        r.restore_here(r.plan())
    print(failed.value)
    st = os.statvfs(safety)
    print("free after:", st.f_bavail * st.f_frsize)
    assert (r.live / "data/empty").stat().st_size == 16 << 20  # not replaced
    assert r.kept_dirs() == [] and st.f_bavail * st.f_frsize > 4 << 20


def test_a_file_that_fills_the_safety_fs_half_way_is_not_left_in_part(
    tmp_path,
    small_safety,  # noqa: F811 (the fixture imported above)
    monkeypatch,
):
    """A file grown after the scan fills the safety file system while it is kept, after
    another was kept: the part of it written is removed again (the file system is not
    left full); the one kept before stays, and the message says so."""
    r = Restore(tmp_path)
    safety = small_safety(r, "size=8m,mode=0700")
    (r.live / "data/deep/er/blob.bin").write_text("edited, kept first")
    (r.live / "data/empty").write_text("edited")
    real = before_restore._check_room

    def grown(s, found, min_free):
        real(s, found, min_free)
        (r.live / "data/empty").write_bytes(os.urandom(16 << 20))

    monkeypatch.setattr(before_restore, "_check_room", grown)
    with pytest.raises(TaskError, match="No space left on device") as failed:
        r.restore_here(r.plan())
    (kept_dir,) = r.kept_dirs()
    assert "1 file (4.0 KiB) were kept in" in str(failed.value)
    assert kept_names(r, kept_dir) == ["data", "data/deep", "data/deep/er", "data/deep/er/blob.bin"]
    st = os.statvfs(safety)
    assert st.f_bavail * st.f_frsize > 4 << 20
    assert (r.live / "data/empty").stat().st_size == 16 << 20  # not replaced


# --- 4. dry run writes nothing --------------------------------------------------------


def test_held_a_dry_run_changes_at_most_a_live_symlinks_access_time(tmp_path):
    """A dry run promises to change nothing; the scan opens files with O_NOATIME, but a
    symlink's target is read by readlink(2) alone, which updates its atime (relatime:
    atime <= mtime) and has no O_NOATIME (a kernel limit, docs/restore.md says it; setting
    the atime back would change the ctime instead). Nothing else of it changes."""
    r = Restore(tmp_path)
    link = r.live / "etc/app/link.ini"
    os.unlink(link)
    os.symlink("hardlink.ini", link)  # another target: compared by readlink
    old = 1_500_000_000_000_000_000
    os.utime(link, ns=(old, old), follow_symlinks=False)
    before = link.lstat()
    result = r.run("--dry-run")
    assert result.returncode == 0, result.stderr
    after = link.lstat()
    assert (after.st_mtime_ns, after.st_ctime_ns) == (before.st_mtime_ns, before.st_ctime_ns)
    assert (after.st_ino, os.readlink(link)) == (before.st_ino, "hardlink.ini")
    assert not r.safety.exists()


def test_held_a_dry_run_changes_no_file_or_directory_atime(tmp_path):
    r = Restore(tmp_path)
    (r.live / "data/empty").write_text("edited")
    old = 1_500_000_000_000_000_000
    paths = [r.live / "data/empty", r.live / "data/deep/er/blob.bin", r.live / "data", r.live]
    for p in paths:
        os.utime(p, ns=(old, old))
    result = r.run("--dry-run")
    assert result.returncode == 0, result.stderr
    assert [p.stat().st_atime_ns for p in paths] == [old] * len(paths)
    assert not r.safety.exists()


# --- 5. the words ---------------------------------------------------------------------


def test_held_hostile_names_are_escaped_and_few(tmp_path):
    r = Restore(tmp_path)
    names = ["esc-\x1b]0;owned\x07", "nl-\nERROR forged", "bad-\udcff", "plain"] + [
        f"n{i}" for i in range(50)
    ]
    for name in names:
        r.both("h/" + name, b"snapshot", b"live")
    result = r.run()
    assert result.returncode == 0, result.stderr
    out = result.stdout + result.stderr
    assert "\x1b" not in out and "\x07" not in out
    assert not any(line.startswith("ERROR forged") for line in out.splitlines())
    kept_line = [line for line in result.stderr.splitlines() if "kept 54 files" in line]
    assert kept_line and "and 51 more" in kept_line[0], result.stderr


def test_held_refusals_with_hostile_names_are_escaped(tmp_path):
    r = Restore(tmp_path)
    for i in range(20):
        name = f"f{i}-\x1b[2J\n"
        (r.copy / name).write_text("snapshot")
        os.symlink("/etc/shadow", r.live / name)
    result = r.run()
    assert result.returncode == 1
    assert "\x1b" not in result.stderr
    assert "and 17 more" in result.stderr


def test_defect_a_symlinked_parent_of_a_restored_file_path_is_written_through(tmp_path):
    """paths: [/srv/data/data/secret.key] (one file below a tree a user owns). The user
    swaps the parent directory `data` for a symlink to a root directory holding a file
    of that name, before the restore (no race). The refusal of symlinks only looks at
    the path itself and below it: _pairs opens destination.parent BY PATH (following
    the symlink), reads the outside file into the kept directory, and cp then writes
    the snapshot's file, owner (1234) and mode over it. Promised: a live symlink where
    the snapshot has a file is refused before anything; nothing outside the tree is
    read into the kept directory (docs/restore.md)."""
    r = Restore(tmp_path)
    outside = tmp_path / "root-dir"
    outside.mkdir()
    (outside / "secret.key").write_text("root's, outside the tree")
    real = r.live / "data"
    real.rename(tmp_path / "data-moved")
    real.symlink_to(outside)
    os.lchown(real, 1234, 1234)  # the tree's owner made it
    with contextlib.suppress(TaskError, Exception):
        r.restore_here(r.plan(), r.live / "data/secret.key")
    st = (outside / "secret.key").stat()
    assert (outside / "secret.key").read_text() == "root's, outside the tree", (
        f"overwritten outside the tree; now owned by uid {st.st_uid}"
    )


def test_docs_the_directories_inside_the_kept_directory_are_0700(tmp_path):
    """docs/restore.md: "the directories inside it are made for the purpose (0700)".
    Path.mkdir(mode=0o700, parents=True) gives the mode to the last one only: the
    others get 0777 & umask (0755)."""
    r = Restore(tmp_path)
    (r.live / "data/deep/er/blob.bin").write_text("edited")
    r.restore_here(r.plan())
    (kept_dir,) = r.kept_dirs()
    modes = {
        str(p.relative_to(kept_dir)): oct(stat.S_IMODE(p.stat().st_mode))
        for p in kept_dir.rglob("*")
        if p.is_dir()
    }
    assert set(modes.values()) == {"0o700"}, modes


def test_words_a_keep_that_fails_before_the_first_file_names_no_leftover(tmp_path, monkeypatch):
    """Keeping fails at the first entry: the message says "nothing was kept (a part only:
    ... remove it when you like)" -- but an empty files-<stamp>-<random> directory was
    made and is left behind, unnamed."""
    r = Restore(tmp_path)
    (r.live / "data/empty").write_text("edited")

    def broken(*_):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(before_restore, "_keep_entry", broken)
    with pytest.raises(TaskError) as failed:
        r.restore_here(r.plan())
    message = str(failed.value)
    print(message)
    leftovers = r.kept_dirs()
    assert not leftovers or str(leftovers[0]) in message, (leftovers, message)
