"""``pullback-server maintain``: per host, forget by the retention policy, prune, check a
rotating part of the data, and run the restore drill when it is due.

It shares the pull's instance lock (waiting ``maintenance.wait_for_pull`` for a running
pull), so the two never work on a repository at the same time.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from ..common.cli import print_json
from ..common.clock import FUTURE_TOLERANCE, iso, parse_iso, utc_now
from ..common.errors import EXIT_FAILED, EXIT_OK, Interrupted, PullbackError
from ..common.fsutil import atomic_write
from ..common.log import get_logger
from ..common.notify import Notifier
from ..common.outcome import Status
from ..common.signals import SignalGuard, refuse_if_stopping
from ..common.units import human_size
from . import guard, status_file
from .backends import ForgetResult, RepositoryMissing, Role, Snapshot
from .config import HostConfig, ServerConfig
from .copy_identity import primary_of, refuse_the_primary
from .drill import DrillResult, drill
from .host import Deadline, HostContext, for_each_host
from .missing import missing_failure

log = get_logger("maintain")
ROTATION_FILE = "maintenance.json"
ROLL_BACK = "docs/scaling.md, *Rolling a borg repository back*"
"""Where the administrator reads how to undo deletions made through a key that can write
the repository (named in the words of a tamper hold)."""
TAMPERED = "tampered"
"""The ``kind`` of a hold made because snapshots vanished, appeared in the past or were
rewritten: nothing of the repository is compacted (pruned) while it lasts."""


class ForgetWaits(PullbackError):
    """The guard cannot judge yet (only partial snapshots are new): forget does not run
    this time, and that is no failure."""


@dataclass
class Step:
    name: str
    ok: bool
    detail: str


@dataclass
class MaintainResult:
    host: str
    status: Status = Status.OK  # ok | failed | skipped
    steps: list[Step] = field(default_factory=list)
    repository_size: int | None = None
    forgotten: int = 0
    drill: DrillResult | None = None
    duration: float = 0.0
    hold: dict | None = None
    """The ransomware guard's hold when this run made one: ``since``, ``snapshot``,
    ``older``, ``reason`` (kept in status.json until ``release``)."""
    judged: str | None = None
    """The snapshot the guard found normal: the next maintenance compares against it."""
    scope: str = ""
    """``""``: the host's repository; ``"copy"``: its second copy (``copy.retention``)."""
    seen: dict | None = None
    """The snapshots the guard saw, less those forgotten (:func:`.guard.seen`), recorded
    as ``guard_seen`` for the next maintenance to compare; ``{}``: drop the record (the
    guard is off); None: keep the one recorded."""
    keeps_data: bool = False
    """A tamper hold is on this host: nothing of its repository may be pruned (compacted),
    or the deleted snapshots' data goes for good."""

    @property
    def label(self) -> str:
        """``web1``, or ``web1 (copy)`` for the maintenance of its second copy."""
        return f"{self.host} ({self.scope})" if self.scope else self.host

    @property
    def reason(self) -> str:
        failed = [s for s in self.steps if not s.ok]
        return "; ".join(f"{s.name}: {s.detail}" for s in failed) or "; ".join(
            f"{s.name}: {s.detail}" for s in self.steps[-1:]
        )

    @property
    def is_problem(self) -> bool:
        return self.status == Status.FAILED


def _rotation(config: ServerConfig) -> dict:
    try:
        return json.loads((config.state_dir / ROTATION_FILE).read_text())
    except (FileNotFoundError, ValueError):
        return {}


def drill_due(config: ServerConfig, host: HostConfig, now: dt.datetime) -> bool:
    entry = status_file.load_status(config.state_dir)["hosts"].get(host.name, {})
    last = entry.get("last_verified_attempt")
    if not last:
        return True
    then = parse_iso(last)
    return (now - then).total_seconds() >= host.verify_every


