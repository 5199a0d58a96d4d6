"""Walking and removing directory trees of any depth, without recursion.

Python 3.11's ``os.walk`` and ``shutil.rmtree`` recurse once per directory level, so a
tree deeper than the interpreter's recursion limit (about 1 000 levels; a client's path
may have 2 048 within PATH_MAX) ends them with a RecursionError: a pull of such a tree
failed as an "internal error", and a staging directory holding it could not be cleared.
These keep their own stack, and hold one descriptor per level being removed.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def walk(top: str | os.PathLike[str]) -> Iterator[tuple[str, list[str], list[str]]]:
    """``os.walk(top)``, top-down, links never followed, errors ignored, at any depth.

    Yields ``(directory, dirnames, filenames)`` as ``os.walk`` does (a link to a
    directory is named in ``dirnames`` and not entered); ``dirnames`` may be pruned in
    place to leave directories out.
    """
    pending = [os.fspath(top)]
    while pending:
        directory = pending.pop()
        dirs: list[str] = []
        files: list[str] = []
        links: set[str] = set()
        try:
            with os.scandir(directory) as entries:
                for entry in entries:
                    try:
                        is_dir = entry.is_dir()
                    except OSError:
                        is_dir = False
                    (dirs if is_dir else files).append(entry.name)
                    if is_dir and entry.is_symlink():
                        links.add(entry.name)
        except OSError:
            continue
        yield directory, dirs, files
        pending.extend(os.path.join(directory, d) for d in reversed(dirs) if d not in links)


MAX_HELD = 64
"""Descriptors :func:`remove_tree` holds at most, however deep the tree (a client's
path may be 2 048 levels deep; a process may hold 1 024 descriptors): the directories
above are closed and opened again by ``..`` on the way back up, each checked to be the
very directory it left (device and inode)."""


@dataclass
class _Level:
    """One directory being emptied: its descriptor (-1 while closed), its name in its
    parent, its device and inode, and the subdirectories found in it and not yet
    removed."""

    fd: int
    name: str
    identity: tuple[int, int]
    subdirs: list[str] | None = None


def _level(fd: int, name: str) -> _Level:
    found = os.fstat(fd)
    return _Level(fd, name, (found.st_dev, found.st_ino))


Identity = tuple[int, int]
"""A directory entry's device and inode."""


@dataclass
class _Walking(_Level):
    """One directory of :func:`fwalk`: ``name`` its path as yielded, ``listed`` the
    device and inode each subdirectory had when it was listed."""

    listed: dict[str, Identity] = field(default_factory=dict)


def fwalk(top: str | os.PathLike[str]) -> Iterator[tuple[str, list[str], list[str], int]]:
    """``os.fwalk(top, follow_symlinks=False)``, top-down, at any depth, holding at most
    :data:`MAX_HELD` descriptors (``os.fwalk`` recurses once per level and holds a
    descriptor per level: past about 1 000 levels a RecursionError, or too many open
    files).

    Yields ``(directory, dirnames, filenames, dir_fd)`` as ``os.fwalk`` does: ``dir_fd``
    is ``directory``'s descriptor, valid until the next item is asked for; ``dirnames``
    may be pruned in place. A link is named in ``filenames`` and never entered. Each
    directory is entered by descriptor (``openat`` without following a link) from its
    parent's, and only when it is still the directory listed (device and inode): one
    swapped for a link or another directory meanwhile is left out. The directories
    above are closed and opened again through ``..``, each checked to be the very one
    it left. A directory that cannot be read is left out (as ``os.fwalk`` does); ``top``
    a link or no directory yields nothing. Raises OSError (ESTALE) when a directory
    above was moved away while below it was walked: nothing more is walked.
    """
    try:
        fd = os.open(top, _DIR_FLAGS)
    except OSError:
        return
    found = os.fstat(fd)
    levels = [_Walking(fd, os.fspath(top), (found.st_dev, found.st_ino))]
    try:
        while levels:
            level = levels[-1]
            if level.subdirs is None:
                listed = _listing(level)
                if listed is not None:
                    dirs, files = listed
                    yield level.name, dirs, files, level.fd
                    level.subdirs = [d for d in reversed(dirs) if d in level.listed]
                else:
                    level.subdirs = []
            elif level.subdirs:
                _descend(levels, level, level.subdirs.pop())
            else:
                _ascend(levels)
    finally:
        for level in levels:
            if level.fd >= 0:
                os.close(level.fd)


def _listing(level: _Walking) -> tuple[list[str], list[str]] | None:
    """The subdirectories and other entries of ``level``'s directory (each
    subdirectory's identity kept in ``level.listed``; one that cannot be looked at, such
    as in a directory readable but not searchable, is named without and never entered),
    or None when it cannot be read."""
    dirs: list[str] = []
    files: list[str] = []
    try:
        with os.scandir(level.fd) as entries:
            for entry in entries:
                try:
                    if entry.is_dir(follow_symlinks=False):
                        dirs.append(entry.name)
                        found = entry.stat(follow_symlinks=False)
                        level.listed[entry.name] = (found.st_dev, found.st_ino)
                        continue
                except OSError as exc:
                    if exc.errno == errno.ENOENT and entry.name in dirs:
                        dirs.remove(entry.name)  # gone meanwhile
                    continue  # (unsearchable: named, as os.fwalk does, never entered)
                files.append(entry.name)
    except OSError:
        return None
    return dirs, files


