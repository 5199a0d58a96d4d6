"""helper-99's outside attack: processes killed or stopped at any moment.

A ``pullback-server pull`` stopped by hand (SIGTERM, as ``kill PID``) or killed outright
(SIGKILL of its own process, as ``kill -9 PID`` or the OOM killer) while it stores; a
``maintain``, ``verify`` and ``copy`` stopped while their tool runs; a ``pull`` killed as a
whole (systemd's cgroup kill) in the middle of ``borg create``; a client run stopped or
killed while it packs a delta day. Real restic, borg and sshd (the fleet helper's); a slow
store is a wrapper on PATH that waits before it runs the real tool (a repository that is
slow to open). Oracles: restic and borg themselves, and the processes left in /proc."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers.faults import (
    add_gate,
    alive,
    find_descendant,
    kill_tree,
    stop_while_locked,
    wait_for,
)
from tests.helpers.files import sha256sum_check
from tests.helpers.fleet import Fleet

pytestmark = pytest.mark.integration

REAL = Path(__file__).parent.parent / "helpers" / "bin"


def said(run) -> str:
    return run.stdout + run.stderr


def status_text(fleet: Fleet) -> str | None:
    path = fleet.state / "status.json"
    return path.read_text() if path.exists() else None


def without_guard_record(text: str | None) -> dict | None:
    """status.json without what any write stamps (``updated``) and the guard's record."""
    if text is None:
        return None
    status = json.loads(text)
    status.pop("updated", None)
    for entry in status.get("hosts", {}).values():
        entry.pop("guard_seen", None)
    return status


def slow_tool(tmp_path: Path, tool: str, verb: str, seconds: float) -> tuple[dict, Path]:
    """An environment whose ``tool`` records every verb it is asked for in ``calls`` and,
    for ``verb``, writes its pid to ``pid`` and waits ``seconds`` before running the real
    tool (exec: the pid stays)."""
    bin_dir = tmp_path / f"slow-{tool}"
    bin_dir.mkdir()
    real = REAL / tool if (REAL / tool).exists() else Path("/usr/bin") / tool
    wrapper = bin_dir / tool
    wrapper.write_text(
        "#!/bin/sh\n"
        'for a in "$@"; do case "$a" in -*) ;; *) first="$a"; break;; esac; done\n'
        f'echo "$first" >> {bin_dir}/calls\n'
        f'if [ "$first" = {verb} ]; then echo "$$" >> {bin_dir}/pid; sleep {seconds}; fi\n'
        f'exec {real} "$@"\n'
    )
    wrapper.chmod(0o755)
    return {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}, bin_dir


def server_popen(fleet: Fleet, *args: str, env: dict) -> subprocess.Popen:
    argv = [sys.executable, "-m", "pullback.server.cli", "--config", str(fleet.config), *args]
    return subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )


def started(bin_dir: Path) -> int:
    """The pid of the slow tool, once it waits."""
    pid_file = bin_dir / "pid"
    wait_for(lambda: pid_file.exists() and pid_file.read_text().strip(), 90, "the slow tool")
    return int(pid_file.read_text().split()[0])


def gone(pid: int, within: float) -> bool:
    ends = time.monotonic() + within
    while alive(pid) and time.monotonic() < ends:
        time.sleep(0.1)
    return not alive(pid)


