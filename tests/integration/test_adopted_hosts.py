"""A host that adopts backup-suite's snapshots (``hosts[].adopt_host``), before and after
its first pull, on real restic repositories made the way ``backup_server.sh`` makes them
(:func:`suite_snapshot`), a real sshd and client: what verify, maintain, status, the
metrics, check and restore say of it."""

from __future__ import annotations

import json
import os
import subprocess
import time

import pytest

from tests.helpers.fleet import Fleet
from tests.integration.test_backup_suite_migration import FQDN, suite_snapshot


@pytest.fixture
def adopting(tmp_path):
    """Host web1 whose repository (``<repos>/<FQDN>``) holds two backup-suite snapshots
    and whose server.yaml adopts them; nothing pulled yet."""
    fleet = Fleet(tmp_path / "fleet")
    fleet.host_extra["web1"] = {"repository": str(fleet.repos / FQDN), "adopt_host": FQDN}
    fleet.add_host("web1")
    env = {**fleet.repo_env(FQDN)}
    subprocess.run(["restic", "init", "--quiet"], env=env, check=True, capture_output=True)
    for day in ("20261120_030000", "20261121_030000"):
        suite_snapshot(
            fleet, tmp_path / "work", day, {"files/app/data/app/config.ini": f"day {day}\n"}
        )
        time.sleep(1)  # restic orders by the stores' times
    fleet.write_config(metrics_file=str(tmp_path / "metrics.prom"))
    yield fleet
    fleet.stop()


def _said(done: subprocess.CompletedProcess) -> str:
    return done.stdout + done.stderr


def _restic(fleet: Fleet, *args: str) -> str:
    """Run restic on the adopting host's repository; returns its output."""
    done = subprocess.run(
        ["restic", *args], env=fleet.repo_env(FQDN), capture_output=True, text=True, check=True
    )
    return done.stdout


def _status(fleet: Fleet) -> dict:
    return json.loads(fleet.server("status", "--json").stdout)["hosts"]["web1"]


def test_before_the_first_pull_there_is_nothing_to_drill_yet(adopting, tmp_path):
    fleet = adopting
    drilled = fleet.server("verify", "--host", "web1")
    assert drilled.returncode == 0, _said(drilled)
    words = (
        "nothing to drill yet: no pullback snapshot (2 adopted from backup-suite hold no manifest)"
    )
    assert f"web1: {words}" in drilled.stdout
    assert "FAILED" not in _said(drilled)
    maintained = fleet.server("maintain", "--host", "web1")
    assert maintained.returncode == 0, _said(maintained)
    assert "ok   drill: nothing to drill yet: no pullback snapshot (" in maintained.stdout
    assert "FAIL" not in maintained.stdout
    entry = _status(fleet)
    assert entry["verify_result"] == "skipped" and entry["maintain_result"] == "ok"
    assert "last_verified" not in entry and "last_verified_attempt" not in entry
    metrics = (tmp_path / "metrics.prom").read_text()
    assert "pullback_last_verify_ok{" not in metrics
    assert 'pullback_last_maintain_ok{host="web1"} 1' in metrics
    table = fleet.server("status", "--host", "web1")
    assert "drill" not in table.stdout, table.stdout
    # the first pull's snapshot is drilled by the next maintenance, not verify_every later
    fleet.hosts["web1"].make_archive()
    assert fleet.server("pull").returncode == 0
    maintained = fleet.server("maintain", "--host", "web1")
    assert maintained.returncode == 0, _said(maintained)
    assert "match the manifest" in maintained.stdout
    assert _status(fleet)["verify_result"] == "ok"


