"""The ``files`` task: stream files and directory trees into the archive."""

from __future__ import annotations

import os
from pathlib import Path

from ..common.units import human_size
from . import hookimpl, load_plugin_schema
from .exclude import ExcludeMatcher
from .task import Task, TaskError, TaskType


@hookimpl
def pullback_task_types():
    return [
        TaskType(
            "files",
            load_plugin_schema("files"),
            description="files and directory trees, with all metadata",
        )
    ]


def _matcher(task: Task) -> ExcludeMatcher:
    return ExcludeMatcher(task.config["exclude"])


@hookimpl
def pullback_validate(task: Task):
    problems = []
    try:
        _matcher(task)
    except ValueError as exc:
        problems.append(str(exc))
    if not task.config["missing_ok"]:
        problems.extend(
            f"path {p} does not exist" for p in task.config["paths"] if not os.path.lexists(p)
        )
    return problems


@hookimpl
def pullback_plan(task: Task):
    matcher = _matcher(task)
    lines = []
    for path in task.config["paths"]:
        files = size = 0
        for root, dirs, names in os.walk(path):
            rel_root = os.path.relpath(root, path)
            rel_root = "" if rel_root == "." else rel_root + "/"
            dirs[:] = [d for d in dirs if not matcher(rel_root + d, True)]
            for name in names:
                if matcher(rel_root + name, False):
                    continue
                try:
                    size += os.lstat(os.path.join(root, name)).st_size
                    files += 1
                except OSError:
                    pass
        if os.path.isfile(path):
            files, size = 1, os.path.getsize(path)
        lines.append(f"would archive {path}: {files} files, {human_size(size)}")
    if matcher:
        lines.append(f"excluding: {', '.join(matcher.patterns)}")
    return lines


@hookimpl
def pullback_dump(task: Task):
    matcher = _matcher(task)
    if task.config.get("rsync_options"):
        task.log.info("rsync_options is ignored: ACLs, xattrs and hard links are always kept")
    errors: list[str] = []
    for path in task.config["paths"]:
        try:
            stats = task.add_tree(Path(path), exclude=matcher or None, xattrs=task.config["xattrs"])
        except FileNotFoundError:
            if task.config["missing_ok"]:
                task.log.warning("%s does not exist; skipped (missing_ok)", path)
                continue
            errors.append(f"{path} does not exist")
            continue
        for warning in stats.warnings:
            if warning.startswith("error: "):
                errors.append(warning.removeprefix("error: "))
            else:
                task.log.warning("%s", warning)
    if errors:
        more = f" (and {len(errors) - 3} more)" if len(errors) > 3 else ""
        raise TaskError(
            f"{len(errors)} path(s) could not be archived: {'; '.join(errors[:3])}{more}"
        )
