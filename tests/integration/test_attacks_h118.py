"""helper-118's outside review of commits 0b3c6e0..7a8c732: hooks' process state put back
(plugins/process_state.py, PluginSet.call), forked children and the archive's pipes
(common/forks.py), stat numbers past 2**63 (ordered.stat_number), the client's status
file masked (outputs.kept_words), ``status --check`` counting, ``restore --snapshot``
by restic's whole id.

A promise that did not hold was ``xfail(strict=True)`` until mended (none is marked now);
every test asserts what the documents or the commit say. Client runs are real
``pullback-client`` subprocesses (tests/helpers/client.py's ClientSandbox) with a plugin
in ``plugin_dirs`` (the pattern of test_attacks_h116.py); the fleet test is a real
client, sshd and ``pullback-server pull``/``restore`` (tests/helpers/fleet.py).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from pullback.common.archive.ordered import same_stat_numbers, stat_number
from pullback.common.text import escaped, printable
from pullback.server.backends import Snapshot, named
from pullback.server.fleet_view import HostRow, HostState
from pullback.server.status import Check, fleet_check
from tests.helpers.client import ClientSandbox, with_plugin
from tests.helpers.fleet import Fleet

pytestmark = pytest.mark.integration

SECRET = "tok-S3cretValue-h118"

PLUGIN = """
import multiprocessing, os, signal, sys, time
from pullback.plugins import TaskType, hookimpl

SCHEMA = {"type": "object", "additionalProperties": False, "properties": {
    "mode": {"type": "string", "default": "ok"},
    "token": {"type": "string", "x-secret": True}}}


@hookimpl
def pullback_task_types():
    return [TaskType("h118", SCHEMA)]


@hookimpl
def pullback_validate(task):
    if task.config["mode"] == "long-problem":
        # one problem line of 2,021 characters, the secret near its end
        return ["x" * 1990 + " " + task.config["token"]]
    return []


def _square(n):
    return n * n


@hookimpl
def pullback_dump(task):
    (task.staging / "h118.txt").write_text("h118 data\\n")
    mode = task.config["mode"]
    if mode == "int-default":  # a library puts Python's own SIGINT handler back
        signal.signal(signal.SIGINT, signal.default_int_handler)
        time.sleep(8)
    if mode == "term-exit":  # the daemon idiom: SIGTERM ends the program cleanly
        signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(0))
        time.sleep(8)
    if mode == "term-ignored":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        time.sleep(8)
    if mode == "env-and-raise":
        os.environ["PATH"] = "/nonexistent"
        os.environ["H118_LEAK"] = "1"
        raise RuntimeError("broken after changing PATH")
    if mode == "pool":  # multiprocessing with the fork start method, results by its pipes
        with multiprocessing.get_context("fork").Pool(2) as pool:
            squares = pool.map(_square, range(50))
        (task.staging / "squares.txt").write_text(" ".join(map(str, squares)))
    if mode == "pool-terminated":  # the pool ends (terminate()) while its workers work
        with multiprocessing.get_context("fork").Pool(2) as pool:
            pool.map_async(time.sleep, [20, 20])
            time.sleep(1)
    if mode == "fork-returns":  # a child forked that returns from the hook, not _exit()
        if os.fork() == 0:
            return
    if mode == "fork-exits":  # a child that ends by sys.exit(3), waited for
        child = os.fork()
        if child == 0:
            sys.exit(3)
        status = os.waitpid(child, 0)[1]
        (task.staging / "child.txt").write_text(str(os.waitstatus_to_exitcode(status)))
    if mode == "daemon":  # a library that daemonizes a helper that lives on
        child = os.fork()
        if child == 0:
            os.setsid()
            time.sleep(30)
            os._exit(0)
        (Path(os.environ.get("H118_ROOT", "/nonexistent")) / "child.pid").write_text(str(child))


