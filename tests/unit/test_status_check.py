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


def test_a_disabled_host_is_shown_and_counted_in_no_trouble(tmp_path):
    """helper-134 F7: a host kept in server.yaml with ``enabled: false`` (its snapshots
    restorable) turned stale at max_age: ``--check`` CRITICAL for ever, ``pullback_stale``
    1, and nothing said it was disabled. Now its row is ``disabled`` with its record, it
    makes no verdict and no complaint, and the metrics say ``pullback_host_enabled 0``
    without a ``pullback_stale`` for it."""
    from pullback.common.clock import iso, utc_now
    from pullback.server import metrics, status_page
    from pullback.server.config import load_server_config
    from pullback.server.fleet_view import Source, fleet, rows
    from pullback.server.status import _host_complaints, status_table

    path = tmp_path / "server.yaml"
    path.write_text(
        f"state_dir: {tmp_path / 'state'}\nlock_dir: {tmp_path}\n"
        "hosts:\n  - name: web1\n  - {name: old, enabled: false}\n"
    )
    config = load_server_config(path)
    now = utc_now()
    fresh = iso(now - dt.timedelta(hours=1))
    entry = {"last_result": "stored", "newest_snapshot": fresh, "failed_services": ["db"]}
    gone = {**entry, "newest_snapshot": iso(now - dt.timedelta(days=9))}
    status = {"hosts": {"web1": {**entry, "failed_services": []}, "old": gone}}
    found = rows(config, status, now)
    old = next(r for r in found if r.host == "old")
    assert (old.state, old.stale, old.client_failed, old.result) == (
        HostState.DISABLED,
        False,
        [],
        "stored",
    )
    assert [r.host for r in found] == ["web1", "old"]  # (last: after the ok ones)
    result = fleet_check(found)
    assert result.state == Check.OK
    assert result.line == (
        "PULLBACK OK - 1 of 1 hosts ok (1 disabled: old) | hosts=2 ok=1 attention=0 "
        "failed=0 stale=0 disabled=1 oldest_snapshot_age=3600s"
    )
    assert _host_complaints(found) == []
    view = fleet(config, Source("here", None, status), now=now)
    table = status_table(view)
    assert any(line.startswith("old") and "disabled" in line for line in table.splitlines())
    assert "not pulled" not in table  # (no note under the table: nothing to do)
    text = metrics.build(config, status, now).render()
    assert 'pullback_host_enabled{host="old"} 0' in text
    assert 'pullback_host_enabled{host="web1"} 1' in text
    assert 'pullback_stale{host="old"}' not in text
    assert 'pullback_newest_snapshot_failed_services{host="old"}' not in text
    page = status_page.render(config, status, now)
    assert '<tr class="disabled" data-host="old">' in page and "1 ok, 1 disabled" in page
