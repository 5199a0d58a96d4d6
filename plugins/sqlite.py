"""The ``sqlite`` task: online backup API copies, checked with ``integrity_check``."""

from __future__ import annotations

import contextlib
import os
import secrets
import sqlite3
import stat
import urllib.parse
from pathlib import Path

from ..common.fsutil import anchored_path, open_trusted_dir
from ..common.text import counted, printable
from . import hookimpl, load_plugin_schema
from .task import Task, TaskError, TaskType


@hookimpl
def pullback_task_types():
    return [
        TaskType(
            "sqlite",
            load_plugin_schema("sqlite"),
            description="SQLite databases (online backup API)",
        )
    ]


def staged_path(task: Task, path: str) -> Path:
    return task.staging / path.lstrip("/")


@hookimpl
def pullback_validate(task: Task):
    return [f"database {p} does not exist" for p in task.config["paths"] if not os.path.isfile(p)]


@hookimpl
def pullback_plan(task: Task):
    return [f"online backup of {p}, then PRAGMA integrity_check" for p in task.config["paths"]]


def _uri(path: str | Path) -> str:
    """A read-only URI of the database ``path``, every character that a URI gives a
    meaning (``#``, ``?``, ``%``) quoted: unquoted, ``#`` ended the path, and a database
    named ``notes#2.db`` was read as a new, empty ``notes`` (an outside attack)."""
    return f"file:{urllib.parse.quote(str(path), safe='/')}?mode=ro"


def _copy(source: str, target: Path | str, busy_timeout: int) -> None:
    src = sqlite3.connect(_uri(source), uri=True, timeout=busy_timeout)
    dst = sqlite3.connect(target)
    try:
        with dst:
            src.backup(dst)  # all pages in one step: one consistent read transaction
    finally:
        dst.close()
        src.close()


def _check(target: Path, full: bool) -> None:
    db = sqlite3.connect(_uri(target), uri=True)
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
        if not os.path.isfile(path):
            raise TaskError(f"database {path} does not exist")
        target = staged_path(task, path)
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            _copy(path, target, task.config["busy_timeout"])
            _check(target, task.config["integrity_check"])
        except sqlite3.Error as exc:
            raise TaskError(f"cannot copy {path}: {exc}") from None
        st = os.stat(path)
        if os.geteuid() == 0:
            os.chown(target, st.st_uid, st.st_gid)
        os.chmod(target, st.st_mode & 0o7777)
        os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns))
        task.log.info("copied %s (%d bytes), integrity ok", path, target.stat().st_size)


_WORK = ".pullback-restore-"
"""The prefix of the private directory (root's, mode 0700) a restore writes its copies
in, in the database's directory, before it renames them into place."""
_NOFOLLOW = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC


