"""What a borg split role's outside test found in words (helper-83): the guard's record
and comparison of the snapshots it saw, a store's own error said (not the last line of
its platform report), a wrong password that may be a changed key, a snapshot dated ahead
shown as such."""

from __future__ import annotations

import dataclasses
import datetime as dt
import re

import pytest

from pullback.common.errors import CommandError
from pullback.server import guard
from pullback.server.backends import BackendError, Snapshot

NOW = dt.datetime(2026, 12, 4, 12, 0, tzinfo=dt.UTC)


def snap(name: str, days_ago: float, fingerprint: str = "") -> Snapshot:
    return Snapshot(name, NOW - dt.timedelta(days=days_ago), None, fingerprint=fingerprint)


def test_the_guard_records_what_it_saw_and_names_what_changed_behind_it():
    saw = [snap("web1-a", 3, "1" * 64), snap("web1-b", 2, "2" * 64), snap("web1-c", 1, "3" * 64)]
    record = guard.seen(saw, NOW)
    assert record["newest"] == "2026-12-03T12:00:00Z"
    assert record["snapshots"] == {"web1-a": "1" * 16, "web1-b": "2" * 16, "web1-c": "3" * 16}

    # the same, or newer ones added (a pull), or ones this machine forgot (not recorded)
    assert guard.tampered(record, saw) is None
    assert guard.tampered(record, [*saw, snap("web1-d", 0)]) is None
    assert guard.tampered(None, []) is None and guard.tampered({"x": 1}, []) is None

    # deleted, rewritten (recreate: another id under the name), and one dated back
    now = [snap("web1-a", 3, "1" * 64), snap("web1-b", 2, "9" * 64), snap("web1-z", 60)]
    said = guard.tampered(record, now)
    assert said is not None
    assert "1 snapshot(s) seen at the last maintenance are gone: web1-c" in said
    assert "1 snapshot(s) appeared dated before the newest one seen then" in said
    assert "2026-12-03 12:00 UTC" in said and "web1-z" in said
    assert "1 snapshot(s) were rewritten under the same name (another archive id): web1-b" in said

    # restic: the id is the content, no fingerprint; many gone are counted, 5 named
    record = guard.seen([snap(f"s{i}", 10 - i) for i in range(9)], NOW)
    said = guard.tampered(record, [snap("s8", 2)])
    assert said == (
        "8 snapshot(s) seen at the last maintenance are gone: s0, s1, s2, s3, s4 and 3 more"
    )


@pytest.fixture
def borg(tmp_path):
    from pullback.common.log import get_logger
    from pullback.common.runner import Runner
    from pullback.server.backends import make_backend
    from tests.helpers.status_servers import one_host_config

    config = one_host_config(tmp_path)
    backend = dataclasses.replace(config.backend, type="borg")
    return make_backend(backend, config.host("web1"), config.state_dir, Runner(get_logger("t")), 1)


FULL_STORE = [
    "OSError: [Errno 28] No space left on device",
    "",
    "Borg server: Platform: Linux vm 6.18.44 #1 SMP PREEMPT_DYNAMIC @0 x86_64",
    "Borg server: Linux: Unknown Linux  ",
    "Borg server: Borg: 1.2.4  Python: CPython 3.11.2 msgpack: 1.0.3",
    "Borg server: PID: 28303  CWD: /root",
    "Borg server: sys.argv: ['/usr/bin/borg', 'serve', '--append-only']",
    "Borg server: SSH_ORIGINAL_COMMAND: 'borg serve'",
    "Platform: Linux vm 6.18.44 #1 SMP PREEMPT_DYNAMIC @0 x86_64",
    "Linux: Unknown Linux  ",
    "Borg: 1.2.4  Python: CPython 3.11.2 msgpack: 1.0.3 fuse: None",
    "PID: 28247  CWD: /tmp",
    "sys.argv: ['/usr/bin/borg', 'create']",
    "SSH_ORIGINAL_COMMAND: None",
    "",
]


