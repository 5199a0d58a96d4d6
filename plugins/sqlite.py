"""The ``sqlite`` task: online backup API copies, checked with ``integrity_check``."""

from __future__ import annotations

import contextlib
import os
import secrets
import sqlite3
import stat
import sys
from pathlib import Path

from ..common import scratch
from ..common.errors import CommandError, CommandTimeout
from ..common.fsutil import copy_range, make_dirs_at
from ..common.text import counted, printable
from . import hookimpl, load_plugin_schema
from ._common import timeout
from .sqlite_copy import COMPANIONS, backup_into, uri
from .task import KeyProblem, Task, TaskError, TaskType


@hookimpl
def pullback_task_types():
    return [
        TaskType(
            "sqlite",
            load_plugin_schema("sqlite"),
            description="SQLite databases (online backup API)",
            restores_below_target=True,
        )
    ]


def staged_path(task: Task, path: str) -> Path:
    return task.staging / path.lstrip("/")


def _not_a_database(path: str) -> str | None:
    """Why ``path`` cannot be a database file (missing, or another kind of file), or
    None."""
    if not os.path.lexists(path):
        return "does not exist"
    if os.path.isdir(path):
        return "is a directory, not a database file"
    if not os.path.isfile(path):
        return "is not a regular file (a database is one)"
    return None


@hookimpl
def pullback_validate(task: Task):
    return [
        KeyProblem(("paths", index), f"database {path} {why}")
        for index, path in enumerate(task.config["paths"])
        if (why := _not_a_database(path))
    ]


@hookimpl
def pullback_plan(task: Task):
    return [f"online backup of {p}, then PRAGMA integrity_check" for p in task.config["paths"]]


def _copy(source: Path, target: Path, busy_timeout: int, writable: bool = False) -> None:
    """Copy the database ``source`` (a file of root's private directory: SQLite opens
    its companions by name) to ``target``; ``writable`` lets SQLite roll back a hot
    journal or replay a -wal beside it first (read-only, it refuses a hot journal).
    Raises sqlite3.Error."""
    src = sqlite3.connect(source) if writable else sqlite3.connect(uri(source), uri=True)
    try:
        src.execute(f"PRAGMA busy_timeout = {int(busy_timeout) * 1000}")
        backup_into(src, target)
    finally:
        src.close()


def _check(target: Path, full: bool) -> None:
    db = sqlite3.connect(uri(target), uri=True)
    try:
        pragma = "integrity_check" if full else "quick_check"
        rows = [r[0] for r in db.execute(f"PRAGMA {pragma}")]
    finally:
        db.close()
    if rows != ["ok"]:
        raise TaskError(f"the copy of {target.name} fails {pragma}: {'; '.join(rows[:3])}")


@hookimpl
def pullback_dump(task: Task):
    for path in task.config["paths"]:
        if why := _not_a_database(path):
            raise TaskError(f"database {path} {why}")
        target = staged_path(task, path)
        target.parent.mkdir(parents=True, exist_ok=True)
        _copy_live(task, path, target)
        try:
            _check(target, task.config["integrity_check"])
        except sqlite3.Error as exc:
            raise TaskError(f"cannot copy {path}: {exc}") from None
        st = os.stat(path)
        if os.geteuid() == 0:
            os.chown(target, st.st_uid, st.st_gid)
        os.chmod(target, st.st_mode & 0o7777)
        os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns))
        task.log.info("copied %s (%d bytes), integrity ok", path, target.stat().st_size)


