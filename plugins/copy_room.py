"""Whether the live file systems a ``files`` restore copies onto can take what it adds.

``cp -a`` writes the snapshot's copy of each path over the live one, one entry after the
other. Before anything is kept or replaced (a dry run too), :func:`check_copy_room` adds
up, for each file system it writes on, the most its writes can add at any moment, in
whatever order ``cp`` takes them:

- every entry the live tree lacks counts whole: a directory an inode and a block, a
  regular file an inode and its blocks where the snapshot was unpacked, at least its
  size up to one block (a small file stored inline there takes a block on most file
  systems), rounded up to the live file system's block (holes stay holes, ``cp
  --sparse=always``); a hard-linked file once (its links landing on two file systems
  refuse the restore: ``cp`` cannot link across);
- a live entry of one link that ``cp`` replaces reuses its inode; a live regular file
  of one link that a regular file replaces (truncated and written again) reuses its
  blocks, up to the copy's, except on a file system that shares blocks among files
  (btrfs, ZFS, bcachefs: a snapshot may hold them); a live directory the copy's is
  merged into is no new one (:attr:`.before_restore.Replaced.freed`);
- nothing one entry frees is counted for another, which ``cp`` may write first.

An entry lands on the file system of the directory ``cp`` writes it in: the real
directory (a symlinked parent followed, as ``cp`` follows it), a file system mounted
below the restored path, or the restored path itself when it is a mount point. The kept
copies count too when the safety directory is on one of those file systems (elsewhere
:func:`.before_restore.keep_aside` checks that they fit). A file system nothing lands on
is not looked at.

A file system that would keep less than ``min_free_space`` free (client.yaml), or fewer
than MIN_FREE_INODES inodes (with ``min_free_space: 0``: that cannot take it at all,
16 inodes kept), refuses the restore in words, unless the restore adds nothing there: a
restore onto a full disk filled it to the last byte, the database beside it failing, and
left a cut-short file at the live path (helper-147 F3). Of two paths of a task that
overlap (or one listed twice), the inner one is counted with the outer one, whose copy
holds it. The subvolumes of one btrfs or bcachefs device and the datasets of one ZFS
pool are checked together (:meth:`_Check.pools`). Not known here: a file system that
compresses or deduplicates may take more or less than counted.
"""

from __future__ import annotations

import contextlib
import os
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path

from ..common.fsutil import MIN_FREE_INODES, room
from ..common.text import counted, printable
from ..common.units import human_size
from .before_restore import MARGIN_BYTES, MARGIN_INODES, InStep, Replaced
from .task import TaskError

_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
MOUNTINFO = "/proc/self/mountinfo"
SHARED_BLOCKS = frozenset({"btrfs", "zfs", "bcachefs", "overlay", "aufs"})
"""File systems where truncating a live file may free nothing: its blocks may be shared
(snapshots, reflinks), or it lies in a lower layer that a write copies up (a
container's root)."""
POOLED = frozenset({"btrfs", "zfs", "bcachefs"})
"""File systems whose subvolumes (datasets) share one pool of space, each with a device
of its own: checked as one, by the device mounted (the pool's name for ZFS's
``pool/dataset``)."""


@dataclass
class _Adds:
    """What a restore adds to one file system, and its directory to name it by."""

    place: Path
    block: int
    """Bytes of the file system's allocation unit."""
    pool: tuple[str, str]
    """The space it draws on: its device, or the pool its subvolume is of."""
    shares_blocks: bool = False
    files: int = 0
    bytes: int = 0
    inodes: int = 0


Where = tuple[int, tuple[str, ...]]
"""A file of a restore: the number of its restored path, and its names below it."""


@dataclass
class Links:
    """The snapshot's hard links between two restored paths. ``cp -a`` links a file's
    names within the one path it copies, never across two (each path has a ``cp`` of
    its own): the restore links them again once every path is copied (:mod:`.relink`).
    Holds only regular files of several links, as the room check meets them."""

    first: dict[int, Where] = field(default_factory=dict)
    """Each such file, by :func:`_inode`: where it was met first."""
    again: list[tuple[Where, Where]] = field(default_factory=list)
    """Each name of such a file in a later path than its first: (first, this one)."""

    def note(self, entry: os.stat_result, where: Where) -> None:
        """Note ``entry`` met at ``where``; a name in another path than its first is to
        be linked again."""
        first = self.first.setdefault(_inode(entry), where)
        if first[0] != where[0]:
            self.again.append((first, where))


