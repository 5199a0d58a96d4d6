"""The archive directory: naming, listing, atomic publishing and local retention."""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from ..clock import FUTURE_TOLERANCE, parse_stamp, utc_now
from ..errors import ArchiveError
from ..fsutil import atomic_write, fsync_dir, set_dir_mode
from ..locks import FileLock
from ..log import get_logger
from ..outcome import Status
from ..text import printable
from . import sidecar as sidecars
from .sidecar import ARCHIVE_NAME, Sidecar

log = get_logger("archives")

LOCK_NAME = ".lock"
FETCHED_DIR = "fetched"
MARKS_DIR = ".fetched-marks"
"""Where the serve endpoint (the unprivileged ``pullback`` user, group-writable) leaves
one empty file per archive the server says it has stored. Only root's own run moves
archives, and never the newest: see :func:`retire_marked`."""
NEWEST_STORED = ".newest-stored"
"""A file root's run writes in the archive directory: the name of the newest archive the
server said it stored. Marks and ``fetched/`` go with retention; this stays, so
``pullback-client list`` still knows which archives no pull will take (the server never
takes one older than its newest snapshot)."""
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
    marked: bool = False
    """The server said it stored it; it moves to ``fetched/`` once a newer one exists."""

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


def newest_stored(archive_dir: Path) -> str:
    """The stamp of the newest archive the server said it stored, as far as this client
    knows (its marks, ``fetched/`` and :data:`NEWEST_STORED`); "" when none."""
    names = _marks(archive_dir) | _noted(archive_dir)
    with contextlib.suppress(FileNotFoundError, NotADirectoryError):
        names |= {n for n in os.listdir(archive_dir / FETCHED_DIR) if ARCHIVE_NAME.match(n)}
    return max((_stamp(n) for n in names), default="")


def _stamp(name: str) -> str:
    match = ARCHIVE_NAME.match(name)
    return match["stamp"] if match else ""


def _noted(archive_dir: Path) -> set[str]:
    """The name :data:`NEWEST_STORED` holds (an empty set when none or not a name)."""
    try:
        text = (archive_dir / NEWEST_STORED).read_text("utf-8", errors="replace").strip()
    except (OSError, ValueError):
        return set()
    return {text} if ARCHIVE_NAME.fullmatch(text) else set()


def _note_stored(archive_dir: Path) -> None:
    """Write :data:`NEWEST_STORED` when a mark names a newer archive than it holds
    (before retention removes marks). Call it under the directory lock, as root."""
    marked = max(_marks(archive_dir), key=_stamp, default="")
    noted = max(_noted(archive_dir), key=_stamp, default="")
    if marked and _stamp(marked) > _stamp(noted):
        try:
            atomic_write(archive_dir / NEWEST_STORED, marked + "\n", mode=0o640)
        except OSError as exc:
            log.warning("cannot note %s as stored (%s)", marked, exc.strerror)


def _marks(archive_dir: Path) -> set[str]:
    """The names marked fetched (a directory the pullback user writes: names only)."""
    try:
        return {name for name in os.listdir(archive_dir / MARKS_DIR) if ARCHIVE_NAME.match(name)}
    except (FileNotFoundError, NotADirectoryError):
        return set()


