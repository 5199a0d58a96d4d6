"""A deadline for a whole conversation over sockets (a mail's SMTP, a ping's HTTP).

A socket's timeout bounds each wait, not the conversation: a server that answers a byte
at a time never lets one wait run out, and would hold the run (and the client's lock) as
long as it liked. :class:`Watchdog` shuts the conversation's sockets at its deadline, so
that a read or write waiting in one returns at once, with an error.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Callable
from types import TracebackType


class Watchdog:
    """Shuts the sockets of a conversation ``seconds`` after it is entered (a context
    manager): those given to :meth:`watch`, and the one ``current`` returns at that time
    (None: none). :attr:`fired` says whether the deadline came. Leaving the context
    waits for a cut under way, then closes the duplicates :meth:`watch` kept."""

    def __init__(self, seconds: float, current: Callable[[], socket.socket | None] = lambda: None):
        self.fired = threading.Event()
        self._current = current
        self._watched: list[socket.socket] = []
        self._lock = threading.Lock()
        self._timer = threading.Timer(seconds, self._cut)
        self._timer.daemon = True

    def watch(self, sock: socket.socket) -> socket.socket:
        """Shut ``sock``'s connection too at the deadline (at once when it has passed).
        Returns ``sock``. A duplicate of its descriptor is kept: shutting it ends the
        connection whatever became of ``sock`` (TLS takes a socket's descriptor over)."""
        duplicate = sock.dup()
        with self._lock:
            self._watched.append(duplicate)
            passed = self.fired.is_set()
        if passed:
            _shut(duplicate)
        return sock

    def _cut(self) -> None:
        """The deadline: every watched socket shut."""
        with self._lock:
            self.fired.set()
            found = [*self._watched, self._current()]
        for sock in found:
            if sock is not None:
                _shut(sock)

    def __enter__(self) -> Watchdog:
        self._timer.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self._timer.cancel()
        # a deadline met as the conversation ends: its cut ends before the duplicates are
        # closed (it could shut a descriptor number another thread had opened by then)
        self._timer.join()
        with self._lock:
            watched, self._watched = self._watched, []
        for duplicate in watched:
            duplicate.close()


def _shut(sock: socket.socket) -> None:
    """End ``sock``'s connection both ways (an error already there: nothing to end)."""
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
