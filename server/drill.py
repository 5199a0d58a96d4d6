"""The restore drill (``pullback-server verify``): restore a snapshot into scratch space,
prove every file byte for byte against the archive's MANIFEST.sha256, and load every
database dump into a throwaway engine (:mod:`.db_proof`)."""

from __future__ import annotations

import hashlib
import logging
import os
import random
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from errno import ENOSPC
from pathlib import Path

from ..common.archive import listed, tree_list
from ..common.archive.manifest import MANIFEST_NAME
from ..common.archive.tree_list import TREE_NAME
from ..common.clock import iso
from ..common.errors import Interrupted, PullbackError, UsageError
from ..common.fsutil import free_bytes
from ..common.signals import refuse_if_stopping
from ..common.text import counted, printable
from ..common.trees import remove_tree
from ..common.units import human_size
from . import status_file
from .backends import RepositoryMissing, Role, Snapshot, named, plausible
from .db_proof import DatabaseProof, ProofSettings, ProofState, prove_databases
from .host import Deadline, HostContext
from .missing import missing_failure

CHUNK = 1 << 20
SHOWN = 20
NAMED = 1000
"""Files a drill's problems name; the rest are counted (its memory and words bounded)."""


@dataclass(frozen=True)
class DrillChoice:
    """Which snapshot a drill restores. ``snapshot`` names one (an id prefix or an archive
    stamp, as ``restore --snapshot`` takes it): that one, whatever failed before. Else a
    snapshot whose drill failed before comes first, while it is listed; else a random one
    (``random``) or the newest."""

    snapshot: str | None = None
    random: bool = False


@dataclass
class DrillResult:
    host: str
    ok: bool = False
    snapshot_id: str | None = None
    snapshot_time: str | None = None
    files_checked: int = 0
    bytes_checked: int = 0
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    """What a drill that found nothing to drill yet (``waiting``) says instead."""
    databases: list[DatabaseProof] = field(default_factory=list)
    """A proof per database dump of the snapshot (none when it has none)."""
    duration: float = 0.0
    failed_before: str | None = None
    """The snapshot whose drill failed before (status.json's ``verify_failed_snapshot``):
    drilled again instead of the newest while it is listed."""
    failed_before_gone: bool = False
    """That snapshot is no longer in the repository (forgotten, or the repository
    rebuilt): its failure is over."""
    listed: frozenset[str] | None = None
    """The ids of the snapshots the repository listed (None: not asked): a recorded
    failure of one no longer listed is over."""
    waiting: bool = False
    """Nothing to drill yet: the host never had a pullback snapshot (before its first
    pull; it may hold snapshots adopted from backup-suite, which hold no manifest). A
    note, not a failure; a host whose pullback snapshots are gone fails instead."""

    @property
    def failed(self) -> bool:
        """The drill failed: it neither passed nor found nothing to drill yet."""
        return not self.ok and not self.waiting

    @property
    def proven(self) -> list[DatabaseProof]:
        return [p for p in self.databases if p.state == ProofState.PROVEN]

    @property
    def warnings(self) -> list[str]:
        """Dumps the drill could not try here (no engine, rights it does not grant)."""
        return [p.summary for p in self.databases if p.state == ProofState.UNPROVEN]

    @property
    def databases_proven(self) -> bool:
        """Every dump loaded: true only when there was at least one and none failed."""
        return bool(self.databases) and len(self.proven) == len(self.databases)

    @property
    def summary(self) -> str:
        if self.waiting:
            return "; ".join(self.notes)
        if self.ok:
            again = " (its earlier failed drill is over)" if self._again else ""
            return (
                f"snapshot {self.snapshot_id}{again} restored and all {self.files_checked} files "
                f"({human_size(self.bytes_checked)}) match the manifest" + self._databases_said()
            )
        shown = "; ".join(self.problems[:SHOWN])
        more = f" (and {len(self.problems) - SHOWN} more)" if len(self.problems) > SHOWN else ""
        what = f"snapshot {self.snapshot_id}" if self.snapshot_id else "the drill"
        return f"{what} FAILED: {shown}{more}"

    @property
    def _again(self) -> bool:
        """This drill was of the snapshot whose drill had failed."""
        return self.failed_before is not None and self.failed_before == self.snapshot_id

    def _databases_said(self) -> str:
        said = ""
        if self.proven:
            loaded = "; ".join(p.summary for p in self.proven[:SHOWN])
            more = f"; and {len(self.proven) - SHOWN} more" if len(self.proven) > SHOWN else ""
            said += f"; databases proven by loading them: {loaded}{more}"
        if self.warnings:
            said += "; not proven: " + "; ".join(self.warnings[:SHOWN])
        return said


class CheckStopped(Exception):
    """The host's time limit passed while the tree was being checked."""


