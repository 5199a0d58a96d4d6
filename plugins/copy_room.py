"""Whether the live file systems a ``files`` restore copies onto can take what it adds.

``cp -a`` writes the snapshot's copy of each path over the live one, one file after the
other. Before anything is kept or replaced (a dry run too), :func:`check_copy_room` adds
up, for each file system it writes on, the most its writes can add at any moment, in
whatever order ``cp`` takes the files: every file the live tree lacks counts whole (its
blocks where the snapshot was unpacked, each inode once: holes stay holes, ``cp
--sparse=always``), a live file that ``cp`` truncates and writes again (a regular file
of one link, replaced by a regular file) only by what the copy takes beyond it
(:attr:`.before_restore.Replaced.freed`); nothing another file frees is counted, since
``cp`` may write first. A file lands on the file system of the directory ``cp`` writes
it in: the real directory (a symlinked parent followed, as ``cp`` follows it), or a file
system mounted below the restored path. The kept copies count too when the safety
directory is on one of those file systems (elsewhere
:func:`.before_restore.keep_aside` checks that they fit). Directories are not counted.

A file system that would keep less than ``min_free_space`` free (client.yaml), or fewer
than MIN_FREE_INODES inodes (with ``min_free_space: 0``: that cannot take it at all,
16 inodes kept), refuses the restore in words, unless the restore adds nothing there: a
restore onto a full disk filled it to the last byte, the database beside it failing, and
left a cut-short file at the live path (helper-147 F3). Of two paths of a task that
overlap, the inner one is counted with the outer one, whose copy holds it.
"""

from __future__ import annotations

import contextlib
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path

from ..common.fsutil import MIN_FREE_INODES, room
from ..common.text import counted, printable
from ..common.units import human_size
from .before_restore import MARGIN_BYTES, MARGIN_INODES, InStep, Replaced
from .task import TaskError

_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
MOUNTINFO = "/proc/self/mountinfo"


@dataclass
class Footprint:
    """What files a restore writes on one file system take there."""

    files: int = 0
    """Entries that are not directories."""
    inodes: int = 0
    """Of them, inodes (a hard-linked file once)."""
    bytes: int = 0
    """Blocks they take (``st_blocks * 512``, a hard-linked file once)."""


def check_copy_room(
    places: list[tuple[Path, Path]], found: list[Replaced], safety: Path, min_free: int
) -> list[int]:
    """Check that restoring each ``(copy, destination)`` of ``places`` (the live entries
    it overwrites in ``found``, the differing ones kept in ``safety``) leaves
    ``min_free`` bytes free on every file system it writes on (see the module). Reads,
    never writes. Returns how many files it restores of each path. Raises TaskError, naming the file
    system's directory, what the restore adds and what is free, when one would not."""
    adds: dict[int, _Adds] = {}
    inner = _inner({destination for _, destination in places})
    try:
        counts = [
            _add_copy(adds, copy, destination, destination in inner) for copy, destination in places
        ]
        for replaced in (r for r in found if r.destination not in inner):
            for device, (freed, reused) in replaced.freed.items():
                if device in adds:
                    adds[device].bytes -= freed
                    adds[device].inodes -= reused
        kept = [e for r in found for e in r.entries]
        keeping = adds.get(os.stat(_directory_of(safety)).st_dev) if kept else None
        if keeping is not None:  # (elsewhere keep_aside checks that they fit)
            keeping.bytes += sum(e.blocks for e in kept) + MARGIN_BYTES
            keeping.inodes += len(kept) + MARGIN_INODES
        for added in adds.values():
            _check(added, min_free)
    except OSError as exc:  # (a directory gone while it was looked at)
        raise TaskError(
            f"cannot tell whether the restore fits: {printable(exc, 300)}; nothing was replaced"
        ) from None
    return counts


