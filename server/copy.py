"""``pullback-server copy``: a second copy of every host's repository, proven.

Per host: the snapshots of the primary repository (where pulls store) that its copy
(``copy:``, ``hosts[].copy_repository``) lacks are copied with ``restic copy`` (only the
data the copy lacks travels), then the copy's snapshot list is compared with the
primary's: a snapshot the copy should hold and does not (it fell behind), a snapshot
whose content differs from its original, or one the primary never had (it diverged), is
a failure. The restore drill runs against the copy on its own interval
(``copy.verify_every``). The outcome goes to status.json's ``copy`` entry of the host,
which ``status``, the metrics and the status page show (docs/disaster-recovery.md).

It runs under its own lock (one copy at a time), not the pull's: a first copy may take
hours and must not hold the night's pulls back; restic's repository locks keep it apart
from a prune.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import hashlib
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

from ..common.cli import print_json
from ..common.clock import iso, parse_iso, utc_now
from ..common.errors import EXIT_FAILED, EXIT_OK, Interrupted, PullbackError
from ..common.locks import FileLock
from ..common.log import get_logger
from ..common.outcome import Status
from ..common.signals import SignalGuard, refuse_if_stopping
from ..common.text import few
from ..common.units import human_size
from . import status_file
from .backends import Backend, BackendError, RepositoryMissing, Role, Snapshot
from .backends.base import local_path
from .config import HostConfig, ServerConfig
from .copy_identity import primary_of, refuse_the_primary
from .drill import DrillResult, drill
from .host import Deadline, HostContext, for_each_host
from .missing import RepositoryGone, open_pulled

log = get_logger("copy")
COPY_LOCK = "pullback-copy.lock"
NAMES_SHOWN = 5
"""Snapshots a copy's problem names before it only counts the rest."""


@dataclass(frozen=True)
class Comparison:
    """The copy's snapshot list against the primary's, after a copy."""

    missing: list[str] = field(default_factory=list)
    """Primary snapshots the copy should hold and does not (it fell behind)."""
    diverged: list[str] = field(default_factory=list)
    """Snapshots in both whose content differs (the copy's tree is not its original's)."""
    foreign: list[str] = field(default_factory=list)
    """Copy snapshots newer than the primary's newest that the primary never had."""

    @property
    def problems(self) -> list[str]:
        """The comparison's findings in words (empty: the copy matches)."""
        found = []
        if self.missing:
            found.append(f"the copy lacks {_some(self.missing)} of the primary (fell behind)")
        if self.diverged:
            found.append(f"content differs from the primary: {_some(self.diverged)}")
        if self.foreign:
            found.append(f"the copy holds snapshots the primary never had: {_some(self.foreign)}")
        return found


def _some(ids: list[str]) -> str:
    return f"{len(ids)} snapshot(s) ({few(ids, NAMES_SHOWN)})"


def _key(snapshot: Snapshot) -> tuple[str, str | None]:
    """What a snapshot and its copy have in common: its time and archive stamp (restic
    copy keeps both, and its tree)."""
    return (iso(snapshot.time), snapshot.stamp)


def to_copy(
    primary: Sequence[Snapshot], copy: Sequence[Snapshot], keeps_all: bool = False
) -> list[Snapshot]:
    """The primary's snapshots the copy lacks. With its own retention, only those newer
    than the copy's newest (older ones it lacks were forgotten by that policy: copying
    them again would undo it); a copy that keeps all (no ``copy.retention``) gets every
    one it lacks (one stored out of order after a copy ran, one the copy lost)."""
    held = {_key(s) for s in copy}
    newest = None if keeps_all else max((s.time for s in copy), default=None)
    return [s for s in primary if _key(s) not in held and (newest is None or s.time > newest)]


def compare(
    primary: Sequence[Snapshot], copy: Sequence[Snapshot], since: dt.datetime | None
) -> Comparison:
    """The copy after a copy against the primary: ``since`` is the copy's newest
    snapshot before it (None: it was empty), so every primary snapshot after it must now
    be there."""
    held = {_key(s): s for s in copy}
    twins = Counter(_key(s) for s in copy)
    originals = {_key(s): s for s in primary}
    missing = [s.id for s in primary if _key(s) not in held and _after(s, since)]
    diverged = [
        held[key].id
        for key, original in originals.items()
        if key in held and (_differ(original, held[key]) or twins[key] > 1)
    ]
    return Comparison(missing, diverged, _foreign(primary, copy))


