"""helper-162: attacks on commits d7252b6 and 6e9959d (the start's record of what the
last run took: the largest drop of free space less what other programs' data still took
at the run's end; btrfs and zfs kept whole) and on sparse.data_map/_fewer (a file past
MAX_REGIONS regions keeps all but its smallest holes).

Tests named test_fN_* failed while finding N existed; the others pass where the code
held. F1 (data another program wrote after the run's lowest point taken off the drop:
the record too low) went with that correction, withdrawn: the record is the drop again.
F4 (a delta run set the record below what the next full run takes) is mended: a delta
only raises it. Left open, said in docs/client.md: F2 (space another program frees
during the run shrinks the drop) and F3/F5 (btrfs, and an overlay over it, show a run's
writes late), whose tests stayed with the helper.

Run: .venv/bin/python -m pytest -q -p no:cacheprovider tests/integration/test_attacks_h162.py
"""

from __future__ import annotations

import bisect
import errno
import hashlib
import json
import os
import random
import shutil
import subprocess
import tracemalloc
from pathlib import Path
from unittest import mock

import pytest

from pullback.client.config import load_client_config
from pullback.client.free_space import FreeSpaceWatch, check_free_space
from pullback.common.archive import sparse
from pullback.common.archive.reader import TarStream
from pullback.common.archive.unpack import Unpacker, UnpackLimits
from pullback.common.archive.writer import ArchiveWriter
from tests.helpers.client import ClientSandbox, leave_free, placed, with_plugin

pytestmark = pytest.mark.integration

MIB = 1 << 20
PAGE = 4096


# -- the start's record of what the last run took (d7252b6, 6e9959d) ---------------------

PLUGIN = r"""
import os, random, time
from pathlib import Path
from pullback.plugins import TaskType, hookimpl

SCHEMA = {"type": "object", "additionalProperties": False, "properties": {
    "mib": {"type": "integer"}, "other_mib": {"type": "integer"},
    "seeded": {"type": "boolean"}}}
OUT = Path(os.environ["FILL_OUT"])


@hookimpl
def pullback_task_types():
    return [TaskType("filler162", SCHEMA)]


@hookimpl
def pullback_prepare(task):
    (OUT / "stopped").write_text("the application was stopped\n")


@hookimpl
def pullback_dump(task):
    # seeded: the same bytes every run (a delta then holds next to nothing of them)
    make = random.Random(162).randbytes if task.config.get("seeded") else os.urandom
    other = os.environ.get("FILL_OTHER")  # another program's file, written once
    if task.config.get("other_mib") and other and not os.path.exists(other):
        with open(other, "wb") as data:
            for _ in range(task.config["other_mib"]):
                data.write(os.urandom(1 << 20))
    with open(task.staging / "dump.bin", "wb") as dump:
        for _ in range(task.config.get("mib", 0)):
            dump.write(make(1 << 20))
            dump.flush()
            time.sleep(0.01)
"""


@pytest.fixture
def box(tmp_path, own_filesystem) -> ClientSandbox:
    """A client whose archive and work directories are on the test's own 512 MiB tmpfs,
    with the ``filler162`` plugin; min_free_space 200M."""
    b = with_plugin(ClientSandbox(tmp_path / "client"), "filler162", PLUGIN)
    (tmp_path / "out").mkdir()
    return placed(b, tmp_path, own_filesystem, min_free_space="200M")


def _took(box) -> dict:
    return json.loads((box.archives / ".client-space.json").read_text())["took"]


def test_f1_data_another_program_writes_after_the_runs_peak_lowers_the_record(
    box, tmp_path, own_filesystem
):
    """F1: what other programs' data still takes at the run's end is taken off the
    drop, also what they wrote *after* the run's lowest point, which was never part of
    the drop. Here the run's peak is service aaa's 60 MiB staging beside its 60 MiB of
    archive (~120 MiB); then, while service zzz is dumped (or an application restarted
    by aaa's finish catches up), a database grows 60 MiB. The record says ~60 MiB. The
    next start, with room for min_free_space and 90 MiB, is let in, the prepare stops
    the application, and the watch stops the run half way (exit 143). Expected: the
    record at least the run's own peak, the start refused before anything is
    stopped."""
    box.write_config(**box.where)
    box.add_service("aaa", "service:\n  name: aaa\nfiller162:\n  mib: 60\n")
    box.add_service("zzz", "service:\n  name: zzz\nfiller162:\n  mib: 1\n  other_mib: 60\n")
    env = {**box.env, "FILL_OTHER": str(own_filesystem / "database")}
    first = box.cli("run", timeout=300, env=env)
    assert first.returncode == 0, first.stderr[-2000:]
    took = _took(box)
    leave_free(own_filesystem, 290 * MIB)
    stopped = tmp_path / "out" / "stopped"
    stopped.unlink()
    second = box.cli("run", timeout=300, env=env)
    assert second.returncode == 1, (took, second.returncode, second.stderr[-1500:])
    assert "not enough free space" in second.stderr
    assert not stopped.exists()  # refused before the prepare stopped anything


