"""pullback's retention rules, checked against restic's own forget on the same series."""

from __future__ import annotations

import datetime as dt

import pytest

from pullback.server.retention import select, within_delta

START = dt.datetime(2026, 11, 1, tzinfo=dt.UTC)
SERIES = [START + dt.timedelta(days=d, hours=h) for d in range(10) for h in (6, 18)]


def kept(policy):
    return select(SERIES, policy, lambda t: t)[0]


def day(d, h):
    return START + dt.timedelta(days=d, hours=h)


def test_keep_daily_keeps_the_newest_of_each_day():
    assert kept({"keep_daily": 3}) == [day(7, 18), day(8, 18), day(9, 18)]


def test_rules_are_a_union_not_a_sequence():
    # restic semantics: keep_last and keep_daily pick independently; borg's own prune
    # would keep 7 here
    assert kept({"keep_last": 4, "keep_daily": 3}) == [
        day(7, 18),
        day(8, 6),
        day(8, 18),
        day(9, 6),
        day(9, 18),
    ]


def test_weekly_monthly_yearly_and_within():
    assert kept({"keep_weekly": 2}) == [day(7, 18), day(9, 18)]  # ISO weeks: Mon 2, Mon 9
    assert kept({"keep_monthly": 5}) == [day(9, 18)]
    assert kept({"keep_yearly": 1}) == [day(9, 18)]
    assert kept({"keep_within": "36h"}) == [day(8, 6), day(8, 18), day(9, 6), day(9, 18)]
    assert kept({"keep_hourly": 2}) == [day(9, 6), day(9, 18)]


def test_a_policy_that_keeps_nothing_is_refused():
    with pytest.raises(ValueError):
        select(SERIES, {"keep_daily": 0}, lambda t: t)


def test_within_units():
    assert within_delta("2w") == dt.timedelta(days=14)
    assert within_delta("36h") == dt.timedelta(hours=36)