def test_pullback_snapshots_that_vanished_still_fail_the_drill(adopting):
    fleet = adopting
    fleet.hosts["web1"].make_archive()
    assert fleet.server("pull").returncode == 0
    stored = _status(fleet)["snapshot_id"]
    ours = json.loads(_restic(fleet, "snapshots", "--tag", "pullback", "--json"))
    _restic(fleet, "forget", *(s["id"] for s in ours))  # a wrong forget, another repository
    drilled = fleet.server("verify", "--host", "web1")
    assert drilled.returncode == 1, _said(drilled)
    assert (
        f"web1: the drill FAILED: no pullback snapshot to restore, though snapshot {stored}"
        in drilled.stdout
    )
    assert "(it holds 2 adopted snapshots only): were they forgotten" in drilled.stdout
    maintained = fleet.server("maintain", "--host", "web1", "--verify")
    assert maintained.returncode == 1, _said(maintained)
    entry = _status(fleet)
    assert entry["verify_result"] == "failed" and entry["maintain_result"] == "failed"
    assert "the last restore drill failed" in fleet.server("status").stdout
    assert os.path.exists(fleet.state / "status.json")


def _other_host_snapshot(fleet: Fleet, tmp_path, host: str) -> None:
    """One snapshot of restic host ``host`` (not pullback's, not adopted) in the
    repository."""
    content = tmp_path / "other"
    content.mkdir(exist_ok=True)
    (content / "f").write_text(host)
    subprocess.run(
        ["restic", "backup", "--host", host, "-q", "."],
        cwd=content,
        env=fleet.repo_env(FQDN),
        check=True,
        capture_output=True,
    )


def test_check_names_the_snapshots_a_wrong_adopt_host_leaves_unseen(adopting, tmp_path):
    fleet = adopting
    checked = fleet.server("check")
    assert checked.returncode == 0, _said(checked)
    fleet.host_extra["web1"]["adopt_host"] = "web1"  # the short name: backup-suite's is whole
    fleet.write_config()
    fleet.hosts["web1"].make_archive()
    assert fleet.server("pull").returncode == 0
    checked = fleet.server("check")
    assert checked.returncode == 1, _said(checked)
    assert "web1: repository" in checked.stdout and "has 1 snapshot(s)" in checked.stdout
    assert (
        f"problem: web1: 2 snapshots of host {FQDN} in {fleet.repos / FQDN} are neither this "
        "host's nor adopt_host's (web1): is adopt_host right?"
    ) in checked.stdout
    # without adopt_host at all; and host names from the repository are data: bounded
    del fleet.host_extra["web1"]["adopt_host"]
    fleet.write_config()
    for name in ("a\x1b[31mred", "b" * 300, "c", "d", "e", "f"):
        _other_host_snapshot(fleet, tmp_path, name)
    checked = fleet.server("check", "--json")
    assert checked.returncode == 1, _said(checked)
    (said,) = [p for p in json.loads(checked.stdout)["problems"] if "snapshots of hosts" in p]
    assert said.startswith(f"web1: 8 snapshots of hosts {FQDN} (2), a\\x1b[31mred (1), ")
    assert f"{'b' * 99}… (1), c (1), d (1) and 2 more in " in said and "\x1b" not in said
    assert said.endswith(
        "are not this host's: if they are its backup-suite history, set adopt_host"
    )


def test_a_missing_repository_with_init_false_asks_for_the_disk_not_restic_init(adopting):
    fleet = adopting
    unmounted = fleet.root / "unmounted" / FQDN
    fleet.host_extra["web1"]["repository"] = str(unmounted)
    fleet.write_config(backend={"init": False})
    fleet.hosts["web1"].make_archive()
    pulled = fleet.server("pull", "--host", "web1")
    assert pulled.returncode == 1, _said(pulled)
    words = (
        f"the restic repository {unmounted} does not exist: is its disk mounted? "
        "(backend.init is false, so pullback does not create it; `restic init` only for a "
        "new repository)"
    )
    assert words in pulled.stderr
    assert "create it with" not in _said(pulled) and not unmounted.exists()
    checked = fleet.server("check")
    assert checked.returncode == 1 and f"problem: web1: {words}" in checked.stdout