@dataclass
class RoomChecked:
    """What :func:`check_copy_room` found on its way."""

    counts: list[int]
    """How many files each path restores."""
    links: Links


@dataclass
class _Check:
    """One check's file systems, by ``st_dev``, and the mounts it looked up; the hard
    links between paths, and the number of the path walked (None for an inner one, the
    outer one's ``cp`` copies it, and for the one path of a restore of one: nothing
    noted)."""

    adds: dict[int, _Adds] = field(default_factory=dict)
    mounts: list[tuple[Path, str, str]] | None = None
    links: Links = field(default_factory=Links)
    number: int | None = None

    def at(self, place: Path) -> _Adds:
        """The file system of the directory ``place`` (looked at once)."""
        device = os.stat(place).st_dev
        if device not in self.adds:
            kind, source = self.mounted(place)
            pool = ("device", str(device))
            if kind in POOLED:  # (a btrfs's source is its device, a ZFS one's pool/dataset)
                pool = (kind, source.split("/")[0] if kind == "zfs" else source)
            self.adds[device] = _Adds(place, room(place).block, pool, kind in SHARED_BLOCKS)
        return self.adds[device]

    def mount_points(self) -> list[tuple[Path, str, str]]:
        """Every mount point, its file system type and source, from MOUNTINFO (read
        once)."""
        if self.mounts is None:
            self.mounts = _read_mounts()
        return self.mounts

    def mounted(self, place: Path) -> tuple[str, str]:
        """The type and source of the file system mounted nearest above ``place`` (a
        real path)."""
        best, found = Path("/"), ("", "")
        for point, kind, source in self.mount_points():
            if place.is_relative_to(point) and len(point.parts) >= len(best.parts):
                best, found = point, (kind, source)
        return found

    def pools(self) -> list[_Adds]:
        """What the restore adds to each pool of space (a file system, or the
        subvolumes of one pool together, named by the first)."""
        pools: dict[tuple[str, str], _Adds] = {}
        for added in self.adds.values():
            pool = pools.setdefault(added.pool, _Adds(added.place, added.block, added.pool))
            pool.files += added.files
            pool.bytes += added.bytes
            pool.inodes += added.inodes
        return list(pools.values())


def check_copy_room(
    places: list[tuple[Path, Path]], found: list[Replaced], safety: Path, min_free: int
) -> RoomChecked:
    """Check that restoring each ``(copy, destination)`` of ``places`` (the live entries
    it meets in ``found``, the differing ones kept in ``safety``) leaves ``min_free``
    bytes free on every file system it writes on (see the module). Reads, never writes.
    Returns how many files it restores of each path, and the hard links between paths.
    Raises TaskError, naming the file system's directory, what the restore adds and
    what is free, when one would not."""
    check = _Check()
    inner = nested([destination for _, destination in places])
    try:
        counts = []
        several = len(places) - len(inner) > 1  # (else no link between two: none noted)
        for number, (copy, destination) in enumerate(places):
            check.number = number if several and number not in inner else None
            counts.append(_add_copy(check, copy, destination, number in inner))
        counted_at = {d for number, (_, d) in enumerate(places) if number not in inner}
        for destination in counted_at:  # (an inner or repeated path has no scan of its own)
            _credit(check, next((r for r in found if r.destination == destination), None))
        _add_kept(check, [e for r in found for e in r.entries], safety)
        for pool in check.pools():
            _check(pool, min_free)
    except OSError as exc:  # (a directory gone while it was looked at)
        raise TaskError(
            f"cannot tell whether the restore fits: {printable(exc, 300)}; nothing was replaced"
        ) from None
    return RoomChecked(counts, check.links)


def _add_kept(check: _Check, kept: list, safety: Path) -> None:
    """Add the ``kept`` entries' copies to the pool of space of ``safety`` when the
    restore writes there too (elsewhere keep_aside checks that they fit)."""
    if not kept:
        return
    pools = {added.pool for added in check.adds.values()}
    keeping = check.at(_directory_of(safety))
    if keeping.pool in pools:
        keeping.bytes += sum(e.blocks for e in kept) + MARGIN_BYTES
        keeping.inodes += len(kept) + MARGIN_INODES


