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
