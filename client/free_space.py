"""A client run's disk space: it starts only with room for what it writes, and stops
before it fills the disk of the machine it backs up (a database there fails when its disk
is full).

``min_free_space`` (client.yaml) is what a run leaves free in its work and archive
directories. At the start a run asks for that plus what the last run took there (the
largest drop of their free space it saw, recorded in ``.client-space.json`` in the archive
directory), and in the archive directory at least 1.1 times the newest full archive. While
it writes, :class:`FreeSpaceWatch` looks at both twice a second and stops it below
``min_free_space``, or below MIN_FREE_INODES inodes.
"""

from __future__ import annotations

import dataclasses
import json
import os
import stat
import tempfile
from pathlib import Path

from ..common import jsontext
from ..common.archive import directory as archives
from ..common.archive.unpack import UnpackLimits
from ..common.errors import PullbackError
from ..common.fsutil import MIN_FREE_INODES, Room, atomic_write, room
from ..common.log import get_logger
from ..common.units import human_size
from .config import ClientConfig

log = get_logger()

EVERY = 0.5
"""Seconds between two looks at the free space while a run writes (a ``statvfs`` each)."""

SPACE_FILE = ".client-space.json"
"""In the archive directory: what the last run took in each directory, in bytes and in
inodes (``{"took": {"/var/lib/pullback/work": 123, ...}, "took_inodes": {...}}``), read
by the next run's start."""
BYTES, INODES = "took", "took_inodes"
"""SPACE_FILE's two records."""

MAX_SPACE_FILE = 64 * 1024
"""Bytes of SPACE_FILE read at most (it holds two numbers)."""


def check_free_space(config: ClientConfig) -> None:
    """Refuse to start when the archive or work directory is short of space: each needs
    ``min_free_space`` and what the last run took there, and MIN_FREE_INODES inodes
    (none of it when ``min_free_space`` is 0); the archive directory also 1.1 x the
    newest full archive.

    Raises PullbackError naming the directory, what is free and what is needed.
    """
    published = [a for a in archives.list_archives(config.archive_dir) if a.complete]
    # the newest full archive: the newest archive may be a small delta, the run a full
    fulls = [a for a in published if a.sidecar and not a.sidecar.archive.is_delta]
    newest = (fulls or published)[-1].path.stat().st_size if published else 0
    recorded = last_took(config) if config.min_free_space else {}
    took, took_inodes = recorded.get(BYTES, {}), recorded.get(INODES, {})
    for directory in (config.archive_dir, config.work_dir):
        left = room(directory)
        free = left.free
        need, why = _need(config, took.get(str(directory), 0))
        if directory == config.archive_dir and int(newest * 1.1) > need:
            need, why = int(newest * 1.1), f"1.1 x the newest full archive ({human_size(newest)})"
        if free < need:
            raise PullbackError(
                f"not enough free space in {directory}: {human_size(free)} free, "
                f"need {human_size(need)} ({why}); free some space"
                + (" or lower min_free_space" if config.min_free_space else "")
            )
        if config.min_free_space:
            _check_inodes(config, directory, left, took_inodes.get(str(directory), 0))


def _check_inodes(config: ClientConfig, directory: Path, left: Room, took: int) -> None:
    """Refuse (PullbackError) a directory with fewer free inodes than MIN_FREE_INODES
    and the ``took`` the last run took there (one that counts none passes): a run
    stopped for inodes was let in again and stopped again (helper-150 F9)."""
    need = MIN_FREE_INODES + took
    if left.inodes is None or left.inodes >= need:
        return
    record = config.archive_dir / SPACE_FILE
    why = (
        f"; {took:,} of them the last run took there, recorded in {record}: delete it "
        "if other files took that"
        if took
        else ""
    )
    raise PullbackError(
        f"not enough free inodes in {directory}: {left.inodes:,} free, need "
        f"{need:,} (a run stops below {MIN_FREE_INODES:,}{why}); remove some files"
    )


def _need(config: ClientConfig, took: int) -> tuple[int, str]:
    """What a directory the last run took ``took`` bytes of needs free, and why."""
    why = "min_free_space"
    if took:
        why += (
            f" and the {human_size(took)} the last run took there, recorded in "
            f"{config.archive_dir / SPACE_FILE}: delete it if other data took that"
        )
    return config.min_free_space + took, why


def last_took(config: ClientConfig) -> dict[str, dict[str, int]]:
    """What the last run took in each directory (SPACE_FILE, read once), by record
    (BYTES, INODES) and path: only what its file system could hold. Empty when nothing
    is recorded or the file is not as this module writes it (then said: a regular file,
    JSON, at most MAX_SPACE_FILE)."""
    path = config.archive_dir / SPACE_FILE
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    try:
        fd = os.open(path, flags)  # (a FIFO there blocked the start for ever)
        with open(fd, "rb") as handle:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise ValueError("not a regular file")
            data = jsontext.document(handle.read(MAX_SPACE_FILE + 1))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        log.warning("%s not read (%s): the start asks for min_free_space alone", path, exc)
        return {}
    found = {}
    for record in (BYTES, INODES):
        took = data.get(record) if isinstance(data, dict) else None
        if isinstance(took, dict):
            found[record] = {
                k: v for k, v in took.items() if isinstance(k, str) and _possible(k, v, record)
            }
    if BYTES not in found:  # (a record from before inodes were recorded has no INODES)
        log.warning("%s holds no 'took': the start asks for min_free_space alone", path)
    return found


