"""``pullback-client restore`` of a ``files`` task onto live paths that changed after the
snapshot: real files, real ``cp``, real xattrs and ACLs, rsync as the oracle.

The snapshot here is the ``services/app/files/...`` tree of a restored snapshot, made by
``cp -a`` of the live tree (what ``pullback-server restore`` leaves): what the restore
must bring back, bit for bit."""

from __future__ import annotations

import errno
import logging
import os
import re
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from pullback.common.runner import Runner
from pullback.plugins import before_restore
from pullback.plugins.files import restore_paths
from pullback.plugins.task import RestorePlan, Task, TaskError
from tests.helpers.client import ClientSandbox
from tests.helpers.files import thread_read_bytes
from tests.helpers.tree import differences, make_edge, make_rich_tree

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="owners and ACLs need root")


class Restore:
    """A live tree ``srv/data``, its snapshot copy, and a client with the service."""

    def __init__(self, tmp_path: Path):
        self.live = make_rich_tree(tmp_path / "srv" / "data", as_root=True)
        self.snapshot = tmp_path / "snapshot"
        self.copy = self.snapshot / "services/app/files" / str(self.live).lstrip("/")
        self.copy.parent.mkdir(parents=True)
        subprocess.run(["cp", "-a", "--sparse=always", str(self.live), str(self.copy)], check=True)
        self.box = ClientSandbox(tmp_path / "client")
        self.box.add_service("app", f"service: {{name: app}}\nfiles: {{paths: [{self.live}]}}\n")

    def run(self, *extra: str, timeout: float = 120) -> subprocess.CompletedProcess:
        return self.box.cli(
            "restore", "--service", "app", "--from", str(self.snapshot), *extra, timeout=timeout
        )

    @property
    def safety(self) -> Path:
        """The restore's safety directory: ``work_dir``'s parent's ``before-restore``."""
        return self.box.root / "before-restore"

    def kept_dirs(self) -> list[Path]:
        return sorted(self.safety.glob("files-*")) if self.safety.exists() else []

    def kept(self, relative: str, kept_dir: Path | None = None) -> Path:
        """Where the restore kept the live ``relative`` (below the live tree)."""
        if kept_dir is None:
            (kept_dir,) = self.kept_dirs()
        return kept_dir / str(self.live).lstrip("/") / relative

    def both(self, relative: str, snapshot: bytes, live: bytes) -> None:
        """A file ``relative`` in the snapshot's copy and, other, in the live tree."""
        for root, data in ((self.copy, snapshot), (self.live, live)):
            (root / relative).parent.mkdir(parents=True, exist_ok=True)
            (root / relative).write_bytes(data)

    def task(self) -> Task:
        """The service's files task, for a restore in this process."""
        log = logging.getLogger("pullback.test.files")
        config = {"paths": [str(self.live)], "exclude": [], "missing_ok": False, "xattrs": True}
        staging = self.box.work / "staging"
        staging.mkdir(parents=True, exist_ok=True)
        return Task("files", "files", config, "app", Path("/dev/null"), staging, Runner(log), log)

    def plan(self, stamp: str = "20261203T183000Z") -> RestorePlan:
        return RestorePlan(stamp=stamp, safety_dir=self.safety)

    def restore_here(self, plan: RestorePlan, *paths: Path) -> None:
        """Restore the files task in this process (the plan's stamp as given): the live
        tree, or ``paths`` below it."""
        listed = [str(p) for p in paths or (self.live,)]
        restore_paths(self.task(), listed, self.snapshot / "services/app/files", None, plan)


def setfacl(*args: str) -> None:
    subprocess.run(["setfacl", *args], check=True)


needs_setfacl = pytest.mark.skipif(not shutil.which("setfacl"), reason="setfacl not installed")