def end(pid: int) -> None:
    """Kill what a test left running (its process group: the wrapper and its sleep)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def two_days(fleet: Fleet):
    web = fleet.add_host("web1")
    fleet.write_config()
    web.make_archive({"day.txt": b"day 1\n"})
    first = fleet.server("pull")
    assert first.returncode == 0, said(first)
    return web


def restic_file(fleet: Fleet, snapshot: str, name: str) -> bytes:
    env = fleet.repo_env("web1")
    listed = subprocess.run(
        ["restic", "ls", "--no-lock", snapshot], env=env, capture_output=True, text=True, check=True
    ).stdout.split()
    (path,) = [p for p in listed if p.endswith("/" + name)]
    return subprocess.run(
        ["restic", "dump", "--no-lock", snapshot, path], env=env, capture_output=True, check=True
    ).stdout


# -- defects ------------------------------------------------------------------------------


def test_sigterm_to_pull_stops_its_store_tool_before_it_exits(fleet, tmp_path):
    web = two_days(fleet)
    web.make_archive({"day.txt": b"day 2\n"})
    env, bin_dir = slow_tool(tmp_path, "restic", "backup", 25)
    proc = server_popen(fleet, "pull", env=env)
    tool = started(bin_dir)
    try:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=90)
        assert proc.returncode == 143, err
        assert "interrupted by SIGTERM" in err, err
        # docs/exit-codes.md: the tool is stopped first (SIGTERM, SIGKILL 5 s later)
        assert gone(tool, 8), "restic backup runs on after pullback-server pull exited 143"
    finally:
        end(tool)


def test_a_store_outliving_its_killed_pull_never_stores_another_days_data(fleet, tmp_path):
    # kill -9 of pullback-server pull's own process (by hand, or the OOM killer): its
    # store tool (own session, no parent-death signal) is not killed with it
    web = two_days(fleet)
    day2 = web.make_archive({"day.txt": b"day 2\n"})
    env, bin_dir = slow_tool(tmp_path, "restic", "backup", 8)
    proc = server_popen(fleet, "pull", env=env)
    tool = started(bin_dir)
    try:
        os.kill(proc.pid, signal.SIGKILL)
        proc.communicate(timeout=60)
        web.make_archive({"day.txt": b"day 3\n"})
        after = fleet.server("pull")  # the next timer tick
        assert after.returncode == 0, said(after)
        assert gone(tool, 60), "the orphaned store never ended"
        stamp2 = day2.name.split("-", 1)[1].split(".")[0]
        tagged = [s for s in fleet.snapshots("web1") if stamp2 in (s.get("tags") or [])]
        for snap in tagged:  # (none at all would be honest: day 2 was never stored)
            held = restic_file(fleet, snap["id"], "day.txt")
            assert held == b"day 2\n", f"snapshot {snap['short_id']} of {stamp2} holds {held!r}"
        fleet.check_repository("web1")
    finally:
        end(tool)


def test_sigterm_to_maintain_starts_nothing_more_and_says_no_failure(fleet, tmp_path):
    web = fleet.add_host("web1")
    fleet.write_config(retention={"keep_last": 1})
    for day in (1, 2):
        web.make_archive({"day.txt": f"day {day}\n".encode()})
        assert fleet.server("pull").returncode == 0
    before = status_text(fleet)
    env, bin_dir = slow_tool(tmp_path, "restic", "prune", 25)
    proc = server_popen(fleet, "maintain", env=env)
    tool = started(bin_dir)
    try:
        time.sleep(0.3)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=90)
        assert proc.returncode == 143, err
        assert gone(tool, 8)
        # only the ransomware guard's record, saved as soon as forget ended (a stop in
        # prune then raises no false tamper alarm: test_maintain_stopped.py)
        assert without_guard_record(status_text(fleet)) == without_guard_record(before)
        calls = (bin_dir / "calls").read_text().split()
        assert calls[-1] == "prune", f"restic started after SIGTERM: {calls}"
        assert "FAILED" not in err and "failed" not in err, err
    finally:
        end(tool)
    again = fleet.server("maintain")
    assert again.returncode == 0, said(again)


# -- promises that held -------------------------------------------------------------------


def test_sigterm_to_verify_or_copy_stops_its_tool_records_nothing_and_the_next_run_works(
    fleet, tmp_path
):
    """verify, then copy, on one fleet (one pull: a stopped run records nothing and the
    next one works, so neither spoils the other's start)."""
    copy_pass = tmp_path / "copy.pass"
    copy_pass.write_text("copy-Own-Password-99\n")
    copy_pass.chmod(0o600)
    web = fleet.add_host("web1")
    fleet.write_config(
        copy={"repository_root": str(tmp_path / "copies"), "password_file": str(copy_pass)}
    )
    web.make_archive({"day.txt": b"day 1\n"})
    assert fleet.server("pull").returncode == 0
    for command in ("verify", "copy"):
        stopped_then_run_again(fleet, tmp_path / command, command)


def stopped_then_run_again(fleet: Fleet, scratch: Path, command: str) -> None:
    scratch.mkdir()
    before = status_text(fleet)
    verb = "restore" if command == "verify" else "copy"
    env, bin_dir = slow_tool(scratch, "restic", verb, 25)
    proc = server_popen(fleet, command, env=env)
    tool = started(bin_dir)
    try:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=90)
        assert proc.returncode == 143, err
        assert "Traceback" not in err
        assert gone(tool, 8), f"restic {verb} runs on after {command} exited"
        assert status_text(fleet) == before, f"a stopped {command} recorded something"
    finally:
        end(tool)
    again = fleet.server(command)
    assert again.returncode == 0, said(again)
    fleet.check_repository("web1")


