"""The client's scratch directories: named for their process, and the ones a killed
command left removed by the next, and nothing else (pullback.common.scratch)."""

from __future__ import annotations

import logging
import os
import secrets
import subprocess
import sys
from pathlib import Path

import pytest

from pullback.common import scratch
from tests.helpers.files import as_nobody, open_to_others


def gone_pid() -> int:
    """The number of a process that has ended."""
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def stale(where: Path, kind: str = "cred", pid: int | None = None) -> Path:
    """A scratch directory as a killed command leaves it: a password in it."""
    path = where / f"pullback-{kind}-{pid or gone_pid()}-{secrets.token_hex(4)}_"
    path.mkdir(mode=0o700)
    (path / "my.cnf").write_text("[client]\npassword=s3cret\n")
    (path / "deeper" / "still").mkdir(parents=True)
    return path


@pytest.fixture
def where(tmp_path: Path) -> Path:
    place = tmp_path / "tmp"
    place.mkdir()
    place.chmod(0o1777)  # as /tmp is
    return place


def test_a_scratch_directory_names_its_process_and_is_private(where, monkeypatch):
    monkeypatch.setenv("TMPDIR", str(where))
    monkeypatch.setattr("tempfile.tempdir", None)
    with scratch.directory("restore") as made:
        assert made.parent == where
        assert made.name.startswith(f"pullback-restore-{os.getpid()}-")
        assert made.stat().st_mode & 0o777 == 0o700
        (made / "a" / "b").mkdir(parents=True)
    assert not made.exists()
    with pytest.raises(ValueError):
        scratch.make("other")


def test_the_directories_of_gone_processes_are_removed_and_said(where, caplog):
    left = [stale(where, kind) for kind in scratch.KINDS]
    with caplog.at_level(logging.INFO):
        swept = scratch.sweep(where)
    assert swept.removed == 4 and not any(p.exists() for p in left)
    said = [r.getMessage() for r in caplog.records]
    assert said == [f"removed 4 stale scratch directories of killed pullback commands from {where}"]


def test_what_is_not_a_stale_scratch_directory_of_ours_stays(where, tmp_path, caplog):
    live = subprocess.Popen(["sleep", "60"])
    try:
        kept = [
            stale(where, pid=live.pid),  # its process runs
            stale(where, pid=os.getpid()),
            stale(where, pid=1),  # a pid in use by anything keeps it
        ]
        theirs = stale(where, "check")
        os.chown(theirs, 65534, 65534)  # another user's
        target = tmp_path / "elsewhere"
        target.mkdir()
        (target / "precious").write_text("x")
        link = where / f"pullback-restore-{gone_pid()}-linkxx12"
        link.symlink_to(target)  # named like one, a link: never followed
        a_file = where / f"pullback-sqlite-{gone_pid()}-filexx12"
        a_file.write_text("not a directory")
        others = [where / f"pullback-cred-{gone_pid()}", where / "pullback-cred-abcdefgh"]
        for other in others:  # other names (an older client's among them)
            other.mkdir()
        removed = stale(where)
        with caplog.at_level(logging.INFO):
            swept = scratch.sweep(where)
        assert swept.removed == 1 and not removed.exists()
        assert all(p.exists() for p in [*kept, theirs, link, a_file, *others])
        assert (target / "precious").read_text() == "x" and link.is_symlink()
    finally:
        live.kill()
        live.wait()


def test_the_sweep_looks_at_a_bounded_number_of_entries(where, caplog):
    for n in range(30):
        (where / f"f{n}").write_text("")
    left = [stale(where) for _ in range(3)]
    with caplog.at_level(logging.INFO):
        swept = scratch.sweep(where, most=10)
    assert swept.looked == 10 and swept.stopped_early
    assert swept.removed == sum(not p.exists() for p in left)
    if swept.removed:
        assert "(of its first 10 entries only)" in caplog.text
    else:  # nothing removed is not said (a crowded /tmp made every command say so)
        assert "stale scratch" not in caplog.text
    everything = scratch.sweep(where, most=scratch.MOST_LOOKED)
    assert everything.looked < scratch.MOST_LOOKED and not everything.stopped_early
    assert not any(p.exists() for p in left)
    assert scratch.MOST_LOOKED == 10_000