def _descend(levels: list[_Walking], level: _Walking, name: str) -> None:
    """Enter ``level``'s subdirectory ``name`` when it is the one listed."""
    try:
        fd = os.open(name, _DIR_FLAGS, dir_fd=level.fd)
    except OSError:
        return  # gone, or swapped for a link or a file
    found = os.fstat(fd)
    if (found.st_dev, found.st_ino) != level.listed[name]:
        os.close(fd)  # another directory moved in meanwhile
        return
    levels.append(_Walking(fd, os.path.join(level.name, name), level.listed[name]))
    _hold_at_most(levels, MAX_HELD)


def _ascend(levels: list[_Walking]) -> None:
    """Leave the deepest level, its parent open again (checked) when it was closed."""
    level = levels.pop()
    try:
        if levels and levels[-1].fd < 0:
            _reopen_parent(levels[-1], level.fd, "walked")
    finally:
        os.close(level.fd)
        level.fd = -1


def remove_tree(
    name: str | os.PathLike[str], dir_fd: int | None = None, ignore_errors: bool = False
) -> None:
    """Delete the directory ``name`` (relative to ``dir_fd`` when given) and everything
    in it, at any depth, holding at most :data:`MAX_HELD` descriptors, never following
    a link (a link met is unlinked, not entered).

    Raises OSError (``name`` a link or no directory, an entry that cannot be removed, a
    directory moved away while its subdirectories were removed) unless
    ``ignore_errors``: then what can be removed is, the rest is left.
    """
    levels: list[_Level] = []
    try:
        levels.append(_level(os.open(name, _DIR_FLAGS, dir_fd=dir_fd), os.fspath(name)))
        while levels:
            level = levels[-1]
            if level.subdirs is None:
                level.subdirs = _empty(level.fd, ignore_errors)
            if level.subdirs:
                child = level.subdirs.pop()
                opened = _open_child(child, level.fd, ignore_errors)
                if opened is not None:
                    levels.append(_level(opened, child))
                    _hold_at_most(levels, MAX_HELD)
                continue
            levels.pop()
            if levels and levels[-1].fd < 0:
                _reopen_parent(levels[-1], level.fd)
            os.close(level.fd)
            level.fd = -1
            parent = levels[-1].fd if levels else dir_fd
            _quietly(os.rmdir, level.name, parent, ignore_errors)
    except OSError:
        if not ignore_errors:
            raise
    finally:
        for level in levels:
            if level.fd >= 0:
                os.close(level.fd)


def _hold_at_most(levels: Sequence[_Level], most: int) -> None:
    """Close the descriptor of the highest level still open once more than ``most``
    are (it is opened again by :func:`_reopen_parent`)."""
    held = [level for level in levels if level.fd >= 0]
    if len(held) > most:
        os.close(held[0].fd)
        held[0].fd = -1


def _reopen_parent(parent: _Level, child_fd: int, doing: str = "removed") -> None:
    """Open ``parent`` again as the ``..`` of ``child_fd``. Raises OSError when that is
    not the directory it was (moved away meanwhile: nothing more of it is removed)."""
    fd = os.open("..", _DIR_FLAGS, dir_fd=child_fd)
    found = os.fstat(fd)
    if (found.st_dev, found.st_ino) != parent.identity:
        os.close(fd)
        raise OSError(errno.ESTALE, f"{parent.name} moved while it was being {doing}")
    parent.fd = fd


def _empty(fd: int, ignore_errors: bool) -> list[str]:
    """Unlink every entry of the directory ``fd`` that is not a directory; return the
    names of its subdirectories."""
    subdirs = []
    with os.scandir(fd) as entries:
        for entry in entries:
            if entry.is_dir(follow_symlinks=False):
                subdirs.append(entry.name)
            else:
                _quietly(os.unlink, entry.name, fd, ignore_errors)
    return subdirs


def _open_child(name: str, parent: int, ignore_errors: bool) -> int | None:
    """The descriptor of the directory ``name`` in ``parent``, or None when it is gone
    or was swapped for something else (which is then unlinked, never followed)."""
    try:
        return os.open(name, _DIR_FLAGS, dir_fd=parent)
    except FileNotFoundError:
        return None
    except OSError as exc:
        if not isinstance(exc, NotADirectoryError) and exc.errno != errno.ELOOP:
            if not ignore_errors:
                raise
            return None
    _quietly(os.unlink, name, parent, ignore_errors)
    return None


def _quietly(remove, name: str, dir_fd: int | None, ignore_errors: bool) -> None:
    """``remove(name, dir_fd=dir_fd)``; a name gone already is no error, any other
    OSError only when errors are not ignored."""
    try:
        remove(name, dir_fd=dir_fd)
    except FileNotFoundError:
        pass
    except OSError:
        if not ignore_errors:
            raise
