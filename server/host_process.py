"""Each host's pull in a child process of its own, ended by force at its deadline.

A client controls every byte of its answers and of its archive. Whatever those bytes make
a pull do (wait, loop, grow) stays inside one process per host:

- the child pulls the host and ends the pull itself at ``host_timeout`` (its commands
  are stopped, its waits end: see :class:`~.host_pull.HostPull`);
- the parent kills the child, and every process the child started, ``KILL_GRACE``
  seconds after that if it is still there. Nothing a host does can keep the run from
  ending, writing its status, sending its mail and releasing the server lock;
- the child's address space is capped (``pull_memory_limit``): past it the host fails,
  the others go on. The programs it runs (ssh, restic, borg) are not held to that cap;
- a child that crashes or is killed becomes its host's failed result, with what it had
  found out up to its last phase (the repository's snapshots, the archive it chose).

The child speaks to the parent in JSON lines on a pipe: each phase it enters (the parent
keeps the journal) with its result so far, and its final result.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import resource
import select
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from ..common import secrets
from ..common.errors import Interrupted
from ..common.libc import die_with_parent
from ..common.log import TailHandler, get_logger
from ..common.outcome import Status
from ..common.procfs import descendants
from ..common.progress import INTERVAL, STATUS, Progress
from ..common.schema import preload_validator
from ..common.text import printable
from ..common.units import human_duration, human_size
from .config import HostConfig, ServerConfig
from .host import HostContext
from .journal import CONNECTING, STORING, WAITING, Journal
from .results import HostResult

log = get_logger("host")

KILL_GRACE = 30.0
"""How long past its deadline a host's process may take to end itself before it is killed."""
MAX_LOG_MESSAGE = 8000
"""Characters of one log message a child sends (as the parent's log lines hold)."""
MAX_MESSAGE = 1 << 20
"""The longest line a child may send (its result: our own words, warnings capped)."""
_POLL_MS = 200

Progressed = Callable[[HostResult | None, bool], None]
"""What :func:`pull_hosts` tells as it goes: a host's result (None: only time passed),
and whether hosts are still running or waiting."""


class PhaseRelay:
    """The child's side of the pipe: what :class:`~.host_pull.HostPull` sees as its journal."""

    def __init__(self, fd: int):
        self.fd = fd
        self.result: HostResult | None = None
        """The pull's result so far, sent with each phase."""
        self._lock = threading.Lock()  # the pull's threads log too: one line at a time
        self._progress_sent = 0.0

    def phase(self, host: str, phase: str | None) -> None:
        """Tell the parent that the host entered ``phase`` (None: done)."""
        so_far = HostResult.from_dict(self.result.to_dict()).to_dict() if self.result else None
        self.send({"phase": phase, "result": so_far})  # a cleaned copy: words capped

    def progress(self, what: str, done: int, total: int | None) -> None:
        """Tell the parent how far a long step is (at most every INTERVAL seconds)."""
        now = time.monotonic()
        if now - self._progress_sent >= INTERVAL or done == total:
            self._progress_sent = now
            self.send({"progress": [what, done, total]})

    def send(self, message: dict) -> None:
        data = (json.dumps(message) + "\n").encode()
        with self._lock:
            view = memoryview(data)
            while view:
                view = view[os.write(self.fd, view) :]


class _LogRelay(logging.Handler):
    """In the child: every log record goes to the parent, which logs it as its own (its
    handlers: the terminal or journal, the lines kept for the mail). Secrets are masked
    here, where they are known; the message is cut to what one log line may hold."""

    def __init__(self, relay: PhaseRelay):
        super().__init__(logging.DEBUG)
        self.relay = relay
        self._traceback = logging.Formatter()

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = secrets.mask(printable(record.getMessage(), MAX_LOG_MESSAGE))
            trace = (
                secrets.mask(self._traceback.formatException(record.exc_info))
                if record.exc_info
                else None
            )
            self.relay.send({"log": [record.name, record.levelno, message, trace]})
        except Exception:
            self.handleError(record)


