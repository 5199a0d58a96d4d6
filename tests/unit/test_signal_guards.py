"""Every command's own guard (``main_wrapper``'s, impatient) against the patient guards of
the commands that stop services or pull: what a second signal does, whether a tool may
still be started after a signal a command swallowed, and a signal arriving while a tool
is being started."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from pullback.common import signals
from pullback.common.errors import Interrupted
from pullback.common.runner import Runner
from pullback.common.signals import SignalGuard


def _spin() -> None:
    for _ in range(1000):  # the handler runs between bytecodes of this thread
        pass


def test_after_a_swallowed_signal_an_impatient_guard_starts_no_tool():
    with SignalGuard(patient=False):
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            _spin()
        except Interrupted:
            pass  # what `except PullbackError` in a command did
        with pytest.raises(Interrupted, match="SIGTERM"):
            Runner().run(["true"])


def test_a_patient_guard_still_starts_tools_after_a_signal():
    """A client run restarting the services it stopped must still run systemctl."""
    with SignalGuard(signals.RESTORING):
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            _spin()
        except Interrupted:
            pass
        assert Runner().run(["true"]).exit_code == 0


def test_the_innermost_guard_decides():
    with SignalGuard(patient=False), SignalGuard(signals.KEPT_FOR_NEXT_PULL):
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            _spin()
        except Interrupted:
            pass
        signals.refuse_if_stopping()  # the pull's own guard: nothing raised


def test_a_signal_inside_a_deferred_block_is_raised_as_it_ends():
    reached = []
    with pytest.raises(Interrupted), SignalGuard(patient=False):
        with signals.deferred_signals():
            os.kill(os.getpid(), signal.SIGTERM)
            _spin()
            reached.append("end of the block")
        reached.append("after the block")
    assert reached == ["end of the block"]


def test_a_time_limit_stops_a_waiting_block_with_its_words():
    """A wait no signal of the outside breaks (a lock nobody releases) ends at the limit,
    with the limit's words, not a signal's."""
    began = time.monotonic()
    guard = SignalGuard(signals.RESTORING)
    with pytest.raises(Interrupted) as info, guard, guard.time_limit(0.3, "past the limit"):
        threading.Event().wait(20)
    assert 0.3 <= time.monotonic() - began < 10
    assert str(info.value) == "past the limit" and info.value.exit_code == 143


def test_a_time_limit_waits_for_a_shielded_step_and_is_quiet_after_the_block():
    reached = []
    guard = SignalGuard(signals.RESTORING)
    limit = guard.time_limit(0.2, "past the limit")
    with pytest.raises(Interrupted) as info, guard, limit, guard.shielded():
        time.sleep(0.6)  # (the signal comes inside: recorded, raised as the step ends)
        reached.append("the step ended")
    assert reached == ["the step ended"] and str(info.value) == "past the limit"
    with SignalGuard(signals.RESTORING) as guard:
        with guard.time_limit(0.2, "past the limit"):
            pass
        time.sleep(0.5)  # past the limit of a block that ended: nothing comes
        with guard.time_limit(0, "no limit"):
            time.sleep(0.3)
        threads = threading.active_count()
        with guard.time_limit(1e12, "never: past what a thread can wait"):  # (h127)
            assert threading.active_count() == threads  # (no timer that would fail)
        assert guard.received is None


def test_a_watch_stops_the_block_with_its_words_and_a_hung_look_holds_no_end():
    """``stop_when``: the words a look returns stop the block as a SIGTERM does; after
    the block, a look that hangs (a dead NFS mount's statvfs) does not hold its end."""
    looks = []

    def full() -> str | None:
        looks.append(1)
        return "free space fell" if len(looks) >= 3 else None

    guard = SignalGuard(signals.RESTORING)
    with pytest.raises(Interrupted) as info, guard, guard.stop_when(full, 0.05):
        threading.Event().wait(20)
    assert str(info.value) == "free space fell" and len(looks) == 3

    hung = threading.Event()
    release = threading.Event()

    def hangs() -> str | None:
        hung.set()
        release.wait(30)
        return "too late: the block ended"

    with SignalGuard(signals.RESTORING) as guard:
        with guard.stop_when(hangs, 0.05):
            assert hung.wait(5)
            began = time.monotonic()
        assert time.monotonic() - began < 1, "the end waited for the hung look"
        release.set()
        time.sleep(0.2)
        assert guard.received is None, "a look that returns after the end sends nothing"


def test_a_signal_while_a_tool_starts_stops_that_tool(tmp_path, monkeypatch):
    """The signal arrives after the child was forked, before ``start`` returned its
    handle: the child is stopped, not left running unknown."""
    marker = tmp_path / "ran-on"
    real = signals.deferred_signals

    @contextlib.contextmanager
    def signal_once_started():
        with real():
            yield  # the child is made here
            os.kill(os.getpid(), signal.SIGTERM)
            _spin()

    monkeypatch.setattr("pullback.common.runner.deferred_signals", signal_once_started)
    with pytest.raises(Interrupted), SignalGuard(patient=False):
        Runner().start(["sh", "-c", f"sleep 2; touch {marker}"])
    time.sleep(2.5)
    assert not marker.exists(), "the child started as the signal came ran on"


def test_a_second_signal_ends_an_impatient_command_at_once():
    """The first raises Interrupted; a command whose clean-up hangs is ended by the next
    (a patient guard would say "still cleaning up" and wait)."""
    code = textwrap.dedent(
        """
        import os, signal, time
        from pullback.common.errors import Interrupted
        from pullback.common.signals import SignalGuard
        with SignalGuard(patient=False):
            try:
                os.kill(os.getpid(), signal.SIGTERM)
                for _ in range(1000):
                    pass
            except Interrupted:
                print("first raised", flush=True)
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(10)
                print("still alive")
        """
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.stdout == "first raised\n", done.stdout + done.stderr
    assert done.returncode == -signal.SIGTERM
    assert "SIGTERM received again; stopping now" in done.stderr


@pytest.mark.parametrize(
    ("said", "stopping"),
    [("stopping", True), ("running", False), ("degraded", False), ("starting", False)],
)
def test_a_start_that_fails_while_systemd_stops_the_machine_is_for_the_next(
    tmp_path, monkeypatch, said, stopping
):
    """``systemctl is-system-running`` (a stand-in here: no systemd runs the tests) says
    whether the machine is being stopped; only "stopping" keeps an entry for the next."""
    systemctl = tmp_path / "systemctl"
    systemctl.write_text(f"#!/bin/sh\necho {said}\n")
    systemctl.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    monkeypatch.setattr(signals.os.path, "isdir", lambda path: path == "/run/systemd/system")
    assert signals.stopping_for_now() == ("the machine is being stopped" if stopping else None)


def test_without_systemd_or_its_answer_the_machine_is_not_stopping(tmp_path, monkeypatch):
    monkeypatch.setattr(signals.os.path, "isdir", lambda path: False)
    assert signals.stopping_for_now() is None  # (no systemd: not asked)
    monkeypatch.setattr(signals.os.path, "isdir", lambda path: True)
    monkeypatch.setenv("PATH", str(tmp_path))  # (no systemctl at all)
    assert signals.stopping_for_now() is None


def test_after_a_signal_a_failed_start_is_for_the_next(monkeypatch):
    monkeypatch.setattr(signals.os.path, "isdir", lambda path: False)
    with SignalGuard(patient=True) as guard:
        guard.received = signal.SIGTERM
        assert signals.stopping_for_now() == "a signal came"
        guard.received = None


FORKED = """
import os, signal, sys, threading
from pullback.common import signals
from pullback.common.signals import SignalGuard
from pullback.plugins.process_state import Kept

signal.signal(signal.SIGHUP, signal.SIG_IGN)  # (as under nohup, before any guard)
own = lambda signum, frame: None


def child():
    said = [signal.getsignal(s) for s in SignalGuard.SIGNALS]
    names = ["own" if h is own else getattr(h, "name", getattr(h, "__name__", "?")) for h in said]
    os.write(1, (" ".join(names) + f" {len(signals._ACTIVE)}\\n").encode())
    os._exit(0)


def forked(where):
    if where == "thread":
        thread = threading.Thread(target=lambda: os.fork() == 0 and child())
        thread.start(); thread.join()
    elif os.fork() == 0:
        child()
    os.wait()


with SignalGuard(patient=False), SignalGuard("restoring"):
    with Kept(lambda words: None):  # a hook runs
        signal.signal(signal.SIGINT, own)  # its own handler
        forked("main")
        forked("thread")
    forked("main")  # pullback's own child (a server's host process): the guard's
    parent = signal.getsignal(signal.SIGTERM)
    print("parent", type(parent.__self__).__name__, len(signals._ACTIVE))
"""


def test_a_child_a_hook_forks_gets_the_handlers_from_before_the_guards():
    """A plugin's forked child (a pool's worker) is not pullback's run: SIGTERM ends it,
    SIGHUP too (ignored before the guards: no ignore is passed on), a hook's own handler
    stays;
    no guard is active in it, forked from the main thread or another. A child forked
    outside a hook (the server's host processes, which stop by their guard) keeps the
    guards; the parent keeps its."""
    made = subprocess.run(
        [sys.executable, "-c", FORKED], capture_output=True, text=True, timeout=30, check=True
    )
    assert made.stdout.splitlines() == [
        "SIG_DFL own SIG_DFL 0",
        "SIG_DFL own SIG_DFL 0",
        "_handle _handle _handle 2",
        "parent SignalGuard 2",
    ], made.stderr


POOLS = """
import multiprocessing, signal
from pullback.common.signals import SignalGuard
from pullback.plugins.process_state import Kept

with SignalGuard(patient=False), SignalGuard("restoring"), Kept(lambda words: None):
    for _ in range(40):
        with multiprocessing.get_context("fork").Pool(2):
            pass  # terminate() at once: its workers may still be in Python's after-fork code
print("ended")
"""


def test_pools_terminated_at_once_in_a_hook_end_their_workers():
    """A SIGTERM that reaches a worker while Python's own after-fork code runs (before
    the guards are forgotten) waits until they are: it met the guard's handler there
    and the worker lived on, the hook waiting for it (helper-121: within 20 pools under
    load). Its own session, killed whole if it hangs."""
    made = subprocess.Popen(
        [sys.executable, "-c", POOLS],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        out, err = made.communicate(timeout=120)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(made.pid, signal.SIGKILL)
    assert out == "ended\n", err[-2000:]
    assert "Interrupted" not in err


DEFERRED = """
import os, signal, sys, time
from pullback.common import signals
from pullback.common.errors import Interrupted
from pullback.common.signals import SignalGuard
from pullback.plugins.manager import _raise_if_signalled
from pullback.plugins.process_state import Kept

case = sys.argv[1]


def fork_window():  # what the at-fork hooks do around a main-thread fork during a hook
    signals.defer_for_fork()
    os.kill(os.getpid(), signal.SIGTERM)  # met inside the window: recorded, not raised
    if case == "two-signals":
        os.kill(os.getpid(), signal.SIGINT)
    signals.resend_deferred()


try:
    with SignalGuard(patient=case not in ("hook-ends-at-once", "two-signals")):
        kept = Kept(lambda words: None)
        try:
            with kept:
                fork_window()
                started = time.monotonic()
                if case in ("hook-waits", "two-signals"):
                    time.sleep(5)
            _raise_if_signalled(kept)
        except Interrupted:
            print(f"raised after {time.monotonic() - started:.2f}", flush=True)
            time.sleep(0.3)  # the clean-up, past the re-send's 20 ms
            print("cleaned up", flush=True)
        if case == "guard-gone":
            raise SystemExit(0)
except Interrupted:
    print("raised again", flush=True)
time.sleep(0.3)
print("ended", flush=True)
"""


@pytest.mark.parametrize("case", ["hook-waits", "hook-ends-at-once", "guard-gone", "two-signals"])
def test_a_signal_met_inside_a_fork_is_raised_once(case):
    """A SIGTERM a guard meets inside the parent's at-fork hooks (where Python prints an
    exception as ignored) is sent again 20 ms later: a hook that waits is interrupted
    at once; one that returns at once raises it from the witness, and the re-send then
    does nothing (an impatient guard killed the process in its clean-up); a command
    whose guards ended is not killed by it (helper-123). Two signals stay two: the
    impatient guard's second one ends the process by it (helper-124)."""
    made = subprocess.run(
        [sys.executable, "-c", DEFERRED, case], capture_output=True, text=True, timeout=30
    )
    lines = made.stdout.splitlines()
    if case == "two-signals":
        # (Python runs pending handlers in the signals' order: SIGINT's first)
        assert made.returncode in (-signal.SIGINT, -signal.SIGTERM), made
        assert "received again; stopping now" in made.stderr, made
        return
    if case == "guard-gone":
        assert (made.returncode, lines[1:]) == (0, ["cleaned up"]), made
        return
    assert made.returncode == 0, made
    assert lines[1:] == ["cleaned up", "ended"], made
    assert float(lines[0].split()[-1]) < 1.0, made
