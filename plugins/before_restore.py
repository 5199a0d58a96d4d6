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
or written by name after its parent was opened. The walk (:class:`InStep`) holds two
descriptors however deep the tree is: it closes a directory as it goes into one below
it, and goes back up by ``..``, checking that it is the directory it came down from (a
directory moved meanwhile stops the walk). The kept tree is made the same way, each
entry by name below its open directory, so neither a tree deeper than the descriptors
a process may hold nor a kept path longer than ``PATH_MAX`` stops a restore that ``cp``
can do.

Two regular files of one size are compared where either holds data (``SEEK_DATA``,
``SEEK_HOLE``): a range that is a hole in both is equal unread; a range either holds is
read from both (a hole reads as zeros, so data of zeros equals a hole). A file system
that cannot tell holes has its files read whole.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import stat
import tempfile
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from ..common.archive.sparse import Region, data_regions
from ..common.fsutil import copy_range, fsync_dir, is_within, room, untrusted_link
from ..common.log import Log
from ..common.text import BoundedWarnings, counted, printable
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

_PIECE = 1 << 20
"""Bytes compared at a time."""
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
class Freed:
    """What ``cp`` reuses of the live entries it meets on one file system."""

    bytes: int = 0
    """Of a regular file of one link that a regular file of one link replaces
    (truncated and written again), its blocks up to the copy's."""
    inodes: int = 0
    """Of a live entry of one link that is replaced, its inode."""
    directories: int = 0
    """Live directories the copy's are merged into (nothing new made)."""


@dataclass
class Replaced:
    """What the restore of one path (``copy`` of the snapshot onto ``destination``)
    replaces that differs from the snapshot."""

    copy: Path
    destination: Path
    entries: list[Entry] = field(default_factory=list)
    freed: dict[int, Freed] = field(default_factory=dict)
    """By file system (``st_dev``), what ``cp`` reuses of the live entries it meets
    (:mod:`.copy_room`)."""
    above: Identity | None = None
    """The identity of the directory holding ``destination`` when it was checked: every
    walk of it refuses another (:class:`InStep`)."""

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

    def none_why(self) -> str:
        """Why nothing of this path is kept."""
        return "no live file it replaces differs"


class _Cursor:
    """One open directory of a tree however deep it lies: its descriptor, and the
    identity of each directory above it, so that it goes back up by ``..`` and checks
    it came back where it came down from. It holds one descriptor (two while it moves)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self._above: list[tuple[int, int]] = []

    def down(self, fd: int) -> None:
        """Stand in ``fd``, a directory opened below this one (the cursor owns it now)."""
        here = os.fstat(self.fd)
        self._above.append((here.st_dev, here.st_ino))
        os.close(self.fd)
        self.fd = fd

    def up(self) -> None:
        """Stand in the directory above again. Raises OSError: ESTALE when ``..`` is not
        the directory it came down from (this one was moved meanwhile)."""
        parent = os.open("..", _DIR, dir_fd=self.fd)
        there = os.fstat(parent)
        if (there.st_dev, there.st_ino) != self._above[-1]:
            os.close(parent)
            raise OSError(errno.ESTALE, "a directory was moved while it was walked")
        self._above.pop()
        os.close(self.fd)
        self.fd = parent

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


Identity = tuple[int, int]
"""A directory's device and inode number."""


@dataclass(frozen=True)
class Spot:
    """An entry of the snapshot's copy, ``copy_name`` below its open directory
    ``copy_dir``, and the live tree's place of it, ``name`` below the open ``live_dir``
    (which may have no entry of that name). ``names`` is its place below the restored
    path (none for the path itself); the two names differ only there."""

    copy_dir: int
    live_dir: int
    copy_name: str
    name: str
    names: tuple[str, ...]