def _credit(check: _Check, replaced: Replaced | None) -> None:
    """Take from ``check`` what ``cp`` reuses of the live entries of ``replaced``."""
    if replaced is None:
        return
    for device, freed in replaced.freed.items():
        added = check.adds.get(device)
        if added is None:
            continue
        if not added.shares_blocks:
            added.bytes -= freed.bytes
        added.bytes -= freed.directories * added.block
        added.inodes -= freed.inodes + freed.directories


def _add_copy(check: _Check, copy: Path, destination: Path, inner: bool) -> int:
    """Add to ``check`` what restoring ``copy`` at ``destination`` writes on each file
    system (nothing when it is ``inner``: counted with the path it lies in). Returns how
    many files it restores."""
    files = 0
    for place, taking in _footprints(check, copy, _landings(check, destination)).items():
        files += taking.files
        if not inner:
            added = check.adds[os.stat(place).st_dev]
            added.bytes += taking.bytes
            added.inodes += taking.inodes
            added.files += taking.files
    return files


def nested(destinations: list[Path]) -> set[int]:
    """The numbers of the ``destinations`` that lie in another one, or repeat an
    earlier one (paths of a task that overlap: the outer one's copy holds them)."""
    return {
        number
        for number, d in enumerate(destinations)
        if any(d != o and d.is_relative_to(o) for o in destinations) or d in destinations[:number]
    }


def _check(added: _Adds, min_free: int) -> None:
    left = room(added.place)
    short_of_bytes = added.bytes > 0 and left.free - added.bytes < min_free
    keep_inodes = MIN_FREE_INODES if min_free else MARGIN_INODES
    short_of_inodes = (
        added.inodes > 0 and left.inodes is not None and left.inodes - added.inodes < keep_inodes
    )
    if not short_of_bytes and not short_of_inodes:
        return
    kept = f", keeping min_free_space ({human_size(min_free)}) free" if min_free else ""
    raise TaskError(
        f"no room to restore {counted(added.files, 'file')} onto the file system of "
        f"{printable(added.place, 200)}: the restore adds {human_size(max(added.bytes, 0))} "
        f"and {counted(max(added.inodes, 0), 'inode')} there{kept}, where "
        f"{human_size(left.free)} and {left.inodes_words()} are free; nothing was "
        "replaced. Make room there, or restore on another disk with --target DIR"
    )


def _landings(check: _Check, destination: Path) -> dict[tuple[str, ...], Path]:
    """Where what is restored at ``destination`` lands, by the names below it: ``()``
    the real directory ``cp`` writes in (``destination`` when it is a directory, else
    the one it is made in; ``destination`` itself when a file is mounted there), and
    each file system mounted below it, on a directory or on a file (a container's
    bind-mounted file: hard links of the snapshot landing on it and beside it are
    refused, helper-154 F5); one hidden by another mounted over it is gone: its
    entries land where the path leads now."""
    real = Path(os.path.realpath(destination))
    if os.path.isdir(destination) and not os.path.islink(destination):
        below = {
            point.relative_to(real).parts: point
            for point, _, _ in check.mount_points()
            if point != real and point.is_relative_to(real) and os.path.exists(point)
        }
        return {(): real, **below}
    mounted = any(point == real for point, _, _ in check.mount_points())
    if mounted and os.path.lexists(destination) and not os.path.islink(destination):
        return {(): real}  # (a file mounted there: it lands on that file system)
    return {(): _directory_of(destination.parent)}


def _directory_of(path: Path) -> Path:
    """The real directory ``path`` is, or the nearest one above it that exists (a
    symlink on the way followed, as a writer below it follows it)."""
    while not os.path.isdir(path) and path != path.parent:
        path = path.parent
    return Path(os.path.realpath(path))


def _read_mounts() -> list[tuple[Path, str, str]]:
    """Every mount point of this process, its file system type and its source."""
    mounts = []
    with open(MOUNTINFO, encoding="utf-8", errors="surrogateescape") as lines:
        for line in lines:
            fields, _, rest = line.partition(" - ")
            parts, after = fields.split(" "), [*rest.split(" "), "", ""]
            if len(parts) >= 5:
                point = _unescaped(parts[4])
                mounts.append((Path(point), after[0], _unescaped(after[1])))
    return mounts


