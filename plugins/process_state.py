"""What a plugin's hook may not change for the rest of the client's process (the
environment, the umask, the handlers of the signals pullback stops on), and the signals
it may not swallow.

Hooks run in the client's own process. One that set ``os.environ["PATH"]`` made every
later service's commands fail (an ``os.environ["PGPASSWORD"]`` would reach every later
command); ``os.umask(0)`` made the next service's staged files world-writable in the
archive, and so on the restored system; a SIGTERM handler set to ``SIG_IGN`` made every
later SIGTERM ignored, so a run systemd stopped published as if nothing happened (an
outside plugin author's findings). :class:`Kept` takes them before a hook and puts back
what it changed, with a warning.

A SIGTERM, SIGINT or SIGHUP that reaches a handler the hook put in the signal guard's
place (Python's ``default_int_handler``, a daemon's ``sys.exit`` handler, one the hook
set and put back itself) is witnessed through :func:`signal.set_wakeup_fd`, and the run
stops as if the guard had received it (an outside review: Ctrl-C became "the plugin
raised KeyboardInterrupt" and the run published). One that arrives while the hook has
the signal ignored (``SIG_IGN``) is discarded by the kernel: nothing can see it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from collections.abc import Callable

from ..common import signals
from ..common.errors import Interrupted
from ..common.signals import SignalGuard


def _umask() -> int:
    """This process's umask, read without changing it (Linux's /proc/self/status;
    elsewhere set and set back)."""
    with contextlib.suppress(OSError, ValueError), open("/proc/self/status") as status:
        for line in status:
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0o077)
    os.umask(mask)
    return mask


KEPT_SIGNALS = (
    *SignalGuard.SIGNALS,
    *(signal.SIGCHLD, signal.SIGALRM, signal.SIGPIPE, signal.SIGUSR1, signal.SIGUSR2),
    *(signal.SIGVTALRM, signal.SIGPROF, signal.SIGXFSZ),
)
"""The signals whose disposition a hook's change is put back: the guard's, and those a
daemon-style library sets (SIGCHLD ignored made every later command fail "No child
processes"; an outside attack saw it stop the run)."""

TIMERS = (signal.ITIMER_REAL, signal.ITIMER_VIRTUAL, signal.ITIMER_PROF)
"""The interval timers a hook's pending alarm lives in (``signal.alarm(2)`` left by a
hook killed the client two seconds later, a unit left stopped)."""


def _handlers() -> dict[int, object]:
    return {sig: signal.getsignal(sig) for sig in KEPT_SIGNALS}


def _timers() -> dict[int, tuple[float, float]]:
    return {which: signal.getitimer(which) for which in TIMERS}


_WITNESS_FDS: list[int] = []
"""The witness pipe's descriptors while a hook runs (one hook at a time)."""


_IN_HOOK: list[Kept] = []
"""The hooks running, innermost last (a hook's own call of another: none built in)."""


_MAIN = threading.main_thread().ident
"""The main thread, the only one that runs a signal's Python handler."""

_MASKS: dict[int, set[int | signal.Signals]] = {}
"""Per forking thread, its signal mask from before a fork made while a hook ran."""


def _block_for_fork() -> None:
    """Before a fork made while a hook runs: SIGTERM, SIGINT and SIGHUP wait (blocked in
    the forking thread, so in the child) until the child has forgotten the guards. One
    that came while Python's own after-fork code ran (threading's, random's) met the
    guard's handler there, was printed as ignored, and the pool's worker lived on. The
    main thread forking defers a guard's signal until the fork returned
    (:func:`~pullback.common.signals.defer_for_fork`)."""
    if not _IN_HOOK:
        return
    thread = threading.get_ident()
    if thread == _MAIN:
        signals.defer_for_fork()
    _MASKS[thread] = signal.pthread_sigmask(signal.SIG_BLOCK, SignalGuard.SIGNALS)


def _unblock() -> None:
    """After the fork, in the parent: the mask from before it (a signal that waited is
    delivered now, inside this at-fork hook: deferred, sent again once the fork
    returned)."""
    mask = _MASKS.pop(threading.get_ident(), None)  # (another thread's stays its own)
    try:
        if mask is not None:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
    finally:
        if threading.get_ident() == _MAIN:
            signals.resend_deferred()


def _unblock_in_child() -> None:
    """In the child, once it has forgotten the guards: the forking thread's mask from
    before the fork (a signal that waited is delivered now, to the child's own
    handlers); the other threads' entries are not the child's."""
    mask = _MASKS.pop(threading.get_ident(), None)
    _MASKS.clear()
    if mask is not None:
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)


def _forget_in_child() -> None:
    """In a child forked while a hook ran (multiprocessing's workers): no guard and no
    witness. Its signals are its own (:func:`~pullback.common.signals.forget_in_child`:
    a pool's terminate() sends its workers SIGTERM), and the parent's pipe is not its to
    write to."""
    try:
        if _IN_HOOK:
            _IN_HOOK.clear()
            signals.forget_in_child()
        if _WITNESS_FDS:
            with contextlib.suppress(ValueError, OSError):
                signal.set_wakeup_fd(-1)
            for fd in _WITNESS_FDS:
                with contextlib.suppress(OSError):
                    os.close(fd)
            _WITNESS_FDS.clear()
    finally:
        _unblock_in_child()


os.register_at_fork(
    before=_block_for_fork, after_in_parent=_unblock, after_in_child=_forget_in_child
)


