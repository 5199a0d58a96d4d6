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
from collections.abc import Iterator
from dataclasses import dataclass

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


@dataclass
class _Level:
    """One directory being emptied: its descriptor, its name in its parent, and the
    subdirectories found in it and not yet removed."""

    fd: int
    name: str
    subdirs: list[str] | None = None


def remove_tree(
    name: str | os.PathLike[str], dir_fd: int | None = None, ignore_errors: bool = False
) -> None:
    """Delete the directory ``name`` (relative to ``dir_fd`` when given) and everything
    in it, at any depth, never following a link (a link met is unlinked, not entered).

    Raises OSError (``name`` a link or no directory, or an entry that cannot be
    removed) unless ``ignore_errors``: then what can be removed is, the rest is left.
    """
    levels: list[_Level] = []
    try:
        levels.append(_Level(os.open(name, _DIR_FLAGS, dir_fd=dir_fd), os.fspath(name)))
        while levels:
            level = levels[-1]
            if level.subdirs is None:
                level.subdirs = _empty(level.fd, ignore_errors)
            if level.subdirs:
                child = level.subdirs.pop()
                opened = _open_child(child, level.fd, ignore_errors)
                if opened is not None:
                    levels.append(_Level(opened, child))
                continue
            levels.pop()
            os.close(level.fd)
            parent = levels[-1].fd if levels else dir_fd
            _quietly(os.rmdir, level.name, parent, ignore_errors)
    except OSError:
        if not ignore_errors:
            raise
    finally:
        for level in levels:
            os.close(level.fd)


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
