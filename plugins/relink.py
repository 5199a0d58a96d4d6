"""Hard links between the paths of a ``files`` restore, made again once every path is
copied.

``cp -a`` keeps a file's hard links within the one path it copies; a task's paths each
have a ``cp`` of their own, so a file the snapshot links into two of them
(``[/srv/a, /srv/b]``) came back as two files (helper-154 F7). After the last path is
copied, each later name of such a file is replaced by a link to its first name's file,
once both are seen to be what the restore just wrote: regular files of the snapshot's
mode, owner, size and modification time, the first one's bytes the snapshot's (compared
through the descriptor the link is then checked against: metadata can be matched by a
sibling renamed over it, helper-155 F1; read only where either holds data, and once a
file however many later names it has), on one file system, reached by descriptors
through symlinks only root could have made. The new link is made at a name of its own
in the later name's directory, checked to be the compared file, then renamed over the
later name: the name is never missing, and its directory keeps the times ``cp -a`` gave
it. Later names on another file system than the first one's are linked to the first of
them there. One that cannot be linked is left as the copy it is (its bytes are the
snapshot's; only the link is missing), said in a warning: at most :data:`MAX_SAID` of
them, the rest counted; an extra link that could not be removed again is named.
"""

from __future__ import annotations

import fcntl
import os
import secrets
import stat
import sys
from dataclasses import dataclass, field
from pathlib import Path

from ..common.fsutil import open_trusted_dir
from ..common.log import Log
from ..common.text import counted, printable
from .before_restore import same_bytes
from .copy_room import Links

MAX_SAID = 5
"""Names that stay copies, named one by one in the warnings (the rest counted)."""
TEMPORARY = ".pullback-link."
"""How the new link's name of its own starts (random letters follow)."""
FS_IOC_GETFLAGS = 0x80086601
"""The ioctl that reads an inode's flags (``lsattr``), and its append-only flag."""
FS_APPEND_FL = 0x20
_OPEN = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


@dataclass
class _OtherDisk:
    """The later name is on another file system than the first one (``device``)."""

    device: int

    def __str__(self) -> str:
        return "the two names are on two file systems now"


@dataclass
class _Relinking:
    """One restore's linking: what was linked, what stays a copy (the words of the first
    MAX_SAID, the rest counted: a restore of a million links kept them all), and for each
    first name, per file system, the later name the others there are linked to; the
    files proved to hold the snapshot's bytes (:func:`_proved`)."""

    linked: int = 0
    missed: list[str] = field(default_factory=list)
    more: int = 0
    anchors: dict[tuple[Path, int], Path] = field(default_factory=dict)
    proved: set[tuple[int, ...]] = field(default_factory=set)

    def pair(self, first: Path, later: Path, snapshot: Path) -> None:
        """Link ``later`` to ``first`` (or to the first later name on its file system),
        ``snapshot`` the file both are copies of."""
        try:
            why = _link(first, later, snapshot, self.proved)
            if isinstance(why, _OtherDisk):
                anchor = self.anchors.setdefault((first, why.device), later)
                if anchor != later:
                    why = _link(anchor, later, snapshot, self.proved)
        except OSError as exc:
            why = exc.strerror or str(exc)
        if why is None:
            self.linked += 1
        elif len(self.missed) < MAX_SAID:
            self.missed.append(f"{printable(later, 200)} (to {printable(first, 200)}): {why}")
        else:
            self.more += 1


def link_again(log: Log, links: Links, restored: list[Path | None], copies: list[Path]) -> int:
    """Link each later name of ``links`` to its first one's file, as the module says.
    ``restored[n]``: where path ``n`` was copied to, None when it was not (a dry run);
    ``copies[n]``: its copy in the snapshot. Returns how many names were linked; warns
    of those that stay copies. Raises nothing for one name: what went wrong is said."""
    done = _Relinking()
    for (first_path, first_names), (later_path, later_names) in links.again:
        first_place, later_place = restored[first_path], restored[later_path]
        if first_place is not None and later_place is not None:
            snapshot = copies[first_path].joinpath(*first_names)
            done.pair(
                first_place.joinpath(*first_names), later_place.joinpath(*later_names), snapshot
            )
    for line in done.missed:
        log.warning("not linked again as in the snapshot, left a copy: %s", line)
    if done.more:
        log.warning("and %s more left copies", counted(done.more, "name"))
    return done.linked


def _link(
    first: Path, later: Path, snapshot: Path, proved: set[tuple[int, ...]]
) -> str | _OtherDisk | None:
    """Replace ``later`` by a link to ``first``'s file. Returns None when done (or
    already one file), else why not. Raises OSError when a directory cannot be
    reached (a symlink on the way another user could have made: ELOOP) or a file
    read."""
    first_dir = open_trusted_dir(first.parent)
    try:
        later_dir = open_trusted_dir(later.parent)
        try:
            times = os.fstat(later_dir)
            try:
                return _link_at((first_dir, first.name), (later_dir, later.name), snapshot, proved)
            finally:
                if os.fstat(later_dir).st_mtime_ns != times.st_mtime_ns:  # (cp -a set them)
                    os.utime(later_dir, ns=(times.st_atime_ns, times.st_mtime_ns))
        finally:
            os.close(later_dir)
    finally:
        os.close(first_dir)


