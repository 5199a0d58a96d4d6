"""``status --check``: the monitoring-plugin verdict is a pure function of the fleet rows."""

from __future__ import annotations

import datetime as dt
import json

from pullback.server.fleet_view import DISABLED_WORDS, HostRow, HostState
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


def test_a_disabled_host_s_failed_drill_hold_or_named_run_still_counts(tmp_path):
    """helper-138 R7: ``enabled: false`` hid every outcome of the host: a failed drill of
    the snapshots it is kept for, a ransomware guard's hold (tampered too), a failed
    ``pull old`` an administrator ran by name; ``--check`` said OK. They count now; a
    pull that failed before the host was disabled (the machine gone) does not, and the
    host is never stale."""
    from pullback.common.clock import iso, utc_now
    from pullback.common.outcome import Status
    from pullback.server import metrics, status_file
    from pullback.server.fleet_view import rows
    from pullback.server.results import HostResult
    from pullback.server.status import _host_complaints
    from tests.helpers.status_servers import make_server

    server = make_server(tmp_path, "s", {"web1": None, "old": "1h"}, disabled=("old",))
    config = server.config
    now = utc_now()
    week = iso(now - dt.timedelta(days=7))
    fresh = {"last_result": "stored", "newest_snapshot": iso(now - dt.timedelta(hours=1))}
    gone = {"last_result": "failed", "reason": "cannot connect", "newest_snapshot": week}

    def old_row(entry: dict):
        found = rows(config, {"hosts": {"web1": fresh, "old": entry}}, now)
        return next(r for r in found if r.host == "old"), found

    # failed before it was disabled, and stale: neither counts
    row, found = old_row(gone)
    assert (row.state, row.stale, row.disabled) == (HostState.DISABLED, False, True)
    assert fleet_check(found).state == Check.OK and _host_complaints(found) == []
    # never pulled at all: disabled, nothing more
    assert old_row({})[0].state == HostState.DISABLED
    # a failed drill of its kept snapshots
    row, found = old_row({**gone, "verify_result": "failed", "verify_summary": "restic: bad"})
    assert (row.state, row.stale) == (HostState.ATTENTION, False)
    assert row.reason.startswith("the last restore drill failed: restic: bad (disabled in")
    assert "cannot connect" not in row.reason  # (the old pull's words: not counted)
    result = fleet_check(found)
    assert result.state == Check.WARNING
    assert result.line.startswith("PULLBACK WARNING - needs attention: old; 1 of 2 hosts ok |")
    assert "oldest_snapshot_age=3600s" in result.line  # (its age still left out)
    # a guard's hold (tampered)
    row, found = old_row({**gone, "guard_hold": {"reason": "tampered: snapshots vanished"}})
    assert (row.state, row.held) == (
        HostState.ATTENTION,
        "forget held by the ransomware guard: tampered: snapshots vanished",
    )
    assert fleet_check(found).state == Check.WARNING
    assert _host_complaints(found)[0].startswith("forget held by the ransomware guard: old")
    # a pull an administrator named: recorded as such by the real writer, and it counts
    server.pulled(HostResult("old", Status.FAILED, "cannot connect", started=iso(now)))
    recorded = json.loads(server.status.read_text())["hosts"]["old"]
    assert recorded["pulled_disabled"] is True
    row, found = old_row(recorded)
    assert (row.state, row.stale) == (HostState.FAILED, False)
    assert row.reason == f"cannot connect ({DISABLED_WORDS})"
    assert fleet_check(found).state == Check.WARNING
    named = {**recorded, "last_result": "stored", "failed_services": ["db"]}
    row, found = old_row(named)
    assert (row.state, row.client_failed) == (HostState.ATTENTION, ["db"])
    text = metrics.build(config, {"hosts": {"old": named}}, now).render()
    assert 'pullback_newest_snapshot_failed_services{host="old"} 1' in text
    assert 'pullback_stale{host="old"}' not in text
    # enabled again and pulled: the mark is gone
    status_file.record(config.state_dir, [HostResult("old", Status.STORED, started=iso(now))])
    assert "pulled_disabled" not in json.loads(server.status.read_text())["hosts"]["old"]


