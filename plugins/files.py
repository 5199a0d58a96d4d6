"""The ``files`` task: stream files and directory trees into the archive."""

from __future__ import annotations

import errno
import os
import shutil
import stat
from collections.abc import Iterator
from pathlib import Path

from ..common.errors import CommandError
from ..common.units import human_size
from . import hookimpl, load_plugin_schema
from ._common import tool_said
from .exclude import ExcludeMatcher
from .task import RestorePlan, Task, TaskError, TaskType

CP = ("-a", "--sparse=always")
"""How files are copied: everything ``cp -a`` keeps, and holes where the data is zeros
(restic 0.14 restores a sparse file with its zeros written out)."""
REPLACE = ("--remove-destination",)
"""How files go back over live ones: each as a new inode, never written into the live
one, so the hard link that keeps the live one aside keeps its content and metadata."""
ASIDE = ".pullback-before-restore-{stamp}"
"""The directory, beside each restored path, that keeps what the restore replaced."""
ASIDE_BATCH = 100
"""Entries per ``cp`` that copies aside what cannot be kept by a hard link."""


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
        if matcher.excludes_listed(path):
            lines.append(f"would leave out {path}: an exclude pattern matches its name")
            continue
        files = size = 0
        for rel in matcher.kept_files(path):
            try:
                size += os.lstat(os.path.join(path, rel) if rel else path).st_size
                files += 1
            except OSError:
                pass
        lines.append(f"would archive {path}: {files} files, {human_size(size)}")
    if matcher:
        lines.append(f"excluding: {', '.join(matcher.patterns)}")
    return lines


@hookimpl
def pullback_dump(task: Task):
    missing = archive_paths(task, task.config["paths"], _matcher(task), task.config["xattrs"])
    if missing and not task.config["missing_ok"]:
        raise TaskError(f"{len(missing)} path(s) do not exist: {', '.join(missing)}")
    for path in missing:
        task.log.warning("%s does not exist; skipped (missing_ok)", path)


def archive_paths(task: Task, paths: list[str], matcher: ExcludeMatcher, xattrs: bool) -> list[str]:
    """Stream each of ``paths`` into the archive, leaving out what ``matcher`` excludes
    (as backup-suite's rsync did, from each path's parent). Returns the paths that do not
    exist (nothing of them is archived); the caller decides whether that fails."""
    missing: list[str] = []
    for path in paths:
        if matcher.excludes_listed(path):
            task.log.info("%s left out: an exclude pattern matches its name", path)
            continue
        exclude = matcher.rooted(path) if matcher else None
        try:
            stats = task.add_tree(Path(path), exclude=exclude, xattrs=xattrs)
        except FileNotFoundError:
            missing.append(path)
            continue
        for warning in stats.warnings:  # each odd entry is skipped or archived as read
            task.log.warning("%s", warning)
    return missing


def _copy_parents(copy: Path, destination: Path, source_root: Path) -> None:
    """Create missing parents of ``destination`` with the modes of the snapshot's ones."""
    missing = []
    parent, snapshot_parent = destination.parent, copy.parent
    while not parent.exists() and snapshot_parent != source_root.parent:
        missing.append((parent, snapshot_parent))
        parent, snapshot_parent = parent.parent, snapshot_parent.parent
    for directory, original in reversed(missing):
        directory.mkdir()
        if original.is_dir():
            shutil.copystat(original, directory)
            if os.geteuid() == 0:
                st = original.stat()
                os.chown(directory, st.st_uid, st.st_gid)


@hookimpl
def pullback_restore(task: Task, source: Path, target: Path | None, plan: RestorePlan):
    """Copy every listed path back with ``cp -a --sparse=always`` (owners, modes with
    set-id bits, times, links, FIFOs, xattrs with file capabilities, ACLs; zeros become
    holes again), to its own place or below ``target``. Files that exist are replaced,
    each kept first in :func:`aside_of` by a hard link; every restored entry carries
    exactly the snapshot's extended attributes; files that are not in the snapshot are
    left alone."""
    restore_paths(task, task.config["paths"], source, target, plan)