def _relay_logs(relay: PhaseRelay) -> None:
    """Send the child's pullback log to the parent instead of to stderr (the lines kept
    for the host's own messages stay)."""
    logger = get_logger()
    for handler in list(logger.handlers):
        if not isinstance(handler, TailHandler):
            logger.removeHandler(handler)
    logger.addHandler(_LogRelay(relay))
    logger.setLevel(logging.DEBUG)


def _log_in_parent(entry: list) -> None:
    """Log a record a child sent (its name, level, message and traceback)."""
    name, level, message, trace = entry
    record = logging.makeLogRecord(
        {
            "name": str(name),
            "levelno": int(level),
            "levelname": logging.getLevelName(int(level)),
            "msg": "%s",
            "args": (str(message),),
            "exc_text": str(trace) if trace else None,
        }
    )
    logging.getLogger(str(name)).handle(record)


Work = Callable[[HostContext, PhaseRelay], HostResult]
"""One host's pull, run in its child: it reports its phases through the relay."""


@dataclass
class _Child:
    """The parent's view of one host's process."""

    host: HostConfig
    pid: int
    fd: int
    kill_at: float
    data: bytearray = field(default_factory=bytearray)
    phase: str | None = None
    partial: dict | None = None
    result: HostResult | None = None
    killed: str = ""
    """Why the parent killed it (empty: it was not killed)."""
    progress: Progress | None = None
    """How far its long step is (for the terminal's status line)."""

    def status(self) -> str | None:
        """What the terminal's status line says of this host (None: its pull has ended,
        it is only reporting)."""
        if self.progress is not None:
            return f"{self.host.name}: {self.progress.text()}"
        if self.phase is None:
            return None if self.partial is not None else f"{self.host.name}: starting"
        return f"{self.host.name}: {self.phase}"

    def take(self, chunk: bytes, journal: Journal | None) -> None:
        """Read the complete lines of what the child sent."""
        self.data += chunk
        while b"\n" in self.data:
            line, _, rest = bytes(self.data).partition(b"\n")
            self.data = bytearray(rest)
            self._message(line, journal)
        if len(self.data) > MAX_MESSAGE:
            raise ValueError("a message from a host's process is too long")

    def _message(self, line: bytes, journal: Journal | None) -> None:
        message = json.loads(line)
        if "log" in message:
            _log_in_parent(message["log"])
            return
        if "final" in message:
            self.result = HostResult.from_dict(message["final"])
            return
        if "progress" in message:
            what, done, total = message["progress"]
            if self.progress is None or self.progress.label != what:
                self.progress = Progress(printable(what, 20), total, start=int(done))
            self.progress.done = int(done)
            return
        self.phase, self.partial = message.get("phase"), message.get("result")
        self.progress = None
        if journal is not None:
            journal.phase(self.host.name, self.phase)


def told_no_one(result: HostResult | None, busy: bool) -> None:
    """The ``progress`` of a caller that wants none."""