def test_a_stores_own_error_is_said_not_its_platform_report(borg):
    said = borg.said(CommandError("borg", 2, FULL_STORE))
    assert said == "OSError: [Errno 28] No space left on device"
    local = ["borg.locking.LockFailed: Failed to create/acquire the lock x (Read-only)", ""]
    local += FULL_STORE[8:]
    assert borg.said(CommandError("borg", 2, local)) == (
        "Failed to create/acquire the lock x (Read-only)"
    )


def test_a_wrong_borg_password_names_a_changed_key_and_the_way_back(borg):
    borg.password_file.write_text("secret\n")
    wrong = CommandError(
        "borg",
        2,
        [
            "passphrase supplied in BORG_PASSPHRASE, by BORG_PASSCOMMAND or via "
            "BORG_PASSPHRASE_FD is incorrect."
        ],
    )
    found = borg.explain(wrong)
    assert isinstance(found, BackendError)
    said = str(found)
    assert said.startswith("wrong password for the borg repository ")
    assert f"(password_file {borg.password_file}, last changed " in said
    assert "either that file does not hold this repository's password" in said
    assert "borg key change-passphrase" in said and "append-only key" in said
    assert "`borg key export` copy (borg key import)" in said
    assert "Rolling a borg repository back" in said


def test_a_snapshot_dated_ahead_shows_its_age_as_ahead():
    from pullback.server.snapshots import render

    ahead = Snapshot("web1-20270601T000000Z", dt.datetime.now(dt.UTC) + dt.timedelta(days=2), None)
    past = Snapshot("web1-1", dt.datetime.now(dt.UTC) - dt.timedelta(hours=3), None)
    table = render([past, ahead], as_json=False)
    assert re.search(r"web1-20270601T000000Z .* [12]d\d\dh ahead ", table), table
    assert re.search(r"web1-1 .* [23]h\d\dm ago ", table), table
    assert not re.search(r" -\d", table), table  # it read "-172799s"


@pytest.fixture
def borg_config(tmp_path):
    from pullback.server.config import load_server_config

    path = tmp_path / "server.yaml"
    path.write_text(
        f"state_dir: {tmp_path / 'state'}\nbackend: {{type: borg}}\n"
        "retention: {keep_last: 2}\nhosts:\n  - name: web1\n"
    )
    return load_server_config(path)


def test_a_future_archive_is_said_with_borgs_own_commands(borg_config):
    from pullback.server.maintain import HostMaintenance
    from tests.helpers.fakes import FakeBackend, fake_context

    ahead = snap("web1-20270601T000000Z", -200)
    backend = FakeBackend(snapshot_list=[snap("web1-a", 2), ahead])
    result = HostMaintenance(fake_context(borg_config, "web1", backend), 1, verify=False).run()
    assert "borg delete ::web1-20270601T000000Z, with BORG_REPO=memory" in result.reason
    assert "BORG_RSH and BORG_PASSCOMMAND exported as docs/restore.md shows" in result.reason
    assert "restic" not in result.reason