@needs_setfacl
def test_xattrs_and_acls_added_after_the_snapshot_are_gone_after_a_restore(tmp_path):
    """cp -a onto an existing entry adds the snapshot's xattrs and never removes others:
    the restore removes what the snapshot's copy lacks, on files, directories and the
    top directory alike, ACLs (system.posix_acl_*) included."""
    r = Restore(tmp_path)
    live = r.live
    os.setxattr(live / "data/empty", "user.origin", b"changed")  # another value
    os.setxattr(live / "data/empty", "user.added", b"after the snapshot")
    os.setxattr(live / "etc/app/config.ini", "user.added", b"x")
    os.setxattr(live / "data/deep", "user.added", b"on a directory")
    os.setxattr(live, "user.added", b"on the top directory")
    setfacl("-m", "u:65534:rwx", str(live / "data/secret.key"))  # an access ACL
    setfacl("-d", "-m", "u:65534:rx", str(live / "data/deep"))  # a default ACL
    setfacl("-m", "u:65534:rx", str(live / "data/deep/er"))
    assert differences(r.copy, live)  # the oracle sees them

    result = r.run()

    assert result.returncode == 0, result.stderr
    assert differences(r.copy, live) == []
    assert os.listxattr(live / "data/deep") == []
    assert os.getxattr(live / "data/empty", "user.origin") == b"pullback-test"
    getfacl = ["getfacl", "-cpd", str(live / "data/deep")]
    assert subprocess.run(getfacl, capture_output=True, text=True, check=True).stdout == ""


def test_set_uid_bits_capabilities_and_holes_survive_a_restore_over_live_files(tmp_path):
    r = Restore(tmp_path)
    make_edge(r.copy / "edge")
    (r.live / "edge").mkdir()
    for name in ("su-like", "ping-like", "disk.img"):
        (r.live / "edge" / name).write_bytes(b"live")

    result = r.run()

    assert result.returncode == 0, result.stderr
    assert differences(r.copy, r.live) == []
    getcap = subprocess.run(["getcap", str(r.live / "edge/ping-like")], capture_output=True)
    assert b"cap_net_raw=ep" in getcap.stdout
    assert os.stat(r.live / "edge/su-like").st_mode & 0o7777 == 0o4755
    image = os.stat(r.live / "edge/disk.img")
    assert image.st_size == 64 << 20 and image.st_blocks * 512 < 1 << 20  # holes again


def test_a_live_symlink_where_the_snapshot_has_a_directory_is_refused_safely(tmp_path):
    """cp would refuse it half-way: the rest of that path restored, the task's later
    paths not, their attributes not set, while the dry run said all was well (an outside
    walk). Refused before anything, dry run too: nothing written, nothing kept; the
    error reads as lines, no literal \\n."""
    r = Restore(tmp_path)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "blob.bin").write_text("outside")
    shutil.rmtree(r.live / "data/deep/er")
    os.symlink(outside, r.live / "data/deep/er")
    (r.live / "data/empty").write_text("changed")

    dry = r.run("--dry-run")
    result = r.run()

    for run in (dry, result):
        assert run.returncode == 1, run.stdout + run.stderr
        assert "data/deep/er is a symlink where the snapshot has a directory (cp cannot " in (
            run.stderr
        )
        assert "nothing was replaced; move them away and restore again" in run.stderr
        assert "\\n" not in run.stderr
    assert (outside / "blob.bin").read_text() == "outside"
    assert os.path.islink(r.live / "data/deep/er")
    assert (r.live / "data/empty").read_text() == "changed", "nothing replaced"
    assert r.kept_dirs() == []


@pytest.mark.parametrize("kind", ["a directory where the snapshot has a file", "a file where"])
def test_a_nested_directory_against_a_file_is_refused_before_anything(tmp_path, kind):
    r = Restore(tmp_path)
    (r.live / "data/empty").write_text("changed")
    if kind.startswith("a directory"):
        (r.live / "data/secret.key").unlink()
        (r.live / "data/secret.key").mkdir()
        (r.live / "data/secret.key/inside").write_text("live")
        clash = "data/secret.key"
    else:
        shutil.rmtree(r.live / "data/deep/er")
        (r.live / "data/deep/er").write_text("a file now")
        clash = "data/deep/er"
    with pytest.raises(TaskError, match=f"{clash} is {kind}"):
        r.restore_here(r.plan())
    assert (r.live / "data/empty").read_text() == "changed"
    assert r.kept_dirs() == []