from pathlib import Path
"""


class Box(ClientSandbox):
    data: Path


@pytest.fixture
def box(tmp_path) -> Box:
    """A client with the plugin in plugin_dirs and a good service ``zgood`` (run last)."""
    b = Box(tmp_path / "client")
    with_plugin(b, "h118", PLUGIN)
    return b


def h118(b: Box, mode: str, name: str = "bad") -> None:
    b.add_service(name, f"service:\n  name: {name}\nh118:\n  mode: {mode}\n  token: {SECRET}\n")


def member(b: Box, name: str) -> str:
    """The text of member ``name`` of the newest archive ``b`` published (GNU tar)."""
    return subprocess.run(
        f"zstd -dcq {b.published()[-1]} | tar -xOf - {name}",
        shell=True,
        capture_output=True,
        text=True,
        check=True,
    ).stdout


def start(b: Box, *args: str, env: dict | None = None) -> subprocess.Popen:
    """``pullback-client`` started, its output to ``out.txt`` (not a pipe)."""
    out = (b.root / "out.txt").open("w")
    argv = [sys.executable, "-m", "pullback.client.cli", "--config", str(b.config), *args]
    return subprocess.Popen(
        argv, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})}
    )


def output(b: Box) -> str:
    return (b.root / "out.txt").read_text()


def status_text(b: Box) -> str:
    return (b.archives / ".client-status.json").read_text()


def signalled_during_hook(b: Box, signum: int) -> int:
    """Start a run whose hook sleeps 8 s; send ``signum`` 3 s in; the exit status."""
    proc = start(b, "run")
    time.sleep(3)
    proc.send_signal(signum)
    return proc.wait(60)


# -- defects -------------------------------------------------------------------------------


def test_ctrl_c_during_a_hook_with_the_default_int_handler_stops_the_run(box):
    h118(box, "int-default")
    code = signalled_during_hook(box, signal.SIGINT)
    assert "the plugin raised KeyboardInterrupt" not in output(box)
    assert code == 130, output(box)[-1500:]
    assert box.published() == []


def test_sigterm_during_a_hook_with_its_own_handler_stops_the_run(box):
    h118(box, "term-exit")
    code = signalled_during_hook(box, signal.SIGTERM)
    assert code == 143, output(box)[-1500:]
    assert box.published() == []


def test_a_hook_that_ignores_sigterm_has_its_handler_put_back_and_the_limit_is_said(box):
    """A SIGTERM that comes while a hook has SIGTERM at SIG_IGN is discarded by the kernel
    (nothing in the process can see it): the run goes on. What pullback can do, it does:
    the handler is put back after the hook, with a warning, and plugins.md says so
    (this review's D3 found process_state's docstring claiming more)."""
    h118(box, "term-ignored")
    code = signalled_during_hook(box, signal.SIGTERM)
    said = output(box)
    assert code == 0, said[-1500:]
    assert "changed the handlers of SIGTERM" in said and "put back" in said
    docs = (Path(__file__).resolve().parents[2] / "docs" / "plugins.md").read_text()
    assert "`SIG_IGN`" in docs and "is lost" in docs


def test_a_secret_at_the_2000_character_cut_is_not_partly_shown(box):
    h118(box, "long-problem")
    made = box.cli("run")
    assert made.returncode == 1
    [archive] = box.published()
    sidecar = archive.with_name(archive.name + ".json").read_text()
    prefix = SECRET[:8]  # "tok-S3cr": what the cut leaves of it
    assert prefix not in made.stderr
    assert prefix not in sidecar
    assert prefix not in status_text(box)


def test_a_forked_child_that_lives_on_does_not_refuse_the_next_run(box):
    h118(box, "daemon")
    env = {"H118_ROOT": str(box.root)}
    try:
        first = start(box, "run", env=env)
        assert first.wait(60) == 0, output(box)[-1500:]
        second = start(box, "run", env=env)
        code = second.wait(60)
    finally:
        pid_file = box.root / "child.pid"
        if pid_file.exists():
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid_file.read_text()), signal.SIGKILL)
    assert code == 0, output(box)[-1500:]


def test_a_pool_terminated_while_its_workers_work_ends_them(box):
    """Pool.terminate() sends its workers SIGTERM. Forked with the run's guard as their
    handler, a worker raised Interrupted inside its task, sent it as the task's result
    and waited for the next task for ever: the hook, and the run, with it (the CI saw
    the plain pool test hang so, under load). The child's signals are Python's own."""
    h118(box, "pool-terminated")
    started = time.monotonic()
    made = box.cli("run", timeout=60)
    assert made.returncode == 0, made.stderr[-1500:]
    assert time.monotonic() - started < 45
    assert "SIGTERM received" not in made.stderr


def test_a_forked_child_that_returns_from_the_hook_goes_no_further(box):
    """A child that returns from the hook (no ``os._exit()``) would go on with the run's
    own code: a second run that publishes and reports. It ends where the hook returned."""
    h118(box, "fork-returns")
    made = box.cli("run", timeout=60)
    assert made.returncode == 0, made.stderr[-1500:]
    assert "a child forked by pullback_dump returned into the run; ended" in made.stderr
    assert made.stderr.count(" published ") == 1, made.stderr
    assert made.stderr.count("[zgood] ok") == 1, made.stderr
    assert len(box.published()) == 1


def test_a_forked_child_that_calls_sys_exit_ends_with_its_code(box):
    """``sys.exit(3)`` in a hook's forked child ends it with 3, as Python would (a hook
    that waits for it sees its code), and no line about a child returning."""
    h118(box, "fork-exits")
    made = box.cli("run", timeout=60)
    assert made.returncode == 0, made.stderr[-1500:]
    assert "returned into the run" not in made.stderr
    said = member(box, "services/bad/h118/child.txt")
    assert said == "3"


# -- held ----------------------------------------------------------------------------------


def test_a_hook_that_changes_the_environment_and_raises_is_put_back(box):
    """The put-back runs in a ``finally``: the hook's failure is its task's, the warning is
    said, and the next service's commands find their PATH."""
    h118(box, "env-and-raise")
    box.add_service(
        "ycmd",
        'service:\n  name: ycmd\ncommand:\n  dump:\n    - run: ["sh", "-c", '
        '"echo ${H118_LEAK:-clean}"]\n      output: env.txt\n',
    )
    made = box.cli("run")
    assert made.returncode == 1, made.stderr[-1500:]
    assert "broken after changing PATH" in made.stderr
    assert "the plugin changed the environment of the client's process; put back" in made.stderr
    side = box.sidecar(box.published()[-1])
    states = {s["name"]: s["status"] for s in side["services"]}
    assert states["ycmd"] == "ok" and states["zgood"] == "ok", states
    assert member(box, "services/ycmd/command/env.txt") == "clean\n"


