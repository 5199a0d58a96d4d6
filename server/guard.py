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
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the backends import the configuration, which imports this
    from .backends import Change, Snapshot


@dataclass(frozen=True)
class GuardLimits:
    enabled: bool = True
    max_changed: float = 0.5
    """Share of the older snapshot's entries changed or removed that holds forget."""
    max_shrink: float = 0.5
    """Share of the older snapshot's data gone that holds forget."""
    min_files: int = 100
    """Fewer entries in the older snapshot than this: not judged (a share of a handful
    of files says nothing)."""


def judge(change: Change, limits: GuardLimits) -> str | None:
    """Why this change is abnormal (the words of the hold), or None for a normal day."""
    if change.files_before < limits.min_files:
        return None
    reasons = []
    if change.changed_share > limits.max_changed:
        reasons.append(
            f"{change.changed_share:.0%} of {change.files_before} entries changed or removed "
            f"(max_changed {limits.max_changed:.0%})"
        )
    if change.shrink > limits.max_shrink:
        reasons.append(
            f"the data shrank by {change.shrink:.0%} (max_shrink {limits.max_shrink:.0%})"
        )
    return "; ".join(reasons) or None


def pair(snapshots: list[Snapshot]) -> tuple[Snapshot, Snapshot] | None:
    """The two newest of pullback's own snapshots (oldest first), or None with fewer."""
    own = [s for s in snapshots if not s.adopted]
    return (own[-2], own[-1]) if len(own) >= 2 else None
