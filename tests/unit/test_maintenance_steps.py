"""Maintenance and the restore drill, step by step, over a repository in memory.

The integration tier runs the same steps on real restic and borg repositories
(tests/integration/test_maintenance.py); here every rule runs in milliseconds.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os

import pytest

from pullback.common.errors import ConfigError, UsageError
from pullback.common.outcome import Status
from pullback.server.backends import BackendError, Snapshot
from pullback.server.config import load_server_config
from pullback.server.drill import DrillChoice, DrillResult, check_tree, drill
from pullback.server.maintain import HostMaintenance
from tests.helpers.fakes import FakeBackend, fake_context

DAY = dt.timedelta(days=1)
T0 = dt.datetime(2026, 11, 1, 3, 0, tzinfo=dt.UTC)


@pytest.fixture
def config(tmp_path):
    path = tmp_path / "server.yaml"
    path.write_text(
        f"state_dir: {tmp_path / 'state'}\n"
        "retention: {keep_daily: 3}\n"
        "maintenance: {check_subsets: 4}\n"
        "hosts:\n  - name: web1\n"
    )
    return load_server_config(path)


def daily(count: int) -> list[Snapshot]:
    return [Snapshot(f"s{i}", T0 + i * DAY, None) for i in range(count)]


def test_a_host_without_a_repository_is_skipped(config):
    result = HostMaintenance(fake_context(config, "web1", FakeBackend(missing=True)), 1).run()
    assert result.status == Status.SKIPPED
    assert [(s.name, s.ok) for s in result.steps] == [("repository", True)]


def test_forget_by_policy_then_prune_check_size_and_no_drill_when_asked(config):
    backend = FakeBackend(snapshot_list=daily(5))
    result = HostMaintenance(fake_context(config, "web1", backend), 3, verify=False).run()
    assert result.status == Status.OK
    assert [s.name for s in result.steps] == [
        "locks",
        "guard",
        "forget",
        "prune",
        "check",
        "size",
        "drill",
    ]
    assert result.forgotten == 2 and [s.id for s in backend.snapshot_list] == ["s2", "s3", "s4"]
    assert (backend.pruned, backend.checked, result.repository_size) == (1, [(3, 4)], 4096)
    assert result.steps[-1].detail == "not due yet"


def test_prune_and_check_can_be_switched_off_and_check_options_pass_through(tmp_path):
    path = tmp_path / "server.yaml"
    path.write_text(
        f"state_dir: {tmp_path / 'state'}\n"
        "retention: {keep_daily: 3}\n"
        "maintenance: {prune: false, check_options: [--with-cache]}\n"
        "hosts:\n  - name: web1\n"
    )
    config = load_server_config(path)
    backend = FakeBackend(snapshot_list=daily(5))
    result = HostMaintenance(fake_context(config, "web1", backend), 1, verify=False).run()
    assert result.forgotten == 2 and backend.pruned == 0
    assert ("prune", "not run: maintenance.prune is false: the space stays taken") in [
        (s.name, s.detail) for s in result.steps
    ]
    assert backend.checked == [(1, 8, "--with-cache")]
    path.write_text(path.read_text().replace("prune: false", "check: false"))
    backend = FakeBackend(snapshot_list=daily(5))
    result = HostMaintenance(
        fake_context(load_server_config(path), "web1", backend), 1, verify=False
    ).run()
    assert backend.pruned == 1 and backend.checked == []
    assert ("check", "not run: maintenance.check is false") in [
        (s.name, s.detail) for s in result.steps
    ]


def test_forget_can_be_switched_off_on_a_pull_server_of_split_roles(tmp_path):
    path = tmp_path / "server.yaml"
    path.write_text(
        f"state_dir: {tmp_path / 'state'}\n"
        "retention: {keep_daily: 3}\n"
        "maintenance: {forget: false}\n"
        "hosts:\n  - name: web1\n"
    )
    backend = FakeBackend(snapshot_list=daily(5))
    context = fake_context(load_server_config(path), "web1", backend)
    result = HostMaintenance(context, 1, verify=False).run()
    assert result.status == Status.OK and len(backend.snapshot_list) == 5
    assert [(s.name, s.detail) for s in result.steps][1] == (
        "forget",
        "not run: maintenance.forget is false (another machine forgets)",
    )
    assert backend.pruned == 0 and backend.checked == [(1, 8)]


def test_a_snapshot_dated_in_the_future_holds_forget_without_the_guard_too(tmp_path):
    """restic's keep_within counts from the newest snapshot: one dated a year ahead (not
    made by pullback's pulls, which refuse such archives) would forget real history."""
    path = tmp_path / "server.yaml"
    path.write_text(
        f"state_dir: {tmp_path / 'state'}\nretention: {{keep_daily: 3}}\n"
        "maintenance: {guard: {enabled: false}}\nhosts:\n  - name: web1\n"
    )
    future = dt.datetime.now(dt.UTC) + dt.timedelta(days=365)
    backend = FakeBackend(snapshot_list=[*daily(5), Snapshot("f1", future, None)])
    context = fake_context(load_server_config(path), "web1", backend)
    result = HostMaintenance(context, 1, verify=False).run()
    assert result.status == Status.FAILED
    assert result.reason.startswith("forget: not run: snapshot f1 is dated ")
    assert len(backend.snapshot_list) == 6 and backend.pruned == 0


