"""Hard links between the paths of a ``files`` restore, made again once every path is
copied.

``cp -a`` keeps a file's hard links within the one path it copies; a task's paths each
have a ``cp`` of their own, so a file the snapshot links into two of them
(``[/srv/a, /srv/b]``) came back as two files (helper-154 F7). After the last path is
copied, each later name of such a file is replaced by a link to its first name's file,
once both are seen to be what the restore just wrote: regular files of the snapshot's
mode, owner, size and modification time, on one file system, reached by descriptors
through symlinks only root could have made. The new link is made at a name of its own
in the later name's directory, checked to be the first name's file, then renamed over
the later name: the name is never missing, and its directory keeps the times ``cp -a``
gave it. One that is not so is left as the copy it
is (its bytes are the snapshot's; only the link is missing), said in a warning: at
most :data:`MAX_SAID` of them, the rest counted.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import stat
from pathlib import Path

from ..common.fsutil import open_trusted_dir
from ..common.log import Log
from ..common.text import counted, printable
from .copy_room import Links

MAX_SAID = 5
"""Names that stay copies, named one by one in the warnings (the rest counted)."""
TEMPORARY = ".pullback-link."
"""How the new link's name of its own starts (random letters follow)."""


def link_again(log: Log, links: Links, restored: list[Path | None], copies: list[Path]) -> int:
    """Link each later name of ``links`` to its first one's file, as the module says.
    ``restored[n]``: where path ``n`` was copied to, None when it was not (a dry run);
    ``copies[n]``: its copy in the snapshot. Returns how many names were linked; warns
    of those that stay copies. Raises nothing for one name: what went wrong is said."""
    linked, missed = 0, []
    for (first_path, first_names), (later_path, later_names) in links.again:
        first_place, later_place = restored[first_path], restored[later_path]
        if first_place is None or later_place is None:
            continue
        first = first_place.joinpath(*first_names)
        later = later_place.joinpath(*later_names)
        try:
            snapshot = os.lstat(copies[first_path].joinpath(*first_names))
            why = _link(first, later, snapshot)
        except OSError as exc:
            why = exc.strerror or str(exc)
        if why is None:
            linked += 1
        else:
            missed.append(f"{printable(later, 200)} (to {printable(first, 200)}): {why}")
    for line in missed[:MAX_SAID]:
        log.warning("not linked again as in the snapshot, left a copy: %s", line)
    if len(missed) > MAX_SAID:
        log.warning("and %s more left copies", counted(len(missed) - MAX_SAID, "name"))
    return linked


def _link(first: Path, later: Path, snapshot: os.stat_result) -> str | None:
    """Replace ``later`` by a link to ``first``'s file. Returns None when done (or
    already one file), else why not. Raises OSError when a directory cannot be
    reached (a symlink on the way another user could have made: ELOOP)."""
    first_dir = open_trusted_dir(first.parent)
    try:
        later_dir = open_trusted_dir(later.parent)
        try:
            times = os.fstat(later_dir)
            try:
                return _link_at((first_dir, first.name), (later_dir, later.name), snapshot)
            finally:
                if os.fstat(later_dir).st_mtime_ns != times.st_mtime_ns:  # (cp -a set them)
                    os.utime(later_dir, ns=(times.st_atime_ns, times.st_mtime_ns))
        finally:
            os.close(later_dir)
    finally:
        os.close(first_dir)


def _link_at(
    first: tuple[int, str], later: tuple[int, str], snapshot: os.stat_result
) -> str | None:
    """:func:`_link` below the open directories of ``first`` and ``later``."""
    have = os.stat(first[1], dir_fd=first[0], follow_symlinks=False)
    old = os.stat(later[1], dir_fd=later[0], follow_symlinks=False)
    if (have.st_dev, have.st_ino) == (old.st_dev, old.st_ino):
        return None
    if not (_as_restored(have, snapshot) and _as_restored(old, snapshot)):
        return "changed since it was restored"
    if have.st_dev != old.st_dev:
        return "the two names are on two file systems now"
    temporary = TEMPORARY + secrets.token_hex(8)
    os.link(first[1], temporary, src_dir_fd=first[0], dst_dir_fd=later[0], follow_symlinks=False)
    try:
        made = os.stat(temporary, dir_fd=later[0], follow_symlinks=False)
        if (made.st_dev, made.st_ino) != (have.st_dev, have.st_ino):
            os.unlink(temporary, dir_fd=later[0])
            return "the first name changed while it was linked"
        os.replace(temporary, later[1], src_dir_fd=later[0], dst_dir_fd=later[0])
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary, dir_fd=later[0])
        raise
    return None


def _as_restored(entry: os.stat_result, snapshot: os.stat_result) -> bool:
    """Whether ``entry`` is a regular file as ``cp -a`` wrote the snapshot's one."""
    return (
        stat.S_ISREG(entry.st_mode)
        and entry.st_mode == snapshot.st_mode
        and (entry.st_uid, entry.st_gid) == (snapshot.st_uid, snapshot.st_gid)
        and entry.st_size == snapshot.st_size
        and entry.st_mtime_ns == snapshot.st_mtime_ns
    )