def test_the_metrics_count_a_disabled_host_s_last_pull_as_status_does(tmp_path):
    """helper-144 F4: a pull that failed before the host was disabled: status and
    ``--check`` said DISABLED (not counted), but ``pullback_last_attempt_ok`` stayed 0
    and ``pullback_last_result{result="failed"}`` 1 for ever, so an alert on them fired
    for ever. They follow status's rule now (:func:`.host_state.pull_counts`): absent
    for such a pull, there for a pull a run that named the host made."""
    from pullback.common.clock import iso, utc_now
    from pullback.common.outcome import Status
    from pullback.server import metrics
    from pullback.server.fleet_view import rows
    from pullback.server.host_state import pull_counts
    from pullback.server.results import HostResult
    from tests.helpers.status_servers import make_server

    before = make_server(tmp_path, "s", {"web1": None, "old": None})
    now = utc_now()
    before.pulled(
        HostResult("web1", Status.STORED, started=iso(now), newest_snapshot=iso(now)),
        HostResult("old", Status.FAILED, "cannot connect", started=iso(now)),
    )
    failed = json.loads(before.status.read_text())
    text = metrics.build(before.config, failed, now).render()
    assert 'pullback_last_attempt_ok{host="old"} 0' in text  # (enabled: it counts)
    server = make_server(tmp_path, "s", {"web1": None, "old": None}, disabled=("old",))
    config = server.config
    old = failed["hosts"]["old"]
    assert not pull_counts(old, enabled=False) and pull_counts(old, enabled=True)
    assert next(r for r in rows(config, failed, now) if r.host == "old").state == (
        HostState.DISABLED
    )
    text = metrics.build(config, failed, now).render()
    assert 'pullback_last_attempt_ok{host="old"}' not in text
    judged = ("pullback_last_result{", "pullback_last_attempt_ok{")
    assert not [x for x in text.splitlines() if x.startswith(judged) and '"old"' in x]
    assert 'pullback_last_result{result="stored",host="web1"} 1' in text
    assert 'pullback_last_attempt_ok{host="web1"} 1' in text
    assert 'pullback_last_attempt_timestamp_seconds{host="old"}' in text  # (its facts stay)
    assert 'pullback_host_enabled{host="old"} 0' in text
    # ``pull --host old`` by hand, failed: the real writer marks it, and it counts
    server.pulled(HostResult("old", Status.FAILED, "cannot connect", started=iso(now)))
    named = json.loads(server.status.read_text())
    assert pull_counts(named["hosts"]["old"], enabled=False)
    assert next(r for r in rows(config, named, now) if r.host == "old").state == (HostState.FAILED)
    text = metrics.build(config, named, now).render()
    assert 'pullback_last_attempt_ok{host="old"} 0' in text
    assert 'pullback_last_result{result="failed",host="old"} 1' in text


def test_a_disabled_host_s_copy_hold_and_failures_count_as_its_primary_s(tmp_path, capsys):
    """helper-144 F8: a disabled host's second copy (its snapshots are what it is kept
    for) held by the ransomware guard, a failed drill or maintenance of the copy, or a
    failed ``copy --host old``, were in status.json and in no row, exit code,
    ``--check`` or gauge. They count now as the primary's do; the copy is never stale
    (a disabled host is not copied), and a copy run that succeeds ends its failure."""
    from pullback.common.clock import iso, utc_now
    from pullback.common.outcome import Status
    from pullback.server import metrics, status_file
    from pullback.server.config import load_server_config
    from pullback.server.copy import CopyResult
    from pullback.server.fleet_view import Source, rows, source_rows
    from pullback.server.results import HostResult
    from tests.helpers.status_servers import Server, status

    path = tmp_path / "server.yaml"
    path.write_text(
        f"state_dir: {tmp_path / 'state'}\nlock_dir: {tmp_path}\n"
        f"copy: {{repository_root: {tmp_path / 'copies'}}}\n"
        "hosts:\n  - name: web1\n  - {name: old, enabled: false}\n"
    )
    config = load_server_config(path)
    server = Server(path, config)
    now = utc_now()
    fresh = iso(now)
    week = iso(now - dt.timedelta(days=30))
    copied = {"copied": fresh, "newest": fresh, "result": "ok", "verified": fresh}
    web1 = {"last_result": "stored", "newest_snapshot": fresh, "copy": copied}
    gone = {"last_result": "stored", "newest_snapshot": week}

    def old_row(copy: dict | None):
        entry = gone if copy is None else {**gone, "copy": copy}
        found = rows(config, {"hosts": {"web1": web1, "old": entry}}, now)
        return next(r for r in found if r.host == "old"), found

    def gauges(copy: dict) -> list[str]:
        state = {"hosts": {"web1": web1, "old": {**gone, "copy": copy}}}
        text = metrics.build(config, state, now).render()
        return [x for x in text.splitlines() if x.startswith("pullback_copy") and '"old"' in x]

    # no copy recorded, or an old one: disabled, never stale, counted in no trouble
    row, found = old_row(None)
    assert (row.state, row.copy is not None and row.copy.stale) == (HostState.DISABLED, False)
    assert fleet_check(found).state == Check.OK
    row, found = old_row({**copied, "newest": week, "copied": week})
    assert (row.state, row.copy.stale) == (HostState.DISABLED, False)  # type: ignore[union-attr]
    assert fleet_check(found).state == Check.OK
    said = gauges({**copied, "newest": week})
    assert 'pullback_copy_ok{host="old"} 1' in said
    assert not [x for x in said if x.startswith("pullback_copy_stale")], said
    # the ransomware guard holds the copy's forget
    hold = {**copied, "guard_hold": {"reason": "tampered: snapshots vanished"}}
    row, found = old_row(hold)
    assert row.state == HostState.ATTENTION
    assert row.reason == (
        "copy's forget held by the ransomware guard: tampered: snapshots vanished "
        f"({DISABLED_WORDS})"
    )
    result = fleet_check(found)
    assert result.line.startswith("PULLBACK WARNING - needs attention: old; 1 of 2 hosts ok |")
    assert 'pullback_copy_forget_held{host="old"} 1' in gauges(hold)
    # the copy's maintenance found damage, or its drill failed
    damaged = {**copied, "maintain_result": "failed", "maintain_failed": ["check"]}
    damaged["maintain_reason"] = "check: repository contains errors"
    row, found = old_row(damaged)
    assert row.state == HostState.ATTENTION and "repository contains errors" in row.reason
    assert fleet_check(found).state == Check.WARNING
    assert 'pullback_copy_last_maintain_ok{host="old"} 0' in gauges(damaged)
    row, _ = old_row({**copied, "verify_result": "failed", "verify_summary": "restic: bad"})
    assert row.state == HostState.ATTENTION and "restic: bad" in row.reason
    # a failed ``copy --host old``, recorded by the real writer: status exits 1
    failed = CopyResult("old", Status.FAILED, problems=["the copy store is unreachable"])
    pulled = HostResult("web1", Status.STORED, started=fresh, newest_snapshot=fresh)
    status_file.record(config.state_dir, [pulled], status_file.configured(config.hosts))
    status_file.record_copies(config.state_dir, [failed])
    status_file.record_copies(config.state_dir, [CopyResult("web1", newest=fresh)])
    recorded = json.loads(server.status.read_text())["hosts"]["old"]["copy"]
    row, found = old_row(recorded)
    assert row.reason == f"copy failed: the copy store is unreachable ({DISABLED_WORDS})"
    assert 'pullback_copy_ok{host="old"} 0' in gauges(recorded)
    code, out, _ = status(server, "--check", capsys=capsys)
    assert code == 1 and out.startswith("PULLBACK WARNING - needs attention: old"), out
    # another server's file says the same of its disabled host
    merged = {"configured": {"old": {"enabled": False}}, "hosts": {"old": {**gone, "copy": hold}}}
    (other,) = source_rows(Source("backup2", None, merged), now)
    assert (other.state, other.disabled) == (HostState.ATTENTION, True)
    # a copy run that succeeds ends the failure: disabled again
    status_file.record_copies(config.state_dir, [CopyResult("old", newest=fresh)])
    code, out, _ = status(server, "--check", capsys=capsys)
    assert code == 0 and out.startswith("PULLBACK OK - 1 of 1 hosts ok (1 disabled: old)"), out


