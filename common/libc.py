"""The C library, for the few calls Python's ``os`` does not make (``prctl``,
``fallocate64``, ``fstatfs``, ``syncfs``): loaded once, as this module is imported, so
that a forked child never loads it (a library load after ``fork`` in a process with
threads may wait forever on a lock another thread held)."""

from __future__ import annotations

import ctypes
import os
import signal
from typing import Any

_PR_SET_PDEATHSIG = 1

try:
    _LIBC: Any = ctypes.CDLL(None, use_errno=True)
except OSError:  # pragma: no cover - a libc is always there on Debian
    _LIBC = None


def libc() -> Any:
    """The C library with ``errno`` kept (``ctypes.get_errno``). Raises OSError when
    there is none (never on Debian)."""
    if _LIBC is None:  # pragma: no cover
        raise OSError("no C library could be loaded")
    return _LIBC


def die_with_parent(parent: int) -> None:
    """In a forked child: have the kernel kill this process with SIGKILL when the
    thread that forked it ends (``PR_SET_PDEATHSIG``), so that a parent killed outright
    (SIGKILL, the OOM killer) leaves nothing working on; and end at once (exit 70) when
    ``parent`` (the parent's pid) had already died before this call."""
    if _LIBC is not None:
        _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:
        os._exit(70)
