"""The argv of every restic and borg command, built by pure functions: plain equality."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from pullback.server.backends import BackendError, borg, restic

WHEN = dt.datetime(2026, 11, 22, 4, 50, tzinfo=dt.timezone(dt.timedelta(hours=1)))


def test_restic_backup_is_tagged_and_timed_like_the_archive_in_utc():
    assert restic.backup_args("web1", "20261122T035000Z", WHEN) == [
        "backup",
        "--json",
        "--host",
        "web1",
        "--tag",
        "pullback",
        "--tag",
        "20261122T035000Z",
        "--time",
        "2026-11-22 03:50:00",
        "--ignore-inode",
        ".",
    ]


def test_restic_snapshots_of_one_host_and_only_pullbacks():
    assert restic.snapshots_args("web1") == [
        "snapshots",
        "--host",
        "web1",
        "--tag",
        "pullback",
        "--json",
    ]


def test_restic_forget_by_policy():
    policy = {"keep_daily": 7, "keep_weekly": 4, "keep_last": 0, "keep_within": "2w"}
    assert restic.forget_args("web1", policy) == [
        "forget",
        "--host",
        "web1",
        "--tag",
        "pullback",
        "--group-by",
        "host",
        "--keep-daily",
        "7",
        "--keep-weekly",
        "4",
        "--keep-within",
        "14d",
        "--json",
    ]


def test_a_policy_that_keeps_nothing_is_refused():
    with pytest.raises(BackendError, match="keeps nothing"):
        restic.policy_args({"keep_daily": 0})


@pytest.mark.parametrize(("value", "restic_value"), [("2w", "14d"), ("36h", "36h"), ("1y", "1y")])
def test_keep_within_in_restic_units(value, restic_value):
    assert restic.within_to_restic(value) == restic_value


def test_restic_check_reads_a_rotating_part_or_everything():
    assert restic.check_args(3, 8) == ["check", "--read-data-subset=3/8"]
    assert restic.check_args(1, 1) == ["check", "--read-data"]


def test_restic_restore_includes_are_rooted():
    assert restic.restore_args("abcd1234", Path("/t"), ["services/app/", "MANIFEST.sha256"]) == [
        "restore",
        "abcd1234",
        "--target",
        "/t",
        "--include",
        "/services/app",
        "--include",
        "/MANIFEST.sha256",
    ]


def test_restic_times_with_nanoseconds_and_offsets():
    assert restic.parse_time("2026-11-22T03:50:00.123456789Z") == dt.datetime(
        2026, 11, 22, 3, 50, 0, 123456, tzinfo=dt.UTC
    )
    assert restic.parse_time("2026-11-22T04:50:00+01:00") == WHEN
    with pytest.raises(BackendError):
        restic.parse_time("yesterday")


def test_borg_create_names_the_archive_after_host_and_stamp():
    assert borg.create_args("web1", "20261122T035000Z", WHEN) == [
        "create",
        "--json",
        "--files-cache=ctime,size",
        "--timestamp",
        "2026-11-22T03:50:00",
        "::web1-20261122T035000Z",
        "services",
        "MANIFEST.sha256",
    ]


def test_borg_lock_wait_goes_after_the_subcommand():
    assert borg.with_lock_wait(["delete", "::a", "b"], 1800.7) == [
        "delete",
        "--lock-wait",
        "1800",
        "::a",
        "b",
    ]


def test_borg_list_delete_check_extract_init():
    assert borg.list_args("web1") == ["list", "--json", "--glob-archives", "web1-*"]
    assert borg.delete_args(["web1-a", "web1-b"]) == ["delete", "::web1-a", "web1-b"]
    assert borg.check_args(3600.0) == [
        ["check", "--repository-only", "--max-duration", "3600"],
        ["check", "--archives-only", "--last", "1"],
    ]
    assert borg.extract_args("web1-x", ["services/app"]) == ["extract", "::web1-x", "services/app"]
    assert borg.init_args() == ["init", "--encryption=repokey-blake2", "--make-parent-dirs"]