def _copy_live(task: Task, path: str, target: Path) -> None:
    """The live database ``path`` copied to ``target`` by :mod:`.sqlite_copy`, in a
    process of its own that the section's ``timeout``, ``run_timeout`` and SIGTERM end
    wherever it is (SQLite's C code waited for ever on a FIFO planted as its journal).
    Raises TaskError."""
    # -I and /: python -m puts its working directory first on sys.path, and root's
    # caller may stand in a directory another user writes (helper-131 ran its code so)
    argv = [sys.executable, "-I", "-m", "pullback.plugins.sqlite_copy", path, str(target)]
    try:
        busy = str(task.config["busy_timeout"])
        task.run([*argv, busy], timeout=timeout(task), level=10, cwd="/")
    except CommandTimeout as exc:
        raise TaskError(f"cannot copy {path}: {exc.reason} (the sqlite task's timeout)") from None
    except CommandError as exc:
        said = exc.tail[-1] if exc.tail else exc.reason
        raise TaskError(f"cannot copy {path}: {said}") from None


_NEW = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_LIVE = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


def _open_directory(directory: Path) -> int:
    """``directory`` opened by descriptors through symlinks only root could have made
    (:func:`.open_trusted_dir`); made by descriptor when missing (:func:`.make_dirs_at`).
    Raises TaskError."""
    try:
        return make_dirs_at(directory)
    except OSError as exc:
        raise TaskError(
            f"cannot restore into {printable(directory, 200)}: {exc.strerror or exc} (a "
            "symlink there another user could have made is refused); nothing was replaced"
        ) from None


def _take(dir_fd: int, name: str, into: Path) -> os.stat_result | None:
    """The live file ``name`` below ``dir_fd`` copied, byte for byte, to ``into`` (a
    path in root's private directory): opened without following a symlink and checked
    to be a regular file (its owner could swap in a symlink to root's files, or a FIFO);
    returns what was read, or None when it is not there. Raises TaskError, OSError."""
    try:
        fd = os.open(name, _LIVE, dir_fd=dir_fd)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise TaskError(
            f"cannot read {name}: {exc.strerror or exc} (a symlink is not followed)"
        ) from None
    try:
        found = os.fstat(fd)
        if not stat.S_ISREG(found.st_mode):
            raise TaskError(f"{name} is not a regular file now; nothing was replaced")
        out = os.open(into, _NEW, 0o600)
        try:
            copy_range(fd, out, 0, found.st_size)
        finally:
            os.close(out)
        return found
    finally:
        os.close(fd)


def _kept_copy(private: Path, busy: int) -> Path:
    """One file of the live database taken into ``private`` (``live``, with ``live-wal``
    and ``live-journal`` when it had them): the backup API's copy of what was committed
    (SQLite rolls a hot journal back, replays the -wal, in the private copy), or, when
    SQLite cannot read it (a damaged database: the usual reason to restore), its bytes
    as they were (its companions are then kept beside it: :func:`_keep_companions`)."""
    consolidated = private / "kept"
    try:
        _copy(private / "live", consolidated, busy, writable=True)
        return consolidated
    except sqlite3.DatabaseError:
        consolidated.unlink(missing_ok=True)
        return private / "live"