def test_nothing_forgotten_means_no_prune(config):
    backend = FakeBackend(snapshot_list=daily(2))
    result = HostMaintenance(fake_context(config, "web1", backend), 1, verify=False).run()
    assert "prune" not in [s.name for s in result.steps] and backend.pruned == 0


def test_a_failed_step_fails_the_host_and_the_others_still_run(config):
    backend = FakeBackend(snapshot_list=daily(2), fail_check=BackendError("pack 1f2e is damaged"))
    result = HostMaintenance(fake_context(config, "web1", backend), 1, verify=False).run()
    assert result.status == Status.FAILED
    assert result.reason == "check: pack 1f2e is damaged"
    assert [s.name for s in result.steps][-2:] == ["size", "drill"]


def _tree(root, files: dict[str, bytes]) -> None:
    lines = []
    for name, data in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        lines.append(f"{hashlib.sha256(data).hexdigest()}  {name}\n")
    (root / "MANIFEST.sha256").write_text("".join(lines))


def test_the_drill_restores_and_proves_every_file(config, tmp_path):
    tree = tmp_path / "snapshot"
    _tree(tree, {"services/app/files/a": b"alpha", "services/app/files/b": b"beta"})
    backend = FakeBackend(snapshot_list=[Snapshot("s1", T0, "20261101T030000Z")])
    backend.trees["s1"] = tree
    result = drill(fake_context(config, "web1", backend))
    assert result.ok, result.problems
    assert (result.files_checked, result.bytes_checked) == (2, 9)
    assert not (config.scratch_dir() / "web1").exists()  # the scratch space is cleaned


def test_the_drill_names_what_is_changed_missing_or_unlisted(tmp_path):
    _tree(tmp_path, {"services/app/files/a": b"alpha", "services/app/files/b": b"beta"})
    (tmp_path / "services/app/files/a").write_bytes(b"ALPHA")
    (tmp_path / "services/app/files/b").unlink()
    (tmp_path / "services/app/files/c").write_bytes(b"stray")
    result = DrillResult("web1")
    check_tree(tmp_path, result)
    assert result.problems == [
        "changed: services/app/files/a",
        "missing: services/app/files/b",
        "not in the manifest: services/app/files/c",
    ]


def test_the_drill_names_a_line_listed_outside_services(tmp_path):
    """A snapshot's manifest lists files below services/ only; one listing more is not
    the tree's (``sha256sum --check`` of the snapshot fails): an outside attack saw the
    drill pass it."""
    _tree(tmp_path, {"services/app/files/a": b"alpha"})
    manifest = tmp_path / "MANIFEST.sha256"
    extra = hashlib.sha256(b"x").hexdigest()
    manifest.write_bytes(
        f"{extra}  etc/shadow\n".encode() + manifest.read_bytes() + f"{extra}  zz\n".encode()
    )
    result = DrillResult("web1")
    check_tree(tmp_path, result)
    assert result.problems == [
        "listed outside services/: etc/shadow",
        "listed outside services/: zz",
    ]
    assert result.files_checked == 1