def _add_copy(adds: dict[int, _Adds], copy: Path, destination: Path, inner: bool) -> int:
    """Add to ``adds`` what restoring ``copy`` at ``destination`` writes on each file
    system (nothing when it is ``inner``: counted with the path it lies in). Returns how
    many files it restores."""
    files = 0
    for place, taking in _footprints(copy, _landings(destination)).items():
        files += taking.files
        if not inner:
            added = _adds_at(adds, place)
            added.bytes += taking.bytes
            added.inodes += taking.inodes
            added.files += taking.files
    return files


def _inner(destinations: set[Path]) -> set[Path]:
    """The ``destinations`` that lie in another one (paths of a task that overlap: the
    outer one's copy holds them)."""
    return {d for d in destinations if any(d != o and d.is_relative_to(o) for o in destinations)}


@dataclass
class _Adds:
    """What a restore adds to one file system, and its directory to name it by."""

    place: Path
    files: int = 0
    bytes: int = 0
    inodes: int = 0


def _adds_at(adds: dict[int, _Adds], place: Path) -> _Adds:
    return adds.setdefault(os.stat(place).st_dev, _Adds(place))


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


def _landings(destination: Path) -> dict[tuple[str, ...], Path]:
    """Where what is restored at ``destination`` lands, by the names below it: ``()``
    the real directory ``cp`` writes in (``destination`` when it is a directory, else
    the one it is made in), and each file system mounted below it."""
    if os.path.isdir(destination) and not os.path.islink(destination):
        top = Path(os.path.realpath(destination))
        return {(): top, **_mounts_below(top)}
    return {(): _directory_of(destination.parent)}


def _directory_of(path: Path) -> Path:
    """The real directory ``path`` is, or the nearest one above it that exists (a
    symlink on the way followed, as a writer below it follows it)."""
    while not os.path.isdir(path) and path != path.parent:
        path = path.parent
    return Path(os.path.realpath(path))


def _mounts_below(top: Path) -> dict[tuple[str, ...], Path]:
    """The file systems mounted below the directory ``top``, by their names below it."""
    below = {}
    with open(MOUNTINFO, encoding="utf-8", errors="surrogateescape") as mounts:
        for line in mounts:
            fields = line.split(" ")
            if len(fields) < 5:
                continue
            point = Path(re.sub(r"\\([0-7]{3})", lambda m: chr(int(m[1], 8)), fields[4]))
            if point != top and point.is_relative_to(top):
                below[point.relative_to(top).parts] = point
    return below


def _footprints(copy: Path, landings: dict[tuple[str, ...], Path]) -> dict[Path, Footprint]:
    """What the snapshot's ``copy`` takes where each part lands (``landings``: by the
    names below it, the deepest one that holds an entry's names), walked by descriptors
    however deep it is; what cannot be read is not counted."""
    found = {place: Footprint() for place in landings.values()}
    seen: set[tuple[int, int]] = set()
    with contextlib.suppress(OSError), contextlib.closing(InStep(copy, copy)) as walk:
        for spot in walk:
            entry = os.stat(spot.copy_name, dir_fd=spot.copy_dir, follow_symlinks=False)
            if stat.S_ISDIR(entry.st_mode):
                walk.enter(spot, os.open(spot.name, _DIR, dir_fd=spot.live_dir))
                continue
            taking = found[landings[_deepest(spot.names, landings)]]
            taking.files += 1
            if (entry.st_dev, entry.st_ino) not in seen:  # (cp -a links the others)
                seen.add((entry.st_dev, entry.st_ino))
                taking.inodes += 1
                taking.bytes += entry.st_blocks * 512
    return found


def _deepest(names: tuple[str, ...], landings: dict[tuple[str, ...], Path]) -> tuple[str, ...]:
    """The longest key of ``landings`` that ``names`` starts with."""
    if len(landings) > 1:
        for length in range(len(names), 0, -1):
            if names[:length] in landings:
                return names[:length]
    return ()
