"""Which snapshots a retention policy keeps: one answer for restic and borg alike.

The rules are restic's (``forget``): each ``keep_<period>: n`` walks the snapshots from the
newest and keeps the newest snapshot of each of the ``n`` most recent periods that have
one; ``keep_last: n`` keeps the ``n`` newest; ``keep_within: d`` keeps every snapshot
younger than ``d`` before the newest one. A snapshot is kept when any rule keeps it.
(borg's own ``prune`` lets a snapshot count for one rule only, so pullback decides and
borg deletes.) Periods are UTC.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable, Sequence
from typing import TypeVar

T = TypeVar("T")

_BUCKETS: dict[str, Callable[[dt.datetime], object]] = {
    "keep_last": lambda t: t,  # every snapshot is its own bucket
    "keep_hourly": lambda t: (t.year, t.month, t.day, t.hour),
    "keep_daily": lambda t: (t.year, t.month, t.day),
    "keep_weekly": lambda t: tuple(t.isocalendar())[:2],
    "keep_monthly": lambda t: (t.year, t.month),
    "keep_yearly": lambda t: t.year,
}
_WITHIN = re.compile(r"^\s*(\d+)([hdwmy])\s*$")


def within_delta(value: str) -> dt.timedelta:
    """``36h``, ``2d``, ``1w``, ``1m`` (30 days), ``1y`` (365 days)."""
    match = _WITHIN.match(value)
    if not match:
        raise ValueError(f"not a keep_within duration: {value!r}")
    number, unit = int(match[1]), match[2]
    days = {"h": 1 / 24, "d": 1, "w": 7, "m": 30, "y": 365}[unit]
    return dt.timedelta(days=number * days)


def _kept_by_rule(times: list[dt.datetime], bucket, count: int) -> set[int]:
    """Indexes (into ``times``, newest first) of the newest snapshot of each of the
    ``count`` most recent periods that ``bucket`` tells apart."""
    keep: set[int] = set()
    last = object()
    for index, when in enumerate(times):
        if len(keep) >= count:
            break
        value = bucket(when)
        if value != last:
            keep.add(index)
            last = value
    return keep


def select(
    snapshots: Sequence[T], policy: dict, when: Callable[[T], dt.datetime]
) -> tuple[list[T], list[T]]:
    """Split ``snapshots`` into (kept, removed), both oldest first.

    Raises ValueError for a policy that would keep nothing.
    """
    if not any(policy.get(k) for k in (*_BUCKETS, "keep_within")):
        raise ValueError("the retention policy keeps nothing; set at least one keep_*")
    newest_first = sorted(snapshots, key=lambda s: when(s).astimezone(dt.UTC), reverse=True)
    times = [when(s).astimezone(dt.UTC) for s in newest_first]
    keep: set[int] = set()
    for rule, bucket in _BUCKETS.items():
        keep |= _kept_by_rule(times, bucket, policy.get(rule) or 0)
    if policy.get("keep_within") and times:
        horizon = times[0] - within_delta(policy["keep_within"])
        keep.update(i for i, t in enumerate(times) if t >= horizon)
    kept = [s for i, s in enumerate(newest_first) if i in keep]
    removed = [s for i, s in enumerate(newest_first) if i not in keep]
    return kept[::-1], removed[::-1]
