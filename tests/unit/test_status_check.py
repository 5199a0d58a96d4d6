"""``status --check``: the monitoring-plugin verdict is a pure function of the fleet rows."""

from __future__ import annotations

import datetime as dt

from pullback.server.fleet_view import HostRow, HostState
from pullback.server.status import Check, fleet_check


def row(name: str, state: HostState, stale: bool = False, age: float | None = 3600.0) -> HostRow:
    return HostRow(name, state, "stored", stale=stale, newest_age=age)


def test_ok_warning_critical_unknown():
    assert fleet_check([row("a", HostState.OK)]).state == Check.OK
    assert fleet_check([row("a", HostState.OK), row("b", HostState.ATTENTION)]).state == (
        Check.WARNING
    )
    assert fleet_check([row("a", HostState.FAILED)]).state == Check.WARNING
    # failed and stale: the stale part decides (no fresh snapshot is the emergency), and
    # the failure is said and counted too (a wrong key is not a host merely waiting)
    both = fleet_check([row("a", HostState.FAILED, stale=True, age=None)])
    assert both.state == Check.CRITICAL
    assert both.line == (
        "PULLBACK CRITICAL - stale: a; last pull failed: a; 0 of 1 hosts ok | "
        "hosts=1 ok=0 attention=0 failed=1 stale=1"
    )
    assert fleet_check([]).state == Check.UNKNOWN


def test_the_line_names_ten_hosts_then_counts_and_gives_the_oldest_age():
    rows = [row(f"h{i:02}", HostState.STALE, stale=True, age=100.0 + i) for i in range(25)]
    result = fleet_check(rows)
    assert result.line.startswith(
        "PULLBACK CRITICAL - stale: h00, h01, h02, h03, h04, h05, h06, h07, h08, h09 and 15 more;"
    )
    assert result.line.endswith("stale=25 oldest_snapshot_age=124s")
    assert "\n" not in result.line


def test_status_exits_1_for_every_row_check_does_not_call_ok():
    """``status`` (exit 1 on a complaint) and ``status --check`` agree host by host: an
    outside review saw a host whose drill failed (ATTENTION) give ``status`` exit 0."""
    from pullback.server.status import _host_complaints

    cases = [
        row("a", HostState.OK),
        row("b", HostState.ATTENTION),
        row("c", HostState.FAILED),
        row("d", HostState.STALE, stale=True, age=None),
    ]
    for case in cases:
        complaints = _host_complaints([case])
        assert bool(complaints) == (fleet_check([case]).state != Check.OK), case
    assert _host_complaints([row("b", HostState.ATTENTION)]) == [
        "needs attention: b (the lines under the table say why)"
    ]
    held = row("e", HostState.ATTENTION)
    held.held = "a third of the files vanished"
    # named once, by the guard's line, not again as "needs attention"
    assert _host_complaints([held]) == [
        "forget held by the ransomware guard: e (pullback-server release HOST once the "
        "change is understood)"
    ]


def test_a_partial_snapshot_recorded_without_a_problem_is_not_ok():
    """An outside attack: a status file saying ``failed_services`` with ``problem:
    false`` (an older server's, or one written by hand) made ``status`` exit 1 while
    ``--check`` said OK."""
    from pullback.server.fleet_view import host_row
    from pullback.server.status import _host_complaints

    entry = {
        "last_result": "stored",
        "newest_snapshot": "2026-12-04T10:00:00Z",
        "failed_services": ["one"],
        "problem": False,
    }
    now = dt.datetime(2026, 12, 4, 12, 0, tzinfo=dt.UTC)
    found = host_row("web1", entry, 36 * 3600.0, now)
    assert found.state is HostState.ATTENTION
    assert fleet_check([found]).state == Check.WARNING
    assert _host_complaints([found])  # and plain status exits 1 as it did