class _Place:
    """The directory a database lies in, opened by descriptors through symlinks only root
    could have made (:func:`.open_trusted_dir`), and a new private directory in it where
    the copies are written (no one else can plant a symlink there, or read them while
    they are written) and renamed into place from, by descriptors: the directory's owner
    (the application's user) cannot lead root's writes elsewhere (an outside attack had a
    symlink at the old fixed temporary name make root create a file of theirs in a
    directory of root's), nor read a private database's copy. Raises TaskError."""

    def __init__(self, directory: Path) -> None:
        try:
            self.dir_fd = open_trusted_dir(directory)
        except OSError as exc:
            raise TaskError(
                f"cannot restore into {printable(directory, 200)}: {exc.strerror or exc} "
                "(a symlink another user could have made is refused); nothing there changed"
            ) from None
        self.directory = directory
        self.name = f"{_WORK}{secrets.token_hex(8)}"
        try:
            os.mkdir(self.name, 0o700, dir_fd=self.dir_fd)
            self.work_fd = os.open(self.name, _NOFOLLOW | os.O_DIRECTORY, dir_fd=self.dir_fd)
        except OSError as exc:
            os.close(self.dir_fd)
            raise TaskError(
                f"cannot write in {printable(directory, 200)}: {exc.strerror or exc}; "
                "nothing there changed"
            ) from None
        here = os.fstat(self.work_fd)
        if here.st_uid != os.geteuid() or stat.S_IMODE(here.st_mode) & 0o077:
            self.close()
            raise TaskError(f"{printable(directory, 200)} changed while it was written to")

    def write(self, copy: Path | str, like: os.stat_result, busy: int) -> None:
        """The database ``copy`` (a path sqlite opens) copied into the private
        directory by the backup API, with the owner and mode of ``like``, durably."""
        where = anchored_path(self.work_fd, "db") or str(self.directory / self.name / "db")
        _copy(str(copy), where, busy)
        fd = os.open("db", _NOFOLLOW, dir_fd=self.work_fd)
        try:
            if os.geteuid() == 0:
                os.fchown(fd, like.st_uid, like.st_gid)
            os.fchmod(fd, stat.S_IMODE(like.st_mode))
            os.fsync(fd)
        finally:
            os.close(fd)

    def move(self, name: str) -> None:
        """What :meth:`write` wrote, renamed to ``name`` in the directory, replacing the
        entry there (a symlink there is replaced, not followed)."""
        os.rename("db", name, src_dir_fd=self.work_fd, dst_dir_fd=self.dir_fd)
        os.fsync(self.dir_fd)

    def drop_companions(self, name: str) -> None:
        """Remove the -wal, -shm and -journal files of the database ``name`` (stale once
        it is replaced); an entry, never what it points at."""
        for suffix in ("-wal", "-shm", "-journal"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(f"{name}{suffix}", dir_fd=self.dir_fd)

    def close(self) -> None:
        """Remove the private directory (and what an interrupted copy left in it)."""
        with contextlib.suppress(OSError):
            for left in os.listdir(self.work_fd):
                os.unlink(left, dir_fd=self.work_fd)
        os.close(self.work_fd)
        with contextlib.suppress(OSError):
            os.rmdir(self.name, dir_fd=self.dir_fd)
        os.close(self.dir_fd)


def _live(place: _Place, name: str) -> tuple[str, os.stat_result]:
    """The live database ``name`` of ``place``: a path sqlite opens (resolved from the
    open directory) and what it is. Raises TaskError for anything but a regular file
    (a symlink there is not followed: its owner could point it at root's files)."""
    try:
        looked = os.stat(name, dir_fd=place.dir_fd, follow_symlinks=False)
    except OSError as exc:
        raise TaskError(f"cannot read {name}: {exc.strerror or exc}") from None
    if not stat.S_ISREG(looked.st_mode):
        raise TaskError(f"{name} is not a regular file (a symlink?); nothing was changed")
    return anchored_path(place.dir_fd, name) or str(place.directory / name), looked


def _place(copy: Path, destination: Path, busy_timeout: int, keep: str | None = None) -> bool:
    """Write ``copy`` to ``destination`` (its owner and mode), replacing it in one
    rename; the old file's -wal/-shm/-journal companions go. With ``keep``, the live
    database there is first copied (consistently: the backup API, its -wal included)
    to ``keep`` beside it, with its owner and mode. Returns whether something was kept.
    Raises TaskError, sqlite3.Error, OSError."""
    destination.parent.mkdir(parents=True, exist_ok=True)
    place = _Place(destination.parent)
    try:
        kept = False
        if keep is not None and os.path.lexists(destination):
            live, looked = _live(place, destination.name)
            place.write(live, looked, busy_timeout)
            place.move(keep)
            kept = True
        place.write(copy, copy.stat(), busy_timeout)
        place.drop_companions(destination.name)
        place.move(destination.name)
        return kept
    finally:
        place.close()


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
    Copies are written as :class:`_Place` says."""
    try:
        _restore(task, source, target, plan)
    except sqlite3.Error as exc:
        raise TaskError(f"restore of a SQLite database failed: {exc}") from None


def _preflight(copy: Path, destination: Path, aside: Path, beside: bool, plan, log) -> list[str]:
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
    holders = _holders(destination)
    if holders:
        problems += plan.sessions_problem(
            log,
            f"{destination} is open in {counted(len(holders), 'process')} "
            f"({', '.join(holders[:MAX_HOLDERS_SHOWN])}): stop the application (a docker "
            "or systemd task of the service does) and try again",
        )
    return problems


MAX_HOLDERS_SHOWN = 3


def _holders(path: Path) -> list[str]:
    """The other processes that have the database ``path`` (or its -wal) open, as
    ``name[pid]`` (the name printable, cut to 16 characters), read from /proc; none
    without it."""
    wanted = set()
    for candidate in (path, Path(f"{path}-wal")):
        with contextlib.suppress(OSError):
            found = os.stat(candidate)
            wanted.add((found.st_dev, found.st_ino))
    holders = []
    for pid in (p for p in _listdir("/proc") if p.isdigit() and int(p) != os.getpid()):
        for fd in _listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                found = os.stat(f"/proc/{pid}/fd/{fd}")
                if (found.st_dev, found.st_ino) in wanted:
                    holders.append(f"{_command(pid)}[{pid}]")
                    break
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
    for destination, (_, copy) in places.items():
        aside = _aside(destination, plan, beside)
        problems += _preflight(copy, destination, aside, beside, plan, log)
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
