"""Each host's pull in a process of its own: killed at its deadline, memory capped,
crashes contained, phases journalled by the parent.

The work done in each child is a stand-in function (the real pull is the integration
tier's, tests/integration/test_hostile_clients.py); the processes, signals, rlimits and
commands are real.
"""

from __future__ import annotations

import faulthandler
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pullback.common.errors import Interrupted
from pullback.common.outcome import Status
from pullback.server import host_process
from pullback.server.config import load_server_config
from pullback.server.host_process import pull_hosts
from pullback.server.journal import CONNECTING, STORING, TRANSFERRING, WAITING, Journal
from pullback.server.results import HostResult
from tests.helpers.interrupt import interrupted_after


def vm_size() -> int:
    """This process's address space, in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmSize:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmSize")


def make_config(tmp_path: Path, hosts=("a", "b", "c"), **settings):
    path = tmp_path / "server.yaml"
    extra = "".join(f"{key}: {value}\n" for key, value in settings.items())
    names = "".join(f"  - name: {name}\n" for name in hosts)
    path.write_text(
        f"state_dir: {tmp_path / 'state'}\nlock_dir: {tmp_path}\n{extra}hosts:\n{names}"
    )
    return load_server_config(path)


def stored(ctx, relay) -> HostResult:
    result = HostResult(ctx.name, Status.STORED, reason=f"stored {ctx.name}")
    relay.result = result
    relay.phase(ctx.name, TRANSFERRING)
    result.warnings.append("in between")
    relay.phase(ctx.name, None)
    return result


@pytest.fixture
def quick_kill(monkeypatch):
    monkeypatch.setattr(host_process, "KILL_GRACE", 1.0)


def test_every_host_in_its_own_process_results_in_order(tmp_path):
    config = make_config(tmp_path, parallel=2)
    journal = Journal(tmp_path)
    journal.begin()
    results = pull_hosts(config, list(config.hosts), stored, journal)
    assert [(r.host, r.status, r.reason) for r in results] == [
        ("a", Status.STORED, "stored a"),
        ("b", Status.STORED, "stored b"),
        ("c", Status.STORED, "stored c"),
    ]
    assert all(r.warnings == ["in between"] and r.peak_rss > 1 << 20 for r in results)
    journal.end()
    assert not journal.path.exists()


def test_a_host_that_ignores_its_deadline_is_killed_with_what_it_started(tmp_path, quick_kill):
    config = make_config(tmp_path, hosts=("stuck", "fine"), host_timeout="1s", parallel=2)
    pid_file = tmp_path / "sleep.pid"

    def stuck(ctx, relay):
        if ctx.name == "fine":
            return stored(ctx, relay)
        relay.result = HostResult(ctx.name, newest_snapshot="2026-11-30T00:00:00Z")
        relay.phase(ctx.name, TRANSFERRING)
        child = subprocess.Popen(["sleep", "600"], start_new_session=True)
        pid_file.write_text(str(child.pid))
        while True:  # deaf to ctx.cancel
            time.sleep(0.1)

    started = time.monotonic()
    results = pull_hosts(config, list(config.hosts), stuck)
    assert time.monotonic() - started < 8  # host_timeout 1 s + KILL_GRACE 1 s + margin
    bad, good = results
    assert good.status == Status.STORED
    assert bad.status == Status.FAILED
    assert bad.reason.startswith("timed out after 1s (host_timeout): its pull did not stop")
    assert bad.newest_snapshot == "2026-11-30T00:00:00Z"  # what it knew by its last phase
    sleeper = int(pid_file.read_text())
    time.sleep(0.2)
    state = Path(f"/proc/{sleeper}/stat")
    assert not state.exists() or state.read_text().split()[2] == "Z"


def test_a_host_killed_while_storing_stays_in_the_journal(tmp_path, quick_kill):
    config = make_config(tmp_path, hosts=("a",), host_timeout="1s")

    def stuck_storing(ctx, relay):
        relay.phase(ctx.name, STORING)
        while True:
            time.sleep(0.1)

    journal = Journal(tmp_path)
    journal.begin()
    (result,) = pull_hosts(config, list(config.hosts), stuck_storing, journal)
    journal.end()
    assert "the next pull removes the lock" in result.warnings[-1]
    assert json.loads(journal.path.read_text())["hosts"] == {"a": STORING}
    assert Journal(tmp_path).begin().phases == {"a": STORING}


def test_memory_is_capped_for_the_pull_but_not_for_its_commands(tmp_path):
    cap = vm_size() + (256 << 20)
    config = make_config(tmp_path, hosts=("greedy", "tool"), pull_memory_limit=cap, parallel=1)

    def work(ctx, relay):
        if ctx.name == "tool":  # a command may use more than the cap (restic needs its own)
            ctx.runner.run([sys.executable, "-c", "b = bytearray(600 << 20); b[-1] = 1"])
            return stored(ctx, relay)
        hog = bytearray(1 << 30)  # more than the cap: MemoryError in the child only
        return HostResult(ctx.name, Status.STORED, reason=str(len(hog)))

    greedy, tool = pull_hosts(config, list(config.hosts), work)
    assert greedy.status == Status.FAILED
    assert "pull_memory_limit" in greedy.reason
    assert tool.status == Status.STORED


def test_a_crashed_host_is_a_failure_and_the_others_go_on(tmp_path):
    config = make_config(tmp_path, hosts=("crash", "fine"))

    def work(ctx, relay):
        if ctx.name == "crash":
            faulthandler.disable()  # pytest's: it would print the child's stack
            os.kill(os.getpid(), signal.SIGSEGV)
        return stored(ctx, relay)

    crash, fine = pull_hosts(config, list(config.hosts), work)
    assert crash.status == Status.FAILED
    assert crash.reason.startswith("its pull process died (SIGSEGV)")
    assert fine.status == Status.STORED


def test_sigterm_stops_every_host_process(tmp_path):
    config = make_config(tmp_path, parallel=2)
    pids = tmp_path / "pids"

    def wait(ctx, relay):
        with open(pids, "a") as handle:
            handle.write(f"{os.getpid()}\n")
        ctx.cancel.wait(60)
        return stored(ctx, relay)

    started = time.monotonic()
    journal = Journal(tmp_path)
    journal.begin()
    with pytest.raises(Interrupted), interrupted_after(1.0):
        pull_hosts(config, list(config.hosts), wait, journal)
    assert time.monotonic() - started < 10
    children = [int(p) for p in pids.read_text().split()]
    assert len(children) == 2  # two at a time; the third never started
    assert not any(Path(f"/proc/{pid}").exists() for pid in children)  # reaped
    # no status file is written after a SIGTERM: the journal keeps every host it cut,
    # the one never started too, and how the run ended
    journal.end()
    kept = Journal(tmp_path).begin()
    assert kept.stopped_by == "SIGTERM" and not kept.ended
    assert kept.phases == {"a": CONNECTING, "b": CONNECTING, "c": WAITING}


def test_hosts_wait_for_their_turn_in_the_journal(tmp_path):
    """A pull killed before it started a host (``parallel``) leaves it named too."""
    config = make_config(tmp_path, parallel=1)
    journal = Journal(tmp_path)
    journal.begin()
    log = tmp_path / "seen"

    def look(ctx, relay):  # (in the host's process: what it sees goes to a file)
        with open(log, "a") as handle:
            handle.write(json.dumps(json.loads(journal.path.read_text())["hosts"]) + "\n")
        return stored(ctx, relay)

    pull_hosts(config, list(config.hosts), look, journal)
    seen = [json.loads(line) for line in log.read_text().splitlines()]
    assert seen[0] == {"a": CONNECTING, "b": WAITING, "c": WAITING}
    assert seen[2] == {"c": CONNECTING}


ORPHAN = """
import sys, time, os
from pathlib import Path
from pullback.common.locks import FileLock
from pullback.server.config import load_server_config
from pullback.server.host_process import pull_hosts