def _link_at(
    first: tuple[int, str], later: tuple[int, str], snapshot: Path, proved: set[tuple[int, ...]]
) -> str | _OtherDisk | None:
    """:func:`_link` below the open directories of ``first`` and ``later``; ``proved``
    as :func:`_proved` keeps it."""
    looked = os.stat(first[1], dir_fd=first[0], follow_symlinks=False)
    if not stat.S_ISREG(looked.st_mode):  # (never opened: a device node's open acts)
        return "changed since it was restored"
    fd = os.open(first[1], _OPEN, dir_fd=first[0])
    try:
        have = os.fstat(fd)
        old = os.stat(later[1], dir_fd=later[0], follow_symlinks=False)
        if (have.st_dev, have.st_ino) == (old.st_dev, old.st_ino):
            return None
        wanted = os.lstat(snapshot)
        if not (_as_restored(have, wanted) and _as_restored(old, wanted)):
            return "changed since it was restored"
        if have.st_dev != old.st_dev:
            return _OtherDisk(old.st_dev)
        if not _proved(fd, have, snapshot, proved):
            return "the first name's bytes are no longer the snapshot's"
        return _swap(first, later, have)
    finally:
        os.close(fd)


def _swap(first: tuple[int, str], later: tuple[int, str], have: os.stat_result) -> str | None:
    """Link ``first`` (the file ``have``) at a name of its own beside ``later``, check
    it, rename it over ``later``. Returns None when done, else why not (and the extra
    link's name when it could not be removed again)."""
    if _append_only(later[0]):
        return "its directory is append-only (chattr +a): a link there could not be renamed"
    temporary = TEMPORARY + secrets.token_hex(8)
    os.link(first[1], temporary, src_dir_fd=first[0], dst_dir_fd=later[0], follow_symlinks=False)
    try:
        made = os.stat(temporary, dir_fd=later[0], follow_symlinks=False)
        if (made.st_dev, made.st_ino) == (have.st_dev, have.st_ino):
            os.replace(temporary, later[1], src_dir_fd=later[0], dst_dir_fd=later[0])
            return None
        why = "the first name changed while it was linked"
    except OSError as exc:
        why = exc.strerror or str(exc)
    except BaseException:
        _remove(later[0], temporary)
        raise
    return why + _remove(later[0], temporary)


def _append_only(dir_fd: int) -> bool:
    """Whether the directory open as ``dir_fd`` is append-only (``chattr +a``): a new
    name can be made in it, never renamed or removed (helper-155 F2). False when its
    file system keeps no such flags."""
    try:
        flags = fcntl.ioctl(dir_fd, FS_IOC_GETFLAGS, bytes(8))
    except OSError:
        return False
    return bool(int.from_bytes(flags[:4], sys.byteorder) & FS_APPEND_FL)


def _remove(dir_fd: int, temporary: str) -> str:
    """Remove the extra link ``temporary`` of ``dir_fd``. Returns words naming it when
    it is still there (an append-only directory, helper-155 F2), else nothing."""
    try:
        os.unlink(temporary, dir_fd=dir_fd)
    except FileNotFoundError:
        return ""
    except OSError as exc:
        return (
            f"; the extra link {temporary} made beside it could not be removed "
            f"({exc.strerror}): remove it"
        )
    return ""


def _as_restored(entry: os.stat_result, snapshot: os.stat_result) -> bool:
    """Whether ``entry`` is a regular file as ``cp -a`` wrote the snapshot's one."""
    return (
        stat.S_ISREG(entry.st_mode)
        and entry.st_mode == snapshot.st_mode
        and (entry.st_uid, entry.st_gid) == (snapshot.st_uid, snapshot.st_gid)
        and entry.st_size == snapshot.st_size
        and entry.st_mtime_ns == snapshot.st_mtime_ns
    )


def _proved(fd: int, have: os.stat_result, snapshot: Path, proved: set[tuple[int, ...]]) -> bool:
    """Whether the file open as ``fd`` (its status ``have``) holds the bytes of the file
    ``snapshot``: read where either holds data (:func:`.before_restore.same_bytes`: a
    16 GiB image holding 1 MiB reads 2 MiB), once for every later name of it (its
    device, inode, size and ctime noted in ``proved``: no write leaves the ctime as it
    was). Raises OSError."""
    key = (have.st_dev, have.st_ino, have.st_size, have.st_ctime_ns)
    if key in proved:
        return True
    theirs = os.open(snapshot, _OPEN)
    try:
        if not same_bytes(fd, theirs):
            return False
    finally:
        os.close(theirs)
    proved.add(key)
    return True
