"""Whether the live file systems a ``files`` restore copies onto can take what it adds.

``cp -a`` writes the snapshot's copy of each path over the live one: a file it replaces
is truncated and written again, a file the live tree lacks is new. Before anything is
replaced (a dry run too), :func:`check_copy_room` adds up, for each file system a
restored path lands on, what the copies take (their blocks, each inode once: holes stay
holes, ``cp --sparse=always``) less what the live files they overwrite take now
(:attr:`.before_restore.Replaced.overwritten`), and what :func:`.before_restore.keep_aside`
keeps there when the safety directory is on it. A file system that would keep less than
``min_free_space`` free (client.yaml; with 0, one that cannot take it at all) refuses
the restore in words: a restore onto a full disk filled it to the last byte, the
database beside it failing, and left a cut-short file at the live path (an outside
attack, helper-147 F3).
"""

from __future__ import annotations

import contextlib
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from ..common.fsutil import room
from ..common.text import counted, printable
from ..common.units import human_size
from .before_restore import MARGIN_BYTES, MARGIN_INODES, InStep, Replaced
from .task import TaskError

_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


@dataclass
class Footprint:
    """What a snapshot's copy of a path takes on disk (:func:`footprint`)."""

    files: int = 0
    """Entries that are not directories (1 for a file)."""
    inodes: int = 0
    """Entries, directories too, a hard-linked file once."""
    bytes: int = 0
    """Blocks its entries take (``st_blocks * 512``), a hard-linked file once."""


def footprint(copy: Path) -> Footprint:
    """What the snapshot's ``copy`` takes, walked by descriptors however deep it is; what
    cannot be read is not counted."""
    found = Footprint()
    seen: set[tuple[int, int]] = set()
    with contextlib.suppress(OSError), contextlib.closing(InStep(copy, copy)) as walk:
        for spot in walk:
            entry = os.stat(spot.copy_name, dir_fd=spot.copy_dir, follow_symlinks=False)
            if not stat.S_ISDIR(entry.st_mode):
                found.files += 1
            if (entry.st_dev, entry.st_ino) not in seen:
                seen.add((entry.st_dev, entry.st_ino))
                found.inodes += 1
                found.bytes += entry.st_blocks * 512
            if stat.S_ISDIR(entry.st_mode):
                walk.enter(spot, os.open(spot.name, _DIR, dir_fd=spot.live_dir))
    return found


@dataclass
class _Adds:
    """What a restore adds to one file system, and one of its paths to name it by."""

    place: Path
    bytes: int = 0
    inodes: int = 0


def check_copy_room(
    copies: list[tuple[Path, Footprint]], found: list[Replaced], safety: Path, min_free: int
) -> None:
    """Raises TaskError, naming the file system's path, what the restore adds there and
    what is free, when restoring each ``(destination, footprint)`` of ``copies`` (the
    live entries it overwrites in ``found``, kept in ``safety``) would leave less than
    ``min_free`` bytes, or fewer than MARGIN_INODES inodes, free on a file system; one
    the restore adds nothing to is never refused. Reads, never writes."""
    overwritten = {r.destination: r for r in found}
    adds: dict[int, _Adds] = {}
    for destination, copy in copies:
        place = _existing(destination)
        added = adds.setdefault(os.lstat(place).st_dev, _Adds(place))
        replaced = overwritten.get(destination)
        added.bytes += copy.bytes - (replaced.overwritten if replaced else 0)
        added.inodes += copy.inodes - (replaced.pairs if replaced else 0)
    safety_place = _existing(safety)
    kept = adds.get(os.lstat(safety_place).st_dev)
    if kept is not None and any(r.entries for r in found):  # keep_aside's copies land there
        kept.bytes += sum(r.blocks for r in found) + MARGIN_BYTES
        kept.inodes += sum(len(r.entries) for r in found) + MARGIN_INODES
    for added in adds.values():
        _check(added, min_free, sum(c.files for _, c in copies))


def _check(added: _Adds, min_free: int, files: int) -> None:
    left = room(added.place)
    short_of_bytes = added.bytes > 0 and left.free - added.bytes < min_free
    short_of_inodes = (
        added.inodes > 0 and left.inodes is not None and left.inodes - added.inodes < MARGIN_INODES
    )
    if not short_of_bytes and not short_of_inodes:
        return
    kept = f", keeping min_free_space ({human_size(min_free)}) free" if min_free else ""
    raise TaskError(
        f"no room to restore {counted(files, 'file')} onto the file system of "
        f"{printable(added.place, 200)}: the restore adds {human_size(max(added.bytes, 0))} "
        f"and {counted(max(added.inodes, 0), 'inode')} there{kept}, where {human_size(left.free)} "
        f"and {left.inodes_words()} are free; nothing was replaced. Make room there, or "
        "restore on another disk with --target DIR"
    )


def _existing(path: Path) -> Path:
    """``path`` when it is a directory, else the nearest directory above it that exists
    (a symlink is replaced where it stands, never followed)."""
    while (os.path.islink(path) or not os.path.isdir(path)) and path != path.parent:
        path = path.parent
    return path
