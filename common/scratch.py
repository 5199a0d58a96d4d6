"""The client's scratch directories in the temporary directory, and the ones a killed
command left behind.

A database task's credential files (a MariaDB option file, a pgpass: the password),
a restore's unpacked archive, check's probes and SQLite's copies of a database live in
directories of the temporary directory (``$TMPDIR``, else ``/tmp``), removed when the
command ends, whether it ends well, by an error or by SIGTERM/SIGINT/SIGHUP. A SIGKILL
(the OOM killer, ``kill -9``) leaves them there: Debian 12's ``/tmp`` is no tmpfs and is
only emptied at boot, and only the timer's run has a private one (``PrivateTmp=yes``);
a restore or a check run by hand or over SSH does not.

So each is named ``pullback-KIND-PID-XXXXXXXX``, the process that made it in its name,
and every command that makes one first removes the stale ones (:func:`sweep`): a
directory of that name, of this user, whose process no longer runs. The maker also
holds a shared ``flock`` on it while it lives (released by the kernel however the
process ends): a process of that number is invisible from another PID namespace (a
container or ``unshare`` sharing the temporary directory), its lock is not.
"""

from __future__ import annotations

import fcntl
import os
import re
import stat
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from .log import get_logger
from .trees import remove_tree

log = get_logger()

KINDS = ("cred", "check", "restore", "sqlite")
"""What a scratch directory holds: a task's credential files, check's probes, a
restore's unpacked archive and work, SQLite's private copies of a database."""

MOST_LOOKED = 10_000
"""Entries of the temporary directory :func:`sweep` looks at, at most: a ``/tmp`` of a
million files costs a command no more than a moment (about 20 ms for 10,000). The
directory's order does not change from one command to the next, so a stale directory
past them stays until fewer entries come before it, or the next boot (root's, mode
0700: no other user reads it)."""

_NAME = re.compile(r"pullback-(?:" + "|".join(KINDS) + r")-([1-9][0-9]{0,9})-[A-Za-z0-9_]+\Z")
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC

_swept = False
_held: dict[str, int] = {}
"""This process's scratch directories, each with the descriptor holding its lock."""


@dataclass
class Swept:
    """What :func:`sweep` did: entries looked at, stale directories removed, and
    whether it stopped at its bound before the end."""

    looked: int = 0
    removed: int = 0
    stopped_early: bool = False


def make(kind: str) -> Path:
    """A new directory ``pullback-KIND-PID-XXXXXXXX`` (mode 0700) in the temporary
    directory; the stale ones are removed first, once per process. Raises OSError."""
    global _swept
    if kind not in KINDS:
        raise ValueError(f"no scratch directory kind {kind!r}")
    if not _swept:
        _swept = True
        sweep()
    path = tempfile.mkdtemp(prefix=f"pullback-{kind}-{os.getpid()}-")
    fd = os.open(path, _DIR_FLAGS | os.O_NOFOLLOW)
    fcntl.flock(fd, fcntl.LOCK_SH)
    _held[path] = fd
    return Path(path)


def remove(path: str | os.PathLike[str]) -> None:
    """Remove the scratch directory ``path`` and all in it; what cannot be removed is
    logged as a warning (never raised: the command's own outcome is what matters)."""
    try:
        remove_tree(path)
    except FileNotFoundError:
        pass
    except OSError as exc:
        log.warning("could not remove the scratch directory %s: %s", path, exc)
    finally:
        fd = _held.pop(os.fspath(path), None)
        if fd is not None:
            os.close(fd)


@contextmanager
def directory(kind: str) -> Iterator[Path]:
    """A scratch directory (:func:`make`) for the block, removed after it (:func:`remove`).
    Raises OSError when it cannot be made."""
    path = make(kind)
    try:
        yield path
    finally:
        remove(path)


def sweep(where: str | os.PathLike[str] | None = None, most: int = MOST_LOOKED) -> Swept:
    """Remove the scratch directories that killed commands left in ``where`` (the
    temporary directory by default), looking at ``most`` of its entries at most. Only a
    real directory (never a link, never followed), named as :func:`make` names them,
    owned by this process's user, whose process is gone is removed; a process of that
    number running, whatever it is, keeps it. Nothing is done in a directory that
    others could rename entries of (not sticky and writable by others, or owned by
    another user). Never raises: a problem is a warning. Returns what was done."""
    where = os.fspath(where if where is not None else tempfile.gettempdir())
    swept = Swept()
    try:
        fd = os.open(where, _DIR_FLAGS)
    except OSError as exc:
        log.warning("stale scratch directories not looked for in %s: %s", where, exc)
        return swept
    try:
        if _shared(os.fstat(fd)):
            log.warning(
                "stale scratch directories not looked for in %s: others may write there", where
            )
            return swept
        _sweep_in(fd, where, most, swept)
    except OSError as exc:
        log.warning("stale scratch directories in %s: %s", where, exc)
    finally:
        os.close(fd)
    if swept.removed:
        bound = f" (of its first {most} entries only)" if swept.stopped_early else ""
        log.info(
            "removed %d stale scratch %s of killed pullback commands from %s%s",
            swept.removed,
            "directory" if swept.removed == 1 else "directories",
            where,
            bound,
        )
    return swept


def _shared(found: os.stat_result) -> bool:
    """Whether others may rename the entries of a directory with this status: writable
    by group or others without the sticky bit, or owned by another user than root or
    this process's."""
    writable = found.st_mode & (stat.S_IWGRP | stat.S_IWOTH)
    sticky = found.st_mode & stat.S_ISVTX
    return bool(writable and not sticky) or found.st_uid not in (0, os.geteuid())


def _sweep_in(fd: int, where: str, most: int, swept: Swept) -> None:
    with os.scandir(fd) as entries:
        for entry in entries:
            if swept.looked >= most:
                swept.stopped_early = True
                return
            swept.looked += 1
            try:
                if _stale(entry.name, fd):
                    remove_tree(entry.name, dir_fd=fd)
                    swept.removed += 1
            except FileNotFoundError:
                pass
            except OSError as exc:
                log.warning("could not remove %s: %s", os.path.join(where, entry.name), exc)


def _stale(name: str, dir_fd: int) -> bool:
    """Whether the entry ``name`` of ``dir_fd`` is a scratch directory of this user whose
    process is gone. Raises OSError."""
    matched = _NAME.match(name)
    if matched is None:
        return False
    found = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    if not stat.S_ISDIR(found.st_mode) or found.st_uid != os.geteuid():
        return False
    return not _running(int(matched[1])) and _unlocked(name, dir_fd)


def _unlocked(name: str, dir_fd: int) -> bool:
    """Whether no process holds the lock :func:`make` takes on the directory ``name``
    of ``dir_fd`` (one in another PID namespace does, while it lives). Raises OSError."""
    fd = os.open(name, _DIR_FLAGS | os.O_NOFOLLOW, dir_fd=dir_fd)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    finally:
        os.close(fd)
    return True


def _running(pid: int) -> bool:
    """Whether a process ``pid`` exists (any process: on the safe side)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (OSError, OverflowError):
        return True  # (EPERM: another user's process is running)
    return True
