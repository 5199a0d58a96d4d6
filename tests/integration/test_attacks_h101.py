"""helper-101's outside attack on four changes of the day:

1. maintain records the guard's ``guard_seen`` before forget removes anything (as
   forget's own plan says it will leave the snapshots: restic's ``--dry-run``; at first
   pullback's ``retention.select``, which buckets days in UTC where restic uses each
   snapshot's zone) and right after it;
2. ``pull --if-due`` tries a host whose last pull failed again, even when fresh;
3. every tool dies with the thread that started it (PR_SET_PDEATHSIG);
4. after a signal a host's worker thread starts no further tool and records no failure.

Real restic, sshd and PostgreSQL (the fleet helper's and the database helpers'); slow
steps are wrappers on PATH that wait before running the real tool. Oracles: the
repository, status.json, and the processes left in /proc.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers.databases import PG_BIN
from tests.helpers.fleet import Fleet

pytestmark = pytest.mark.integration


def said(run) -> str:
    return run.stdout + run.stderr


def wrapper_env(
    tmp_path: Path, tool: str, word: str, seconds: float, then_real: bool = True
) -> tuple[dict, Path]:
    """An environment whose ``tool`` (found on PATH) touches ``mark`` and waits
    ``seconds`` when any argument contains ``word``, then execs the real one (or, with
    ``then_real`` False, only waits: ``exec sleep``, so a stop kills the waiting)."""
    real = shutil.which(tool)
    assert real
    bin_dir = tmp_path / f"wrap-{tool}"
    bin_dir.mkdir()
    mark = bin_dir / "reached"
    wrapper = bin_dir / tool
    wrapper.write_text(
        "#!/bin/sh\n"
        f'for a in "$@"; do case "$a" in *{word}*) touch {mark}; '
        f"{'' if then_real else 'exec '}sleep {seconds};; esac; done\n"
        f'exec {real} "$@"\n'
    )
    wrapper.chmod(0o755)
    return {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}, mark


def server_popen(fleet: Fleet, *args: str, env: dict) -> subprocess.Popen:
    argv = [sys.executable, "-m", "pullback.server.cli", "--config", str(fleet.config), *args]
    return subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )


def stop_at(proc: subprocess.Popen, mark: Path, timeout: float = 120) -> tuple[int, str]:
    deadline = time.monotonic() + timeout
    while not mark.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    assert mark.exists(), proc.communicate(timeout=60)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    return proc.returncode, out + err


def processes_below(directory: Path) -> list[str]:
    found = subprocess.run(["pgrep", "-af", str(directory)], capture_output=True, text=True)
    return [line for line in found.stdout.splitlines() if "pgrep" not in line]


def kill_postgres_below(directory: Path) -> None:
    """Clean-up of this test: stop a throwaway PostgreSQL the product left running."""
    for data in directory.glob("*/data"):
        if (data / "postmaster.pid").exists():
            subprocess.run(
                [
                    "runuser",
                    "-u",
                    "postgres",
                    "--",
                    str(PG_BIN / "pg_ctl"),
                    "-D",
                    str(data),
                    "-m",
                    "immediate",
                    "-w",
                    "stop",
                ],
                capture_output=True,
            )


# -- 4. after a signal: the clean-up of a throwaway database engine --------------------


def stopped_during_a_proof(
    pg, tmp_path: Path, engines: Path, wait: float
) -> tuple[int, str, float]:
    """A host whose snapshot holds a PostgreSQL dump; ``maintain --verify`` stopped by
    SIGTERM while its drill loads the dump into the throwaway engine (the load is a
    wrapper that waits ``wait`` seconds, then ends well). Returns the exit code, what
    it said and how long it took to end after the signal."""
    pg.sql("CREATE DATABASE shop")
    pg.sql("CREATE TABLE t(id int); INSERT INTO t SELECT generate_series(1, 50)", database="shop")
    fleet = Fleet(tmp_path / "fleet", backend="restic")
    try:
        host = fleet.add_host("web1")
        host.client.add_service(
            "shop",
            f"""\
            service: {{name: shop}}
            postgresql:
              host: {pg.socket}
              port: {pg.port}
              user: postgres
              database: shop
              globals: false
            """,
        )
        assert host.client.cli("run").returncode == 0
        assert fleet.server("pull").returncode == 0
        fleet.write_config(maintenance={"database_proof_dir": str(engines)})
        env, mark = wrapper_env(tmp_path, "setpriv", "pg_restore", wait, then_real=False)
        proc = server_popen(fleet, "-v", "maintain", "--verify", env=env)
        deadline = time.monotonic() + 120
        while not mark.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert mark.exists(), proc.communicate(timeout=60)
        proc.send_signal(signal.SIGTERM)
        sent = time.monotonic()
        out, err = proc.communicate(timeout=wait + 120)
        took = time.monotonic() - sent
        status = json.loads((fleet.state / "status.json").read_text())
        assert status["hosts"]["web1"].get("verify_result") != "failed"  # no failed drill
        return proc.returncode, out + err, took
    finally:
        fleet.stop()


@pytest.fixture
def engines():
    """The drill's engines' directory (reachable by postgres); a PostgreSQL the product
    left running there is stopped afterwards."""
    where = Path(f"/tmp/pullback-h101-engines-{os.getpid()}")
    yield where
    kill_postgres_below(where)
    shutil.rmtree(where, ignore_errors=True)


@pytest.mark.skipif(PG_BIN is None, reason="PostgreSQL is not installed")
def test_a_maintain_stopped_during_a_database_proof_stops_its_throwaway_engine(
    pg, tmp_path, engines
):
    code, words, _ = stopped_during_a_proof(pg, tmp_path, engines, wait=4)
    assert code == 143, words
    time.sleep(1)
    left = processes_below(engines)
    assert left == [], f"left running after the stop: {left}\n{words}"
    assert not list(engines.glob("pullback-proof-*")), words


@pytest.mark.skipif(PG_BIN is None, reason="PostgreSQL is not installed")
def test_a_maintain_stopped_during_a_database_load_ends_promptly(pg, tmp_path, engines):
    code, words, took = stopped_during_a_proof(pg, tmp_path, engines, wait=40)
    assert code == 143, words
    assert took < 20, f"ended {took:.0f}s after SIGTERM\n{words}"


# -- 1. the guard's record saved before forget ------------------------------------------

ALARM = "behind this machine's back"


def after_wrapper(tmp_path: Path, tool: str, verb: str) -> tuple[dict, Path]:
    """An environment whose ``tool`` runs the real one, then, after ``verb``, touches
    ``mark`` and waits (the moment of the signal: the tool's work is done)."""
    real = shutil.which(tool)
    bin_dir = tmp_path / f"after-{tool}"
    bin_dir.mkdir()
    mark = bin_dir / "reached"
    wrapper = bin_dir / tool
    wrapper.write_text(
        f'#!/bin/sh\n"{real}" "$@"; rc=$?\n'
        'case " $* " in *" --dry-run "*) exit $rc ;; esac\n'  # (restic's plan first)
        f'for a in "$@"; do [ "$a" = {verb} ] && touch {mark} && exec sleep 60; done\n'
        "exit $rc\n"
    )
    wrapper.chmod(0o755)
    return {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}, mark


def suite_snapshot(fleet: Fleet, source: Path, when: str, zone: str) -> str:
    """An adopted backup-suite snapshot (``--host suite1 --tag suite1``) of ``source``,
    dated ``when`` in the time zone ``zone`` (backup-suite ran in the client's zone);
    returns its short id."""
    env = {**fleet.repo_env("web1"), "TZ": zone}
    made = subprocess.run(
        ["restic", "backup", "--host", "suite1", "--tag", "suite1", "--time", when, "--json", "."],
        env=env,
        cwd=source,
        capture_output=True,
        text=True,
    )
    assert made.returncode == 0, made.stderr
    summary = [json.loads(line) for line in made.stdout.splitlines() if '"summary"' in line]
    return summary[-1]["snapshot_id"][:8]


def test_a_maintain_stopped_after_forget_with_zoned_adopted_snapshots_raises_no_alarm(
    tmp_path,
):
    import datetime as dt

    fleet = Fleet(tmp_path / "fleet", backend="restic")
    fleet.host_extra["web1"] = {"adopt_host": "suite1"}
    try:
        fleet.add_host("web1").make_archive()
        fleet.write_config(retention={"keep_daily": 3})
        pulled = fleet.server("pull", "--host", "web1", "--new")  # (an adopting host's first pull)
        assert pulled.returncode == 0, said(pulled)
        newest = fleet.snapshots("web1")[-1]["time"][:10]
        today = dt.date.fromisoformat(newest)
        source = tmp_path / "suite-data"
        source.mkdir()
        (source / "x").write_text("suite\n")
        day = lambda n: (today - dt.timedelta(days=n)).isoformat()  # noqa: E731
        old = suite_snapshot(fleet, source, f"{day(10)} 12:00:00", "UTC")
        # 23:00 UTC two days ago; the day before's 01:00 in Athens (+02:00)
        zoned = suite_snapshot(fleet, source, f"{day(1)} 01:00:00", "Europe/Athens")
        suite_snapshot(fleet, source, f"{day(1)} 10:00:00", "UTC")
        env, mark = after_wrapper(tmp_path, "restic", "forget")
        proc = server_popen(fleet, "maintain", "--no-verify", env=env)
        code, words = stop_at(proc, mark)
        assert code == 143, words
        left = {s["short_id"] for s in fleet.snapshots("web1")}
        assert old in left and zoned not in left  # restic's own choice, by local days
        again = fleet.server("maintain", "--no-verify")
        assert ALARM not in said(again), said(again)
        assert again.returncode == 0, said(again)
    finally:
        fleet.stop()


# -- 2. pull --if-due after a failure ---------------------------------------------------


def test_a_quiet_skip_after_a_failure_ends_the_failure_and_one_before_does_not(tmp_path):
    """status.json: a fresh skip after a failed pull is recorded in full (the failure is
    over), while a fresh skip after a good pull only says when the host was looked at."""
    from pullback.common.outcome import Status
    from pullback.server import status_file
    from pullback.server.results import HostResult

    state = tmp_path / "state"
    state.mkdir()
    failed = HostResult("web1", status=Status.FAILED, reason="wrong password")
    status_file.record(state, [failed])
    fresh = HostResult("web1", status=Status.SKIPPED, fresh=True, reason="fresh: 1h old")
    fresh.newest_snapshot = "2026-12-05T09:00:00Z"
    entry = status_file.record(state, [fresh])["hosts"]["web1"]
    assert entry["last_result"] == Status.SKIPPED and entry["reason"] == "fresh: 1h old"
    stored = HostResult("web2", status=Status.STORED, reason="stored")
    status_file.record(state, [stored])
    again = HostResult("web2", status=Status.SKIPPED, fresh=True, reason="fresh: 2h old")
    entry = status_file.record(state, [again])["hosts"]["web2"]
    assert entry["last_result"] == Status.STORED and "last_checked" in entry
