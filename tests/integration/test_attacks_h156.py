"""helper-156's outside attack on 6f8932b: overlapping paths of a files restore,
relink, and archives the server refused; each test failed while the defect it names
existed (F6, a user's hole-only file larger than max_unpacked_size, is left open: see
the notes of issue 18)."""

from __future__ import annotations

import logging
import os
import shutil
import time
from pathlib import Path

import pytest

from pullback.plugins import relink
from pullback.plugins.copy_room import Links
from tests.helpers.archives import unpacked
from tests.helpers.client import ClientSandbox

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="owners need root, mounts")


def backed_up(tmp_path: Path, paths: list[str], extra: str = "") -> tuple[ClientSandbox, Path]:
    box = ClientSandbox(tmp_path / "client")
    listed = ", ".join(f'"{p}"' for p in paths)
    box.add_service("app", f"service: {{name: app}}\nfiles: {{paths: [{listed}]{extra}}}\n")
    made = box.cli("run", timeout=1200)
    assert made.returncode == 0, made.stderr[-3000:]
    (archive,) = box.published()
    return box, archive


def restore(box: ClientSandbox, archive: Path, *args: str):
    return box.cli("restore", "--service", "app", "--from", str(archive), *args, timeout=1200)


# -- F1: plain directories count as 64 MiB of "extended attributes" -----------------------


def test_many_plain_directories_do_not_make_the_archive_refused(tmp_path, tmpfs):
    """150,000 empty directories, no xattrs, no ACLs: the client says ok, the server's
    unpacking refuses the whole archive ("more than 64.0 MiB of extended attributes and
    ACLs"), though security.md bounds members at max_entries (10,000,000)."""
    mnt = tmpfs(tmp_path / "mnt", "size=512m,nr_inodes=1000000")
    data = mnt / "data"
    data.mkdir()
    for i in range(1500):
        d = data / f"d{i:05d}"
        d.mkdir()
        for j in range(99):
            (d / f"s{j:02d}").mkdir()
    box = ClientSandbox(mnt / "client")
    box.add_service("app", f"service: {{name: app}}\nfiles: {{paths: [{data}]}}\n")
    made = box.cli("run", timeout=1200)
    assert made.returncode == 0, made.stderr[-2000:]
    (archive,) = box.published()
    staging = unpacked(archive, mnt / "staging")
    assert (staging / "services/app/files" / str(data).lstrip("/") / "d01499/s98").is_dir()


# -- F2: relink reads a sparse file's holes, byte by byte ---------------------------------------


def test_relink_of_a_sparse_file_does_not_read_its_holes(tmp_path, monkeypatch):
    """A 4 GiB disk image holding nothing (all hole) linked between two listed paths:
    cp --sparse=always writes it in no time, the before-restore compare reads only data
    (docs/restore.md: "a 16 GiB disk image holding 1 MiB costs 2 MiB of reading, not
    32 GiB (half a minute)"), but relink._same_bytes preads both files whole: 8 GiB of
    zeros (1 to 16 s here by the page cache's mood; 8 GiB took 31 s; ~1 h per TiB), once
    per later name. Counted in bytes read, not seconds, so the test does not flake."""
    snap, live = tmp_path / "snap", tmp_path / "live"
    for root in (snap, live):
        (root / "a").mkdir(parents=True)
        (root / "b").mkdir()
    size = 4 << 30
    with open(snap / "a/img", "wb") as handle:
        handle.truncate(size)
    os.link(snap / "a/img", snap / "b/img")
    st = os.stat(snap / "a/img")
    for side in ("a", "b"):
        with open(live / side / "img", "wb") as handle:
            handle.truncate(size)
        os.utime(live / side / "img", ns=(st.st_atime_ns, st.st_mtime_ns))
    links = Links()
    links.again.append(((0, ("img",)), (1, ("img",))))
    read = [0]
    real_pread = os.pread

    def counting_pread(fd, n, offset):
        data = real_pread(fd, n, offset)
        read[0] += len(data)
        return data

    monkeypatch.setattr(relink.os, "pread", counting_pread)
    started = time.monotonic()
    linked = relink.link_again(
        logging.getLogger("pullback.test.h156"),
        links,
        [live / "a", live / "b"],
        [snap / "a", snap / "b"],
    )
    took = time.monotonic() - started
    monkeypatch.undo()
    assert linked == 1
    assert read[0] < 16 << 20, f"{read[0] >> 20} MiB of holes read in {took:.1f}s"


# -- F3: a path the backup skipped with only a warning fails every restore of the service ------


