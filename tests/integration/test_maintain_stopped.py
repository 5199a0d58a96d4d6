"""A maintenance stopped after its forget (a SIGTERM during forget, prune or borg's delete)
leaves the ransomware guard a record the next maintenance reads right: the snapshots
that forget removed are not taken for snapshots deleted behind its back (before, the next
maintain held forget with a tamper alarm that only ``release`` ended), and a snapshot
deleted by hand after the stop still is. Real restic and borg; the tool is wrapped only
to wait after its work, so the signal lands after it."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers.fleet import Fleet

pytestmark = pytest.mark.integration

ALARM = "behind this machine's back"


def waiting_after(tool: str, command: str, bin_dir: Path, mark: Path) -> dict:
    """An environment whose ``tool`` runs the real one, then, after ``command``, marks
    ``mark`` and sleeps (the signal's moment)."""
    real = shutil.which(tool)
    bin_dir.mkdir()
    wrapper = bin_dir / tool
    wrapper.write_text(
        f'#!/bin/sh\n"{real}" "$@"; rc=$?\n'
        'case " $* " in *" --dry-run "*) exit $rc ;; esac\n'  # (restic's plan first)
        f'for a in "$@"; do [ "$a" = {command} ] && touch {mark} && sleep 60; done\n'
        "exit $rc\n"
    )
    wrapper.chmod(0o755)
    return {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}


def stopped_maintain(fleet: Fleet, env: dict, mark: Path) -> subprocess.CompletedProcess:
    argv = [sys.executable, "-m", "pullback.server.cli", "--config", str(fleet.config)]
    proc = subprocess.Popen(
        [*argv, "maintain", "--no-verify"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 120
    while not mark.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    assert mark.exists(), proc.communicate(timeout=60)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def three_days(fleet: Fleet) -> None:
    """Three snapshots of web1, maintained once after the first (the guard's record)."""
    web = fleet.hosts["web1"]
    for day in range(3):
        web.make_archive({"a.txt": f"day {day}".encode() * 100})
        pulled = fleet.server("pull")
        assert pulled.returncode == 0, pulled.stdout + pulled.stderr
        if day == 0:
            first = fleet.server("maintain", "--no-verify")
            assert first.returncode == 0, first.stdout + first.stderr


@pytest.mark.parametrize(
    "backend, commands",
    [("restic", ("prune", "forget")), ("borg", ("delete",))],
    ids=["restic-prune-then-forget", "borg-delete"],
)
def test_a_maintain_stopped_after_forget_raises_no_tamper_alarm(tmp_path, backend, commands):
    """Each stop in turn on one fleet: a stopped maintain then a clean one leave web1 with
    one snapshot and the guard's record of it, so three more days are again three
    snapshots, maintained once after the first (restic's prune, then its forget)."""
    fleet = Fleet(tmp_path / "fleet", backend=backend)
    try:
        fleet.add_host("web1")
        fleet.write_config(retention={"keep_last": 1})
        for command in commands:
            three_days(fleet)
            stopped_then_maintained(fleet, tmp_path / command, backend, command)
    finally:
        fleet.stop()


def stopped_then_maintained(fleet: Fleet, scratch: Path, backend: str, command: str) -> None:
    scratch.mkdir()
    mark = scratch / "reached"
    env = waiting_after(backend, command, scratch / "bin", mark)
    stopped = stopped_maintain(fleet, env, mark)
    assert stopped.returncode == 143, stopped.stdout + stopped.stderr
    assert len(fleet.snapshots("web1")) == 1  # forget had removed the two older ones
    again = fleet.server("maintain", "--no-verify")
    said = again.stdout + again.stderr
    assert again.returncode == 0, said
    assert ALARM not in said
    if command == "forget":
        deleted_by_hand_is_still_caught(fleet)


def deleted_by_hand_is_still_caught(fleet: Fleet) -> None:
    """The record left by the stopped run did not blind the guard: a snapshot deleted
    by hand since is named."""
    fleet.hosts["web1"].make_archive({"a.txt": b"day 3" * 100})
    assert fleet.server("pull").returncode == 0
    kept = fleet.snapshots("web1")[0]["short_id"]
    removed = subprocess.run(
        ["restic", "forget", kept], env=fleet.repo_env("web1"), capture_output=True
    )
    assert removed.returncode == 0, removed.stderr
    again = fleet.server("maintain", "--no-verify")
    said = again.stdout + again.stderr
    assert again.returncode == 1, said
    assert ALARM in said and kept in said
