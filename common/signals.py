"""Turn SIGTERM, SIGINT and SIGHUP into an exception, except while undoing (restarting
services).

systemd stops a unit with SIGTERM; pullback must still start again whatever it stopped.
Inside :meth:`SignalGuard.shielded` a signal is only recorded, and raised as
:class:`~pullback.common.errors.Interrupted` when the shielded block ends.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
from collections.abc import Callable, Iterator
from typing import Any

from .errors import Interrupted
from .log import get_logger

log = get_logger()

RESTORING = "stopping after restoring what was stopped"
"""What the client says on a signal: services it stopped are started again first."""
KEPT_FOR_NEXT_PULL = "stopping; a download in progress is kept, and the next pull resumes it"
"""What a pull says on a signal."""


class _Stopper:
    """Stops a guarded block from another thread, as a SIGTERM would, with words of its
    own: once, and never after the block ended or a signal came."""

    def __init__(self, guard: SignalGuard):
        self.guard = guard
        self.main = threading.get_ident()
        self.lock = threading.Lock()
        self.ended = False

    def stop(self, why: str) -> None:
        """Send SIGTERM to the main thread with ``why`` as the guard's words."""
        with self.lock:
            if self.ended or self.guard.received is not None:
                return
            self.guard.why = why
            signal.pthread_kill(self.main, signal.SIGTERM)

    def end(self) -> None:
        """The block ended: nothing is sent from now on."""
        with self.lock:
            self.ended = True


