"""The client's scratch directories: named for their process, and the ones a killed
command left removed by the next, and nothing else (pullback.common.scratch)."""

from __future__ import annotations

import logging
import os
import secrets
import subprocess
from pathlib import Path

import pytest

from pullback.common import scratch


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
    assert "(of its first 10 entries only)" in caplog.text
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