def test_a_restored_path_that_is_a_live_symlink_is_not_written_through(tmp_path):
    """The path itself is a symlink now, the snapshot has a directory: cp would copy into
    the directory it points at, replacing files there that nothing keeps."""
    r = Restore(tmp_path)
    elsewhere = tmp_path / "elsewhere"
    r.live.rename(elsewhere)
    r.live.symlink_to(elsewhere)
    (elsewhere / "data/empty").write_text("live, elsewhere")

    result = r.run()

    assert result.returncode == 1
    assert f"{r.live} is a symlink where the snapshot has a directory: nothing" in result.stderr
    assert (elsewhere / "data/empty").read_text() == "live, elsewhere"


def test_a_task_without_xattrs_leaves_the_live_ones_alone(tmp_path):
    """With ``xattrs: false`` the snapshot holds none: there is nothing to compare, and
    the live entries keep theirs (an outside review saw every one removed, from
    directories too)."""
    r = Restore(tmp_path)
    r.box.add_service(
        "app", f"service: {{name: app}}\nfiles: {{paths: [{r.live}], xattrs: false}}\n"
    )
    os.setxattr(r.live / "data/deep", "user.mime", b"kept")
    os.setxattr(r.live / "data/empty", "user.added", b"kept too")
    result = r.run()
    assert result.returncode == 0, result.stderr
    assert os.getxattr(r.live / "data/deep", "user.mime") == b"kept"
    assert os.getxattr(r.live / "data/empty", "user.added") == b"kept too"


def test_the_attribute_pass_never_leaves_the_tree_through_a_swapped_symlink(tmp_path):
    """The tree's owner swaps a restored directory for a symlink to another after the
    copy: the pass that removes extra attributes must not follow it (an outside review
    had it strip user.* and a file capability from 1 770 files outside, racing the pass
    as it walked by path). This pins the swap made before the pass; during it, the walk
    by descriptors (O_NOFOLLOW below an opened parent) has no path to follow."""
    from pullback.plugins.files import _same_xattrs

    copy = tmp_path / "copy"
    (copy / "sub").mkdir(parents=True)
    (copy / "sub/f").write_bytes(b"snapshot")
    (copy / "top.txt").write_bytes(b"snapshot")
    live = tmp_path / "live"
    shutil.copytree(copy, live)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "f").write_bytes(b"someone else's")
    os.setxattr(outside / "f", "user.rootmark", b"must stay")
    os.setxattr(outside, "user.rootmark", b"must stay")
    shutil.rmtree(live / "sub")
    (live / "sub").symlink_to(outside)
    os.setxattr(live / "top.txt", "user.added", b"goes")
    _same_xattrs(copy, live)
    assert os.getxattr(outside / "f", "user.rootmark") == b"must stay"
    assert os.getxattr(outside, "user.rootmark") == b"must stay"
    assert os.listxattr(live / "top.txt") == []


def test_target_is_made_relative_to_the_working_directory_and_must_be_a_directory(tmp_path):
    """An outside try: ``--target check/here`` (relative, its parents missing) failed the
    files task ("cannot restore check/here/srv/...: No such file or directory"), and a
    file given as --target was "changed while it was checked". The target is made below
    the working directory with its parents; a file there is a usage error (exit 2)."""
    r = Restore(tmp_path)
    r.both("notes.txt", b"snapshot", b"live")
    work = tmp_path / "cwd"
    work.mkdir()
    argv = ["restore", "--service", "app", "--from", str(r.snapshot)]
    result = r.box.cli(*argv, "--target", "check/here", cwd=work)
    assert result.returncode == 0, result.stderr
    restored = work / "check/here" / str(r.live).lstrip("/") / "notes.txt"
    assert restored.read_bytes() == b"snapshot"
    assert (r.live / "notes.txt").read_bytes() == b"live"
    (work / "a-file").write_bytes(b"")
    refused = r.box.cli(*argv, "--target", "a-file", cwd=work)
    assert refused.returncode == 2, refused.stderr
    assert f"--target {work}/a-file is not a directory" in refused.stderr


