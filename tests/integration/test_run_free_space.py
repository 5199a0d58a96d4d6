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

import fcntl
import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from tests.helpers.client import ClientSandbox, placed, with_plugin

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


def test_a_run_on_btrfs_is_stopped_at_min_free_space(box, tmp_path, own_btrfs):
    """btrfs shows what was written only once it commits (every 30 s): the looks saw
    none of a 300 MiB dump, and the run wrote on past min_free_space. They sync it
    first now (fsutil.COUNTS_LATE)."""
    work = own_btrfs / "work"
    work.mkdir()
    os.sync()
    free = shutil.disk_usage(own_btrfs).free
    keep = (free - 64 * MIB) // MIB
    box.write_config(
        plugin_dirs=[str(tmp_path / "plugins")], work_dir=str(work), min_free_space=f"{keep}M"
    )
    box.add_service("app", "service:\n  name: app\nfiller:\n  mib: 300\n")
    out = tmp_path / "out"
    result = box.cli("run", timeout=120, env={"FILL_OUT": str(out)})
    said = result.stderr
    assert result.returncode == 143, said[-2000:]
    assert f"free space in {work} fell to " in said and "below min_free_space" in said
    written = len((out / "written").read_text())
    assert 64 <= written <= 200, written  # stopped a look or two past the line
    assert box.published() == [] and list(work.iterdir()) == []


def test_an_archive_unpacked_on_btrfs_keeps_min_free_space(own_btrfs):
    """The server's staging on btrfs: the unpacker's looks (every 64 MiB) saw nothing
    of what it had written, so a client's archive could fill the disk every host's
    staging shares."""
    from pullback.common.archive.unpack import ArchiveTooLarge, UnpackLimits
    from tests.helpers.archives import Entry
    from tests.unit.test_unpack import unpack

    os.sync()
    free = shutil.disk_usage(own_btrfs).free
    limits = UnpackLimits(min_free=free - 96 * MIB)
    entries = [Entry(f"services/a/{n}", data=os.urandom(16 * MIB)) for n in range(10)]
    with pytest.raises(ArchiveTooLarge, match=r"would leave less than .* free under"):
        unpack(own_btrfs / "s", entries, limits)
    os.sync()
    assert shutil.disk_usage(own_btrfs).free > free - 160 * MIB  # refused before the end


def test_directories_attributes_are_counted_before_they_are_written(own_btrfs):
    """A directory's attributes are written at the end of the archive, each directory's
    last record only: they are counted then, in one look before any is written."""
    from pullback.common.archive import tarformat
    from pullback.common.archive.unpack import ArchiveTooLarge, UnpackLimits
    from tests.helpers.archives import Entry
    from tests.unit.test_unpack import unpack

    os.sync()
    free = shutil.disk_usage(own_btrfs).free
    xattrs = [(f"SCHILY.xattr.user.x{i}".encode(), b"x" * 3000) for i in range(300)]
    entries = [
        Entry(f"services/d{n:02}", kind=tarformat.DIRTYPE, mode=0o755, pax=xattrs)
        for n in range(40)
    ]
    with pytest.raises(ArchiveTooLarge, match=r"would leave less than .* free under"):
        unpack(own_btrfs / "s", entries, UnpackLimits(min_free=free - 32 * MIB))
    assert all(not os.listxattr(d) for d in (own_btrfs / "s/services").iterdir())


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
    assert f"inodes free in the temporary directory {own_filesystem} (TMPDIR can name another)" in (
        said
    )
    assert "min_free_space in client.yaml" in said
    assert (live / "blob").read_bytes() == b"changed after the snapshot"
    assert list(own_filesystem.iterdir()) == []
    box.write_config(min_free_space="400M")
    done = box.cli(*argv, timeout=120, env={"TMPDIR": str(own_filesystem)})
    assert done.returncode == 0, done.stderr[-2000:]
    assert (live / "blob").stat().st_size == 64 * MIB


