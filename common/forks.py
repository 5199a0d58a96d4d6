"""Descriptors that a child forked by Python code must not keep: pipe ends and locks.

The archive's compressor and its tester read a pipe until every copy of its write end is
closed. A plugin's hook that forks (``os.fork()``, multiprocessing's fork start method, a
library that daemonizes) gives its child a copy of each, and the run then waited for that
child to end before it could publish (an outside plugin author's child held a run 12 s;
one that lives on would hold it for ever). A lock (an ``flock``) is shared the same way:
a daemonized child held client.lock, and the next run was refused. Every descriptor
registered here is closed in each child forked while it is open; the parent's lock and
pipes are untouched. (``sh`` forks by ``os.fork()`` too before it runs a program: the
registered descriptors are close-on-exec anyway, so there they are only closed sooner.
Never register one that is meant to be handed to a program.)
"""

from __future__ import annotations

import contextlib
import os

_WRITE_ENDS: set[int] = set()


def _close_in_child() -> None:
    for fd in list(_WRITE_ENDS):
        with contextlib.suppress(OSError):
            os.close(fd)
    _WRITE_ENDS.clear()


os.register_at_fork(after_in_child=_close_in_child)


def kept_from_forks(fd: int) -> int:
    """Register ``fd`` (a pipe's write end, a lock's descriptor) to be closed in every
    child forked from now until :func:`close` closes it here; returns it."""
    _WRITE_ENDS.add(fd)
    return fd


def close(fd: int) -> None:
    """Close ``fd`` (registered or not). Raises OSError."""
    _WRITE_ENDS.discard(fd)
    os.close(fd)