class HostMaintenance:
    """Maintain one host's repository, step by step; :meth:`run` never raises (except
    Interrupted): each step's outcome is in the result."""

    def __init__(
        self,
        ctx: HostContext,
        part: int,
        verify: bool | None = None,
        share: GroupShare | None = None,
        scope: str = "",
        *,
        limit: Deadline | None = None,
    ):
        self.ctx = ctx
        self.part = part
        """The part of the data ``check`` reads this time (1 .. check_subsets)."""
        self.verify = verify
        """Run the drill (True), skip it (False), or run it when due (None)."""
        self.share = share
        """The host's place in its group (None: the repository is its own)."""
        self.limit = limit
        """The repository's ``maintenance.timeout`` (None: none)."""
        self._stopped = False
        """A step was cut or not run for ``maintenance.timeout``."""
        self.result = MaintainResult(ctx.name, scope=scope)
        self._listed: list[Snapshot] | None = None
        self._watching = False
        """The guard compared the snapshots with the last record (it records them anew)."""
        self._removed: list[str] | None = None
        """What forget removed (None: it did not run, or failed)."""

    def run(self) -> MaintainResult:
        started = time.monotonic()
        try:
            if self.open_repository():
                self._steps()
        finally:
            self.result.duration = time.monotonic() - started
        if self._stopped:  # (past it between two steps, what was not run was only skipped)
            self.result.status = Status.FAILED
        return self.result

    def _steps(self) -> None:
        backend = self.ctx.backend
        self.step("locks", lambda: backend.unlock() or "no stale lock")
        maintenance = self.ctx.config.maintenance
        self._forget_steps()
        if self.share is not None and not self.share.last:
            self.skipped("prune", f"group {self.share.group}: its last host prunes and checks")
            self.drill()
            return
        forgotten = self.result.forgotten + (self.share.forgotten if self.share else 0)
        kept = self.result.keeps_data or (self.share is not None and self.share.keeps_data)
        if forgotten and kept:
            self.skipped("prune", "a tamper hold keeps every byte of the repository (see guard)")
        elif forgotten and maintenance.prune:
            self.step("prune", self.prune)
        elif forgotten:
            self.skipped("prune", "maintenance.prune is false: the space stays taken")
        if maintenance.check:
            self.step("check", self.check)
        else:
            self.skipped("check", "maintenance.check is false")
        self.step("size", self.size)
        self.drill()

    def _forget_steps(self) -> None:
        """The guard and forget where this machine forgets (then what it saw is recorded
        for the next comparison), or the check that the newest snapshot is still there
        where another machine forgets."""
        copy = self.ctx.config.backend.copy
        if self.result.scope == "copy" and copy is not None and copy.retention is None:
            self.skipped("forget", "the copy keeps every snapshot (it has no copy.retention)")
            return
        if not self.ctx.config.maintenance.forget:
            self.skipped("forget", "maintenance.forget is false (another machine forgets)")
            if not self.result.scope and self._recorded_newest():
                self.step("history", self.history)
        elif not self.step("guard", self.guard):
            self.skipped("forget", "the ransomware guard did not clear it (see guard)")
        else:
            self.step("forget", self.forget)
        if self._watching and any(s.name == "guard" and s.ok for s in self.result.steps):
            self.result.seen = self._seen_after_forget()
            if self.result.seen is not None:
                self._record_seen(self.result.seen)

    def _record_forgetting(self, plan: ForgetResult) -> None:
        """Before forget removes anything: record the snapshots as they will be once the
        removals it named (``plan``: restic's own ``--dry-run``, borg's rules) are made,
        those named as forgotten. A run stopped during forget (a SIGTERM, a crash) then
        leaves no record the next guard reads as snapshots deleted behind its back; one
        that removed none of them yet finds them named as forgotten, not as new ones."""
        if not self._watching:
            return
        gone = set(plan.removed)
        kept = [s for s in self._snapshots() if s.id not in gone]
        self._record_seen(guard.seen(kept, utc_now(), plan.removed))

    def _record_seen(self, seen: dict) -> None:
        """Save ``seen`` as the host's ``guard_seen`` now (:func:`.status_file.
        record_guard_seen`); the end of the run saves it again. A failure is logged:
        the end of the run tries again."""
        try:
            status_file.record_guard_seen(self.ctx.config.state_dir, self.ctx.name, seen)
        except Interrupted:
            raise
        except (PullbackError, OSError) as exc:
            self.ctx.log.warning("could not record what the guard saw: %s", exc)

    def open_repository(self) -> bool:
        """True when there is a repository to maintain. A missing one is a skip ("none
        yet") only where it can be a host not pulled yet (:meth:`_missing_fails`)."""
        try:
            self.ctx.backend.prepare(create=False)
            if self.result.scope == "copy":  # (its forget would be the primary's)
                refuse_the_primary(self.ctx.backend, primary_of(self.ctx))
            return True
        except RepositoryMissing:
            failure = self._missing_fails()
            if failure:
                self.result.status = Status.FAILED
                self.result.steps.append(Step("repository", False, failure))
                return False
            self.result.status = Status.SKIPPED
            self.result.steps.append(Step("repository", True, "none yet: nothing to maintain"))
        except Interrupted:
            raise
        except PullbackError as exc:
            refuse_if_stopping()
            self.result.status = Status.FAILED
            self.result.steps.append(Step("repository", False, self._cut() or str(exc)))
        return False

    def _missing_fails(self) -> str | None:
        """Why the missing repository is a failure, in words, or None when it can be a
        host not pulled yet (:func:`.missing.missing_failure`; a copy: when
        status.json records a copy of the host)."""
        where = self.ctx.backend.repository()
        if self.result.scope == "copy":
            stored = self._recorded_newest()
            return (
                f"no repository at {where}, yet snapshots of this host were stored (newest "
                f"{stored}): is its location right?"
                if stored
                else None
            )
        return missing_failure(self.ctx.config, self.ctx.host, where, self.ctx.cancel)

    def _cut(self) -> str | None:
        """Words for a maintenance stopped at ``maintenance.timeout``, or None; once it
        said them, the maintenance fails (:attr:`_stopped`)."""
        if self.limit is None or not self.limit.passed:
            return None
        self._stopped = True
        return f"the maintenance was {self.limit.words}"

    def step(self, name: str, action: Callable[[], str]) -> bool:
        """Run one step; record and log its outcome. Returns True when it succeeded; a
        step after ``maintenance.timeout`` passed is not run (the run failed)."""
        cut = self._cut()
        if cut:
            self.skipped(name, cut)
            return False
        try:
            detail = action()
        except Interrupted:
            raise
        except ForgetWaits as exc:  # not a failure: nothing is judged or forgotten yet
            self.result.steps.append(Step(name, True, str(exc)))
            self.ctx.log.info("%s: %s", name, exc)
            return False
        except PullbackError as exc:
            refuse_if_stopping()  # a tool cut by a stop by hand is no failed step
            said = self._cut() or str(exc)
            self.result.steps.append(Step(name, False, said))
            self.result.status = Status.FAILED
            self.ctx.log.error("%s failed: %s", name, said)
            return False
        self.result.steps.append(Step(name, True, detail))
        self.ctx.log.info("%s: %s", name, detail)
        return True

    def skipped(self, name: str, why: str) -> None:
        """Record a step the configuration leaves out."""
        self.result.steps.append(Step(name, True, f"not run: {why}"))
        self.ctx.log.info("%s: not run: %s", name, why)

    def guard(self) -> str:
        """The ransomware guard (:mod:`.guard`): raises PullbackError to hold forget when
        a hold is recorded and not released (even with the guard switched off since), when
        the snapshots changed behind this machine's back (:meth:`_tamper_check`), when
        a snapshot is dated in the future, or when the newest complete snapshot changed too
        much from the last one judged normal (one comparison covers every day since the
        last maintenance); returns what it found otherwise."""
        limits = self.ctx.config.maintenance.guard
        entry = status_file.guard_entry(self._guard_status(), self.ctx.name, self.result.scope)
        hold = entry.get("guard_hold")
        if isinstance(hold, dict):
            self.result.keeps_data = hold.get("kind") == TAMPERED
            raise PullbackError(
                f"forget held since {hold.get('since')}: {hold.get('reason')}; release it "
                f"with: {self._release_command}"
            )
        if not limits.enabled:
            self.result.seen = {}  # a record kept while off would be stale when back on
            return "not run: maintenance.guard.enabled is false"
        snapshots = self._snapshots()
        self._tamper_check(entry, snapshots)
        ahead = guard.dated_ahead(snapshots, utc_now() + FUTURE_TOLERANCE)
        if ahead is not None:
            self._hold(
                ahead.id,
                None,
                f"snapshot {ahead.id} is dated {ahead.time:%Y-%m-%d %H:%M} UTC, in the "
                "future (pullback's pulls never store one): inspect it and remove it "
                f"({self._remove_words(ahead.id)}) before releasing, or the next maintain "
                "holds again",
            )
        found = guard.baseline(snapshots, entry.get("guard_judged"))
        waiting = guard.partial_since(snapshots)
        if waiting:  # a partial one is not judged, and forget must not outrun the guard
            raise ForgetWaits(
                f"{len(waiting)} partial snapshot(s) since the newest complete one "
                f"({', '.join(s.id for s in waiting[-3:])}): forget waits for a complete "
                "snapshot the guard can judge"
            )
        if found is None:
            return "no new complete snapshot to compare"
        older, newer = found
        change = self.ctx.backend.changes(older, newer)
        reason = guard.judge(change, limits)
        if reason is not None:
            self._hold(newer.id, older.id, f"snapshot {newer.id} against {older.id}: {reason}")
        self.result.judged = newer.id
        return (
            f"from {older.id} to {newer.id}: {change.changed_share:.0%} of the entries and "
            f"{change.rewritten_share:.0%} of the data changed or removed, "
            f"{change.shrink:.0%} smaller: normal{guard.unjudged(change, limits)}"
        )

    def _tamper_check(self, entry: dict, snapshots: list[Snapshot]) -> None:
        """Hold forget, prune and compact (a hold of kind :data:`TAMPERED`) when the
        snapshots changed since the last maintenance in a way this machine did not make
        (:func:`.guard.tampered`). Raises PullbackError then. The primary repository
        only: a copy is a mirror (borg) or gets older snapshots copied (restic)."""
        if self.result.scope:
            return
        self._watching = True
        found = guard.tampered(entry.get("guard_seen"), snapshots)
        if found is None:
            return
        record = entry.get("guard_seen") or {}
        self.result.keeps_data = True
        self._hold(
            entry.get("guard_judged"),
            None,
            f"the snapshots changed behind this machine's back since its maintenance of "
            f"{record.get('at')}: {found}. Something that can write the repository deleted, "
            "renamed or rewrote them (a pull server's append-only borg key can), they "
            "were removed by hand, or another machine forgets too (only one may). Nothing "
            "is forgotten or compacted while this holds: borg keeps the deleted archives' "
            "data until a compact, and the repository can "
            f"be rolled back ({ROLL_BACK})",
            TAMPERED,
        )

    def _seen_after_forget(self) -> dict | None:
        """What to record for the next comparison: the snapshots the guard listed, less
        those forget removed; listed again when forget failed part way (None: keep the
        record, when that fails too, so that nothing is missed)."""
        listed = self._snapshots()
        if self._removed is None and any(s.name == "forget" for s in self.result.steps):
            try:
                listed = self.ctx.backend.snapshots()
            except Interrupted:
                raise
            except PullbackError:
                return None  # keep what was recorded ({} would drop it)
        gone = set(self._removed or ())
        kept = [s for s in listed if s.id not in gone]
        return guard.seen(kept, utc_now(), self._removed)

    def history(self) -> str:
        """Where another machine forgets (``forget: false``): the newest snapshot this
        server's pulls recorded must still be listed (a retention policy never forgets
        the newest one). Raises PullbackError in words when it is gone: a drill of an
        older snapshot would read "ok" for a history cut short."""
        recorded = self._recorded_newest() or ""
        listed = self._snapshots()
        newest = max((s.time for s in listed), default=None)
        if newest is not None and iso(newest) >= recorded:
            return f"the newest snapshot the pulls recorded ({recorded}) is there"
        entry = status_file.load_status(self.ctx.config.state_dir)["hosts"].get(self.ctx.name, {})
        named = entry.get("snapshot_id") or entry.get("archive") or "?"
        now = f"the newest now is of {iso(newest)}" if newest else "no snapshot is left"
        raise PullbackError(
            f"the newest snapshot this server stored ({named}, of {recorded}) is gone from "
            f"the repository ({now}): it was deleted by another hand (a retention policy "
            "never forgets the newest one), through a key that can write the repository "
            "(a borg --append-only key can). Do not compact it away: the repository can "
            f"be rolled back ({ROLL_BACK})"
        )

    def _remove_words(self, snapshot: str) -> str:
        """The command that removes one snapshot by hand, in the backend's words."""
        if self.ctx.config.backend.type == "restic":
            return f"restic forget {snapshot}"
        return (
            f"borg delete ::{snapshot}, with BORG_REPO={self.ctx.backend.repository()}, "
            "and BORG_RSH and BORG_PASSCOMMAND exported as docs/restore.md shows"
        )

    def _list_words(self) -> str:
        return "restic snapshots" if self.ctx.config.backend.type == "restic" else "borg list"

    def _recorded_newest(self) -> str | None:
        """The newest snapshot status.json records of this host (of its copy, for the
        copy's maintenance), or None."""
        entry = status_file.guard_entry(
            status_file.load_status(self.ctx.config.state_dir), self.ctx.name, self.result.scope
        )
        found = entry.get("newest" if self.result.scope == "copy" else "newest_snapshot")
        return found if isinstance(found, str) else None

    def _guard_status(self) -> dict:
        """The status file, where the guard's holds and baselines are. Raises
        PullbackError (forget held) when it cannot be read, or was found damaged once:
        its holds may be lost."""
        state = self.ctx.config.state_dir
        if (state / status_file.DAMAGED).exists():
            raise PullbackError(
                f"{state / status_file.DAMAGED} is there: the status file was found damaged, "
                "and the ransomware guard's holds and baselines with it; forget waits. Look "
                "at the hosts' newest snapshots (pullback-server snapshots HOST), then "
                "remove that file"
            )
        try:
            return status_file.read_status(state)
        except (OSError, ValueError) as exc:
            raise PullbackError(
                f"cannot read {state / status_file.STATUS_FILE} (the ransomware guard's "
                f"holds and baselines): {exc}; forget waits"
            ) from None

    def _snapshots(self) -> list[Snapshot]:
        """The host's snapshots before forget, listed once for the guard and forget (a
        restic process and its key derivation each time)."""
        if self._listed is None:
            self._listed = self.ctx.backend.snapshots()
        return self._listed

    def _hold(self, snapshot: str | None, older: str | None, reason: str, kind: str = "") -> None:
        """Record a new hold on this host (saved with the result). Raises PullbackError.
        ``snapshot``: what ``release`` takes as judged normal; ``kind``: :data:`TAMPERED`
        or "" (the snapshots' content)."""
        self.result.hold = {
            "since": iso(utc_now()),
            "snapshot": snapshot,
            "older": older,
            "reason": reason,
        }
        if kind:
            self.result.hold["kind"] = kind
        raise PullbackError(
            f"forget held: {reason}; every snapshot is kept. Once the change is understood, "
            f"release it with: {self._release_command}"
        )

    @property
    def _release_command(self) -> str:
        copy = " --copy" if self.result.scope == "copy" else ""
        return f"pullback-server release {self.ctx.name}{copy}"

    def forget(self) -> str:
        """Apply the retention policy, unless a snapshot is dated in the future: restic
        measures ``keep_within`` from the newest snapshot, and a snapshot pullback did not
        make (its pulls refuse archives dated ahead) would make it forget real history.
        Raises PullbackError then."""
        ahead = guard.dated_ahead(self._snapshots(), utc_now() + FUTURE_TOLERANCE)
        if ahead is not None:
            raise PullbackError(
                f"not run: snapshot {ahead.id} is dated {ahead.time:%Y-%m-%d %H:%M} UTC, in "
                "the future; pullback's pulls never store one, so it was added by another "
                f"hand: inspect it ({self._list_words()}) and remove it before forgetting"
            )
        outcome = self.ctx.backend.forget(self.ctx.host.retention, self._record_forgetting)
        self._removed = list(outcome.removed)
        self.result.forgotten = len(outcome.removed)
        return f"kept {len(outcome.kept)} snapshot(s), forgot {len(outcome.removed)}" + (
            f" ({', '.join(outcome.removed)})" if outcome.removed else ""
        )

    def prune(self) -> str:
        self.ctx.backend.prune()
        return "space of forgotten snapshots freed"

    def check(self) -> str:
        maintenance = self.ctx.config.maintenance
        return self.ctx.backend.check(
            self.part,
            maintenance.check_subsets,
            maintenance.borg_check_duration,
            maintenance.check_options,
        )

    def size(self) -> str:
        self.result.repository_size = self.ctx.backend.size()
        return human_size(self.result.repository_size)

    def drill(self) -> None:
        """The restore drill, when asked for or due (a copy's: by ``copy``)."""
        if self.result.scope == "copy":
            self.skipped("drill", "the copy is drilled by pullback-server copy")
            return
        due = drill_due(self.ctx.config, self.ctx.host, utc_now())
        if not (due if self.verify is None else self.verify):
            self.result.steps.append(Step("drill", True, "not due yet"))
            return
        if cut := self._cut():
            self.skipped("drill", cut)
            return
        self.result.drill = drill(self.ctx)
        failed = self.result.drill.failed  # (nothing to drill yet is a note)
        said = self._cut() or self.result.drill.summary
        self.result.steps.append(Step("drill", not failed, said))
        if failed:
            self.result.status = Status.FAILED


