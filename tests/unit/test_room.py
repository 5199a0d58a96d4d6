"""fsutil.room: what a file system has left, the one reading of statvfs that the client
run's start and watch, the unpacking and a files restore's keeping all judge by."""

import os
import shutil

import pytest

from pullback.common.fsutil import MIN_FREE_INODES, Room, free_bytes, room

pytestmark = pytest.mark.unit


def test_room_reads_the_file_system_as_statvfs_and_disk_usage_do(tmp_path):
    left = room(tmp_path)
    fs = os.statvfs(tmp_path)
    assert left.block == fs.f_frsize
    assert left.size == fs.f_blocks * fs.f_frsize == shutil.disk_usage(tmp_path).total
    # free space moves as other tests write: the same reading within a few MiB
    assert abs(left.free - shutil.disk_usage(tmp_path).free) < 64 << 20
    assert abs(free_bytes(tmp_path) - left.free) < 64 << 20
    assert left.inodes is None or left.inodes <= fs.f_files
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        assert room(fd).size == left.size  # an open descriptor, as the unpacking asks
    finally:
        os.close(fd)


def test_few_inodes_only_where_inodes_are_counted():
    assert Room(1 << 30, MIN_FREE_INODES - 1, 1 << 40, 4096).few_inodes
    assert not Room(1 << 30, MIN_FREE_INODES, 1 << 40, 4096).few_inodes
    uncounted = Room(1 << 30, None, 1 << 40, 4096)  # btrfs counts none
    assert not uncounted.few_inodes
    assert uncounted.inodes_words() == "inodes not counted"
    assert Room(0, 12345, 1, 512).inodes_words() == "12,345 inodes"


def test_a_path_that_is_not_there_raises_oserror(tmp_path):
    with pytest.raises(OSError):
        room(tmp_path / "missing")


def test_only_file_systems_that_count_late_are_synced(tmp_path):
    """fstatfs's f_type picks them (COUNTS_LATE), as ``stat -f`` names the type (the
    oracle); a descriptor fstatfs refuses is none of them. (A btrfs of its own:
    tests/integration/test_run_free_space.py.)"""
    import subprocess

    from pullback.common.fsutil import COUNTS_LATE, counts_late

    assert {"btrfs", "zfs", "overlay"} == set(COUNTS_LATE.values())
    for place in (tmp_path, "/proc", "/"):
        said = subprocess.run(["stat", "-f", "-c", "%t", place], capture_output=True, text=True)
        fd = os.open(place, os.O_RDONLY | os.O_DIRECTORY)
        try:
            assert counts_late(fd) == (int(said.stdout, 16) in COUNTS_LATE), place
        finally:
            os.close(fd)
    assert not counts_late(-1)