def _scan(directory: Path, fetched: bool) -> list[LocalArchive]:
    found: list[LocalArchive] = []
    if not directory.is_dir():
        return found
    marks = set() if fetched else _marks(directory)
    for entry in directory.iterdir():
        match = ARCHIVE_NAME.match(entry.name)
        if not match or not entry.is_file():
            continue
        sidecar = None
        problem = ""
        side = entry.with_name(entry.name + ".json")
        try:
            sidecar = sidecars.parse(side.read_bytes(), expected_name=entry.name, record=True)
        except FileNotFoundError:
            problem = "no sidecar (incomplete)"
        except (OSError, ArchiveError) as exc:
            problem = str(exc)
        found.append(
            LocalArchive(
                entry,
                match["host"],
                match["stamp"],
                sidecar,
                fetched,
                problem,
                marked=entry.name in marks,
            )
        )
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
    text = sidecar.to_json()
    sidecars.record_written(text)  # raises ArchiveError for one the server would refuse
    atomic_write(side_tmp, text, mode=0o640)
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
    ``keep_days`` days, or the newest archive in which every service succeeded or one
    it is built on (:func:`newest_good_chain`). An archive dated ahead of the clock
    takes no ``keep_last`` place (an outside test had a stray one make a run delete the
    archive it had just published); ``keep_days`` keeps it.
    """
    complete = sorted((a for a in archives if a.complete), key=lambda a: a.stamp)
    real = [a for a in complete if a.created <= now + FUTURE_TOLERANCE]
    keep = {id(a) for a in real[-keep_last:]} if keep_last > 0 else set()
    horizon = now - dt.timedelta(days=keep_days)
    keep.update(id(a) for a in complete if a.created > horizon)
    promised = newest_good_chain(complete, now)
    return [a for a in complete if id(a) not in keep and a.name not in promised]


def _delete(archive: LocalArchive) -> bool:
    """Delete the archive, its sidecar first (never half-listed). Returns False, with a
    warning, when one of them cannot be removed (a directory of that name, a read-only
    file system): one odd entry must not fail every run's retention."""
    for path in (archive.sidecar_path, archive.path):
        try:
            path.unlink()
        except FileNotFoundError:
            pass
        except OSError as exc:
            log.warning("retention: cannot delete %s (%s); left in place", path, exc.strerror)
            return False
    return True


def keep_fetched(archive_dir: Path, keep: int, now: dt.datetime | None = None) -> list[str]:
    """Keep the ``keep`` newest full archives of ``fetched/`` and the deltas after the
    oldest of them; delete the rest, each said in the log. Returns their names. A delta
    does not count against ``keep``: alone it restores nothing, so after deltas were
    switched off the slots go to the chain's full archive, not its last delta (found by
    a newcomer: ``fetched_keep: 1`` kept the delta, which retention then deleted as
    superseded, and the client held no stored archive at all).

    Only an archive whose sidecar says so counts as full. One without a readable
    sidecar may be either: it stays while it is newer than the oldest kept full archive
    or no full archive is kept (an outside review found such a delta counted as full,
    and the chain's real full archive deleted). While ``keep`` is 1 or more and no full
    archive is kept, a delta goes only when none of the archives it is built on back to
    a full one is left in either directory (:func:`_orphaned`). ``keep`` 0 keeps nothing.

    The newest archive in which every service succeeded, with the chain it needs, always
    stays, as local retention promises (an outside review found it deleted when newer
    full archives in ``fetched/`` had a failed service).

    Call it under the directory lock.
    """
    now = now or utc_now()
    archives = list_archives(archive_dir)
    promised = newest_good_chain(archives, now)
    deleted = []
    for archive in _past_keep(archives, keep, now):
        if archive.name not in promised:
            log.info("retention: deleting %s/%s (past fetched_keep)", FETCHED_DIR, archive.name)
            if _delete(archive):
                deleted.append(archive.name)
    return deleted


def _past_keep(archives: list[LocalArchive], keep: int, now: dt.datetime) -> list[LocalArchive]:
    """The archives of ``fetched/`` past ``fetched_keep`` (``keep_fetched``'s rule,
    before the newest good archive's chain is taken out). A full archive dated ahead of
    the clock takes no slot (an outside review had a stray one make every stored archive
    go as it moved): it is left to local retention."""
    fetched = [a for a in archives if a.fetched]
    if keep <= 0:
        return fetched
    latest = now + FUTURE_TOLERANCE
    fulls = [
        a for a in fetched if a.sidecar and not a.sidecar.archive.is_delta and a.created <= latest
    ]
    kept = fulls[-keep:]
    by_name = by_names(archives)
    return [
        a
        for a in fetched
        if a not in kept
        and (a in fulls or (a.stamp < kept[0].stamp if kept else _orphaned(a, by_name)))
    ]


def newest_good_chain(archives: list[LocalArchive], now: dt.datetime) -> set[str]:
    """The names of the newest archive of ``archives`` in which every service succeeded
    (not dated ahead of the clock: a stray one must not take that place) and of the
    archives it is built on; empty when there is none. Every retention keeps them: the
    one rule for "the newest good archive" (an outside review found two, and a delta
    whose chain is broken kept in place of the good full archive before it)."""
    latest = now + FUTURE_TOLERANCE
    by_name = by_names(archives)
    newest = _newest_good([a for a in archives if a.created <= latest], by_name)
    return chain_of(newest, by_name) if newest else set()


