"""common.fsutil.open_trusted_file and read_regular(trusted=True): a file root reads in a
directory another user owns (an application's ``.env``) is reached by descriptors from
``/``, a symlink followed only when only root could have made it."""

from __future__ import annotations

import errno
import os

import pytest

from pullback.common.fsutil import MAX_LINKS, open_trusted_file, read_regular, read_regular_stat

NOBODY = 65534


@pytest.fixture
def root_dir(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("needs root: files of another user")
    tmp_path.chmod(0o755)  # (root's, as pytest made it: the links below it are root's own)
    return tmp_path


def test_a_symlink_only_root_could_make_is_followed(root_dir):
    (root_dir / "real.env").write_text("A=1\n")
    os.symlink("real.env", root_dir / ".env")
    data, info = read_regular_stat(root_dir / ".env", 100, trusted=True)
    assert data == b"A=1\n" and info.st_ino == (root_dir / "real.env").stat().st_ino


def test_a_symlink_another_user_made_or_could_swap_is_refused(root_dir):
    (root_dir / "root-only").write_text("secret\n")
    app = root_dir / "app"
    app.mkdir()
    os.symlink(root_dir / "root-only", app / ".env")
    os.chown(app, NOBODY, NOBODY)  # root's link, in a directory nobody's user may write
    with pytest.raises(OSError) as info:
        read_regular(app / ".env", 100, trusted=True)
    assert info.value.errno == errno.ELOOP
    os.chown(app, 0, 0)
    os.chown(app / ".env", NOBODY, NOBODY, follow_symlinks=False)  # the link nobody's
    with pytest.raises(OSError) as info:
        open_trusted_file(app / ".env")
    assert info.value.errno == errno.ELOOP


def test_a_directory_on_the_way_another_user_swapped_is_refused(root_dir):
    (root_dir / "etc").mkdir()
    (root_dir / "etc" / ".env").write_text("secret\n")
    home = root_dir / "home"
    home.mkdir()
    os.chown(home, NOBODY, NOBODY)
    os.symlink(root_dir / "etc", home / "app")
    os.chown(home / "app", NOBODY, NOBODY, follow_symlinks=False)
    with pytest.raises(OSError) as info:
        read_regular(home / "app" / ".env", 100, trusted=True)
    assert info.value.errno == errno.ELOOP


def test_a_loop_of_links_and_a_fifo_are_refused_without_waiting(root_dir):
    os.symlink("b", root_dir / "a")
    os.symlink("a", root_dir / "b")
    with pytest.raises(OSError) as info:
        open_trusted_file(root_dir / "a")
    assert info.value.errno == errno.ELOOP and MAX_LINKS > 2
    os.mkfifo(root_dir / "fifo")
    with pytest.raises(ValueError, match="not a regular file"):
        read_regular(root_dir / "fifo", 100, trusted=True)
