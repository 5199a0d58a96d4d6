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
from pullback.server.guard import GuardLimits, baseline, judge, unjudged
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


GB = 10**9


@pytest.mark.parametrize(
    ("change", "held"),
    [
        (Change(5000, 60, 5, GB, GB + 10**7, 10**7), False),  # a normal day: 1.3 %
        (ENCRYPTED, True),  # every file rewritten
        (Change(5000, 10, 3000, GB, 4 * 10**8, 6 * 10**8), True),  # most files deleted
        (Change(5000, 10, 0, GB, 3 * 10**8, 7 * 10**8), True),  # the data shrank by 70 %
        (Change(5000, 2500, 0, GB, GB, GB // 2), False),  # exactly at the limits
        (Change(40, 40, 0, 100, 100, 100), False),  # too few files and bytes to judge
        # few large files: 12 dumps of 50 GB emptied, or 5 of 5000 files with 90 % of
        # the data encrypted (the same sizes): judged by their bytes
        (Change(12, 12, 0, 50 * GB, 1000, 50 * GB), True),
        (Change(5000, 5, 0, 10 * GB, 10 * GB, 9 * GB), True),
    ],
)
def test_what_holds_forget(change, held):
    assert (judge(change, GuardLimits()) is not None) is held


def test_one_comparison_covers_every_day_since_the_last_judged_one():
    """maintain runs weekly, pulls daily: Tuesday's encryption must not hide between two
    encrypted snapshots; the newest is compared with the last one judged normal."""
    week = days(8)
    assert baseline(week, judged="s1") == (week[1], week[7])
    assert baseline(week, judged="s7") is None, "nothing new"
    assert baseline(week, judged=None) == (week[6], week[7])
    assert baseline(week, judged="gone") == (week[6], week[7])
    adopted = Snapshot("old", T0, None, adopted=True)
    partial = Snapshot("p8", T0 + dt.timedelta(days=8), None, failed=("db",))
    assert baseline([adopted, *days(1)], None) is None
    assert baseline([*week, partial], "s1") == (week[1], week[7]), "partial: not judged"


def test_an_abnormal_day_holds_forget_until_released(config):
    context = fake_context(config, "web1", FakeBackend(snapshot_list=days(3)))
    first = HostMaintenance(context, 1, verify=False).run()
    assert first.judged == "s2" and first.status == Status.OK
    status_file.record_maintenance(config.state_dir, [first])

    # a week later: encrypted on the fourth day; compared with s2, the last judged
    backend = FakeBackend(snapshot_list=days(7), change=ENCRYPTED)
    result = HostMaintenance(fake_context(config, "web1", backend), 1, verify=False).run()
    assert "changes s2 s6" in backend.events
    assert result.status == Status.FAILED
    assert result.reason.startswith("guard: forget held: snapshot s6 against s2: 100% of 5000")
    assert "pullback-server release web1" in result.reason
    assert len(backend.snapshot_list) == 7, "nothing forgotten"
    assert backend.pruned == 0 and backend.checked, "the check still runs"
    status_file.record_maintenance(config.state_dir, [result])

    # the hold outlives later snapshots, normal or not
    backend = FakeBackend(snapshot_list=days(8))
    again = HostMaintenance(fake_context(config, "web1", backend), 1, verify=False).run()
    assert again.reason.startswith("guard: forget held since ")
    assert len(backend.snapshot_list) == 8 and not any("changes" in e for e in backend.events)

    # shown: the metric is 1
    saved = status_file.load_status(config.state_dir)
    assert saved["hosts"]["web1"]["guard_hold"]["snapshot"] == "s6"
    assert 'pullback_forget_held{host="web1"} 1' in metrics.build(config, saved).render()

    with pytest.raises(UsageError, match="no host named"):
        release.command(config, argparse.Namespace(hostname="db9"))
    assert release.command(config, argparse.Namespace(hostname="web1")) == 0
    assert release.command(config, argparse.Namespace(hostname="web1")) == 0, "idempotent"
    released = status_file.load_status(config.state_dir)
    assert released["hosts"]["web1"]["guard_judged"] == "s6"
    assert "guard_hold" not in released["hosts"]["web1"]
    assert 'pullback_forget_held{host="web1"} 0' in metrics.build(config, released).render()

    # released: the next comparison starts from the released snapshot, and forget runs
    backend = FakeBackend(snapshot_list=days(8))
    result = HostMaintenance(fake_context(config, "web1", backend), 1, verify=False).run()
    assert "changes s6 s7" in backend.events
    assert result.status == Status.OK, result.reason
    assert [s.id for s in backend.snapshot_list] == ["s6", "s7"]


def test_a_release_rewrites_the_metrics_and_a_copy_needs_a_copy_section(tmp_path):
    """An outside walk: after ``release`` the metric still said 1 (an alert kept firing
    until the next pull), and ``release --copy`` without a copy said "not held", exit 0."""
    metrics_file = tmp_path / "pullback.prom"
    path = tmp_path / "server.yaml"
    path.write_text(
        f"state_dir: {tmp_path / 'state'}\nlock_dir: {tmp_path / 'run'}\n"
        f"metrics_file: {metrics_file}\nhosts:\n  - name: web1\n"
    )
    config = load_server_config(path)
    (tmp_path / "run").mkdir()
    (tmp_path / "state").mkdir()
    hold = {"snapshot": "s6", "since": "2026-12-01T00:00:00Z", "reason": "encrypted"}
    (tmp_path / "state/status.json").write_text(
        json.dumps({"hosts": {"web1": {"guard_hold": hold}}})
    )
    metrics.write(config, status_file.load_status(config.state_dir))
    assert 'pullback_forget_held{host="web1"} 1' in metrics_file.read_text()
    assert release.command(config, argparse.Namespace(hostname="web1")) == 0
    assert 'pullback_forget_held{host="web1"} 0' in metrics_file.read_text()
    with pytest.raises(UsageError, match="has no copy: section: web1 has no copy"):
        release.command(config, argparse.Namespace(hostname="web1", copy=True))


def test_a_snapshot_dated_in_the_future_is_a_hold(config):
    future = dt.datetime.now(dt.UTC) + dt.timedelta(days=365)
    backend = FakeBackend(snapshot_list=[*days(5), Snapshot("f1", future, None)])
    result = HostMaintenance(fake_context(config, "web1", backend), 1, verify=False).run()
    assert result.reason.startswith("guard: forget held: snapshot f1 is dated ")
    assert result.hold is not None and len(backend.snapshot_list) == 6


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
        b'{"changes": [{"type": "mode"}, {"type": "ctime"}], "path": "d/f3"}',
        b'{"changes": [{"added": 50, "removed": 4, "type": "modified"}], "path": "d/f1"}',
        b'{"changes": [{"size": 4, "type": "added"}], "path": "d/f5"}',
        b'{"changes": [{"type": "added directory"}], "path": "d/new"}',
        b'{"changes": [{"size": 7, "type": "removed"}], "path": "d/f2"}',
        b'{"changes": [{"type": "removed directory"}], "path": "d/old"}',
        b"not json",
        # borg 1.2 after a file was fetched whole again (its ctime only): no content change
        b'{"changes": [{"added": 0, "removed": 0, "type": "modified"}], "path": "d/f9"}',
    ]
    assert count_diff(lines) == (1, 2, 11)
    assert diff_args("web1-a", "web1-b") == [
        "diff",
        "--json-lines",
        "::web1-a",
        "web1-b",
    ]
    assert restic_diff_args("s1", "s2") == ["diff", "--json", "s1", "s2"]


def test_a_verdict_says_what_it_did_not_judge():
    """An outside walk read "normal" for a snapshot whose every file changed, below the
    thresholds, and "102% of 50 entries": what is not judged is said, a share is at most
    100%."""
    small = Change(files_before=50, changed=52, removed=0, bytes_before=1 << 20, bytes_after=0)
    assert small.changed_share == 1.0
    limits = GuardLimits()
    assert judge(small, limits) is None
    assert unjudged(small, limits) == (
        "; not judged: the entries (fewer than min_files 100) and the data "
        "(less than min_bytes 64.0 MiB)"
    )
    big = Change(files_before=500, changed=1, removed=0, bytes_before=1 << 30, bytes_after=0)
    assert unjudged(big, limits) == ""


def test_partial_snapshots_since_the_last_complete_one_make_forget_wait(config):
    """A client whose dumps fail (as ransomware breaks them) stores partial snapshots the
    guard does not judge: forget must not run past them (it would keep only those)."""
    partial = [Snapshot(f"p{i}", T0 + dt.timedelta(days=5 + i), None, ("db",)) for i in range(2)]
    backend = FakeBackend(snapshot_list=[*days(5), *partial], change=ENCRYPTED)
    result = HostMaintenance(fake_context(config, "web1", backend), 1, verify=False).run()
    assert result.status == Status.OK, result.reason
    steps = {s.name: s.detail for s in result.steps}
    assert "2 partial snapshot(s) since the newest complete one (p0, p1)" in steps["guard"]
    assert steps["forget"].startswith("not run"), steps
    assert len(backend.snapshot_list) == 7, "nothing forgotten"


def test_a_damaged_status_file_holds_forget_until_looked_at(config):
    state = config.state_dir
    state.mkdir(parents=True)
    (state / "status.json").write_text("{not json")
    assert status_file.load_status(state) == {"hosts": {}}
    assert (state / "status.json.damaged").read_text() == "{not json", "kept, not lost"
    backend = FakeBackend(snapshot_list=days(5))
    result = HostMaintenance(fake_context(config, "web1", backend), 1, verify=False).run()
    assert result.status == Status.FAILED
    assert "status.json.damaged is there" in result.reason
    assert len(backend.snapshot_list) == 5
    (state / "status.json.damaged").unlink()
    result = HostMaintenance(fake_context(config, "web1", backend), 1, verify=False).run()
    assert result.status == Status.OK, result.reason


def test_a_missing_repository_where_snapshots_were_stored_is_a_failure_not_a_skip(config):
    from pullback.server.backends import RepositoryMissing

    class Gone(FakeBackend):
        def prepare(self, create=True):
            raise RepositoryMissing("the restic repository /typo/web1 does not exist")

    result = HostMaintenance(fake_context(config, "web1", Gone()), 1, verify=False).run()
    assert result.status == Status.SKIPPED, "a host never stored: nothing to maintain"
    config.state_dir.mkdir(parents=True, exist_ok=True)
    (config.state_dir / "status.json").write_text(
        json.dumps({"hosts": {"web1": {"newest_snapshot": iso(utc_now())}}})
    )
    result = HostMaintenance(fake_context(config, "web1", Gone()), 1, verify=False).run()
    assert result.status == Status.FAILED
    assert "this host was pulled before" in result.reason
    assert "does not exist: is backend.repository_root" in result.reason