def _unescaped(field: str) -> str:
    """A MOUNTINFO field with its octal escapes (``\\040`` a space) read."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m[1], 8)), field)


@dataclass
class _Footprint:
    """What a restore's entries take on one file system."""

    files: int = 0
    """Entries that are not directories."""
    inodes: int = 0
    """Entries, directories too (a hard-linked file once)."""
    bytes: int = 0
    """What they take there (see the module)."""


def _footprints(
    check: _Check, copy: Path, landings: dict[tuple[str, ...], Path]
) -> dict[Path, _Footprint]:
    """What the snapshot's ``copy`` takes where each part lands (``landings``: by the
    names below it, the deepest one that holds an entry's names), walked by descriptors
    however deep it is. Only a file system something lands on is looked at. Raises
    OSError when an entry cannot be looked at (what is not counted could fill a disk)."""
    found: dict[Path, _Footprint] = {}
    blocks: dict[Path, int] = {}
    seen: dict[int, tuple[Path, tuple[str, ...]]] = {}
    with contextlib.closing(InStep(copy, copy)) as walk:
        for spot in walk:
            entry = os.stat(spot.copy_name, dir_fd=spot.copy_dir, follow_symlinks=False)
            place = landings[_deepest(spot.names, landings)]
            if place not in blocks:
                blocks[place] = check.at(place).block
            block = blocks[place]
            taking = found.setdefault(place, _Footprint())
            if stat.S_ISDIR(entry.st_mode):
                taking.inodes += 1
                taking.bytes += block
                walk.enter(spot, os.open(spot.name, _DIR, dir_fd=spot.live_dir))
                continue
            taking.files += 1
            if entry.st_nlink > 1 and check.number is not None and stat.S_ISREG(entry.st_mode):
                check.links.note(entry, (check.number, spot.names))
            if _first_link(seen, entry, place, spot.names):  # (cp -a links the others)
                taking.inodes += 1
                taking.bytes += _takes(entry, block)
    return found


def _first_link(
    seen: dict[int, tuple[Path, tuple[str, ...]]],
    entry: os.stat_result,
    place: Path,
    names: tuple[str, ...],
) -> bool:
    """Whether ``entry`` (at ``names``, landing on ``place``) is the first of its hard
    links met; records one of several links in ``seen`` (a file of one link is always
    the first: nothing kept for it). Raises TaskError when an earlier link of it lands
    on another file system: ``cp -a`` links the second to the first and cannot across
    file systems ("Invalid cross-device link"), which stopped the restore half way
    (helper-152 F6; the snapshot was taken before a disk was mounted there)."""
    if entry.st_nlink == 1:
        return True
    first = seen.setdefault(_inode(entry), (place, names))
    if first == (place, names):
        return True
    if first[0] == place:
        return False
    shown = [printable("/".join(n), 200) for n in (first[1], names)]
    raise TaskError(
        f"{shown[0]} and {shown[1]} are one file in the snapshot (hard links), but land on "
        f"two file systems now ({printable(first[0], 200)} and {printable(place, 200)}): "
        "cp cannot link them across; nothing was replaced. Restore on one disk with "
        "--target DIR and copy them into place"
    )


def _inode(entry: os.stat_result) -> int:
    """``entry``'s device and inode as one number (one object, not a tuple of two: the
    records of hard links hold one per file of several links)."""
    return entry.st_dev << 64 | entry.st_ino


def _takes(entry: os.stat_result, block: int) -> int:
    """Bytes a regular file like ``entry`` takes on a file system of ``block`` (none
    for another kind: a symlink's target is most often stored in its inode)."""
    if not stat.S_ISREG(entry.st_mode):
        return 0
    need = entry.st_blocks * 512
    if need < entry.st_size:  # (sparse, or stored inline)
        need = max(need, min(entry.st_size, block))
    return -(-need // block) * block


def _deepest(names: tuple[str, ...], landings: dict[tuple[str, ...], Path]) -> tuple[str, ...]:
    """The longest key of ``landings`` that ``names`` starts with."""
    if len(landings) > 1:
        for length in range(len(names), 0, -1):
            if names[:length] in landings:
                return names[:length]
    return ()
