"""fsutil.make_dirs_at: missing directories made by descriptor, never through a symlink
the owner of the directory above swapped in between a mkdir and what follows it."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from pullback.common import fsutil

NOBODY = 65534


def test_missing_directories_take_their_models_metadata(tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    model.chmod(0o2750)
    os.chown(model, NOBODY, NOBODY)
    os.setxattr(model, "user.kind", b"model")
    os.utime(model, ns=(1_000_000_000, 2_000_000_000))
    wanted = tmp_path / "live/a/b"

    fd = fsutil.make_dirs_at(wanted, lambda d: model if d.name == "a" else None)
    os.close(fd)

    a, b = os.stat(tmp_path / "live/a"), os.stat(wanted)
    assert (a.st_mode & 0o7777, a.st_uid, a.st_gid) == (0o2750, NOBODY, NOBODY)
    assert os.getxattr(tmp_path / "live/a", "user.kind") == b"model"
    assert (b.st_mode & 0o7777, b.st_uid) == (0o755, 0)  # no model: root's 0755
    # a's time is the model's until something is made in it (b was, after it)
    assert os.stat(tmp_path / "live").st_mode & 0o7777 == 0o755


def test_an_existing_directory_is_opened_and_left_alone(tmp_path):
    there = tmp_path / "there"
    there.mkdir(mode=0o700)
    os.chown(there, NOBODY, NOBODY)
    fd = fsutil.make_dirs_at(there, lambda d: None)
    try:
        assert os.fstat(fd).st_ino == there.stat().st_ino
    finally:
        os.close(fd)
    assert (there.stat().st_mode & 0o7777, there.stat().st_uid) == (0o700, NOBODY)


def test_a_directory_swapped_for_a_symlink_after_its_mkdir_is_refused(tmp_path, monkeypatch):
    """A forced race (said here): the owner of ``home`` renames the directory root has
    just made and puts a symlink to root's ``outside`` in its place. A chown by name
    after the mkdir (as the files restore made parents until 2026-12-05) would hand
    ``outside`` to the model's owner."""
    home = tmp_path / "home"
    home.mkdir()
    os.chown(home, NOBODY, NOBODY)
    outside = tmp_path / "outside"
    outside.mkdir(mode=0o700)
    model = tmp_path / "model"
    model.mkdir(mode=0o777)
    os.chown(model, NOBODY, NOBODY)
    real_mkdir = os.mkdir

    def mkdir_then_swap(name, mode=0o777, *, dir_fd=None):
        real_mkdir(name, mode, dir_fd=dir_fd)
        os.rename(name, f"{name}.x", src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        os.symlink(outside, name, dir_fd=dir_fd)
        os.chown(name, NOBODY, NOBODY, dir_fd=dir_fd, follow_symlinks=False)

    monkeypatch.setattr(fsutil.os, "mkdir", mkdir_then_swap)
    with pytest.raises(OSError) as caught:
        fsutil.make_dirs_at(home / "app/data", lambda d: model)
    monkeypatch.undo()
    assert caught.value.errno in (errno.ELOOP, errno.ENOTDIR)  # (O_DIRECTORY: ENOTDIR)
    st = outside.stat()
    assert (st.st_mode & 0o7777, st.st_uid) == (0o700, 0)
    assert not (outside / "data").exists()


def test_a_file_on_the_path_is_an_error(tmp_path):
    file = tmp_path / "file"
    file.write_bytes(b"")
    with pytest.raises(OSError):
        fsutil.make_dirs_at(Path(file, "below"))