def test_borg_pull_killed_mid_create_leaves_no_partial_archive_and_recovers(tmp_path):
    fleet = Fleet(tmp_path / "fleet", backend="borg")
    try:
        web = two_days(fleet)
        web.make_archive({"big.bin": os.urandom(60_000_000)})
        repo = fleet.repos / "web1"
        proc = fleet.server_popen("pull")
        stop_while_locked(proc, lambda: (repo / "lock.exclusive").exists(), "borg", "create")
        kill_tree(proc)  # systemd's cgroup kill
        listed = subprocess.run(
            ["borg", "list", "--consider-checkpoints", "--json"],
            env=fleet.repo_env("web1"),
            capture_output=True,
            text=True,
            check=True,
        )
        assert len(json.loads(listed.stdout)["archives"]) == 1, "a partial archive was kept"
        shown = fleet.server("status")
        assert shown.returncode == 1 and "killed while storing" in said(shown), said(shown)
        after = fleet.server("pull")
        assert after.returncode == 0, said(after)
        assert "killed while storing" in said(after)
        names = [a["name"] for a in fleet.snapshots("web1")]
        assert len(names) == 2 == len(set(names)), names
        fleet.check_repository("web1")
        top = fleet.restore("web1", tmp_path / "restored")
        sha256sum_check(top)
    finally:
        fleet.stop()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["TERM", "KILL"])
def test_client_stopped_while_packing_a_delta_day_keeps_the_chain(fleet, tmp_path, sig):
    web = fleet.add_host("web1")
    fleet.write_config()
    web.client.write_config(incremental={"enabled": True, "cache_dir": str(tmp_path / "cache")})
    gate = tmp_path / "gate"
    add_gate(web.client, gate)
    for i in range(20):  # enough unchanged bytes that a day's delta stays small
        (web.data / f"bulk{i}.bin").write_bytes(os.urandom(100_000))
    for day in (1, 2):  # a full archive, then the first delta (the server applies them)
        web.make_archive({"day.txt": f"day {day}\n".encode()})
        assert fleet.server("pull").returncode == 0
    published = web.client.published()
    (web.data / "day.txt").write_bytes(b"day 3\n")
    gate.touch()
    proc = web.client.popen("run")
    wait_for(lambda: find_descendant(proc.pid, "while [ -e"), 60, "the dump")
    if sig == signal.SIGKILL:
        kill_tree(proc)
    else:
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 143, err
        assert "Traceback" not in err
    gate.unlink()
    assert web.client.published() == published, "a stopped run published something"
    time.sleep(1.1)
    run = web.client.cli("run")
    # (a run killed outright told no one: the next reports it, exit 1, its archive made)
    assert run.returncode == (1 if sig == signal.SIGKILL else 0), run.stderr
    assert "delta against" in run.stderr, run.stderr
    assert web.client.leftovers() == []
    pulled = fleet.server("pull")
    assert pulled.returncode == 0, said(pulled)
    assert "a delta" in pulled.stderr and "full" not in pulled.stderr, pulled.stderr
    top = fleet.restore("web1", tmp_path / "restored")
    assert next(top.rglob("day.txt")).read_bytes() == b"day 3\n"
    checked = subprocess.run(
        ["sha256sum", "--strict", "-c", "MANIFEST.sha256"], cwd=top, capture_output=True
    )
    assert checked.returncode == 0
    fleet.check_repository("web1")
