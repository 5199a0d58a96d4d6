"""The one way pullback runs external commands (built on ``sh``).

Every command is logged with secrets masked, its output is streamed line by line to the
log, it runs in its own session so a timeout or an interrupt stops it and all its
children, and a failure raises :class:`~pullback.common.errors.CommandError` carrying the
exit code and the last lines of output.

Bulk byte streams (a dump written to a file, the archive fed to ``zstd``) never pass
through Python here: a file object given as ``stdin`` or ``stdout`` is handed to the child
as its file descriptor.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import re
import resource
import select
import shlex
import signal
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import sh

from . import secrets
from .errors import CommandError, CommandTimeout, Interrupted
from .libc import die_with_parent
from .log import Log, get_logger
from .signals import deferred_signals, refuse_if_stopping
from .text import escaped

SH_MAJOR = int(sh.__version__.split(".")[0])
# sh 2 returns a plain string from a foreground call unless told otherwise; sh 1 does not
# know the argument at all. Background calls return the command object in both.
_SH_VERSION_ARGS = {"_return_cmd": True} if SH_MAJOR >= 2 else {}


def _fork_failure(text: str) -> str:
    """Why a child failed between fork and exec (``sh.ForkException``'s text ends with
    the child's traceback), in words: its last line, and what /proc's absence means
    (``sh`` lists /proc/self/fd or /dev/fd in the child). Returns at most 300 characters."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    last = lines[-1] if lines else "the child failed before it started"
    if not os.path.isdir("/proc/self/fd"):  # sh 2 lists it, sh 1 its link /dev/fd
        last += " (is /proc mounted? pullback starts programs only with /proc)"
    return last[:300]


def _in_child(parent: int) -> Callable[[], None]:
    """What a command's process does before it runs (``parent``: pullback's pid):

    - it is killed when the thread that started it ends (PR_SET_PDEATHSIG: a process
      killed outright, a pull's by SIGKILL or the OOM killer, left its ``restic
      backup`` storing on, and a later pull's staging came to be stored under the
      killed one's stamp: helper-99); it ends at once when pullback died before that;
    - the address-space cap that a host's pull process holds itself to
      (server.host_process) is lifted: the command's memory is its own (restic and borg
      need theirs); the cap is for the Python that reads a client's bytes."""

    def prepare() -> None:
        die_with_parent(parent)
        soft, hard = resource.getrlimit(resource.RLIMIT_AS)
        if soft != hard:
            resource.setrlimit(resource.RLIMIT_AS, (hard, hard))

    return prepare


class _Lines:
    """Cuts a command's output, as it comes in chunks, into lines for ``emit``; a line
    longer than MAX_LINE is cut there and the rest of it skipped, so a tool (or a client
    through it) writing without newlines costs MAX_LINE of memory, not all it wrote."""

    def __init__(self, emit: Callable[[str], None]):
        self.emit = emit
        self.pending = ""
        self.skipping = False
        self._lock = threading.Lock()  # the reader thread, and flush() from wait()

    def __call__(self, chunk: str) -> None:
        with self._lock:
            *complete, rest = (self.pending + chunk).split("\n")
            for line in complete:
                if self.skipping:
                    self.skipping = False
                    continue
                self.emit(line)
            if self.skipping:
                rest = ""
            elif len(rest) > MAX_LINE:
                self.emit(rest[:MAX_LINE] + " … (line cut)")
                rest, self.skipping = "", True
            self.pending = rest

    def flush(self) -> None:
        """The last line, if the output did not end with a newline."""
        with self._lock:
            if self.pending and not self.skipping:
                self.emit(self.pending)
            self.pending, self.skipping = "", False


MAX_LINE = 4000
"""Characters of one line of a command's output that are logged (and kept)."""
_CHUNK = 4096
"""sh hands output over in chunks of this size (and the rest at the end), never more."""
TAIL_LINES = 20
MAX_LOGGED_LINES = 2000
"""Lines of one command's output that are logged (an outside test: a plugin's command
printing 300 000 lines wrote a 19 MB log); the rest are counted out, the tail kept."""
_FRAME = re.compile(
    r"^(\t\S+:\d+( \+0x[0-9a-f]+)?"  # \tgithub.com/restic/restic/.../rest.go:399 +0x1d
    r"|[\w.-]+(/[\w.-]+)*\.(\(\*?\w+\)\.)?[\w.]+(\(.*\))?"  # pkg/path.(*T).Method(...)
    r"|goroutine \d+ \[\w+\]:)$"
)


def is_stack_frame(line: str) -> bool:
    """Whether ``line`` is a line of a Go stack trace (restic's and rclone's fatal
    errors end with one): kept out of a failure's tail, which is for words."""
    return bool(_FRAME.match(line.rstrip()))


KILL_GRACE = 10.0
_POLL = 0.05
_ENDED_POLL = 0.002
"""How often :meth:`RunningCommand.wait` asks again once the command's pidfd said it ended."""
_ENDED = -2
"""``RunningCommand._pidfd`` once it said the command ended (and was closed)."""


@dataclass
class CommandResult:
    """What a finished command left behind."""

    display: str
    exit_code: int
    duration: float
    tail: list[str] = field(default_factory=list)
    peak_rss: int = 0
    """Highest resident memory of the command, in bytes (sampled from /proc while it ran)."""


class RunningCommand:
    """A command started by :meth:`Runner.start`; call :meth:`wait` to finish it."""

    def __init__(
        self,
        runner: Runner,
        display: str,
        proc,
        timeout: float | None,
        ok_codes,
        tail: collections.deque[str],
        *,
        flush: Callable[[], None] = lambda: None,
        cleanup: bool = False,
        leftovers: bool = False,
    ):
        self.runner = runner
        self._cleanup = cleanup
        self._leftovers = leftovers
        self._flush = flush
        self.display = display
        self._proc = proc
        self._started = time.monotonic()
        self._deadline = None if timeout is None else self._started + timeout
        self._timeout = timeout
        self._ok_codes = tuple(ok_codes)
        self.tail = tail
        self.peak_rss = 0
        self._pidfd: int | None = None
        """The command's pidfd while :meth:`wait` waits (-1: none could be opened;
        _ENDED: it said the command ended, and was closed)."""

    @property
    def pid(self) -> int:
        return self._proc.pid

    def alive(self) -> bool:
        return self._proc.is_alive()

    def _tick(self) -> None:
        """Wait _POLL seconds, or less: until the command exits (its pidfd turns
        readable), which a plain sleep noticed up to _POLL late, on every command a
        next-day pull waits for (restic, zstd). Once it said so, sh may not at once
        (another of its threads reaping the process): a short sleep then, not a spin."""
        if self._pidfd is None:
            try:
                self._pidfd = os.pidfd_open(self._proc.pid)
            except ProcessLookupError:  # ended, and sh reaped it before this opened
                self._pidfd = _ENDED  # (sh 1.14 often; helper-160 F4: 50 ms each)
            except OSError:  # (no pidfd here)
                self._pidfd = -1
        if self._pidfd == _ENDED:
            time.sleep(_ENDED_POLL)
        elif self._pidfd < 0:
            time.sleep(_POLL)
        elif _readable(self._pidfd, _POLL):
            # marked first: a signal between the two must not leave wait's own close to
            # close the number again, maybe another thread's new file (helper-160 F2)
            fd, self._pidfd = self._pidfd, _ENDED
            os.close(fd)

    def _sample_memory(self) -> None:
        try:
            with open(f"/proc/{self._proc.pid}/status", "rb") as handle:
                for line in handle:
                    if line.startswith(b"VmHWM:"):
                        self.peak_rss = max(self.peak_rss, int(line.split()[1]) * 1024)
                        return
        except (OSError, ValueError, IndexError):
            pass  # gone already, or not ours to read

    def stop(self, grace: float = KILL_GRACE) -> None:
        """Send SIGTERM to the command's whole process group, SIGKILL after ``grace``."""
        if not self.alive():
            return
        for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
            try:
                self._proc.process.signal_group(sig)
            except ProcessLookupError:
                return
            end = time.monotonic() + wait
            while time.monotonic() < end:
                if not self.alive():
                    return
                time.sleep(_POLL)

    def _end_leftovers(self) -> None:
        """End what the command left running in its process group (``sh -c 'dump &'``:
        an outside attack saw a dump go on writing after the archive took its file, and
        outlive the run), with a warning: SIGTERM, SIGKILL after :data:`KILL_GRACE`. A
        child still ending its own way gets :data:`_LEFTOVER_GRACE` first."""
        group = self._proc.pid
        end = time.monotonic() + _LEFTOVER_GRACE
        while _group_alive(group):
            if time.monotonic() > end:
                break
            time.sleep(_POLL)
        else:
            return
        self.runner.log.warning(
            "%s left processes running in its process group: they are ended", self.display
        )
        for sig, wait in ((signal.SIGTERM, KILL_GRACE), (signal.SIGKILL, 5.0)):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(group, sig)
            end = time.monotonic() + wait
            while time.monotonic() < end:
                if not _group_alive(group):
                    return
                time.sleep(_POLL)

    def wait(self) -> CommandResult:
        """Wait for the command; return its result or raise.

        Raises:
            CommandTimeout: it ran past its timeout (it and its children were killed).
            CommandError: it exited with a code not in ``ok_codes`` or died by a signal.
        """
        try:
            while self.alive():
                cancel = None if self._cleanup else self.runner.cancel
                if cancel is not None and cancel.is_set():
                    self.stop(grace=5.0)
                    raise CommandError(self.display, None, list(self.tail), "cancelled")
                if self._deadline is not None and time.monotonic() > self._deadline:
                    self.stop()
                    raise CommandTimeout(
                        self.display, None, list(self.tail), f"timed out after {self._timeout:g}s"
                    )
                self._sample_memory()
                self._tick()
            with contextlib.suppress(sh.ErrorReturnCode):
                self._proc.wait()  # exit codes are judged below, the same way for sh 1 and 2
            self._flush()
            code = self._proc.exit_code
            if self._leftovers:
                self._end_leftovers()
        except BaseException:
            # an interrupt (SIGTERM) or a timeout: leave nothing running behind us
            self.stop(grace=5.0)
            raise
        finally:
            fd, self._pidfd = self._pidfd, None  # (marked first, as in _tick)
            if fd is not None and fd >= 0:
                os.close(fd)
        duration = time.monotonic() - self._started
        tail = list(self.tail)
        if code not in self._ok_codes:
            reason = (
                f"killed by {signal.Signals(-code).name}"
                if code < 0
                else f"exited with code {code}"
            )
            self.runner.log.debug("%s: %s after %.1fs", self.display, reason, duration)
            raise CommandError(self.display, code, tail, reason)
        self.runner.log.debug("%s: exit %d after %.1fs", self.display, code, duration)
        return CommandResult(self.display, code, duration, tail, self.peak_rss)


def _readable(fd: int, timeout: float) -> bool:
    """Whether ``fd`` turns readable within ``timeout`` seconds (poll: any fd number)."""
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    return bool(poller.poll(timeout * 1000))


_LEFTOVER_GRACE = 0.5
"""How long a command's process group may take to empty after the command exited."""


def _group_alive(group: int) -> bool:
    """Whether a process of the process group ``group`` is still there (a zombie not yet
    reaped by init counts; one that is no longer ours to signal does not)."""
    try:
        os.killpg(group, 0)
    except (ProcessLookupError, PermissionError):
        return False
    return True


class Runner:
    """Runs commands for one part of pullback (a plugin task, a backend, ...).

    ``secrets`` are masked in everything this runner logs or raises, on top of the
    globally registered ones; ``env`` is added to every command's environment (and never
    logged).
    """

    def __init__(
        self,
        log: Log | None = None,
        secrets: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
    ):
        self.log = log or get_logger("run")
        self.secrets = tuple(s for s in secrets if s)
        self.env = dict(env or {})
        self.cancel: threading.Event | None = None
        """Once set, running commands are stopped (CommandError "cancelled")."""

    def display(self, argv: Sequence[str | os.PathLike]) -> str:
        """The command line as it may be shown: shell-quoted, secrets masked."""
        return secrets.mask(shlex.join(str(a) for a in argv), self.secrets)

    def run(self, argv: Sequence[str | os.PathLike], **kwargs) -> CommandResult:
        """Run a command to completion; same arguments as :meth:`start`.

        Returns the :class:`CommandResult`; raises as :meth:`RunningCommand.wait`.
        """
        return self.start(argv, **kwargs).wait()

    def start(
        self,
        argv: Sequence[str | os.PathLike],
        *,
        timeout: float | None = None,
        cwd: str | os.PathLike | None = None,
        env: Mapping[str, str] | None = None,
        stdin: IO | str | os.PathLike | None = None,
        stdout: IO | str | os.PathLike | None = None,
        ok_codes: Sequence[int] = (0,),
        level: int = logging.INFO,
        cleanup: bool = False,
        leftovers: bool = False,
        reword: Callable[[str], list[tuple[str, bool]]] | None = None,
    ) -> RunningCommand:
        """Start a command in the background and return its handle.

        ``stdin``/``stdout`` may be a path or an open file (given to the child as is);
        without ``stdout`` the output is logged line by line. Standard error is always
        logged. Raises :class:`CommandError` when the program cannot be found, and
        :class:`~pullback.common.errors.Interrupted` when the command is stopping on a
        signal that a caller swallowed (:func:`~pullback.common.signals.refuse_if_stopping`).
        ``cleanup``: a clean-up a stop must not skip (a throwaway database engine shut
        down): started after a signal too, and not stopped by :attr:`cancel`; its
        ``timeout`` still bounds it. ``leftovers``: what the command leaves running in
        its process group when it exits is ended, with a warning (a dump's ``cmd &``;
        never for a command meant to start something, which a ``post`` may be).
        ``reword``: what each line of a command that speaks in records says (``borg
        create --log-json``): the lines to log, each with whether it is words for the
        failure's tail (a listed file's are not: the files listed after a warning
        pushed it out); none for progress. Each line it gives is masked, then escaped
        (one line in the tail, whatever newlines a record's words held).
        """
        if not cleanup:
            refuse_if_stopping()
        args = [os.fspath(a) for a in argv]
        display = self.display(args)
        self.log.log(level, "running: %s", display)
        try:
            program = sh.Command(args[0])
        except sh.CommandNotFound:
            raise CommandError(display, None, [], f"{args[0]}: command not found") from None

        tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
        name = Path(args[0]).name
        logged = [0]

        def echo(line: str) -> None:
            for said, words in [(line, True)] if reword is None else reword(line):
                said_line(said, words)

        def said_line(line: str, words: bool) -> None:
            line = secrets.mask(line, self.secrets)
            if words and not is_stack_frame(line):  # (a Go program's trace would push them out)
                tail.append(escaped(line))  # a store's or client's words: one line each
            logged[0] += 1
            if logged[0] <= MAX_LOGGED_LINES:
                self.log.log(level, "%s: %s", name, line)
            elif logged[0] == MAX_LOGGED_LINES + 1:
                self.log.log(
                    level,
                    "%s: (its output past %d lines is not logged; its last %d lines are "
                    "kept for an error)",
                    name,
                    MAX_LOGGED_LINES,
                    TAIL_LINES,
                )

        out_lines, err_lines = _Lines(echo), _Lines(echo)

        def flush() -> None:
            out_lines.flush()
            err_lines.flush()

        full_env = dict(os.environ)
        full_env.update(self.env)
        full_env.update(env or {})
        opened: list[IO] = []

        def as_file(target, mode):
            if target is None or hasattr(target, "fileno"):
                return target
            handle = open(target, mode)  # noqa: SIM115 - closed once the child has it
            opened.append(handle)
            return handle

        def spawn() -> Any:
            try:
                in_file = as_file(stdin if stdin is not None else os.devnull, "rb")
                out_file = as_file(stdout, "wb")
                options: dict[str, Any] = dict(_SH_VERSION_ARGS)  # sh 1 and 2 differ
                if out_file is None:
                    options["_out_bufsize"] = _CHUNK
                return program(
                    *args[1:],
                    _bg=True,
                    _bg_exc=False,
                    _new_session=True,
                    _preexec_fn=_in_child(os.getpid()),
                    _tty_out=False,
                    _in=in_file,
                    _out=out_file if out_file is not None else out_lines,
                    _err=err_lines,
                    _err_bufsize=_CHUNK,  # chunks, not lines: _Lines cuts them, bounded
                    _env=full_env,
                    _cwd=None if cwd is None else os.fspath(cwd),
                    _ok_code=list(range(256)),
                    _decode_errors="replace",
                    **options,
                )
            except OSError as exc:
                raise CommandError(display, None, [], str(exc)) from None
            except sh.ForkException as exc:  # failed before exec: its traceback's last line
                raise CommandError(display, None, [], _fork_failure(str(exc))) from None
            finally:
                for handle in opened:
                    handle.close()

        started: list[RunningCommand] = []
        try:
            with deferred_signals():  # a signal between fork and handle: a child unknown
                started.append(
                    RunningCommand(
                        self,
                        display,
                        spawn(),
                        timeout,
                        ok_codes,
                        tail,
                        flush=flush,
                        cleanup=cleanup,
                        leftovers=leftovers,
                    )
                )
        except Interrupted:
            for running in started:
                running.stop(grace=5.0)
            raise
        return started[0]