def test_the_drill_takes_a_fifo_or_a_symlink_for_what_it_is(tmp_path):
    """The manifest lists regular files; a FIFO or a symlink that was backed up is not
    "not in the manifest" (an outside test had every drill of a tree with a FIFO fail)."""
    _tree(tmp_path, {"services/app/files/a": b"alpha"})
    os.mkfifo(tmp_path / "services/app/files/fifo")
    (tmp_path / "services/app/files/link").symlink_to("a")
    (tmp_path / "services/app/files/stray").write_bytes(b"stray")
    result = DrillResult("web1")
    check_tree(tmp_path, result)
    assert result.problems == ["not in the manifest: services/app/files/stray"]
    assert result.files_checked == 1


def test_the_drills_problems_escape_names_and_count_past_a_thousand(tmp_path):
    """A snapshot's names are its client's words: a newline or an escape sequence in one
    is shown escaped, and a tree where everything differs names 1000 files and counts
    the rest on one line (memory and words bounded)."""
    from pullback.server.drill import NAMED

    (tmp_path / "services/app").mkdir(parents=True)
    (tmp_path / "MANIFEST.sha256").write_bytes(b"")
    (tmp_path / "services/app/evil\n\x1b[2Jname").write_bytes(b"x")
    for number in range(NAMED + 49):
        (tmp_path / f"services/app/f{number:05}").write_bytes(b"x")
    result = DrillResult("web1")
    check_tree(tmp_path, result)
    assert len(result.problems) == NAMED + 1
    assert result.problems[-1] == "and 50 more differ from the MANIFEST.sha256 or the TREE.list"
    evil = [p for p in result.problems if "evil" in p]
    assert evil and "\n" not in evil[0] and "\x1b" not in evil[0], evil


def test_a_drill_ends_at_host_timeout(config, tmp_path):
    import dataclasses
    import time

    from pullback.common.errors import PullbackError

    class SlowBackend(FakeBackend):
        def restore(self, snapshot, target, includes):  # a restore that would take hours
            if not context.cancel.wait(60):
                raise AssertionError("the deadline never came")
            raise PullbackError("restic restore: cancelled")

    backend = SlowBackend(snapshot_list=[Snapshot("s1", T0, "20261101T030000Z")])
    context = fake_context(dataclasses.replace(config, host_timeout=0.3), "web1", backend)
    started = time.monotonic()
    result = drill(context)
    assert time.monotonic() - started < 5
    assert not result.ok
    assert result.problems[-1] == "the drill was stopped at host_timeout (0s)"


def test_a_drill_without_snapshots_before_the_first_pull_has_nothing_to_drill(config):
    result = drill(fake_context(config, "web1", FakeBackend()))
    assert (result.ok, result.failed, result.problems) == (False, False, [])
    assert result.summary == "nothing to drill yet: no pullback snapshot"


def test_a_drill_without_snapshots_of_a_host_that_stored_one_fails_in_words(config):
    from pullback.server import status_file

    config.state_dir.mkdir(parents=True, exist_ok=True)
    # (a time as status.json holds it: a date alone is left out as the file is read)
    entry = {"snapshot_id": "0123abcd", "last_success": "2026-11-01T03:00:00Z"}
    (config.state_dir / status_file.STATUS_FILE).write_text(json.dumps({"hosts": {"web1": entry}}))
    result = drill(fake_context(config, "web1", FakeBackend()))
    assert result.failed and result.summary.startswith(
        "the drill FAILED: no pullback snapshot to restore, though snapshot 0123abcd was "
        "stored (2026-11-01T03:00:00Z): were they forgotten"
    )