def _newest_good(
    candidates: list[LocalArchive], by_name: dict[str, LocalArchive]
) -> LocalArchive | None:
    """The newest of ``candidates`` (oldest first) in which every service succeeded and
    that restores (not a delta whose chain through ``by_name`` is broken), or None."""
    for archive in reversed(candidates):
        if archive.good and not _orphaned(archive, by_name):
            return archive
    return None


def _orphaned(archive: LocalArchive, by_name: dict[str, LocalArchive]) -> bool:
    """Whether ``archive`` is a delta whose chain, followed through both directories,
    stops at a missing base: it restores nothing. An archive whose sidecar cannot be
    read, or whose chain reaches one, may be (or rest on) a full archive: not orphaned
    (an outside review found a fetched delta deleted while its full archive was in the
    archive directory, or in ``fetched/`` with a sidecar that could not be read)."""
    root = _walk_back(archive, by_name)[0].sidecar
    return root is not None and root.archive.is_delta


def prepare_marks(archive_dir: Path) -> None:
    """Make MARKS_DIR: the only place the serve endpoint writes (group-writable, the
    archive directory's group), and never a link. Mode 2770 as the package makes it;
    0770 where a set-gid bit may not be set (the client's unit, RestrictSUIDSGID=: a new
    disk mounted at the archive directory failed every run there: helper-150 F1)."""
    marks = archive_dir / MARKS_DIR
    with contextlib.suppress(FileExistsError):
        os.mkdir(marks, 0o700)
    try:
        gid = os.stat(archive_dir).st_gid
        try:
            set_dir_mode(marks, 0o2770, gid=gid)
        except PermissionError:
            set_dir_mode(marks, 0o770, gid=gid)
    except OSError as exc:
        raise ArchiveError(
            f"{marks} is not a directory of its own ({exc.strerror}); remove it"
        ) from None


def mark_fetched(archive_dir: Path, name: str) -> None:
    """Record that the server stored ``name`` (the serve endpoint, as ``pullback``): an
    empty file in MARKS_DIR, nothing moved or deleted. Asking twice is fine.

    Raises ArchiveError when there is no such archive.
    """
    if not ARCHIVE_NAME.match(name) or "/" in name:
        raise ArchiveError(f"not an archive name: {name!r}")
    exists = False
    for directory in (archive_dir, archive_dir / FETCHED_DIR):
        with contextlib.suppress(FileNotFoundError, NotADirectoryError):
            exists = exists or stat.S_ISREG(os.lstat(directory / name).st_mode)
    if not exists:
        raise ArchiveError(f"no archive {name}")
    _leave_mark(archive_dir, name)


