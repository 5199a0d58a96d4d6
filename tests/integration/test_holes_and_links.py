"""``max_holes_and_links``: a local user's holes and hard links cannot have the server
refuse the host's whole archive (helper-156 F6).

The server counts every regular file at its apparent size and every hard link at its
file's size against ``max_unpacked_size`` (restic reads them all), while on the client
both cost nothing: ``truncate -s 2T ~/x`` or ``ln`` in a loop. The client bounds them per
archive and leaves out, with a warning, the file or link that would pass the bound. The
server's own unpacking is the oracle: with a ``max_unpacked_size`` of the data plus the
client's bound it takes the archive whole; without the client's bound it refuses it.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from pullback.common.archive.reader import TarStream
from pullback.common.archive.unpack import ArchiveTooLarge, Unpacker, UnpackLimits
from tests.helpers.client import ClientSandbox

MIB = 1 << 20
TREE = "services/app/files"


def hole(path: Path, size: int, data: bytes = b"") -> Path:
    """A file of apparent ``size`` holding only ``data`` at its start."""
    with open(path, "wb") as handle:
        handle.write(data)
        handle.truncate(size)
    return path


def members(archive: Path) -> list[str]:
    """The archive's member names (a sparse member under its real name)."""
    with open(archive, "rb") as raw, TarStream(raw, "zstd") as stream:
        return [member.name for member in stream.members()]


def unpack(archive: Path, staging: Path, max_size: int) -> Path:
    """``archive`` unpacked by the server's unpacking with ``max_unpacked_size``
    ``max_size`` (raises ArchiveTooLarge past it)."""
    limits = UnpackLimits(max_size=max_size)
    with Unpacker(staging, limits) as unpacker, open(archive, "rb") as raw:
        with TarStream(raw, "zstd") as stream:
            for member in stream.members():
                unpacker.add(member, stream.read_data(member))
        unpacker.finish()
    return staging


def backing_up(tmp_path: Path, data: Path, **config) -> ClientSandbox:
    """A client whose service ``app`` archives ``data``, with ``config`` in client.yaml."""
    box = ClientSandbox(tmp_path / "client")
    box.add_service("app", f"service: {{name: app}}\nfiles: {{paths: [{data}]}}\n")
    box.write_config(**config)
    return box


def run(box: ClientSandbox):
    made = box.cli("run", timeout=600)
    assert made.returncode == 0, made.stderr[-3000:]
    return made


def test_holes_and_links_past_the_bound_are_left_out_and_the_server_takes_the_rest(tmp_path):
    """700 MiB of holes fit a 1 GiB bound, the next 700 MiB do not; 400 further names
    of a 1 MiB file fit only up to the bound (324 of them). The server, allowing the
    data plus 1 GiB, takes the archive; the same tree archived without the bound is
    refused whole, as it was before."""
    data = tmp_path / "data"
    (data / "c").mkdir(parents=True)
    hole(data / "a.img", 700 * MIB, b"boot")
    hole(data / "b.img", 700 * MIB)
    dense = data / "c/dense"
    dense.write_bytes(os.urandom(MIB))
    for i in range(400):
        os.link(dense, data / f"c/l{i:03d}")
    box = backing_up(tmp_path, data, max_holes_and_links="1G")
    made = run(box)
    said = made.stdout + made.stderr
    assert f"{data}/b.img: its holes (700.0 MiB)" in said
    assert "past max_holes_and_links (1.0 GiB): left out" in said
    assert f"{data}/c/l324: a hard link to {TREE}{dense}" in said, said[-2000:]
    (archive,) = box.published()
    names = members(archive)
    root = f"{TREE}{data}"
    assert f"{root}/a.img" in names and f"{root}/b.img" not in names
    assert f"{root}/c/l323" in names and f"{root}/c/l324" not in names
    warnings = " ".join(box.sidecar(archive)["services"][0]["tasks"][0]["warnings"])
    assert "b.img" in warnings

    staging = unpack(archive, tmp_path / "staging", max_size=(1 << 30) + 2 * MIB)
    assert os.stat(staging / root.lstrip("/") / "a.img").st_size == 700 * MIB
    assert os.stat(staging / root.lstrip("/") / "c/l000").st_nlink == 325

    for old in box.published():
        old.unlink()
        old.with_name(old.name + ".json").unlink()
    box.write_config(max_holes_and_links=0)  # 0: no bound, what every run did before
    run(box)
    (unbounded,) = box.published()
    with pytest.raises(ArchiveTooLarge, match="max_unpacked_size"):
        unpack(unbounded, tmp_path / "refused", max_size=(1 << 30) + 2 * MIB)


def test_an_unchanged_sparse_file_counts_its_holes_unread(tmp_path):
    """Day two is a delta: the unchanged 700 MiB image is a ``same`` member, never
    read, and its holes still count (the file cache keeps them), so the day's new
    700 MiB of holes are left out. Counted from nothing, both would pass."""
    data = tmp_path / "data"
    data.mkdir()
    hole(data / "a.img", 700 * MIB, b"boot")
    time.sleep(2.1)  # (a file this fresh is read again next run: racy)
    box = backing_up(tmp_path, data, max_holes_and_links="1G", incremental={"enabled": True})
    run(box)
    hole(data / "b.img", 700 * MIB)
    made = run(box)
    assert f"{data}/b.img: its holes (700.0 MiB)" in made.stdout + made.stderr
    day_two = box.published()[-1]
    assert box.sidecar(day_two)["archive"].get("base"), "day two is not a delta"
    names = members(day_two)
    root = f"{TREE}{data}"
    assert f"{root}/b.img" not in names
    assert f"{root}/a.img" in names  # (a same member: its name only)


def test_a_run_logs_a_task_s_first_thousand_warnings_and_counts_the_rest(tmp_path):
    """1,100 further names past the bound are 1,100 warnings: the run logs the task's
    first 1,000 and one line counting the rest; the sidecar shows 20 and counts 1,080."""
    data = tmp_path / "data"
    data.mkdir()
    first = data / "a"
    first.write_bytes(os.urandom(MIB))
    for i in range(1101):
        os.link(first, data / f"l{i:04d}")
    box = backing_up(tmp_path, data, max_holes_and_links="1M")  # (one further name fits)
    made = run(box)
    logged = (made.stdout + made.stderr).count(": a hard link to ")
    assert logged == 1000, logged
    assert "... and 100 more warnings like these" in made.stderr
    (archive,) = box.published()
    warnings = box.sidecar(archive)["services"][0]["tasks"][0]["warnings"]
    assert len(warnings) == 21 and warnings[-1] == "... and 1080 more"


def test_a_file_whose_only_hole_is_a_short_tail_is_pulled_and_restored(fleet, tmp_path):
    """A user's ``truncate -s +100 file`` (its last block never written): the server
    unpacked the file up to 512 bytes longer, found it did not match its manifest, and
    refused the host's whole archive, every night. Real client run, real pull over sshd,
    restic; the restored file is the user's, byte for byte."""
    host = fleet.add_host("web1")
    grown = host.data / "grown"
    grown.write_bytes(b"a" * 8192)
    os.truncate(grown, 8192 + 100)
    assert grown.stat().st_blocks * 512 < grown.stat().st_size  # (it has a hole)
    made = host.client.cli("run")
    assert made.returncode == 0, made.stderr[-2000:]
    pulled = fleet.server("pull", "--host", "web1")
    assert pulled.returncode == 0, pulled.stderr[-3000:]
    root = fleet.restore("web1", tmp_path / "restored")
    (restored,) = root.rglob("grown")
    assert restored.read_bytes() == grown.read_bytes()