def test_a_restore_into_a_temporary_directory_too_small_is_refused_in_words(
    tmp_path, own_filesystem
):
    """A temporary directory already short of ``min_free_space`` refuses an archive of
    small files at once (the look came only after 64 MiB of data: helper-150 F5); with
    ``min_free_space: 0`` one smaller than the archive fills, and the restore says so in
    words, exit 1, nothing left there (it ended in "internal error", exit 70: F8)."""
    box = ClientSandbox(tmp_path / "client")
    live = tmp_path / "srv"
    live.mkdir()
    for n in range(30):
        (live / f"part{n}").write_bytes(os.urandom(2 * MIB))
    box.write_config(compression="none")
    box.add_service("app", f"service: {{name: app}}\nfiles: {{paths: [{live}]}}\n")
    made = box.cli("run", timeout=120)
    assert made.returncode == 0, made.stderr[-2000:]
    (archive,) = box.published()
    (live / "part0").write_bytes(b"changed after the snapshot")
    argv = ("restore", "--service", "app", "--from", str(archive))
    small = own_filesystem / "small"
    small.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=40m", "tmpfs", small], check=True)
    try:
        box.write_config(min_free_space="64M")
        refused = box.cli(*argv, timeout=120, env={"TMPDIR": str(small)})
        assert refused.returncode == 1, refused.stderr[-2000:]
        assert "unpacking it would leave less than 64.0 MiB" in refused.stderr
        assert list(small.iterdir()) == []

        box.write_config(min_free_space=0)
        filled = box.cli(*argv, timeout=120, env={"TMPDIR": str(small)})
        assert filled.returncode == 1, filled.stderr[-2000:]
        assert f"filled the temporary directory {small} (No space left on device): " in (
            filled.stderr
        )
        assert "nothing was restored; point TMPDIR at a larger disk" in filled.stderr
        assert "internal error" not in filled.stderr
        assert list(small.iterdir()) == []
        assert (live / "part0").read_bytes() == b"changed after the snapshot"
    finally:
        subprocess.run(["umount", "-l", small], check=False)


def test_the_start_asks_for_what_the_last_run_took_before_it_stops_anything(
    box, tmp_path, own_filesystem
):
    """A run whose dump is the same every day, on a disk with room for min_free_space
    but not for min_free_space and that dump: the start asked for min_free_space alone,
    the prepare stopped the applications, and the watch stopped the run half way, every
    day (helper-147). The start asks for what the last run took (recorded in
    .client-space.json), and refuses before it stops anything."""
    box.archives, box.work = own_filesystem / "archives", own_filesystem / "work"
    where = {
        "plugin_dirs": [str(tmp_path / "plugins")],
        "archive_dir": str(box.archives),
        "work_dir": str(box.work),
    }
    box.write_config(**where)
    box.add_service("app", "service:\n  name: app\nfiller:\n  mib: 100\n")
    out = tmp_path / "out"
    first = box.cli("run", timeout=300, env={"FILL_OUT": str(out)})
    assert first.returncode == 0, first.stderr[-2000:]
    took = json.loads((box.archives / ".client-space.json").read_text())["took"]
    # the 100 MiB dump, less what the last look before its staging went missed (a look
    # every half second)
    assert took[str(box.work)] >= 75 * MIB, took
    assert shutil.disk_usage(own_filesystem).free > 490 * MIB  # (the archive: compressed)
    (out / "stopped").unlink()
    box.write_config(**where, min_free_space="450M")
    second = box.cli("run", timeout=300, env={"FILL_OUT": str(out)})
    said = second.stderr
    assert second.returncode == 1, said[-2000:]
    assert f"not enough free space in {box.archives}: " in said, said[-2000:]
    assert "(min_free_space and the " in said and "the last run took there" in said
    assert not (out / "stopped").exists()  # refused before the prepare stopped anything
    assert len(box.published()) == 1


WAITER = r"""
import os, time
from pathlib import Path
from pullback.plugins import TaskType, hookimpl

OUT = Path(os.environ["FILL_OUT"])


@hookimpl
def pullback_task_types():
    return [TaskType("waiter", {"type": "object", "additionalProperties": False})]


@hookimpl
def pullback_dump(task):
    (task.staging / "dump.txt").write_text("a small dump\n")
    (OUT / "dumping").write_text("")
    while not (OUT / "go").exists():
        time.sleep(0.05)
"""


