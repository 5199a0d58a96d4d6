"""The README's first command, ``scripts/demo``, as a newcomer runs it: the whole cycle
on this machine (client run, loopback sshd, trust, check, pull, the mail, a restore
checked with sha256sum, a next day's delta) ends with "demo done" and exit 0."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def demo(directory: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(ROOT / "scripts" / "demo")],
        env={**os.environ, "PULLBACK_DEMO_DIR": str(directory)},
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_the_readme_demo_runs_the_whole_cycle(tmp_path):
    result = demo(tmp_path / "demo")
    said = result.stdout + result.stderr
    assert result.returncode == 0, said[-4000:]
    assert result.stdout.rstrip().endswith(f"all in {tmp_path / 'demo'}"), said[-2000:]
    assert "FAILED" not in said, said[-4000:]
    assert "services/notes/command/notes.sql: OK" in said, said[-4000:]
    assert "notes.sql holds 3 rows" in said, said[-4000:]
    assert "Subject:" in said, said[-4000:]  # the summary mail reached the sink
    assert "delta" in said.split("== 8.")[1], said[-2000:]
    assert "2 snapshots" in said.split("== 8.")[1], said[-2000:]
    assert not (tmp_path / "demo" / "sshd.pid").exists() or _dead(tmp_path / "demo" / "sshd.pid")


def _dead(pid_file: Path) -> bool:
    """Whether the demo's sshd is gone (the demo kills what it started on exit)."""
    try:
        os.kill(int(pid_file.read_text()), 0)
    except (ProcessLookupError, ValueError):
        return True
    return False


def test_a_directory_of_other_files_is_refused_and_kept(tmp_path):
    (tmp_path / "mine.txt").write_text("keep me")
    result = demo(tmp_path)
    assert result.returncode == 2, result.stdout[-2000:] + result.stderr[-2000:]
    assert "is not a demo's directory" in result.stderr
    assert (tmp_path / "mine.txt").read_text() == "keep me"