def _stop_if_set(cancel: threading.Event | None) -> None:
    """Raises CheckStopped once ``cancel`` is set (the host's deadline passed)."""
    if cancel is not None and cancel.is_set():
        raise CheckStopped


def _sha256(path: str, cancel: threading.Event | None = None) -> tuple[str, int]:
    """The hex sha256 of the file at ``path`` and how many bytes it read. Raises
    CheckStopped once ``cancel`` is set (looked at every :data:`CHUNK`)."""
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as handle:
        while chunk := handle.read(CHUNK):
            _stop_if_set(cancel)
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


def check_tree(root: Path, result: DrillResult, cancel: threading.Event | None = None) -> None:
    """Compare every regular file below ``root/services`` with ``root/MANIFEST.sha256``
    (a name it lists outside ``services/`` is a problem too), each name at most once, in
    the manifest's order (:mod:`.listed`: the manifest is streamed, not held), then the
    directories, symlinks and FIFOs with ``root/TREE.list``. What differs is in
    ``result.problems``, each name escaped and cut, the first :data:`NAMED` of them by
    name and the rest counted on one line (a snapshot's names are its client's words);
    nothing is raised. Stops, saying so, once ``cancel`` is set (the host's
    ``host_timeout``: hashing is bounded by ``max_unpacked_size``, not by time)."""
    manifest = root / MANIFEST_NAME
    if not manifest.is_file():
        result.problems.append(f"{MANIFEST_NAME} is missing from the snapshot")
        return
    found: list[str] = []
    more = 0
    try:
        for problem in _tree_problems(root, manifest, result, cancel):
            if len(found) < NAMED:
                found.append(problem)
            else:
                more += 1
    except (ValueError, OSError) as exc:
        found.append(printable(str(exc), 300))
    except CheckStopped:
        found.append(f"stopped after {result.files_checked} files, before all were checked")
    result.problems += found
    if more:
        result.problems.append(
            f"and {more} more differ from the {MANIFEST_NAME} or the {TREE_NAME}"
        )


def _tree_problems(
    root: Path, manifest: Path, result: DrillResult, cancel: threading.Event | None
) -> Iterator[str]:
    """What differs between the tree below ``root/services`` and ``manifest``: each
    pair's problem, then each name listed outside ``services/`` (a snapshot holds none:
    its manifest is not the tree's). Raises ValueError, OSError as :func:`listed.pairs`,
    CheckStopped once ``cancel`` is set."""
    for pair in listed.pairs(root, manifest, "services"):
        _stop_if_set(cancel)
        problem = _check_pair(pair, result, cancel)
        if problem:
            yield problem
    for name in listed.outside(manifest, "services"):
        yield f"listed outside services/: {printable(name, 200)}"
    yield from _other_entry_problems(root, cancel)


def _other_entry_problems(root: Path, cancel: threading.Event | None) -> Iterator[str]:
    """What differs between the directories, symlinks and FIFOs below ``root/services``
    and the snapshot's tree_list.TREE_NAME: one the list lacks, one of another kind, one
    missing (a backend that lost a symlink). Nothing for a snapshot stored without the
    list (before 0.3.0). Holds the list (bounded by the host's ``max_entries``); raises
    ValueError, OSError, CheckStopped once ``cancel`` is set."""
    try:
        read = tree_list.read_beside(root, "services")
    except (tree_list.NotAList, tree_list.OtherManifests) as exc:
        yield str(exc)
        return
    if read is None:
        return
    known = read.entries
    for name, kind in listed.others(root, "services"):
        _stop_if_set(cancel)
        was = known.pop(os.fsencode(name), None)
        if was is None:
            yield f"not in {TREE_NAME}: {printable(name, 200)}"
        elif was != kind:
            yield f"changed kind: {printable(name, 200)}"
    for raw in known:
        yield f"missing: {printable(os.fsdecode(raw), 200)}"


def _check_pair(
    pair: listed.Pair, result: DrillResult, cancel: threading.Event | None = None
) -> str | None:
    """One name of the tree or the manifest: what is wrong with it, or None when it
    matches (counted in ``result``). The manifest lists regular files only: a symlink or
    a FIFO that was backed up is no unlisted file (an outside test had every drill of a
    tree with a FIFO fail)."""
    name = printable(pair.name, 200)
    if pair.digest is None:
        return f"not in the manifest: {name}" if pair.regular else None
    if not pair.regular:
        return f"missing: {name}"
    digest, size = _sha256(pair.path, cancel)
    if digest != pair.digest:
        return f"changed: {name}"
    result.files_checked += 1
    result.bytes_checked += size
    return None


