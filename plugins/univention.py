"""The ``univention`` task: backup-suite's plugin for Univention Corporate Server.

UCS's backup program runs, the newest archive it left in ``backup_dir`` is streamed into
the archive, then the ``custom_paths`` are, as the ``files`` task streams its paths.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

from ..common.errors import CommandError
from ..common.fsutil import is_within
from . import hookimpl, load_plugin_schema
from ._common import split_options, timeout
from .before_restore import check_hand_over, hand_over
from .exclude import ExcludeMatcher
from .files import archive_paths, restore_paths
from .task import RestorePlan, Task, TaskError, TaskType

ARCHIVE_SUFFIXES = (".tar.gz", ".tar.bz2")
"""What backup-suite took from ``backup_dir``: the newest file with one of these ends."""


@hookimpl
def pullback_task_types():
    return [
        TaskType(
            "univention",
            load_plugin_schema("univention"),
            description="Univention Corporate Server: its backup program's archive, more paths",
            restores_below_target=True,
        )
    ]


def _matcher(task: Task) -> ExcludeMatcher:
    return ExcludeMatcher(task.config["custom_exclude"])


def _argv(task: Task) -> list[str]:
    return [task.config["command"], *split_options(task.config["univention_backup_options"])]


@hookimpl
def pullback_validate(task: Task):
    problems = []
    if shutil.which(task.config["command"]) is None:
        problems.append(
            f"{task.config['command']} is not installed (UCS's backup program; "
            "name another one with command:)"
        )
    try:
        _matcher(task)
    except ValueError as exc:
        problems.append(str(exc))
    return problems


@hookimpl
def pullback_plan(task: Task):
    lines = [
        f"run {' '.join(_argv(task))}",
        f"archive the newest *.tar.gz or *.tar.bz2 in {task.config['backup_dir']}",
    ]
    lines += [f"would archive {p}" for p in task.config["custom_paths"]]
    if task.config["custom_exclude"]:
        lines.append(f"excluding: {', '.join(task.config['custom_exclude'])}")
    return lines


def newest_archive(directory: Path) -> Path | None:
    """The most recently modified ``*.tar.gz``/``*.tar.bz2`` file directly in
    ``directory`` (not below it), or None when there is none or no such directory."""
    try:
        entries = list(os.scandir(directory))
    except FileNotFoundError:
        return None
    found = [
        (entry.stat().st_mtime, entry.path)
        for entry in entries
        if entry.name.endswith(ARCHIVE_SUFFIXES) and entry.is_file(follow_symlinks=False)
    ]
    return Path(max(found)[1]) if found else None


@hookimpl
def pullback_dump(task: Task):
    started = time.time()
    try:
        task.run(_argv(task), timeout=timeout(task))
    except CommandError as exc:
        raise TaskError(
            f"{task.config['command']} failed: {exc.tail[-1] if exc.tail else exc.reason}"
        ) from None
    directory = task.config["backup_dir"]
    newest = newest_archive(Path(directory))
    if newest is None:
        raise TaskError(f"no *.tar.gz or *.tar.bz2 in {directory} after {task.config['command']}")
    if newest.stat().st_mtime < started - 1:
        task.warn(f"{newest} is older than this run: {task.config['command']} wrote no new archive")
    task.add_tree(newest)
    missing = archive_paths(task, task.config["custom_paths"], _matcher(task), xattrs=True)
    for path in missing:
        task.warn(f"custom path {path} does not exist; skipped")


@hookimpl
def pullback_restore(task: Task, source: Path, target: Path | None, plan: RestorePlan):
    """The custom paths go back as the ``files`` task's paths do; UCS's own archive is
    left for UCS's tools in the restored directory (moved below the safety directory
    when that is removed as the restore ends: :func:`.hand_over`), and the plan's notes
    say where."""
    check_hand_over(plan)  # (before anything is restored)
    restore_paths(task, task.config["custom_paths"], source, target, plan)
    backup_dir = source / task.config["backup_dir"].lstrip("/")
    if not is_within(backup_dir, source):  # (a symlink in the snapshot: live backups)
        plan.note(task.log, f"{backup_dir} leads out of the snapshot (a symlink): not used")
        return
    kept = sorted(p for p in backup_dir.glob("*") if p.name.endswith(ARCHIVE_SUFFIXES))
    for archive in kept:
        archive = hand_over(task.type, plan, archive, source)
        plan.note(task.log, f"UCS's system backup is {archive}: restore it with UCS's own tools")
    if not kept:
        plan.note(task.log, f"no UCS system backup in {backup_dir}")