def test_a_multiprocessing_fork_pool_in_a_hook_still_works(box):
    """forks.py closes only the archive's write ends in a forked child: a plugin's fork
    pool talks over its own pipes, the run is not held."""
    h118(box, "pool")
    started = time.monotonic()
    made = box.cli("run", timeout=60)
    assert made.returncode == 0, made.stderr[-1500:]
    assert time.monotonic() - started < 30
    squares = member(box, "services/bad/h118/squares.txt")
    assert squares.split() == [str(n * n) for n in range(50)]


def test_stat_numbers_before_1970_and_past_2262_compare_on_both_sides():
    """Negative times (1901) are themselves; numbers of 2**63 or more wrap the same way on
    the row side and the stat side; a changed time still differs."""
    t1901 = -2145916800 * 10**9
    assert stat_number(t1901) == t1901
    big = (1 << 64) - 5  # an inode number near the top of 64 bits
    assert stat_number(big) == -5
    assert same_stat_numbers((stat_number(big), 1), (big, 1))
    t2300 = 10_413_792_000 * 10**9
    assert same_stat_numbers((stat_number(t2300),), (t2300,))
    assert not same_stat_numbers((stat_number(t2300),), (t2300 + 1,))
    assert not same_stat_numbers((stat_number(t1901),), (t1901 - 1,))
    assert not same_stat_numbers((None, 1), (5, 1))


def test_printable_escapes_the_same_as_before_on_random_strings():
    """printable() escaping only the first ``limit`` characters gives what escaping all of
    it gave (the previous implementation, inlined)."""

    def before(value, limit):
        text = escaped(str(value))
        return text if len(text) <= limit else text[: limit - 1] + "…"

    rng = random.Random(118)
    alphabet = "ab \t\n\x1b\u2028é\udc80\x7f€"
    for _ in range(3000):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randrange(0, 40)))
        limit = rng.randrange(1, 45)
        assert printable(text, limit) == before(text, limit), (text, limit)


def _row(name: str, state: HostState, stale: bool) -> HostRow:
    return HostRow(name, state, "stored", stale=stale, newest_age=7200.0)


def test_status_check_stays_critical_and_counts_a_stale_host_under_each_kind():
    rows = [
        _row("a-fail-stale", HostState.FAILED, True),
        _row("b-attention-stale", HostState.ATTENTION, True),
        _row("c-stale", HostState.STALE, True),
        _row("d-fail", HostState.FAILED, False),
        _row("e-ok", HostState.OK, False),
    ]
    result = fleet_check(rows)
    assert result.state == Check.CRITICAL
    assert result.line.startswith(
        "PULLBACK CRITICAL - stale: a-fail-stale, b-attention-stale, c-stale; "
        "last pull failed: a-fail-stale, d-fail; needs attention: b-attention-stale; "
        "1 of 5 hosts ok |"
    ), result.line
    assert "hosts=5 ok=1 attention=1 failed=2 stale=3" in result.line
    fresh = fleet_check([_row("d-fail", HostState.FAILED, False), _row("e", HostState.OK, False)])
    assert fresh.state == Check.WARNING