def test_release_accepts_a_disabled_host_s_failed_named_pull(tmp_path, capsys):
    """helper-144 F2: ``pull --host old`` (a last pull before the machine goes) failed,
    the machine is gone: old was FAILED and ``--check`` WARNING for ever, since only a
    pull of it that passes ended that, and the only way out was editing status.json by
    hand. ``release old`` accepts it: old is ``disabled`` again, and says what it
    accepted. An enabled host's failed pull is not accepted: a pull that passes ends it."""
    from pullback.common.clock import iso, utc_now
    from pullback.common.outcome import Status
    from pullback.server.cli import main as server_main
    from pullback.server.results import HostResult
    from tests.helpers.status_servers import make_server, status, stored

    server = make_server(tmp_path, "s", {"web1": None, "old": None}, disabled=("old",))
    when = iso(utc_now())
    server.pulled(stored("web1", 1), HostResult("old", Status.FAILED, "no route", started=when))
    code, out, _ = status(server, "--check", capsys=capsys)
    assert code == 1 and out.startswith("PULLBACK WARNING - last pull failed: old"), out

    def release(host: str) -> tuple[int, str]:
        code = server_main(["--config", str(server.path), "release", host])
        return code, capsys.readouterr().out

    assert release("old") == (
        0,
        f"old: accepted the failed pull of {when}: no route; disabled in server.yaml, "
        "it counts no more\n",
    )
    code, out, _ = status(server, "--check", capsys=capsys)
    assert code == 0 and out.startswith("PULLBACK OK - 1 of 1 hosts ok (1 disabled: old)"), out
    entry = json.loads(server.status.read_text())["hosts"]["old"]
    assert "pulled_disabled" not in entry and entry["last_result"] == "failed"
    written = server.status.stat().st_mtime_ns
    assert release("old") == (
        0,
        "old: forget is not held and no pull of it that a run named counts; nothing to release\n",
    )
    assert server.status.stat().st_mtime_ns == written, "nothing to do: nothing written"
    # an enabled host's failure is not accepted
    server.pulled(HostResult("web1", Status.FAILED, "cannot connect", started=when))
    code, out = release("web1")
    assert code == 0 and out.startswith("web1: forget is not held; nothing to release (its ")
    assert "counts until a pull of it passes" in out
    code, out, _ = status(server, "--check", capsys=capsys)
    assert code == 1 and out.startswith("PULLBACK WARNING - last pull failed: web1"), out