def _possible(directory: str, took: object, record: str) -> bool:
    """Whether ``took`` is a number of bytes (or inodes: ``record``) the file system of
    ``directory`` can hold."""
    if type(took) is not int or took < 0:
        return False
    try:
        left = room(directory)
    except OSError:
        return False
    most = left.size if record == BYTES else left.files
    return most is not None and took <= most


class FreeSpaceWatch:
    """Watches the free space of a run's work and archive directories while it writes
    (:meth:`~pullback.common.signals.SignalGuard.stop_when` calls :meth:`words`), and
    keeps the largest drop it saw in each for the next run's start (:meth:`record`)."""

    def __init__(self, config: ClientConfig):
        self.config = config
        self.directories = tuple(dict.fromkeys((config.work_dir, config.archive_dir)))
        self.start: dict[Path, Room] = {}
        self.lowest: dict[Path, Room] = {}
        """The least free bytes and inodes seen in each directory."""
        for directory in self.directories:
            try:
                self.start[directory] = self.lowest[directory] = room(directory)
            except OSError:
                continue

    def words(self) -> str | None:
        """Words that stop the run: a directory has less than ``min_free_space`` free,
        or fewer than MIN_FREE_INODES inodes. None while there is room, when
        ``min_free_space`` is 0 (no look then), or when it cannot be looked at (the
        run's own writes then fail in words). Never raises."""
        if not self.config.min_free_space:
            return None
        for directory in self.directories:
            left = self._look(directory)
            if left is None:
                continue
            if left.free < self.config.min_free_space:
                return (
                    f"free space in {directory} fell to {human_size(left.free)}, below "
                    f"min_free_space ({human_size(self.config.min_free_space)}): the run "
                    "was stopped before it filled the disk"
                )
            if left.few_inodes:
                return (
                    f"free inodes in {directory} fell to {left.inodes:,}, below "
                    f"{MIN_FREE_INODES:,}: the run was stopped before it used them all"
                )
        return None

    def look(self) -> None:
        """Look at each directory once more, where the run's peak may be: a service's
        staging is whole (before it is removed), or the archive is. Never raises."""
        if not self.config.min_free_space:
            return
        for directory in self.directories:
            self._look(directory)

    def _look(self, directory: Path) -> Room | None:
        """What the file system of ``directory`` has left (None when it cannot be looked
        at), its free space kept when it is the lowest seen."""
        try:
            left = room(directory)
        except OSError:
            return None
        low = self.lowest.get(directory, left)
        self.lowest[directory] = dataclasses.replace(
            low, free=min(low.free, left.free), inodes=_least(low.inodes, left.inodes)
        )
        return left

    def record(self, complete: bool) -> None:
        """Write what the run took in each directory (the largest drop of its free
        space and of its free inodes seen) to SPACE_FILE, for the next run's start: a
        ``complete`` run (every enabled service archived, published as a full archive)
        sets it; any other (a delta, stopped, failed, ``run --service``) only raises
        it, since it may have written less than a whole full run does (helper-162 F4:
        a delta's record let the next full run start, and the watch stop it). Nothing
        when ``min_free_space`` is 0. A failure is a warning."""
        if not self.config.min_free_space:
            return
        took: dict[str, dict[str, int]] = {BYTES: {}, INODES: {}}
        for place, start in self.start.items():
            low = self.lowest.get(place, start)
            took[BYTES][str(place)] = max(0, start.free - low.free)
            if start.inodes is not None and low.inodes is not None:
                took[INODES][str(place)] = max(0, start.inodes - low.inodes)
        for record, earlier in (last_took(self.config) if not complete else {}).items():
            now = took[record]
            for directory, before in earlier.items():
                if directory in now:
                    now[directory] = max(now[directory], before)
        path = self.config.archive_dir / SPACE_FILE
        try:
            atomic_write(path, json.dumps(took, sort_keys=True) + "\n", mode=0o640)
        except OSError as exc:
            log.warning("what this run took of the disk was not recorded in %s: %s", path, exc)


def _least(one: int | None, other: int | None) -> int | None:
    """The smaller of two counts of free inodes (None: not counted)."""
    return other if one is None else one if other is None else min(one, other)


def restore_limits(config: ClientConfig) -> UnpackLimits | None:
    """What a restore's unpacking keeps free where it unpacks (the temporary directory,
    often the disk or the memory of the live system it restores onto):
    ``min_free_space``, as a run keeps in its own directories. None when it is 0."""
    if not config.min_free_space:
        return None
    place = f"in the temporary directory {tempfile.gettempdir()} (TMPDIR can name another)"
    return UnpackLimits(min_free=config.min_free_space, source="client.yaml", place=place)
