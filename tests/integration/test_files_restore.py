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


def aside_dirs(parent: Path) -> list[Path]:
    return sorted(parent.glob(".pullback-before-restore-*"))


def test_what_a_restore_replaces_is_kept_beside_by_a_hard_link(tmp_path):
    """A live file changed after the snapshot is replaced, and kept: the same inode,
    content and metadata, in <parent>/.pullback-before-restore-STAMP/data/. Entries only
    the live side has are left alone and not kept; the output says where it all is."""
    r = Restore(tmp_path)
    live = r.live
    config = live / "etc/app/config.ini"  # hard-linked to hardlink.ini, as in the snapshot
    config.write_text("[main]\nkey = changed live\n")
    os.chmod(config, 0o640)
    os.chown(config, 1000, 1000)
    before = os.lstat(config)
    os.unlink(live / "etc/app/link.ini")
    os.symlink("elsewhere.ini", live / "etc/app/link.ini")
    (live / "data/only-live").write_text("not in the snapshot")

    dry = r.run("--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert f"what it replaces is kept in {live.parent}/.pullback-before-restore-" in dry.stdout
    assert aside_dirs(live.parent) == [] and config.read_text().endswith("changed live\n")

    result = r.run()

    assert result.returncode == 0, result.stderr
    assert differences(r.copy, live, delete=False) == []  # the snapshot's, bit for bit
    assert (live / "data/only-live").read_text() == "not in the snapshot"
    (top,) = aside_dirs(live.parent)
    aside = top / "data"
    assert f"what was replaced in {live} (" in result.stdout
    assert f"is kept in {aside}; delete it once you are satisfied" in result.stdout
    kept = os.lstat(aside / "etc/app/config.ini")
    assert (kept.st_ino, kept.st_mode, kept.st_uid, kept.st_mtime_ns) == (
        before.st_ino,
        before.st_mode,
        before.st_uid,
        before.st_mtime_ns,
    )
    assert (aside / "etc/app/config.ini").read_text() == "[main]\nkey = changed live\n"
    assert os.readlink(aside / "etc/app/link.ini") == "elsewhere.ini"
    assert (aside / "etc/app/hardlink.ini").stat().st_ino == before.st_ino
    assert not (aside / "data/only-live").exists()
    assert os.stat(top).st_mode & 0o777 == 0o700
    # the live hard links are the snapshot's, new inodes: nothing written into the kept one
    assert os.stat(config).st_ino == os.stat(live / "etc/app/hardlink.ini").st_ino
    assert os.stat(config).st_ino != before.st_ino


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


@pytest.fixture
def mounted(tmp_path):
    """A tmpfs mounted at srv/data/data/deep: another file system below the path."""
    point = tmp_path / "srv/data/data/deep"
    made = []

    def mount() -> Path:
        if subprocess.run(["mount", "-t", "tmpfs", "pullback-test", str(point)]).returncode:
            pytest.skip("cannot mount a tmpfs here")
        made.append(point)
        return point

    yield mount
    for point in made:
        subprocess.run(["umount", str(point)], check=True)


def test_what_cannot_be_linked_across_a_mount_point_is_copied_aside(tmp_path, mounted):
    r = Restore(tmp_path)
    shutil.rmtree(r.live / "data/deep")
    (r.live / "data/deep").mkdir()
    point = mounted()
    (point / "er").mkdir()
    (point / "er/blob.bin").write_bytes(b"live on another file system")
    (r.live / "data/empty").write_text("live on the same one")

    result = r.run()

    assert result.returncode == 0, result.stderr
    assert differences(r.copy / "data/deep/er", point / "er") == []
    (top,) = aside_dirs(r.live.parent)
    assert (top / "data/data/deep/er/blob.bin").read_bytes() == b"live on another file system"
    assert os.stat(top / "data/data/deep/er/blob.bin").st_nlink == 1  # a copy
    assert (top / "data/data/empty").read_text() == "live on the same one"


def test_a_live_symlink_where_the_snapshot_has_a_directory_is_refused_safely(tmp_path):
    """cp refuses to write through it (the outside directory is untouched); the rest is
    restored, what it replaced is kept, and the error reads as lines, no literal \\n."""
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
    (top,) = aside_dirs(r.live.parent)
    assert (top / "data/data/empty").read_text() == "changed"
    assert not (top / "data/data/deep/er").exists()
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
    assert aside_dirs(r.live.parent) == []


def test_a_symlink_planted_where_the_kept_files_go_is_refused(tmp_path):
    """The set-aside directory's name is predictable (its stamp is the restore's second):
    under a parent others may write, a symlink planted there must not receive hard links
    to the replaced files. The restore stops with nothing replaced."""
    import datetime as dt

    from pullback.common.clock import stamp_of

    r = Restore(tmp_path)
    (r.live / "etc/app/config.ini").write_text("[main]\nkey = changed live\n")
    trap = tmp_path / "attacker"
    trap.mkdir()
    now = dt.datetime.now(dt.UTC)
    for second in range(-2, 30):
        name = f".pullback-before-restore-{stamp_of(now + dt.timedelta(seconds=second))}"
        (r.live.parent / name).symlink_to(trap)
    result = r.run()
    assert result.returncode != 0, result.stdout
    assert "is not this restore's own directory" in result.stdout + result.stderr
    assert list(trap.iterdir()) == []
    assert (r.live / "etc/app/config.ini").read_text().endswith("changed live\n")


def test_a_restore_that_would_not_fit_beside_what_it_keeps_replaces_nothing(tmp_path):
    """What a restore replaces is kept until the administrator deletes it, so the new
    copies need room of their own: on a file system without it, the restore says so
    before it replaces anything (not half-way, with ENOSPC)."""
    live = tmp_path / "srv/data"
    live.mkdir(parents=True)
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "t", str(live)]).returncode:
        pytest.skip("cannot mount a tmpfs here")
    try:
        (live / "big.bin").write_bytes(os.urandom(3 << 20))
        snapshot = tmp_path / "snapshot"
        copy = snapshot / "services/app/files" / str(live).lstrip("/")
        copy.mkdir(parents=True)
        (copy / "big.bin").write_bytes(os.urandom(3 << 20))
        box = ClientSandbox(tmp_path / "client")
        box.add_service("app", f"service: {{name: app}}\nfiles: {{paths: [{live}]}}\n")
        before = (live / "big.bin").read_bytes()
        result = box.cli("restore", "--service", "app", "--from", str(snapshot))
        assert result.returncode == 1, result.stdout + result.stderr
        said = result.stdout + result.stderr
        assert "nothing in " in said and "the new copies need 3.0 MiB" in said, said
        assert (live / "big.bin").read_bytes() == before
        assert aside_dirs(live.parent) == []
    finally:
        subprocess.run(["umount", str(live)], check=True)
