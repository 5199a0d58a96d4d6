"""The ``sqlite`` task: online backup API copies, checked with ``integrity_check``."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

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


def _copy(source: str, target: Path, busy_timeout: int) -> None:
    uri = f"file:{source}?mode=ro"
    src = sqlite3.connect(uri, uri=True, timeout=busy_timeout)
    dst = sqlite3.connect(target)
    try:
        with dst:
            src.backup(dst)  # all pages in one step: one consistent read transaction
    finally:
        dst.close()
        src.close()


def _check(target: Path, full: bool) -> None:
    db = sqlite3.connect(f"file:{target}?mode=ro", uri=True)
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


def _place(copy: Path, destination: Path, busy_timeout: int) -> None:
    """Write ``copy`` to ``destination`` atomically (a temporary file, then a rename),
    with its owner and mode; the old file's -wal/-shm/-journal companions go."""
    destination.parent.mkdir(parents=True, exist_ok=True)
    tmp = destination.with_name(f".{destination.name}.pullback-restore")
    _copy(str(copy), tmp, busy_timeout)
    st = copy.stat()
    if os.geteuid() == 0:
        os.chown(tmp, st.st_uid, st.st_gid)
    os.chmod(tmp, st.st_mode & 0o7777)
    for suffix in ("-wal", "-shm", "-journal"):  # stale companions of the old file
        Path(f"{destination}{suffix}").unlink(missing_ok=True)
    os.replace(tmp, destination)


def _keep(live: Path, kept: Path, busy_timeout: int) -> None:
    """A consistent copy of the live database (the backup API: its -wal included)."""
    _copy(str(live), kept, busy_timeout)
    st = live.stat()
    if os.geteuid() == 0:
        os.chown(kept, st.st_uid, st.st_gid)
    os.chmod(kept, st.st_mode & 0o7777)


def _aside(path: Path, plan) -> Path:
    """The file this restore writes next to ``path``: the restored copy, or, with
    ``--replace``, the live database it keeps."""
    word = "before-restore" if plan.replace else "restored"
    return path.with_name(f"{path.name}.{word}-{plan.stamp}")


@hookimpl
def pullback_restore(task: Task, source: Path, target: Path | None, dry_run: bool, plan):
    """Each copy is checked (``integrity_check``), then lands beside its database as
    ``<path>.restored-<stamp>`` (or below ``--target``); with ``--replace`` it replaces the
    database atomically, the replaced one kept as ``<path>.before-restore-<stamp>``. Stop
    the application first (a docker or systemd task of the same service does that)."""
    try:
        _restore(task, source, target, plan)
    except sqlite3.Error as exc:
        raise TaskError(f"restore of a SQLite database failed: {exc}") from None


def _preflight(path: Path, copy: Path, target: Path | None, plan) -> None:
    """Raises TaskError when the snapshot's ``copy`` of the database ``path`` is missing
    or fails ``integrity_check``, or when its restore would overwrite what it must not:
    a directory (or a file of another kind) where ``--replace`` puts the database, or
    a file an earlier restore kept. Raises sqlite3.Error."""
    if not copy.is_file():
        raise TaskError(f"{copy} is not in the restored snapshot")
    _check(copy, True)
    if target is None and plan.replace and os.path.lexists(path) and not path.is_file():
        raise TaskError(
            f"preflight failed, nothing was changed: {path} is not a database file "
            "(a directory or another kind of file is there); move it away first"
        )
    if target is None and _aside(path, plan).exists():
        raise TaskError(
            f"preflight failed, nothing was changed: {_aside(path, plan)} exists "
            "already (a restore in the same second?); try again"
        )


def _restore(task: Task, source: Path, target: Path | None, plan) -> None:
    """:func:`pullback_restore`. Raises TaskError, sqlite3.Error, OSError."""
    log, busy = task.log, task.config["busy_timeout"]
    copies = [(Path(p), source / p.lstrip("/")) for p in task.config["paths"]]
    for path, copy in copies:
        _preflight(path, copy, target, plan)
    plan.step(log, "preflight: ok (every copy passes integrity_check)")
    for path, copy in copies:
        if target is not None:
            destination = target / str(path).lstrip("/")
            if plan.step(log, f"restore {path} to {destination}"):
                _place(copy, destination, busy)
        elif not plan.replace:
            beside = _aside(path, plan)
            if plan.step(log, f"restore {path} beside it, as {beside}"):
                _place(copy, beside, busy)
                plan.note(log, f"{path} is restored as {beside}; the live file is untouched")
        else:
            kept = _aside(path, plan)
            if path.exists() and plan.step(log, f"keep the live {path} as {kept}"):
                _keep(path, kept, busy)
            if plan.step(log, f"replace {path}", destructive=path.exists()):
                _place(copy, path, busy)
                if kept.exists():
                    plan.note(log, f"{path} is restored; the database it replaced is {kept}")
