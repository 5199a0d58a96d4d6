"""Local retention: keep_last OR keep_days, and never the newest good archive."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from pullback.common.archive.directory import LocalArchive, select_expired
from pullback.common.archive.sidecar import ArchiveInfo, Sidecar

NOW = dt.datetime(2026, 11, 22, 12, 0, tzinfo=dt.UTC)


def archive(days_ago: float, status: str = "ok") -> LocalArchive:
    when = NOW - dt.timedelta(days=days_ago)
    stamp = when.strftime("%Y%m%dT%H%M%SZ")
    name = f"h-{stamp}.tar.zst"
    sidecar = Sidecar("h", stamp, "", "0", status, ArchiveInfo(name, 1, "0" * 64, "zstd"), [])
    return LocalArchive(Path(name), "h", stamp, sidecar)


def names(items):
    return [a.stamp[:8] for a in items]


def test_keep_last_and_keep_days_both_protect():
    series = [archive(d) for d in (30, 20, 10, 6, 5, 1)]
    # keep_last=2 keeps the 5- and 1-day-old ones; keep_days=7 also keeps the 6-day-old one
    assert names(select_expired(series, keep_last=2, keep_days=7, now=NOW)) == names(series[:3])


def test_keep_days_zero_leaves_only_keep_last():
    series = [archive(d) for d in (3, 2, 1)]
    assert names(select_expired(series, keep_last=1, keep_days=0, now=NOW)) == names(series[:2])


def test_newest_good_archive_survives_a_run_of_partial_ones():
    series = [
        archive(10, "ok"),
        archive(9, "partial"),
        archive(8, "partial"),
        archive(7, "partial"),
    ]
    expired = select_expired(series, keep_last=2, keep_days=0, now=NOW)
    assert names(expired) == names(series[1:2])  # the good one at 10 days is kept


def test_incomplete_archives_are_not_counted():
    good = archive(1)
    incomplete = LocalArchive(Path("h-x.tar.zst"), "h", "20261101T000000Z", None)
    assert select_expired([incomplete, good], keep_last=1, keep_days=0, now=NOW) == []