def _named_tree(root, names: list[bytes]) -> None:
    """Files of the byte names ``names`` below ``root`` (each holding its name) and the
    manifest ``sha256sum`` writes of them (names that are not UTF-8 or hold a newline)."""
    import subprocess

    for name in names:
        path = os.path.join(os.fsencode(root), name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as handle:
            handle.write(name)
    manifest = subprocess.run(
        ["sha256sum", "--", *names], cwd=root, capture_output=True, check=True
    ).stdout
    (root / "MANIFEST.sha256").write_bytes(manifest)


@pytest.mark.parametrize("service", ["app", None])
def test_the_proof_command_checks_every_name_in_any_locale(tmp_path, service):
    import os
    import subprocess

    from pullback.server.restore import proof_command

    names = [b"services/app/files/caf\xe9", b"services/app/files/plain", b"services/app/new\nline"]
    _named_tree(tmp_path, names)
    env = {**os.environ, "LC_ALL": "C.UTF-8"}  # what an administrator's shell has
    proof = subprocess.run(
        ["sh", "-c", proof_command(service)], cwd=tmp_path, env=env, capture_output=True
    )
    assert proof.returncode == 0, proof.stderr
    assert proof.stdout.count(b": OK") == 3
    with open(os.path.join(os.fsencode(tmp_path), names[0]), "wb") as handle:
        handle.write(b"damaged")
    failed = subprocess.run(
        ["sh", "-c", proof_command(service)], cwd=tmp_path, env=env, capture_output=True
    )
    assert failed.returncode == 1 and b"FAILED" in failed.stdout


def test_the_proof_command_takes_a_service_name_literally(tmp_path):
    import subprocess

    from pullback.server.restore import proof_command

    for name in ("services/web.1/a", "services/web-1/b"):
        (tmp_path / name).parent.mkdir(parents=True)
        (tmp_path / name).write_text(name)
    manifest = subprocess.run(
        ["sha256sum", "services/web.1/a", "services/web-1/b"],
        cwd=tmp_path,
        capture_output=True,
        check=True,
    ).stdout
    (tmp_path / "MANIFEST.sha256").write_bytes(manifest)
    (tmp_path / "services/web-1/b").unlink()  # another service, not restored
    proof = subprocess.run(
        ["sh", "-c", proof_command("web.1")], cwd=tmp_path, capture_output=True, text=True
    )
    assert (proof.returncode, proof.stdout) == (0, "services/web.1/a: OK\n"), proof.stderr


@pytest.mark.parametrize(
    ("setting", "value"),
    [
        ("maintenance: {check_options: [--read-data]}", "--read-data"),
        ("maintenance: {check_options: ['--read-data-subset=10%']}", "--read-data-subset=10%"),
        ("maintenance: {check_options: [--repo, /elsewhere]}", "--repo"),
        ("maintenance: {check_options: [-r/elsewhere]}", "-r/elsewhere"),
        ("backend: {backup_options: [--password-command, 'sh -c x']}", "--password-command"),
        ("backend: {backup_options: ['--option=sftp.command=x']}", "--option=sftp.command=x"),
        ("backend: {backup_options: [-qr, /elsewhere]}", "-qr"),
        ("backend: {backup_options: [--host, other]}", "--host"),
        ("backend: {backup_options: ['--time=2020-01-01']}", "--time=2020-01-01"),
        ("backend: {backup_options: [--files-from, /etc/shadow]}", "--files-from"),
    ],
)
def test_options_that_would_change_the_repository_or_the_check_are_refused(
    tmp_path, setting, value
):
    path = tmp_path / "server.yaml"
    path.write_text(f"state_dir: {tmp_path}\n{setting}\nhosts:\n  - name: web1\n")
    with pytest.raises(ConfigError) as caught:
        load_server_config(path)
    assert f"got {value!r}" in str(caught.value)


@pytest.mark.parametrize(
    "picked",
    [
        b"services/app/files/new\nline",  # an escaped manifest line
        b"services/app/files/plain",
        b"services/app/files",  # a directory: every line below it
        b"services/app/back\\slash",  # escaped lines below it: the whole manifest
    ],
)
def test_the_path_proof_checks_what_the_path_holds(tmp_path, picked):
    """``restore --path``'s proof line (found by a newcomer: it checked a manifest the
    restore had not brought). Run as printed, from anywhere (its ``cd`` is quoted: the
    target here has a space), it passes, and fails once a file there is damaged."""
    import subprocess

    from pullback.server.restore import RestoreRequest, next_steps

    target = tmp_path / "a restore"
    names = [
        b"services/app/files/caf\xe9",
        b"services/app/files/plain",
        b"services/app/files/new\nline",
        b"services/app/back\\slash/f",
    ]
    _named_tree(target, names)
    request = RestoreRequest("web1", target, path=os.fsdecode(picked))
    steps = next_steps(request, Snapshot("s1", T0, "20261101T030000Z"), "web1")
    (line,) = [x for x in steps.splitlines() if x.startswith("prove it byte for byte:")]
    command = line.split(":", 1)[1].strip()
    env = {**os.environ, "LC_ALL": "C.UTF-8"}
    proof = subprocess.run(["sh", "-c", command], cwd=tmp_path, env=env, capture_output=True)
    assert proof.returncode == 0, (command, proof.stdout, proof.stderr)
    damaged = picked if picked in names else next(n for n in names if n.startswith(picked))
    with open(os.path.join(os.fsencode(target), damaged), "wb") as handle:
        handle.write(b"damaged")
    failed = subprocess.run(["sh", "-c", command], cwd=tmp_path, env=env, capture_output=True)
    assert failed.returncode == 1 and b"FAILED" in failed.stdout, command


def test_a_path_that_is_not_utf8_is_refused_before_the_repository_opens(tmp_path):
    """restic's and borg's arguments are text: it was an internal error (an outside
    test), it is a usage error naming the way round."""
    from pullback.common.errors import UsageError
    from pullback.server.restore import RestoreRequest

    request = RestoreRequest("web1", tmp_path, path=os.fsdecode(b"services/app/caf\xe9"))
    with pytest.raises(UsageError, match="is not UTF-8: restore its service"):
        request.includes()


def test_a_signal_in_a_forced_restore_undoes_it(config, tmp_path, monkeypatch):
    """SIGTERM (systemd, kill) in the middle of ``restore --force``: what the restore
    wrote goes and what it set aside comes back, as on any failure (an outside attack
    found the target half restored and the operator's files in a directory nobody named).
    The backend stands in for restic: it writes part of the tree, then a real SIGTERM
    arrives (without the restore's signal handler it would end this test's process,
    which fails the test as loudly)."""
    import signal
    import time

    from pullback.common.errors import Interrupted
    from pullback.server import restore as server_restore
    from pullback.server.restore import RestoreRequest
    from tests.helpers.tree import snapshot

    tree = tmp_path / "snapshot"
    _tree(tree, {"services/app/files/a": b"alpha", "services/app/files/b": b"beta"})
    backend = FakeBackend(snapshot_list=[Snapshot("s1", T0, "20261101T030000Z")])
    backend.trees["s1"] = tree

    def cut_short(snapshot, target, includes):
        (target / "services/app/files").mkdir(parents=True)
        (target / "services/app/files/a").write_bytes(b"al")
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)  # (the handler raises Interrupted here)

    monkeypatch.setattr(backend, "restore", cut_short)
    monkeypatch.setattr(
        server_restore.HostContext, "open", lambda cfg, host: fake_context(cfg, "web1", backend)
    )
    target = tmp_path / "target"
    _tree(target, {"services/app/files/a": b"edited", "services/app/files/mine": b"mine"})
    (target / "NOTES.txt").write_text("the operator's\n")
    before = snapshot(target)
    with pytest.raises(Interrupted):
        server_restore.restore(config, RestoreRequest("web1", target, force=True))
    assert snapshot(target) == before


