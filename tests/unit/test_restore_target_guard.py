"""server/restore.py: a --target another user could swap for a link to / is refused,
and an undo removes nothing from a directory that is no longer the target (helper-132)."""

import logging
import os
import stat
from pathlib import Path

import pytest

from pullback.common.errors import PullbackError, UsageError
from pullback.common.log import PrefixAdapter
from pullback.server.restore import (
    Before,
    RestoreRequest,
    _make_private,
    _refuse_movable,
    _refuse_target,
    _undo,
)


def test_a_target_below_a_directory_another_user_may_change_is_refused(tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)  # writable by others, no sticky bit
    with pytest.raises(UsageError, match="another user may change"):
        _refuse_movable(shared / "restore")
    shared.chmod(0o1777)  # as /tmp: others cannot move root's entries
    _refuse_movable(shared / "restore")
    os.chown(shared, 65534, 65534)
    with pytest.raises(UsageError, match="another user may change"):
        _refuse_movable(shared / "restore")


def test_an_undo_removes_nothing_once_the_target_was_swapped(tmp_path):
    target = tmp_path / "target"
    target.mkdir()
    (target / "kept").write_text("there before")
    before = Before.of(target, [], False)
    (target / "written").write_text("by the restore")
    target.rename(tmp_path / "moved")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "precious").write_text("not the restore's")
    target.symlink_to(elsewhere)

    with pytest.raises(PullbackError, match="no longer the directory"):
        _undo(before, None)

    assert (elsewhere / "precious").exists()
    assert (tmp_path / "moved" / "written").exists()  # (said, not removed elsewhere)


def test_an_undo_of_the_same_target_removes_what_the_restore_wrote(tmp_path):
    target = tmp_path / "target"
    target.mkdir()
    (target / "kept").write_text("there before")
    before = Before.of(target, [], False)
    (target / "written").write_text("by the restore")
    _undo(before, None)
    assert sorted(p.name for p in Path(target).iterdir()) == ["kept"]


def test_a_target_of_another_user_or_a_link_is_refused(tmp_path):
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    os.chown(theirs, 65534, 65534)
    with pytest.raises(UsageError, match="belongs to user 65534"):
        _refuse_movable(theirs)
    link = tmp_path / "link"
    link.symlink_to(tmp_path)
    with pytest.raises(UsageError, match="is a symbolic link"):
        _refuse_target(RestoreRequest("web1", link, force=True))


def test_a_made_target_is_private_and_an_existing_one_keeps_its_special_bits(tmp_path, caplog):
    made = tmp_path / "a" / "made"
    _make_private(made, PrefixAdapter(logging.getLogger("t"), "web1"))
    assert stat.S_IMODE(made.stat().st_mode) == 0o700
    assert not caplog.records

    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o1777)
    with caplog.at_level(logging.WARNING):
        _make_private(shared, PrefixAdapter(logging.getLogger("t"), "web1"))
    assert stat.S_IMODE(shared.stat().st_mode) == 0o1700  # the sticky bit kept
    (record,) = caplog.records
    assert "was mode 1777; it is now 1700" in record.getMessage()
    assert "chmod 1777" in record.getMessage()


def test_a_target_others_may_write_or_reach_through_their_link_is_refused(tmp_path):
    """helper-137: a root-owned target others may write (0777, 1777) was made private
    only after the repository was opened: long enough to plant ``services`` as a link;
    and a target below another user's symlink could be re-pointed during the restore."""
    shared = tmp_path / "shared"
    shared.mkdir()
    for mode in (0o777, 0o1777, 0o2770):
        shared.chmod(mode)
        with pytest.raises(UsageError, match="may be written by other users"):
            _refuse_movable(shared)
    shared.chmod(0o755)
    _refuse_movable(shared)  # root's, only root writes: fine

    public = tmp_path / "public"
    public.mkdir()
    public.chmod(0o1777)
    real = tmp_path / "real"
    real.mkdir()
    link = public / "userlink"
    link.symlink_to(real)
    os.chown(link, 65534, 65534, follow_symlinks=False)
    with pytest.raises(UsageError, match="a symbolic link another user may change"):
        _refuse_movable(link / "t")