def _wait_for(found, run: subprocess.Popen, deadline: float) -> None:
    while not found():
        assert time.monotonic() < deadline and run.poll() is None
        time.sleep(0.05)


def test_a_full_disk_once_the_archive_is_made_stops_nothing(tmp_path, own_filesystem):
    """The watch ends as the archive is written: a stop raised as the (shielded) publish
    ended reported "nothing published" of a published archive, exit 143, the retention
    skipped (helper-147). The publish here waits for the archive directory's lock, as
    behind a pull's mark-fetched, while the disk fills and empties again."""
    box = with_plugin(ClientSandbox(tmp_path / "client"), "waiter", WAITER)
    out = tmp_path / "out"
    out.mkdir()
    box.write_config(
        plugin_dirs=[str(tmp_path / "plugins")],
        work_dir=str(own_filesystem / "work"),
        min_free_space="100M",
    )
    box.add_service("app", "service:\n  name: app\nwaiter: {}\n")
    run = box.popen("run", env={**os.environ, "FILL_OUT": str(out)})
    deadline = time.monotonic() + 60
    try:
        _wait_for((out / "dumping").exists, run, deadline)
        fd = os.open(box.archives / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX)
        (out / "go").write_text("")
        _wait_for(lambda: list(box.archives.glob(".*.json.*.partial")), run, deadline)
        with open(own_filesystem / "db-growth", "wb") as grow:  # the database grows
            grow.write(bytes(450 * MIB))
        time.sleep(1.5)  # three looks, had the watch stayed on
        os.unlink(own_filesystem / "db-growth")
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
        _, stderr = run.communicate(timeout=120)
    finally:
        if run.poll() is None:
            run.kill()
    assert run.returncode == 0, stderr[-2000:]
    assert len(box.published()) == 1
    assert json.loads((box.archives / ".client-status.json").read_text())["last_run_ok"]


@pytest.fixture
def few_inodes(tmp_path):
    """A tmpfs of this test's own with room for 512 MiB and 30,000 inodes."""
    where = tmp_path / "fsi"
    where.mkdir()
    options = "size=512m,nr_inodes=30000"
    subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", where], check=True)
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", where], check=False)


def test_a_run_that_would_use_up_the_inodes_is_stopped(tmp_path, few_inodes):
    """A dump of many small files uses up the inodes of a disk with room to spare: a
    database there fails as on a full one. The watch keeps 10,000 inodes free, as the
    unpacker does (helper-147)."""
    box = ClientSandbox(tmp_path / "client")
    work = few_inodes / "work"
    box.write_config(work_dir=str(work), min_free_space="16M")
    dump = (
        "i=0; while [ $i -lt 40000 ]; do : > f$i || exit 1; i=$((i+1)); "
        "case $i in *000) sleep 0.05;; esac; done"
    )
    box.add_service("app", f"service: {{name: app}}\ncommand:\n  dump:\n    - {json.dumps(dump)}\n")
    result = box.cli("run", timeout=300)
    said = result.stderr
    assert result.returncode == 143, said[-2000:]
    assert f"free inodes in {work} fell to " in said and "below 10,000" in said, said[-2000:]
    assert "No space left on device" not in said
    assert list(work.iterdir()) == []

    # what it took is recorded, inodes too: the next start is refused before anything
    # is stopped (it was let in, and stopped again, every day: helper-150 F9)
    took = json.loads((box.archives / ".client-space.json").read_text())["took_inodes"]
    assert took[str(work)] > 20_000
    again = box.cli("run", timeout=120)
    assert again.returncode == 1, again.stderr[-2000:]
    assert f"not enough free inodes in {work}: " in again.stderr
    assert f"of them the last run took there, recorded in {box.archives}" in again.stderr


@pytest.fixture
def on_own(box, tmp_path, own_filesystem) -> ClientSandbox:
    """``box`` with its archive and work directories on the test's own tmpfs."""
    return placed(box, tmp_path, own_filesystem)