@dataclass
class GroupShare:
    """A host's place in the group whose repository it shares: the group's hosts are
    maintained one after another, each forgetting its own snapshots; the last one prunes
    (when any of them forgot), checks and measures the repository once."""

    group: str
    last: bool
    forgotten: int = 0
    """Snapshots the group's hosts before this one forgot in this run."""
    keeps_data: bool = False
    """A host of the group before this one is under a tamper hold: nothing is pruned."""


def _units(hosts: list[HostConfig]) -> list[list[HostConfig]]:
    """The hosts as units of work: a host alone, or every (selected) host of a group."""
    units: dict[str, list[HostConfig]] = {}
    for host in hosts:
        units.setdefault(f"group:{host.group}" if host.group else host.name, []).append(host)
    return list(units.values())


@dataclass(frozen=True)
class Pass:
    """One walk of maintenance over the hosts: their repositories (through the
    maintenance endpoint), or their second copies (by the copies' own retention)."""

    role: Role
    scope: str
    """``""`` or ``"copy"`` (:attr:`MaintainResult.scope`)."""
    verify: bool | None

    def key(self, host: HostConfig) -> str:
        """The name the repository's check rotation is kept under."""
        return f"{self.scope}:{host.repository_key}" if self.scope else host.repository_key


def _maintain_unit(
    ctx: HostContext, members: list[HostConfig], part: int, walk: Pass
) -> list[MaintainResult]:
    """Maintain a unit of :func:`_units` (``ctx`` is its first host's), within
    ``maintenance.timeout``."""
    with Deadline(ctx.cancel, ctx.config.maintenance.timeout, "maintenance.timeout") as limit:
        return _maintain_members(ctx, members, part, walk, limit)