def test_a_restored_path_that_is_a_file_now_is_refused_in_words(tmp_path):
    """The snapshot has a directory, the live path is a file: "internal error, please
    report it" (exit 70) before; now refused, nothing replaced."""
    r = Restore(tmp_path)
    shutil.rmtree(r.live)
    r.live.write_text("a file now")
    result = r.run()
    assert result.returncode == 1, result.stderr
    assert f"{r.live} is a file where the snapshot has a directory: nothing" in result.stderr
    assert r.live.read_text() == "a file now"


@pytest.fixture
def small_safety():
    """Mount a tmpfs (``-o options``) as a restore's safety directory; unmounted after."""
    mounted: list[Path] = []

    def mount(r: Restore, options: str) -> Path:
        r.safety.mkdir(mode=0o700)
        subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", r.safety], check=True)
        mounted.append(r.safety)
        return r.safety

    yield mount
    for path in mounted:
        subprocess.run(["umount", "-l", path], check=False)


def live_state(root: Path) -> dict[str, bytes]:
    """The bytes of every regular file below ``root``, by relative path."""
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in root.rglob("*")
        if p.is_file() and not p.is_symlink()
    }


def test_a_live_file_edited_after_the_backup_is_kept_before_it_is_replaced(tmp_path):
    """The edited file is kept (content, owner, mode, mtime, xattrs) in a new directory
    below the safety directory, at its absolute path, before the snapshot's replaces
    it; a changed symlink is kept as a symlink; an unchanged file is not kept; a file
    only the live tree has is neither touched nor kept."""
    r = Restore(tmp_path)
    edited = r.live / "data/secret.key"
    edited.write_text("changed after the backup")
    os.chown(edited, 2345, 5432)
    os.chmod(edited, 0o4640)
    os.utime(edited, ns=(1_700_000_000_111_111_111, 1_700_000_000_222_222_222))
    os.setxattr(edited, "user.note", b"live")
    os.unlink(r.live / "etc/app/link.ini")
    os.symlink("hardlink.ini", r.live / "etc/app/link.ini")
    only_live = r.live / "data/only-live.txt"
    only_live.write_text("nobody backed me up")
    os.utime(only_live, ns=(1_650_000_000_000_000_000,) * 2)

    result = r.run()

    assert result.returncode == 0, result.stderr
    (kept_dir,) = r.kept_dirs()
    assert kept_dir.name.startswith("files-")
    assert stat.S_IMODE(kept_dir.stat().st_mode) == 0o700 and kept_dir.stat().st_uid == 0
    kept = r.kept("data/secret.key", kept_dir)
    st = kept.lstat()
    assert kept.read_text() == "changed after the backup"
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (2345, 5432, 0o4640)
    assert st.st_mtime_ns == 1_700_000_000_222_222_222
    assert os.getxattr(kept, "user.note") == b"live"
    assert os.readlink(r.kept("etc/app/link.ini", kept_dir)) == "hardlink.ini"
    every = sorted(
        str(p.relative_to(r.kept("", kept_dir))) for p in r.kept("", kept_dir).rglob("*")
    )
    assert every == ["data", "data/secret.key", "etc", "etc/app", "etc/app/link.ini"]
    assert edited.read_text() == "k"  # the snapshot's
    assert only_live.read_text() == "nobody backed me up"
    assert only_live.stat().st_mtime_ns == 1_650_000_000_000_000_000
    assert differences(r.copy, r.live, delete=False) == []
    assert re.search(
        rf"kept 2 files \(\S+ \S+\) that the restore replaces in {kept_dir}: ", result.stderr
    )
    assert f"is kept in {kept_dir}" in result.stdout  # the note, for the administrator