def drill(ctx: HostContext, choice: DrillChoice | None = None) -> DrillResult:
    """Restore the snapshot ``choice`` picks (default: a snapshot whose drill failed
    before, else the newest) and check it, within the host's ``host_timeout`` (as its
    pull): past it, restores and engine commands stop and the drill says so. Raises
    UsageError when ``choice.snapshot`` names no single snapshot of the host (nothing was
    restored); any other problem is in the result, never raised."""
    with Deadline(ctx.cancel, ctx.config.host_timeout, "host_timeout") as limit:
        result = _drill(ctx, choice or DrillChoice())
    if limit.passed:
        result.problems.append(f"the drill was {limit.words}")
        result.ok = result.waiting = False
    ctx.log.log(logging.ERROR if result.failed else logging.INFO, "%s", result.summary)
    return result


def _restore_and_check(
    ctx: HostContext, snapshot: Snapshot, scratch: Path, result: DrillResult
) -> None:
    """Restore ``snapshot`` into ``scratch``, the manifest first, on its own (if the data
    turns out damaged, it still names every file that should be there: borg stops
    extracting at the first bad chunk), and check the tree (:func:`check_tree`); what
    the restore reported is in ``result.problems``. Raises Interrupted."""
    for includes in ([MANIFEST_NAME, TREE_NAME], ["services"]):
        try:
            ctx.backend.restore(snapshot, scratch, includes)
        except Interrupted:
            raise
        except PullbackError as exc:
            refuse_if_stopping()  # cut by a stop by hand: no failed drill
            result.problems.append(f"the restore reported: {exc}")
    if result.problems and not (scratch / MANIFEST_NAME).is_file():
        # (not "missing from the snapshot": the restore could not read it)
        result.problems.append(f"{MANIFEST_NAME} could not be restored (above)")
    else:
        check_tree(scratch, result, ctx.cancel)


def _provable(ctx: HostContext, listed: list[Snapshot], result: DrillResult) -> list[Snapshot]:
    """The snapshots a drill can prove (pullback's: adopted ones hold no manifest). When
    there is none, ``result`` says why: nothing to drill yet (``waiting``) for a host
    that never had one, a problem for a host whose pullback snapshots are gone."""
    snapshots = [s for s in listed if not s.adopted]
    if snapshots:
        return snapshots
    adopted = len(listed)
    held = _pullback_held(ctx)
    if held is None:
        hold = counted(adopted, "adopted from backup-suite holds", "adopted from backup-suite hold")
        why = f" ({hold} no manifest)" if adopted else ""
        result.waiting = True
        result.notes.append(f"nothing to drill yet: no pullback snapshot{why}")
    else:
        kept = f" (it holds {counted(adopted, 'adopted snapshot')} only)" if adopted else ""
        result.problems.append(
            f"no pullback snapshot to restore, though {held}{kept}: were they forgotten, "
            "or is this another repository? see pullback-server snapshots "
            f"{ctx.host.name} and status --json"
        )
    return []


def _pullback_held(ctx: HostContext) -> str | None:
    """What status.json says of a pullback snapshot the host had (stored by a pull, or
    proven by a drill), in words; None when it never had one."""
    entry = status_file.load_status(ctx.config.state_dir)["hosts"].get(ctx.host.name, {})
    stored = entry.get("snapshot_id") or entry.get("archive")
    proven = entry.get("last_verified_snapshot")
    if stored:
        when = printable(entry.get("last_success") or "?", 40)
        return f"snapshot {printable(stored, 80)} was stored ({when})"
    if proven:
        return f"snapshot {printable(proven, 80)} passed a drill before"
    return None


def _named(listed: list[Snapshot], wanted: str, host: str) -> Snapshot:
    """The one snapshot of ``listed`` that ``wanted`` names. Raises UsageError when none
    or several do, or when it was adopted from backup-suite (it holds no manifest)."""
    matches = named(listed, wanted)
    if len(matches) != 1:
        shown = printable(wanted, 80)
        raise UsageError(
            f"no single snapshot {shown!r} of {host}; see pullback-server snapshots {host}"
        )
    if matches[0].adopted:
        raise UsageError(
            f"snapshot {matches[0].id} of {host} was adopted from backup-suite: "
            "it holds no manifest a drill could prove"
        )
    return matches[0]


