"""``pullback-client restore`` of a ``files`` task onto live paths that changed after the
snapshot: real files, real ``cp``, real xattrs and ACLs, rsync as the oracle.

The snapshot here is the ``services/app/files/...`` tree of a restored snapshot, made by
``cp -a`` of the live tree (what ``pullback-server restore`` leaves): what the restore
must bring back, bit for bit."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.helpers.client import ClientSandbox
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

    def run(self, *extra: str) -> subprocess.CompletedProcess:
        return self.box.cli("restore", "--service", "app", "--from", str(self.snapshot), *extra)


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
    """cp refuses to write through it (the outside directory is untouched); the rest is
    restored, and the error reads as lines, no literal \\n."""
    r = Restore(tmp_path)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "blob.bin").write_text("outside")
    shutil.rmtree(r.live / "data/deep/er")
    os.symlink(outside, r.live / "data/deep/er")
    (r.live / "data/empty").write_text("changed")

    result = r.run()

    assert result.returncode == 1
    assert (outside / "blob.bin").read_text() == "outside"
    assert os.path.islink(r.live / "data/deep/er")
    assert (r.live / "data/empty").read_text() == ""
    errors = [line for line in result.stderr.splitlines() if " ERROR " in line]
    assert "\\n" not in result.stderr
    assert errors[0].endswith(": exited with code 1") and "restore failed: command" in errors[0]
    assert "  | /usr/bin/cp: cannot overwrite non-directory" in errors[1]
    assert errors[-1].endswith("exited with code 1")  # restore of app incomplete: files: ...


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