def _watch(tmp_path: Path, where: Path) -> FreeSpaceWatch:
    box = ClientSandbox(tmp_path / "client")
    (where / "archives").mkdir()
    (where / "work").mkdir()
    box.write_config(
        archive_dir=str(where / "archives"), work_dir=str(where / "work"), min_free_space="100M"
    )
    return FreeSpaceWatch(load_client_config(box.config))


def _write(path: Path, mib: int) -> None:
    with open(path, "wb") as out:
        for _ in range(mib):
            out.write(os.urandom(MIB))


def test_f4_a_delta_run_lowers_the_record_below_what_the_next_full_takes(
    box, tmp_path, own_filesystem
):
    """F4: a complete delta run sets the record to what a delta takes (its staging and
    a small archive), and the next full archive (full_every, full_ratio, a chain too
    long, ``run --full``) takes its staging and a whole archive: its start asks for
    min_free_space and the delta's take (the 1.1 x newest full archive asked of the
    archive directory is not on top of min_free_space), is let in, stops the
    applications and is stopped half way by the watch, at every full. Expected: the
    start refused before the prepare (a delta run only raising the record, as ``run
    --service`` does, would do)."""
    box.write_config(**box.where, incremental={"enabled": True})
    box.add_service("app", "service:\n  name: app\nfiller162:\n  mib: 60\n  seeded: true\n")
    full = box.cli("run", timeout=300, env=box.env)
    assert full.returncode == 0, full.stderr[-2000:]
    took_full = _took(box)
    delta = box.cli("run", timeout=300, env=box.env)
    assert delta.returncode == 0, delta.stderr[-2000:]
    assert "delta" in delta.stderr, delta.stderr[-2000:]
    took_delta = _took(box)
    leave_free(own_filesystem, 290 * MIB)  # room for 200M and the delta's 60, not 120
    stopped = tmp_path / "out" / "stopped"
    stopped.unlink()
    again = box.cli("run", "--full", timeout=300, env=box.env)
    said = (took_full, took_delta, again.returncode, again.stderr[-1500:])
    assert again.returncode == 1, said
    assert "not enough free space" in again.stderr
    assert not stopped.exists()  # refused before the prepare stopped anything


def test_a_stopped_run_then_refuses_the_next_start(box, tmp_path, own_filesystem):
    """Held: a run stopped by the watch raises the record to its drop, and the next start
    on the same disk is refused before anything is stopped (not stopped every night)."""
    box.write_config(**box.where)
    box.add_service("app", "service:\n  name: app\nfiller162:\n  mib: 20\n")
    first = box.cli("run", timeout=300, env=box.env)
    assert first.returncode == 0, first.stderr[-2000:]
    box.add_service("app", "service:\n  name: app\nfiller162:\n  mib: 150\n")
    leave_free(own_filesystem, 290 * MIB)
    second = box.cli("run", timeout=300, env=box.env)
    assert second.returncode == 143, second.stderr[-2000:]
    stopped = tmp_path / "out" / "stopped"
    stopped.unlink()
    third = box.cli("run", timeout=300, env=box.env)
    assert third.returncode == 1, third.stderr[-2000:]
    assert not stopped.exists()


def test_a_transient_file_of_another_program_is_counted_whole(tmp_path, own_filesystem):
    """Held as documented (no finding): another program's file written and removed
    within the run is counted as the run's (it cannot be told from a dump's scratch
    file); a complete run later sets the record again."""
    watch = _watch(tmp_path, own_filesystem)
    _write(own_filesystem / "scratch", 50)
    watch.look()
    (own_filesystem / "scratch").unlink()
    watch.record(True)
    took = json.loads((own_filesystem / "archives" / ".client-space.json").read_text())["took"]
    assert took[str(own_filesystem / "work")] >= 50 * MIB
    check_free_space(load_client_config(tmp_path / "client" / "client.yaml"))  # room: passes


def _fake_lseek(regions: list[tuple[int, int]]):
    """``os.lseek`` over a file whose data are ``regions`` (offset, length), sorted."""
    starts = [o for o, _ in regions]

    def lseek(fd, offset, whence):
        if whence == os.SEEK_SET:
            return offset
        i = bisect.bisect_right(starts, offset) - 1
        inside = i >= 0 and offset < regions[i][0] + regions[i][1]
        if whence == os.SEEK_DATA:
            if inside:
                return offset
            if i + 1 < len(regions):
                return regions[i + 1][0]
            raise OSError(errno.ENXIO, "no more data")
        return regions[i][0] + regions[i][1] if inside else offset

    return lseek


def _layout(count: int, seed: int, sizes=(1, 2, 3, 7, 4096, 1 << 20)) -> list[tuple[int, int]]:
    rng = random.Random(seed)
    regions, position = [], rng.choice((0, PAGE))
    for _ in range(count):
        length = PAGE * rng.randint(1, 3)
        regions.append((position, length))
        position += length + PAGE * rng.choice(sizes)
    return regions