class InStep:
    """The snapshot's copy of a restored path and the live tree at its place, walked in
    step along the copy's names (sorted), depth first, by descriptors: it holds two
    however deep the tree is (each directory left is closed, and the walk goes back up
    by ``..``, checked), and no path below the restored one is ever used. Each
    :class:`Spot` it yields is the path itself first, then what is below the
    directories the caller :meth:`enter` s; its descriptors stay open until the next
    one is asked for. Raises OSError (ESTALE when a directory was moved while it was
    walked)."""

    def __init__(self, copy: Path, destination: Path, above: Identity | None = None) -> None:
        """``above``: the identity the directory holding ``destination`` had when the
        restore checked the path (``files._a_place_of_its_own``); the walk refuses
        another (ESTALE: a directory above was swapped since, by its owner: an outside
        attack had the attribute pass strip ACLs and capabilities outside the tree, and
        the scan read outside files into the kept directory)."""
        opened = os.open(copy.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            live = os.open(destination.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError:
            os.close(opened)
            raise
        here = os.fstat(live)
        if above is not None and (here.st_dev, here.st_ino) != above:
            os.close(opened)
            os.close(live)
            raise OSError(errno.ESTALE, "a directory above the restored path was swapped")
        self._copy, self._live = _Cursor(opened), _Cursor(live)
        self._top = copy.name
        self._levels: list[tuple[tuple[str, ...] | None, Iterator[str]]] = [
            (None, iter([destination.name]))
        ]

    def __iter__(self) -> InStep:
        return self

    def __next__(self) -> Spot:
        while self._levels:
            names, left = self._levels[-1]
            name = next(left, None)
            if name is not None:
                if names is None:  # the restored path
                    return Spot(self._copy.fd, self._live.fd, self._top, name, ())
                return Spot(self._copy.fd, self._live.fd, name, name, (*names, name))
            self._levels.pop()
            if self._levels:
                self._copy.up()
                self._live.up()
        raise StopIteration

    def enter(self, spot: Spot, live_dir: int) -> None:
        """Walk on below the directory of ``spot`` (the last one yielded): ``live_dir``
        is the live one, opened and checked by the caller (the walk owns it now); the
        copy's is opened here."""
        try:
            opened = os.open(spot.copy_name, _DIR, dir_fd=self._copy.fd)
        except OSError:
            os.close(live_dir)
            raise
        try:
            listing = sorted(os.listdir(opened))
        except OSError:
            os.close(opened)
            os.close(live_dir)
            raise
        self._copy.down(opened)
        self._live.down(live_dir)
        self._levels.append((spot.names, iter(listing)))

    def close(self) -> None:
        self._copy.close()
        self._live.close()


@dataclass(frozen=True)
class _Pair:
    """A non-directory entry of the snapshot's copy (``copy_name`` below the open
    directory ``copy_dir``), and the live entry at its place (``name`` below
    ``dir_fd``)."""

    dir_fd: int
    copy_dir: int
    copy_name: str
    name: str
    names: tuple[str, ...]
    copied: os.stat_result
    live: os.stat_result


def _files(count: int) -> str:
    return counted(count, "file")


def _pairs(
    copy: Path,
    destination: Path,
    wanted: frozenset[tuple[str, ...]] | None = None,
    above: Identity | None = None,
    merged: Callable[[os.stat_result], None] | None = None,
) -> Generator[_Pair, None, None]:
    """Every entry of ``copy`` that has a live entry at its place below ``destination``,
    where one of the two is not a directory, walking down the directories both have
    (``cp`` merges those). A directory against a non-directory is a pair too: ``cp``
    fails on it half-way (:func:`_clash`). With ``wanted``, only the names in it are
    looked at. Each ``_Pair``'s directories are open while it is handled; ``merged``
    is given each live directory the copy's is merged into. Raises OSError."""
    with contextlib.closing(InStep(copy, destination, above)) as walk:
        for spot in walk:
            if wanted is not None and spot.names not in wanted:
                continue
            copied = os.stat(spot.copy_name, dir_fd=spot.copy_dir, follow_symlinks=False)
            live = _look(spot.live_dir, spot.name)
            if live is None and not spot.names:  # the path itself: it was there a moment ago
                raise OSError(errno.ENOENT, "the restored path is gone")
            if live is None:
                continue  # cp creates it
            if not stat.S_ISDIR(live.st_mode) or not stat.S_ISDIR(copied.st_mode):
                yield _Pair(
                    spot.live_dir,
                    spot.copy_dir,
                    spot.copy_name,
                    spot.name,
                    spot.names,
                    copied,
                    live,
                )
                continue
            opened = _open_checked(spot.live_dir, spot.name, live, _DIR)
            if opened is None:  # what it holds cannot be compared: refuse, not skip
                raise OSError(errno.ESTALE, "a directory was swapped while it was compared")
            if merged is not None:
                merged(live)
            walk.enter(spot, opened)


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


def find_replaced(copy: Path, destination: Path, above: Identity | None = None) -> Replaced:
    """What ``cp -a`` of ``copy`` onto the existing ``destination`` would replace that
    differs from ``copy`` (see the module). Reads, never writes. Raises TaskError, before
    anything is replaced, for a live entry ``cp`` would write through (a symlink where
    the snapshot has a file: ``cp`` writes into what it points at) or open (a FIFO, a
    socket or a device there: ``cp`` waits on a FIFO for ever), and for an entry that
    cannot be compared."""
    found = Replaced(copy, destination, above=above)
    refused: list[str] = []

    def merged(live: os.stat_result) -> None:
        found.freed.setdefault(live.st_dev, Freed()).directories += 1

    try:
        with contextlib.closing(_pairs(copy, destination, above=above, merged=merged)) as pairs:
            for pair in pairs:
                why = _clash(pair)
                if why:
                    refused.append(f"{found.shown(pair.names)} is {why}")
                    continue
                live = pair.live
                blocks = live.st_blocks * 512 if stat.S_ISREG(live.st_mode) else 0
                _reused(found.freed, pair)
                if _differs(pair):
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


def _reused(freed: dict[int, Freed], pair: _Pair) -> None:
    """Add to ``freed`` what ``cp`` reuses of the live entry of ``pair`` (see
    :attr:`Replaced.freed`): a live file linked elsewhere too is unlinked, not written
    over, and frees nothing."""
    live, copied = pair.live, pair.copied
    if live.st_nlink != 1:
        return
    on = freed.setdefault(live.st_dev, Freed())
    if stat.S_ISREG(live.st_mode) and stat.S_ISREG(copied.st_mode) and copied.st_nlink == 1:
        on.bytes += min(live.st_blocks, copied.st_blocks) * 512
    on.inodes += 1


def _clash(pair: _Pair) -> str:
    """Why ``cp`` must not meet the live entry of ``pair``, or '': it would write
    through it or open it, or fail on it half-way (a directory against a non-directory:
    an outside walk saw the task's later paths left unrestored and their attributes
    not set, while the dry run said all was well)."""
    kind, theirs = _kind(pair.live), _kind(pair.copied)
    if stat.S_ISDIR(pair.copied.st_mode) or stat.S_ISDIR(pair.live.st_mode):
        return f"{kind} where the snapshot has {theirs} (cp cannot replace it)"
    if not stat.S_ISREG(pair.copied.st_mode) or stat.S_ISREG(pair.live.st_mode):
        return ""
    if stat.S_ISLNK(pair.live.st_mode):
        return "a symlink where the snapshot has a file (cp would write through it)"
    return f"{kind} where the snapshot has a file (cp would open it)"


def _kind(looked: os.stat_result) -> str:
    """``a file``, ``a directory``, ``a FIFO``...: the kind of entry ``looked`` is."""
    word = _KINDS.get(stat.S_IFMT(looked.st_mode))
    return f"a {word}" if word else "an entry of another kind"


def _differs(pair: _Pair) -> bool:
    """Whether the live entry of ``pair`` holds anything the copy's lacks: other bytes,
    another symlink target, another kind. Raises OSError."""
    copied, live = pair.copied, pair.live
    if stat.S_IFMT(copied.st_mode) != stat.S_IFMT(live.st_mode):
        return True
    if stat.S_ISLNK(live.st_mode):
        target = os.readlink(pair.copy_name, dir_fd=pair.copy_dir)
        return os.readlink(pair.name, dir_fd=pair.dir_fd) != target
    if stat.S_ISCHR(live.st_mode) or stat.S_ISBLK(live.st_mode):
        return live.st_rdev != copied.st_rdev  # another device (an outside attack)
    if not stat.S_ISREG(live.st_mode):
        return False  # a FIFO for a FIFO: nothing in it to lose
    if live.st_size != copied.st_size:
        return True
    fd = _open_checked(pair.dir_fd, pair.name, live, _FILE)
    if fd is None:
        return True  # swapped since the look: keep whatever is there then
    try:
        theirs = os.open(pair.copy_name, _FILE, dir_fd=pair.copy_dir)
        try:
            return not same_bytes(fd, theirs)
        finally:
            os.close(theirs)
    finally:
        os.close(fd)


def same_bytes(mine: int, theirs: int) -> bool:
    """Whether the open regular files ``mine`` and ``theirs`` hold the same bytes, a hole
    reading as zeros. Only the ranges where either holds data are read, from both: a
    range that is a hole in both is equal unread (a 16 GiB image holding 1 MiB reads
    2 MiB, not 32 GiB). Raises OSError."""
    size = os.fstat(mine).st_size
    if os.fstat(theirs).st_size != size:
        return False
    position = 0
    while position < size:
        start = min(
            _next(mine, position, os.SEEK_DATA, size), _next(theirs, position, os.SEEK_DATA, size)
        )
        if start >= size:
            return True  # holes to the end, in both
        end = max(_next(mine, start, os.SEEK_HOLE, size), _next(theirs, start, os.SEEK_HOLE, size))
        if not _same_span(mine, theirs, start, end):
            return False
        position = end
    return True


def _next(fd: int, offset: int, whence: int, size: int) -> int:
    """Where the first data (``SEEK_DATA``) or hole (``SEEK_HOLE``) of ``fd`` at or past
    ``offset`` starts, at most ``size`` (the end: none). A file system that cannot tell
    (EINVAL, EOPNOTSUPP) has data everywhere: it is read. Raises OSError."""
    try:
        return min(os.lseek(fd, offset, whence), size)
    except OSError as exc:
        if exc.errno == errno.ENXIO:  # no data past offset (or the file shrank)
            return size
        if exc.errno in (errno.EINVAL, errno.EOPNOTSUPP):
            return offset if whence == os.SEEK_DATA else size
        raise


def _same_span(mine: int, theirs: int, start: int, end: int) -> bool:
    """Whether both files hold the same bytes from ``start`` to ``end`` (False when one
    ends first: it shrank meanwhile). Raises OSError."""
    position = start
    while position < end:
        data = os.pread(mine, min(_PIECE, end - position), position)
        if not data or os.pread(theirs, len(data), position) != data:
            return False
        position += len(data)
    return True


@dataclass
class _Progress:
    """What a restore task has kept so far, and where."""

    kept: Path | None = None
    tree: _KeptTree | None = None
    """The kept directory, open while entries are kept into it."""
    count: int = 0
    blocks: int = 0
    lost: BoundedWarnings = field(default_factory=lambda: BoundedWarnings(limit=NAMED))
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
    ``plan`` (a dry run only says it, and makes nothing). ``found`` never overlap (a
    path in another one's tree is scanned with that one: ``files._places``). Returns that
    directory, or None when nothing differs (none is made). Raises TaskError when the
    entries do not fit, or keeping one failed: then nothing was replaced, and it says
    what was kept where."""
    safety = plan.safety_dir or fallback
    prefix = f"{task_type}-{plan.stamp}-"
    for replaced in found:
        if not replaced.entries:
            log.info("nothing to keep of %s: %s", replaced.destination, replaced.none_why())
    if not any(r.entries for r in found):
        return None
    _check_safety(safety)
    _check_room(safety, found, plan.min_free)
    progress = _Progress()
    try:
        for replaced in found:
            text = f"keep {replaced.summary()} of {replaced.destination} in {safety}/{prefix}…"
            if replaced.entries and plan.step(log, text):
                _keep_one(replaced, progress, safety, prefix, log)
        if progress.kept is not None:
            _make_durable(safety, progress)
    finally:
        if progress.tree is not None:
            progress.tree.close()
    if progress.kept is not None:
        _say_lost(log, progress.lost)
        plan.note(
            log,
            f"what the {task_type} restore replaced is kept in {progress.kept} "
            f"({_files(progress.count)}, {human_size(progress.blocks)}); nothing removes it: "
            "delete it once you no longer need it",
        )
    return progress.kept


def hand_over(task_type: str, plan: RestorePlan, path: Path, source: Path) -> Path:
    """Where the administrator finds ``path`` (a file or directory of the restored
    snapshot ``source`` that a note names, for them to use) once the restore has ended:
    ``path`` itself, unless the snapshot was unpacked from an archive into a directory
    the restore removes as it ends (an outside attack was told of a UCS system archive
    already gone); then it is moved into a new directory below the safety directory
    (``<task_type>-<stamp>-snapshot-<random>``, root's, 0700), which is returned. A dry
    run moves nothing, and returns where the restore would put it (``XXXXXXXX`` for the
    random part: the snapshot it unpacked is gone when it ends). Raises TaskError for a
    ``path`` that is a symlink or leads out of ``source`` (an archive's symlink once had
    the administrator's live UCS backups moved away), or that cannot be moved
    (:func:`check_hand_over` finds a wrong safety directory before anything is
    restored)."""
    if os.path.islink(path) or not is_within(path, source):
        raise TaskError(
            f"{printable(path, 200)} is a symlink or leads out of the snapshot: not used"
        )
    if not plan.temporary_source or plan.safety_dir is None:
        return path
    if plan.dry_run:  # (where the restore would put it: the unpacked snapshot goes away)
        return plan.safety_dir / f"{task_type}-{plan.stamp}-snapshot-XXXXXXXX" / path.name
    kept = _make_kept_dir(plan.safety_dir, f"{task_type}-{plan.stamp}-snapshot-")
    try:
        moved = Path(shutil.move(path, kept / path.name))
        fsync_dir(kept)
    except OSError as exc:
        raise TaskError(
            f"cannot keep {printable(path.name, 200)} of the snapshot in {kept}: "
            f"{exc.strerror or exc}"
        ) from None
    return moved


def check_hand_over(plan: RestorePlan) -> None:
    """Raises TaskError, before a task restores anything, when what it names for the
    administrator could not be moved out of a temporary snapshot (:func:`hand_over`):
    the safety directory is not root's alone, or a symlink another user could have
    made leads to it. A dry run asks too."""
    if plan.temporary_source and plan.safety_dir is not None:
        _check_safety(plan.safety_dir)


def _keep_one(replaced: Replaced, progress: _Progress, safety: Path, prefix: str, log: Log) -> None:
    """Keep the entries of ``replaced`` (making the task's directory first), and say what
    was kept. Raises TaskError (a kept directory with nothing in it removed)."""
    if progress.kept is None:
        progress.kept = _make_kept_dir(safety, prefix)
        try:
            progress.tree = _KeptTree(_open_kept(progress.kept))
        except TaskError:
            with contextlib.suppress(OSError):
                os.rmdir(progress.kept)  # empty: only a name is left behind otherwise
            raise
    try:
        kept = _keep(replaced, progress)
    except TaskError:
        if not progress.count:  # only directories of its own: nothing to look at
            _remove_empty(progress)
        raise
    log.info(
        "kept %s that the restore replaces in %s: %s",
        kept.summary(),
        progress.kept,
        kept.named(),
    )


def _say_lost(log: Log, lost: BoundedWarnings) -> None:
    if lost.total:
        log.warning("extended attributes that could not be kept: %s", "; ".join(lost.lines(NAMED)))


def _check_room(safety: Path, found: list[Replaced], min_free: int = 0) -> None:
    """Raises TaskError when what ``found`` keeps does not fit in ``safety``'s file
    system (its blocks and inodes, with a margin) leaving ``min_free`` bytes free (the
    safety directory is most often on the root file system, where the live databases
    write too); nothing is made (a dry run too)."""
    probe = safety
    while not probe.exists():
        probe = probe.parent
    left = room(probe)
    unit = max(left.block, 512)
    below = {
        (r.destination, e.names[:d]) for r in found for e in r.entries for d in range(len(e.names))
    }
    directories = len(below) + sum(len(r.destination.parts) for r in found) + 1  # and above
    count = sum(len(r.entries) for r in found)
    inodes = count + directories
    blocks = sum(-(-max(e.blocks, 1) // unit) * unit for r in found for e in r.entries)
    blocks += directories * unit
    need = blocks + int(blocks * MARGIN_FRACTION) + MARGIN_BYTES
    short_of_inodes = left.inodes is not None and inodes + MARGIN_INODES > left.inodes
    if need + min_free <= left.free and not short_of_inodes:
        return
    kept_free = f" (and {human_size(min_free)} kept free: min_free_space)" if min_free else ""
    raise TaskError(
        f"no room to keep what the restore replaces: {_files(count)} need "
        f"{human_size(need)}{kept_free} and {inodes + MARGIN_INODES} inodes in {safety}, where "
        f"{human_size(left.free)} and {left.inodes_words()} are free; nothing was replaced. "
        "Make room there, or restore beside the live files with --target DIR and compare"
    )


def _check_safety(safety: Path) -> None:
    """Raises TaskError when ``safety`` cannot be trusted to keep what a restore
    replaces: a symlink above it another user could have made, or, when it exists, not
    a directory of root's that only root may write to (asked by a dry run too: an
    outside walk saw one say all was well where the restore then refused)."""
    link = untrusted_link(safety / "x")
    if link is not None:
        raise TaskError(
            f"{link} is a symlink another user could have made: the restore keeps nothing "
            "through it; nothing was replaced"
        )
    try:
        info = os.lstat(safety)
    except FileNotFoundError:
        return  # made 0700 when something is kept
    except OSError as exc:
        raise TaskError(f"cannot look at {safety}: {exc.strerror or exc}") from None
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != 0 or info.st_mode & 0o022:
        raise TaskError(
            f"{safety} is not a directory of root's that only root may write to: the "
            "restore keeps nothing there; nothing was replaced"
        )


def _make_kept_dir(safety: Path, prefix: str) -> Path:
    """A new directory below ``safety`` (made 0700 when missing), named ``prefix`` and
    random letters, mode 0700: no one can guess or take its name first."""
    _check_safety(safety)
    try:
        safety.mkdir(mode=0o700, parents=True, exist_ok=True)
        _check_safety(safety)
        return Path(tempfile.mkdtemp(prefix=prefix, dir=safety))
    except OSError as exc:
        raise TaskError(
            f"cannot make a directory in {safety} to keep what the restore replaces: "
            f"{exc.strerror or exc}; nothing was replaced"
        ) from None


def _open_kept(kept: Path) -> int:
    """The new kept directory ``kept``, opened (everything is made below it by name);
    raises TaskError when it is not root's alone now."""
    try:
        fd = os.open(kept, _DIR)
    except OSError as exc:
        raise TaskError(
            f"cannot open {kept} to keep what the restore replaces: "
            f"{exc.strerror or exc}; nothing was replaced"
        ) from None
    info = os.fstat(fd)
    if info.st_uid != 0 or info.st_mode & 0o077:
        os.close(fd)
        raise TaskError(
            f"{kept} is not root's alone now: the restore keeps nothing there; nothing was replaced"
        )
    return fd


class _KeptTree:
    """A task's open kept directory, and the directory below it where the last entry
    went: one descriptor however deep (see :class:`_Cursor`). The directories on the way
    are made 0700 where missing, and synced as they are left."""

    def __init__(self, fd: int) -> None:
        self._cursor = _Cursor(fd)
        self._parts: list[str] = []

    def into(self, parts: tuple[str, ...]) -> int:
        """The descriptor of the directory ``parts`` below the kept directory (made where
        missing), open until the next call. Raises OSError."""
        common = 0
        for mine, wanted in zip(self._parts, parts, strict=False):
            if mine != wanted:
                break
            common += 1
        while len(self._parts) > common:
            self._leave()
        for name in parts[common:]:
            self._cursor.down(_made_dir(self._cursor.fd, name))
            self._parts.append(name)
        return self._cursor.fd

    def _leave(self) -> None:
        os.fsync(self._cursor.fd)
        self._cursor.up()
        self._parts.pop()

    def finish(self) -> None:
        """Sync every directory it stands below, up to the kept one. Raises OSError."""
        while self._parts:
            self._leave()
        os.fsync(self._cursor.fd)

    def remove(self) -> None:
        """Remove the directories it made, when they are all it made (no entry was kept):
        the one it stands in and those above it. Raises OSError."""
        while self._parts:
            name = self._parts.pop()
            self._cursor.up()
            os.rmdir(name, dir_fd=self._cursor.fd)

    def close(self) -> None:
        self._cursor.close()


def _made_dir(dir_fd: int, name: str) -> int:
    """The directory ``name`` below ``dir_fd``, made (0700) when missing, opened.
    Raises OSError (a directory it made is removed again)."""
    try:
        os.mkdir(name, 0o700, dir_fd=dir_fd)
    except FileExistsError:
        return os.open(name, _DIR, dir_fd=dir_fd)
    try:
        return os.open(name, _DIR, dir_fd=dir_fd)
    except OSError:
        with contextlib.suppress(OSError):
            os.rmdir(name, dir_fd=dir_fd)
        raise


def _remove_empty(progress: _Progress) -> None:
    """Remove the task's kept directory, which holds only directories on the way to the
    entry that could not be kept (best effort)."""
    assert progress.kept is not None and progress.tree is not None
    with contextlib.suppress(OSError):
        progress.tree.remove()
        os.rmdir(progress.kept)


@dataclass(frozen=True)
class _Place:
    """Where a kept entry goes: ``name`` below the open kept directory ``dir_fd``;
    ``shown`` is its path, for messages (it may be longer than ``PATH_MAX``)."""

    dir_fd: int
    name: str
    shown: str


def _keep(replaced: Replaced, progress: _Progress) -> Replaced:
    """Copy each entry of ``replaced`` into ``progress.kept``, at its absolute path.
    Returns what it kept (gone since the scan: not kept). Raises TaskError (nothing
    replaced; what was kept where) when one cannot be kept."""
    assert progress.kept is not None and progress.tree is not None
    top = replaced.destination.parts[1:]
    leaves = {e.names for e in replaced.entries}
    wanted = frozenset(
        e.names[:depth] for e in replaced.entries for depth in range(len(e.names) + 1)
    )
    kept = Replaced(replaced.copy, replaced.destination, above=replaced.above)
    shown = replaced.shown(())
    try:
        walked = _pairs(replaced.copy, replaced.destination, wanted, replaced.above)
        with contextlib.closing(walked) as pairs:
            for pair in pairs:
                if pair.names not in leaves:
                    continue  # a directory on the way
                shown = replaced.shown(pair.names)
                why = _clash(pair)
                if why:
                    raise TaskError(
                        f"{shown} is {why} now: nothing was replaced; {progress.so_far()}"
                    )
                parts = (*top, *pair.names)
                into = progress.tree.into(parts[:-1])
                where = os.path.join(progress.kept, *parts)
                blocks = _keep_entry(pair, _Place(into, parts[-1], where), progress.lost)
                kept.entries.append(Entry(pair.names, blocks))
                progress.blocks += blocks
                progress.count += 1
    except OSError as exc:
        raise _failed(shown, exc, progress) from None
    return kept


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
    """Every kept file was synced as it was written, every directory of the kept tree
    as it was left; now the rest of them, up to the kept directory, and its entry in
    ``safety``, so that a crash during the ``cp`` that follows cannot lose what was
    kept. Raises TaskError."""
    assert progress.kept is not None and progress.tree is not None
    try:
        progress.tree.finish()
        fsync_dir(safety)
    except OSError as exc:
        raise _failed(str(progress.kept), exc, progress) from None


def _keep_entry(pair: _Pair, place: _Place, lost: BoundedWarnings) -> int:
    """Copy the live entry of ``pair`` to the new ``place``; returns the bytes it takes.
    Raises OSError (what it made of the entry removed again)."""
    live = pair.live
    if stat.S_ISREG(live.st_mode):
        fd = _open_checked(pair.dir_fd, pair.name, live, _FILE)
        if fd is None:
            raise OSError(errno.ESTALE, "it was replaced while it was being kept")
        try:
            return _keep_file(fd, place, lost)
        finally:
            os.close(fd)
    into, name = place.dir_fd, place.name
    if stat.S_ISLNK(live.st_mode):
        os.symlink(os.readlink(pair.name, dir_fd=pair.dir_fd), name, dir_fd=into)
    else:  # a FIFO, a socket or a device: a new node of its kind (no xattrs)
        os.mknod(name, stat.S_IFMT(live.st_mode) | 0o600, live.st_rdev, dir_fd=into)
    with _undone(place):
        if not stat.S_ISLNK(live.st_mode):
            os.chmod(name, stat.S_IMODE(live.st_mode), dir_fd=into)
        os.chown(name, live.st_uid, live.st_gid, dir_fd=into, follow_symlinks=False)
        times = (live.st_atime_ns, live.st_mtime_ns)
        os.utime(name, ns=times, dir_fd=into, follow_symlinks=False)
    return 0


@contextlib.contextmanager
def _undone(place: _Place) -> Iterator[None]:
    """Remove the entry just made at ``place`` when what follows raises OSError: a part
    of a file is not kept."""
    try:
        yield
    except OSError:
        with contextlib.suppress(OSError):
            os.unlink(place.name, dir_fd=place.dir_fd)
        raise


def _keep_file(fd: int, place: _Place, lost: BoundedWarnings) -> int:
    """Copy the open regular file ``fd`` (holes as holes) to the new file ``place`` with
    its owner, extended attributes, mode and times, durably; returns its blocks."""
    st = os.fstat(fd)
    out = os.open(place.name, _NEW, 0o600, dir_fd=place.dir_fd)
    try:
        with _undone(place):
            for region in data_regions(fd, st.st_size) or [Region(0, st.st_size)]:
                copy_range(fd, out, region.offset, region.length)
            os.ftruncate(out, st.st_size)
            os.fchown(out, st.st_uid, st.st_gid)  # before the capability and set-id bits
            _copy_xattrs(fd, out, place.shown, lost)
            os.fchmod(out, stat.S_IMODE(st.st_mode))
            os.utime(out, ns=(st.st_atime_ns, st.st_mtime_ns))
            os.fsync(out)
            return os.fstat(out).st_blocks * 512
    finally:
        os.close(out)


def _copy_xattrs(source: int, out: int, shown: str, lost: BoundedWarnings) -> None:
    """Every extended attribute of ``source`` (ACLs, a file capability) onto ``out``;
    one that cannot be set is noted in ``lost`` (``shown`` names the kept file)."""
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
            lost.append(f"{printable(shown, NAME_LIMIT)}: {name}: {exc.strerror or exc}")