def test_too_few_inodes_at_the_start_refuse_before_anything_is_stopped(tmp_path, few_inodes):
    """Fewer than 10,000 free inodes: the watch stopped every run at its first look,
    after the prepare stopped the applications; the start looked at bytes only
    (helper-148)."""
    for i in range(21_000):
        (few_inodes / f"f{i}").touch()
    box = with_plugin(ClientSandbox(tmp_path / "client"), "filler", PLUGIN)
    out = tmp_path / "out"
    out.mkdir()
    work = few_inodes / "work"
    box.write_config(plugin_dirs=[str(tmp_path / "plugins")], work_dir=str(work))
    box.add_service("app", "service:\n  name: app\nfiller:\n  mib: 2\n")
    result = box.cli("run", timeout=120, env={"FILL_OUT": str(out)})
    said = result.stderr
    assert result.returncode == 1, said[-2000:]
    assert f"not enough free inodes in {work}: " in said and "need 10,000" in said, said
    assert not (out / "stopped").exists()


def test_a_run_of_one_small_service_does_not_lower_what_the_whole_run_takes(on_own, own_filesystem):
    """``run --service small`` (or a run stopped, or whose big dump failed) recorded
    what it took, next to nothing, and the next whole run on a disk without room for
    it was started, its applications stopped, and stopped half way (helper-148). Only a
    run of every service, published, lowers the record; any other raises it only."""
    box = on_own
    box.write_config(**box.where, min_free_space="300M")
    box.add_service("big", "service:\n  name: big\nfiller:\n  mib: 100\n")
    box.add_service("small", "service:\n  name: small\nfiller:\n  mib: 1\n")
    first = box.cli("run", timeout=300, env=box.env)
    assert first.returncode == 0, first.stderr[-2000:]
    space = box.archives / ".client-space.json"
    took = json.loads(space.read_text())["took"][str(box.work)]
    assert took >= 75 * MIB
    small = box.cli("run", "--service", "small", timeout=300, env=box.env)
    assert small.returncode == 0, small.stderr[-2000:]
    assert json.loads(space.read_text())["took"][str(box.work)] == took
    free = shutil.disk_usage(own_filesystem).free  # room for min_free_space, not the dump
    (own_filesystem / "ballast").write_bytes(bytes(free - 300 * MIB - 60 * MIB))
    stopped = Path(box.env["FILL_OUT"]) / "stopped"
    stopped.unlink()
    third = box.cli("run", timeout=300, env=box.env)
    assert third.returncode == 1, third.stderr[-2000:]
    assert f"recorded in {space}: delete it if other data took that" in third.stderr
    assert not stopped.exists()  # refused before the prepare stopped anything


def test_min_free_space_0_looks_at_nothing_and_records_nothing(on_own):
    box = on_own
    box.write_config(**box.where, min_free_space="0")
    box.add_service("app", "service:\n  name: app\nfiller:\n  mib: 2\n")
    result = box.cli("run", timeout=120, env=box.env)
    assert result.returncode == 0, result.stderr[-2000:]
    assert not (box.archives / ".client-space.json").exists()


@pytest.mark.parametrize("kind", ["fifo", "impossible"])
def test_a_record_of_another_kind_is_said_and_left_out(tmp_path, kind):
    """A FIFO in the record's place blocked the start for ever, under the run's lock and
    outside run_timeout; a record no disk could hold (more than the file system) refused
    every start (helper-148). Both are said and the start asks for min_free_space alone."""
    box = ClientSandbox(tmp_path / "client")
    box.write_config(run_timeout="5s")
    box.add_service("app", "service: {name: app}\ncommand:\n  dump: ['true']\n")
    box.archives.mkdir(parents=True, exist_ok=True)
    space = box.archives / ".client-space.json"
    if kind == "fifo":
        os.mkfifo(space)
    else:
        space.write_text(json.dumps({"took": {str(box.archives): 1 << 61, str(box.work): 1 << 61}}))
    result = box.cli("run", timeout=60)
    assert result.returncode == 0, result.stderr[-2000:]
    if kind == "fifo":
        assert f"{space} not read (not a regular file)" in result.stderr