def _foreign(primary: Sequence[Snapshot], copy: Sequence[Snapshot]) -> list[str]:
    """Copy snapshots the primary never had: newer than its newest and not its own, or
    (restic) not made by ``restic copy`` at all."""
    originals = {_key(s) for s in primary}
    newest = max((s.time for s in primary), default=None)
    return [
        s.id
        for s in copy
        if (_key(s) not in originals and newest and s.time > newest) or _not_copied(s)
    ]


def _not_copied(snapshot: Snapshot) -> bool:
    """A restic snapshot in the copy that ``restic copy`` did not make (it records the
    original's id in each snapshot it writes): made in the copy by another hand."""
    return snapshot.tree is not None and snapshot.original is None


def _differ(original: Snapshot, copied: Snapshot) -> bool:
    """Both trees are known and are not the same (restic copy keeps the tree)."""
    return bool(original.tree and copied.tree) and original.tree != copied.tree


def _after(snapshot: Snapshot, since: dt.datetime | None) -> bool:
    """Taken after ``since`` (None: any time)."""
    return since is None or snapshot.time > since


@dataclass
class CopyResult:
    host: str
    status: Status = Status.OK
    """ok, failed, or skipped (no primary repository yet)."""
    copied: int = 0
    """Snapshots copied by this run."""
    snapshots: int = 0
    """Snapshots the copy holds of the host afterwards."""
    counted: bool = False
    """The copy was listed after this run's copying: ``snapshots`` is recorded even when
    the run failed (a copy that lost snapshots fails once, not on every run)."""
    newest: str | None = None
    """The copy's newest snapshot's time (ISO), after the run."""
    bytes_added: int | None = None
    """Bytes the copy grew by (a local copy only)."""
    problems: list[str] = field(default_factory=list)
    drill: DrillResult | None = None
    duration: float = 0.0
    location: str | None = None
    """Which store the copy is in (:func:`location_id`): another than the one status.json
    recorded is another copy, whose record starts anew."""
    made: bool = False
    """This run made the copy (a first copy, ``--new``, a new location)."""

    @property
    def reason(self) -> str:
        if self.problems:
            return "; ".join(self.problems)
        if self.status == Status.SKIPPED:
            return "no primary repository yet: nothing to copy"
        added = f", {human_size(self.bytes_added)} added" if self.bytes_added else ""
        return f"copied {self.copied} snapshot(s){added}; the copy holds {self.snapshots}"

    @property
    def is_problem(self) -> bool:
        return self.status == Status.FAILED