def _maintain_members(
    ctx: HostContext, members: list[HostConfig], part: int, walk: Pass, limit: Deadline
) -> list[MaintainResult]:
    """:func:`_maintain_unit`'s work."""
    if ctx.host.group is None:
        return [HostMaintenance(ctx, part, walk.verify, scope=walk.scope, limit=limit).run()]
    results: list[MaintainResult] = []
    forgotten = 0
    for index, member in enumerate(members):
        here = ctx if index == 0 else HostContext.open(ctx.config, member, ctx.cancel, walk.role)
        kept = any(r.keeps_data for r in results)
        share = GroupShare(member.group or "", index == len(members) - 1, forgotten, kept)
        one = HostMaintenance(here, part, walk.verify, share, walk.scope, limit=limit)
        results.append(one.run())
        forgotten += results[-1].forgotten
    size = results[-1].repository_size  # one repository: every host shows its size
    for result in results:
        result.repository_size = size
    _share_failures(results, members[-1].group or "")
    return results


SHARED_STEPS = ("prune", "check")
"""The steps a group's last host runs for the whole repository."""


def _share_failures(results: list[MaintainResult], group: str) -> None:
    """A shared step that failed with the group's last host (damage its ``check``
    found) fails every host of the group: their snapshots are in that repository (an
    outside review saw the damage on the last host's row only)."""
    last = results[-1]
    failed = [s for s in last.steps if s.name in SHARED_STEPS and not s.ok]
    for result in results[:-1]:
        for step in failed:
            said = f"group {group}, with {last.host}: {step.detail}"
            result.steps.append(Step(step.name, False, said))
            result.status = Status.FAILED