def test_restore_snapshot_names_restic_whole_and_short_ids_and_borg_names():
    now = dt.datetime.now(dt.UTC)
    full_a = "ab" * 32
    full_b = "ab" + "cd" * 31
    restic = [
        Snapshot(full_a[:8], now, "20260101T000000Z", full_id=full_a),
        Snapshot(full_b[:8], now, "20260102T000000Z", full_id=full_b),
    ]
    assert named(restic, full_a) == [restic[0]]
    assert named(restic, full_a[:8]) == [restic[0]]
    assert named(restic, full_b[:20]) == [restic[1]]
    assert len(named(restic, "ab")) == 2  # ambiguous: both, the caller refuses
    assert named(restic, full_a + "0") == []
    assert named(restic, "") == []
    assert named(restic, "20260102T000000Z") == [restic[1]]
    borg = [Snapshot("web1-20260101T000000Z", now, "20260101T000000Z")]
    assert named(borg, "web1-2026") == borg
    assert named(borg, "20260101T000000Z") == borg


@pytest.mark.parametrize(
    "backend",
    [
        "restic",
        "borg",
    ],
)
def test_a_file_dated_1901_travels_in_a_delta_and_comes_back(tmp_path, backend):
    """A negative time (1901-12-14, what ext4 holds earliest) in the file cache and the
    staging index: the second day is a delta, the file unchanged keeps its time and
    bytes, a file changed in place (same size, same old time put back) is carried."""
    fleet = Fleet(tmp_path / "fleet", backend=backend)
    try:
        host = fleet.add_host("web1")
        host.client.write_config(incremental={"enabled": True})
        old = host.data / "old"
        old.write_text("dated 1901\n")
        changed = host.data / "changed"
        changed.write_text("first day\n")
        for path in (old, changed):
            subprocess.run(["touch", "-d", "1901-12-14 12:00:00 UTC", str(path)], check=True)
        host.make_archive()
        assert fleet.server("pull", "--host", "web1").returncode == 0
        mtime = changed.stat().st_mtime_ns
        changed.write_text("2nd  day!\n")  # same size
        os.utime(changed, ns=(mtime, mtime))
        host.make_archive({"b": b"next day\n"})
        done = fleet.server("pull", "--host", "web1")
        assert done.returncode == 0, done.stderr
        said = done.stdout + done.stderr
        assert "a delta" in said and "fell back" not in said, said[-2000:]
        target = tmp_path / "t"
        done = fleet.server("restore", "web1", "--target", str(target))
        assert done.returncode == 0, done.stderr
        (restored_old,) = target.rglob("old")
        assert restored_old.read_text() == "dated 1901\n"
        (restored,) = target.rglob("changed")
        assert restored.read_text() == "2nd  day!\n"
        if backend == "borg":  # borg 1.2 stores a time before 1970 as 1970 (restore.md)
            assert restored_old.stat().st_mtime_ns == 0
        else:
            assert restored_old.stat().st_mtime_ns == old.stat().st_mtime_ns
    finally:
        fleet.stop()


def test_status_file_masks_a_secret_in_a_short_validate_problem(box):
    box.add_service("bad", f"service:\n  name: bad\nh118:\n  mode: ok\n  token: {SECRET}\n")
    (box.root.parent / "plugins" / "leaky.py").write_text(
        textwrap.dedent(
            """
            from pullback.plugins import TaskType, hookimpl
            @hookimpl
            def pullback_task_types():
                return [TaskType("leaky", {"type": "object", "properties": {
                    "token": {"type": "string", "x-secret": True}}})]
            @hookimpl
            def pullback_dump(task):
                raise RuntimeError("cannot log in with " + task.config["token"] + "!" * 5000)
            """
        )
    )
    box.add_service("leak", f"service:\n  name: leak\nleaky:\n  token: {SECRET}x\n")
    made = box.cli("run")
    assert made.returncode == 1
    status = json.loads(status_text(box))
    error = status["services"]["leak"]["error"]
    assert "cannot log in with" in error and SECRET not in error
    assert len(error) <= 4000