class HostCopy:
    """Copy one host's new snapshots, compare, and drill the copy when due; :meth:`run`
    never raises (except Interrupted)."""

    def __init__(self, ctx: HostContext, verify: bool | None, new: bool = False):
        self.ctx = ctx
        self.verify = verify
        """Drill the copy (True), not (False), or when due (None)."""
        self.new = new
        """Make the copy even if status.json says it held snapshots (``--new``)."""
        self.result = CopyResult(ctx.name, location=store_of(ctx.backend))
        self.primary: Backend = primary_of(ctx)

    def run(self) -> CopyResult:
        started = time.monotonic()
        limit = Deadline(self.ctx.cancel, self.ctx.config.host_timeout, "host_timeout")
        try:
            with limit:  # (a store that stalls after answering held the copy for hours)
                self._copy()
            if self.result.status == Status.OK:
                self._drill()
        except Interrupted:
            raise
        except RepositoryGone as exc:
            self.result.status = Status.FAILED
            self.result.problems.append(str(exc))
        except RepositoryMissing:
            self.result.status = Status.SKIPPED
        except PullbackError as exc:
            refuse_if_stopping()  # cut by a stop by hand: no failed copy
            self.result.status = Status.FAILED
            self.result.problems.append(f"the copy was {limit.words}" if limit.passed else str(exc))
        finally:
            self.result.duration = time.monotonic() - started
        level = 40 if self.result.is_problem else 20
        self.ctx.log.log(level, "copy: %s", self.result.reason)
        return self.result

    def _copy(self) -> None:
        """Raises RepositoryMissing (no primary yet), PullbackError (RepositoryGone:
        the primary is missing, though status.json records a pull of the host)."""
        open_pulled(self.ctx.config, self.ctx.host, self.primary)
        copy = self.ctx.backend
        made = self._open_copy()
        primary, held = self.primary.snapshots(), [] if made else copy.snapshots()
        keeps_all = self.ctx.config.backend.copy is None or (
            self.ctx.config.backend.copy.retention is None
        )
        lost = self._lost(len(held)) if keeps_all and not made else None
        since = None if keeps_all else max((s.time for s in held), default=None)
        todo = to_copy(primary, held, keeps_all)
        if todo:
            before = self._local_size()
            copy.copy_from(self.primary, todo, self.ctx.config.backend.timeout)
            held = copy.snapshots()
            after = self._local_size()
            if before is not None and after is not None:
                self.result.bytes_added = max(0, after - before)
        self.result.copied = len(todo)
        self.result.snapshots = len(held)
        self.result.newest = iso(max(s.time for s in held)) if held else None
        found = compare(primary, held, since).problems
        self.result.problems += ([lost] if lost else []) + found
        # a diverged copy's count is not recorded: the snapshot it should not hold,
        # forgotten by hand, would be taken for one lost
        self.result.counted = not found
        if self.result.problems:
            self.result.status = Status.FAILED

    def _open_copy(self) -> bool:
        """Open the copy, or make it when missing. Returns whether it was made now.
        Raises PullbackError (:func:`.copy_identity.refuse_the_primary`, a copy gone
        that held snapshots), BackendError."""
        copy = self.ctx.backend
        try:
            copy.prepare(create=False)
        except RepositoryMissing:
            self._refuse_to_remake()
            self.ctx.log.info("making the copy %s", copy.repository())
            # (borg's copy is made by the mirror itself; a group's hosts make it once)
            made = copy.make_once(lambda: copy.init_copy(self.primary))
            self.result.made = True
            if made:
                return True
        refuse_the_primary(copy, self.primary)
        return False

    def _lost(self, holds: int) -> str | None:
        """Words for a copy that keeps all (no ``copy.retention``) and holds fewer than
        the ``snapshots`` status.json recorded after the last copy to this store
        (someone or something removed them; an outside walk took one out and saw "ok"),
        or None."""
        recorded = _recorded(self.ctx.config, self.ctx.name)
        held = recorded.get("snapshots")
        if status_file.other_store(recorded, self.result.location):
            return None
        if not isinstance(held, int) or isinstance(held, bool) or held <= holds:
            return None
        return (
            f"the copy lost {held - holds} snapshot(s) since the last copy (it held {held}, "
            f"it holds {holds}; nothing is forgotten in a copy without copy.retention): "
            "those the primary still has were copied again"
        )

    def _refuse_to_remake(self) -> None:
        """Raises PullbackError when the copy is missing but held snapshots before (see
        :func:`gone`); ``--new`` says a new copy is meant."""
        if self.new:
            return
        recorded = _recorded(self.ctx.config, self.ctx.name)
        said = _gone(recorded, self.ctx.name, self.ctx.backend)
        if said:
            raise PullbackError(said)
        if recorded.get("snapshots"):
            # the copy: section names another store now (an outside walk moved it and
            # was refused with the old store's count): a new copy, recorded anew
            self.ctx.log.info("the copy moved to %s: a new copy", self.ctx.backend.repository())

    def _local_size(self) -> int | None:
        path = local_path(self.ctx.backend.repository())
        return self.ctx.backend.size() if path is not None and path.exists() else None

    def _drill(self) -> None:
        """The restore drill against the copy, when asked for or due."""
        due = self.result.made or copy_drill_due(
            self.ctx.config, self.ctx.host, utc_now(), self.result.location
        )
        if not (due if self.verify is None else self.verify):
            return
        config = self.ctx.config
        scratch = config.scratch_dir() / "copy"  # a maintain's drill may run beside it
        maintenance = dataclasses.replace(config.maintenance, scratch_dir=scratch)
        ctx = dataclasses.replace(
            self.ctx, config=dataclasses.replace(config, maintenance=maintenance)
        )
        self.result.drill = drill(ctx)
        if self.result.drill.failed:
            self.result.status = Status.FAILED
            self.result.problems.append(f"drill of the copy: {self.result.drill.summary}")