def _rotate(
    rotation: dict,
    done: Iterable[tuple[HostConfig, MaintainResult]],
    parts: dict[str, int],
    walk: Pass,
) -> None:
    """Record the part ``check`` read of each repository checked (``parts``: by
    :meth:`Pass.key`), so the next run reads the next one."""
    for host, result in done:
        if any(s.name == "check" and s.ok for s in result.steps):
            rotation.setdefault(walk.key(host), {})["check_part"] = parts[walk.key(host)]


def _run_pass(
    config: ServerConfig, hosts: list[HostConfig], walk: Pass, rotation: dict
) -> list[MaintainResult]:
    """Maintain ``hosts`` in one :class:`Pass`, ``parallel`` units at a time."""
    parts = config.maintenance.check_subsets
    units = {unit[0].name: unit for unit in _units(hosts)}
    next_part = {
        walk.key(h): rotation.get(walk.key(h), {}).get("check_part", 0) % parts + 1 for h in hosts
    }
    done = for_each_host(
        config,
        [unit[0] for unit in units.values()],
        lambda ctx: _maintain_unit(ctx, units[ctx.name], next_part[walk.key(ctx.host)], walk),
        walk.role,
    )
    results = [result for unit in done for result in unit]
    hosts_done = [host for unit in units.values() for host in unit]
    _rotate(rotation, zip(hosts_done, results, strict=True), next_part, walk)
    return results