def pull_hosts(
    config: ServerConfig,
    hosts: list[HostConfig],
    work: Work,
    journal: Journal | None = None,
    parent_only: tuple[int, ...] = (),
    progress: Progressed = told_no_one,
) -> list[HostResult]:
    """Run ``work`` for every host, each in a child process, ``parallel`` at a time.

    Returns the results in the order of ``hosts``. On SIGTERM (Interrupted) the children
    are told to stop, waited for (at most KILL_GRACE) or killed, and Interrupted is
    raised again. A host killed while storing stays in the journal (``journal.end``
    keeps it), so that the next pull removes the repository lock it may have left.
    ``parent_only``: descriptors a child closes first (the server lock: a child that
    outlived its parent must not hold it). ``progress``: told each host's result as its
    process ends, and None every :data:`_POLL_MS` besides, with whether hosts are still
    running or waiting (so that one slow host does not hold the others' records back)."""
    waiting = list(hosts)
    running: dict[int, _Child] = {}
    results: dict[str, HostResult] = {}
    cut: dict[str, str] = {}
    poller = select.poll()
    if journal is not None:
        journal.waiting([h.name for h in hosts])
    if len(hosts) > 1:  # once, not in every child
        preload_validator(background=False)
    try:
        while waiting or running:
            while waiting and len(running) < config.parallel:
                child = _begin(config, waiting.pop(0), work, journal, parent_only)
                running[child.fd] = child
                poller.register(child.fd, select.POLLIN | select.POLLHUP)
            for fd, _ in poller.poll(_POLL_MS):
                child = running[fd]
                if _read(child, journal):
                    _show(child)
                    continue
                poller.unregister(fd)
                del running[fd]
                STATUS.drop(child.host.name)
                results[child.host.name] = _reap(config, child, cut)
                progress(results[child.host.name], len(waiting) + len(running) > 0)
            _kill_late(config, running.values())
            progress(None, len(waiting) + len(running) > 0)
    except Interrupted as exc:
        if journal is not None:  # no status file will say it: the journal keeps them
            _journal_stop(journal, list(running.values()), waiting, exc)
        _stop_all(list(running.values()))
        raise
    finally:
        for child in running.values():
            os.close(child.fd)
        if journal is not None:
            journal.keep(cut)
    return [results[h.name] for h in hosts]


def _begin(
    config: ServerConfig,
    host: HostConfig,
    work: Work,
    journal: Journal | None,
    parent_only: tuple[int, ...],
) -> _Child:
    """Start ``host``'s process, the journal saying so first (a kill finds it named)."""
    if journal is not None:
        journal.phase(host.name, CONNECTING)
    return _start(config, host, work, parent_only)


def _journal_stop(
    journal: Journal, running: list[_Child], waiting: list[HostConfig], exc: Interrupted
) -> None:
    """Keep in ``journal`` the hosts a signal cut: those ``running`` in their phase, those
    ``waiting`` as never started."""
    doing = {child.host.name: child.phase or CONNECTING for child in running}
    doing |= dict.fromkeys((host.name for host in waiting), WAITING)
    journal.stop(doing, signal.Signals(exc.signum).name)


def _show(child: _Child) -> None:
    """The child's progress on the terminal's status line (or none)."""
    shown = child.status()
    if shown is None:
        STATUS.drop(child.host.name)
    else:
        STATUS.show(child.host.name, shown)


def _kill_late(config: ServerConfig, children: Iterable[_Child]) -> None:
    """Kill each child past its deadline (``host_timeout`` and KILL_GRACE)."""
    for child in children:
        if time.monotonic() > child.kill_at:
            limit = human_duration(config.host_timeout)
            _kill(
                child,
                f"timed out after {limit} (host_timeout): its pull did not stop by "
                f"itself and was killed {human_duration(KILL_GRACE)} later",
            )


def _read(child: _Child, journal: Journal | None) -> bool:
    """Read what the child sent; False at its end (or when it sends nonsense: killed)."""
    try:
        chunk = os.read(child.fd, 1 << 16)
        if chunk:
            child.take(chunk, journal)
            return True
    except (OSError, ValueError) as exc:
        _kill(child, f"its pull process sent what it may not ({exc}) and was killed")
    os.close(child.fd)
    return False


def _start(
    config: ServerConfig, host: HostConfig, work: Work, parent_only: tuple[int, ...]
) -> _Child:
    read_end, write_end = os.pipe2(os.O_CLOEXEC)
    sys.stdout.flush()
    sys.stderr.flush()
    parent = os.getpid()
    pid = os.fork()
    if pid == 0:  # the child: never returns
        die_with_parent(parent)  # killed outright, the parent cannot end it at its deadline
        os.close(read_end)
        for fd in parent_only:
            with contextlib.suppress(OSError):
                os.close(fd)
        code = 70
        try:
            code = _child_main(config, host, work, write_end)
        except BaseException:
            log.exception("[%s] the host's pull process failed", host.name)
        finally:
            os._exit(code)
    os.close(write_end)
    kill_at = time.monotonic() + config.host_timeout + KILL_GRACE
    return _Child(host, pid, read_end, kill_at)


