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


def test_the_last_result_says_whether_a_delta_or_a_full_archive_was_stored():
    """Found by a newcomer: nothing in ``status`` said how the stored archive travelled
    (status.json's ``delta`` did). A result other than "stored", a status file without
    the fact, or one whose fact is not a boolean (a merged file is untrusted) says the
    result alone."""
    from pullback.server.fleet_view import Fleet
    from pullback.server.status import status_table

    assert host_row("web1", {**STORED, "delta": True}, 86400, NOW).result_text == "stored (delta)"
    assert host_row("web1", {**STORED, "delta": False}, 86400, NOW).result_text == "stored (full)"
    assert host_row("web1", STORED, 86400, NOW).result_text == "stored"
    assert host_row("web1", {**STORED, "delta": "yes"}, 86400, NOW).result_text == "stored"
    failed = {"last_result": "failed", "reason": "unreachable", "delta": True}
    assert host_row("web1", failed, 86400, NOW).result_text == "failed"
    # a fallback shows in the table too (an outside test saw it only in --json and mail)
    fell = {**STORED, "delta": True, "fell_back": True}
    assert host_row("web1", fell, 86400, NOW).result_text == "stored (delta, fell back)"
    odd = {**STORED, "delta": True, "fell_back": "yes"}  # (a merged file is untrusted)
    assert host_row("web1", odd, 86400, NOW).result_text == "stored (delta)"
    table = status_table(Fleet([host_row("web1", {**STORED, "delta": True}, 86400, NOW)], [], NOW))
    header, line = table.splitlines()[:2]
    column = header.index("LAST RESULT")
    assert line[column:].startswith("stored (delta)  "), table


def test_a_failed_maintenance_check_needs_attention_until_one_passes():
    """An outside test: ``maintain`` said "check: ... repository contains errors" and
    exited 1, while status, ``--check``, the page and the metrics said ok."""
    from pullback.server import metrics
    from pullback.server.config import load_server_config

    damaged = {
        **STORED,
        "maintain_result": "failed",
        "maintain_reason": "check: restic failed on /r/web1: repository contains errors",
        "maintain_failed": ["check"],
        "last_maintained": "2026-12-02T03:30:00Z",
    }
    row = host_row("web1", damaged, 86400, NOW)
    assert row.state is HostState.ATTENTION
    assert row.reason.endswith(
        "; the last maintenance failed: check: restic failed on /r/web1: repository contains errors"
    )
    passed = {**damaged, "maintain_result": "ok", "maintain_failed": []}
    assert host_row("web1", passed, 86400, NOW).state is HostState.OK
    drill_only = {**damaged, "maintain_failed": ["drill"], "maintain_reason": "drill: x"}
    assert host_row("web1", drill_only, 86400, NOW).state is HostState.OK, "the drill's own record"

    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "server.yaml"
        path.write_text(f"state_dir: {tmp}/state\nhosts: [{{name: web1}}]\n")
        config = load_server_config(path)
        text = metrics.build(config, {"hosts": {"web1": damaged}}, NOW).render()
    assert 'pullback_last_maintain_ok{host="web1"} 0' in text


def test_a_snapshots_failed_drill_stays_in_the_row_after_another_passes():
    entry = {
        **STORED,
        "verify_result": "ok",
        "verify_failed_snapshot": {"id": "3826e3e3", "at": "2026-12-02T03:40:00Z", "summary": "x"},
    }
    row = host_row("web1", entry, 86400, NOW)
    assert row.state is HostState.ATTENTION
    assert "the restore drill of 2026-12-02T03:40:00Z failed: x; the next drill tries" in row.reason
    assert "failed a drill too" not in row.reason
    entry["verify_failed_others"] = [{"id": "a1"}, {"id": "b2"}]
    row = host_row("web1", entry, 86400, NOW)
    assert row.reason.endswith(
        "; 2 other snapshots failed a drill too (status --json: verify_failed_others)"
    )


def test_a_guard_hold_is_its_own_record_and_a_copys_failed_maintenance_is_the_copys():
    """An outside review: after ``release`` the host stayed in attention ("the last
    maintenance failed: guard: forget held ...") until the next maintenance; and a
    failed maintenance of the second copy reached nothing."""
    released = {
        **STORED,
        "maintain_result": "failed",
        "maintain_failed": ["guard"],
        "maintain_reason": "guard: forget held since ...",
    }
    assert host_row("web1", released, 86400, NOW).state is HostState.OK
    from pullback.server.fleet_view import copy_view

    copy = {
        "copy": {
            "result": "ok",
            "newest": "2026-12-02T03:00:00Z",
            "maintain_result": "failed",
            "maintain_failed": ["check"],
            "maintain_reason": "check: repository contains errors",
        }
    }
    assert copy_view(copy, 3 * 86400, NOW).complaint == (
        "copy failed: the copy's last maintenance failed: check: repository contains errors"
    )


def test_a_failed_last_drill_names_the_failure_still_standing_too():
    """An outside review: a default drill of B failed, then verify --snapshot A failed:
    the row said only A's words."""
    entry = {
        **STORED,
        "verify_result": "failed",
        "verify_summary": "snapshot aaaa1111 FAILED: changed: x",
        "verify_failed_snapshot": {"id": "bbbb2222", "at": "2026-12-02T03:40:00Z", "summary": "y"},
        "verify_failed_others": [{"id": "aaaa1111"}, {"id": "cccc3333"}],
    }
    reason = host_row("web1", entry, 86400, NOW).reason
    assert "the last restore drill failed: snapshot aaaa1111 FAILED: changed: x" in reason
    assert "; the drill of snapshot bbbb2222 failed too" in reason
    assert reason.endswith(
        "; another snapshot failed a drill too (status --json: verify_failed_others)"
    )