class SignalGuard:
    """Installs the handlers on enter and restores the previous ones on exit."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
    """SIGHUP too: the administrator's SSH session that drops during a restore (an
    outside attack saw the client die at once, the units it had stopped never started
    again)."""

    def __init__(self, stopping: str = "stopping", *, patient: bool = True):
        """``stopping``: what the log says the program does on a signal (the client's
        run: "stopping after restoring what was stopped"). ``patient``: a second signal
        waits for the clean-up (a run restarting the services it stopped); when False it
        ends the program at once, by that signal (every command's outer guard: a
        command that has nothing to restore is never kept alive by its clean-up)."""
        self.stopping = stopping
        self.patient = patient
        self.received: int | None = None
        self.why: str | None = None
        """Why pullback sent the signal itself (:meth:`time_limit`); None for one from
        outside."""
        self._shield_depth = 0
        self._raised = False
        self._previous: dict[int, Any] = {}

    def _handle(self, signum, _frame) -> None:
        if _DEFERRED.deferring:
            _DEFERRED.signals.append(signum)
            return
        name = signal.Signals(signum).name
        if self.received is not None:
            if not self.patient:
                log.warning("%s received again; stopping now", name)
                signal.signal(signum, signal.SIG_DFL)
                os.kill(os.getpid(), signum)
                return
            log.warning("%s received again; still cleaning up, please wait", name)
            return
        self.received = signum
        said = self.why or f"{name} received"
        if self._shield_depth:
            log.warning("%s; finishing the current step first", said)
            return
        log.warning("%s; %s", said, self.stopping)
        self._raised = True
        raise Interrupted(signum, self.why)

    def __enter__(self) -> SignalGuard:
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
            _ACTIVE.append(self)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        if self._previous:
            _ACTIVE.remove(self)
        self._previous.clear()

    @contextlib.contextmanager
    def shielded(self):
        """Run a block that a signal must not cut short; raise afterwards if one came."""
        self._shield_depth += 1
        try:
            yield
        finally:
            self._shield_depth -= 1
        self.check()

    @contextlib.contextmanager
    def time_limit(self, seconds: float, why: str) -> Iterator[None]:
        """Stop the block as a SIGTERM stops it once ``seconds`` have passed (0: no limit):
        a thread sends SIGTERM to the main thread, whose handler raises Interrupted with
        ``why`` as its words (a shielded step ends first). A Python hook that waits for
        ever, out of reach of its tools' timeouts, ends so. Nothing is sent once the
        block has ended or a signal came; a guard entered outside the main thread
        (handling none) sets no limit, nor does a limit past what a thread can wait
        (``threading.TIMEOUT_MAX``, some 292 years: ``1000000w`` meant "never")."""
        if not 0 < seconds < threading.TIMEOUT_MAX or not self._previous:
            yield
            return
        stopper = _Stopper(self)
        timer = threading.Timer(seconds, stopper.stop, (why,))
        timer.daemon = True
        timer.start()
        try:
            yield
        finally:
            stopper.end()
            timer.cancel()

    @contextlib.contextmanager
    def stop_when(self, words: Callable[[], str | None], every: float) -> Iterator[None]:
        """Stop the block as a SIGTERM stops it once ``words()``, called from a thread
        every ``every`` seconds, returns words: they are the stop's ``why`` (a shielded
        step ends first). ``words`` must not raise. Nothing is sent once the block has
        ended or a signal came; a guard entered outside the main thread sets no watch.
        The block's end waits for the thread at most ``every`` seconds more: a ``words``
        that hangs (a ``statvfs`` of a dead NFS mount) is left behind, a daemon thread
        that can send nothing."""
        if not self._previous:
            yield
            return
        stopper = _Stopper(self)
        done = threading.Event()

        def watch() -> None:
            while not done.wait(every):
                said = words()
                if said:
                    stopper.stop(said)
                    return

        watcher = threading.Thread(target=watch, name="pullback-watch", daemon=True)
        watcher.start()
        try:
            yield
        finally:
            stopper.end()
            done.set()
            watcher.join(every)

    def check(self) -> None:
        """Raise Interrupted if a signal arrived that has not been raised yet."""
        if self.received is not None and not self._shield_depth and not self._raised:
            self._raised = True
            raise Interrupted(self.received, self.why)

    def raise_swallowed(self) -> None:
        """Raise Interrupted if a signal arrived, even one raised before: called when code
        pullback does not control (a plugin's hook) returned or failed with another
        error, after the Interrupted raised in it was caught there. Nothing while
        shielded (a finish hook runs so)."""
        if self.received is not None and not self._shield_depth:
            self._raised = True
            raise Interrupted(self.received, self.why)


_ACTIVE: list[SignalGuard] = []
"""The guards entered in the main thread, innermost last."""


class _Deferred:
    """Signals a guard's handler met while the main thread was inside a fork made during
    a plugin's hook, from process_state's first at-fork hook to its last (bracketing
    the hooks registered before it: Python's own, logging's, threading's), where an
    exception is lost (Python prints it as ignored and goes on; logging's own hook would
    keep its lock). Only the main thread forking sets it, and only the main thread runs
    a handler, so only that window is deferred."""

    RESEND_AFTER = 0.02
    """Seconds before a deferred signal is sent again: the fork has returned by then."""

    def __init__(self) -> None:
        self.deferring = False
        self.signals: list[int] = []

    def begin(self) -> None:
        """Before the fork (the main thread forking, a hook running)."""
        self.deferring = True

    def end(self) -> None:
        """After the parent's last at-fork hook: what came is sent again, from a thread,
        in :attr:`RESEND_AFTER` seconds (:func:`_send_again` takes the list then, with
        any signal met while the thread was being started). Deferring ends as the very
        last step: no call, so no handler, runs between it and the fork's return."""
        if self.signals:
            self._resend_later()
        self.deferring = False

    def _resend_later(self) -> None:
        try:
            timer = threading.Timer(self.RESEND_AFTER, _send_again)
            timer.daemon = True
            timer.start()
        except RuntimeError:  # (no thread to be had: the witness has it at the hook's end)
            pass

    def forget(self) -> None:
        """In a forked child: what the parent deferred is not the child's."""
        self.deferring = False
        self.signals = []


def _send_again() -> None:
    """Send the deferred signals again, in the order they came, unless no guard is active
    any more (the command ended) or one already holds a signal (the hook's end raised
    it, from the witness): never twice. A second one is a second signal, as it was."""
    came, _DEFERRED.signals = _DEFERRED.signals, []
    if not came or not _ACTIVE or received() is not None:
        return
    for signum in came:
        os.kill(os.getpid(), signum)


_DEFERRED = _Deferred()


def defer_for_fork() -> None:
    """Called by :mod:`pullback.plugins.process_state` as the main thread starts a fork
    made while a hook runs: a guard's handler records a signal instead of raising it."""
    _DEFERRED.begin()


def resend_deferred() -> None:
    """Called as that fork returned, after the parent's last at-fork hook: what was
    recorded is sent again (:func:`_send_again`)."""
    _DEFERRED.end()


def _not_ignored(handler: Any) -> Any:
    """``handler``, but ``SIG_DFL`` for ``SIG_IGN`` or one set outside Python (None)."""
    return signal.SIG_DFL if handler in (None, signal.SIG_IGN) else handler


def forget_in_child() -> None:
    """In a child a plugin's hook forked (``os.fork()``, multiprocessing's fork workers;
    called by :mod:`pullback.plugins.process_state` at the fork): the guards are not the
    child's. Each signal a guard handles gets back the handler it had before the
    outermost guard (Python's own: SIGTERM and SIGHUP end the process, SIGINT raises
    KeyboardInterrupt), never an ignore it inherited (a tool it starts stops when
    told, as it did when the guard's handler was reset by its exec); a handler the
    hook set itself stays. A pool's worker that ran the guard's handler raised
    Interrupted where ``terminate()`` met it (in a lock's release, in a task: caught and
    sent as its result) and lived on, and the hook, and so the run, waited for it for
    ever. Never for pullback's own children (a server's host process stops by its
    guard)."""
    _DEFERRED.forget()
    if not _ACTIVE:
        return
    before = _ACTIVE[0]._previous
    for sig in SignalGuard.SIGNALS:
        handler = signal.getsignal(sig)
        if isinstance(getattr(handler, "__self__", None), SignalGuard):
            with contextlib.suppress(ValueError, TypeError, OSError):
                signal.signal(sig, _not_ignored(before.get(sig)))
    _ACTIVE.clear()


def raise_if_swallowed() -> None:
    """After a plugin's hook returned, or raised anything but Interrupted: raise
    Interrupted when a SIGTERM or SIGINT arrived meanwhile (a hook's ``except Exception``
    caught the one raised in it: the run went on, and published an archive with the
    cut-short dump said ok). Does nothing outside a guard, or inside a shielded block."""
    if _ACTIVE and threading.current_thread() is threading.main_thread():
        _ACTIVE[-1].raise_swallowed()


def witnessed(signum: int) -> None:
    """A SIGTERM, SIGINT or SIGHUP reached a handler a plugin's hook had put in the
    guard's place (the hook's own, Python's ``default_int_handler``): the innermost guard
    holds it as received, as if it had been its own, and raises Interrupted for it
    unless shielded (the shielded block raises it as it ends). Outside any guard: raised
    at once."""
    if not _ACTIVE:
        raise Interrupted(signum)
    guard = _ACTIVE[-1]
    if guard.received is None:
        guard.received = signum
        log.warning(
            "%s received (by a plugin's handler); %s", signal.Signals(signum).name, guard.stopping
        )
    guard.raise_swallowed()


def received() -> int | None:
    """The signal a guard of this process received (from any thread), None before one."""
    return next((guard.received for guard in list(_ACTIVE) if guard.received), None)


def stopping_for_now() -> str | None:
    """Why a start that just failed may have failed because this process or the machine
    is being stopped ("a signal came", "the machine is being stopped"), None when
    neither: a guard received a signal, or systemd is stopping the machine
    (``systemctl is-system-running`` says "stopping": a shutdown cancels the start jobs
    it meets, and stops this process only after). A caller keeps what it was
    to start for the next start (the unit's ExecStopPost=, the boot's unit) instead of
    dropping it as tried. systemctl runs outside the command runner, which starts
    nothing once a signal came; no answer within 5 s, or no systemd: not stopping."""
    if received() is not None:
        return "a signal came"
    if not os.path.isdir("/run/systemd/system"):
        return None
    try:
        said = subprocess.run(
            ["systemctl", "is-system-running"], capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return "the machine is being stopped" if said.stdout.strip() == "stopping" else None


def refuse_if_stopping() -> None:
    """Before a tool is started, and where a tool's failure is about to be recorded:
    raise Interrupted once a signal arrived.

    - In the main thread, when the innermost guard is an impatient one (every command's
      own, in ``main_wrapper``): a command that caught the Interrupted raised in it with
      its failures (``check`` going on to the next host) starts nothing more and ends
      as it would have. Nothing inside a patient guard (a run restarting the services
      it stopped).
    - In any other thread (a host's maintenance, drill or copy, a pull's own thread),
      once any guard received one: the signal is raised in the main thread only, which
      cancels the hosts, so a host's thread saw its tool end "cancelled", recorded that
      as its step's failure and went on to start the next step's tool (helper-99).

    Does nothing outside any guard."""
    if not _ACTIVE:
        return
    if threading.current_thread() is threading.main_thread():
        guard = _ACTIVE[-1]
        if not guard.patient:
            guard.raise_swallowed()
        return
    signum = received()
    if signum is not None:
        raise Interrupted(signum)


@contextlib.contextmanager
def deferred_signals():
    """Shield a short block in the innermost guard (a tool being started: a signal
    between the fork and the handle would leave the child running unknown); the
    signal is raised as the block ends. Does nothing outside a guard or the main
    thread."""
    if _ACTIVE and threading.current_thread() is threading.main_thread():
        with _ACTIVE[-1].shielded():
            yield
    else:
        yield
