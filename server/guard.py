"""The ransomware guard: before forgetting anything for a host, compare its newest
snapshot with the one before; when too much changed, hold forget and prune for that host
until an administrator releases it (``pullback-server release HOST``).

Ransomware that encrypts a client's files turns a normal day (a few per cent of the files
rewritten) into one where nearly every file changed, or where the data shrank (files
deleted, or replaced by a ransom note). Forgetting by the retention policy after such a
day would start to drop the good history the day before it needs; held, every snapshot
stays. The hold is kept in status.json (``guard_hold``), shown by ``status`` (exit 1),
the status page, the metrics (``pullback_forget_held``) and the maintenance mail, and
outlives later snapshots: only ``release`` ends it.

The same hold (of kind ``tampered``) is made when the snapshots changed behind the back
of the machine that forgets: it records those it saw at each maintenance (:func:`seen`)
and compares them at the next one (:func:`tampered`). A pull server's ``--append-only``
borg key can still delete, rename and rewrite archives; their data stays until a
compact, so nothing is pruned (compacted) while such a hold lasts, and the repository can
be rolled back (docs/scaling.md).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..common.clock import iso_or_none, parse_iso
from ..common.units import human_size

if TYPE_CHECKING:  # the backends import the configuration, which imports this
    from .backends import Change, Snapshot


@dataclass(frozen=True)
class GuardLimits:
    enabled: bool = True
    max_changed: float = 0.5
    """Share of the older snapshot's entries changed or removed, or of its data no longer
    in the newer one, that holds forget."""
    max_shrink: float = 0.5
    """Share of the older snapshot's data gone that holds forget."""
    min_files: int = 100
    """Fewer entries in the older snapshot than this: its entries are not judged (a share
    of a handful of files says nothing)."""
    min_bytes: int = 64 << 20
    """Less data in the older snapshot than this: its bytes are not judged."""


def judge(change: Change, limits: GuardLimits) -> str | None:
    """Why this change is abnormal (the words of the hold), or None for a normal one."""
    reasons = []
    if change.files_before >= limits.min_files and change.changed_share > limits.max_changed:
        reasons.append(
            f"{change.changed_share:.0%} of {change.files_before} entries changed or removed "
            f"(max_changed {limits.max_changed:.0%})"
        )
    if change.bytes_before >= limits.min_bytes:
        if change.rewritten_share > limits.max_changed:
            reasons.append(
                f"{change.rewritten_share:.0%} of the data is no longer there as it was "
                f"(max_changed {limits.max_changed:.0%})"
            )
        if change.shrink > limits.max_shrink:
            reasons.append(
                f"the data shrank by {change.shrink:.0%} (max_shrink {limits.max_shrink:.0%})"
            )
    return "; ".join(reasons) or None


def unjudged(change: Change, limits: GuardLimits) -> str:
    """What :func:`judge` left unjudged, as words to append to a verdict ("" when it
    judged both the entries and the data): an outside walk read "normal" for a snapshot
    whose every file changed, below ``min_files`` and ``min_bytes``."""
    left = []
    if change.files_before < limits.min_files:
        left.append(f"the entries (fewer than min_files {limits.min_files})")
    if change.bytes_before < limits.min_bytes:
        left.append(f"the data (less than min_bytes {human_size(limits.min_bytes)})")
    return f"; not judged: {' and '.join(left)}" if left else ""


def dated_ahead(snapshots: list[Snapshot], horizon: dt.datetime) -> Snapshot | None:
    """The newest snapshot dated after ``horizon``, or None: restic measures
    ``keep_within`` from the newest snapshot, so one dated ahead would forget history."""
    ahead = [s for s in snapshots if s.time > horizon]
    return ahead[-1] if ahead else None


def own(snapshots: list[Snapshot]) -> list[Snapshot]:
    """pullback's own complete snapshots, oldest first: adopted ones (another program's
    layout) and partial ones (a failed service looks like mass removal) are not judged."""
    return [s for s in snapshots if not s.adopted and not s.failed]


def partial_since(snapshots: list[Snapshot]) -> list[Snapshot]:
    """pullback's partial snapshots newer than its newest complete one (a client whose
    dumps fail — as ransomware breaks them — makes nothing the guard can judge)."""
    mine = [s for s in snapshots if not s.adopted]
    complete = [s.time for s in mine if not s.failed]
    newest = max(complete, default=None)
    return [s for s in mine if s.failed and (newest is None or s.time > newest)]


