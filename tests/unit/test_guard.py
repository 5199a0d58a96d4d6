"""The ransomware guard: which days hold forget, how the hold is kept, shown and released."""

from __future__ import annotations

import argparse
import datetime as dt
import json

import pytest

from pullback.common.clock import iso, utc_now
from pullback.common.errors import UsageError
from pullback.common.outcome import Status
from pullback.server import metrics, release, status, status_file
from pullback.server.backends import Change, Snapshot
from pullback.server.backends.borg import count_diff, diff_args
from pullback.server.backends.restic import diff_args as restic_diff_args
from pullback.server.config import load_server_config
from pullback.server.guard import GuardLimits, judge, pair
from pullback.server.maintain import HostMaintenance
from tests.helpers.fakes import FakeBackend, fake_context

T0 = dt.datetime(2026, 11, 1, 3, 0, tzinfo=dt.UTC)
ENCRYPTED = Change(
    files_before=5000, changed=4990, removed=3, bytes_before=10**9, bytes_after=10**9
)


@pytest.fixture
def config(tmp_path):
    path = tmp_path / "server.yaml"
    path.write_text(
        f"state_dir: {tmp_path / 'state'}\nretention: {{keep_last: 2}}\nhosts:\n  - name: web1\n"
    )
    return load_server_config(path)


def days(count: int) -> list[Snapshot]:
    return [Snapshot(f"s{i}", T0 + dt.timedelta(days=i), None) for i in range(count)]


@pytest.mark.parametrize(
    ("change", "held"),
    [
        (Change(5000, 60, 5, 10**9, 10**9 + 10**7), False),  # a normal day: 1.3 %
        (ENCRYPTED, True),  # every file rewritten
        (Change(5000, 10, 3000, 10**9, 4 * 10**8), True),  # most files deleted
        (Change(5000, 10, 0, 10**9, 3 * 10**8), True),  # the data shrank by 70 %
        (Change(5000, 2500, 0, 10**9, 10**9), False),  # exactly at the limit: not over it
        (Change(40, 40, 0, 100, 100), False),  # too few files to judge
    ],
)
def test_what_holds_forget(change, held):
    assert (judge(change, GuardLimits()) is not None) is held


def test_only_pullback_s_own_snapshots_are_compared():
    adopted = Snapshot("old", T0, None, adopted=True)
    assert pair([adopted, *days(1)]) is None
    assert pair([*days(3), adopted]) == tuple(days(3)[1:])


def test_an_abnormal_day_holds_forget_until_released(config):
    backend = FakeBackend(snapshot_list=days(4), change=ENCRYPTED)
    result = HostMaintenance(fake_context(config, "web1", backend), 1, verify=False).run()
    assert result.status == Status.FAILED
    assert result.reason.startswith("guard: forget held: snapshot s3 against s2: 100% of 5000")
    assert "pullback-server release web1" in result.reason
    assert [s.id for s in backend.snapshot_list] == ["s0", "s1", "s2", "s3"], "nothing forgotten"
    assert backend.pruned == 0 and backend.checked, "the check still runs"
    status_file.record_maintenance(config.state_dir, [result])

    # the hold outlives later snapshots, normal or not: only release ends it
    backend = FakeBackend(snapshot_list=days(5))
    again = HostMaintenance(fake_context(config, "web1", backend), 1, verify=False).run()
    assert again.reason.startswith("guard: forget held since ")
    assert len(backend.snapshot_list) == 5 and "changes s3 s4" not in backend.events

    # shown: status exits 1 and names it, the metric is 1
    saved = status_file.load_status(config.state_dir)
    assert saved["hosts"]["web1"]["guard_hold"]["snapshot"] == "s3"
    text = metrics.build(config, saved).render()
    assert 'pullback_forget_held{host="web1"} 1' in text

    with pytest.raises(UsageError, match="no host named"):
        release.command(config, argparse.Namespace(hostname="db9"))
    assert release.command(config, argparse.Namespace(hostname="web1")) == 0
    with pytest.raises(UsageError, match="not held"):
        release.command(config, argparse.Namespace(hostname="web1"))
    released = status_file.load_status(config.state_dir)["hosts"]["web1"]
    assert released["guard_released"] == "s3" and "guard_hold" not in released
    assert (
        'pullback_forget_held{host="web1"} 0'
        in metrics.build(config, released and status_file.load_status(config.state_dir)).render()
    )

    # released: the accepted snapshot is not judged again, and forget runs
    backend = FakeBackend(snapshot_list=days(4), change=ENCRYPTED)
    result = HostMaintenance(fake_context(config, "web1", backend), 1, verify=False).run()
    assert result.status == Status.OK, result.reason
    assert [s.id for s in backend.snapshot_list] == ["s2", "s3"]


def test_status_exits_1_while_forget_is_held(config, tmp_path, capsys):
    status_file.record_maintenance(config.state_dir, [])
    saved = status_file.load_status(config.state_dir)
    saved["hosts"]["web1"] = {
        "last_result": "stored",
        "newest_snapshot": iso(utc_now()),
        "guard_hold": {"since": "2026-11-30T03:00:00Z", "snapshot": "s3", "reason": "r9"},
    }
    (config.state_dir / status_file.STATUS_FILE).write_text(json.dumps(saved))
    args = argparse.Namespace(check=False, json=False)
    assert status.command(config.path, args) == 1
    out = capsys.readouterr()
    assert "forget held by the ransomware guard: r9" in out.out
    assert "forget held by the ransomware guard: web1" in out.err


def test_the_guard_can_be_switched_off(tmp_path):
    path = tmp_path / "server.yaml"
    path.write_text(
        f"state_dir: {tmp_path / 'state'}\nretention: {{keep_last: 2}}\n"
        "maintenance: {guard: {enabled: false}}\nhosts:\n  - name: web1\n"
    )
    backend = FakeBackend(snapshot_list=days(4), change=ENCRYPTED)
    context = fake_context(load_server_config(path), "web1", backend)
    result = HostMaintenance(context, 1, verify=False).run()
    assert result.status == Status.OK and len(backend.snapshot_list) == 2


def test_borg_diff_lines_are_counted_as_changed_or_removed():
    lines = [
        b'{"changes": [{"type": "mtime"}], "path": "d"}',
        b'{"changes": [{"added": 50, "removed": 4, "type": "modified"}], "path": "d/f1"}',
        b'{"changes": [{"size": 4, "type": "added"}], "path": "d/f5"}',
        b'{"changes": [{"size": 4, "type": "removed"}], "path": "d/f2"}',
        b"not json",
    ]
    assert count_diff(lines) == (2, 1)
    assert diff_args("web1-a", "web1-b") == ["diff", "--json-lines", "::web1-a", "web1-b"]
    assert restic_diff_args("s1", "s2") == ["diff", "--json", "s1", "s2"]