def test_a_restore_that_replaces_nothing_different_keeps_nothing_and_makes_no_directory(
    tmp_path,
):
    r = Restore(tmp_path)
    (r.live / "data/only-live.txt").write_text("left alone")
    result = r.run()
    assert result.returncode == 0, result.stderr
    assert "nothing to keep of" in result.stderr
    assert not r.safety.exists()


def test_two_restores_in_the_same_second_keep_two_directories_and_lose_nothing(tmp_path):
    """The same stamp twice (an outside review saw the second restore of a second lose
    what the first had kept): each restore makes its own directory."""
    r = Restore(tmp_path)
    edited = r.live / "data/empty"
    edited.write_text("first edit")
    r.restore_here(r.plan())
    edited.write_text("second edit")
    r.restore_here(r.plan())

    first, second = r.kept_dirs()
    assert first != second
    assert {r.kept("data/empty", d).read_text() for d in (first, second)} == {
        "first edit",
        "second edit",
    }
    assert edited.read_text() == ""


def test_no_room_to_keep_what_a_restore_replaces_replaces_nothing(tmp_path, small_safety):
    """A 3 MiB file edited, 1 MiB free where it would be kept: refused before anything is
    replaced, saying what is needed and free, where, and that --target restores beside."""
    r = Restore(tmp_path)
    safety = small_safety(r, "size=1m,mode=0700")
    (r.live / "data/deep/er/blob.bin").write_bytes(os.urandom(3 << 20))
    (r.live / "data/empty").write_text("edited too")
    before = live_state(r.live)

    result = r.run()

    assert result.returncode == 1
    assert live_state(r.live) == before
    assert re.search(
        r"no room to keep what the restore replaces: 2 files need \S+ MiB", result.stderr
    )
    assert f"inodes in {safety}, where 1.0 MiB and" in result.stderr
    assert "nothing was replaced" in result.stderr and "--target DIR" in result.stderr
    assert list(safety.iterdir()) == []


def test_out_of_inodes_where_a_restore_keeps_replaces_nothing(tmp_path, small_safety):
    """The file system of the safety directory has bytes but few inodes: the room check
    counts them and refuses; nothing of the live tree is removed or replaced (the
    withdrawn design's cp --remove-destination left live names removed half-way)."""
    r = Restore(tmp_path)
    safety = small_safety(r, "size=64m,nr_inodes=12,mode=0700")
    for number in range(40):
        r.both(f"many/{number:02d}.txt", b"snapshot", b"live, edited")
    before = live_state(r.live)

    result = r.run()

    assert result.returncode == 1
    assert live_state(r.live) == before
    assert "no room to keep what the restore replaces: 40 files need" in result.stderr
    words = r"and \d+ inodes in .*, where \S+ MiB and [\d,]+ inodes are free"
    assert re.search(words, result.stderr)
    assert list(safety.iterdir()) == []


def test_keeping_that_fails_half_way_replaces_nothing_and_says_what_was_kept(
    tmp_path, small_safety, monkeypatch
):
    """Past the room check (a writer filled the disk meanwhile; here the check is off),
    the keeping runs out of inodes half-way: nothing is replaced, and the error says how
    much was kept where."""
    r = Restore(tmp_path)
    small_safety(r, "size=64m,nr_inodes=12,mode=0700")
    for number in range(40):
        r.both(f"many/{number:02d}.txt", b"snapshot", b"live, edited")
    before = live_state(r.live)
    monkeypatch.setattr(before_restore, "_check_room", lambda *_: None)

    with pytest.raises(TaskError) as failed:
        r.restore_here(r.plan())

    assert live_state(r.live) == before
    message = str(failed.value)
    assert "keeping what the restore replaces failed at " in message
    assert "No space left on device; nothing was replaced; " in message
    (kept_dir,) = r.kept_dirs()
    assert re.search(rf"; \d+ files \(\S+ \S+\) were kept in {kept_dir} \(a part only", message)