def restore_paths(
    task: Task, paths: list[str], source: Path, target: Path | None, plan: RestorePlan
) -> None:
    """Copy each of ``paths`` from ``source`` (the task's restored directory) back to its
    place or below ``target``, as :func:`pullback_restore` says, each a step of ``plan``
    (destructive where something is there to be replaced; a dry run only says it).
    Raises TaskError for a path the snapshot lacks, unless the section says
    ``missing_ok`` (or has no such key: a task that archives what exists, like
    univention's ``custom_paths``)."""
    for path in paths:
        copy = source / path.lstrip("/")
        if not os.path.lexists(copy):
            if task.config.get("missing_ok", True):
                continue
            raise TaskError(f"{path} is not in the restored snapshot ({copy})")
        destination = (target / path.lstrip("/")) if target else Path(path)
        count = sum(len(files) for _, _, files in os.walk(copy)) if copy.is_dir() else 1
        aside = aside_of(destination, plan.stamp)
        over = (
            f", replacing what is there (what it replaces is kept in {aside})"
            if os.path.lexists(destination)
            else ""
        )
        text = f"restore {path} ({count} files) to {destination}{over}"
        if not plan.step(task.log, text, destructive=bool(over)):
            continue
        if destination.is_symlink() and copy.is_dir() and not copy.is_symlink():
            raise TaskError(
                f"{destination} is a symlink where the snapshot has a directory: nothing "
                "replaced (cp would write through it); move it away and restore again"
            )
        _copy_parents(copy, destination, source)
        kept = _set_aside(task, copy, destination, aside)
        if kept:
            plan.note(
                task.log,
                f"what was replaced in {destination} ({kept} entries) is kept in {aside}; "
                "delete it once you are satisfied",
            )
        _copy_back(task, copy, destination)
        _same_xattrs(copy, destination)
        task.log.info("restored %s", destination)


def _copy_back(task: Task, copy: Path, destination: Path) -> None:
    """``cp`` the snapshot's ``copy`` onto ``destination``."""
    if copy.is_dir() and not copy.is_symlink():
        destination.mkdir(exist_ok=True)
        task.run(["cp", *CP, *REPLACE, "--", f"{copy}/.", f"{destination}/"], timeout=None)
        shutil.copystat(copy, destination)
    else:
        task.run(["cp", *CP, *REPLACE, "--", str(copy), str(destination)], timeout=None)


def aside_of(destination: Path, stamp: str) -> Path:
    """Where a restore at ``stamp`` keeps what it replaces of ``destination``: beside it,
    ``<parent>/.pullback-before-restore-<stamp>/<name>/``, the paths below as they were.
    On the file system of ``destination``'s parent: the same as its own unless it is a
    mount point (then what is kept is copied there, see :func:`_set_aside`)."""
    return destination.parent / ASIDE.format(stamp=stamp) / destination.name


def _set_aside(task: Task, copy: Path, destination: Path, aside: Path) -> int:
    """Keep each live entry the copy of the snapshot will replace (one that is not a
    directory, at ``destination`` and in ``copy`` alike) in ``aside``, at its path below
    ``destination``: by a hard link (no data is copied; the copy then replaces the live
    name by a new inode, see :data:`REPLACE`), or, where no link can be made (another
    file system below, EXDEV; protected_hardlinks, EPERM), by ``cp -a``. Directories are
    made in ``aside`` only to hold what is kept. Returns how many entries were kept.
    Raises TaskError when one cannot be kept: then nothing was replaced yet."""
    unlinked: list[str] = []
    try:
        replaced = [
            rel
            for rel, is_dir, live in _pairs(copy, destination)
            if not (is_dir or live is None or stat.S_ISDIR(live.st_mode))
        ]  # a directory is not replaced; cp refuses one kind for another
        _check_room(copy, destination, replaced)
        for rel in replaced:
            link = aside / rel
            _own_directory(aside.parent)
            link.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(destination / rel, link, follow_symlinks=False)
            except OSError:
                unlinked.append(rel)
    except OSError as exc:
        raise TaskError(
            f"nothing in {destination} was replaced: cannot keep what is there in {aside}: {exc}"
        ) from None
    kept = len(replaced)
    _copy_aside(task, destination, aside, unlinked)
    return kept


def _check_room(copy: Path, destination: Path, replaced: list[str]) -> None:
    """Raises TaskError unless the file system of ``destination`` has room for the new
    copies of the ``replaced`` entries: what they replace stays (kept aside) until the
    administrator deletes it, so their blocks are not freed as the copy goes on (before
    the set-aside, a restore over the same files took no room; now it takes theirs)."""
    needed = sum(os.lstat(copy / rel).st_blocks * 512 for rel in replaced)
    where = destination if os.path.lexists(destination) else destination.parent
    found = os.statvfs(where)
    free = found.f_bavail * found.f_frsize
    if needed > free:
        raise TaskError(
            f"nothing in {destination} was replaced: what a restore replaces is kept until "
            f"you delete it, so the new copies need {human_size(needed)} on its file "
            f"system, which has {human_size(free)} free; free space there, or restore "
            "beside the live files (--target DIR) and move what you need"
        )


def _own_directory(path: Path) -> None:
    """Make ``path`` (mode 0700: only its owner may look inside), or accept it when this
    restore made it already (another path of the task beside it): a real directory of
    ours that no one else may write. Anything else there (a symlink planted under a
    world-writable parent: the stamp in the name is predictable) raises OSError, and
    nothing is linked into someone else's directory."""
    try:
        os.mkdir(path, 0o700)
        return
    except FileExistsError:
        pass
    found = os.lstat(path)
    if (
        not stat.S_ISDIR(found.st_mode)
        or found.st_uid != os.geteuid()
        or found.st_mode & (stat.S_IWGRP | stat.S_IWOTH)
    ):
        raise OSError(f"{path} is already there and is not this restore's own directory")


