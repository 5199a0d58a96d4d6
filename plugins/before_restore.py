"""What a ``files`` restore replaces, copied aside before anything is replaced.

``cp -a`` puts the snapshot's copy of a path over the live one in place. Before it runs,
:func:`find_replaced` walks the live tree along the names the snapshot's copy has (only
those: a hostile tree cannot make the walk longer than the snapshot) and lists every
entry ``cp`` would overwrite whose content differs from the copy's: a regular file of
another size or other bytes (compared byte for byte: a modification time can be set
back), a symlink with another target, an entry of another kind. Directories are merged,
never replaced; entries only the live tree has are left alone; identical entries are
not kept.

:func:`keep_aside` then checks that they fit where they go (bytes and inodes, with a
margin), makes one new directory for the task below the restore's safety directory
(``tempfile.mkdtemp``: a name no one can guess, mode 0700, root's) and copies each entry
there at its absolute path, with its owner, mode (set-id bits too), times and extended
attributes (POSIX ACLs, file capabilities) for a regular file, as a symlink for a
symlink, and a FIFO, socket or device node as a new node of that kind. Hard links among
kept files are not kept (each name is a copy of its own). Only when every entry is kept
does the restore replace anything.

The live tree belongs to whoever owns it, who may swap a directory for a symlink at any
moment: it is walked by file descriptors, each directory opened with ``O_NOFOLLOW |
O_DIRECTORY`` below its opened parent, each entry looked at with ``lstat`` relative to
that parent and each file opened with ``O_NOFOLLOW`` and checked to be what was looked
at, and copied from that descriptor. No path into the live tree is ever followed, read
or written by name after its parent was opened.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import stat
import tempfile
from collections.abc import Generator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from ..common.archive.sparse import Region, data_regions
from ..common.fsutil import fsync_dir, pread_span, untrusted_link
from ..common.log import Log
from ..common.text import BoundedWarnings, printable
from ..common.units import human_size
from .task import RestorePlan, TaskError

NAMED = 3
"""Entries named in one message (the rest are counted)."""
NAME_LIMIT = 200
"""Characters of one name in a message (escaped, cut beyond)."""
MARGIN_BYTES = 1 << 20
MARGIN_FRACTION = 0.05
MARGIN_INODES = 16
"""What the room check asks for beyond the sum: the kept files' blocks rounded to the
safety file system's, a block and an inode for each directory made, then 5 % and 1 MiB
more, and 16 inodes more."""

_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_NEW = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_KINDS = {
    stat.S_IFREG: "file",
    stat.S_IFLNK: "symlink",
    stat.S_IFIFO: "FIFO",
    stat.S_IFSOCK: "socket",
    stat.S_IFCHR: "character device",
    stat.S_IFBLK: "block device",
    stat.S_IFDIR: "directory",
}


@dataclass(frozen=True)
class Entry:
    """A live entry the restore replaces: its names below the restored path (none for
    the path itself) and what it takes on disk."""

    names: tuple[str, ...]
    blocks: int
    """Bytes it occupies (``st_blocks * 512``): holes are kept as holes."""


@dataclass
class Replaced:
    """What the restore of one path (``copy`` of the snapshot onto ``destination``)
    replaces that differs from the snapshot."""

    copy: Path
    destination: Path
    entries: list[Entry] = field(default_factory=list)

    @property
    def blocks(self) -> int:
        return sum(e.blocks for e in self.entries)

    def summary(self) -> str:
        """``3 files (12.0 KiB)``."""
        return f"{_files(len(self.entries))} ({human_size(self.blocks)})"

    def shown(self, names: tuple[str, ...]) -> str:
        """The live path of the entry ``names``, escaped and bounded for a message."""
        return printable(os.path.join(self.destination, *names), NAME_LIMIT)

    def named(self) -> str:
        """The first few entries' paths, then how many more."""
        first = ", ".join(self.shown(e.names) for e in self.entries[:NAMED])
        more = len(self.entries) - NAMED
        return first + (f" and {more} more" if more > 0 else "")


@dataclass(frozen=True)
class _Pair:
    """A non-directory entry of the snapshot's copy, and the live entry at its place
    (``name`` below the open directory ``dir_fd``)."""

    dir_fd: int
    name: str
    names: tuple[str, ...]
    copy: Path
    copied: os.stat_result
    live: os.stat_result


