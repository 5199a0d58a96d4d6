"""SIGTERM as pullback sees it, raised in the main thread after a while (for tests of
what a run does when systemd stops it)."""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterator

from pullback.common.errors import Interrupted


@contextlib.contextmanager
def interrupted_after(seconds: float) -> Iterator[None]:
    """Raise Interrupted(SIGTERM) in the main thread ``seconds`` from now (SIGALRM)."""

    def sigterm(signum, frame):
        raise Interrupted(signal.SIGTERM)

    previous = signal.signal(signal.SIGALRM, sigterm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