class _Witness:
    """While a hook runs in the main thread: a pipe that Python's C-level signal handler
    writes each signal's number to (``signal.set_wakeup_fd``), whatever Python handler
    then runs; none in another thread, or where the wakeup descriptor is taken."""

    def __init__(self) -> None:
        self._fds: tuple[int, int] | None = None
        self._previous = -1

    def start(self) -> None:
        """Begin witnessing (in the main thread only)."""
        if threading.current_thread() is not threading.main_thread():
            return
        read, write = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        try:
            self._previous = signal.set_wakeup_fd(write, warn_on_full_buffer=False)
        except (ValueError, OSError):
            os.close(read)
            os.close(write)
            return
        self._fds = (read, write)
        _WITNESS_FDS[:] = [read, write]

    def end(self) -> int | None:
        """Stop witnessing; return the first SIGTERM, SIGINT or SIGHUP that came."""
        if self._fds is None:
            return None
        read, write = self._fds
        self._fds = None
        try:
            signal.set_wakeup_fd(self._previous)
        except (ValueError, OSError):  # (the earlier one closed meanwhile: none, not ours)
            with contextlib.suppress(ValueError, OSError):
                signal.set_wakeup_fd(-1)
        _WITNESS_FDS.clear()
        came = b""
        with contextlib.suppress(OSError):  # (BlockingIOError: nothing, or no more)
            while chunk := os.read(read, 512):
                came += chunk
        os.close(read)
        os.close(write)
        return next((sig for sig in came if sig in SignalGuard.SIGNALS), None)


FORKED_EXIT = 70
"""The exit status of a hook's forked child that came back into pullback (EX_SOFTWARE)."""


def end_if_forked(parent: int, hook: str, ending: BaseException | None) -> None:
    """Where a hook returned or raised (``ending``: what it raised, None when it
    returned): in a child the hook forked (``os.fork()`` whose child does not end by
    ``os._exit()``), end that child here. Else it went on with the run's own code: a
    second copy of the run that published, reported and started services again. A
    ``sys.exit(code)`` ends it with that code, as Python would; a return or another
    exception with :data:`FORKED_EXIT` and one line on stderr. Does nothing in the
    process that called the hook (``parent``, its pid)."""
    if os.getpid() == parent:
        return
    for stream in (sys.stdout, sys.stderr):  # (as Python's own exit would)
        with contextlib.suppress(Exception):
            stream.flush()
    if isinstance(ending, SystemExit):
        code = ending.code
        if code is not None and not isinstance(code, int):  # (Python prints it)
            with contextlib.suppress(Exception):
                print(code, file=sys.stderr, flush=True)
        os._exit(code if isinstance(code, int) else 0 if code is None else 1)
    with contextlib.suppress(OSError):
        os.write(2, f"pullback: a child forked by {hook} returned into the run; ended\n".encode())
    os._exit(FORKED_EXIT)


PUT_BACK_TRIES = 5
"""Times the put-back is tried when a signal's handler raises in it (each signal once)."""


class Kept:
    """Around a hook: on exit, put back the environment, the umask, the signal
    handlers (:data:`KEPT_SIGNALS`) and the interval timers it changed (``warn`` once
    naming what), and keep in :attr:`signal` the signal a handler of the hook's own
    received (None when none did)."""

    def __init__(self, warn: Callable[[str], None]):
        self.warn = warn
        self.signal: int | None = None
        self._environ = dict(os.environ)
        self._mask = _umask()
        self._handlers = _handlers()
        self._timers = _timers()
        self._witness = _Witness()
        self._changed: dict[str, None] = {}

    def __enter__(self) -> Kept:
        _IN_HOOK.append(self)
        self._witness.start()
        return self

    def __exit__(self, *exc) -> None:
        with contextlib.suppress(ValueError):
            _IN_HOOK.remove(self)
        interrupted: Interrupted | None = None
        for _ in range(PUT_BACK_TRIES):  # (each step is idempotent: a signal raised in one,
            try:  # it runs again)
                self._put_back()  # the handlers first: a signal from then on is the guard's
                break
            except Interrupted as came:
                interrupted = interrupted or came
            except BaseException:  # noqa: S112 - the hook's handler, before it was put back:
                continue  # its signal is in the witness's pipe, read below
        self.signal = self._witness.end()
        if self._changed:
            hint = (
                " (a hook passes env= to task.run instead)"
                if "the environment" in (self._changed)
                else ""
            )
            self.warn(
                f"the plugin changed {' and '.join(self._changed)} of the client's "
                f"process; put back{hint}"
            )
        if interrupted is not None:
            raise interrupted

    def _put_back(self) -> None:
        now = _handlers()
        moved = [sig for sig, handler in self._handlers.items() if now[sig] != handler]
        for sig in moved:
            with contextlib.suppress(ValueError, TypeError, OSError):  # (not the main thread)
                signal.signal(sig, self._handlers[sig])  # type: ignore[arg-type]
        if moved:
            names = ", ".join(signal.Signals(s).name for s in moved)
            self._changed[f"the handlers of {names}"] = None
        environ = self._environ
        if os.environ != environ:
            for key in [k for k in os.environ if k not in environ]:
                del os.environ[key]
            for key, value in environ.items():
                if os.environ.get(key) != value:
                    os.environ[key] = value
            self._changed["the environment"] = None
        if _umask() != self._mask:
            os.umask(self._mask)
            self._changed["the umask"] = None
        self._put_back_timers()

    def _put_back_timers(self) -> None:
        """Stop an interval timer the hook left pending (pullback sets none)."""
        for which, left in _timers().items():
            if left != (0.0, 0.0) and self._timers[which] == (0.0, 0.0):
                signal.setitimer(which, 0)
                self._changed["a pending alarm (an interval timer)"] = None