def _files(count: int) -> str:
    return f"{count} file{'' if count == 1 else 's'}"


def _pairs(
    copy: Path, destination: Path, wanted: frozenset[tuple[str, ...]] | None = None
) -> Generator[_Pair, None, None]:
    """Every entry of ``copy`` that is not a directory and has a live entry at its place
    below ``destination`` that is not one either, walking down the directories both
    have (``cp`` merges those, and refuses a directory for a non-directory or the other
    way round: nothing of such an entry is replaced). With ``wanted``, only the names
    in it are looked at. Each ``_Pair``'s directory is open while it is handled.
    Raises OSError."""
    parent = os.open(destination.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    stack: list[tuple[int, Iterator[tuple[str, Path, tuple[str, ...]]]]] = [
        (parent, iter([(destination.name, copy, ())]))
    ]
    try:
        while stack:
            fd, children = stack[-1]
            child = next(children, None)
            if child is None:
                os.close(stack.pop()[0])
                continue
            name, there, names = child
            if wanted is not None and names not in wanted:
                continue
            copied, live = os.lstat(there), _look(fd, name)
            if live is None and not names:  # the path itself: it was there a moment ago
                raise OSError(errno.ENOENT, "the restored path is gone")
            if live is None or stat.S_ISDIR(live.st_mode) != stat.S_ISDIR(copied.st_mode):
                continue  # cp creates it, or refuses it: nothing of it is replaced
            if not stat.S_ISDIR(live.st_mode):
                yield _Pair(fd, name, names, there, copied, live)
                continue
            opened = _open_checked(fd, name, live, _DIR)
            if opened is None:  # what it holds cannot be compared: refuse, not skip
                raise OSError(errno.ESTALE, "a directory was swapped while it was compared")
            below = [(n, there / n, (*names, n)) for n in sorted(os.listdir(there))]
            stack.append((opened, iter(below)))
    finally:
        for fd, _ in stack:
            os.close(fd)


def _look(dir_fd: int, name: str) -> os.stat_result | None:
    try:
        return os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return None


def _open_checked(dir_fd: int, name: str, looked: os.stat_result, flags: int) -> int | None:
    """``name`` below ``dir_fd`` opened with ``flags`` (``O_NOFOLLOW``; ``O_NOATIME``
    where allowed, so a dry run changes no access time), when it is still the entry
    ``looked`` at; else None (swapped meanwhile). Raises OSError."""
    try:
        try:
            fd = os.open(name, flags | os.O_NOATIME, dir_fd=dir_fd)
        except PermissionError:
            fd = os.open(name, flags, dir_fd=dir_fd)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as exc:
        if exc.errno == errno.ELOOP:  # a symlink now
            return None
        raise
    now = os.fstat(fd)
    if (now.st_dev, now.st_ino, stat.S_IFMT(now.st_mode)) != (
        looked.st_dev,
        looked.st_ino,
        stat.S_IFMT(looked.st_mode),
    ):
        os.close(fd)
        return None
    return fd


def find_replaced(copy: Path, destination: Path) -> Replaced:
    """What ``cp -a`` of ``copy`` onto the existing ``destination`` would replace that
    differs from ``copy`` (see the module). Reads, never writes. Raises TaskError, before
    anything is replaced, for a live entry ``cp`` would write through (a symlink where
    the snapshot has a file: ``cp`` writes into what it points at) or open (a FIFO, a
    socket or a device there: ``cp`` waits on a FIFO for ever), and for an entry that
    cannot be compared."""
    found = Replaced(copy, destination)
    refused: list[str] = []
    try:
        with contextlib.closing(_pairs(copy, destination)) as pairs:
            for pair in pairs:
                why = _write_through(pair)
                if why:
                    refused.append(f"{found.shown(pair.names)} is {why}")
                elif _differs(pair):
                    live = pair.live
                    blocks = live.st_blocks * 512 if stat.S_ISREG(live.st_mode) else 0
                    found.entries.append(Entry(pair.names, blocks))
    except OSError as exc:
        raise TaskError(
            f"cannot compare {printable(destination, NAME_LIMIT)} with the snapshot: "
            f"{printable(exc, 2 * NAME_LIMIT)}; nothing was replaced"
        ) from None
    if refused:
        more = len(refused) - NAMED
        raise TaskError(
            "; ".join(refused[:NAMED])
            + (f"; and {more} more" if more > 0 else "")
            + ": nothing was replaced; move them away and restore again"
        )
    return found


def _write_through(pair: _Pair) -> str:
    """Why ``cp`` must not meet the live entry of ``pair``, or ''."""
    if not stat.S_ISREG(pair.copied.st_mode) or stat.S_ISREG(pair.live.st_mode):
        return ""
    kind = _KINDS.get(stat.S_IFMT(pair.live.st_mode), "an entry of another kind")
    if stat.S_ISLNK(pair.live.st_mode):
        return "a symlink where the snapshot has a file (cp would write through it)"
    return f"a {kind} where the snapshot has a file (cp would open it)"


def _differs(pair: _Pair) -> bool:
    """Whether the live entry of ``pair`` holds anything the copy's lacks: other bytes,
    another symlink target, another kind. Raises OSError."""
    copied, live = pair.copied, pair.live
    if stat.S_IFMT(copied.st_mode) != stat.S_IFMT(live.st_mode):
        return True
    if stat.S_ISLNK(live.st_mode):
        return os.readlink(pair.name, dir_fd=pair.dir_fd) != os.readlink(pair.copy)
    if not stat.S_ISREG(live.st_mode):
        return False  # a FIFO for a FIFO: nothing in it to lose
    if live.st_size != copied.st_size:
        return True
    fd = _open_checked(pair.dir_fd, pair.name, live, _FILE)
    if fd is None:
        return True  # swapped since the look: keep whatever is there then
    try:
        return not _same_bytes(fd, pair.copy)
    finally:
        os.close(fd)


def _same_bytes(fd: int, copy: Path) -> bool:
    theirs = os.open(copy, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        position = 0
        for data in pread_span(fd, 0):
            if os.pread(theirs, len(data), position) != data:
                return False
            position += len(data)
        return os.pread(theirs, 1, position) == b""
    finally:
        os.close(theirs)


@dataclass
class _Progress:
    """What a restore task has kept so far, and where."""

    kept: Path | None = None
    count: int = 0
    blocks: int = 0
    lost: BoundedWarnings = field(default_factory=lambda: BoundedWarnings(NAMED))
    """Extended attributes that could not be kept, one line each (the first few)."""

    def so_far(self) -> str:
        if self.kept is None or not self.count:
            return "nothing was kept"
        return f"{_files(self.count)} ({human_size(self.blocks)}) were kept in {self.kept}"


def keep_aside(
    task_type: str, log: Log, found: list[Replaced], plan: RestorePlan, fallback: Path
) -> Path | None:
    """Copy every entry of ``found`` to a new directory of this task below the plan's
    safety directory (``fallback`` without one), after a room check; each path a step of
    ``plan`` (a dry run only says it, and makes nothing). Returns that directory, or None
    when nothing differs (none is made). Raises TaskError when the entries do not fit,
    or keeping one failed: then nothing was replaced, and it says what was kept where."""
    safety = plan.safety_dir or fallback
    prefix = f"{task_type}-{plan.stamp}-"
    for replaced in found:
        if not replaced.entries:
            log.info(
                "nothing to keep of %s: no live file it replaces differs", replaced.destination
            )
    if not any(r.entries for r in found):
        return None
    _check_room(safety, found)
    progress = _Progress()
    for replaced in found:
        text = f"keep {replaced.summary()} of {replaced.destination} in {safety}/{prefix}…"
        if not replaced.entries or not plan.step(log, text):
            continue
        if progress.kept is None:
            progress.kept = _make_kept_dir(safety, prefix)
        try:
            _keep(replaced, progress)
        except TaskError:
            if not progress.count:  # only directories of its own: nothing to look at
                shutil.rmtree(progress.kept, ignore_errors=True)
            raise
        log.info(
            "kept %s that the restore replaces in %s: %s",
            replaced.summary(),
            progress.kept,
            replaced.named(),
        )
    if progress.kept is not None:
        _make_durable(safety, progress)
        _say_lost(log, progress.lost)
        plan.note(
            log,
            f"what the {task_type} restore replaced is kept in {progress.kept} "
            f"({_files(progress.count)}, {human_size(progress.blocks)}); nothing removes it: "
            "delete it once you no longer need it",
        )
    return progress.kept


def _say_lost(log: Log, lost: BoundedWarnings) -> None:
    if lost.total:
        log.warning("extended attributes that could not be kept: %s", "; ".join(lost.lines(NAMED)))


def _check_room(safety: Path, found: list[Replaced]) -> None:
    """Raises TaskError when what ``found`` keeps does not fit in ``safety``'s file
    system (its blocks and inodes, with a margin); nothing is made (a dry run too)."""
    probe = safety
    while not probe.exists():
        probe = probe.parent
    fs = os.statvfs(probe)
    unit = max(fs.f_frsize, 512)
    below = {
        (r.destination, e.names[:d]) for r in found for e in r.entries for d in range(len(e.names))
    }
    directories = len(below) + sum(len(r.destination.parts) for r in found) + 1  # and above
    count = sum(len(r.entries) for r in found)
    inodes = count + directories
    blocks = sum(-(-max(e.blocks, 1) // unit) * unit for r in found for e in r.entries)
    blocks += directories * unit
    need = blocks + int(blocks * MARGIN_FRACTION) + MARGIN_BYTES
    free = fs.f_bavail * fs.f_frsize
    short_of_inodes = fs.f_files > 0 and inodes + MARGIN_INODES > fs.f_favail
    if need <= free and not short_of_inodes:
        return
    raise TaskError(
        f"no room to keep what the restore replaces: {_files(count)} need "
        f"{human_size(need)} and {inodes + MARGIN_INODES} inodes in {safety}, where "
        f"{human_size(free)} and {fs.f_favail} inodes are free; nothing was replaced. "
        "Make room there, or restore beside the live files with --target DIR and compare"
    )


def _make_kept_dir(safety: Path, prefix: str) -> Path:
    """A new directory below ``safety`` (made 0700 when missing), named ``prefix`` and
    random letters, mode 0700: no one can guess or take its name first."""
    link = untrusted_link(safety / "x")
    if link is not None:
        raise TaskError(
            f"{link} is a symlink another user could have made: the restore keeps nothing "
            "through it; nothing was replaced"
        )
    try:
        safety.mkdir(mode=0o700, parents=True, exist_ok=True)
        info = os.lstat(safety)
        if not stat.S_ISDIR(info.st_mode) or info.st_uid != 0 or info.st_mode & 0o022:
            raise TaskError(
                f"{safety} is not a directory of root's that only root may write to: the "
                "restore keeps nothing there; nothing was replaced"
            )
        return Path(tempfile.mkdtemp(prefix=prefix, dir=safety))
    except OSError as exc:
        raise TaskError(
            f"cannot make a directory in {safety} to keep what the restore replaces: "
            f"{exc.strerror or exc}; nothing was replaced"
        ) from None


def _keep(replaced: Replaced, progress: _Progress) -> None:
    """Copy each entry of ``replaced`` into ``progress.kept``, at its absolute path.
    Raises TaskError (nothing replaced; what was kept where) when one cannot be kept."""
    assert progress.kept is not None
    base = progress.kept / str(replaced.destination).lstrip("/")
    leaves = {e.names for e in replaced.entries}
    wanted = frozenset(
        e.names[:depth] for e in replaced.entries for depth in range(len(e.names) + 1)
    )
    shown = replaced.shown(())
    try:
        with contextlib.closing(_pairs(replaced.copy, replaced.destination, wanted)) as pairs:
            for pair in pairs:
                where = base.joinpath(*pair.names)
                if pair.names not in leaves or os.path.lexists(where):
                    continue  # a directory on the way; kept already (paths that overlap)
                shown = replaced.shown(pair.names)
                why = _write_through(pair)
                if why:
                    raise TaskError(
                        f"{shown} is {why} now: nothing was replaced; {progress.so_far()}"
                    )
                _make_parents(where)
                progress.blocks += _keep_entry(pair, where, progress.lost)
                progress.count += 1
    except OSError as exc:
        raise _failed(shown, exc, progress) from None


def _make_parents(where: Path) -> None:
    """The directories above ``where`` in the kept tree, each made 0700."""
    missing = []
    parent = where.parent
    while not parent.exists():
        missing.append(parent)
        parent = parent.parent
    for directory in reversed(missing):
        directory.mkdir(mode=0o700)


def _failed(shown: str, exc: OSError, progress: _Progress) -> TaskError:
    return TaskError(
        f"keeping what the restore replaces failed at {shown}: "
        f"{printable(exc.strerror or exc, NAME_LIMIT)}; nothing was replaced; "
        f"{progress.so_far()}"
        + (
            " (a part only: the live files are untouched; remove it when you like)"
            if progress.count
            else ""
        )
    )


def _make_durable(safety: Path, progress: _Progress) -> None:
    """Every kept file was synced as it was written; now every directory of the kept
    tree, and its entry in ``safety``, so that a crash during the ``cp`` that follows
    cannot lose what was kept. Raises TaskError."""
    assert progress.kept is not None
    try:
        for directory, _, _ in os.walk(progress.kept):
            fsync_dir(directory)
        fsync_dir(safety)
    except OSError as exc:
        raise _failed(str(progress.kept), exc, progress) from None


def _keep_entry(pair: _Pair, where: Path, lost: BoundedWarnings) -> int:
    """Copy the live entry of ``pair`` to the new ``where``; returns the bytes it takes."""
    live = pair.live
    if stat.S_ISREG(live.st_mode):
        fd = _open_checked(pair.dir_fd, pair.name, live, _FILE)
        if fd is None:
            raise OSError(errno.ESTALE, "it was replaced while it was being kept")
        try:
            return _keep_file(fd, where, lost)
        finally:
            os.close(fd)
    if stat.S_ISLNK(live.st_mode):
        os.symlink(os.readlink(pair.name, dir_fd=pair.dir_fd), where)
    else:  # a FIFO, a socket or a device: a new node of its kind (no xattrs)
        os.mknod(where, stat.S_IFMT(live.st_mode) | 0o600, live.st_rdev)
        os.chmod(where, stat.S_IMODE(live.st_mode))
    os.lchown(where, live.st_uid, live.st_gid)
    os.utime(where, ns=(live.st_atime_ns, live.st_mtime_ns), follow_symlinks=False)
    return 0


def _keep_file(fd: int, where: Path, lost: BoundedWarnings) -> int:
    """Copy the open regular file ``fd`` (holes as holes) to the new file ``where`` with
    its owner, extended attributes, mode and times, durably; returns its blocks."""
    st = os.fstat(fd)
    out = os.open(where, _NEW, 0o600)
    try:
        for region in data_regions(fd, st.st_size) or [Region(0, st.st_size)]:
            _send(fd, out, region)
        os.ftruncate(out, st.st_size)
        os.fchown(out, st.st_uid, st.st_gid)  # before the capability and the set-id bits
        _copy_xattrs(fd, out, where, lost)
        os.fchmod(out, stat.S_IMODE(st.st_mode))
        os.utime(out, ns=(st.st_atime_ns, st.st_mtime_ns))
        os.fsync(out)
        return os.fstat(out).st_blocks * 512
    finally:
        os.close(out)


def _send(source: int, out: int, region: Region) -> None:
    """Copy ``region`` of ``source`` to the same place of ``out`` (the kernel copies)."""
    offset, left = region.offset, region.length
    os.lseek(out, offset, os.SEEK_SET)
    while left:
        sent = os.sendfile(out, source, offset, min(left, 1 << 30))
        if not sent:
            return  # the file shrank meanwhile: the rest reads as zeros
        offset, left = offset + sent, left - sent


def _copy_xattrs(source: int, out: int, where: Path, lost: BoundedWarnings) -> None:
    """Every extended attribute of ``source`` (ACLs, a file capability) onto ``out``;
    one that cannot be set is noted in ``lost``."""
    try:
        names = os.listxattr(source)
    except OSError as exc:
        if exc.errno in (errno.ENOTSUP, errno.EOPNOTSUPP):
            return
        raise
    for name in names:
        try:
            os.setxattr(out, name, os.getxattr(source, name))
        except OSError as exc:
            lost.append(f"{printable(where, NAME_LIMIT)}: {name}: {exc.strerror or exc}")