def _pick(
    ctx: HostContext, snapshots: list[Snapshot], pick_random: bool, result: DrillResult
) -> Snapshot:
    """The snapshot to drill: one whose drill failed before, while it is listed (its
    failure stays a problem until a drill of it passes: a passing drill of another
    snapshot proves nothing of it; an outside test saw one ``verify --random`` of an
    intact older snapshot clear the failure of the newest); else the newest, or a
    random one. Notes the earlier failure in ``result``."""
    entry = status_file.load_status(ctx.config.state_dir)["hosts"].get(ctx.host.name, {})
    # the primary's record: a copy's drill (pullback-server copy) keeps its own verdict
    copying = getattr(ctx.backend, "role", Role.PULL) is Role.COPY
    failed = None if copying else entry.get("verify_failed_snapshot")
    if isinstance(failed, dict) and isinstance(failed.get("id"), str):
        result.failed_before = failed["id"]
        again = [s for s in snapshots if s.id == failed["id"]]
        if again:
            ctx.log.info(
                "snapshot %s failed its drill on %s: drilling it again",
                again[0].id,
                printable(str(failed.get("at")), 40),
            )
            return again[0]
        result.failed_before_gone = True
        ctx.log.info("snapshot %s, whose drill failed, is no longer listed", failed["id"][:64])
    believed = plausible(snapshots) or snapshots  # (all ahead: the drill proves one)
    return random.choice(snapshots) if pick_random else believed[-1]  # noqa: S311


def _chosen(ctx: HostContext, choice: DrillChoice, result: DrillResult) -> Snapshot | None:
    """The snapshot to drill, or None when the host has none a drill can prove (the
    problem noted in ``result``). Raises UsageError as :func:`_named`, PullbackError when
    the snapshots cannot be listed (:func:`_listed`)."""
    listed = _listed(ctx, result)
    if listed is None:
        if choice.snapshot is not None:  # nothing recorded, as for any snapshot not held
            said = "; ".join(result.problems + result.notes)
            raise UsageError(
                f"no single snapshot {printable(choice.snapshot, 80)!r} of {ctx.host.name}: {said}"
            )
        return None
    result.listed = frozenset(s.id for s in listed)
    if choice.snapshot is not None:
        return _named(listed, choice.snapshot, ctx.host.name)
    snapshots = _provable(ctx, listed, result)
    return _pick(ctx, snapshots, choice.random, result) if snapshots else None


def _listed(ctx: HostContext, result: DrillResult) -> list[Snapshot] | None:
    """The host's snapshots, or None when its repository does not exist: ``result`` then
    says "nothing to drill yet" where it can be a host not pulled yet, else which setting
    to check (:func:`.missing.missing_failure`). Only a listing that failed opens the
    repository again to tell, so a drill costs no extra restic or borg. Raises the
    listing's PullbackError otherwise."""
    try:
        return ctx.backend.snapshots()
    except Interrupted:
        raise
    except PullbackError as listing:
        if not _missing(ctx):
            raise listing from None
    failure = missing_failure(ctx.config, ctx.host, ctx.backend.repository(), ctx.cancel)
    if failure is None:
        result.waiting = True
        result.notes.append("nothing to drill yet: no repository")
    else:
        result.problems.append(failure)
    return None


def _missing(ctx: HostContext) -> bool:
    """Whether the host's repository does not exist (opened, changing nothing). Raises
    Interrupted."""
    try:
        ctx.backend.prepare(create=False)
    except RepositoryMissing:
        return True
    except Interrupted:
        raise
    except PullbackError:
        return False
    return False


def _drill(ctx: HostContext, choice: DrillChoice) -> DrillResult:
    config, host = ctx.config, ctx.host
    started = time.monotonic()
    result = DrillResult(host.name)
    scratch = config.scratch_dir() / host.name
    try:
        snapshot = _chosen(ctx, choice, result)
        if snapshot is None:
            return result
        result.snapshot_id = snapshot.id
        result.snapshot_time = iso(snapshot.time)
        remove_tree(scratch, ignore_errors=True)
        scratch.mkdir(parents=True, mode=0o700)
        ctx.log.info(
            "restore drill of snapshot %s (%s) into %s",
            snapshot.id,
            result.snapshot_time,
            scratch,
        )
        _restore_and_check(ctx, snapshot, scratch, result)
        if config.maintenance.prove_databases:
            settings = ProofSettings(
                config.maintenance.database_proof_dir,
                config.maintenance.database_proof_timeout,
                host.max_unpacked_size,
                ctx.cancel,
            )
            result.databases = prove_databases(scratch, ctx.log, settings)
            result.problems += [
                f"database {p.summary}" for p in result.databases if p.state == ProofState.FAILED
            ]
        result.ok = not result.problems
    except (UsageError, Interrupted):
        raise  # a drill stopped by hand is no failed drill: nothing is recorded of it
    except PullbackError as exc:
        refuse_if_stopping()
        result.problems.append(str(exc))
    except OSError as exc:
        refuse_if_stopping()
        where = f"{exc.filename}: " if exc.filename else ""
        free = f" ({human_size(free_bytes(scratch.parent))} free)" if exc.errno == ENOSPC else ""
        result.problems.append(f"{where}{exc.strerror or exc}{free}")
    finally:
        remove_tree(scratch, ignore_errors=True)
        result.duration = time.monotonic() - started
    return result