def test_a_missing_password_file_of_an_existing_repository_is_restored_not_made(adopting):
    fleet = adopting
    missing = fleet.root / "gone.pass"
    fleet.write_config(backend={"password_file": str(missing)})
    checked = fleet.server("check")
    assert checked.returncode == 1, _said(checked)
    (said,) = [line for line in checked.stdout.splitlines() if "backend.password_file" in line]
    assert f"the repository {fleet.repos / FQDN} exists, and a new password cannot open an " in said
    assert said.endswith(
        "existing repository: restore the file from where it was kept (a backup, the old "
        "server); only for a genuinely new setup generate one"
    )
    assert "urandom" not in said
    # adopting a repository that is not there yet (its disk not mounted): the same advice
    fleet.host_extra["web1"]["repository"] = str(fleet.root / "unmounted")
    fleet.write_config()
    said = fleet.server("check").stdout
    assert "host web1 adopts backup-suite's repository (adopt_host), and a new password" in said
    # a genuinely new setup: make one
    del fleet.host_extra["web1"]["adopt_host"]
    fleet.write_config()
    said = fleet.server("check").stdout
    assert f"(umask 077; head -c 32 /dev/urandom | base64 > {missing})" in said


def test_a_missing_ssh_key_of_an_adopting_host_is_copied_not_made(adopting):
    fleet = adopting
    missing = fleet.root / "keys" / "web1"
    fleet.host_extra["web1"]["ssh_key_file"] = str(missing)
    fleet.write_config()
    checked = fleet.server("check")
    assert checked.returncode == 1, _said(checked)
    (said,) = [line for line in checked.stdout.splitlines() if "ssh_key_file" in line]
    assert f"{missing} cannot be read (host web1 adopts backup-suite's history: copy " in said
    assert "its clients trust that key" in said
    # a genuinely new setup: make one
    del fleet.host_extra["web1"]["adopt_host"]
    fleet.write_config()
    said = fleet.server("check").stdout
    assert f"cannot be read (create it: ssh-keygen -t ed25519 -N '' -f {missing})" in said


def test_check_warns_of_secrets_left_in_etc_backup(adopting):
    fleet = adopting
    fleet.host_extra["web1"]["ssh_key_file"] = "/etc/backup/client_a_id_ed25519"
    fleet.write_config()
    checked = fleet.server("check", "--json")
    (warned,) = json.loads(checked.stdout)["warnings"]
    assert warned == (
        f"{fleet.config}: hosts[web1].ssh_key_file: /etc/backup/client_a_id_ed25519 lies in "
        "/etc/backup, which step 8 of the migration removes: move it first (install -D -m "
        "0600 /etc/backup/client_a_id_ed25519 NEW, then point server.yaml at NEW)"
    )
    assert f"warning: {warned}" in fleet.server("check").stdout


def test_restoring_a_service_an_adopted_snapshot_lacks_names_what_it_holds(adopting, tmp_path):
    fleet = adopting
    suite_snapshot(
        fleet,
        tmp_path / "work",
        "20261122_030000",
        {
            **{f"files/s{n}/data/x": "x\n" for n in range(5)},
            "docker/tandoor/config_used/service.yml": "service: {name: tandoor}\n",
            "files/shared\x1b[2J/data/y": "y\n",
        },
    )
    target = tmp_path / "restored"
    done = fleet.server(
        "restore",
        "web1",
        "--snapshot",
        "20261122_030000",
        "--service",
        "shared_data",
        "--target",
        str(target),
    )
    assert done.returncode == 1, _said(done)
    assert (
        "holds no service 'shared_data' (it holds: docker/tandoor, files/s0, files/s1, "
        "files/s2, files/s3 and 2 more)"
    ) in done.stderr
    # its type/name works, and the hostile name is escaped where it is named
    done = fleet.server(
        "restore",
        "web1",
        "--snapshot",
        "20261122_030000",
        "--service",
        "docker/tandoor",
        "--target",
        str(target),
    )
    assert done.returncode == 0, _said(done)
    (target / "docker" / "tandoor" / "config_used" / "service.yml").unlink()
    suite_snapshot(
        fleet, tmp_path / "work", "20261123_030000", {"files/shared\x1b[2J/data/y": "y\n"}
    )
    done = fleet.server(
        "restore",
        "web1",
        "--snapshot",
        "20261123_030000",
        "--service",
        "app",
        "--target",
        str(tmp_path / "again"),
    )
    assert "(it holds: files/shared\\x1b[2J)" in done.stderr and "\x1b" not in done.stderr
