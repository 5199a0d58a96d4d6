"""borg says "Failed to create/acquire the lock" both when a live process holds the
lock past the wait and when it cannot write the lock at all (a read-only or full disk).
Only the first is a locked repository; the second is said in borg's own words (an
outside test was sent looking for a process that did not exist)."""

from __future__ import annotations

import os
import signal
import subprocess
import time

import pytest

from pullback.common.log import get_logger
from pullback.common.runner import Runner
from pullback.server.backends import BackendError, RepositoryLocked, make_backend
from tests.helpers.status_servers import one_host_backend, one_host_config

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="bind mounts need root"),
]


@pytest.fixture
def borg(tmp_path):
    backend = one_host_backend(tmp_path, "borg")
    assert backend.snapshots() == []
    return backend


def test_a_live_lock_is_a_locked_repository(borg, tmp_path):
    env = {**os.environ, **borg.env()}
    said = tmp_path / "with-lock.err"
    with said.open("wb") as err:
        holder = subprocess.Popen(
            ["borg", "with-lock", borg.env()["BORG_REPO"], "sleep", "60"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=err,
            start_new_session=True,  # its sleep goes with it: os.killpg below
        )
    try:
        # borg takes the lock as it starts; a loaded machine may take seconds to start it
        lock = os.path.join(borg.env()["BORG_REPO"], "lock.exclusive")
        deadline = time.monotonic() + 60
        while not os.path.isdir(lock) and time.monotonic() < deadline:
            ended = holder.poll()
            assert ended is None, f"borg with-lock ended ({ended}): {said.read_text()[-2000:]}"
            time.sleep(0.1)
        assert os.path.isdir(lock), "borg with-lock did not take the lock in 60 s"
        # (the holder as the repository's lock.roster names it, as restic's words do)
        words = rf"is locked by a live process \(pid {holder.pid} on [^)]+\); waited 1s"
        with pytest.raises(RepositoryLocked, match=words):
            borg.snapshots()
    finally:
        os.killpg(holder.pid, signal.SIGKILL)
        holder.wait()


def test_a_read_only_repository_is_said_in_borgs_words_not_as_a_lock(borg):
    repo = borg.env()["BORG_REPO"]
    subprocess.run(["mount", "--bind", repo, repo], check=True)
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", repo], check=True)
        started = time.monotonic()
        with pytest.raises(BackendError) as raised:
            borg.snapshots()
        assert not isinstance(raised.value, RepositoryLocked), raised.value
        said = str(raised.value)
        assert said.startswith("borg failed on ") and "(timeout)" not in said
        assert "Failed to create/acquire the lock" in said and "Read-only file system" in said
        assert "borg.locking" not in said and "SSH_ORIGINAL_COMMAND" not in said
        assert time.monotonic() - started < 30
    finally:
        subprocess.run(["umount", repo], check=True)
    assert borg.snapshots() == []  # writable again: nothing was harmed


@pytest.mark.parametrize("made_by", ["restic", "borg"])
def test_a_repository_of_the_other_tool_is_named_as_such(tmp_path, made_by):
    """An outside test switched backend.type to borg over a restic repository: "borg
    failed on ...: UnicodeDecodeError: 'utf-8' codec can't decode byte 0x80"."""
    runner = Runner(get_logger("t"))
    made = one_host_config(tmp_path, made_by)
    first = make_backend(made.backend, made.host("web1"), made.state_dir, runner, 1)
    first.prepare(create=True)
    other = "borg" if made_by == "restic" else "restic"
    config = one_host_config(tmp_path, other)
    backend = make_backend(config.backend, config.host("web1"), config.state_dir, runner, 1)
    with pytest.raises(BackendError) as raised:
        backend.snapshots()
    said = str(raised.value)
    assert f"holds a {made_by} repository, not a {other} one: is backend.type" in said, said
    assert first.snapshots() == []  # nothing was harmed
