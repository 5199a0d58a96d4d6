"""Locks that die with their owner, and say who holds them.

A lock is an ``flock`` on a small file that also records its owner (pid, host, start
time, purpose) as JSON. The kernel releases the flock when the owner dies, so a lock
can never be held by a dead process; a record left behind by a dead owner is reported
as a stale lock and taken over with a warning.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path

from . import forks
from .clock import iso, utc_now
from .errors import LockBusy
from .fsutil import atomic_write
from .log import get_logger

log = get_logger("lock")
PUBLIC_SUFFIX = "-owner"


@dataclass(frozen=True)
class LockOwner:
    """Who holds (or last held) a lock."""

    pid: int
    host: str
    started: str
    purpose: str = ""

    def describe(self) -> str:
        what = f" ({self.purpose})" if self.purpose else ""
        return f"pid {self.pid} on {self.host}{what}, since {self.started}"


def _read_owner(fd: int) -> LockOwner | None:
    os.lseek(fd, 0, os.SEEK_SET)
    raw = os.read(fd, 4096)
    if not raw.strip():
        return None
    try:
        data = json.loads(raw)
        return LockOwner(
            int(data["pid"]), str(data["host"]), str(data["started"]), str(data.get("purpose", ""))
        )
    except (ValueError, KeyError, TypeError):
        return LockOwner(0, "?", "?", "unreadable lock record")


class FileLock:
    """An exclusive lock on ``path``; use as a context manager or call acquire/release."""

    def __init__(self, path: str | os.PathLike, purpose: str = ""):
        self.path = Path(path)
        self.purpose = purpose
        self._fd: int | None = None

    def acquire(self, wait: float = 0.0) -> FileLock:
        """Take the lock, waiting up to ``wait`` seconds for a live holder.

        Returns self. Raises :class:`LockBusy` naming the holder when it stays busy.
        """
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # never through a link, and only for its owner: whoever can open a lock file can
        # hold it (flock needs no write access); who holds it is told by :attr:`public`
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        with contextlib.suppress(OSError):
            if os.fstat(fd).st_uid == os.geteuid():
                os.fchmod(fd, 0o600)
        deadline = time.monotonic() + wait
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EACCES):
                    os.close(fd)
                    raise
                if time.monotonic() >= deadline:
                    owner = _read_owner(fd)
                    os.close(fd)
                    holder = owner.describe() if owner else "another process"
                    raise LockBusy(f"{self.path} is locked by {holder}") from None
                time.sleep(min(0.2, max(0.01, deadline - time.monotonic())))
        stale = _read_owner(fd)
        if stale is not None:
            log.warning(
                "breaking stale lock %s: its owner is gone (%s)", self.path, stale.describe()
            )
        record = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": iso(utc_now()),
            "purpose": self.purpose,
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(record) + "\n").encode(), 0)
        self._fd = forks.kept_from_forks(fd)  # (a plugin's forked child holds no lock)
        with contextlib.suppress(OSError):  # only for the curious: never fails the lock
            atomic_write(self.public, json.dumps(record) + "\n", mode=0o644)
        return self

    @property
    def public(self) -> Path:
        """Beside the lock, readable by all while it is held: who holds it (see
        :func:`lock_status`)."""
        return self.path.with_name(self.path.name + PUBLIC_SUFFIX)

    def descriptors(self) -> tuple[int, ...]:
        """The open descriptor that holds the lock (none when it is not held): a child
        process that must not hold the lock closes it."""
        return () if self._fd is None else (self._fd,)

    def release(self) -> None:
        """Clear the owner record and drop the lock (the file stays, to avoid races)."""
        if self._fd is None:
            return
        with contextlib.suppress(OSError):
            self.public.unlink()
        with contextlib.suppress(OSError):
            os.ftruncate(self._fd, 0)
        forks.close(self._fd)  # closing drops the flock
        self._fd = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def __enter__(self) -> FileLock:
        return self if self.held else self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def lock_status(path: str | os.PathLike) -> LockOwner | None:
    """Return the live holder of the lock at ``path``, or None when nobody holds it.

    Reads only the public record beside the lock (an unprivileged reader such as the
    serve endpoint cannot open the lock itself, so it cannot hold it either); a record
    whose process is gone is a holder that died: None."""
    public = Path(path).with_name(Path(path).name + PUBLIC_SUFFIX)
    try:
        fd = os.open(public, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        owner = _read_owner(fd)
    finally:
        os.close(fd)
    if owner is None or owner.pid <= 0:
        return owner
    try:
        os.kill(owner.pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass  # alive, another user's (root's)
    return owner