def _s1_failed_its_drill(config, tmp_path) -> FakeBackend:
    """Two snapshots, s1 and s2 (newest), and status.json saying s1's drill failed."""
    from pullback.server import status_file

    for name in ("s1", "s2"):
        _tree(tmp_path / name, {"services/app/files/a": name.encode()})
    backend = FakeBackend(
        snapshot_list=[Snapshot("s1", T0, "20261101T030000Z"), Snapshot("s2", T0 + DAY, None)]
    )
    backend.trees.update(s1=tmp_path / "s1", s2=tmp_path / "s2")
    bad = DrillResult("web1", ok=False, snapshot_id="s1", problems=["changed: a"])
    status_file.record_drills(config.state_dir, [bad])
    return backend


def test_a_snapshot_whose_drill_failed_is_drilled_again_before_the_newest(config, tmp_path):
    from pullback.server import status_file

    backend = _s1_failed_its_drill(config, tmp_path)
    result = drill(fake_context(config, "web1", backend))
    assert (result.snapshot_id, result.failed_before, result.ok) == ("s1", "s1", True)
    status_file.record_drills(config.state_dir, [result])
    assert drill(fake_context(config, "web1", backend)).snapshot_id == "s2", "then the newest"
    status_file.record_drills(config.state_dir, [DrillResult("web1", snapshot_id="s0")])
    result = drill(fake_context(config, "web1", backend))  # s0 is forgotten: its failure ends
    assert (result.snapshot_id, result.failed_before_gone) == ("s2", True)


