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
from tests.helpers.tree import differences, make_rich_tree

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