def _leave_mark(archive_dir: Path, name: str) -> None:
    """An empty file ``name`` in MARKS_DIR (never through a link; there already: fine)."""
    marks = os.open(archive_dir / MARKS_DIR, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    try:
        fd = os.open(
            name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o640, dir_fd=marks
        )
        os.close(fd)
    except FileExistsError:
        pass
    finally:
        os.close(marks)


WANT_FULL = "want-full"
"""The mark the serve endpoint leaves when the server asks for a full archive."""


def mark_want_full(archive_dir: Path) -> None:
    """Record that the server asks for a full archive (the serve endpoint, as
    ``pullback``): an empty file in MARKS_DIR, used up by the next run."""
    _leave_mark(archive_dir, WANT_FULL)


APPLIES_DELTAS = "server-applies-deltas"
"""The mark the serve endpoint leaves when the server says it applies delta archives
(``fetched <archive> deltas``): ``incremental.enabled: auto`` makes deltas once it is
there. It stays (removing it by hand makes the client full-only again until the next
such request)."""


def mark_server_applies_deltas(archive_dir: Path) -> None:
    """Record that a server applies delta archives (the serve endpoint, as ``pullback``)."""
    _leave_mark(archive_dir, APPLIES_DELTAS)


def server_applies_deltas(archive_dir: Path) -> bool:
    """Whether a server has said it applies delta archives (the mark is a name only:
    whatever kind of entry it is, its presence counts, nothing is opened)."""
    return os.path.lexists(archive_dir / MARKS_DIR / APPLIES_DELTAS)


APPLIES_LEAN_DELTAS = "server-applies-lean-deltas"
"""The mark the serve endpoint leaves when the server says it applies lean deltas too
(``fetched <archive> lean-deltas``): the client's deltas are then lean (sidecar format 3)."""


def mark_server_applies_lean_deltas(archive_dir: Path) -> None:
    """Record that a server applies lean deltas (and so deltas)."""
    _leave_mark(archive_dir, APPLIES_DELTAS)
    _leave_mark(archive_dir, APPLIES_LEAN_DELTAS)


def server_applies_lean_deltas(archive_dir: Path) -> bool:
    """Whether a server has said it applies lean deltas (a name only, as above)."""
    return os.path.lexists(archive_dir / MARKS_DIR / APPLIES_LEAN_DELTAS)


def retire_marked(archive_dir: Path, keep: int, now: dt.datetime | None = None) -> list[str]:
    """Move the archives the server stored to ``fetched/``, except the newest complete
    one (a stolen server key cannot make a client drop the archive the server has not
    pulled yet; an archive dated ahead of the clock does not take that place, it only
    stays too), then keep the ``keep`` newest of ``fetched/`` (:func:`keep_fetched`,
    every run: a lowered ``fetched_keep``, or a move a crash cut short, applies without
    waiting for the next move). Removes the marks of archives no longer there (other
    marks, :data:`WANT_FULL` and :data:`APPLIES_DELTAS`, stay). Returns what moved, each
    said in the log. Call it under the directory lock, as root: marks are only names,
    never opened or followed."""
    now = now or utc_now()
    target = archive_dir / FETCHED_DIR
    moved = _move_marked(archive_dir, now) if _marks(archive_dir) else []
    deleted = keep_fetched(archive_dir, keep, now) if target.is_dir() else []
    if moved or deleted:
        fsync_dir(target)
        fsync_dir(archive_dir)
    return moved


def _move_marked(archive_dir: Path, now: dt.datetime) -> list[str]:
    """Move the marked archives but the newest (see :func:`retire_marked`) to
    ``fetched/``; remove the marks but those of archives still in place (the newest, and
    one that could not move: the next run tries again). Returns what moved."""
    current = [a for a in list_archives(archive_dir, include_fetched=False) if a.complete]
    latest = now + FUTURE_TOLERANCE
    real = [a for a in current if a.created <= latest]
    newest = {a[-1].name for a in (current, real) if a}
    target = archive_dir / FETCHED_DIR
    target.mkdir(mode=0o2750, exist_ok=True)
    moved = []
    for archive in current:
        if archive.marked and archive.name not in newest and _move(archive, target):
            log.info("%s was stored by the server; moved to %s/", archive.name, FETCHED_DIR)
            moved.append(archive.name)
    _remove_marks(archive_dir, keep={a.name for a in current if a.marked} - set(moved))
    return moved


def _move(archive: LocalArchive, target: Path) -> bool:
    """Move the archive, then its sidecar, into ``target``. Returns False, with a
    warning, when the archive cannot go (``fetched/`` on another file system, a directory
    of its name there): it stays where it is, and the run goes on."""
    try:
        os.rename(archive.path, target / archive.name)
    except OSError as exc:
        log.warning(
            "cannot move %s to %s/ (%s); left in place", archive.name, FETCHED_DIR, exc.strerror
        )
        return False
    try:
        os.rename(archive.sidecar_path, target / archive.sidecar_path.name)
    except FileNotFoundError:
        pass
    except OSError as exc:  # the next run's _finish_moves tries again
        log.warning(
            "cannot move %s to %s/ (%s)", archive.sidecar_path.name, FETCHED_DIR, exc.strerror
        )
    return True


def _remove_marks(archive_dir: Path, keep: set[str]) -> None:
    """Remove the fetched marks but those of ``keep`` (names only, never followed;
    :data:`WANT_FULL` and :data:`APPLIES_DELTAS` are no archive names and stay)."""
    try:
        marks_fd = os.open(archive_dir / MARKS_DIR, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except (FileNotFoundError, NotADirectoryError):
        return
    try:
        for name in os.listdir(marks_fd):
            if ARCHIVE_NAME.match(name) and name not in keep:
                with contextlib.suppress(FileNotFoundError, IsADirectoryError, PermissionError):
                    os.unlink(name, dir_fd=marks_fd)
    finally:
        os.close(marks_fd)


def apply_retention(
    archive_dir: Path,
    keep_last: int,
    keep_days: int,
    now: dt.datetime | None = None,
    fetched_keep: int | None = None,
) -> list[str]:
    """Move the archives the server stored to ``fetched/`` (with ``fetched_keep``: see
    :func:`retire_marked`), delete expired archives and leftovers of interrupted
    publishes; return the names deleted.

    Runs under the directory lock. Archives in ``fetched/`` follow the same rules.
    """
    now = now or utc_now()
    with directory_lock(archive_dir, "local retention").acquire(wait=LOCK_WAIT):
        _finish_moves(archive_dir)
        _note_stored(archive_dir)
        if fetched_keep is not None:
            retire_marked(archive_dir, fetched_keep, now)
        listing = _complete_archives(archive_dir)
        complete = listing.complete
        # superseded deltas take no keep_last place (an outside test saw them push the
        # full archive before them out after deltas were switched off)
        superseded = _superseded_deltas(complete, now)
        rest = [a for a in complete if a not in superseded]
        expired = select_expired(rest, keep_last, keep_days, now) + superseded
        # a delta that stays keeps the archives it is built on (else it is of no use)
        needed = chains_of(
            [a for a in complete if a not in expired and a.sidecar and a.sidecar.archive.is_delta],
            by_names(complete),
        )
        expired = [a for a in expired if a.name not in needed]
        staying = [a for a in complete if a not in expired]
        expired += _unreadable_past(listing.unreadable, staying, needed)
        return _finish_retention(archive_dir, expired, listing.removed)


def _superseded_deltas(complete: list[LocalArchive], now: dt.datetime) -> list[LocalArchive]:
    """Delta archives (left from a time deltas were made) older than their host's newest
    full archive, which the server takes instead: never fetched again, they would only
    fill ``keep_last``. The chain of the newest archive in which every service succeeded
    stays while it is older (as chain retention keeps it); archives dated ahead of the
    clock count for neither (a stray one must not make the real ones look old)."""
    latest = now + FUTURE_TOLERANCE
    superseded = []
    for host in {a.host for a in complete}:
        own = [a for a in complete if a.host == host and a.created <= latest]
        newest_full, kept = _chain_kept(own, complete)
        superseded += [
            a
            for a in own
            if a.sidecar
            and a.sidecar.archive.is_delta
            and a.stamp < newest_full
            and a.name not in kept
        ]
    return superseded


def apply_chain_retention(
    archive_dir: Path, host: str, now: dt.datetime | None = None
) -> list[str]:
    """Retention with incremental archives: keep the newest full archive of ``host``
    and every archive after it (the chain the server may still need), and the newest
    archive in which every service succeeded with the chain it needs (when a service
    failed in every archive since: as classic retention keeps it); delete everything
    older and leftovers of interrupted publishes; return the names deleted. Marks of
    archives no longer there are removed; nothing moves to ``fetched/``.

    Runs under the directory lock.
    """
    latest = (now or utc_now()) + FUTURE_TOLERANCE
    with directory_lock(archive_dir, "local retention").acquire(wait=LOCK_WAIT):
        _finish_moves(archive_dir)
        _note_stored(archive_dir)
        listing = _complete_archives(archive_dir)
        complete = listing.complete
        # only this host's archives, not dated ahead of the clock: a stray archive must
        # never make the real chain look old
        own = [a for a in complete if a.host == host and a.created <= latest]
        oldest_kept, kept = _chain_kept(own, complete)
        expired = [a for a in complete if a.stamp < oldest_kept and a.name not in kept]
        staying = [a for a in complete if a not in expired]
        deltas = [a for a in staying if a.sidecar and a.sidecar.archive.is_delta]
        needed = chains_of(deltas, by_names(complete))
        expired += _unreadable_past(listing.unreadable, staying, needed)
        removed = _finish_retention(archive_dir, expired, listing.removed)
        present = list_archives(archive_dir, include_fetched=False)
        _remove_marks(archive_dir, keep={a.name for a in present})  # of archives gone
        return removed


def _chain_kept(own: list[LocalArchive], complete: list[LocalArchive]) -> tuple[str, set[str]]:
    """What chain retention keeps of this host's archives (``own``): the stamp of the
    newest full archive, everything from which stays, and the names of the newest good
    archive's chain when that is older."""
    fulls = [a for a in own if a.sidecar and not a.sidecar.archive.is_delta]
    oldest_kept = fulls[-1].stamp if fulls else ""
    by_name = by_names(complete)
    good = _newest_good(own, by_name)
    if good and good.stamp < oldest_kept:
        return oldest_kept, chain_of(good, by_name)
    return oldest_kept, set()


def by_names(archives: list[LocalArchive]) -> dict[str, LocalArchive]:
    """``archives`` by name, for following chains (:func:`chain_of`, :func:`full_chain`);
    of two of one name (the archive directory's and ``fetched/``'s), the later in
    ``archives``. Build it once per listing: each walk is then linear in the chain."""
    return {a.name: a for a in archives}


def chain_of(archive: LocalArchive, by_name: dict[str, LocalArchive]) -> set[str]:
    """The names of ``archive`` and the archives it is built on (its bases followed
    back to a full, or as far as they are in ``by_name``; each strictly older than the
    last)."""
    return {a.name for a in _walk_back(archive, by_name)}


def chains_of(archives: list[LocalArchive], by_name: dict[str, LocalArchive]) -> set[str]:
    """The union of :func:`chain_of` over ``archives``, each archive walked once: the
    first step from each archive itself (a copy of one name in both directories may name
    another base than the copy ``by_name`` holds: an outside fuzzer), the rest through
    ``by_name`` and only as far as no earlier walk went, so a long chain costs its
    length, not its square."""
    found: set[str] = set()
    walked: set[str] = set()  # names whose chain through by_name is in ``found``
    for archive in archives:
        found.add(archive.name)
        current = base_of(archive, by_name)
        while current is not None and current.name not in walked:
            walked.add(current.name)
            found.add(current.name)
            current = base_of(current, by_name)
    return found


def broken_chains(archives: list[LocalArchive], by_name: dict[str, LocalArchive]) -> set[str]:
    """The names of the deltas among ``archives`` whose chain through ``by_name`` does not
    reach a full archive (:func:`full_chain` would be empty): alone they restore nothing.
    The first step from each archive itself (see :func:`chains_of`), the rest through
    ``by_name``, each archive there walked once."""
    reaches: dict[str, bool] = {}  # by name, for the archives of by_name
    broken = set()
    for archive in archives:
        side = archive.sidecar
        if side is None or not side.archive.is_delta:
            continue
        base = base_of(archive, by_name)
        if base is None or not _reaches_full(base, by_name, reaches):
            broken.add(archive.name)
    return broken


def _reaches_full(
    archive: LocalArchive, by_name: dict[str, LocalArchive], reaches: dict[str, bool]
) -> bool:
    """Whether ``archive`` (one of ``by_name``'s) is a full archive or a delta whose chain
    reaches one; what the walk learns goes into ``reaches``."""
    passed: list[LocalArchive] = []
    current = archive
    while current.name not in reaches:
        passed.append(current)
        base = base_of(current, by_name)
        if base is None:
            root = current.sidecar
            reaches[current.name] = root is not None and not root.archive.is_delta
            break
        current = base
    for name in (a.name for a in passed):
        reaches[name] = reaches[current.name]
    return reaches[archive.name]


def base_of(archive: LocalArchive, by_name: dict[str, LocalArchive]) -> LocalArchive | None:
    """The archive ``archive`` is built on, when it is in ``by_name`` and strictly older
    (so a walk back always ends); None for a full archive, one without a valid sidecar,
    or a base that is missing or not older."""
    side = archive.sidecar
    if side is None or side.archive.base is None:
        return None
    base = by_name.get(side.archive.base.name)
    return base if base is not None and base.stamp < archive.stamp else None


def full_chain(newest: LocalArchive, by_name: dict[str, LocalArchive]) -> list[LocalArchive]:
    """``newest`` and the archives it is built on, back to its full archive (oldest
    first). Returns [] when the chain is broken (a base is missing, newer than the
    archive built on it, or has no valid sidecar)."""
    chain = _walk_back(newest, by_name)
    root = chain[0].sidecar
    return chain if root is not None and not root.archive.is_delta else []


def _walk_back(archive: LocalArchive, by_name: dict[str, LocalArchive]) -> list[LocalArchive]:
    """``archive`` and its bases as far as they are in ``by_name``, oldest first: the
    walk stops at a full archive, an archive without a valid sidecar, a missing base or
    one not strictly older than the archive built on it (so a loop ends too)."""
    chain = [archive]
    while (base := base_of(chain[-1], by_name)) is not None:
        chain.append(base)
    return chain[::-1]


def _finish_moves(archive_dir: Path) -> None:
    """Finish moves to ``fetched/`` a crash cut short: :func:`retire_marked` renames an
    archive, then its sidecar, so an archive in ``fetched/`` without a sidecar whose
    sidecar is still in the archive directory (and no archive beside it) gets it back.
    Without this, the next retention deleted the archive as an unfinished publish and
    the sidecar as an orphan (found by an outside review). Call it under the directory
    lock."""
    target = archive_dir / FETCHED_DIR
    for archive in _scan(target, fetched=True):
        left = archive_dir / archive.sidecar_path.name
        stray = archive.problem.startswith("no sidecar") and left.is_file()
        if stray and not os.path.lexists(archive_dir / archive.name):
            try:
                os.rename(left, archive.sidecar_path)
            except OSError as exc:
                log.warning("cannot finish moving %s (%s)", archive.name, exc.strerror)
                continue
            log.info("finished moving %s to %s/ (a run was cut short)", archive.name, FETCHED_DIR)
            fsync_dir(target)
            fsync_dir(archive_dir)  # (else a power cut can leave the sidecar in both)


@dataclass(frozen=True)
class _Listing:
    """The archive directory as retention sees it: ``complete`` archives (both
    directories, oldest first), ``unreadable`` ones (their sidecar cannot be read), and
    the names ``removed`` because their publication (or deletion) never completed."""

    complete: list[LocalArchive]
    unreadable: list[LocalArchive]
    removed: list[str]


def _complete_archives(archive_dir: Path) -> _Listing:
    """List both directories once, after deleting the archives whose publication (or
    deletion) never completed; returns the :class:`_Listing`."""
    removed = []
    archives = list_archives(archive_dir)
    for archive in archives:
        if not archive.complete and archive.problem.startswith("no sidecar"):
            if archive.fetched:
                log.warning("removing %s/%s: its sidecar is gone", FETCHED_DIR, archive.name)
            else:
                log.warning("removing %s: its publication never completed", archive.name)
            if _delete(archive):
                removed.append(archive.name)
    return _Listing(
        complete=[a for a in archives if a.complete],
        unreadable=[a for a in archives if not a.complete and a.problem and a.name not in removed],
        removed=removed,
    )


def _unreadable_past(
    unreadable: list[LocalArchive], staying: list[LocalArchive], needed: set[str]
) -> list[LocalArchive]:
    """Archives whose sidecar cannot be read (damaged, truncated, not this archive's)
    that are older than every complete archive that stays, and that no archive that
    stays is built on: whatever their sidecar said, retention would have deleted them
    (an outside review found them kept for ever, against the directory's bound). Said
    in the log; none while no complete archive stays."""
    if not staying:
        return []
    oldest = min(a.stamp for a in staying)
    found = [a for a in unreadable if a.stamp < oldest and a.name not in needed]
    for archive in found:
        log.warning(
            "retention: %s's sidecar cannot be read (%s); it is older than every archive "
            "kept, so it goes too",
            archive.name,
            printable(archive.problem, 200),
        )
    return found


def _finish_retention(
    archive_dir: Path, expired: list[LocalArchive], removed: list[str]
) -> list[str]:
    for archive in expired:
        log.info("retention: deleting %s", archive.name)
        if _delete(archive):
            removed.append(archive.name)
    removed += _orphan_sidecars(archive_dir)
    if removed:
        fsync_dir(archive_dir)
    return removed


def _orphan_sidecars(archive_dir: Path) -> list[str]:
    """Delete sidecars whose archive is gone, each said in the log; return their names.
    Only regular files go: anything else named like a sidecar (a directory, a link) is
    left, or every later retention would fail on it (an outside review made one)."""
    removed = []
    for directory in (archive_dir, archive_dir / FETCHED_DIR):
        if not directory.is_dir():
            continue
        for side in directory.glob("*.json"):
            if not ARCHIVE_NAME.match(side.stem) or os.path.lexists(side.with_suffix("")):
                continue
            with contextlib.suppress(FileNotFoundError):
                if stat.S_ISREG(os.lstat(side).st_mode):
                    side.unlink()
                    log.info("retention: deleting %s (its archive is gone)", side.name)
                    removed.append(side.name)
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