def _keep(dir_fd: int, name: str, keep: str, busy: int) -> bool:
    """Keep the live database ``name`` below ``dir_fd`` as ``keep``: what was committed
    in it, or its bytes and its -wal/-journal as they were (``keep-wal``,
    ``keep-journal``: SQLite finds them beside it). Returns False when there is none.
    Raises TaskError, OSError."""
    with scratch.directory("sqlite") as private:
        read = _take(dir_fd, name, private / "live")
        if read is None:
            return False
        for suffix in ("-wal", "-journal"):
            _take(dir_fd, f"{name}{suffix}", private / f"live{suffix}")
        kept = _kept_copy(private, busy)
        if kept.name == "live":  # as its bytes were: its companions too
            for suffix in ("-wal", "-journal"):
                if (private / f"live{suffix}").exists():
                    staged = _stage(dir_fd, keep + suffix, private / f"live{suffix}", read)
                    os.rename(staged, keep + suffix, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        staged = _stage(dir_fd, keep, kept, read)
        os.rename(staged, keep, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        return True


def _stage(dir_fd: int, name: str, source: Path, like: os.stat_result) -> str:
    """A new file in the directory ``dir_fd`` holding ``source``'s bytes (a file of
    root's private directory), with the owner and mode of ``like``, durably: made with
    ``O_EXCL | O_NOFOLLOW`` under a random name (no one's symlink is followed), 0600
    until full. Returns its name."""
    staged = f".{name}.{secrets.token_hex(6)}.pullback-restore"
    out = os.open(staged, _NEW, 0o600, dir_fd=dir_fd)
    try:
        with open(source, "rb") as handle:
            copy_range(handle.fileno(), out, 0, os.fstat(handle.fileno()).st_size)
        if os.geteuid() == 0:
            os.fchown(out, like.st_uid, like.st_gid)
        os.fchmod(out, stat.S_IMODE(like.st_mode))
        os.fsync(out)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(staged, dir_fd=dir_fd)
        raise
    finally:
        os.close(out)
    return staged


def _drop_companions(dir_fd: int, name: str) -> None:
    """Remove the -wal, -shm and -journal files of the database ``name`` (stale once it
    is replaced); an entry, never what it points at."""
    for suffix in COMPANIONS:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(f"{name}{suffix}", dir_fd=dir_fd)


def _place(copy: Path, destination: Path, busy_timeout: int, keep: str | None = None) -> bool:
    """Write ``copy`` to ``destination`` (its owner and mode), replacing it in one
    rename; the old file's -wal/-shm/-journal companions go. With ``keep``, the live
    database there is first kept as ``keep`` beside it (owner and mode of what was
    read). SQLite only ever opens files of root's private directory (it reopens a path
    by name and follows symlinks: an outside attack made it write and read through a
    /proc descriptor path); the database's directory, which its owner (the application's
    user) may change at any moment, is touched by descriptors only: its files read
    without following a symlink, new ones made under random names with ``O_EXCL``,
    renamed into place. Returns whether something was kept. Raises TaskError,
    sqlite3.Error, OSError."""
    dir_fd = _open_directory(destination.parent)
    try:
        with scratch.directory("sqlite") as private:
            kept = keep is not None and _keep(dir_fd, destination.name, keep, busy_timeout)
            _copy(copy, private / "new", busy_timeout)
            staged = _stage(dir_fd, destination.name, private / "new", copy.stat())
            _drop_companions(dir_fd, destination.name)
            os.rename(staged, destination.name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
            os.fsync(dir_fd)
            return kept
    finally:
        os.close(dir_fd)


def _aside(destination: Path, plan, beside: bool) -> Path:
    """The file a restore writes next to ``destination``: the restored copy (``beside``:
    neither ``--replace`` nor ``--target``), or the database there that it keeps."""
    word = "restored" if beside else "before-restore"
    return destination.with_name(f"{destination.name}.{word}-{plan.stamp}")


@hookimpl
def pullback_restore(task: Task, source: Path, target: Path | None, dry_run: bool, plan):
    """Each copy is checked (``integrity_check``), then lands beside its database as
    ``<path>.restored-<stamp>``; with ``--replace`` (or below ``--target``) it replaces
    the database there atomically, the replaced one kept as
    ``<path>.before-restore-<stamp>``, and is refused while a process has it open: stop
    the application first (a docker or systemd task of the same service does that).
    Copies are written as :func:`_place` says."""
    try:
        _restore(task, source, target, plan)
    except sqlite3.Error as exc:
        raise TaskError(f"restore of a SQLite database failed: {exc}") from None


def _preflight(
    copy: Path, destination: Path, aside: Path, beside: bool, plan, log, *, holders: list[str]
) -> list[str]:
    """What stops the restore of the snapshot's ``copy`` to ``destination`` (``aside``
    being what it writes beside it, or keeps there), found before anything is changed:
    a copy missing or failing ``integrity_check``; a directory (or a file of another
    kind) where the database is to go; a file an earlier restore kept; processes that
    have the database it replaces open (the application still running: its writes
    after the keep, into the replaced file, would be lost; an outside attack lost 311 of
    427 rows so). Raises sqlite3.Error."""
    if not copy.is_file():
        return [f"{copy} is not in the restored snapshot"]
    _check(copy, True)
    problems = []
    if os.path.lexists(aside):
        problems.append(f"{aside} exists already (a restore in the same second?); try again")
    if beside or not os.path.lexists(destination):
        return problems
    if not destination.is_file() or destination.is_symlink():
        problems.append(
            f"{destination} is not a database file (a directory, a symlink or another kind "
            "of file is there); move it away first"
        )
    if holders:
        problems += plan.sessions_problem(
            log,
            f"{destination} is open in {counted(len(holders), 'process')} "
            f"({', '.join(holders[:MAX_HOLDERS_SHOWN])}): stop the application (a docker "
            "or systemd task of the service does) and try again",
        )
    return problems


MAX_HOLDERS_SHOWN = 3


def _holders(paths: list[Path]) -> dict[Path, list[str]]:
    """For each database of ``paths``, the other processes that have it (or its -wal)
    open, as ``name[pid]`` (the name printable, cut to 16 characters): /proc read once
    for them all (each descriptor of each process is looked at: 13 µs apiece)."""
    wanted: dict[tuple[int, int], Path] = {}
    for path in paths:
        for candidate in (path, Path(f"{path}-wal")):
            with contextlib.suppress(OSError):
                found = os.stat(candidate)
                wanted[(found.st_dev, found.st_ino)] = path
    holders: dict[Path, list[str]] = {path: [] for path in paths}
    if not wanted:
        return holders
    for pid in (p for p in _listdir("/proc") if p.isdigit() and int(p) != os.getpid()):
        held = set()
        for fd in _listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                found = os.stat(f"/proc/{pid}/fd/{fd}")
                database = wanted.get((found.st_dev, found.st_ino))
                if database is not None and database not in held:
                    held.add(database)
                    holders[database].append(f"{_command(pid)}[{pid}]")
    return holders


def _listdir(path: str) -> list[str]:
    try:
        return os.listdir(path)
    except OSError:
        return []


def _command(pid: str) -> str:
    try:
        with open(f"/proc/{pid}/comm", "rb") as handle:
            return printable(handle.read(64).decode(errors="replace").strip(), 16)
    except OSError:
        return "?"


def _restore(task: Task, source: Path, target: Path | None, plan) -> None:
    """:func:`pullback_restore`. Raises TaskError, sqlite3.Error, OSError."""
    log, busy = task.log, task.config["busy_timeout"]
    beside = target is None and not plan.replace
    places: dict[Path, tuple[Path, Path]] = {}  # each once (listed twice: a kept copy lost)
    for listed in task.config["paths"]:
        path = Path(os.path.normpath(listed))
        destination = target / str(path).lstrip("/") if target is not None else path
        places.setdefault(destination, (path, source / str(path).lstrip("/")))
    problems = []
    holders = _holders([] if beside else list(places))
    for destination, (_, copy) in places.items():
        aside = _aside(destination, plan, beside)
        problems += _preflight(
            copy, destination, aside, beside, plan, log, holders=holders.get(destination, [])
        )
    if problems:
        raise TaskError(f"preflight failed, nothing was changed: {'; '.join(problems)}")
    plan.step(log, "preflight: ok (every copy passes integrity_check)")
    for destination, (path, copy) in places.items():
        aside = _aside(destination, plan, beside)
        if beside:
            if plan.step(log, f"restore {path} beside it, as {aside}"):
                _place(copy, aside, busy)
                plan.note(log, f"{path} is restored as {aside}; the live file is untouched")
            continue
        there = os.path.lexists(destination)
        if there:
            plan.step(log, f"keep the database at {destination} as {aside}")
        if plan.step(log, f"restore {path} to {destination}", destructive=there) and _place(
            copy, destination, busy, keep=aside.name if there else None
        ):
            plan.note(log, f"{destination} is restored; the database it replaced is {aside}")