def test_a_deleted_snapshot_holds_forget_and_prune_until_released(borg_config):
    """Through the fake: a snapshot deleted behind the guard's back holds forget and
    prune (the next run too); release accepts the snapshots as they are."""
    import argparse

    from pullback.common.outcome import Status
    from pullback.server import release, status_file
    from pullback.server.maintain import HostMaintenance
    from tests.helpers.fakes import FakeBackend, fake_context

    state = borg_config.state_dir
    listed = [snap(f"web1-{i}", 5 - i) for i in range(4)]

    def run(snapshots: list[Snapshot]):
        backend = FakeBackend(snapshot_list=list(snapshots))
        result = HostMaintenance(fake_context(borg_config, "web1", backend), 1, verify=False)
        done = result.run()
        status_file.record_maintenance(state, [done])
        return done, backend

    first, backend = run(listed)
    assert first.status == Status.OK and first.forgotten == 2 and backend.pruned == 1
    kept = backend.snapshot_list  # web1-2, web1-3
    recorded = status_file.read_status(state)["hosts"]["web1"]["guard_seen"]
    assert set(recorded["snapshots"]) == {"web1-2", "web1-3"}
    assert recorded["forgotten"] == ["web1-0", "web1-1"]

    # web1-3 deleted by another hand, two new ones pulled: nothing forgotten or pruned
    now = [kept[0], snap("web1-4", 0.5), snap("web1-5", 0.2)]
    held, backend = run(now)
    assert held.status == Status.FAILED and held.hold and held.hold["kind"] == "tampered"
    assert "1 snapshot(s) seen at the last maintenance are gone: web1-3" in held.reason
    assert len(backend.snapshot_list) == 3 and backend.pruned == 0
    again, backend = run(now)
    assert "forget held since" in again.reason and backend.pruned == 0

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("pullback.server.outputs.publish", lambda config: (None, []))
        patch.setattr("pullback.server.outputs.record_problems", lambda config, found: None)
        release.command(borg_config, argparse.Namespace(hostname="web1", copy=False))
    assert "guard_seen" not in status_file.read_status(state)["hosts"]["web1"]
    after, backend = run(now)
    assert after.status == Status.OK and after.forgotten == 1 and backend.pruned == 1


def test_the_pull_server_says_its_newest_snapshot_is_gone(tmp_path):
    from pullback.common.outcome import Status
    from pullback.server import status_file
    from pullback.server.config import load_server_config
    from pullback.server.maintain import HostMaintenance
    from tests.helpers.fakes import FakeBackend, fake_context

    path = tmp_path / "server.yaml"
    path.write_text(
        f"state_dir: {tmp_path / 'state'}\nmaintenance: {{forget: false}}\nhosts:\n  - name: web1\n"
    )
    config = load_server_config(path)
    listed = [snap("s1", 2), snap("s2", 1)]
    config.state_dir.mkdir(parents=True)
    (config.state_dir / status_file.STATUS_FILE).write_text(
        '{"hosts": {"web1": {"newest_snapshot": "2026-12-03T12:00:00Z", "snapshot_id": "s2"}}}'
    )
    result = HostMaintenance(
        fake_context(config, "web1", FakeBackend(snapshot_list=listed)), 1, verify=False
    ).run()
    assert result.status == Status.OK, result.reason
    result = HostMaintenance(
        fake_context(config, "web1", FakeBackend(snapshot_list=listed[:1])), 1, verify=False
    ).run()
    assert result.status == Status.FAILED
    assert "history: the newest snapshot this server stored (s2, of 2026-12-03T12:00:00Z)" in (
        result.reason
    )
    assert "the newest now is of 2026-12-02T12:00:00Z" in result.reason


def test_a_forget_that_fails_and_a_listing_that_fails_keep_the_guards_record(borg_config):
    """The whole diff read again: when forget failed part way and the snapshots could not
    be listed again, the record of what the guard saw was dropped (``{}``), not kept, so
    the next maintenance had nothing to compare and missed what was deleted meanwhile."""
    from pullback.common.errors import PullbackError
    from pullback.server import status_file
    from pullback.server.maintain import HostMaintenance
    from tests.helpers.fakes import FakeBackend, fake_context

    state = borg_config.state_dir
    listed = [snap(f"web1-{i}", 5 - i) for i in range(4)]

    class Failing(FakeBackend):
        def forget(self, policy, before_removing=None):
            self.fail_snapshots = PullbackError("the store went away")
            raise PullbackError("forget failed part way")

    first = HostMaintenance(
        fake_context(borg_config, "web1", FakeBackend(snapshot_list=listed)), 1, verify=False
    )
    status_file.record_maintenance(state, [first.run()])
    before = status_file.read_status(state)["hosts"]["web1"]["guard_seen"]
    backend = Failing(snapshot_list=list(listed[2:]))
    second = HostMaintenance(fake_context(borg_config, "web1", backend), 1, verify=False).run()
    status_file.record_maintenance(state, [second])
    assert status_file.read_status(state)["hosts"]["web1"].get("guard_seen") == before