def _child_main(config: ServerConfig, host: HostConfig, work: Work, fd: int) -> int:
    """Pull ``host`` in this (child) process; return its exit code."""
    os.setpgid(0, 0)
    limit = config.pull_memory_limit
    if limit:
        _, hard = resource.getrlimit(resource.RLIMIT_AS)
        if hard == resource.RLIM_INFINITY or limit < hard:
            resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
    preload_validator(background=True)
    relay = PhaseRelay(fd)
    _relay_logs(relay)
    STATUS.enabled = False  # the parent draws the status line
    ctx = HostContext.open(config, host)
    ctx.progress = relay.progress
    done: list[HostResult] = []
    finished = threading.Event()

    def pull() -> None:
        try:
            done.append(work(ctx, relay))
        except Interrupted:
            pass  # a tool refused after the signal: the process ends by it (130)
        finally:
            finished.set()

    threading.Thread(target=pull, name="pull").start()
    interrupted = False
    # An Event, not Thread.join(timeout): on CPython 3.11 a join cut by the signal
    # handler's exception marks the thread ended while it runs on (helper-99: the
    # process exited at once and left its restic or borg storing)
    while not finished.is_set():
        try:
            finished.wait(0.1)
        except Interrupted:  # SIGTERM: the pull stops as at its deadline
            interrupted = True
            ctx.cancel.set()
    if done:
        result = done[0]
        result.peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        relay.send({"final": result.to_dict()})
    sys.stdout.flush()
    sys.stderr.flush()
    return 130 if interrupted else 0


def _reap(config: ServerConfig, child: _Child, cut: dict[str, str]) -> HostResult:
    """The child's result, or a failed one saying how its process ended."""
    _, status, usage = os.wait4(child.pid, 0)
    if child.result is not None and not child.killed:
        return child.result
    name = child.host.name
    result = HostResult.from_dict(child.partial) if child.partial else HostResult(name)
    result.status = Status.FAILED
    result.peak_rss = usage.ru_maxrss * 1024
    if child.killed:
        result.reason = child.killed
    elif os.WIFSIGNALED(status):
        signame = signal.Signals(os.WTERMSIG(status)).name
        result.reason = f"its pull process died ({signame})"
    else:
        code = os.waitstatus_to_exitcode(status)
        result.reason = f"its pull process ended without a result (exit {code})"
    if config.pull_memory_limit and not child.killed:
        memory = human_size(config.pull_memory_limit)
        result.reason += f"; it may have reached pull_memory_limit ({memory})"
    result.reason += "; nothing more was stored"
    if child.phase == STORING:
        cut[name] = STORING
        result.warnings.append(
            "it was cut while storing: the next pull removes the lock it may have left"
        )
    log.error("[%s] %s: %s", name, result.status, result.reason)
    return result


def _kill(child: _Child, why: str) -> None:
    """Kill the child and every process it started (they run in sessions of their own)."""
    if child.killed:
        return
    child.killed = why
    family = descendants(child.pid)
    for pid in [child.pid, *family]:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)


def _stop_all(children: list[_Child]) -> None:
    """SIGTERM: each child stops as at its deadline; those still there after KILL_GRACE
    are killed. Reaps them all."""
    for child in children:
        with contextlib.suppress(ProcessLookupError):
            os.kill(child.pid, signal.SIGTERM)
    ends = time.monotonic() + KILL_GRACE
    for child in children:
        while os.waitpid(child.pid, os.WNOHANG) == (0, 0):
            if time.monotonic() > ends:
                _kill(child, "stopped by SIGTERM")
                os.waitpid(child.pid, 0)
                break
            time.sleep(0.1)