def test_a_copys_drill_is_not_steered_by_the_primarys_failed_snapshot(config, tmp_path):
    from pullback.server.backends import Role

    backend = _s1_failed_its_drill(config, tmp_path)
    backend.role = Role.COPY  # type: ignore[attr-defined]
    result = drill(fake_context(config, "web1", backend))
    assert (result.snapshot_id, result.failed_before) == ("s2", None)


def test_a_named_snapshot_is_drilled_whatever_failed_before(config, tmp_path):
    backend = _s1_failed_its_drill(config, tmp_path)
    result = drill(fake_context(config, "web1", backend), DrillChoice(snapshot="s2"))
    assert (result.snapshot_id, result.ok) == ("s2", True)
    by_stamp = drill(fake_context(config, "web1", backend), DrillChoice("20261101T030000Z"))
    assert by_stamp.snapshot_id == "s1"


@pytest.mark.parametrize("wanted", ["s", "s9", "", "x" * 500])
def test_a_name_that_is_no_single_snapshot_is_a_usage_error(config, tmp_path, wanted):
    backend = _s1_failed_its_drill(config, tmp_path)
    with pytest.raises(UsageError) as info:
        drill(fake_context(config, "web1", backend), DrillChoice(snapshot=wanted))
    assert str(info.value).startswith("no single snapshot ")
    assert str(info.value).endswith("of web1; see pullback-server snapshots web1")
    assert len(str(info.value)) < 200, "a long name is cut"


def test_an_adopted_snapshot_is_not_drilled_by_name(config, tmp_path):
    backend = FakeBackend(snapshot_list=[Snapshot("a1", T0, "20261101_030000", adopted=True)])
    with pytest.raises(UsageError, match="adopted from backup-suite"):
        drill(fake_context(config, "web1", backend), DrillChoice(snapshot="a1"))


def test_a_named_snapshot_needs_exactly_one_host(tmp_path):
    from pullback.server.verify import verify

    path = tmp_path / "server.yaml"
    path.write_text(f"state_dir: {tmp_path / 'state'}\nhosts:\n  - name: web1\n  - name: web2\n")
    with pytest.raises(UsageError, match="give that host with --host"):
        verify(load_server_config(path), None, DrillChoice(snapshot="s1"))


def test_damage_the_groups_check_found_fails_every_host_of_the_group(tmp_path):
    """An outside review: a group's check runs with its last host only, and damage it
    found showed on that host's row alone, while every host's snapshots are there."""
    from pullback.server import status_file
    from pullback.server.fleet_view import host_row
    from pullback.server.maintain import MaintainResult, Step, _share_failures

    first = MaintainResult("web1", steps=[Step("forget", True, "kept 3")])
    first.steps.append(Step("prune", True, "group shop: its last host prunes and checks"))
    last = MaintainResult("web2", status=Status.FAILED)
    last.steps += [Step("prune", True, "pruned"), Step("check", False, "pack 3f2a damaged")]
    _share_failures([first, last], "shop")
    assert first.status is Status.FAILED
    assert first.steps[-1] == Step("check", False, "group shop, with web2: pack 3f2a damaged")
    assert [s.name for s in last.steps] == ["prune", "check"], "the last host's own, once"
    fine = MaintainResult("web3")
    _share_failures([fine, MaintainResult("web4", steps=[Step("check", True, "no errors")])], "x")
    assert fine.status is Status.OK and fine.steps == []
    hosts = status_file.record_maintenance(tmp_path, [first, last])["hosts"]
    row = host_row("web1", {**hosts["web1"], "last_result": "stored"}, 86400, T0)
    assert "check: group shop, with web2: pack 3f2a damaged" in row.reason, row.reason
