"""Hard links between two listed paths of a files task come back linked after a client
restore (helper-154 F7: each path had a ``cp`` of its own, and the links split), with
rsync as the oracle; a name that is no longer what the restore wrote stays a copy, said,
in a bounded number of words."""

from __future__ import annotations

import logging
import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from pullback.plugins import relink
from pullback.plugins.copy_room import Links
from tests.helpers.client import ClientSandbox
from tests.helpers.files import thread_read_bytes

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="owners need root")


def linked_tree(root: Path) -> tuple[Path, Path]:
    """``root/a`` and ``root/b``: ``a/f`` linked to ``b/g`` and ``b/sub/h`` (three names,
    two paths), ``a/solo`` alone, ``b/pair1`` and ``b/pair2`` linked within one path."""
    a, b = root / "a", root / "b"
    (b / "sub").mkdir(parents=True)
    a.mkdir()
    (a / "f").write_bytes(b"shared bytes\n" * 100)
    os.chown(a / "f", 65534, 65534)
    os.chmod(a / "f", 0o4750)
    os.link(a / "f", b / "g")
    os.link(a / "f", b / "sub" / "h")
    (a / "solo").write_text("solo\n")
    (b / "pair1").write_text("pair\n")
    os.link(b / "pair1", b / "pair2")
    return a, b


