"""A row of ``pullback-server status``: what it says under the table is why the host
needs attention."""

from __future__ import annotations

import datetime as dt

from pullback.server.fleet_view import host_row
from pullback.server.host_state import HostState

NOW = dt.datetime(2026, 12, 2, 4, 0, tzinfo=dt.UTC)
STORED = {
    "last_result": "stored",
    "reason": "stored web1-20261202T030000Z.tar.zst as restic snapshot 5831fcd1",
    "newest_snapshot": "2026-12-02T03:00:00Z",
}


def test_a_failed_drill_is_what_the_row_says():
    entry = {
        **STORED,
        "verify_result": "failed",
        "verify_summary": "snapshot 83ac9c9e FAILED: changed: services/app/f12.txt",
    }
    row = host_row("web1", entry, 86400, NOW)
    assert row.state is HostState.ATTENTION
    assert row.reason == (
        f"{STORED['reason']}; "
        "the last restore drill failed: snapshot 83ac9c9e FAILED: changed: services/app/f12.txt"
    )


def test_a_stale_host_with_a_failed_drill_says_both():
    entry = {
        "last_result": "skipped",
        "reason": "no new archive: the newest is 3 days old",
        "verify_result": "failed",
        "verify_summary": "snapshot 83ac9c9e FAILED: changed: f12.txt",
    }
    row = host_row("web1", entry, 86400, NOW)
    assert row.reason.startswith("no new archive: the newest is 3 days old; the last restore")


def test_a_good_drill_leaves_the_pulls_words():
    row = host_row("web1", {**STORED, "verify_result": "ok"}, 86400, NOW)
    assert row.state is HostState.OK and row.reason == STORED["reason"]


def test_a_failed_pull_says_its_own_words_first():
    entry = {"last_result": "failed", "reason": "unreachable", "verify_result": "failed"}
    assert host_row("web1", entry, 86400, NOW).reason == "unreachable"