def baseline(snapshots: list[Snapshot], judged: str | None) -> tuple[Snapshot, Snapshot] | None:
    """The pair to compare: the newest complete snapshot against the last one judged
    normal or released (``judged``), so that everything since the last maintenance is
    covered by one comparison; against the one before it when that one is gone or was
    never recorded. None with nothing new or fewer than two snapshots."""
    found = own(snapshots)
    if len(found) < 2:
        return None
    newer = found[-1]
    if newer.id == judged:
        return None
    older = next((s for s in found[:-1] if s.id == judged), found[-2])
    return older, newer


SHOWN = 5
"""At most this many snapshot names in the words of a tamper hold (then "and N more")."""


def seen(snapshots: list[Snapshot], when: dt.datetime, forgotten: list[str] | None = None) -> dict:
    """What the machine that forgets records of a host's snapshots after its maintenance
    (``guard_seen`` in status.json): when, the newest snapshot's time, each snapshot's id
    with its :attr:`~.backends.Snapshot.fingerprint` (its first 16 characters), and
    those it forgot then
    (one listed again, as after a roll-back, did not appear from elsewhere)."""
    return {
        "at": iso_or_none(when),
        "newest": iso_or_none(max((s.time for s in snapshots), default=None)),
        "snapshots": {s.id: s.fingerprint[:16] for s in snapshots},
        "forgotten": list(forgotten or [])[-1000:],
    }


def _some(names: list[str]) -> str:
    more = f" and {len(names) - SHOWN} more" if len(names) > SHOWN else ""
    return ", ".join(names[:SHOWN]) + more


def _recorded(record: object) -> tuple[dict[str, str], dt.datetime | None, set[str]] | None:
    """The snapshots, newest time and forgotten ones of a ``guard_seen`` record, None for
    none."""
    if not isinstance(record, dict) or not isinstance(record.get("snapshots"), dict):
        return None
    newest = record.get("newest")
    try:
        when = parse_iso(newest) if isinstance(newest, str) else None
    except ValueError:
        when = None
    forgotten = record.get("forgotten")
    known = {str(f) for f in forgotten} if isinstance(forgotten, list) else set()
    return {str(k): str(v or "") for k, v in record["snapshots"].items()}, when, known


def tampered(record: object, snapshots: list[Snapshot]) -> str | None:
    """What changed in a host's repository since the last maintenance (``record``:
    :func:`seen`) that the machine which forgets did not do, in words, or None: snapshots
    it saw that are gone (it forgot none of them: those it forgot are not in the record),
    snapshots that appeared dated before the newest it saw (pullback's pulls only add
    newer ones), and snapshots whose fingerprint changed (rewritten under the same
    name)."""
    found = _recorded(record)
    if found is None:
        return None
    before, newest, forgotten = found
    now = {s.id for s in snapshots}
    gone = [name for name in before if name not in now]
    fingerprints = {s.id: s.fingerprint for s in snapshots}
    changed = [name for name, mark in before.items() if _rewritten(mark, fingerprints.get(name))]
    new = [s for s in snapshots if s.id not in before and s.id not in forgotten]
    reasons = [
        _counted(gone, "seen at the last maintenance are gone"),
        _backdated(newest, new) if newest else "",
        _counted(changed, "were rewritten under the same name (another archive id)"),
    ]
    return "; ".join(r for r in reasons if r) or None


def _counted(names: list[str], what: str) -> str:
    """``2 snapshot(s) WHAT: a, b`` ("" for no names)."""
    return f"{len(names)} snapshot(s) {what}: {_some(names)}" if names else ""


def _backdated(newest: dt.datetime, new: list[Snapshot]) -> str:
    """Words for the ``new`` snapshots dated before ``newest`` ("": none)."""
    earlier = [s.id for s in new if s.time < newest]
    return (
        f"{len(earlier)} snapshot(s) appeared dated before the newest one seen then "
        f"({newest:%Y-%m-%d %H:%M} UTC; pulls only add newer ones): {_some(earlier)}"
        if earlier
        else ""
    )


def _rewritten(mark: str, now: str | None) -> bool:
    """Whether a snapshot recorded with fingerprint ``mark`` is listed with another one
    (``now``; None: not listed, or no fingerprint known)."""
    return bool(mark and now) and (now or "")[: len(mark)] != mark