def rsync_differences(expected: Path, live: Path) -> list[str]:
    """What ``rsync -aHAXn --checksum`` would change to make ``live`` be ``expected``
    (hard links included: -H)."""
    done = subprocess.run(
        [
            "rsync",
            "-aHAXn",
            "--checksum",
            "--delete",
            "--itemize-changes",
            f"{expected}/",
            f"{live}/",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout.splitlines()


needs_rsync = pytest.mark.skipif(not shutil.which("rsync"), reason="rsync not installed")


@needs_rsync
def test_links_between_two_listed_paths_come_back_linked(tmp_path):
    """A backup of ``[a, b]``, then the live tree changed (a link broken, a name's file
    rewritten, one removed): the restore from the archive gives back one file of three
    names across both paths, exactly as rsync -H sees the tree before."""
    a, b = linked_tree(tmp_path / "srv")
    expected = tmp_path / "expected"
    subprocess.run(["cp", "-a", str(tmp_path / "srv"), str(expected)], check=True)
    box = ClientSandbox(tmp_path / "client")
    box.add_service("app", f"service: {{name: app}}\nfiles: {{paths: [{a}, {b}]}}\n")
    made = box.cli("run")
    assert made.returncode == 0, made.stderr[-2000:]
    (archive,) = box.published()
    (b / "g").unlink()
    (b / "g").write_text("a file of its own now\n")
    (b / "sub" / "h").unlink()
    with open(a / "f", "ab") as handle:
        handle.write(b"edited\n")

    dry = box.cli("restore", "--service", "app", "--from", str(archive), "--dry-run")
    assert dry.returncode == 0, dry.stderr[-2000:]
    assert "link 2 names again to a file of another restored path" in dry.stdout + dry.stderr
    assert (b / "g").read_text() == "a file of its own now\n"

    done = box.cli("restore", "--service", "app", "--from", str(archive))
    assert done.returncode == 0, done.stderr[-2000:]
    assert "linked 2 names again as in the snapshot" in done.stderr
    assert rsync_differences(expected, tmp_path / "srv") == []
    inodes = {os.stat(p).st_ino for p in (a / "f", b / "g", b / "sub" / "h")}
    assert len(inodes) == 1 and os.stat(a / "f").st_nlink == 3
    assert os.stat(b / "pair1").st_ino == os.stat(b / "pair2").st_ino
    assert not list(b.rglob(".pullback-link.*"))


def make_copies(tmp_path: Path, count: int) -> tuple[Links, list[Path], list[Path]]:
    """``count`` names ``a/fN`` each linked (in the snapshot) to ``b/fN``, restored as
    two files each; the Links the room check would have noted."""
    snapshot, live = tmp_path / "snap", tmp_path / "live"
    links = Links()
    for root in (snapshot, live):
        (root / "a").mkdir(parents=True)
        (root / "b").mkdir()
    for n in range(count):
        (snapshot / "a" / f"f{n}").write_text(f"{n}\n")
        os.link(snapshot / "a" / f"f{n}", snapshot / "b" / f"f{n}")
        for side in ("a", "b"):
            shutil.copy2(snapshot / "a" / f"f{n}", live / side / f"f{n}")
        links.again.append(((0, (f"f{n}",)), (1, (f"f{n}",))))
    return links, [live / "a", live / "b"], [snapshot / "a", snapshot / "b"]


def test_a_name_changed_since_the_restore_stays_a_copy_in_bounded_words(tmp_path, caplog):
    """Seven names whose first file changed after cp wrote it (a service already at it):
    none is linked to the changed file; five are named, two counted."""
    links, restored, copies = make_copies(tmp_path, 7)
    for n in range(7):
        (restored[0] / f"f{n}").write_text("changed by a service\n")
    log = logging.getLogger("pullback.test.relink")
    with caplog.at_level(logging.WARNING, logger="pullback.test.relink"):
        assert relink.link_again(log, links, restored, copies) == 0
    said = [r.getMessage() for r in caplog.records]
    assert len(said) == 6 and said[-1] == "and 2 names more left copies", said
    assert all("changed since it was restored" in line for line in said[:5])
    assert (restored[1] / "f3").read_text() == "3\n"  # the copy, whole


def test_a_directory_swapped_for_a_symlink_another_user_made_is_not_linked_through(
    tmp_path, caplog
):
    """The later name's directory became a symlink a user made to a directory of theirs
    after the copy: nothing is linked there (open_trusted_dir refuses the way)."""
    links, restored, copies = make_copies(tmp_path, 1)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    shutil.copy2(copies[0] / "f0", elsewhere / "f0")
    shutil.rmtree(restored[1])
    os.symlink(elsewhere, restored[1])
    os.lchown(restored[1], 65534, 65534)
    log = logging.getLogger("pullback.test.relink")
    with caplog.at_level(logging.WARNING, logger="pullback.test.relink"):
        assert relink.link_again(log, links, restored, copies) == 0
    assert os.stat(elsewhere / "f0").st_nlink == 1
    assert len(caplog.records) == 1 and "left a copy" in caplog.records[0].getMessage()


def test_names_on_two_file_systems_stay_copies_said(tmp_path, caplog, tmpfs):
    """A disk mounted at the later path since: no link can cross it; said, not an error."""
    links, restored, copies = make_copies(tmp_path, 1)
    tmpfs(restored[1], "size=1m")
    shutil.copy2(copies[0] / "f0", restored[1] / "f0")
    log = logging.getLogger("pullback.test.relink")
    with caplog.at_level(logging.WARNING, logger="pullback.test.relink"):
        assert relink.link_again(log, links, restored, copies) == 0
    (record,) = caplog.records
    assert "on two file systems now" in record.getMessage()
    assert (restored[1] / "f0").read_text() == "0\n"


def test_an_extra_link_that_cannot_be_removed_again_is_named(tmp_path, caplog, monkeypatch):
    """The rename over the later name fails, and so does the removal of the link made
    beside it (what an append-only directory on a file system that hides the flag, or
    an I/O error, would do): the warning names the extra link to remove."""
    links, restored, copies = make_copies(tmp_path, 1)

    def refused(*args, **kwargs):
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(relink.os, "replace", refused)
    monkeypatch.setattr(relink.os, "unlink", refused)
    log = logging.getLogger("pullback.test.relink")
    with caplog.at_level(logging.WARNING, logger="pullback.test.relink"):
        assert relink.link_again(log, links, restored, copies) == 0
    (extra,) = restored[1].glob(".pullback-link.*")
    (said,) = [r.getMessage() for r in caplog.records]
    assert said.endswith(
        f"Operation not permitted; the extra link {extra.name} made beside it could not be "
        "removed (Operation not permitted): remove it"
    ), said


@pytest.mark.parametrize("kind", ["fifo", "device"])
def test_a_first_name_swapped_for_a_node_is_never_opened(tmp_path, caplog, kind):
    """A user who owns the first name's directory swaps it for a FIFO or a device node
    (opening one may act: a tape rewinds): it is looked at, never opened; the later
    name stays the copy it is."""
    links, restored, copies = make_copies(tmp_path, 1)
    first = restored[0] / "f0"
    first.unlink()
    if kind == "fifo":
        os.mkfifo(first)
    else:
        os.mknod(first, 0o600 | stat.S_IFCHR, os.makedev(1, 3))
    log = logging.getLogger("pullback.test.relink")
    with caplog.at_level(logging.WARNING, logger="pullback.test.relink"):
        assert relink.link_again(log, links, restored, copies) == 0
    (said,) = [r.getMessage() for r in caplog.records]
    assert said.endswith("changed since it was restored"), said
    assert (restored[1] / "f0").read_text() == "0\n"


def test_a_sparse_file_linked_into_three_paths_is_compared_where_it_holds_data(tmp_path):
    """A 64 GiB image holding 1 MiB, linked into three paths (helper-156 F2: relink
    read it whole, holes too, once for each later name: about 16 s for 4 GiB here). Its
    bytes are compared where either copy holds data, once: the thread reads a few MiB."""
    snapshot, live = tmp_path / "snap", tmp_path / "live"
    size, data = 64 << 30, os.urandom(1 << 20)
    sides = ("a", "b", "c")
    for root in (snapshot, live):
        for side in sides:
            (root / side).mkdir(parents=True)
    for root, side in [(snapshot, "a"), *((live, s) for s in sides)]:
        with open(root / side / "disk.img", "wb") as handle:
            handle.seek(size // 2)
            handle.write(data)
            handle.truncate(size)
        os.utime(root / side / "disk.img", ns=(0, 10**18))
    for side in ("b", "c"):
        os.link(snapshot / "a" / "disk.img", snapshot / side / "disk.img")
    links = Links()
    links.again += [((0, ("disk.img",)), (n, ("disk.img",))) for n in (1, 2)]
    before = thread_read_bytes()
    log = logging.getLogger("pullback.test.relink")
    linked = relink.link_again(log, links, [live / s for s in sides], [snapshot / s for s in sides])
    read = thread_read_bytes() - before
    assert linked == 2 and len({os.stat(live / s / "disk.img").st_ino for s in sides}) == 1
    assert read < 16 << 20, f"{read} bytes read"


@pytest.mark.parametrize("kind", ["file", "symlink", "missing directory"])
def test_the_directory_holding_a_restored_path_keeps_its_times(tmp_path, kind):
    """A listed path that is a file or a symlink is replaced by cp -T, a missing one
    made: the directory holding it is no path the restore was asked for, and keeps its
    times (the booted root's rsync -aHAXn oracle saw its mtime moved)."""
    holder = tmp_path / "srv"
    holder.mkdir()
    path = holder / "x"
    if kind == "file":
        path.write_text("snapshot\n")
    elif kind == "symlink":
        path.symlink_to("somewhere")
    else:
        path.mkdir()
        (path / "f").write_text("snapshot\n")
    box = ClientSandbox(tmp_path / "client")
    box.add_service("app", f"service: {{name: app}}\nfiles: {{paths: [{path}]}}\n")
    made = box.cli("run")
    assert made.returncode == 0, made.stderr[-2000:]
    (archive,) = box.published()
    if kind == "file":
        path.write_text("edited\n")
    elif kind == "symlink":
        path.unlink()
        path.symlink_to("elsewhere")
    else:
        shutil.rmtree(path)
    os.utime(holder, ns=(10**18, 10**18))
    done = box.cli("restore", "--service", "app", "--from", str(archive))
    assert done.returncode == 0, done.stderr[-2000:]
    assert os.stat(holder).st_mtime_ns == 10**18
    if kind == "symlink":
        assert os.readlink(path) == "somewhere"
    else:
        assert (path if kind == "file" else path / "f").read_text() == "snapshot\n"
