"""helper-161: attacks on commits e8e7b1f (the start's record of what the last run
took), 6bfb850 (borg create's warnings in the report) and 6716499 (sparse files of more
than 65,536 regions; a sparse member's realsize).

Each test marked as a finding fails while its defect existed; the others pass where the
code held. F6 (the walk that counted a run's work tree skipped a tree deeper than
PATH_MAX) went with that count: the record no longer walks the work tree.

Run: .venv/bin/python -m pytest -q -p no:cacheprovider tests/integration/test_attacks_h161.py
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from pullback.common.archive import sparse, tarformat
from pullback.common.archive.manifest import format_line
from pullback.common.archive.reader import TarStream
from pullback.common.archive.tarformat import TarReader
from pullback.common.archive.unpack import HostileArchive, Unpacker, UnpackLimits
from pullback.common.archive.writer import ArchiveWriter
from tests.helpers.archives import MTIME
from tests.helpers.client import ClientSandbox, leave_free, placed, with_plugin
from tests.helpers.status_servers import one_host_backend

pytestmark = pytest.mark.integration

MIB = 1 << 20
PAGE = 4096


# -- sparse members and maps (6716499) ---------------------------------------------------


def _member(name: str, data: bytes, pax) -> bytes:
    head = tarformat.header(
        name, tarformat.REGTYPE, mode=0o644, size=len(data), mtime_ns=MTIME, pax=pax
    )
    return head + data + bytes((-len(data)) % 512)


def _sparse_member(name: str, realsize: bytes | None, regions, payload: bytes) -> bytes:
    text = f"{len(regions)}\n" + "".join(f"{o}\n{n}\n" for o, n in regions)
    raw = text.encode()
    raw += bytes((-len(raw)) % 512)
    pax = [
        (b"GNU.sparse.major", b"1"),
        (b"GNU.sparse.minor", b"0"),
        (b"GNU.sparse.name", name.encode()),
    ]
    if realsize is not None:
        pax.append((b"GNU.sparse.realsize", realsize))
    return _member(sparse.placeholder(name), raw + payload, pax)


def _unpack_tar(staging: Path, tar: bytes):
    reader = TarReader(io.BytesIO(tar))
    with Unpacker(staging, UnpackLimits()) as unpacker:
        for member in reader:
            unpacker.add(member, reader.chunks())
        return unpacker.finish()


def test_f1_a_negative_sparse_realsize_is_refused_as_hostile(tmp_path):
    """F1: ``GNU.sparse.realsize=-1`` passes _apparent_size (it takes the larger of the
    member's data and the realsize, so -1 is never seen as negative), and _write_sparse
    now gives the file that realsize: ``os.ftruncate(fd, -1)`` raises a bare OSError
    (EINVAL), the pull fails as "[Errno 22] Invalid argument" with no member named, not
    as a hostile archive (and a delta does not ask for a full one). Before 6716499 the
    file took max(size, realsize) and -1 was harmless."""
    name = "services/a/f"
    manifest = format_line(name, hashlib.sha256(b"").hexdigest())
    manifest = manifest.encode() if isinstance(manifest, str) else manifest
    tar = (
        _sparse_member(name, b"-1", [], b"")
        + _member("MANIFEST.sha256", manifest, None)
        + bytes(1024)
    )
    with pytest.raises(HostileArchive, match="services/a/f"):
        _unpack_tar(tmp_path / "s", tar)


@pytest.mark.parametrize("realsize", [b"0x10", b"", b"\xd9\xa1"])
def test_a_sparse_realsize_that_is_no_number_is_refused(tmp_path, realsize):
    tar = _sparse_member("services/a/f", realsize, [], b"") + bytes(1024)
    with pytest.raises(HostileArchive, match="not a number"):
        _unpack_tar(tmp_path / "s", tar)


def test_a_sparse_map_past_its_realsize_is_refused(tmp_path):
    tar = _sparse_member("services/a/f", b"2", [(0, 3)], b"abc") + bytes(1024)
    with pytest.raises(HostileArchive, match="lie past the file"):
        _unpack_tar(tmp_path / "s", tar)
    assert not (tmp_path / "s/services/a/f").exists()


def _regular(path: Path, every: int, count: int) -> Path:
    """``count`` one-byte data pages, ``every`` bytes apart, a hole after the last."""
    with open(path, "wb") as handle:
        for i in range(count):
            handle.seek(i * every)
            handle.write(b"d")
        handle.truncate(count * every)
    return path


def test_f2_a_map_one_region_too_long_keeps_its_holes(tmp_path):
    """F2: data_map merges by doubling a gap and taking *every* hole up to it as data:
    when the holes are all the same size (InnoDB page compression: a hole in every page;
    a VM image of regular extents) the first gap that takes one takes them all, and the
    map collapses to one region covering the whole file. A file one region over the
    limit (here: 10 pages of data, 64 KiB apart, with a map of at most 9) travels whole
    and is written dense in the server's staging, helper-157 F3 all over again, though
    one merged hole would have done. Expected: at most ``most`` regions, and the holes
    that did not have to be merged kept (at least half of them here)."""
    path = _regular(tmp_path / "f", 16 * PAGE, 10)
    fd = os.open(path, os.O_RDONLY)
    try:
        regions, holes = sparse.data_map(fd, path.stat().st_size, 9)
    finally:
        os.close(fd)
    assert regions is not None and holes == path.stat().st_size - 10 * PAGE
    data = [r for r in regions if r.length]
    assert len(data) <= 9
    kept = path.stat().st_size - sum(r.length for r in data)
    assert kept >= holes // 2, (regions, kept, holes)


def test_odd_hole_layouts_travel_exactly(tmp_path):
    """Tail holes of 1 and 4095 bytes, a hole at the start, a file all hole, a one-byte
    file: written by ArchiveWriter, unpacked by the Unpacker, byte for byte and size
    for size (the sha256 of each, holes as zeros), and GNU tar reads the archive alike."""
    data = tmp_path / "data"
    data.mkdir()
    layouts = {
        "tail1": ([(0, b"x" * PAGE)], PAGE + 1),
        "tail100": ([(0, b"x" * 10000)], 10100),
        "tail4095": ([(0, b"x" * PAGE)], 2 * PAGE - 1),
        "head": ([(3 * PAGE, b"y" * PAGE)], 4 * PAGE),
        "headtail": ([(3 * PAGE, b"y" * 10)], 8 * PAGE + 7),
        "allhole": ([], 5 * PAGE + 3),
        "tiny": ([(0, b"a")], 1),
    }
    for name, (writes, size) in layouts.items():
        with open(data / name, "wb") as handle:
            for offset, chunk in writes:
                handle.seek(offset)
                handle.write(chunk)
            handle.truncate(size)
    path = tmp_path / "host-20260101T000000Z.tar"
    with ArchiveWriter(path, "none") as writer:
        stats = writer.add_tree(data, "services/app/files")
        writer.finish()
    assert not stats.warnings
    staging = tmp_path / "staging"
    with Unpacker(staging, UnpackLimits()) as unpacker, open(path, "rb") as raw:
        with TarStream(raw, "none") as stream:
            for member in stream.members():
                unpacker.add(member, stream.read_data(member))
        unpacker.finish()
    gnu = tmp_path / "gnu"
    gnu.mkdir()
    if shutil.which("tar"):
        subprocess.run(["tar", "-xf", str(path), "-C", str(gnu)], check=True)
    for name in layouts:
        want = (data / name).read_bytes()
        assert (staging / "services/app/files" / name).read_bytes() == want, name
        if shutil.which("tar"):
            assert (gnu / "services/app/files" / name).read_bytes() == want, name


# -- the start's record of what the last run took (e8e7b1f) -------------------------------

PLUGIN = r"""
import os, time
from pathlib import Path
from pullback.plugins import TaskType, hookimpl

SCHEMA = {"type": "object", "additionalProperties": False, "properties": {
    "mib": {"type": "integer"}, "temp_mib": {"type": "integer"}}}
OUT = Path(os.environ["FILL_OUT"])


@hookimpl
def pullback_task_types():
    return [TaskType("tempdump", SCHEMA)]


@hookimpl
def pullback_prepare(task):
    (OUT / "stopped").write_text("the application was stopped\n")


def _write(path, mib):
    block = os.urandom(1 << 20)
    with open(path, "wb") as out:
        for _ in range(mib):
            out.write(block)
            out.flush()
            time.sleep(0.02)


@hookimpl
def pullback_dump(task):
    # a raw dump first, then its compressed form, the raw one removed (as pg_dump
    # piped through a temporary file, or a dump tool's own scratch file)
    raw = task.staging / "dump.raw"
    if task.config.get("temp_mib"):
        _write(raw, task.config["temp_mib"])
    _write(task.staging / "dump.bin", task.config.get("mib", 1))
    if raw.exists():
        raw.unlink()
"""


@pytest.fixture
def box(tmp_path, own_filesystem) -> ClientSandbox:
    """A client whose archive and work directories are on the test's own 512 MiB tmpfs,
    with the ``tempdump`` plugin."""
    b = with_plugin(ClientSandbox(tmp_path / "client"), "tempdump", PLUGIN)
    (tmp_path / "out").mkdir()
    return placed(b, tmp_path, own_filesystem, min_free_space="200M")


@pytest.mark.integration
def test_f3_a_dump_that_removes_its_scratch_file_is_asked_for_at_the_start(
    box, tmp_path, own_filesystem
):
    """F3: FreeSpaceWatch.held counts what the run holds only when a service's staging is
    whole (and after the archive), so a plugin's scratch file, written and removed within
    its dump (here 150 MiB raw, then a 2 MiB dump), is never held: the record is
    min(drop 150 MiB, held ~4 MiB). The next start, with room for min_free_space and 60
    MiB, is let in, the prepare stops the application, and the watch stops the run half
    way, every night. Before e8e7b1f the drop (150 MiB) was recorded and the start
    refused before anything was stopped."""
    box.write_config(**box.where)
    box.add_service("app", "service:\n  name: app\ntempdump:\n  mib: 2\n  temp_mib: 150\n")
    first = box.cli("run", timeout=300, env=box.env)
    assert first.returncode == 0, first.stderr[-2000:]
    took = json.loads((box.archives / ".client-space.json").read_text())["took"]
    leave_free(own_filesystem, 260 * MIB)
    stopped = tmp_path / "out" / "stopped"
    stopped.unlink()
    second = box.cli("run", timeout=300, env=box.env)
    assert second.returncode == 1, (took, second.stderr[-2000:])
    assert "not enough free space" in second.stderr
    assert not stopped.exists()  # refused before the prepare stopped anything


@pytest.mark.integration
def test_f4_a_run_stopped_half_way_raises_the_record_to_what_it_reached(
    box, tmp_path, own_filesystem
):
    """F4: a run stopped by the watch in its second service records (raises only) the
    least of the drop and what held() counted, and held() last counted after the
    *first* service (a stopped run never reaches the next call): the record is not
    raised to what the stopped service took. The next start is let in again, stops the
    application again and is stopped again, every night. Before e8e7b1f the stopped
    run recorded its drop and the next start was refused before anything was
    stopped."""
    box.write_config(**box.where)
    box.add_service("aaa", "service:\n  name: aaa\ntempdump:\n  mib: 1\n")
    box.add_service("big", "service:\n  name: big\ntempdump:\n  mib: 20\n")
    first = box.cli("run", timeout=300, env=box.env)
    assert first.returncode == 0, first.stderr[-2000:]
    box.add_service("big", "service:\n  name: big\ntempdump:\n  mib: 150\n")  # it grew
    leave_free(own_filesystem, 290 * MIB)
    stopped = tmp_path / "out" / "stopped"
    second = box.cli("run", timeout=300, env=box.env)
    assert second.returncode == 143, second.stderr[-2000:]  # stopped half way: expected
    took = json.loads((box.archives / ".client-space.json").read_text())["took"]
    stopped.unlink()
    third = box.cli("run", timeout=300, env=box.env)
    assert third.returncode == 1, (took, third.stderr[-2000:])
    assert "not enough free space" in third.stderr
    assert not stopped.exists()  # refused before the prepare stopped anything


# -- borg create's warnings in the report (6bfb850) ---------------------------------------


def _borg(tmp_path: Path, options: str = ""):
    root = tmp_path / "server"
    root.mkdir()
    return one_host_backend(root, "borg", options)


def _staging(tmp_path: Path, files: int, beside) -> Path:
    staging = tmp_path / "staging"
    (staging / "services" / "app").mkdir(parents=True)
    for i in range(files):
        (staging / "services" / "app" / f"f{i:03d}").write_bytes(b"rows %d\n" % i)
    for name in beside:
        (staging / name).write_text("x\n")
    return staging


@pytest.mark.integration
@pytest.mark.skipif(shutil.which("borg") is None, reason="borg is not installed")
def test_borgs_warning_is_said_when_backup_options_list_files(tmp_path):
    """Held (a guess that did not break it): create_warnings keeps the last three
    lines of borg's stderr. With ``backup_options: [--info, --list]`` (allowed) borg
    lists the files it reads; a name it does not find beside ``services`` is still among
    the last three lines, and the report names it."""
    import datetime as dt

    from pullback.common.archive.stored import BESIDE_SERVICES
    from pullback.server.backends import SnapshotSpec

    borg = _borg(tmp_path, ", backup_options: [--info, --list]")
    missing = BESIDE_SERVICES[0]
    staging = _staging(tmp_path, 50, [n for n in BESIDE_SERVICES if n != missing])
    spec = SnapshotSpec("20261207T120000Z", dt.datetime(2026, 12, 7, 12, tzinfo=dt.UTC))
    stored = borg.store(staging, spec, timeout=600)
    (said,) = stored.warnings
    assert missing in said, said


def test_borgs_warning_words_are_one_bounded_line():
    """Held: a client's file names in borg's lines can neither add a line to the report
    nor flood it (three lines of at most 300 characters)."""
    from pullback.common.runner import CommandResult
    from pullback.server.backends.borg import create_warnings

    tail = ["services/a/" + "x" * 100_000, "services/a/y\n[web2] stored\r\x1b[2K"] * 500
    said = create_warnings(CommandResult("borg create", 1, 0.0, tail, 0))
    assert "\n" not in said and "\r" not in said and "\x1b" not in said
    assert len(said) < 1200, len(said)
