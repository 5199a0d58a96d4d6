"""What every per-host step of the server works with: one :class:`HostContext`.

A pull (:mod:`.host_pull`), maintenance (:mod:`.maintain`), a drill (:mod:`.verify`), and
``snapshots``/``restore`` all act on one host's repository with the same settings, the
same ``[host]`` log prefix, a command runner that stops when the host is cancelled, and
the backend built for that host.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, TypeVar

from ..common.errors import Interrupted
from ..common.log import PrefixAdapter, get_logger
from ..common.runner import Runner
from ..common.units import human_duration
from .backends import Backend, Role, make_backend
from .config import HostConfig, ServerConfig

T = TypeVar("T")


class Deadline:
    """A time limit on a host's work (``with Deadline(...) as limit:``): once ``seconds``
    have passed it sets the host's ``cancel`` event, which stops the command running
    (CommandError "cancelled") and every later one, and :attr:`passed` is True. Leaving
    the block clears the event again when this limit set it and no enclosing limit on
    the same event has passed: a drill's limit stops the drill, not the work after it
    (the maintenance of the next host of a group); a signal still stops everything (the
    runner starts nothing once one came). A limit past what a timer can wait is none."""

    _open: ClassVar[dict[int, list[Deadline]]] = {}
    """The limits in force, innermost last, by the id of their event."""
    _lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(self, cancel: threading.Event, seconds: float, setting: str):
        self.cancel = cancel
        self.seconds = seconds
        self.setting = setting
        """The setting that gave ``seconds``, named in :attr:`words`."""
        self.passed = False
        self._closed = False
        self._timer: threading.Timer | None = None
        if 0 < seconds < threading.TIMEOUT_MAX:
            self._timer = threading.Timer(seconds, self._fire)
            self._timer.daemon = True

    def __enter__(self) -> Deadline:
        if self._timer is not None:
            self._timer.start()  # (first: a thread that cannot start leaves no entry)
        with Deadline._lock:
            Deadline._open.setdefault(id(self.cancel), []).append(self)
        return self

    def __exit__(self, *_: object) -> None:
        if self._timer is not None:
            self._timer.cancel()
        with Deadline._lock:
            self._closed = True  # (a timer already firing sets nothing now)
            stack = Deadline._open.get(id(self.cancel), [])
            if self in stack:
                stack.remove(self)
            if not stack:
                Deadline._open.pop(id(self.cancel), None)
            if self.passed and not any(outer.passed for outer in stack):
                self.cancel.clear()

    def _fire(self) -> None:
        with Deadline._lock:
            if self._closed:
                return
            self.passed = True
            self.cancel.set()

    @property
    def words(self) -> str:
        """``stopped at SETTING (DURATION)``."""
        return f"stopped at {self.setting} ({human_duration(self.seconds)})"


@dataclass
class HostContext:
    """One host's settings and the tools every step uses on it."""

    config: ServerConfig
    host: HostConfig
    log: PrefixAdapter
    runner: Runner
    backend: Backend
    cancel: threading.Event = field(default_factory=threading.Event)
    """Set at the host's deadline or on SIGTERM: running commands stop, waits end."""
    progress: Callable[[str, int, int | None], None] = field(default=lambda *_: None)
    """Told how far a long step is: (what, bytes done, bytes expected or None). A host's
    pull process sends it to the parent, which shows it on a terminal."""

    @classmethod
    def open(
        cls,
        config: ServerConfig,
        host: HostConfig,
        cancel: threading.Event | None = None,
        role: Role = Role.PULL,
    ) -> HostContext:
        """The context of ``host``: its logger, a cancellable runner and its backend,
        reaching the repository where ``role`` does (maintenance: the endpoint that may
        delete, see :mod:`.backends.location`)."""
        cancel = cancel or threading.Event()
        log = PrefixAdapter(get_logger("host"), host.name)
        runner = Runner(log)
        runner.cancel = cancel
        backend = make_backend(
            config.backend,
            host,
            config.state_dir,
            runner,
            config.maintenance.repository_lock_wait,
            role,
        )
        return cls(config, host, log, runner, backend, cancel)

    @property
    def name(self) -> str:
        return self.host.name

    @property
    def staging(self) -> Path:
        """The host's staging tree, kept between pulls."""
        return self.config.staging_dir(self.host.name)

    @property
    def partial_dir(self) -> Path:
        """Where a download in progress lies, kept for resuming."""
        return self.config.partial_dir(self.host.name)


def for_each_host(
    config: ServerConfig,
    hosts: list[HostConfig],
    work: Callable[[HostContext], T],
    role: Role = Role.PULL,
) -> list[T]:
    """Run ``work`` on every host's context (for ``role``), ``parallel`` hosts at a time,
    and return the results in the order of ``hosts``. ``work`` must report its own
    failures; SIGTERM (Interrupted, in the main thread) cancels every host and is raised
    again."""
    cancels = {h.name: threading.Event() for h in hosts}

    def one(host: HostConfig) -> T:
        return work(HostContext.open(config, host, cancels[host.name], role))

    with ThreadPoolExecutor(max_workers=config.parallel, thread_name_prefix="host") as pool:
        futures = [pool.submit(one, h) for h in hosts]
        try:
            while not all(f.done() for f in futures):
                time.sleep(0.1)  # the main thread stays free for SIGTERM
        except Interrupted:
            for event in cancels.values():
                event.set()
            for future in futures:
                future.cancel()
            raise
        return [f.result() for f in futures]
