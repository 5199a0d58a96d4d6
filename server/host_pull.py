"""One host's pull, as named steps over its :class:`~.host.HostContext`.

:meth:`HostPull.run` goes through the phases in order and stops at the first that ends
the host's turn:

1. ``due``: with ``--if-due``, a host whose newest snapshot is younger than
   ``min_interval`` is skipped quietly (status.json's record of it, when old enough,
   spares waiting for the repository's snapshot list);
2. ``connect``: reach the client over SSH (pinned host key);
3. ``wait_for_client``: ask for its archives, again while it is publishing one;
4. ``choose``: a pure function of the listing and the repository's snapshots (see
   :func:`choose`): the newest usable archive, or a skip and why (chosen before the
   snapshot list arrives when staging reaches it by deltas, and confirmed before storing);
5. ``fetch``: stream the archive into the partial file while unpacking it into staging
   (:mod:`.transfer`), checked against its sha256 and manifest;
   (a delta: the archives that lead to it from what staging holds, see :mod:`.chain`,
   falling back once to the chain's full archive when staging is not the delta's base);
6. ``store``: one snapshot from staging (restic/borg);
7. ``mark_fetched``: tell the client, which moves the archive to ``fetched/``;
8. ``measure``: the repository's size, for the report.

Every failure becomes the host's result (:meth:`run` never raises but for SIGTERM); the
host's deadline (``host_timeout``) cancels whatever step is running.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import time
from collections.abc import Callable, Generator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, NamedTuple, Protocol

from ..common.archive import baseindex
from ..common.archive import sidecar as sidecars
from ..common.archive.baseindex import IndexedTree
from ..common.archive.sidecar import ARCHIVE_NAME, SIDECAR_NAME, Sidecar
from ..common.archive.unpack import BaseMismatch, HostileArchive
from ..common.clock import (
    FUTURE_TOLERANCE,
    age,
    iso,
    iso_or_none,
    parse_stamp,
    signed_age,
    utc_now,
)
from ..common.errors import (
    ArchiveError,
    CommandError,
    Interrupted,
    LocalArchiveError,
    PullbackError,
    describe,
)
from ..common.fsutil import atomic_write
from ..common.locks import FileLock
from ..common.log import recent_lines
from ..common.notify import Notifier
from ..common.outcome import Status
from ..common.protocol import Listing
from ..common.text import BoundedWarnings, printable
from ..common.units import human_duration, human_size
from . import chain, status_file
from .backends import RepositoryMissing, Snapshot, SnapshotSpec, StoreResult, plausible
from .db_proof import find_dumps
from .host import Deadline, HostContext
from .journal import CONNECTING, STORING, TRANSFERRING, WAITING, InterruptedRun, PhaseLog
from .missing import RepositoryGone, gone_words
from .remote import ArchiveGone, Remote, TransferCut
from .results import HostResult
from .transfer import (
    ChecksumMismatch,
    Fetched,
    discard_partial,
    drop_stale_partials,
    fetch_and_unpack,
)

SHOWN_WARNINGS = 10
KEPT_WARNINGS = 20


class ClientEndpoint(Protocol):
    """What a pull needs of a client (a :class:`~.remote.Remote`, or a test's fake)."""

    def __enter__(self) -> ClientEndpoint: ...

    def __exit__(self, *exc) -> None: ...

    def list_archives(self) -> Listing: ...

    def mark_fetched(self, name: str, deltas: bool = False, lean: bool = False) -> None: ...

    def ask_full(self) -> None: ...

    def stream(
        self, name: str, offset: int, cancel=None, size: int | None = None
    ) -> Generator[bytes, None, None]: ...


@dataclass(frozen=True)
class PullOptions:
    """How a pull was asked for on the command line."""

    dry_run: bool = False
    if_due: bool = False
    new: bool = False
    """Make a missing repository even where status.json records a pull (``--new``)."""


@dataclass(frozen=True)
class Stored:
    """What the host's repository already holds, as far as choosing is concerned."""

    newest: Snapshot | None
    stamps: frozenset[str]

    NOTHING: ClassVar[Stored]
    """Nothing stored (or not known yet)."""

    @classmethod
    def of(cls, snapshots: list[Snapshot]) -> Stored:
        """What ``snapshots`` (oldest first) hold; the newest is the newest not dated
        over FUTURE_TOLERANCE ahead (one far ahead held every later archive out as
        "older than the newest snapshot": the host was never stored again)."""
        believed = plausible(snapshots)
        return cls(
            believed[-1] if believed else None,
            frozenset(s.stamp for s in snapshots if s.stamp),
        )


Stored.NOTHING = Stored(None, frozenset())


@dataclass
class Choice:
    """What :func:`choose` decided: an archive to fetch, or a skip and its reason."""

    archive: Sidecar | None = None
    skip: str = ""
    """Why nothing is fetched (empty when ``archive`` is to be fetched)."""
    problem: bool = False
    """Something an administrator should hear about: archives were passed over, or the
    skip is one."""
    mark_fetched: str | None = None
    """An archive to tell the client about although it is not fetched (already stored)."""
    warnings: list[str] = field(default_factory=list)
    """Archives passed over, and why."""
    waiting: bool = False
    """Nothing new from the client yet (no archive, or its newest is already stored): the
    server's timer fired before the client's. A problem only once the host is stale."""


@dataclass(frozen=True)
class Decision:
    """A choice and what it was made with (:meth:`HostPull.still_chosen` makes it
    again with the repository's snapshots alone changed)."""

    choice: Choice
    now: dt.datetime
    refused: frozenset[str]
    early: bool = False
    """Made before the repository's snapshot list arrived."""


def _mismatch(client_says: str, host: str) -> ArchiveError:
    return ArchiveError(
        f"the client calls itself '{printable(client_says, 100)}', not '{host}' "
        "(check hostname: in its client.yaml)"
    )


class ChainBroken(ArchiveError):
    """The newest archive is a delta the server cannot reach from what the client lists."""


SESSION_PROTOCOL = 4
"""The first serve protocol with ``session`` (one serve process answers a whole pull)."""
CHECKSUM_TRIES = 2
"""Pulls in which an archive may fail its checksum before the next newest is taken."""


class Usable(NamedTuple):
    """What :func:`newest_usable` found."""

    best: Sidecar | None
    """The newest archive that may be fetched."""
    warnings: BoundedWarnings
    """One per archive passed over, and why."""
    passed: list[str]
    """The stamps of the archives passed over ("" where even the name says none)."""
    ready: int = 0
    """The listed archives that may be fetched (the newest of them is ``best``)."""

    def passed_since(self, stamp: str) -> bool:
        """Whether an archive newer than ``stamp`` (or of no known stamp) was passed
        over: a day the client made that is in no snapshot, and no later one covers."""
        return any(not passed or passed > stamp for passed in self.passed)


def _stamp_of(name: object) -> str:
    match = ARCHIVE_NAME.match(name) if isinstance(name, str) else None
    return match["stamp"] if match else ""


def _passed_over(
    name: str, entry: dict, side: Sidecar, refused: frozenset[str], horizon: dt.datetime
) -> str | None:
    """Why the listed archive ``name`` (its listing ``entry`` and parsed sidecar) is
    passed over, or None when it may be fetched."""
    if side.archive.name in refused:
        return (
            f"passing over {name}: its bytes did not match its checksum in "
            f"{CHECKSUM_TRIES} pulls; taking the newest archive before it"
        )
    if not isinstance(entry.get("size"), int) or entry["size"] != side.archive.size:
        return f"ignoring {name}: its size differs from its sidecar"
    if parse_stamp(side.stamp) > horizon:
        return (
            f"ignoring {name}: it is dated in the future; check the client's clock, then "
            "delete it there (until then the host needs attention)"
        )
    return None


def refused_archives(state_dir: Path, host: str) -> frozenset[str]:
    """The archives of ``host`` that failed their checksum in CHECKSUM_TRIES pulls (its
    status.json entry): passed over by the next pull."""
    return refused_of(status_file.checksum_failures(state_dir, host))


def refused_of(failures: Mapping[str, int]) -> frozenset[str]:
    """The archives of ``failures`` (checksum failures per archive) that failed
    CHECKSUM_TRIES times."""
    return frozenset(name for name, count in failures.items() if count >= CHECKSUM_TRIES)


def newest_usable(
    listing: Listing, host: str, now: dt.datetime, refused: frozenset[str] = frozenset()
) -> Usable:
    """The newest archive of ``listing`` that may be fetched, and a warning for every one
    passed over: a bad sidecar, a size that differs from the sidecar, a stamp in the future
    (a wrong client clock must not hide every later archive), and a stamp two archives
    share (which one is the real one cannot be told).

    ``refused``: archives that failed their checksum CHECKSUM_TRIES times (passed over, so
    that one damaged archive does not block every later pull until the client makes a
    newer one). Raises ArchiveError when a sidecar names another host.
    """
    warnings = BoundedWarnings(limit=KEPT_WARNINGS)
    passed: list[str] = []
    for entry in listing.unusable:
        # words from the client: shown, but never trusted to be printable
        name, problem = (printable(entry.get(k, "?"), 120) for k in ("name", "problem"))
        warnings.append(f"ignoring {name}: {problem}")
        passed.append(_stamp_of(entry.get("name")))
    by_stamp: dict[str, list[Sidecar]] = {}
    horizon = now + FUTURE_TOLERANCE
    for entry in listing.archives:
        try:
            name = printable(entry["name"], 120)
            side = sidecars.from_data(entry["sidecar"], expected_name=str(entry["name"]))
        except (KeyError, TypeError, ValueError, ArchiveError) as exc:
            warnings.append(f"ignoring an archive with a bad sidecar: {printable(exc, 300)}")
            passed.append(_stamp_of(entry.get("name") if isinstance(entry, dict) else None))
            continue
        if side.host != host:
            raise _mismatch(side.host, host)
        why = _passed_over(name, entry, side, refused, horizon)
        if why is None:
            by_stamp.setdefault(side.stamp, []).append(side)
        else:
            warnings.append(why)
            passed.append(side.stamp)
    best, ready = None, 0
    for stamp, sides in by_stamp.items():
        ready += len(sides) == 1
        if len(sides) > 1:
            names = ", ".join(sorted(printable(s.archive.name, 120) for s in sides)[:3])
            warnings.append(f"ignoring {names}: two archives share the stamp {stamp}")
            passed.append(stamp)
        elif best is None or stamp > best.stamp:
            best = sides[0]
    return Usable(best, warnings, passed, ready)


def choose(
    listing: Listing,
    host: str,
    stored: Stored,
    now: dt.datetime,
    refused: frozenset[str] = frozenset(),
) -> Choice:
    """Decide what to do with a client's listing; a pure function.

    Skips: no usable archive (waiting when there are none), the chosen archive already
    stored (waiting; tell the client it was fetched), or older than the newest snapshot.
    An archive passed over (damaged, dated in the future, ...) that is newer than the one
    taken makes the choice a problem: a day the client made reaches no snapshot, and no
    later one covers it (older ones passed over are only warned about). Raises
    ArchiveError when the client is another host.
    """
    if listing.host != host:
        raise _mismatch(listing.host, host)
    usable = newest_usable(listing, host, now, refused)
    best, passed_over = usable.best, usable.warnings
    warnings = passed_over.lines(KEPT_WARNINGS)
    if best is None:
        if passed_over:
            reason = "no archive can be fetched: " + "; ".join(passed_over.lines(3))
            return Choice(skip=reason, problem=True, warnings=warnings)
        return Choice(skip="the client has no archive to fetch", waiting=True)
    name, problem = best.archive.name, usable.passed_since(best.stamp)
    if best.stamp in stored.stamps:
        return Choice(
            best,
            f"{name} is already stored",
            problem=problem,
            mark_fetched=name,
            warnings=warnings,
            waiting=True,
        )
    newest = stored.newest
    if newest is not None and parse_stamp(best.stamp) < newest.time:
        skip = f"{name} is older than the newest snapshot ({iso(newest.time)}); not stored"
        return Choice(best, skip, problem=problem, warnings=warnings)
    return Choice(best, problem=problem, warnings=warnings)


def client_warnings(archive: Sidecar, limit: int = SHOWN_WARNINGS) -> list[str]:
    """What the client warned about while it made the archive (files changed while read,
    entries skipped), as ``on the client: service/task: warning`` lines, at most
    ``limit`` of them and a count of the rest; client words are escaped and capped."""
    found = [
        f"on the client: {printable(service.name, 100)}/{printable(task.type, 40)}: "
        f"{printable(warning, 300)}"
        for service in archive.services
        for task in service.tasks
        for warning in task.warnings
    ]
    if len(found) > limit:
        found = [*found[:limit], f"on the client: ... and {len(found) - limit} more warnings"]
    return found


def transfer_note(result: HostResult) -> str:
    """How the stored archive came, when it was not one full archive: ``; a delta (12.0
    KiB fetched)``, ``; 3 archives applied``, ``; fell back to the full archive``."""
    parts = []
    if result.delta:
        parts.append(f"a delta ({human_size(result.fetched_bytes)} fetched)")
    if result.applied > 1:
        parts.append(f"{result.applied} archives applied")
    if result.fell_back:
        parts.append("fell back to the chain's full archive")
    return "; " + ", ".join(parts) if parts else ""


def failure_reason(exc: BaseException) -> str:
    """What a failed pull says, in plain words, for ``exc``."""
    if isinstance(exc, TransferCut):
        return f"{exc}; what arrived is kept and the next run resumes" if exc.kept else str(exc)
    if isinstance(exc, HostileArchive):
        return f"refused a hostile archive: {exc}; nothing was stored"
    if isinstance(exc, ArchiveError) and "nothing was stored" not in str(exc):
        return f"{exc}; nothing was stored"
    if isinstance(exc, CommandError):
        return f"{exc.display.split(' ', 1)[0]} {exc.reason}" + (
            f": {exc.tail[-1]}" if exc.tail else ""
        )
    if isinstance(exc, PullbackError | OSError):
        return describe(exc)
    if isinstance(exc, MemoryError):
        return "out of memory: the pull needed more than pull_memory_limit allows"
    return f"internal error: {describe(exc)}"


def _remote(ctx: HostContext) -> Remote:
    """The client's serve endpoint, asked over one session when its last listing said it
    speaks protocol 4 or later (else, or when it cannot open one, request by request)."""
    known = status_file.client_protocol(ctx.config.state_dir, ctx.name)
    return Remote(ctx.host, ctx.config.ssh, ctx.runner, session=known >= SESSION_PROTOCOL)


class HostPull:
    """Pull one host: :meth:`run` the phases; each phase is a method of its own."""

    def __init__(
        self,
        ctx: HostContext,
        options: PullOptions,
        journal: PhaseLog | None = None,
        interrupted: InterruptedRun | None = None,
        connect: Callable[[HostContext], ClientEndpoint] | None = None,
    ):
        self.ctx = ctx
        self.options = options
        self.journal = journal
        self.interrupted = interrupted
        self._connect = connect or _remote
        self.result = HostResult(ctx.name, started=iso(utc_now()))
        self.notifier = Notifier(ctx.host.notify, f"pull of {ctx.name}")
        self.started = time.monotonic()
        self.repository_missing = False
        """The repository does not exist yet; it is made before the first store."""
        self.client_protocol = 1
        """What the client's listing says it speaks (3: it hears that deltas apply)."""
        self.untrusted_parent = False
        """The host's newest snapshot lacks restic's CTIME_TAG: the store reads every file."""

    # -- the whole run ------------------------------------------------------------------

    def run(self) -> HostResult:
        """Pull the host. Never raises (except Interrupted): failures are in the result."""
        ctx, result = self.ctx, self.result
        limit = Deadline(ctx.cancel, ctx.config.host_timeout, "host_timeout")
        if self.interrupted is not None and ctx.name in self.interrupted.phases:
            self._warn(self.interrupted.describe(ctx.name))
        try:
            with limit:
                self._steps()
        except Interrupted:
            raise
        except BaseException as exc:
            result.status = Status.FAILED
            result.reason = failure_reason(exc)
            if limit.passed:
                took = human_duration(ctx.config.host_timeout)
                result.reason = f"timed out after {took} (host_timeout); {result.reason}"
            if not isinstance(exc, PullbackError | OSError):
                ctx.log.debug("the pull failed:", exc_info=True)
        finally:
            result.duration = time.monotonic() - self.started
            self._phase(None)
        result.cleaned()
        self._report()
        return result

    def _steps(self) -> None:
        if not self.options.dry_run:  # (a dry run changes nothing)
            ctx = self.ctx
            drop_stale_partials(ctx.partial_dir, ctx.config.partial_max_age, ctx.log)
        self.open_repository()
        self.clear_interrupted_store()
        # The repository's snapshot list and the client's listing are independent: ask
        # both at once (each costs a process start and, for restic, a key derivation).
        with ThreadPoolExecutor(1, thread_name_prefix=f"snapshots-{self.ctx.name}") as pool:
            asked = pool.submit(
                lambda: [] if self.repository_missing else self.ctx.backend.snapshots()
            )
            try:
                if self.options.if_due and not self.recorded_due() and not self.due(asked.result()):
                    return
                self._pull(asked)
            finally:
                if self.result.status != Status.STORED:
                    wait([asked])  # (an early failure comes before the list: wait for it)
                    if not asked.exception():
                        self.note_snapshots(asked.result())  # for the report of a failed host

    def _pull(self, asked: Future) -> None:
        if not self.options.dry_run:
            self.notifier.start()
        self._phase(CONNECTING)
        with self.connect() as remote:
            try:
                self._pull_newest(remote, asked)
            except ArchiveGone as exc:
                # the client's own run removed an archive of the chain being fetched
                # (a new full archive ends the chain): what the client holds now, once
                self._warn(f"{exc}: its own run replaced it during this pull; listed again")
                self.result.fell_back = False  # (said of what this pull stores)
                self._pull_newest(remote, asked)

    def _pull_newest(self, remote: ClientEndpoint, asked: Future) -> None:
        """List the client's archives, choose, fetch (or skip) and store."""
        listing = self.wait_for_client(remote)
        if listing is None:
            return
        decision = self.choose_early(listing, asked)
        choice = decision.choice
        if not self.apply(choice, remote, listing):
            return
        assert choice.archive is not None
        if self.repository_missing:
            self.ctx.backend.prepare(create=True)
            self.repository_missing = False
        fetched = self.reach(remote, listing, choice.archive)
        if decision.early and not self.still_chosen(listing, decision, asked, remote, fetched):
            return
        self.store(choice.archive, fetched)
        self.mark_fetched(remote, choice.archive.archive.name)
        self.measure()

    def choose_early(self, listing: Listing, asked: Future) -> Decision:
        """The choice, made before the repository's snapshot list arrived when it is
        cheap: an archive that staging reaches by deltas from the tree it holds (the
        list, which costs restic a key derivation, then arrives while it is fetched;
        :meth:`still_chosen`). Otherwise made with the list."""
        refused, now = self.refused(), utc_now()
        if not asked.done() and not self.options.dry_run:
            choice = choose(listing, self.ctx.name, Stored.NOTHING, now, refused)
            if choice.archive is not None and not choice.skip:
                tree = baseindex.read_tree(self.ctx.staging)
                route = chain.plan(choice.archive, listing, self.ctx.name, tree, refused)
                if not route.from_full and not route.problem:
                    return Decision(choice, now, refused, early=True)
        stored = self.note_snapshots(asked.result())
        return Decision(choose(listing, self.ctx.name, stored, now, refused), now, refused)

    def still_chosen(
        self,
        listing: Listing,
        decision: Decision,
        asked: Future,
        remote: ClientEndpoint,
        fetched: Fetched | None,
    ) -> bool:
        """After an early choice's fetch: whether the repository's snapshots (now
        known) leave it standing. Chosen again at the same time with the same refusals,
        the archive is the same, or the choice a skip (already stored, or older than the
        newest snapshot): the host then ends as the skip says, its warnings said once;
        staging keeps the fetched tree, which its index describes. Raises what asking
        for the snapshots raised (the download is dropped first)."""
        try:
            stored = self.note_snapshots(asked.result())
        except BaseException:
            if fetched is not None:
                discard_partial(fetched.path)
            raise
        choice = choose(listing, self.ctx.name, stored, decision.now, decision.refused)
        if not choice.skip:
            return True
        if fetched is not None:
            discard_partial(fetched.path)
        self.apply(dataclasses.replace(choice, warnings=[]), remote)
        return False

    # -- the phases -----------------------------------------------------------------------

    def open_repository(self) -> None:
        """Open the host's repository. A missing one (``backend.init``) is made only when
        an archive is about to be stored, so a host that fails before (unreachable, or
        another host) leaves no empty repository behind, and never where status.json
        records a pull of the host unless ``--new`` says so (:func:`.missing.gone_words`).
        Raises BackendError."""
        ctx = self.ctx
        try:
            ctx.backend.prepare(create=False)
        except RepositoryMissing:
            if not ctx.config.backend.init:
                raise
            where = ctx.backend.repository()
            gone = None if self.options.new else gone_words(ctx.config, ctx.host, where)
            if gone is not None:
                raise RepositoryGone(gone) from None
            self.repository_missing = True

    def refused(self) -> frozenset[str]:
        """Archives that failed their checksum in CHECKSUM_TRIES pulls (status.json)."""
        return refused_archives(self.ctx.config.state_dir, self.ctx.name)

    def clear_interrupted_store(self) -> None:
        """If a killed pull had begun this host, remove the locks its store may have left
        (only locks whose process is gone), whatever phase its journal says: the host's
        process tells the journal's writer its phase through a pipe, so a kill can leave
        the journal behind the store (a soak caught a ``restic backup`` killed with its
        lock while the journal still said "connecting"). The host is in the journal
        from before its process starts; "waiting for its turn" means it never started
        (the parent writes "connecting" first)."""
        phase = self.interrupted.phases.get(self.ctx.name) if self.interrupted else None
        cut = phase is not None and phase != WAITING
        if not cut or self.options.dry_run or self.repository_missing:
            return
        try:
            message = self.ctx.backend.unlock()
        except PullbackError as exc:
            message = f"could not remove a stale repository lock: {exc}"
        if message:  # (the backend has logged it)
            self.result.warnings.append(message)

    def recorded_due(self) -> bool:
        """Whether status.json shows the host due without waiting for the repository:
        the newest snapshot recorded there is old enough (:meth:`_due_at`). When the
        record is missing or fresh, :meth:`due` asks the repository. A record older than
        the truth (a snapshot stored by another tool) costs at most one snapshot more;
        the repository's list still decides, before storing, whether the archive is
        already there (:meth:`still_chosen`). A host whose last pull failed is due too:
        the next firing tries it again (a repository password mended after a failed run
        left ``status`` failing until the snapshot grew old, up to ``min_interval``)."""
        entry = status_file.load_status(self.ctx.config.state_dir)["hosts"].get(self.ctx.name)
        if isinstance(entry, dict) and entry.get("last_result") == Status.FAILED:
            self.ctx.log.info("its last pull failed: trying again")
            return True
        newest = entry.get("newest_snapshot") if isinstance(entry, dict) else None
        try:
            seconds = signed_age(newest, utc_now()) if isinstance(newest, str) else None
        except ValueError:
            return False
        return seconds is not None and self._due_at(seconds)

    def _due_at(self, newest_age: float) -> bool:
        """Whether a newest snapshot ``newest_age`` seconds old makes the host due: past
        ``min_interval``, or past ``max_age`` when that is shorter (a host skipped as
        fresh while stale waited for ever), or dated over FUTURE_TOLERANCE ahead (a
        wrong clock: it would never grow old)."""
        host = self.ctx.host
        return newest_age >= min(host.min_interval, host.max_age) or (
            newest_age < -FUTURE_TOLERANCE.total_seconds()
        )

    def due(self, snapshots: list[Snapshot]) -> bool:
        """False (and the result a quiet skip) when the newest snapshot is fresh."""
        newest = self.note_snapshots(snapshots).newest
        if newest is None:
            return True
        newest_age = (utc_now() - newest.time).total_seconds()
        if self._due_at(newest_age):
            return True
        self.result.status, self.result.fresh = Status.SKIPPED, True
        self.result.reason = (
            f"fresh: the newest snapshot is {human_duration(newest_age)} old "
            f"(min_interval {human_duration(self.ctx.host.min_interval)})"
        )
        return False

    def connect(self) -> ClientEndpoint:
        """The client's serve endpoint (connected when entered)."""
        return self._connect(self.ctx)

    def wait_for_client(self, remote: ClientEndpoint) -> Listing | None:
        """The client's listing, asked again while it is publishing an archive
        (``lock_retries`` times, ``lock_wait`` apart); None (a skip) if it stays busy."""
        config = self.ctx.config
        listing = remote.list_archives()
        self.client_protocol = self.result.client_protocol = listing.protocol
        for attempt in range(config.lock_retries):
            if not listing.lock:
                return listing
            self.ctx.log.info(
                "the client is publishing an archive; asking again in %s (%d/%d)",
                human_duration(config.lock_wait),
                attempt + 1,
                config.lock_retries,
            )
            if self.ctx.cancel.wait(config.lock_wait):
                raise PullbackError("cancelled while waiting for the client's lock")
            listing = remote.list_archives()
        if not listing.lock:
            return listing
        owner = listing.lock
        self._skip(
            f"busy: the client was still publishing an archive after {config.lock_retries} "
            f"retries (pid {printable(owner.get('pid'), 20)}, since "
            f"{printable(owner.get('started'), 40)})",
            problem=True,
        )
        return None

    def note_snapshots(self, snapshots: list[Snapshot]) -> Stored:
        """Record the repository's snapshots in the result; return what choosing needs."""
        result = self.result
        stored = Stored.of(snapshots)
        result.newest_snapshot = iso_or_none(stored.newest.time if stored.newest else None)
        result.oldest_snapshot = iso_or_none(snapshots[0].time if snapshots else None)
        result.snapshot_count = len(snapshots)
        result.snapshots_listed = True
        ahead = [s for s in snapshots if stored.newest is None or s.time > stored.newest.time]
        if ahead:
            self._warn(
                f"snapshot {ahead[-1].id} is dated {iso(ahead[-1].time)}, ahead of this "
                "machine's clock: not taken for the newest (a wrong clock or a forged "
                "snapshot: maintenance holds forget until it is removed)"
            )
        own = [s for s in snapshots if not s.adopted]
        self.untrusted_parent = bool(own) and not own[-1].reads_ctime
        return stored

    def apply(self, choice: Choice, remote: ClientEndpoint, listing: Listing | None = None) -> bool:
        """Record ``choice`` in the result; True when its archive is to be fetched (a dry
        run says what it would fetch, with ``listing``: the chain a delta takes)."""
        for warning in choice.warnings:
            self._warn(warning)
        self.result.problem = self.result.problem or choice.problem
        if choice.archive is not None:
            info = choice.archive.archive
            result = self.result
            result.archive, result.stamp = info.name, choice.archive.stamp
            result.size, result.content_bytes = info.size, info.content_bytes
            result.client_failed_services = choice.archive.failed_services
        if choice.skip:
            self._skip(choice.skip, problem=choice.problem or self._stale_waiting(choice))
            if choice.waiting and self.options.if_due and not self.result.problem:
                self.result.fresh = True  # a quiet skip: the client's timer comes later
            if choice.mark_fetched and not self.options.dry_run:
                self.mark_fetched(remote, choice.mark_fetched)
            return False
        if self.options.dry_run:
            assert choice.archive is not None
            self._skip(f"dry run: would {self._would_fetch(choice.archive, listing)}")
            return False
        return True

    def _would_fetch(self, newest: Sidecar, listing: Listing | None) -> str:
        """What fetching ``newest`` takes, in words: the archive, or a delta's chain from
        what staging holds (or from its full archive, a fallback, or not at all)."""
        name, size = newest.archive.name, human_size(newest.archive.size)
        if not newest.archive.is_delta or listing is None:
            return f"fetch {name} ({size})"
        held, route = self._route(newest, listing, self.refused())
        self.result.delta = True
        if route.problem:
            return f"fail: {route.problem} (a delta, {size})"
        total = human_size(sum(a.archive.size for a in route.archives))
        if route.store_only:
            return f"store {name}, which staging already holds"
        if not route.from_full:
            base = route.archives[0].archive.base
            onto = printable(base.name, 120) if base else "?"
            count = len(route.archives)
            chain_words = f"{count} archives, " if count > 1 else ""
            return f"fetch {name}, a delta onto staging's {onto} ({chain_words}{total})"
        why = (
            "a first pull"
            if self._first_pull(held)
            else "a full archive made since the last pull"
            if self._new_chain(held, route)
            else "a fallback"
        )
        return (
            f"fetch {name}, a delta, from its chain's full archive "
            f"{route.archives[0].archive.name} ({len(route.archives)} archives, {total}): "
            f"staging holds none of its bases, {why}"
        )

    def _route(
        self, newest: Sidecar, listing: Listing, refused: frozenset[str]
    ) -> tuple[IndexedTree | None, chain.Plan]:
        """What staging holds, and the plan that reaches ``newest`` from there."""
        held = baseindex.read_tree(self.ctx.staging)
        return held, chain.plan(newest, listing, self.ctx.name, held, refused)

    @staticmethod
    def _new_chain(held: IndexedTree | None, route: chain.Plan) -> bool:
        """Whether ``route`` starts at a full archive made after the tree staging holds:
        the client made a full archive (``--full``, ``full_every``) and deltas on it
        between two pulls. Fetching that full archive is no fallback (an outside test saw
        such missed days reported as one)."""
        if held is None or not route.archives:
            return False
        # both stamps from archive names (a sidecar's own stamp field is the client's
        # word: an outside attack hid a real fallback with one dated later)
        held_name = ARCHIVE_NAME.fullmatch(held.archive)
        full_name = ARCHIVE_NAME.fullmatch(route.archives[0].archive.name)
        return bool(held_name and full_name and full_name["stamp"] > held_name["stamp"])

    def _first_pull(self, held: IndexedTree | None) -> bool:
        """Whether this is the host's first pull: no snapshot, no indexed tree (a
        delta's chain from its full is then no fallback: nothing was lost)."""
        return held is None and self.result.snapshot_count == 0

    def reach(self, remote: ClientEndpoint, listing: Listing, newest: Sidecar) -> Fetched | None:
        """Bring staging to ``newest``: fetch it, or (a delta) every archive from what
        staging holds to it; once, when staging turns out not to be a delta's base, the
        chain from its full archive instead (reported). Returns the last fetch (None:
        staging already held ``newest``). A chain that cannot be applied asks the client
        for a full archive (unless the fault is the server's own, LocalArchiveError) and
        raises."""
        ctx = self.ctx
        refused = self.refused()
        held, route = self._route(newest, listing, refused)
        if route.store_only:
            ctx.log.info("staging already holds %s; storing it", newest.archive.name)
            self.result.delta = newest.archive.is_delta
            return None
        if newest.archive.is_delta and route.from_full and not route.problem:
            self._fell_back(newest, held, route)
        try:
            try:
                return self._apply(remote, route)
            except BaseMismatch as exc:
                if route.from_full:
                    raise
                self._warn(f"fell back to a full transfer: {exc}")
                self.result.fell_back = True
                return self._apply(remote, chain.plan(newest, listing, ctx.name, None, refused))
        except (ChainBroken, ArchiveError) as exc:
            # a checksum mismatch too: over SSH it means damage on the client's disk,
            # and every later delta would be built on the damaged archive; not this
            # server's own trouble (its disk full, its time up): a full archive would
            # only cost more
            if newest.archive.is_delta and not isinstance(exc, LocalArchiveError):
                self.ask_full(remote, listing)
            raise

    def _fell_back(self, newest: Sidecar, held: IndexedTree | None, route: chain.Plan) -> None:
        """Report that reaching the delta ``newest`` takes its chain's full archive,
        staging holding none of its bases (``held``: what it holds, if anything). The
        first pull of a host, and a chain whose full archive the client made after the
        tree staging holds (missed days: nothing was lost), only say so in the log."""
        if self._first_pull(held):
            self.ctx.log.info(
                "first pull: %s is a delta; its chain is applied from its full archive",
                printable(newest.archive.name, 120),
            )
            return
        if self._new_chain(held, route):
            self.ctx.log.info(
                "missed days: %s is a delta on the full archive %s, made since staging's "
                "%s; its chain is applied from that full archive",
                printable(newest.archive.name, 120),
                printable(route.archives[0].archive.name, 120),
                printable(held.archive, 120) if held else "?",
            )
            return
        holds = (
            f"holds {printable(held.archive, 120)}, which is not in its chain"
            if held is not None
            else "holds no indexed tree (lost, emptied after a failed pull, or never pulled)"
        )
        self._warn(
            f"fell back to a full transfer: {printable(newest.archive.name, 120)} is a delta "
            f"and staging {holds}"
        )
        self.result.fell_back = True

    def _apply(self, remote: ClientEndpoint, route: chain.Plan) -> Fetched:
        """Fetch the archives of ``route`` in order; returns the last fetch."""
        if route.problem:
            raise ChainBroken(route.problem)
        fetched = None
        for number, archive in enumerate(route.archives, 1):
            if fetched is not None:
                discard_partial(fetched.path)
            if len(route.archives) > 1:
                self.ctx.log.info(
                    "applying %s (%d of %d)", archive.archive.name, number, len(route.archives)
                )
            fetched = self.fetch(remote, archive)
        assert fetched is not None
        self.result.applied = len(route.archives)
        return fetched

    def ask_full(self, remote: ClientEndpoint, listing: Listing) -> None:
        """Ask the client for a full archive (a client of protocol 2 or later); a failure
        is only a warning."""
        if listing.protocol < 2 or self.options.dry_run:
            return
        try:
            remote.ask_full()
        except PullbackError as exc:
            self._warn(f"could not ask the client for a full archive: {exc}")
            return
        self._warn("asked the client to make its next archive a full one")

    def fetch(self, remote: ClientEndpoint, archive: Sidecar) -> Fetched:
        """Fetch and unpack ``archive`` into staging, resuming a partial download."""
        self._phase(TRANSFERRING)
        try:
            fetched = fetch_and_unpack(self.ctx, remote, archive.archive)
        except ChecksumMismatch:
            self.result.checksum_failed = archive.archive.name
            raise
        # the snapshot carries its sidecar: a restore can tell which tasks failed in it;
        # it holds the whole tree whatever the archive was (format 1 for every reader)
        atomic_write(self.ctx.staging / SIDECAR_NAME, archive.to_json(as_full=True), mode=0o600)
        self.result.resumed_from = fetched.resumed_from
        self.result.fetched_bytes += fetched.size - fetched.resumed_from
        self.result.delta = archive.archive.is_delta
        warnings = fetched.unpacked.warnings
        for warning in warnings.lines(SHOWN_WARNINGS):
            self.ctx.log.warning("%s", warning)
        self.result.warnings.extend(warnings.lines(KEPT_WARNINGS))
        stats = fetched.unpacked
        self.ctx.log.info(
            "fetched %s (%s, %s%s), unpacked %d files (%d rewritten, %d unchanged), "
            "removed %d entries (a directory, once)",
            archive.archive.name,
            "a delta" if archive.archive.is_delta else "a full archive",
            human_size(fetched.size),
            f", resumed at {human_size(fetched.resumed_from)}" if fetched.resumed_from else "",
            stats.files,
            stats.written,
            stats.unchanged,
            stats.removed,
        )
        return fetched

    def _store_in_turn(self, spec: SnapshotSpec, timeout: float) -> StoreResult:
        """Store the staging tree; a host of a group waits its turn: restic deduplicates
        against the repository's index as a backup starts, so two hosts storing the same
        new data at once would each store it (measured: four hosts of one image stored
        their common data four times). Raises LockBusy when the turn does not come within
        ``timeout``, BackendError when the store fails."""
        ctx = self.ctx
        group = ctx.host.group
        if group is None:
            return ctx.backend.store(ctx.staging, spec, timeout)
        lock = FileLock(ctx.config.lock_dir / f"store-group-{group}.lock", f"a store of {group}")
        asked = time.monotonic()
        with lock.acquire(wait=timeout):
            waited = time.monotonic() - asked
            if waited >= 1:
                ctx.log.info("waited %s for group %s's other store", human_duration(waited), group)
            return ctx.backend.store(ctx.staging, spec, max(60.0, timeout - waited))

    def store(self, archive: Sidecar, fetched: Fetched | None) -> None:
        """Store the staging tree as one snapshot, within what is left of the deadline."""
        ctx, result = self.ctx, self.result
        self._phase(STORING)
        when = parse_stamp(archive.stamp)
        remaining = max(60.0, ctx.config.host_timeout - (time.monotonic() - self.started))
        timeout = min(ctx.config.backend.timeout, remaining)
        read_all = self.untrusted_parent
        if read_all:
            ctx.log.info(
                "every file of staging is read again: the newest snapshot was made by an "
                "older pullback, which may have kept a file's older bytes (one rewritten "
                "with its old size and mtime)"
            )
        spec = SnapshotSpec(archive.stamp, when, tuple(archive.failed_services), read_all)
        stored = self._store_in_turn(spec, timeout)
        result.status = Status.STORED
        result.database_dumps = sum(len(found) for found in find_dumps(ctx.staging).values())
        result.snapshot_id = stored.snapshot_id
        result.bytes_added = stored.bytes_added
        result.store_peak_rss = stored.peak_rss
        result.snapshot_count += 1
        result.newest_snapshot = iso(when)
        result.reason = (
            f"stored {archive.archive.name} as {ctx.backend.name} snapshot "
            f"{stored.snapshot_id} (+{human_size(stored.bytes_added)}){transfer_note(result)}"
        )
        result.warnings.extend(client_warnings(archive))
        for warning in stored.warnings:
            self._warn(warning)
        if fetched is not None:
            discard_partial(fetched.path)

    def measure(self) -> None:
        """The repository's size, for the report; a failure is only a warning."""
        try:
            self.result.repository_bytes = self.ctx.backend.size()
        except (PullbackError, OSError) as exc:
            self.ctx.log.warning("could not measure the repository: %s", exc)

    def mark_fetched(self, remote: ClientEndpoint, name: str) -> None:
        """Tell the client ``name`` was fetched, and that this server applies deltas
        (protocol 3), lean ones too (protocol 5); a refusal is only a warning."""
        try:
            protocol = self.client_protocol
            remote.mark_fetched(name, deltas=protocol >= 3, lean=protocol >= 5)
        except PullbackError as exc:
            if str(exc).rstrip().endswith(f"no archive {name}"):  # (serve's refusal)
                # the client's own run replaced it during this pull: nothing left to mark
                self.ctx.log.info("%s is no longer on the client: not marked fetched", name)
                return
            self._warn(f"could not tell the client that {name} was fetched: {exc}")

    # -- helpers ------------------------------------------------------------------------

    def _stale_waiting(self, choice: Choice) -> bool:
        """Waiting for the client is a problem once the host has no snapshot within its
        ``max_age`` (or none at all): then the client is not just later than the server."""
        if not choice.waiting:
            return False
        newest = age(self.result.newest_snapshot, utc_now())
        return newest is None or newest > self.ctx.host.max_age

    def _skip(self, reason: str, problem: bool = False) -> None:
        self.result.status, self.result.reason = Status.SKIPPED, reason
        self.result.problem = self.result.problem or problem

    def _warn(self, message: str) -> None:
        """Log and keep ``message``; once only (a host listed again repeats its choice)."""
        if message in self.result.warnings:
            return
        self.ctx.log.warning("%s", message)
        self.result.warnings.append(message)

    def _phase(self, name: str | None) -> None:
        if self.journal is not None and not self.options.dry_run:
            self.journal.phase(self.ctx.name, name)

    def _report(self) -> None:
        result = self.result
        level = logging.ERROR if result.status == Status.FAILED else logging.INFO
        self.ctx.log.log(level, "%s: %s", result.status, result.reason)
        if not self.options.dry_run:
            lines = [result.reason, *result.warnings, *recent_lines(f"[{self.ctx.name}]")]
            ok = result.status != Status.FAILED
            title = f"pullback: {self.ctx.name} {result.status}"
            missed = self.notifier.finish(ok, title, "\n".join(lines))
            result.not_delivered = [f"{self.ctx.name}: {what} not delivered" for what in missed]
