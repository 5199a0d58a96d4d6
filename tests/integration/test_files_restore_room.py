"""A files restore onto the live system never fills its disk: before anything is
replaced, each file system a restored path lands on must take what the copy adds (the
snapshot's blocks less those of the live files it overwrites, and the kept copies when
the safety directory is there too) and keep ``min_free_space`` free (plugins/copy_room.py).
Before, only the unpacking into TMPDIR was bounded: ``cp`` filled the live disk to the
last byte, a database beside it failing, and left a cut-short file (helper-147 F3).

Real ``pullback-client run`` and ``restore`` subprocesses; the live disk is a tmpfs of
the test's own (``own_filesystem``), filled to the free space each test needs.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.helpers.client import ClientSandbox

pytestmark = pytest.mark.integration

MIB = 1 << 20


def _backed_up(tmp_path: Path, live: Path, mib: int) -> tuple[ClientSandbox, Path]:
    """A client whose service ``app`` holds ``live`` with a ``mib`` MiB ``blob``, run once:
    the sandbox and its archive."""
    box = ClientSandbox(tmp_path / "client")
    live.mkdir()
    (live / "blob").write_bytes(os.urandom(mib * MIB))
    box.add_service("app", f"service: {{name: app}}\nfiles: {{paths: [{live}]}}\n")
    made = box.cli("run", timeout=120)
    assert made.returncode == 0, made.stderr[-2000:]
    (archive,) = box.published()
    box.write_config(min_free_space="16M")
    return box, archive


def _fill(disk: Path, leave: int) -> None:
    """Fill ``disk`` until ``leave`` bytes are free (a database's disk, close to full)."""
    with open(disk / "database", "wb") as db:
        db.write(b"\1" * (shutil.disk_usage(disk).free - leave))


def _restore(box: ClientSandbox, archive: Path, tmp_path: Path, *more: str):
    scratch = tmp_path / "tmpdir"
    scratch.mkdir(exist_ok=True)
    return box.cli(
        "restore", "--service", "app", "--from", str(archive), *more,
        timeout=120, env={"TMPDIR": str(scratch)},
    )  # fmt: skip


def test_a_lost_file_larger_than_the_room_left_is_refused_before_anything_is_written(
    tmp_path, own_filesystem
):
    live = own_filesystem / "srv"
    box, archive = _backed_up(tmp_path, live, 64)
    (live / "blob").unlink()  # lost: to be restored
    _fill(own_filesystem, 40 * MIB)
    before = shutil.disk_usage(own_filesystem).free

    for dry in (("--dry-run",), ()):  # the dry run says what the restore will say
        done = _restore(box, archive, tmp_path, *dry)
        assert done.returncode == 1, done.stderr[-2000:]
        assert f"no room to restore 1 file onto the file system of {live}: the restore adds" in (
            done.stderr
        )
        assert "keeping min_free_space (16.0 MiB) free, where 40.0 MiB" in done.stderr
        assert "nothing was replaced" in done.stderr and "--target DIR" in done.stderr
        assert not (live / "blob").exists(), "no cut-short file at the live path"
        assert shutil.disk_usage(own_filesystem).free == before

    elsewhere = tmp_path / "elsewhere"  # as the words say: another disk
    done = _restore(box, archive, tmp_path, "--target", str(elsewhere))
    assert done.returncode == 0, done.stderr[-2000:]
    assert (elsewhere / str(live).lstrip("/") / "blob").stat().st_size == 64 * MIB


def test_a_file_replaced_by_one_of_its_size_needs_no_more_room(tmp_path, own_filesystem):
    """The copy overwrites the live file it replaces (its blocks freed as it writes):
    a changed 64 MiB file goes back onto a disk with 40 MiB free, 16 MiB kept free. The
    live version is kept in the safety directory, on another disk here."""
    live = own_filesystem / "srv"
    box, archive = _backed_up(tmp_path, live, 64)
    saved = (live / "blob").read_bytes()
    (live / "blob").write_bytes(os.urandom(64 * MIB))  # damaged: to be restored
    _fill(own_filesystem, 40 * MIB)

    done = _restore(box, archive, tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert (live / "blob").read_bytes() == saved
    assert shutil.disk_usage(own_filesystem).free >= 16 * MIB
    assert "what the files restore replaced is kept in" in done.stderr


def test_kept_copies_on_the_same_disk_count_with_the_restore(tmp_path, own_filesystem):
    """The safety directory on the live disk: keeping the replaced 64 MiB there fits in
    the 75 MiB free (what keeping alone checks), but then min_free_space (16 MiB) is not
    left: refused, nothing kept, nothing replaced."""
    live = own_filesystem / "srv"
    box, archive = _backed_up(tmp_path, live, 64)
    (live / "blob").write_bytes(os.urandom(64 * MIB))
    damaged = (live / "blob").read_bytes()
    shutil.move(box.work, own_filesystem / "work")  # the safety directory: beside work_dir
    box.work = own_filesystem / "work"
    box.write_config(min_free_space="16M")
    _fill(own_filesystem, 75 * MIB)

    done = _restore(box, archive, tmp_path)
    assert done.returncode == 1, done.stderr[-2000:]
    assert f"no room to restore 1 file onto the file system of {live}" in done.stderr
    assert "nothing was replaced" in done.stderr
    assert (live / "blob").read_bytes() == damaged
    kept = own_filesystem / "before-restore"
    assert not kept.exists() or not any(kept.iterdir())


@pytest.fixture
def mounts(tmp_path):
    """``mount(name, size)``: a tmpfs of this test's own at ``tmp_path/name``;
    ``mount.bind(source, where)``; ``mount.btrfs(name, mib)`` a loop btrfs; each
    unmounted as the test ends (root only)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    made: list[Path] = []
    images: list[Path] = []

    def mount(name: str, size: str, more: str = "") -> Path:
        where = tmp_path / name
        where.mkdir(parents=True, exist_ok=True)
        options = f"size={size},mode=755{more}"
        subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", where], check=True)
        made.append(where)
        return where

    def bind(source: Path, where: Path) -> None:
        subprocess.run(["mount", "--bind", source, where], check=True)
        made.append(where)

    def btrfs(name: str, mib: int) -> Path:
        image, where = tmp_path / f"{name}.img", tmp_path / name
        with open(image, "wb") as space:
            space.truncate(mib * MIB)
        subprocess.run(["mkfs.btrfs", "-q", "-f", "--mixed", image], check=True)
        where.mkdir()
        subprocess.run(["mount", "-o", "loop", image, where], check=True)
        made.append(where)
        images.append(image)
        return where

    mount.bind = bind  # type: ignore[attr-defined]
    mount.btrfs = btrfs  # type: ignore[attr-defined]
    yield mount
    for where in reversed(made):
        subprocess.run(["umount", "-l", where], check=False)
    for image in images:  # (a filled one takes its size on the disk of the suite's files)
        image.unlink(missing_ok=True)


def _service(tmp_path: Path, paths: list[Path]) -> ClientSandbox:
    box = ClientSandbox(tmp_path / "client")
    listed = ", ".join(str(p) for p in paths)
    box.add_service("app", f"service: {{name: app}}\nfiles: {{paths: [{listed}]}}\n")
    made = box.cli("run", timeout=120)
    assert made.returncode == 0, made.stderr[-2000:]
    box.write_config(min_free_space="16M")
    return box


def _refused_leaving(done, disk: Path, before: int, where: Path) -> None:
    assert done.returncode == 1, done.stderr[-2000:]
    assert f"no room to restore 1 file onto the file system of {where}:" in done.stderr
    assert shutil.disk_usage(disk).free == before, "nothing written"


def test_a_disk_mounted_below_the_restored_path_is_looked_at_itself(tmp_path, mounts):
    """srv on a roomy disk, srv/cache a small one mounted inside it (helper-149 F1): the
    64 MiB of srv/cache/blob land on the small disk, which has 40 MiB free."""
    big = mounts("big", "512m")
    live = big / "srv"
    (live / "cache").mkdir(parents=True)
    (live / "cache" / "blob").write_bytes(os.urandom(64 * MIB))
    box = _service(tmp_path, [live])
    (archive,) = box.published()
    (live / "cache" / "blob").unlink()
    small = mounts("big/srv/cache", "48m")
    _fill(small, 40 * MIB)
    before = shutil.disk_usage(small).free

    _refused_leaving(_restore(box, archive, tmp_path), small, before, small)
    assert not (small / "blob").exists()


def test_what_one_path_frees_never_pays_for_what_another_writes_first(tmp_path, mounts):
    """a/new (64 MiB) is lost, b/old grew to 64 MiB and goes back to 1 byte: in all the
    restore adds nothing, but ``cp`` writes a's 64 MiB before it frees b's (helper-149
    F2): onto 40 MiB free that is refused. A file linked elsewhere too (F6) is unlinked
    by ``cp``, not written over: replacing it frees nothing either."""
    disk = mounts("disk", "512m")
    a, b, c = disk / "a", disk / "b", disk / "c"
    for directory in (a, b, c):
        directory.mkdir()
    (a / "new").write_bytes(os.urandom(64 * MIB))
    (b / "old").write_bytes(b"x")
    (c / "db").write_bytes(os.urandom(64 * MIB))
    box = _service(tmp_path, [a, b])
    (archive,) = box.published()
    (a / "new").unlink()
    (b / "old").write_bytes(os.urandom(64 * MIB))
    _fill(disk, 40 * MIB)
    before = shutil.disk_usage(disk).free
    done = _restore(box, archive, tmp_path)
    assert done.returncode == 1 and "no room to restore 2 files onto" in done.stderr, done.stderr[
        -2000:
    ]
    assert shutil.disk_usage(disk).free == before and not (a / "new").exists()

    shutil.rmtree(tmp_path / "client")
    (disk / "database").unlink()
    box = _service(tmp_path, [c])
    (archive,) = box.published()
    (c / "db").write_bytes(os.urandom(64 * MIB))  # damaged, the same size
    (disk / "elsewhere").mkdir()
    os.link(c / "db", disk / "elsewhere" / "db")
    box.work.mkdir(exist_ok=True)
    _fill(disk, 40 * MIB)
    before = shutil.disk_usage(disk).free
    _refused_leaving(_restore(box, archive, tmp_path), disk, before, c)


def test_a_symlink_on_the_way_is_followed_to_the_disk_cp_writes_on(tmp_path, mounts):
    """/big/app is root's symlink to /small/app (as /var/lib/mysql -> /data/mysql), and
    --target a symlink to a small disk (helper-149 F3): each is looked at where ``cp``
    writes, the small disk."""
    big, small = mounts("big", "512m"), mounts("small", "128m")
    live = big / "app" / "data"
    live.mkdir(parents=True)
    (live / "blob").write_bytes(os.urandom(64 * MIB))
    box = _service(tmp_path, [live])
    (archive,) = box.published()
    shutil.rmtree(big / "app")
    (small / "app").mkdir()
    (big / "app").symlink_to(small / "app")
    _fill(small, 40 * MIB)
    before = shutil.disk_usage(small).free
    _refused_leaving(_restore(box, archive, tmp_path), small, before, small / "app")

    (tmp_path / "restore-here").symlink_to(small)
    done = _restore(box, archive, tmp_path, "--target", str(tmp_path / "restore-here"))
    _refused_leaving(done, small, before, small)


def test_a_restore_that_adds_nothing_goes_back_onto_a_disk_already_full(tmp_path, mounts):
    """Files in directories that are there, replaced by ones of their own size, on a disk
    already below min_free_space (helper-149 F4): nothing is added, nothing refused."""
    disk = mounts("disk", "256m")
    live = disk / "srv"
    for n in range(4):
        (live / f"d{n}").mkdir(parents=True)
        (live / f"d{n}" / "conf").write_bytes(b"a" * 1000)
    box = _service(tmp_path, [live])
    (archive,) = box.published()
    for n in range(4):
        (live / f"d{n}" / "conf").write_bytes(b"b" * 1000)
    _fill(disk, 8 * MIB)
    before = shutil.disk_usage(disk).free

    done = _restore(box, archive, tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert (live / "d3" / "conf").read_bytes() == b"a" * 1000
    assert shutil.disk_usage(disk).free >= before


def test_kept_copies_behind_a_symlink_count_on_the_live_disk(tmp_path, mounts):
    """The state directory is root's symlink onto the live disk (/var/lib/pullback ->
    /srv/pullback), before-restore not there yet (the first restore; helper-149 F3):
    keeping the replaced 64 MiB there fits in the 75 MiB free, but then min_free_space
    is not left on the live disk: refused before anything is kept or replaced."""
    disk = mounts("disk", "512m")
    live = disk / "srv"
    live.mkdir()
    (live / "blob").write_bytes(os.urandom(64 * MIB))
    box = _service(tmp_path, [live])
    (archive,) = box.published()
    (live / "blob").write_bytes(os.urandom(64 * MIB))
    damaged = (live / "blob").read_bytes()
    (disk / "pullback").mkdir()
    shutil.move(box.work, disk / "pullback" / "work")
    (tmp_path / "state").symlink_to(disk / "pullback")
    box.work = tmp_path / "state" / "work"
    box.write_config(min_free_space="16M")
    _fill(disk, 75 * MIB)
    before = shutil.disk_usage(disk).free

    _refused_leaving(_restore(box, archive, tmp_path), disk, before, live)
    assert (live / "blob").read_bytes() == damaged


def test_a_path_below_a_symlink_root_made_is_restored_through_it(tmp_path, mounts):
    """/big/app is root's symlink to /small/app (the /var/lib/mysql -> /data/mysql
    layout), the path /big/app/data: the archive held the symlink as a member, and the
    unpacking refused what lay below it, so the backup could never be restored, not even
    with --target (helper-149 F10). Now it goes back beside the live files and in place,
    through the live link."""
    big, small = mounts("big", "128m"), mounts("small", "128m")
    (small / "app" / "data").mkdir(parents=True)
    (small / "app" / "data" / "conf").write_text("setting=1\n")
    (big / "app").symlink_to(small / "app")
    box = _service(tmp_path, [big / "app" / "data"])
    (archive,) = box.published()

    beside = tmp_path / "elsewhere"
    done = _restore(box, archive, tmp_path, "--target", str(beside))
    assert done.returncode == 0, done.stderr[-2000:]
    restored = beside / str(big).lstrip("/") / "app" / "data" / "conf"
    assert restored.read_text() == "setting=1\n"
    assert not restored.parent.parent.is_symlink()

    (small / "app" / "data" / "conf").write_text("setting=2\n")
    done = _restore(box, archive, tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert (small / "app" / "data" / "conf").read_text() == "setting=1\n"
    assert (big / "app").is_symlink()


def test_new_directories_count_an_inode_each(tmp_path, mounts):
    """5,000 empty directories the live tree lost (a spool's skeleton), onto a disk with
    3,000 free inodes: cp made 3,000 and failed half way, the disk left with none
    (helper-151 F1). Refused now, nothing made."""
    disk = mounts("disk", "64m", ",nr_inodes=20000")
    live = disk / "srv"
    live.mkdir()
    for n in range(5000):
        (live / f"d{n:04}").mkdir()
    box = _service(tmp_path, [live])
    (archive,) = box.published()
    for n in range(5000):
        (live / f"d{n:04}").rmdir()
    (disk / "inodes").mkdir()
    n = 0
    while os.statvfs(disk).f_favail > 3000:
        (disk / "inodes" / str(n)).touch()
        n += 1
    before = os.statvfs(disk).f_favail

    done = _restore(box, archive, tmp_path)
    assert done.returncode == 1, done.stderr[-2000:]
    assert "no room to restore 0 files onto the file system of" in done.stderr
    assert "and 5000 inodes there" in done.stderr
    assert os.statvfs(disk).f_favail == before and not any(live.iterdir())


def test_a_file_mounted_at_the_restored_path_is_looked_at_on_its_own_disk(tmp_path, mounts):
    """The restored path is a file bind-mounted from a small disk (a container's data
    file): it was counted on its parent's roomy disk, and cp filled the small one
    (helper-151 F2)."""
    big, small = mounts("big", "512m"), mounts("small", "128m")
    (small / "blob").write_bytes(os.urandom(64 * MIB))
    live = big / "srv"
    live.mkdir()
    (live / "blob").touch()
    mounts.bind(small / "blob", live / "blob")
    box = _service(tmp_path, [live / "blob"])
    (archive,) = box.published()
    (live / "blob").write_bytes(b"x")
    _fill(small, 40 * MIB)
    before = shutil.disk_usage(small).free

    _refused_leaving(_restore(box, archive, tmp_path), small, before, live / "blob")
    assert (live / "blob").read_bytes() == b"x"


def test_a_mount_nothing_lands_on_is_not_looked_at(tmp_path, mounts):
    """A disk mounted at srv/cache, hidden since by another mounted over srv (still in
    /proc/self/mountinfo, its point gone): the restore puts nothing there, and was
    refused "cannot tell whether the restore fits" (helper-151 F3)."""
    base = mounts("base", "64m")
    live = base / "srv"
    (live / "cache").mkdir(parents=True)
    mounts("base/srv/cache", "16m")
    mounts("base/srv", "64m")
    (live / "conf").write_bytes(b"a" * 1000)
    box = _service(tmp_path, [live])
    (archive,) = box.published()
    (live / "conf").write_bytes(b"b" * 1000)

    done = _restore(box, archive, tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert (live / "conf").read_bytes() == b"a" * 1000


@pytest.mark.parametrize("second", ["the path inside it", "the same path", "with a trailing slash"])
def test_overlapping_or_repeated_paths_count_what_they_share_once(tmp_path, mounts, second):
    """``paths: [srv, srv/blob]`` (helper-149 F7), ``[srv, srv]`` or ``[srv, srv/]``
    (helper-151 F7): the lost 64 MiB blob was counted twice, a restore that fits
    refused. It goes back onto a disk with 100 MiB free, 16 MiB kept free."""
    disk = mounts("disk", "512m")
    live = disk / "srv"
    live.mkdir()
    (live / "blob").write_bytes(os.urandom(64 * MIB))
    other = {
        "the path inside it": str(live / "blob"),
        "the same path": str(live),
        "with a trailing slash": f"{live}/",
    }[second]
    box = _service(tmp_path, [live, Path(f"'{other}'")])
    (archive,) = box.published()
    (live / "blob").unlink()
    _fill(disk, 100 * MIB)

    done = _restore(box, archive, tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert (live / "blob").stat().st_size == 64 * MIB
    assert shutil.disk_usage(disk).free >= 16 * MIB


def test_small_files_count_a_block_each_however_the_scratch_disk_holds_them(tmp_path, mounts):
    """The sizes are read where the snapshot was unpacked: an ext4 with inline_data
    keeps a 40-byte file in its inode, and 20,000 of them were counted as 10 MiB; they
    take a 4 KiB page each on the live tmpfs, 80 MiB (helper-151 F4)."""
    disk = mounts("disk", "256m")
    live = disk / "srv"
    for n in range(20):
        (live / f"d{n}").mkdir(parents=True)
        for m in range(1000):
            (live / f"d{n}" / f"f{m}").write_bytes(b"x" * 40)
    box = _service(tmp_path, [live])
    (archive,) = box.published()
    shutil.rmtree(live)
    live.mkdir()
    image = tmp_path / "scratch.img"
    with open(image, "wb") as made:
        made.truncate(512 * MIB)
    mkfs = ["mkfs.ext4", "-q", "-F", "-O", "inline_data", "-I", "256", image]
    subprocess.run(mkfs, check=True)
    scratch = tmp_path / "tmpdir"
    scratch.mkdir()
    subprocess.run(["mount", "-o", "loop", image, scratch], check=True)
    try:
        _fill(disk, 60 * MIB)
        before = shutil.disk_usage(disk).free
        done = _restore(box, archive, tmp_path)
    finally:
        subprocess.run(["umount", scratch], check=False)
        image.unlink()
    assert done.returncode == 1, done.stderr[-2000:]
    assert "no room to restore 20000 files onto the file system of" in done.stderr
    assert shutil.disk_usage(disk).free == before


@pytest.fixture
def btrfs(mounts):
    """A 768 MiB btrfs of this test's own at ``tmp_path/pool`` (scripts/install-deps
    installs btrfs-progs)."""
    return mounts.btrfs("pool", 768)


def _fill_btrfs(pool: Path, leave: int) -> int:
    """Fill ``pool`` until ``leave`` bytes are free, synced (btrfs counts late); returns
    what is free then."""
    os.sync()
    with open(pool / "database", "wb") as db:
        db.write(b"\1" * (shutil.disk_usage(pool).free - leave))
    os.sync()
    return shutil.disk_usage(pool).free


def test_subvolumes_of_one_pool_are_checked_as_one_disk(tmp_path, btrfs):
    """Two paths, two btrfs subvolumes of one pool (each its own st_dev), each losing
    64 MiB: each fit alone in the 100 MiB free, the two did not (helper-151 F5)."""
    a, b = btrfs / "a", btrfs / "b"
    for sub in (a, b):
        subprocess.run(["btrfs", "-q", "subvolume", "create", sub], check=True)
        (sub / "blob").write_bytes(os.urandom(64 * MIB))
    assert os.stat(a).st_dev != os.stat(b).st_dev
    box = _service(tmp_path, [a, b])
    (archive,) = box.published()
    (a / "blob").unlink()
    (b / "blob").unlink()
    before = _fill_btrfs(btrfs, 100 * MIB)

    done = _restore(box, archive, tmp_path)
    assert done.returncode == 1, done.stderr[-2000:]
    assert "no room to restore 2 files onto the file system of" in done.stderr
    assert not (a / "blob").exists() and not (b / "blob").exists()
    assert shutil.disk_usage(btrfs).free >= before - MIB


def test_a_file_a_snapshot_shares_frees_nothing_when_written_over(tmp_path, btrfs):
    """On btrfs a snapshot may hold a live file's blocks: truncating it frees nothing,
    and the copy written over it takes all its 64 MiB anew (helper-151 F6)."""
    live = btrfs / "srv"
    subprocess.run(["btrfs", "-q", "subvolume", "create", live], check=True)
    (live / "blob").write_bytes(os.urandom(64 * MIB))
    box = _service(tmp_path, [live])
    (archive,) = box.published()
    (live / "blob").write_bytes(os.urandom(64 * MIB))
    damaged = (live / "blob").read_bytes()
    hourly = ["btrfs", "-q", "subvolume", "snapshot", "-r", live, btrfs / "hourly"]
    subprocess.run(hourly, check=True)
    _fill_btrfs(btrfs, 40 * MIB)

    done = _restore(box, archive, tmp_path)
    assert done.returncode == 1, done.stderr[-2000:]
    assert "no room to restore 1 file onto the file system of" in done.stderr
    assert (live / "blob").read_bytes() == damaged


# helper-152's attack: what the credits and the pools got wrong
def test_a_path_listed_twice_credits_what_it_overwrites_once(tmp_path, mounts):
    """``paths: [srv, srv]``: each listing's Replaced is credited (counted_at holds the
    destination, both found entries match it), so the 64 MiB blob overwritten in place
    pays twice, once for the new 48 MiB file that does not fit in 40 MiB free."""
    disk = mounts("disk", "512m")
    live = disk / "srv"
    live.mkdir()
    (live / "blob").write_bytes(os.urandom(64 * MIB))
    (live / "new").write_bytes(os.urandom(48 * MIB))
    box = _service(tmp_path, [live, live])
    (live / "new").unlink()  # lost: 48 MiB to add
    (live / "blob").write_bytes(os.urandom(64 * MIB))  # damaged: overwritten in place
    before = _fill_btrfs(disk, 40 * MIB)

    done = _restore(box, box.published()[0], tmp_path, "--dry-run")
    assert done.returncode == 1, "dry run said the restore fits: " + done.stderr[-1500:]
    assert "no room to restore" in done.stderr
    assert shutil.disk_usage(disk).free == before


def test_two_btrfs_file_systems_are_not_one_pool(tmp_path, mounts):
    """A btrfs's mountinfo source is ``/dev/loopN``: ``source.split('/')[0]`` is ``''``
    for every one, so all btrfs file systems on the host are one "pool", checked against
    the room of the first one met. A roomy btrfs listed first hides a full one: 64 MiB
    go onto one with 40 MiB free."""
    roomy = mounts.btrfs("roomy", 512)
    full = mounts.btrfs("full", 512)
    a, b = roomy / "a", full / "b"
    a.mkdir()
    b.mkdir()
    (a / "small").write_bytes(b"x" * 5000)
    (b / "blob").write_bytes(os.urandom(64 * MIB))
    box = _service(tmp_path, [a, b])
    (a / "small").unlink()
    (b / "blob").unlink()
    before = _fill_btrfs(full, 40 * MIB)

    done = _restore(box, box.published()[0], tmp_path, "--dry-run")
    assert done.returncode == 1, "dry run said the restore fits: " + done.stderr[-1500:]
    assert f"onto the file system of {b}" in done.stderr, done.stderr[-1500:]
    assert shutil.disk_usage(full).free >= before - MIB


def test_a_hidden_mount_below_the_path_does_not_stop_the_count(tmp_path, mounts):
    """A tmpfs once mounted at top/srv/inner, then top over-mounted: mountinfo still lists
    top/srv/inner, so ``_landings`` makes it a landing; ``check.at`` stats it, ENOENT on
    the disk that hides it, and ``_footprints``'s suppress(OSError) around the whole walk
    ends the count there: the 64 MiB ``zblob`` (sorted after ``inner``) is never counted,
    and goes onto a disk with 40 MiB free."""
    mounts("top", "64m")
    (tmp_path / "top" / "srv" / "inner").mkdir(parents=True)
    mounts("top/srv/inner", "64m")
    disk = mounts("top", "512m")  # over it: hides top/srv/inner
    live = disk / "srv"
    (live / "inner").mkdir(parents=True)
    (live / "zblob").write_bytes(os.urandom(64 * MIB))
    box = _service(tmp_path, [live])
    (live / "inner").rmdir()
    (live / "zblob").unlink()
    before = _fill_btrfs(disk, 40 * MIB)

    done = _restore(box, box.published()[0], tmp_path, "--dry-run")
    assert done.returncode == 1, "dry run said the restore fits: " + done.stderr[-1500:]
    assert "no room to restore" in done.stderr, done.stderr[-1500:]
    assert shutil.disk_usage(disk).free == before


def test_a_lower_file_of_an_overlay_written_over_frees_nothing(tmp_path, mounts):
    """The live path on an overlayfs (a container's root): the damaged 64 MiB blob is in
    the lower layer. ``cp`` truncating it copies it up: the upper layer takes the 64 MiB
    anew, the lower keeps its own. ``_reused`` credits the live blocks (overlay is not in
    SHARED_BLOCKS): 64 MiB go onto a disk with 40 MiB free, 16 MiB kept free."""
    disk = mounts("disk", "512m")
    lower, upper, work, merged = (disk / n for n in ("lower", "upper", "work", "merged"))
    for d in (lower / "srv", upper, work, merged):
        d.mkdir(parents=True)
    (lower / "srv" / "blob").write_bytes(os.urandom(64 * MIB))  # damaged, in the image
    options = f"lowerdir={lower},upperdir={upper},workdir={work}"
    subprocess.run(["mount", "-t", "overlay", "-o", options, "overlay", merged], check=True)
    live = merged / "srv"
    try:
        (upper / "srv").mkdir()
        # the snapshot's blob: another 64 MiB, backed up through the overlay
        good = tmp_path / "good"
        good.write_bytes(os.urandom(64 * MIB))
        box = ClientSandbox(tmp_path / "client")
        box.add_service("app", f"service: {{name: app}}\nfiles: {{paths: [{live}]}}\n")
        shutil.copyfile(good, live / "blob")  # copied up for the backup
        made = box.cli("run", timeout=120)
        assert made.returncode == 0, made.stderr[-2000:]
        box.write_config(min_free_space="16M")
        subprocess.run(["umount", merged], check=True)
        (upper / "srv" / "blob").unlink()  # back to the lower layer's (damaged) blob
        subprocess.run(["mount", "-t", "overlay", "-o", options, "overlay", merged], check=True)
        assert (live / "blob").read_bytes() != good.read_bytes()
        before = _fill_btrfs(disk, 40 * MIB)

        done = _restore(box, box.published()[0], tmp_path, "--dry-run")
        assert done.returncode == 1, "dry run said the restore fits: " + done.stderr[-1500:]
        assert "no room to restore" in done.stderr, done.stderr[-1500:]
        assert shutil.disk_usage(disk).free == before
    finally:
        subprocess.run(["umount", merged], check=False)


def test_hard_links_that_would_land_on_two_disks_are_refused_before_anything(tmp_path, mounts):
    """srv/a and srv/cache/b were one file (hard links) when backed up; a disk is mounted
    at srv/cache since (helper-152 F6). ``cp -a`` links b to a and cannot across file
    systems: it stopped half way with "Invalid cross-device link", a's copy written and
    b's not. Now the check refuses before anything is kept or replaced, naming both."""
    big = mounts("big", "256m")
    live = big / "srv"
    (live / "cache").mkdir(parents=True)
    (live / "a").write_bytes(b"one file, two names\n")
    os.link(live / "a", live / "cache" / "b")
    box = _service(tmp_path, [live])
    (archive,) = box.published()
    (live / "a").write_bytes(b"damaged\n")
    (live / "cache" / "b").unlink()
    small = mounts("big/srv/cache", "64m")

    done = _restore(box, archive, tmp_path)
    assert done.returncode == 1, done.stderr[-2000:]
    assert "a and cache/b are one file in the snapshot (hard links)" in done.stderr
    assert f"({big / 'srv'} and {small})" in done.stderr, done.stderr[-2000:]
    assert "Invalid cross-device link" not in done.stderr
    assert (live / "a").read_bytes() == b"damaged\n", "nothing replaced"
    assert list(small.iterdir()) == []

    whole = _restore(box, archive, tmp_path, "--target", str(tmp_path / "elsewhere"))
    assert whole.returncode == 0, whole.stderr[-2000:]
    copied = tmp_path / "elsewhere" / str(live).lstrip("/")
    assert os.stat(copied / "a").st_ino == os.stat(copied / "cache" / "b").st_ino


def test_hard_links_where_a_file_is_mounted_now_are_refused_before_anything(tmp_path, mounts):
    """srv/a and srv/b were one file; a file of another disk is bind-mounted at srv/a
    since (a container's way). The check looked at directories mounted below only, and
    ``cp -a`` wrote b, then failed ("cannot create hard link ... Device or resource
    busy"), b replaced and a not (helper-154 F5). Now refused before anything."""
    big = mounts("big", "64m")
    live = big / "srv"
    live.mkdir()
    (live / "a").write_bytes(b"one file, two names\n")
    os.link(live / "a", live / "b")
    box = _service(tmp_path, [live])
    (archive,) = box.published()
    os.unlink(live / "b")
    (live / "a").write_bytes(b"damaged a\n")
    (live / "b").write_bytes(b"damaged b\n")
    other = mounts("other", "16m")
    (other / "file").write_bytes(b"the mounted file\n")
    mounts.bind(other / "file", live / "a")

    done = _restore(box, archive, tmp_path)
    assert done.returncode == 1, done.stderr[-2000:]
    assert "are one file in the snapshot (hard links)" in done.stderr, done.stderr[-2000:]
    assert (live / "b").read_bytes() == b"damaged b\n", "nothing replaced"
    assert (other / "file").read_bytes() == b"the mounted file\n"
