"""Outside review (helper-91). A send whose command never exits, past the small path
(the OpenSSH child): cut at idle_timeout, not held until host_timeout.

Decompressed bytes no limit counted. A hostile client
lists its own rebuilt archive (1 TiB of zeros as 1024 copies of a 1 GiB zstd frame, 32
MiB on the wire) as the data of a directory member, or after the end-of-archive marker;
the pull of it must fail by itself, well before host_timeout, while a good host beside
it is stored. Real sshd (tests/helpers/hostile_send.py as its forced command), real
restic.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import pytest

from tests.helpers.fleet import Fleet, FleetHost
from tests.integration.test_hostile_clients import HOST_TIMEOUT, IDLE_TIMEOUT, fleet

__all__ = ["fleet"]  # the good host and the server of test_hostile_clients

HOSTILE = Path(__file__).parents[1] / "helpers" / "hostile_send.py"
BIG = 20 << 20
"""Random bytes that make an archive past remote.SMALL_STREAM (16 MiB): the OpenSSH path."""


def make_hostile(fleet: Fleet, name: str, mode: str, big: bool = False) -> FleetHost:
    host = fleet.add_host(name)
    host.make_archive({"big.bin": os.urandom(BIG)} if big else None)
    host.sshd.stop()
    host.sshd.forced_command = f"{sys.executable} {HOSTILE} {mode} {host.client.config}"
    host.sshd.start()
    return host


def evil_status(fleet: Fleet) -> dict:
    return json.loads((fleet.state / "status.json").read_text())["hosts"]["evil"]


def timed_pull(fleet: Fleet, *args: str) -> tuple[object, float]:
    started = time.monotonic()
    result = fleet.server("pull", *args, timeout=HOST_TIMEOUT + 180)
    return result, time.monotonic() - started


def good_stored(fleet: Fleet, result) -> None:
    assert "[good] stored" in result.stderr, result.stderr[-3000:]
    again = fleet.server("pull", "--host", "good", timeout=120)
    assert again.returncode == 0, again.stderr  # the lock was released


def test_a_whole_archive_whose_send_never_exits_is_cut_at_idle_timeout(fleet):
    """The client sends its whole archive (past SMALL_STREAM: the OpenSSH path), closes
    its output and never exits, so no exit status comes: the pull waited for the ssh
    child's exit until host_timeout (40 s here); now the wait is cut at idle_timeout, as
    the small path's is ("the transfer never ended; it was cut")."""
    make_hostile(fleet, "evil", "send-no-exit-closed", big=True)
    result, took = timed_pull(fleet)
    evil = evil_status(fleet)
    print(f"send-no-exit-closed: {took:.1f}s, evil duration {evil['duration']:.1f}s")
    good_stored(fleet, result)
    assert evil["duration"] < IDLE_TIMEOUT + 10, evil["reason"]
    assert "the transfer never ended; it was cut" in evil["reason"], evil["reason"]


def _ustar(name: bytes, typeflag: bytes, size: int, mode: int = 0o755) -> bytes:
    block = bytearray(512)
    block[0 : len(name)] = name
    block[100:108] = b"%07o\0" % mode
    block[108:116] = b"%07o\0" % 0
    block[116:124] = b"%07o\0" % 0
    block[124:136] = b"%011o\0" % size
    block[136:148] = b"%011o\0" % 1_700_000_000
    block[148:156] = b" " * 8
    block[156:157] = typeflag
    block[257:263] = b"ustar\0"
    block[263:265] = b"00"
    block[148:156] = b"%06o\0 " % sum(block)
    return bytes(block)


def _pax(records: dict[bytes, bytes]) -> bytes:
    body = b""
    for key, value in records.items():
        rest = b" " + key + b"=" + value + b"\n"
        length = len(rest) + 1
        while len(str(length).encode()) + len(rest) != length:
            length += 1
        body += str(length).encode() + rest
    return _ustar(b"PaxHeaders/x", b"x", len(body), 0o644) + body + bytes((-len(body)) % 512)


def _zstd(data: bytes) -> bytes:
    import subprocess

    return subprocess.run(["zstd", "-q", "-c"], input=data, capture_output=True, check=True).stdout


GIB_OF_ZEROS_FRAMES = 1024
"""1 TiB of decompressed zeros, as 1024 copies of one zstd frame of 1 GiB (about 32 KiB)."""


def _zero_frames(count: int) -> bytes:
    import subprocess

    frame = subprocess.run(
        "head -c 1G /dev/zero | zstd -q -c", shell=True, capture_output=True, check=True
    ).stdout
    return frame * count


def build_bomb(real_archive: Path, where: str, target: Path) -> Path:
    """The real archive's tar, with 1 TiB of zeros the unpacker never counts: as the data
    of a directory member placed first (``skipped``: read past by TarReader._skip), or
    after the end-of-archive marker (``tail``: drained by TarStream._close)."""
    import subprocess

    tar = subprocess.run(
        ["zstd", "-q", "-d", "-c", str(real_archive)], capture_output=True, check=True
    ).stdout
    zeros = _zero_frames(GIB_OF_ZEROS_FRAMES)
    if where == "skipped":
        size = GIB_OF_ZEROS_FRAMES << 30
        head = _pax({b"size": str(size).encode()}) + _ustar(b"services/", b"5", 0)
        data = _zstd(head) + zeros + _zstd(tar)
    else:
        data = _zstd(tar) + zeros
    target.write_bytes(data)
    return target


@pytest.mark.parametrize("where", ["skipped", "tail"])
def test_zeros_no_member_counts_are_bounded_and_stop_at_the_deadline(fleet, tmp_path, where):
    """security.md: the server's work is bounded by what arrived, the one exception
    (holes) by max_unpacked_size, and stopped at host_timeout. A directory member's data
    (skipped, counted as size 0) and what follows the end-of-archive marker (drained so
    the decompressor can finish) count against no limit and look at no deadline: 32 MiB
    on the wire is 1 TiB of decompression; the host's process is killed 30 s past its
    deadline instead of ending itself."""
    evil = fleet.add_host("evil")
    archive = evil.make_archive()
    bomb = build_bomb(archive, where, tmp_path / "bomb.tar.zst")
    evil.sshd.stop()
    evil.sshd.forced_command = f"{sys.executable} {HOSTILE} bomb {evil.client.config} {bomb}"
    evil.sshd.start()
    fleet.host_extra["evil"] = {"max_unpacked_size": "64M"}
    fleet.write_config()
    result, took = timed_pull(fleet)
    status = evil_status(fleet)
    print(
        f"bomb {where} ({bomb.stat().st_size >> 20} MiB on the wire): pull {took:.1f}s, "
        f"evil duration {status['duration']:.1f}s; {status['reason']}"
    )
    good_stored(fleet, result)
    assert status["last_result"] == "failed"
    assert "did not stop by itself" not in status["reason"], status["reason"]
    assert took < HOST_TIMEOUT + 10, status["reason"]