def _copies(config: ServerConfig, hosts: list[HostConfig]) -> list[HostConfig]:
    """The hosts as their copies' maintenance sees them (the copies' retention; without
    one a copy keeps every snapshot and is only checked and measured), or [] when there
    is no copy."""
    copy = config.backend.copy
    if copy is None:
        return []
    if copy.retention is None:
        return hosts
    return [dataclasses.replace(h, retention=copy.retention) for h in hosts]


def maintain(
    config: ServerConfig, names: list[str] | None = None, verify: bool | None = None
) -> tuple[int, list[MaintainResult]]:
    """Maintain the hosts' repositories. Returns (exit code, results)."""
    hosts = config.select_hosts(names)
    lock = config.instance_lock("pullback-server maintain")
    with lock.acquire(wait=config.maintenance.wait_for_pull), SignalGuard():
        rotation = _rotation(config)
        results = _run_pass(config, hosts, Pass(Role.MAINTAIN, "", verify), rotation)
        copies = _copies(config, hosts)
        if copies:
            results += _run_pass(config, copies, Pass(Role.COPY, "copy", False), rotation)
        config.state_dir.mkdir(parents=True, exist_ok=True)
        atomic_write(config.state_dir / ROTATION_FILE, json.dumps(rotation, indent=2) + "\n")
        status_file.record_maintenance(config.state_dir, results)
    failed = [r for r in results if r.status == Status.FAILED]
    return (EXIT_FAILED if failed else EXIT_OK), results


def command(config: ServerConfig, args: argparse.Namespace) -> int:
    """``pullback-server maintain``: maintain, then report."""
    from .outputs import finish_maintenance

    notifier = Notifier(config.notify, "maintenance")
    notifier.start()
    code, results = maintain(config, args.host, args.verify)
    unwritten = finish_maintenance(config, results, notifier, show=not args.json)
    code = code or (EXIT_FAILED if unwritten else EXIT_OK)
    if args.json:
        print_json({"exit_code": code, "hosts": results, "not_written": unwritten})
    return code
