"""Every bit of metadata survives a backup and a restore: client -> archive -> server ->
restic/borg -> ``pullback-server restore`` -> ``pullback-client restore``.

The oracle is rsync: ``rsync -aHAXn --checksum --itemize-changes`` between the source
tree and the restored one lists every difference in content, owner, mode (set-id bits
included), mtime, symlink, hard link, FIFO, ACL and extended attribute (file capabilities
included). getcap and st_blocks check what rsync does not: capabilities by name, holes.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from tests.helpers.fleet import Fleet
from tests.helpers.tree import differences, make_edge, make_rich_tree

MIB = 1 << 20
pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="owners, set-id bits need root")


def make_edge_tree(root: Path) -> Path:
    """The rich tree, plus what the issue named (tests/helpers/tree.make_edge)."""
    make_rich_tree(root, as_root=True)
    make_edge(root / "edge")
    return root


@pytest.fixture(params=["restic", "borg"])
def fleet(request, tmp_path):
    fleet = Fleet(tmp_path / "fleet", backend=request.param)
    yield fleet
    fleet.stop()


def test_a_restored_service_is_identical_to_its_source(fleet, tmp_path):
    host = fleet.add_host("web1")
    shutil.rmtree(host.data)
    make_edge_tree(host.data)
    host.make_archive()
    pulled = fleet.server("pull")
    assert pulled.returncode == 0, pulled.stderr
    snapshot_dir = tmp_path / "restored-snapshot"
    restored = fleet.server("restore", "web1", "--service", "app", "--target", str(snapshot_dir))
    assert restored.returncode == 0, restored.stderr
    put_back = tmp_path / "put-back"
    result = host.client.cli(
        "restore", "--service", "app", "--from", str(snapshot_dir), "--target", str(put_back)
    )
    assert result.returncode == 0, result.stderr
    copy = put_back / str(host.data).lstrip("/")

    assert differences(host.data, copy) == []
    assert (
        "cap_net_raw=ep"
        in subprocess.run(
            ["getcap", str(copy / "edge/ping-like")], capture_output=True, text=True, check=True
        ).stdout
    )
    assert os.stat(copy / "edge/su-like").st_mode & 0o7777 == 0o4755
    assert stat.S_ISFIFO(os.lstat(copy / "edge/control.fifo").st_mode)
    image = os.stat(copy / "edge/disk.img")
    assert image.st_size == 64 * MIB and image.st_blocks * 512 < MIB  # holes again
    os.chmod(copy / "edge/su-like", 0o755)  # and the oracle would see a lost set-uid bit
    assert differences(host.data, copy) == [".f...p..... edge/su-like"]