def test_a_directory_swapped_for_a_symlink_to_etc_leads_nowhere_outside(tmp_path):
    """The tree's owner makes a directory of the snapshot a symlink to /etc before the
    restore, and the snapshot has names /etc has: nothing of /etc is read into the
    kept directory, nothing there is written, nothing else replaced."""
    r = Restore(tmp_path)
    (r.copy / "data/deep/hostname").write_text("snapshot's, not /etc's")
    (r.copy / "data/deep/passwd").write_text("snapshot's, not /etc's")
    shutil.rmtree(r.live / "data/deep")
    os.symlink("/etc", r.live / "data/deep")
    (r.live / "data/empty").write_text("edited")
    etc = {
        name: (Path("/etc", name).read_bytes(), Path("/etc", name).stat())
        for name in ("hostname", "passwd")
    }

    result = r.run()

    assert result.returncode == 1  # refused before anything: cp would fail half-way
    assert "data/deep is a symlink where the snapshot has a directory" in result.stderr
    assert r.kept_dirs() == [] and (r.live / "data/empty").read_text() == "edited"
    for name, (data, st) in etc.items():
        now = Path("/etc", name).stat()
        assert Path("/etc", name).read_bytes() == data
        assert (now.st_mtime_ns, now.st_ino, now.st_uid) == (st.st_mtime_ns, st.st_ino, st.st_uid)
    assert os.readlink(r.live / "data/deep") == "/etc"


def test_a_live_symlink_where_the_snapshot_has_a_file_is_refused_before_anything(tmp_path):
    """cp -a writes through a live symlink onto its target (content, owner, set-id mode:
    an outside file became the tree owner's): the restore refuses before it replaces
    anything, and keeps nothing."""
    r = Restore(tmp_path)
    outside = tmp_path / "outside.conf"
    outside.write_text("someone else's")
    outside.chmod(0o600)
    (r.live / "data/secret.key").unlink()
    os.symlink(outside, r.live / "data/secret.key")
    (r.live / "data/empty").write_text("edited")

    result = r.run()

    assert result.returncode == 1
    assert outside.read_text() == "someone else's"
    assert (outside.stat().st_uid, stat.S_IMODE(outside.stat().st_mode)) == (0, 0o600)
    assert (r.live / "data/empty").read_text() == "edited"  # nothing replaced
    assert "data/secret.key is a symlink where the snapshot has a file (cp would write" in (
        result.stderr
    )
    assert r.kept_dirs() == []


def test_a_live_fifo_where_the_snapshot_has_a_file_is_refused_not_waited_on(tmp_path):
    """cp opens a FIFO in the file's place and waits for a reader for ever."""
    r = Restore(tmp_path)
    (r.live / "data/secret.key").unlink()
    os.mkfifo(r.live / "data/secret.key")
    result = r.run(timeout=60)
    assert result.returncode == 1
    assert "data/secret.key is a FIFO where the snapshot has a file (cp would open it)" in (
        result.stderr
    )


def test_a_dry_run_names_what_it_would_keep_and_makes_nothing(tmp_path):
    r = Restore(tmp_path)
    (r.live / "data/empty").write_text("edited")
    (r.live / "data/exact-block").write_text("edited too")
    result = r.run("--dry-run")
    assert result.returncode == 0, result.stderr
    assert re.search(
        rf"would: keep 2 files \(\S+ \S+\) of {r.live} in {r.safety}/files-", result.stdout
    )
    assert not r.safety.exists()
    assert (r.live / "data/empty").read_text() == "edited"


def test_a_restored_path_that_is_one_file_is_kept_too(tmp_path):
    r = Restore(tmp_path)
    one = r.live / "data/secret.key"
    one.write_text("edited")
    r.restore_here(r.plan(), one)
    assert r.kept("data/secret.key").read_text() == "edited"
    assert one.read_text() == "k"