def location_id(repository: str) -> str:
    """Names a copy's store in status.json without saying where it is (a location may
    hold credentials): the first 16 hex digits of the sha256 of ``repository``."""
    return hashlib.sha256(repository.encode("utf-8", "surrogateescape")).hexdigest()[:16]


def store_of(backend: Backend) -> str | None:
    """Which store ``backend``'s repository is (:func:`location_id` of its location),
    None when its location cannot be read (a location file unreadable for one run is
    not another store: its record must not be taken for a moved copy's)."""
    try:
        return location_id(backend.location().shown)
    except BackendError:
        return None


def gone(config: ServerConfig, host: str, backend: Backend) -> str | None:
    """Why the missing copy ``backend`` of ``host`` must not be made anew: status.json
    says the copy in that store held snapshots (an off-site disk not mounted, a store
    emptied: making it anew would copy the whole history again, past the copy's own
    retention, and hide the loss). None when it never held any, or the record is of
    another store (the copy moved)."""
    return _gone(_recorded(config, host), host, backend)


def _gone(recorded: dict, host: str, backend: Backend) -> str | None:
    """:func:`gone`, given the host's copy record ``recorded``."""
    if not recorded.get("snapshots"):
        return None
    if status_file.other_store(recorded, store_of(backend)):
        return None
    repository = backend.repository()
    return (
        f"the copy {repository} is gone, yet it held {recorded.get('snapshots')} "
        f"snapshot(s) (newest {recorded.get('newest')}): is its disk mounted, its store "
        f"reachable? To start a new copy there: pullback-server copy --host {host} --new"
    )


def _recorded(config: ServerConfig, host: str) -> dict:
    """The host's copy record in status.json ({} when none)."""
    entry = status_file.load_status(config.state_dir)["hosts"].get(host) or {}
    found = entry.get("copy")
    return found if isinstance(found, dict) else {}


def copy_drill_due(
    config: ServerConfig, host: HostConfig, now: dt.datetime, location: str | None = None
) -> bool:
    """Whether the copy of ``host`` (in the store ``location``, :func:`location_id`) is
    due a drill: ``copy.verify_every`` after the last one of that store, at once for a
    store never drilled (another than the one recorded: an outside walk saw a new copy
    shown "drilled 15m ago", the old store's drill), and on every run after a failed
    one."""
    recorded = _recorded(config, host.name)
    if location is not None and status_file.other_store(recorded, location):
        return True
    last = recorded.get("verify_attempt")
    if not last or recorded.get("verify_result") == Status.FAILED:
        return True  # never drilled, or the last drill failed: until one passes
    every = config.backend.copy.verify_every if config.backend.copy else 0.0
    return (now - parse_iso(last)).total_seconds() >= every


def copy(
    config: ServerConfig,
    names: list[str] | None = None,
    verify: bool | None = None,
    new: bool = False,
) -> tuple[int, list[CopyResult]]:
    """Copy the hosts' new snapshots into their copies. Returns (exit code, results).
    Raises PullbackError when no copy is configured, LockBusy when a copy runs."""
    if config.backend.copy is None:
        raise PullbackError(
            f"{config.path} has no copy: section: nowhere to copy to (docs/disaster-recovery.md)"
        )
    hosts = config.select_hosts(names)
    lock = FileLock(config.lock_dir / COPY_LOCK, purpose="pullback-server copy")
    with lock.acquire(), SignalGuard():
        results = for_each_host(
            config, hosts, lambda ctx: HostCopy(ctx, verify, new).run(), Role.COPY
        )
        status_file.record_copies(config.state_dir, results)
    failed = [r for r in results if r.is_problem]
    return (EXIT_FAILED if failed else EXIT_OK), results


def command(config: ServerConfig, args: argparse.Namespace) -> int:
    """``pullback-server copy``: copy, then print a line per host (or JSON)."""
    from .outputs import publish, record_problems

    code, results = copy(config, args.host, args.verify, args.new)
    _, unwritten = publish(config)
    record_problems(config, unwritten, "copy")
    code = code or (EXIT_FAILED if unwritten else EXIT_OK)
    if args.json:
        print_json({"exit_code": code, "hosts": results, "not_written": unwritten})
        return code
    for result in results:
        drilled = f"; drill: {result.drill.summary}" if result.drill else ""
        print(f"{result.host}: {result.status}: {result.reason}{drilled}")
    return code
