"""helper-158: outside attack on max_holes_and_links (8cda786, 1a50c7f) and the
warnings bound (dd5ab84). Each test failed while its defect existed."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pullback.common.archive import filedata
from pullback.common.archive import writer as writer_module
from pullback.common.archive.writer import ArchiveWriter

MIB = 1 << 20
GIB = 1 << 30
USER = 65534  # nobody


def hole(path: Path, size: int, data: bytes = b"x") -> Path:
    with open(path, "wb") as handle:
        handle.write(data)
        handle.truncate(size)
    return path


needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="chown needs root")


def _root_vm(tmp_path: Path) -> Path:
    vm = tmp_path / "libvirt"
    vm.mkdir()
    hole(vm / "guest.img", 100 * MIB)  # root's own sparse VM image (uid 0)
    return vm


def _vm_image_left_out(tmp_path: Path, home: Path) -> list[str]:
    """The warnings that leave root's VM image out when the user's ``home`` is walked
    first, in one archive bounded at 256 MiB."""
    vm = _root_vm(tmp_path)
    out = tmp_path / "host-20260101T000000Z.tar"
    with ArchiveWriter(out, "none", max_holes_and_links=256 * MIB) as writer:
        s1 = writer.add_tree(home, "services/home/files/home")
        s2 = writer.add_tree(vm, "services/vm/files/libvirt")
        writer.finish()
    return [w for w in [*s1.warnings, *s2.warnings] if "left out" in w and "guest.img" in w]


# -- F1: a root-owned file the user may write is root's pool ------------------------------


@needs_root
def test_user_truncating_a_root_owned_writable_file_leaves_roots_vm_image_out(tmp_path):
    """A root-owned file the user may write (mode 0666, or group-writable in a shared
    setgid directory: root's services and admins make them) sits below a listed path the
    walk meets first. The user runs ``truncate -s 200M`` on it: 200 MiB of holes count
    against *root's* pool, and root's own VM image (100 MiB of holes, bound 256 MiB) is
    left out of the backup. Expected: a user cannot leave root's own files out
    (docs/security.md: "root's files have a bound of their own, so a user's file walked
    first cannot leave them out")."""
    home = tmp_path / "home"
    home.mkdir()
    os.chown(home, USER, USER)
    shared = home / "shared.log"
    shared.write_bytes(b"root's log line\n")
    os.chmod(shared, 0o666)  # root-owned, world-writable
    os.truncate(shared, 200 * MIB)  # the user (write permission suffices)
    assert not _vm_image_left_out(tmp_path, home)


@needs_root
def test_user_links_to_a_root_owned_writable_file_leave_roots_vm_image_out(tmp_path):
    """With Debian's default ``fs.protected_hardlinks=1`` a user may still hard-link a
    file they can read and write, root's included (checked with setpriv as nobody: ``ln``
    of a root-owned 0666 file works). 30 names of a root-owned 10 MiB file count 290 MiB
    against root's pool (the link's owner is the inode's, root), and root's VM image is
    left out. The docs only admit this for ``protected_hardlinks=0``."""
    home = tmp_path / "home"
    home.mkdir()
    os.chown(home, USER, USER)
    shared = home / "a-shared.db"
    shared.write_bytes(b"y" * (10 * MIB))
    os.chmod(shared, 0o666)
    for i in range(30):
        os.link(shared, home / f"l{i:02d}")
    assert not _vm_image_left_out(tmp_path, home)


# -- F2: the log bound is per listed path, not per task -----------------------------------


class _Lines:
    def __init__(self):
        self.warned: list[str] = []

    def warning(self, fmt, *args):
        self.warned.append(fmt % args)

    def info(self, fmt, *args):
        pass

    debug = error = info


def _task(tmp_path: Path, kind: str, lines: _Lines, **extra):
    """A task of ``kind`` whose log and runner write to ``lines``."""
    from pullback.common.runner import Runner
    from pullback.plugins.task import Task

    return Task(
        type=kind,
        key=kind,
        config={},
        service="app",
        service_file=tmp_path / "app.yaml",
        staging=tmp_path / "staging",
        runner=Runner(lines),
        log=lines,
        **extra,
    )


def test_a_files_task_logs_at_most_its_thousand_warnings_whatever_its_paths(tmp_path):
    """dd5ab84: "a task keeps its first 1,000 warnings and counts the rest (log,
    report ...)"; docs/security.md: a user cannot "flood the run's log ... with
    warnings, one per entry they make: a task keeps 1,000". But ``archive_paths`` logs
    each listed path's own ``warning_lines()``: 1,001 lines per path. A task listing
    several paths a user may write below (/home, /srv/www, /var/tmp, /tmp ...) logs
    1,001 lines for each; here 3 paths, 1,500 hard links past the bound in each, log
    3,003 lines while the task's report keeps 1,000 and a count. Expected: the task's
    log holds at most 1,000 warnings and one count line."""
    from pullback.plugins.files import ExcludeMatcher, archive_paths

    paths = []
    for name in ("srv", "tmp", "var-tmp"):
        top = tmp_path / name
        top.mkdir()
        first = top / "a"
        first.write_bytes(b"z" * MIB)
        for i in range(1500):
            os.link(first, top / f"l{i:04d}")
        paths.append(str(top))
    lines = _Lines()
    out = tmp_path / "host-20260101T000000Z.tar"
    with ArchiveWriter(out, "none", max_holes_and_links=1 * MIB) as writer:
        task = _task(tmp_path, "files", lines, arcdir="services/app/files", archive=writer)
        archive_paths(task, paths, ExcludeMatcher([]), xattrs=False)
        writer.finish()
    assert task.stats.warnings.total >= 3 * 1499  # (the first further name fits)
    assert len(lines.warned) <= 1001, f"{len(lines.warned)} warning lines logged by one task"


# -- F3: a database plugin logs one line per failed database, unbounded ------------------


def test_a_database_task_logs_at_most_its_thousand_warnings(tmp_path):
    """``plugins/_common.each_database`` logs each database that could not be dumped
    with ``task.log.warning`` *before* ``task.stats.warnings.append``: the log is not
    bounded by MAX_TASK_WARNINGS. A tenant of a shared MariaDB/PostgreSQL who may create
    databases makes thousands whose dump fails (a view on a dropped table, a lock held,
    a name mysqldump refuses): one log line each, however many (here 3,000). Expected
    (dd5ab84: "a task keeps its first 1,000 warnings and counts the rest (log,
    report ...)"): at most 1,000 lines and a count."""
    from pullback.plugins._common import each_database
    from pullback.plugins.task import TaskError, TaskPartial

    lines = _Lines()
    task = _task(tmp_path, "mariadb", lines)

    def dump_one(name):
        if name.startswith("tenant"):
            raise TaskError(f"mysqldump {name} failed: View 'x.v' references invalid table(s)")

    names = ["main", *[f"tenant{i:04d}" for i in range(3000)]]
    with pytest.raises(TaskPartial):
        each_database(task, names, dump_one)
    assert task.stats.warnings.total == 3000
    assert len(lines.warned) <= 1001, f"{len(lines.warned)} warning lines logged by one task"


# -- F4: an inode number reused during the run: (dev, ino) verdicts outlive their file ----


def _swap_after_read(monkeypatch, data: Path, later: Path, content: bytes):
    """Once ``data/a`` was read and closed (while ``data/b`` is read): the user deletes
    ``a`` and its other name ``a2``; then a file of root's with two names is made below
    ``later`` (ext4 hands it the inode number just freed). Returns what the hook saw."""
    real_read = filedata.read_content
    seen: dict = {"old": (data / "a").stat().st_ino}
    (data / "b").write_bytes(b"b")

    def read_then_swapped(fd):
        got = real_read(fd)
        if os.fstat(fd).st_ino == (data / "b").stat().st_ino and "new" not in seen:
            os.unlink(data / "a")
            os.unlink(data / "a2")
            made = data / "new"  # (made in a's directory: ext4 hands out the number its
            made.write_bytes(content)  # group freed first; then moved where the walk
            new = later / "r1"  # has yet to list)
            os.rename(made, new)
            os.link(new, later / "r2")
            seen["new"] = new.stat().st_ino
        return got

    monkeypatch.setattr(writer_module, "read_content", read_then_swapped)
    return seen


def _archived_while_swapped(tmp_path: Path, monkeypatch, data: Path):
    """``data`` archived (bound 1 GiB) while :func:`_swap_after_read` gives a root file
    made below ``data/z`` the inode number of the user's ``a``; skipped where the file
    system did not reuse it. Returns the archive's path and the walk's stats."""
    later = data / "z"
    later.mkdir()
    seen = _swap_after_read(monkeypatch, data, later, b"root's config\n")
    out = tmp_path / "host-20260101T000000Z.tar"
    with ArchiveWriter(out, "none", max_holes_and_links=1 * GIB) as writer:
        stats = writer.add_tree(data, "services/app/files")
        writer.finish()
    if seen.get("new") != seen.get("old"):
        pytest.skip("the file system did not reuse the inode number")
    return out, stats


def test_a_reused_inode_is_not_left_out_for_another_files_holes(tmp_path, monkeypatch):
    """1a50c7f's ``_too_holey`` keeps (device, inode) of a file left out for its holes
    for the whole run. The user's ``a`` (two names, 2 GiB of holes) is left out; the user
    deletes it; a file root makes meanwhile with two names (a hard-linked tree being
    written: rsnapshot, a package's hard links, git objects) gets the freed inode number
    (ext4 reuses it at once) and, walked later, both its names are "left out: another
    name of a file left out for its holes", unread: root's file is not in the backup.
    Expected: a verdict holds for the file it was made on (its ctime/size/nlink), not
    for whatever later has its number."""
    data = tmp_path / "data"
    data.mkdir()
    hole(data / "a", 2 * GIB)
    os.link(data / "a", data / "a2")
    _, stats = _archived_while_swapped(tmp_path, monkeypatch, data)
    assert not [w for w in stats.warnings if "/z/r" in w], list(stats.warnings)


def test_a_reused_inode_is_not_archived_as_a_link_to_another_file(tmp_path, monkeypatch):
    """The same with ``_links`` (older than these commits, but 1a50c7f made it carry the
    first name's size and nothing else): the user's ``a`` (two names) fits and goes in;
    the user deletes it; root's new two-name file gets its inode number and goes into
    the archive as a *hard link to the user's a*: the server stages root's file with the
    user's bytes, the manifest agrees (it copies a's digest), and a restore gives root's
    file the user's content. Expected: root's file with its own bytes."""
    import tarfile

    data = tmp_path / "data"
    data.mkdir()
    (data / "a").write_bytes(b"the user's bytes\n")
    os.link(data / "a", data / "a2")
    out, _ = _archived_while_swapped(tmp_path, monkeypatch, data)
    with tarfile.open(out) as tar:
        r1 = tar.getmember("services/app/files/z/r1")
        assert not r1.islnk(), f"root's z/r1 archived as a hard link to {r1.linkname}"


# -- F5: TaskStats.warnings is no longer a plain list for plugins -------------------------


def test_task_stats_survive_pickling():
    """``TaskStats`` is exported to plugins (pullback.plugins.TaskStats). Since dd5ab84
    its ``warnings`` is a BoundedWarnings: pickling it (a plugin handing stats back from
    a multiprocessing worker) raises AttributeError ('limit': APPENDS runs the
    overridden ``extend`` before the instance's dict is restored), and
    ``dataclasses.asdict`` (``--json``-style output, cli._jsonable) silently drops every
    warning (it rebuilds the list as ``BoundedWarnings(generator)``)."""
    import dataclasses
    import pickle

    from pullback.common.archive.stats import TaskStats

    stats = TaskStats()
    stats.warnings.append("/srv/x: skipped, a socket is not backed up")
    assert dataclasses.asdict(stats)["warnings"] == ["/srv/x: skipped, a socket is not backed up"]
    again = pickle.loads(pickle.dumps(stats))
    assert list(again.warnings) == list(stats.warnings)


def test_augmented_assignment_keeps_the_bound():
    """``task.stats.warnings += lines`` (list's ``__iadd__``, which the hookspec's
    "append to task.stats.warnings" invites) bypasses ``append``: every line is kept,
    unbounded."""
    from pullback.common.archive.stats import TaskStats

    stats = TaskStats()
    stats.warnings += [f"/srv/{i}: odd" for i in range(5000)]
    assert len(stats.warnings) <= 1000 and stats.warnings.total == 5000