def test_a_live_directory_where_the_snapshot_has_a_file_is_refused(tmp_path):
    """cp -a of a file onto a directory copies it into the directory, over the entry of
    its name there (nothing kept that): refused, nothing replaced."""
    r = Restore(tmp_path)
    place = r.live / "data/secret.key"
    place.unlink()
    place.mkdir()
    (place / "secret.key").write_text("inside, live")
    with pytest.raises(TaskError, match="is a directory where the snapshot has a file"):
        r.restore_here(r.plan(), place)
    assert (place / "secret.key").read_text() == "inside, live"
    assert r.kept_dirs() == []


def sparse(path: Path, size: int, pieces: dict[int, bytes]) -> Path:
    """A file of ``size`` bytes at ``path``, holding only ``pieces`` (offset: bytes)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        f.truncate(size)
        for offset, data in pieces.items():
            f.seek(offset)
            f.write(data)
    return path


def first_data(path: Path) -> int:
    with open(path, "rb") as f:
        try:
            return os.lseek(f.fileno(), 0, os.SEEK_DATA)
        except OSError:
            return os.stat(path).st_size


def compared(tmp_path: Path, size: int, copy: dict[int, bytes], live: dict[int, bytes]):
    """find_replaced of one sparse file, ``copy`` in the snapshot and ``live`` in its
    place: the entries it found, and the bytes this thread read meanwhile."""
    from pullback.plugins.before_restore import find_replaced

    sparse(tmp_path / "copy/img", size, copy)
    sparse(tmp_path / "live/img", size, live)
    before = thread_read_bytes()
    found = find_replaced(tmp_path / "copy/img", tmp_path / "live/img")
    return found.entries, thread_read_bytes() - before


MIB = 1 << 20
BLOCK_OF = bytes(range(256)) * 4096  # 1 MiB of data, no zeros in long runs


def test_a_big_sparse_file_is_compared_where_it_holds_data_only(tmp_path):
    """16 GiB holding 1 MiB, the same in the snapshot and live: equal, reading the
    megabyte of each (it read 32 GiB of zeros, 28 s, before); one byte other in the
    data is found."""
    size, middle = 16 << 30, 8 << 30
    entries, read = compared(tmp_path, size, {middle: BLOCK_OF}, {middle: BLOCK_OF})
    assert entries == []
    assert read < 8 * MIB, read
    other = BLOCK_OF[:-1] + b"\x00"
    entries, read = compared(tmp_path / "2", size, {middle: BLOCK_OF}, {middle: other})
    assert [e.names for e in entries] == [()]
    assert read < 8 * MIB, read


def test_maps_that_differ_over_equal_bytes_are_equal(tmp_path):
    """Zeros written live where the snapshot has a hole (and a hole live where it has
    zeros): the same bytes, so nothing is kept, though the maps differ."""
    size = 64 * MIB
    zeros = bytes(2 * MIB)
    copy = {8 * MIB: BLOCK_OF, 40 * MIB: zeros}
    live = {0: zeros, 8 * MIB: BLOCK_OF}
    sparse(tmp_path / "probe/copy", size, copy)
    sparse(tmp_path / "probe/live", size, live)
    assert first_data(tmp_path / "probe/live") == 0  # the maps do differ
    assert first_data(tmp_path / "probe/copy") == 8 * MIB
    entries, read = compared(tmp_path, size, copy, live)
    assert entries == []
    assert read < 16 * MIB, read  # the three data ranges of either, from both


@pytest.mark.parametrize("side", ["live", "copy"])
def test_one_byte_where_the_other_has_a_hole_differs(tmp_path, side):
    """A byte in the middle of what is a hole in the other file (either way round)."""
    size = 64 * MIB
    plain = {8 * MIB: BLOCK_OF}
    more = {8 * MIB: BLOCK_OF, 33 * MIB + 12345: b"\x01"}
    copy, live = (plain, more) if side == "live" else (more, plain)
    entries, _ = compared(tmp_path, size, copy, live)
    assert [e.names for e in entries] == [()]


def test_a_file_system_that_cannot_tell_holes_has_its_files_read_whole(tmp_path, monkeypatch):
    """lseek(SEEK_DATA) failing with EINVAL (a file system without it; none here has
    none, so lseek is made to fail): both files are read whole, and compared exactly."""
    real = os.lseek

    def without_holes(fd, offset, whence):
        if whence in (os.SEEK_DATA, os.SEEK_HOLE):
            raise OSError(errno.EINVAL, "Invalid argument")
        return real(fd, offset, whence)

    monkeypatch.setattr(os, "lseek", without_holes)
    size = 16 * MIB
    entries, read = compared(tmp_path, size, {MIB: BLOCK_OF}, {MIB: BLOCK_OF})
    assert entries == [] and read >= 2 * size, read
    entries, _ = compared(tmp_path / "2", size, {MIB: BLOCK_OF}, {9 * MIB: b"\x01"})
    assert [e.names for e in entries] == [()]


def test_a_path_below_a_symlink_another_path_keeps_is_refused_and_the_advice_works(tmp_path):
    """paths [big, big/app/data] with big/app root's symlink to other (helper-152 F3):
    the archive held big/app as a symlink (big's tree) and as a directory (the inner
    path's parents), and every restore stopped ("would be written through the
    symlink"). Now the run archives the rest, fails the task naming the real path, and
    ``check`` says it; with the real path listed instead the service restores."""
    big, other = tmp_path / "big", tmp_path / "other"
    (other / "data").mkdir(parents=True)
    (other / "data" / "db").write_text("rows\n")
    big.mkdir()
    (big / "f").write_text("f\n")
    (big / "app").symlink_to(other)
    box = ClientSandbox(tmp_path / "client")
    box.add_service("app", f"service: {{name: app}}\nfiles: {{paths: [{big}, {big}/app/data]}}\n")
    box.add_service("web", f"service: {{name: web}}\nfiles: {{paths: [{big / 'f'}]}}\n")
    advice = f"list its real path {other / 'data'} instead"

    made = box.cli("run")
    assert made.returncode == 1, made.stderr[-2000:]
    assert f"path {big}/app/data lies below {big} through the symlink {big}/app" in made.stderr
    assert advice in made.stderr
    (archive,) = box.published()  # (web's files, and big's)
    listed = subprocess.run(
        ["tar", "--zstd", "-tf", archive], capture_output=True, text=True, check=True
    ).stdout.splitlines()
    assert len(listed) == len(set(listed)), "a name twice in the archive"
    checked = box.cli("check")
    assert checked.returncode != 0 and advice in checked.stdout + checked.stderr

    box.add_service("app", f"service: {{name: app}}\nfiles: {{paths: [{big}, {other}/data]}}\n")
    made = box.cli("run")
    assert made.returncode == 0, made.stderr[-2000:]
    latest = max(box.published())
    (other / "data" / "db").write_text("damaged\n")
    done = box.cli("restore", "--service", "app", "--from", str(latest))
    assert done.returncode == 0, done.stderr[-2000:]
    assert (other / "data" / "db").read_text() == "rows\n"
    assert (big / "app").is_symlink()


def test_what_a_restore_keeps_leaves_min_free_space_free_where_it_is_kept(tmp_path, small_safety):
    """The kept copies fit the safety file system but would leave it under
    min_free_space (it is most often /, where the live databases write): refused before
    anything is replaced, saying so; with less asked to stay free, the restore runs."""
    r = Restore(tmp_path)
    safety = small_safety(r, "size=16m,mode=0700")
    (r.live / "data/deep/er/blob.bin").write_bytes(os.urandom(3 << 20))
    before = live_state(r.live)
    r.box.write_config(min_free_space="14M")

    result = r.run()

    assert result.returncode == 1, result.stderr
    assert live_state(r.live) == before
    assert "(and 14.0 MiB kept free: min_free_space)" in result.stderr
    assert "nothing was replaced" in result.stderr and list(safety.iterdir()) == []
    r.box.write_config(min_free_space="4M")
    result = r.run()
    assert result.returncode == 0, result.stderr
    assert (r.live / "data/deep/er/blob.bin").read_bytes() == (
        r.copy / "data/deep/er/blob.bin"
    ).read_bytes()
