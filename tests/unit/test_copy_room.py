"""The pure parts of a files restore's room check (plugins/copy_room.py): what a file
takes on the live file system, which paths of a task count, where an entry lands, and
how /proc/self/mountinfo is read."""

import os
from pathlib import Path
from types import SimpleNamespace

import pytest

from pullback.plugins import copy_room

pytestmark = pytest.mark.unit


def _entry(mode: int, size: int, blocks: int) -> os.stat_result:
    """What ``_takes`` reads of a stat result (the mode, size and 512-byte blocks)."""
    return SimpleNamespace(st_mode=mode, st_size=size, st_blocks=blocks)  # type: ignore


FILE, LINK = 0o100644, 0o120777


@pytest.mark.parametrize(
    ("size", "blocks", "block", "takes"),
    [
        (40, 0, 4096, 4096),  # stored inline where it was unpacked: a block here
        (0, 0, 4096, 0),  # empty
        (10_000, 24, 4096, 12_288),  # 12 KiB
        (1 << 30, 16_384, 4096, 8 << 20),  # sparse: its data, holes stay holes
        (1 << 30, 0, 4096, 4096),  # all holes: a block at most
        (5000, 16, 2 << 20, 2 << 20),  # a tmpfs of huge pages counting 2 MiB blocks
    ],
)
def test_a_regular_file_takes_its_data_rounded_to_the_live_block(size, blocks, block, takes):
    assert copy_room._takes(_entry(FILE, size, blocks), block) == takes


def test_a_symlink_takes_no_block():
    assert copy_room._takes(_entry(LINK, 30, 0), 4096) == 0


def test_inner_and_repeated_paths_count_with_the_first_outer_one():
    paths = [Path("/srv"), Path("/srv/app"), Path("/etc"), Path("/srv"), Path("/srvx")]
    assert copy_room.nested(paths) == {1, 3}


def test_an_entry_lands_on_the_deepest_mount_that_holds_it():
    landings = {(): Path("/srv"), ("cache",): Path("/srv/cache"), ("a", "b"): Path("/m")}
    assert copy_room._deepest(("cache", "x", "y"), landings) == ("cache",)
    assert copy_room._deepest(("a", "b"), landings) == ("a", "b")
    assert copy_room._deepest(("a", "c"), landings) == ()
    assert copy_room._deepest((), landings) == ()


def test_mountinfo_is_read_with_its_escapes(tmp_path, monkeypatch):
    info = tmp_path / "mountinfo"
    info.write_text(
        "22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw\n"
        "40 22 0:35 / /srv/my\\040disk rw - tmpfs tmp\\134fs rw,size=1024k\n"
        "41 22 0:36 /@home /home rw shared:5 - btrfs /dev/sdb2 rw,subvol=/@home\n"
        "short line\n"
    )
    monkeypatch.setattr(copy_room, "MOUNTINFO", str(info))
    assert copy_room._read_mounts() == [
        (Path("/"), "ext4", "/dev/sda1"),
        (Path("/srv/my disk"), "tmpfs", "tmp\\fs"),
        (Path("/home"), "btrfs", "/dev/sdb2"),
    ]
    check = copy_room._Check()
    assert check.mounted(Path("/home/user/x")) == ("btrfs", "/dev/sdb2")
    assert check.mounted(Path("/srv/my disk/a")) == ("tmpfs", "tmp\\fs")
    assert check.mounted(Path("/var")) == ("ext4", "/dev/sda1")


def test_files_of_one_link_are_not_kept_in_the_hard_link_record(tmp_path):
    """Only a file of several links is recorded (helper-154 F6: every file's names were
    kept for the whole walk, about 350 bytes a file where 180 were enough: 2 GB more
    for 10 million files). Bound: under 250 bytes a file of one link, peak."""
    import tracemalloc

    snap, live = tmp_path / "snap", tmp_path / "live"
    live.mkdir()
    for i in range(5):
        place = snap / f"d{i}" / "deeper" / "still"
        place.mkdir(parents=True)
        for j in range(1000):
            (place / f"file-with-a-longish-name-{j:05d}").touch()
    tracemalloc.start()
    try:
        found = copy_room._footprints(copy_room._Check(), snap, {(): live})
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert found[live].files == 5000
    assert peak / 5000 < 250, f"{peak / 5000:.0f} bytes a file"


def test_hard_links_landing_on_one_place_count_once_and_on_two_are_refused(tmp_path):
    snap, live = tmp_path / "snap", tmp_path / "live"
    (snap / "a").mkdir(parents=True)
    (snap / "a" / "one").write_bytes(b"x" * 10_000)
    os.link(snap / "a" / "one", snap / "a" / "two")
    (live / "a").mkdir(parents=True)
    found = copy_room._footprints(copy_room._Check(), snap, {(): live})
    assert (found[live].files, found[live].inodes) == (2, 3)  # the top, a, the file once
    with pytest.raises(copy_room.TaskError, match=r"a/one and a/two are one file"):
        copy_room._footprints(copy_room._Check(), snap, {(): live, ("a", "two"): live / "a"})


def test_links_between_two_paths_are_noted_and_within_one_or_an_inner_one_not(tmp_path):
    """The room check's walk notes the snapshot's hard links between two restored paths
    (to be linked again after the copies) and none that one path's cp links itself, nor
    an inner path's (the outer one's cp copies it)."""
    snap, live = tmp_path / "snap", tmp_path / "live"
    for name in ("a", "b", "a/sub"):
        (snap / name).mkdir(parents=True, exist_ok=True)
    (snap / "a" / "sub" / "f").write_text("f")
    os.link(snap / "a" / "sub" / "f", snap / "b" / "g")
    os.link(snap / "a" / "sub" / "f", snap / "a" / "h")
    live.mkdir()
    places = [(snap / n, live / n) for n in ("a", "b", "a/sub")]
    room = copy_room.check_copy_room(places, [], tmp_path, 0)
    assert room.counts == [2, 1, 1]
    assert room.links.again == [((0, ("h",)), (1, ("g",)))]
    room = copy_room.check_copy_room(places[:1] + places[2:], [], tmp_path, 0)
    assert room.links.again == []


def test_a_restore_of_one_path_notes_no_links(tmp_path):
    """Hard links within one path are cp's: a restore of one path (the common case, an
    rsnapshot-like tree of linked files too) keeps no record of them past its walk."""
    snap, live = tmp_path / "snap", tmp_path / "live"
    (snap / "a").mkdir(parents=True)
    (snap / "a" / "f").write_text("f")
    os.link(snap / "a" / "f", snap / "a" / "g")
    live.mkdir()
    room = copy_room.check_copy_room([(snap / "a", live / "a")], [], tmp_path, 0)
    assert room.links.first == {} and room.links.again == []