def test_a_directory_others_may_rename_in_is_left_alone(where, caplog):
    where.chmod(0o777)  # writable by all, not sticky: an entry may be swapped meanwhile
    left = stale(where)
    swept = scratch.sweep(where)
    assert swept == scratch.Swept() and left.exists()
    assert "others may write there" in caplog.text


def test_the_sweep_never_fails_the_command(tmp_path, caplog):
    swept = scratch.sweep(tmp_path / "missing")
    assert swept == scratch.Swept()
    assert "stale scratch directories not looked for" in caplog.text


def test_nothing_removed_is_not_said(where, caplog):
    """helper-142: with more entries than the bound and nothing stale, every command
    said 'removed 0 stale scratch directories ...'."""
    for n in range(30):
        (where / f"f{n}").write_text("")
    with caplog.at_level(logging.INFO):
        swept = scratch.sweep(where, most=10)
    assert swept.stopped_early and swept.removed == 0
    assert caplog.text == ""


def test_a_temporary_directory_of_another_user_is_not_swept(where, caplog):
    """The owner half of the refusal (a 0700 directory of another user, who may rename
    its entries; helper-142)."""
    left = stale(where)
    where.chmod(0o700)
    os.chown(where, 65534, 65534)
    swept = scratch.sweep(where)
    assert swept == scratch.Swept() and left.exists()
    assert "others may write there" in caplog.text


@pytest.mark.skipif(os.geteuid() != 0, reason="sweeps as nobody")
def test_another_users_running_process_keeps_its_directory(where):
    """EPERM from os.kill (a process of another user) counts as running; root never sees
    EPERM, so only a sweep as an unprivileged user shows it (helper-142)."""
    subprocess.run(["chown", "nobody", str(where)], check=True)
    live = subprocess.Popen(["sleep", "60"])  # root's
    try:
        open_to_others(where)
        theirs = where / f"pullback-cred-{live.pid}-abcdefgh"
        subprocess.run(["runuser", "-u", "nobody", "--", "mkdir", str(theirs)], check=True)
        done = as_nobody(
            f"from pullback.common import scratch; print(scratch.sweep({str(where)!r}))"
        )
        assert "looked=1" in done.stdout, done.stdout + done.stderr
        assert theirs.is_dir()
    finally:
        live.kill()
        live.wait()


def _can_unshare() -> bool:
    if os.geteuid() != 0:
        return False
    try:
        argv = ["unshare", "--pid", "--fork", "--mount-proc", "true"]
        return subprocess.run(argv, capture_output=True, timeout=30).returncode == 0
    except OSError:
        return False


@pytest.mark.skipif(not _can_unshare(), reason="needs root and unshare --pid")
def test_a_live_commands_directory_survives_a_sweep_from_another_pid_namespace(where):
    """A command in another PID namespace sharing the temporary directory (a container,
    unshare) cannot see the maker's process: its lock keeps the directory; once the
    maker is killed, the same sweep removes it (helper-142: a restore's unpacked archive
    was removed mid-restore)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "TMPDIR": str(where)}
    maker = subprocess.Popen(
        [sys.executable, "-c", MAKER],
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        made = Path(maker.stdout.readline().strip())
        assert made.parent == where and (made / "archive").is_file()
        sweep = f"from pullback.common import scratch; print(scratch.sweep({str(where)!r}))"
        argv = ["unshare", "--pid", "--fork", "--mount-proc", sys.executable, "-c", sweep]
        done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60)
        assert "looked=1" in done.stdout and "removed=0" in done.stdout, done.stdout + done.stderr
        assert (made / "archive").read_text() == "being restored"
    finally:
        maker.kill()
        maker.wait()
    again = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60)
    assert "removed=1" in again.stdout, again.stdout + again.stderr
    assert not made.exists()


MAKER = """\
import time
from pullback.common import scratch
made = scratch.make("restore")
(made / "archive").write_text("being restored")
print(made, flush=True)
time.sleep(120)
"""