def _check(regions, out, most):
    """Every data byte inside a region, regions sorted and apart, at most ``most`` (and
    the end mark), and the holes kept the largest there are."""
    data = [r for r in out if r.length]
    assert len(data) <= most
    end = -1
    for r in out:
        assert r.offset > end or (r.length == 0 and r.offset >= end)
        end = r.offset + r.length
    at = 0
    for offset, length in regions:
        while not (
            data[at].offset <= offset and offset + length <= data[at].offset + data[at].length
        ):
            at += 1
    gaps = sorted(
        (regions[i][0] - regions[i - 1][0] - regions[i - 1][1] for i in range(1, len(regions))),
        reverse=True,
    )
    kept = sum(
        data[i].offset - data[i - 1].offset - data[i - 1].length for i in range(1, len(data))
    )
    assert kept == sum(gaps[: len(data) - 1])


@pytest.mark.parametrize("most", [1, 2, 3, 5, 64])
@pytest.mark.parametrize("seed", range(6))
def test_fewer_keeps_the_largest_holes_and_every_byte(most, seed):
    """Held: streamed merging (each time the list reaches 2 x most) keeps exactly the
    largest holes a global choice would keep (equal holes: the latest kept)."""
    sizes = (1, 1, 1, 2) if seed % 2 else (1, 2, 3, 7, 4096, 1 << 20)
    regions = _layout(700, seed, sizes)
    size = regions[-1][0] + regions[-1][1] + PAGE * (seed % 2)
    with mock.patch.object(sparse.os, "lseek", _fake_lseek(regions)):
        out, holes = sparse.data_map(3, size, most)
    assert out is not None
    assert holes == size - sum(n for _, n in regions)
    _check(regions, out, most)


def test_a_map_of_300000_regions_keeps_a_bounded_list():
    """Held: a file of 300,000 data regions (its lseek calls simulated): data_map with
    the archive's bound keeps the largest holes, and its memory stays bounded (the list
    is cut every 2 x MAX_REGIONS). Its time is bench's to measure, not a test's: about
    6 s for 1,000,000 regions here (helper-162)."""
    regions = _layout(300_000, 7)
    size = regions[-1][0] + regions[-1][1] + PAGE
    most = sparse.MAX_REGIONS - 1
    with mock.patch.object(sparse.os, "lseek", _fake_lseek(regions)):
        tracemalloc.start()
        try:
            out, _ = sparse.data_map(3, size, most)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    assert peak < 64 * MIB, peak
    assert out is not None and len(out) == most + 1 and out[-1] == sparse.Region(size, 0)
    _check(regions, out, most)


def test_a_file_of_max_regions_plus_one_equal_holes_travels_exactly(tmp_path):
    """Held: MAX_REGIONS + 1 holes of a page each between pages of data: the archive's
    map lists MAX_REGIONS regions (the earliest holes merged), the Unpacker and GNU tar
    both give the file back byte for byte, its size and its holes (but the merged ones)."""
    data = tmp_path / "data"
    data.mkdir()
    path = data / "f"
    holes = sparse.MAX_REGIONS + 1
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        for i in range(holes + 1):
            os.pwrite(fd, b"%08d" % i, 2 * i * PAGE)
        os.ftruncate(fd, (2 * holes + 1) * PAGE)
    finally:
        os.close(fd)
    rfd = os.open(path, os.O_RDONLY)
    try:
        regions, _ = sparse.data_map(rfd, path.stat().st_size, sparse.MAX_REGIONS - 1)
    finally:
        os.close(rfd)
    if regions is None or len(regions) < 1000:
        pytest.skip("this file system does not tell holes page by page")
    assert len(regions) == sparse.MAX_REGIONS - 1
    assert regions[0] == sparse.Region(0, 7 * PAGE)  # the three earliest holes merged
    archive = tmp_path / "host-20260101T000000Z.tar"
    with ArchiveWriter(archive, "none") as writer:
        writer.add_tree(data, "services/app/files")
        writer.finish()
    want = hashlib.sha256(path.read_bytes()).hexdigest()
    staging = tmp_path / "staging"
    with Unpacker(staging, UnpackLimits()) as unpacker, open(archive, "rb") as raw:
        with TarStream(raw, "none") as stream:
            for member in stream.members():
                unpacker.add(member, stream.read_data(member))
        unpacker.finish()
    out = staging / "services/app/files/f"
    assert out.stat().st_size == path.stat().st_size
    assert hashlib.sha256(out.read_bytes()).hexdigest() == want
    if shutil.which("tar"):
        gnu = tmp_path / "gnu"
        gnu.mkdir()
        subprocess.run(["tar", "-xf", str(archive), "-C", str(gnu)], check=True)
        back = gnu / "services/app/files/f"
        assert hashlib.sha256(back.read_bytes()).hexdigest() == want
        assert back.stat().st_blocks * 512 < path.stat().st_size * 3 // 4  # holes kept
