"""Locks: busy while the holder lives, free (with a warning) once it is dead."""

from __future__ import annotations

import logging
import signal
import subprocess
import sys
import time

import pytest

from pullback.common.errors import LockBusy
from pullback.common.locks import FileLock, lock_status

HOLD = """
import sys, time
from pullback.common.locks import FileLock
FileLock(sys.argv[1], purpose="test holder").acquire()
print("locked", flush=True)
time.sleep(60)
"""


@pytest.fixture
def holder(tmp_path):
    path = tmp_path / "x.lock"
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(path)], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout.readline().strip() == "locked"
    yield path, proc
    proc.kill()
    proc.wait()


def test_busy_while_a_live_process_holds_it(holder):
    path, proc = holder
    with pytest.raises(LockBusy) as info:
        FileLock(path).acquire()
    assert f"pid {proc.pid}" in str(info.value) and "(test holder)" in str(info.value)
    assert info.value.exit_code == 75
    owner = lock_status(path)
    assert owner is not None and owner.pid == proc.pid


def test_wait_gives_up_after_the_timeout(holder):
    path, _ = holder
    started = time.monotonic()
    with pytest.raises(LockBusy):
        FileLock(path).acquire(wait=0.5)
    assert 0.4 < time.monotonic() - started < 5


def test_dead_owner_is_stale_and_broken_with_a_warning(holder, caplog):
    path, proc = holder
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert lock_status(path) is None
    caplog.set_level(logging.WARNING)
    with FileLock(path, purpose="next") as lock:
        assert lock.held
        assert lock_status(path).purpose == "next"
    assert f"breaking stale lock {path}: its owner is gone (pid {proc.pid}" in caplog.text
    assert lock_status(path) is None


def test_released_lock_leaves_no_owner(tmp_path, caplog):
    path = tmp_path / "y.lock"
    with FileLock(path):
        pass
    caplog.set_level(logging.WARNING)
    with FileLock(path):
        pass
    assert "stale" not in caplog.text
    assert lock_status(tmp_path / "never-created.lock") is None


def test_a_lock_is_its_owners_alone_and_never_opened_through_a_link(tmp_path):
    import os

    old = os.umask(0o000)
    try:
        with FileLock(tmp_path / "g.lock", purpose="publishing"):
            # who holds it is public; the lock itself is not (whoever opens it could hold it)
            assert (tmp_path / "g.lock-owner").stat().st_mode & 0o777 == 0o644
            assert lock_status(tmp_path / "g.lock").purpose == "publishing"
    finally:
        os.umask(old)
    assert (tmp_path / "g.lock").stat().st_mode & 0o777 == 0o600
    assert not (tmp_path / "g.lock-owner").exists()
    assert lock_status(tmp_path / "g.lock") is None
    victim = tmp_path / "victim"
    victim.write_text("precious")
    os.symlink(victim, tmp_path / "planted.lock")
    with pytest.raises(OSError, match="Too many levels of symbolic links"):
        FileLock(tmp_path / "planted.lock").acquire()
    assert victim.read_text() == "precious" and victim.stat().st_mode & 0o777 == 0o644