def _copy_aside(task: Task, destination: Path, aside: Path, rels: list[str]) -> None:
    """Copy the entries ``rels`` of ``destination`` (``""``: itself) into ``aside``, a
    hundred to a ``cp``. Raises TaskError, saying nothing was replaced, if one fails."""
    try:
        if "" in rels:
            task.run(["cp", *CP, "--", str(destination), str(aside)], timeout=None)
            return
        for start in range(0, len(rels), ASIDE_BATCH):
            batch = rels[start : start + ASIDE_BATCH]
            argv = ["cp", *CP, "--parents", "-t", str(aside), "--", *batch]
            task.run(argv, cwd=destination, timeout=None)
    except CommandError as exc:
        raise TaskError(
            f"nothing in {destination} was replaced: cannot keep what is there in {aside} "
            f"(no hard link could be made, and no copy): {tool_said(exc)}"
        ) from None


def _pairs(copy: Path, destination: Path) -> Iterator[tuple[str, bool, os.stat_result | None]]:
    """Every entry of the snapshot's ``copy`` (itself first, as ``""``), parents before
    their contents: its path relative to ``copy``, whether it is a directory there, and
    the ``lstat`` of the same path below ``destination`` (None: not there). No symlink is
    followed on either side: a directory is entered only where both sides have a real
    one (a live symlink where the snapshot has a directory is never walked through)."""
    stack = [""]
    top_live = _lstat(destination)
    yield "", copy.is_dir() and not copy.is_symlink(), top_live
    if not (top_live and stat.S_ISDIR(top_live.st_mode)) or copy.is_symlink():
        return
    while stack:
        rel = stack.pop()
        with os.scandir(copy / rel) as entries:
            for entry in entries:
                sub = os.path.join(rel, entry.name)
                is_dir = entry.is_dir(follow_symlinks=False)
                live = _lstat(destination / sub)
                yield sub, is_dir, live
                if is_dir and live is not None and stat.S_ISDIR(live.st_mode):
                    stack.append(sub)


def _lstat(path: Path) -> os.stat_result | None:
    try:
        return os.lstat(path)
    except FileNotFoundError:
        return None


KEEP_XATTRS = ("security.selinux",)
"""Extended attributes a restore never removes from a live entry, though the snapshot's
copy lacks them: SELinux's label belongs to the live system's policy (the kernel gives
every new file one), not to the data; removing it would leave the file unlabelled, and
unreadable to a confined service under an enforcing policy."""
MAX_XATTR_PROBLEMS = 5
"""Failed removals named in the error (the rest are counted)."""


def _same_xattrs(copy: Path, destination: Path) -> None:
    """Every entry of ``copy`` that is now at ``destination`` carries exactly the copy's
    extended attributes: ``cp -a`` adds the snapshot's and never removes others, so the
    names the copy lacks (POSIX ACLs' ``system.posix_acl_*`` among them) are removed.
    One ``lstat`` and two ``listxattr`` per entry. Raises TaskError naming each removal
    that failed (the attribute is still there: nothing is lost)."""
    problems: list[str] = []
    for rel, _, live in _pairs(copy, destination):
        if live is None:
            continue
        there = destination / rel if rel else destination
        try:
            extra = set(_xattrs(there)) - set(_xattrs(copy / rel if rel else copy))
        except OSError as exc:
            problems.append(f"{there}: cannot list extended attributes: {exc.strerror}")
            continue
        for name in sorted(extra - set(KEEP_XATTRS)):
            try:
                os.removexattr(there, name, follow_symlinks=False)
            except OSError as exc:
                if stat.S_ISLNK(live.st_mode) and exc.errno in (errno.EPERM, errno.ENOTSUP):
                    continue  # the kernel keeps a symlink's attributes as they are
                problems.append(f"{there}: cannot remove extended attribute {name}: {exc.strerror}")
    if problems:
        more = len(problems) - MAX_XATTR_PROBLEMS
        listed = "; ".join(problems[:MAX_XATTR_PROBLEMS]) + (
            f"; and {more} more" if more > 0 else ""
        )
        raise TaskError(
            f"{destination} is restored but has extended attributes the snapshot lacks: {listed}"
        )


def _xattrs(path: Path) -> list[str]:
    try:
        return os.listxattr(path, follow_symlinks=False)
    except OSError as exc:
        if exc.errno in (errno.ENOTSUP, errno.EOPNOTSUPP):
            return []  # a file system without them: nothing to remove
        raise