def _long_leaf(base: Path) -> str:
    parent = str(base)
    while len(parent) < 4080:
        parent += "/" + "n" * max(1, min(200, 4080 - len(parent) - 1))
    os.makedirs(parent)
    Path(parent + "/f").write_text("x\n")
    return parent + "/f"


def _user_link_path(base: Path) -> str:
    """<base>/u/link/data, u and link a local user's (link -> <base>/real)."""
    (base / "real/data").mkdir(parents=True)
    (base / "real/data/x").write_text("x\n")
    (base / "u").mkdir()
    os.chown(base / "u", 65534, 65534)
    os.symlink(base / "real", base / "u/link")
    os.lchown(base / "u/link", 65534, 65534)
    return str(base / "u/link/data")


@pytest.mark.parametrize("skipped", [_long_leaf, _user_link_path])
def test_a_path_the_backup_skips_whole_fails_its_task(tmp_path, skipped):
    """The backup archived <d>/ok, skipped the other listed path with a warning (too
    long for the archive / below another user's symlink) and reported the task "ok";
    every later restore of the service then stopped at "... is not in the restored
    snapshot". The run now fails the task naming the path, as it does for a missing
    one: the monitoring sees it the night it happens."""
    base = tmp_path / "d"
    base.mkdir()
    (base / "ok").write_text("ok\n")
    other = skipped(base)
    try:
        box = ClientSandbox(tmp_path / "client")
        box.add_service(
            "app", f'service: {{name: app}}\nfiles: {{paths: ["{base / "ok"}", "{other}"]}}\n'
        )
        made = box.cli("run", timeout=1200)
        assert made.returncode == 1, made.stderr[-3000:]
        said = f"1 listed path not archived (the warnings say why): {other}"
        assert said[:150] in made.stderr, made.stderr[-3000:]  # (a long path is cut)
        assert box.published() == []  # (its one service failed: nothing to publish)
    finally:
        shutil.rmtree(base, ignore_errors=True)


# -- F4: a local user's extended attributes make the server refuse the host's archive -----------


def test_a_users_extended_attributes_do_not_make_the_archive_refused(tmp_path, tmpfs):
    """A local user sets 20 user.* attributes of 60 KiB on a file of theirs (allowed on
    tmpfs, XFS, btrfs; XFS is RHEL's default for /home). The writer puts them all in one
    PAX header of 1.2 MiB; every reader refuses a PAX header over MAX_META (1 MiB) ("an
    extended header of ... bytes is not plausible"): the whole archive, every service
    of the host, night after night, while the client says ok."""
    mnt = tmpfs(tmp_path / "mnt", "size=64m")
    home = mnt / "home"
    home.mkdir()
    (home / "good").write_text("precious\n")
    mine = home / "mine"
    mine.write_text("x\n")
    os.chown(mine, 65534, 65534)
    for n in range(20):
        os.setxattr(mine, f"user.n{n:02d}", b"v" * 60_000)  # (what uid 65534 may do)
    box = ClientSandbox(mnt / "client")
    box.add_service("app", f"service: {{name: app}}\nfiles: {{paths: [{home}]}}\n")
    made = box.cli("run")
    assert made.returncode == 0, made.stderr[-2000:]
    assert "7 extended attribute(s) past the first 768 KiB not archived" in made.stderr
    (archive,) = box.published()
    staging = unpacked(archive, mnt / "staging")
    kept = staging / "services/app/files" / str(mine).lstrip("/")
    assert len(os.listxattr(kept)) == 13 and os.getxattr(kept, "user.n00") == b"v" * 60_000
    assert (staging / "services/app/files" / str(home / "good").lstrip("/")).exists()


# -- F5: the dry run promises the data behind a listed "dir/" symlink ----------------------------


def test_dry_run_of_a_listed_symlink_with_a_slash_says_what_the_run_does(tmp_path):
    """paths: ["<srv>/data/"], <srv>/data -> <disk>/data holding a 100 KB file. The run
    archives the link alone and warns (helper-155 F9); `run --dry-run` says "would archive
    <srv>/data/: 1 files, 97.7 KiB" and no warning."""
    real = tmp_path / "disk" / "data"
    real.mkdir(parents=True)
    (real / "db").write_bytes(os.urandom(100_000))
    srv = tmp_path / "srv"
    srv.mkdir()
    os.symlink(real, srv / "data")
    box = ClientSandbox(tmp_path / "client")
    box.add_service("app", f'service: {{name: app}}\nfiles: {{paths: ["{srv}/data/"]}}\n')
    dry = box.cli("run", "--dry-run")
    said = dry.stdout + dry.stderr
    assert dry.returncode == 0, said[-1500:]
    assert "1 files, 97.7 KiB" not in said, said[-800:]
    assert "is a symlink to a directory" in said, said[-800:]
