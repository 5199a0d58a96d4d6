"""A client run that would fill the disk of the machine it protects is stopped first:
while it runs, the free space of its work and archive directories is looked at twice a
second, and below ``min_free_space`` the run stops as a SIGTERM stops it (the finish
stages run, nothing is published, what it wrote is removed: exit 143, its report says
why). Before, only the run's start looked: a dump larger than expected filled the disk,
and a database on it failed with it (docs/client.md, "A run that would fill the disk").

Client runs are real ``pullback-client`` subprocesses (tests/helpers/client.py); the
work directory is a tmpfs of the test's own (its free space moves only with what the
run writes); a plugin in ``plugin_dirs`` writes as a dump would, a MiB at a time.
"""

from __future__ import annotations

import json
import os
import shutil

import pytest

from tests.helpers.client import ClientSandbox, with_plugin

pytestmark = pytest.mark.integration

PLUGIN = r"""
import os, time
from pathlib import Path
from pullback.plugins import TaskType, hookimpl

SCHEMA = {"type": "object", "additionalProperties": False, "properties": {
    "mib": {"type": "integer"}}}
OUT = Path(os.environ["FILL_OUT"])


@hookimpl
def pullback_task_types():
    return [TaskType("filler", SCHEMA)]


@hookimpl
def pullback_prepare(task):
    (OUT / "stopped").write_text("the application was stopped\n")


@hookimpl
def pullback_dump(task):
    block = os.urandom(1 << 20)
    with open(task.staging / "dump.bin", "wb") as dump, open(OUT / "written", "a") as said:
        for _ in range(task.config["mib"]):
            dump.write(block)
            dump.flush()
            said.write("+")  # (a MiB more; never half written, as a rewritten file can be)
            said.flush()
            time.sleep(0.02)


@hookimpl
def pullback_finish(task, failed):
    (OUT / "started").write_text(f"started again (failed={failed})\n")
"""

MIB = 1 << 20


@pytest.fixture
def box(tmp_path) -> ClientSandbox:
    b = with_plugin(ClientSandbox(tmp_path / "client"), "filler", PLUGIN)
    (tmp_path / "out").mkdir()
    return b


def test_a_run_that_would_fill_the_disk_is_stopped_at_min_free_space(box, tmp_path, own_filesystem):
    work = own_filesystem / "work"
    total = shutil.disk_usage(own_filesystem).total  # 512 MiB
    box.write_config(
        plugin_dirs=[str(tmp_path / "plugins")], work_dir=str(work), min_free_space="480M"
    )
    box.add_service("app", "service:\n  name: app\nfiller:\n  mib: 600\n")  # past the disk
    out = tmp_path / "out"
    result = box.cli("run", timeout=120, env={"FILL_OUT": str(out)})
    said = result.stderr
    assert result.returncode == 143, said[-2000:]
    words = "below min_free_space (480.0 MiB): the run was stopped before it filled the disk"
    assert f"free space in {work} fell to " in said and words in said, said[-2000:]
    assert "No space left" not in said
    written = len((out / "written").read_text())
    # stopped once 32 MiB were written, a look or two later: far from the disk's end
    assert 32 <= written <= 200, written
    assert (out / "started").read_text() == "started again (failed=True)\n"
    assert box.published() == [] and box.leftovers() == []
    assert list(work.iterdir()) == []  # the staging is gone: the space is back
    assert shutil.disk_usage(own_filesystem).free > total - 4 * MIB
    status = json.loads((box.archives / ".client-status.json").read_text())
    assert status["last_run_ok"] is False and words in status["error"]


def test_a_run_that_stays_above_min_free_space_is_not_touched(box, tmp_path, own_filesystem):
    work = own_filesystem / "work"
    box.write_config(
        plugin_dirs=[str(tmp_path / "plugins")], work_dir=str(work), min_free_space="400M"
    )
    box.add_service("app", "service:\n  name: app\nfiller:\n  mib: 60\n")
    result = box.cli("run", timeout=120, env={"FILL_OUT": str(tmp_path / "out")})
    assert result.returncode == 0, result.stderr[-2000:]
    assert "min_free_space" not in result.stderr
    assert len(box.published()) == 1


def test_a_restore_unpacks_an_archive_only_while_min_free_space_stays_free(
    tmp_path, own_filesystem
):
    """``restore --from ARCHIVE`` unpacks into the temporary directory, on the live system
    it restores onto (a tmpfs in memory, or its root disk): it keeps ``min_free_space``
    free there as a run does, refusing the archive before filling it; nothing of the
    live data is touched, nothing of the unpacking is left."""
    box = ClientSandbox(tmp_path / "client")
    live = tmp_path / "srv"
    live.mkdir()
    (live / "blob").write_bytes(os.urandom(64 * MIB))
    box.write_config()
    box.add_service("app", f"service: {{name: app}}\nfiles: {{paths: [{live}]}}\n")
    made = box.cli("run", timeout=120)
    assert made.returncode == 0, made.stderr[-2000:]
    (archive,) = box.published()
    (live / "blob").write_bytes(b"changed after the snapshot")
    box.write_config(min_free_space="480M")  # the tmpfs: 512 MiB, the blob 64
    argv = ("restore", "--service", "app", "--from", str(archive))
    refused = box.cli(*argv, timeout=120, env={"TMPDIR": str(own_filesystem)})
    said = refused.stderr
    assert refused.returncode == 1, said[-2000:]
    assert "unpacking it would leave less than 480.0 MiB" in said, said[-2000:]
    assert "inodes free in the temporary directory (" in said
    assert "min_free_space in client.yaml" in said
    assert (live / "blob").read_bytes() == b"changed after the snapshot"
    assert list(own_filesystem.iterdir()) == []
    box.write_config(min_free_space="400M")
    done = box.cli(*argv, timeout=120, env={"TMPDIR": str(own_filesystem)})
    assert done.returncode == 0, done.stderr[-2000:]
    assert (live / "blob").stat().st_size == 64 * MIB