config = load_server_config(sys.argv[1])
lock = FileLock(Path(sys.argv[2])).acquire()

def work(ctx, relay):
    Path(sys.argv[3]).write_text(str(os.getpid()))
    while True:
        time.sleep(0.1)

pull_hosts(config, list(config.hosts), work, parent_only=lock.descriptors())
"""


def test_a_host_process_dies_with_its_parent_and_never_holds_the_server_lock(tmp_path):
    from pullback.common.locks import FileLock

    config = make_config(tmp_path, hosts=("a",))
    lock, pid_file = tmp_path / "server.lock", tmp_path / "child.pid"
    parent = subprocess.Popen(
        [sys.executable, "-c", ORPHAN, str(config.path), str(lock), str(pid_file)],
        cwd=Path(__file__).parents[2],
    )
    deadline = time.monotonic() + 20
    while not pid_file.exists() or not pid_file.read_text():
        assert time.monotonic() < deadline and parent.poll() is None
        time.sleep(0.05)
    child = int(pid_file.read_text())
    parent.kill()  # the OOM killer, or kill -9
    parent.wait()
    deadline = time.monotonic() + 5
    while (
        Path(f"/proc/{child}").exists()
        and Path(f"/proc/{child}/stat").read_text().split()[2] != "Z"
    ):
        assert time.monotonic() < deadline, "the host's process outlived its parent"
        time.sleep(0.05)
    FileLock(lock).acquire().release()  # free at once: the child never held it


def test_a_host_process_logs_through_its_parent_masked_and_one_line(tmp_path, caplog):
    import logging

    from pullback.common import secrets
    from pullback.common.log import get_logger

    config = make_config(tmp_path, hosts=("a",))

    def work(ctx, relay):
        secrets.register("s3cret-known-only-here")
        ctx.log.warning("the password is s3cret-known-only-here\n[b] stored")
        try:
            raise ValueError("boom")
        except ValueError:
            get_logger("host").error("it failed:", exc_info=True)
        return stored(ctx, relay)

    caplog.set_level(logging.DEBUG, logger="pullback")
    (result,) = pull_hosts(config, list(config.hosts), work)
    assert result.status == Status.STORED
    warning = next(r for r in caplog.records if "the password is" in r.getMessage())
    assert warning.getMessage() == "[a] the password is ******\\n[b] stored"
    error = next(r for r in caplog.records if r.getMessage() == "it failed:")
    assert "ValueError: boom" in error.exc_text


def test_progress_is_told_each_result_as_its_process_ends(tmp_path):
    """A slow host holds back no other's result (helper-167 F2): ``progress`` hears each
    host as its process ends, with whether others still run, and time passing."""
    config = make_config(tmp_path, parallel=3)
    heard: list[tuple[str | None, bool]] = []

    def work(ctx, relay) -> HostResult:
        if ctx.name == "c":
            time.sleep(1.0)
        return stored(ctx, relay)

    pull_hosts(
        config,
        list(config.hosts),
        work,
        progress=lambda result, busy: heard.append((result and result.host, busy)),
    )
    ended = [(host, busy) for host, busy in heard if host is not None]
    assert sorted(ended[:2]) == [("a", True), ("b", True)] and ended[2] == ("c", False)
    first_c = heard.index(("c", False))
    assert (None, True) in heard[heard.index(ended[1]) : first_c]  # ticks while c runs
