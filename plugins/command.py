"""The ``command`` task: your own pre, dump, post and restore commands."""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
from pathlib import Path

from ..common.text import printable
from ..common.trees import fwalk, remove_tree
from ..common.units import parse_duration
from . import hookimpl, load_plugin_schema
from .before_restore import hand_over
from .task import KeyProblem, Task, TaskError, TaskType


@hookimpl
def pullback_task_types():
    return [
        TaskType(
            "command", load_plugin_schema("command"), description="your own pre/dump/post commands"
        )
    ]


def _argv(task: Task, command) -> list[str]:
    if isinstance(command, str):
        return [task.config["shell"], "-c", command]
    return [str(a) for a in command]


def _env(task: Task, **extra: str) -> dict[str, str]:
    env = {str(k): str(v) for k, v in task.config["environment"].items()}
    env.update(PULLBACK_STAGING=str(task.staging), PULLBACK_SERVICE=task.service, **extra)
    return env


def _run(task: Task, command, timeout=None, **kwargs):
    seconds = parse_duration(timeout if timeout is not None else task.config["timeout"])
    return task.run(_argv(task, command), timeout=seconds, env=_env(task), **kwargs)


@hookimpl
def pullback_validate(task: Task):
    problems = []
    shell_needed = any(isinstance(c, str) for _, c in _all_commands(task))
    if shell_needed and not os.access(task.config["shell"], os.X_OK):
        problems.append(KeyProblem(("shell",), f"{task.config['shell']} is not executable"))
    for key, command in _all_commands(task):
        if isinstance(command, list) and not shutil.which(command[0]):
            problems.append(KeyProblem(key, f"program {command[0]} not found"))
    return problems


def _all_commands(task: Task):
    """Each command of the section, with its key path (``("dump", 0, "run")``)."""
    for stage in ("pre", "post", "restore"):
        for index, command in enumerate(task.config[stage]):
            yield (stage, index), command
    for index, item in enumerate(task.config["dump"]):
        if isinstance(item, dict):
            yield ("dump", index, "run"), item["run"]
        else:
            yield ("dump", index), item


@hookimpl
def pullback_plan(task: Task):
    lines = [f"pre: {c}" for c in task.config["pre"]]
    for item in task.config["dump"]:
        run = item["run"] if isinstance(item, dict) else item
        out = f" > {item['output']}" if isinstance(item, dict) and item.get("output") else ""
        lines.append(f"dump: {run}{out}")
    lines.extend(f"post: {c}" for c in task.config["post"])
    return lines


@hookimpl
def pullback_prepare(task: Task):
    for command in task.config["pre"]:
        _run(task, command, cwd=task.staging)


@hookimpl
def pullback_dump(task: Task):
    for item in task.config["dump"]:
        if isinstance(item, dict):
            output = item.get("output")
            stdout = None
            if output:
                target = task.staging / output
                target.parent.mkdir(parents=True, exist_ok=True)
                stdout = target
            _run(
                task,
                item["run"],
                item.get("timeout"),
                cwd=task.staging,
                stdout=stdout,
                leftovers=True,
            )
        else:
            _run(task, item, cwd=task.staging, leftovers=True)


@hookimpl
def pullback_finish(task: Task, failed: bool):
    errors = []
    for command in task.config["post"]:
        try:
            _run(task, command, cwd=task.staging if task.staging.is_dir() else "/")
        except Exception as exc:  # every post command runs, even after one failed
            errors.append(exc)
    if errors:
        raise errors[0]


@hookimpl
def pullback_restore(task: Task, source: Path, target: Path | None, dry_run: bool, plan):
    """Run the section's ``restore`` commands (``PULLBACK_SOURCE``: what the dump wrote)
    in that directory; what they write there is removed afterwards (:func:`_tidy`).
    Raises TaskError without any: nothing would be put back (an outside attack saw such
    a restore say "restored", exit 0)."""
    if not task.config["restore"]:
        kept = hand_over(task.type, plan, source, source)
        raise TaskError(
            f"not restored: the section has no restore commands (restore:); its data is in {kept}"
        )
    before = None if plan.dry_run else _names(source)
    try:
        for command in task.config["restore"]:
            if not plan.step(task.log, f"run: {command}"):
                continue
            env = _env(task, PULLBACK_SOURCE=str(source), PULLBACK_TARGET=str(target or ""))
            task.run(
                _argv(task, command),
                timeout=parse_duration(task.config["timeout"]),
                env=env,
                cwd=source,
            )
    finally:
        if before is not None:
            try:
                _tidy(task, source, before)
            except OSError as exc:  # (a directory moved away during the walk: ESTALE)
                task.log.warning("tidying %s stopped: %s", source, exc.strerror or exc)


Identity = tuple[int, int]


def _names(root: Path) -> dict[str, Identity]:
    """Every entry below ``root`` and ``root`` itself (``.``), by its path relative to
    it: its device and inode. Walked by descriptors at any depth
    (:func:`~pullback.common.trees.fwalk`), symlinks not followed."""
    found: dict[str, Identity] = {}
    for directory, dirs, files, fd in fwalk(root):
        below = os.path.relpath(directory, root)
        if below == ".":
            here = os.fstat(fd)
            found["."] = (here.st_dev, here.st_ino)
        for name in dirs + files:
            with contextlib.suppress(OSError):
                entry = os.stat(name, dir_fd=fd, follow_symlinks=False)
                found[os.path.normpath(os.path.join(below, name))] = (entry.st_dev, entry.st_ino)
    return found


MAX_TIDIED_SHOWN = 5


def _tidy(task: Task, source: Path, before: dict[str, Identity]) -> None:
    """Remove what the restore commands wrote in the snapshot's directory ``source``
    (every entry :func:`_names` did not find ``before``; a directory they made, with all
    below it): a file a command left there (``gunzip -k dump.sql.gz``) made the next
    restore from the same directory refuse it as not the snapshot its manifest
    describes. Everything is done by descriptor, at any depth
    (:func:`~pullback.common.trees.fwalk`): each directory is entered without
    following a symlink and only when it is the one found before (its owner, swapping
    one for a symlink or another directory, once had root remove files where it
    pointed), and entries are removed relative to it (``unlinkat``, ``rmtree`` with
    ``dir_fd``). Logs what it removed; what cannot be removed is logged and left."""
    tops: list[str] = []
    for directory, dirs, files, fd in fwalk(source):
        below = os.path.relpath(directory, source)
        here = os.fstat(fd)
        if before.get(os.path.normpath(below)) != (here.st_dev, here.st_ino):
            dirs.clear()  # not the directory found before: nothing of it is tidied
            continue
        made = [n for n in dirs + files if os.path.normpath(os.path.join(below, n)) not in before]
        dirs[:] = [n for n in dirs if n not in made]
        for name in made:
            shown = os.path.normpath(os.path.join(below, name))
            try:
                entry = os.stat(name, dir_fd=fd, follow_symlinks=False)
                if stat.S_ISDIR(entry.st_mode):
                    remove_tree(name, dir_fd=fd)
                else:
                    os.unlink(name, dir_fd=fd)
                tops.append(shown)
            except OSError as exc:
                task.log.warning("cannot remove %s: %s", printable(shown, 200), exc.strerror or exc)
    if tops:
        tops.sort()
        shown = ", ".join(printable(n, 80) for n in tops[:MAX_TIDIED_SHOWN])
        more = f" and {len(tops) - MAX_TIDIED_SHOWN} more" if len(tops) > MAX_TIDIED_SHOWN else ""
        task.log.info("removed what the restore commands wrote in %s: %s%s", source, shown, more)
