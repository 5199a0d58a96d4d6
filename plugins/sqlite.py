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


@hookimpl
def pullback_restore(task: Task, source: Path, target: Path | None, dry_run: bool):
    """Each copy replaces its database atomically (or lands below ``target``). Stop the
    application first (a docker or systemd task of the same service does that)."""
    for path in task.config["paths"]:
        copy = source / path.lstrip("/")
        if not copy.is_file():
            raise TaskError(f"{copy} is not in the restored snapshot")
        destination = (target / path.lstrip("/")) if target else Path(path)
        if dry_run:
            task.log.info("would restore %s to %s", copy, destination)
            continue
        destination.parent.mkdir(parents=True, exist_ok=True)
        _check(copy, True)
        tmp = destination.with_name(f".{destination.name}.pullback-restore")
        _copy(str(copy), tmp, task.config["busy_timeout"])
        st = copy.stat()
        if os.geteuid() == 0:
            os.chown(tmp, st.st_uid, st.st_gid)
        os.chmod(tmp, st.st_mode & 0o7777)
        for suffix in ("-wal", "-shm", "-journal"):  # stale companions of the old file
            Path(f"{destination}{suffix}").unlink(missing_ok=True)
        os.replace(tmp, destination)
        task.log.info("restored %s", destination)
