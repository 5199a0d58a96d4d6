"""The archive directory: naming, listing, atomic publishing and local retention."""

from __future__ import annotations

import contextlib
import datetime as dt
import os
from dataclasses import dataclass
from pathlib import Path

from ..clock import parse_stamp, utc_now
from ..errors import ArchiveError
from ..fsutil import atomic_write, fsync_dir
from ..locks import FileLock
from ..log import get_logger
from ..outcome import Status
from . import sidecar as sidecars
from .sidecar import ARCHIVE_NAME, Sidecar

log = get_logger("archives")

LOCK_NAME = ".lock"
FETCHED_DIR = "fetched"
PARTIAL_SUFFIX = ".partial"
LOCK_WAIT = 120.0


@dataclass
class LocalArchive:
    """An archive file in the archive directory and its sidecar, if it has a valid one."""

    path: Path
    host: str
    stamp: str
    sidecar: Sidecar | None
    fetched: bool = False
    problem: str = ""

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def created(self) -> dt.datetime:
        return parse_stamp(self.stamp)

    @property
    def complete(self) -> bool:
        return self.sidecar is not None

    @property
    def good(self) -> bool:
        """Complete, and every service in it succeeded."""
        return self.sidecar is not None and self.sidecar.status == Status.OK

    @property
    def sidecar_path(self) -> Path:
        return self.path.with_name(self.path.name + ".json")


def archive_name(host: str, stamp: str, suffix: str) -> str:
    return f"{host}-{stamp}{suffix}"


def directory_lock(archive_dir: Path, purpose: str) -> FileLock:
    """The archive-directory lock (publish, retention, mark fetched): see
    docs/architecture.md, *The archive*."""
    return FileLock(archive_dir / LOCK_NAME, purpose=purpose)


def _scan(directory: Path, fetched: bool) -> list[LocalArchive]:
    found: list[LocalArchive] = []
    if not directory.is_dir():
        return found
    for entry in directory.iterdir():
        match = ARCHIVE_NAME.match(entry.name)
        if not match or not entry.is_file():
            continue
        sidecar = None
        problem = ""
        side = entry.with_name(entry.name + ".json")
        try:
            sidecar = sidecars.parse(side.read_bytes(), expected_name=entry.name)
        except FileNotFoundError:
            problem = "no sidecar (incomplete)"
        except (OSError, ArchiveError) as exc:
            problem = str(exc)
        found.append(LocalArchive(entry, match["host"], match["stamp"], sidecar, fetched, problem))
    return found


def list_archives(archive_dir: Path, include_fetched: bool = True) -> list[LocalArchive]:
    """Every archive in ``archive_dir`` (and ``fetched/``), oldest first."""
    found = _scan(archive_dir, fetched=False)
    if include_fetched:
        found += _scan(archive_dir / FETCHED_DIR, fetched=True)
    return sorted(found, key=lambda a: (a.stamp, a.fetched))


def publish(tmp_archive: Path, sidecar: Sidecar, archive_dir: Path) -> Path:
    """Move a verified archive and its sidecar into place under the directory lock.

    The archive is renamed first and its sidecar second, so a reader that sees the sidecar
    sees a complete archive. Returns the published path. Raises ArchiveError if an
    archive of that name exists already, LockBusy if the directory stays locked.
    """
    final = archive_dir / sidecar.archive.name
    side_tmp = archive_dir / f".{final.name}.json.{os.getpid()}{PARTIAL_SUFFIX}"
    atomic_write(side_tmp, sidecar.to_json(), mode=0o640)
    try:
        with directory_lock(archive_dir, "publishing an archive").acquire(wait=LOCK_WAIT):
            if final.exists():
                raise ArchiveError(f"{final} exists already; not overwriting it")
            os.chmod(tmp_archive, 0o640)
            os.rename(tmp_archive, final)
            os.rename(side_tmp, final.with_name(final.name + ".json"))
            fsync_dir(archive_dir)
    finally:
        with contextlib.suppress(FileNotFoundError):
            side_tmp.unlink()
    return final


def select_expired(
    archives: list[LocalArchive], keep_last: int, keep_days: int, now: dt.datetime
) -> list[LocalArchive]:
    """The complete archives that local retention deletes.

    An archive is kept when it is one of the ``keep_last`` newest, or younger than
    ``keep_days`` days, or the newest archive in which every service succeeded.
    """
    complete = sorted((a for a in archives if a.complete), key=lambda a: a.stamp)
    keep = {id(a) for a in complete[-keep_last:]} if keep_last > 0 else set()
    horizon = now - dt.timedelta(days=keep_days)
    keep.update(id(a) for a in complete if a.created > horizon)
    good = [a for a in complete if a.good]
    if good:
        keep.add(id(good[-1]))
    return [a for a in complete if id(a) not in keep]


def _delete(archive: LocalArchive) -> None:
    for path in (archive.sidecar_path, archive.path):  # sidecar first: never half-listed
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def keep_fetched(archive_dir: Path, keep: int) -> list[str]:
    """Delete all but the ``keep`` newest archives of ``fetched/``; return their names.

    Call it under the directory lock.
    """
    fetched = [a for a in list_archives(archive_dir) if a.fetched]
    expired = fetched[: max(0, len(fetched) - keep)]
    for archive in expired:
        _delete(archive)
    return [a.name for a in expired]


def apply_retention(
    archive_dir: Path, keep_last: int, keep_days: int, now: dt.datetime | None = None
) -> list[str]:
    """Delete expired archives and leftovers of interrupted publishes; return their names.

    Runs under the directory lock. Archives in ``fetched/`` follow the same rules.
    """
    now = now or utc_now()
    removed = []
    with directory_lock(archive_dir, "local retention").acquire(wait=LOCK_WAIT):
        archives = list_archives(archive_dir)
        for archive in archives:
            if not archive.complete and archive.problem.startswith("no sidecar"):
                log.warning("removing %s: its publication never completed", archive.name)
                _delete(archive)
                removed.append(archive.name)
        complete = [a for a in archives if a.complete]
        for archive in select_expired(complete, keep_last, keep_days, now):
            log.info("retention: deleting %s", archive.name)
            _delete(archive)
            removed.append(archive.name)
        for directory in (archive_dir, archive_dir / FETCHED_DIR):
            if not directory.is_dir():
                continue
            for side in directory.glob("*.json"):
                if not side.with_suffix("").exists() and ARCHIVE_NAME.match(side.stem):
                    side.unlink()
                    removed.append(side.name)
        if removed:
            fsync_dir(archive_dir)
    return removed


def remove_partials(archive_dir: Path) -> list[str]:
    """Delete temporary files of interrupted runs (call only under the instance lock)."""
    removed = []
    if archive_dir.is_dir():
        for path in archive_dir.glob(f".*{PARTIAL_SUFFIX}"):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
                removed.append(path.name)
    return removed
