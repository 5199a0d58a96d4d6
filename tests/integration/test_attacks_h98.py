"""helper-98's outside attack on 0db0a6a and 08a109f: a missing maintenance
repository's failure worded in one place (missing.missing_failure), and the drill that
opens a repository again only when its listing failed (drill._listed / drill._missing).
Real restic, borg, rclone and sshd; no mocks."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers.files import secret_file
from tests.helpers.fleet import Fleet
from tests.helpers.rest_store import RestEndpoint

pytestmark = pytest.mark.integration

WAITING = "nothing to drill yet"


def said(run) -> str:
    return run.stdout + run.stderr


def status(fleet: Fleet) -> dict:
    path = fleet.state / "status.json"
    return json.loads(path.read_text())["hosts"] if path.exists() else {}


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def pulled(fleet: Fleet, host, files=None) -> None:
    host.make_archive(files or {"site/index.html": b"<h1>day 1</h1>"})
    run = fleet.server("pull")
    assert run.returncode == 0, said(run)


# -- checks that held ------------------------------------------------------------------


def test_never_pulled_local_host_waits_and_records_no_attempt(fleet):
    fleet.add_host("web1")
    fleet.write_config()
    run = fleet.server("verify", "--host", "web1", "--json")
    assert run.returncode == 0, said(run)
    out = json.loads(run.stdout)
    (host,) = out["hosts"]
    assert host["waiting"] is True and host["ok"] is False
    assert host["notes"] == [f"{WAITING}: no repository"]
    assert out["exit_code"] == 0
    entry = status(fleet)["web1"]
    assert entry["verify_result"] == "skipped"
    assert "last_verified" not in entry and "last_verified_attempt" not in entry
    assert not (fleet.repos / "web1").exists(), "verify made a repository"


def test_gone_local_repository_fails_and_keeps_last_verified(fleet, tmp_path):
    web = fleet.add_host("web1")
    fleet.write_config()
    pulled(fleet, web)
    first = fleet.server("verify", "--host", "web1")
    assert first.returncode == 0, said(first)
    before = status(fleet)["web1"]["last_verified"]
    (fleet.repos / "web1").rename(tmp_path / "away")
    gone = fleet.server("verify", "--host", "web1", "--json")
    assert gone.returncode == 1, said(gone)
    (host,) = json.loads(gone.stdout)["hosts"]
    assert host["waiting"] is False
    assert "this host was pulled before" in host["problems"][0]
    assert f"the maintenance repository {fleet.repos / 'web1'} does not exist" in host["summary"]
    entry = status(fleet)["web1"]
    assert entry["verify_result"] == "failed"
    assert entry["last_verified"] == before
    assert not (fleet.repos / "web1").exists()


def test_wrong_password_is_not_a_missing_repository(fleet):
    web = fleet.add_host("web1")
    fleet.write_config()
    pulled(fleet, web)
    fleet.password_file.write_text("not the password\n")
    run = fleet.server("verify", "--host", "web1")
    assert run.returncode == 1, said(run)
    assert "wrong password" in said(run)
    assert WAITING not in said(run) and "does not exist" not in said(run)
    assert status(fleet)["web1"]["verify_result"] == "failed"


def test_empty_mount_point_of_a_pulled_host_fails(fleet, tmp_path):
    # the disk is not mounted: the directory is there, empty
    web = fleet.add_host("web1")
    fleet.write_config()
    pulled(fleet, web)
    (fleet.repos / "web1").rename(tmp_path / "away")
    (fleet.repos / "web1").mkdir()
    run = fleet.server("verify", "--host", "web1")
    assert run.returncode == 1, said(run)
    assert "was pulled before" in said(run) and WAITING not in said(run)


def test_unreachable_rest_endpoint_is_not_nothing_to_drill_yet(fleet, tmp_path):
    # a host never pulled, its REST store down (port closed): not "nothing to drill yet"
    fleet.add_host("web1")
    url = secret_file(tmp_path / "web1.url", f"rest:http://127.0.0.1:{closed_port()}/web1/")
    fleet.host_extra["web1"] = {"repository_file": str(url)}
    fleet.write_config()
    started = time.monotonic()
    run = fleet.server("verify", "--host", "web1", "--json", timeout=900)
    assert time.monotonic() - started < 600
    assert run.returncode == 1, said(run)
    (host,) = json.loads(run.stdout)["hosts"]
    assert host["waiting"] is False
    assert "connection refused" in host["summary"]
    assert status(fleet)["web1"]["verify_result"] == "failed"


def test_verify_snapshot_on_a_missing_repository(fleet):
    fleet.add_host("web1")
    fleet.write_config()
    run = fleet.server("verify", "--host", "web1", "--snapshot", "deadbeef")
    assert run.returncode == 2, said(run)
    assert "no single snapshot 'deadbeef'" in said(run)
    assert "verify_result" not in status(fleet).get("web1", {})


def test_maintenance_machine_drill_proven_then_gone_is_not_nothing_to_drill_yet(fleet, tmp_path):
    # a maintenance-only machine (docs/scaling.md): no pulls in its status.json, the
    # maintenance going where hosts[].repository_file reaches (no maintenance_repository
    # of its own: "None: ... where pulls reach it"). Its drill passed; then the
    # repository is gone.
    web = fleet.add_host("web1")
    fleet.write_config()
    pulled(fleet, web)
    fleet.write_config(state_dir=str(tmp_path / "maintenance-state"))
    fleet.state = tmp_path / "maintenance-state"
    proven = fleet.server("verify", "--host", "web1")
    assert proven.returncode == 0, said(proven)
    assert status(fleet)["web1"]["last_verified_snapshot"]
    (fleet.repos / "web1").rename(tmp_path / "away")
    gone = fleet.server("verify", "--host", "web1")
    assert gone.returncode == 1, said(gone)
    assert WAITING not in said(gone)
    assert status(fleet)["web1"]["verify_result"] == "failed"


def test_same_machine_drill_proven_then_emptied_fails(fleet, tmp_path):
    # the contrast: the same repository emptied (its snapshots forgotten) fails the drill
    # ("passed a drill before"): drill._pullback_held counts last_verified_snapshot
    web = fleet.add_host("web1")
    fleet.write_config()
    pulled(fleet, web)
    fleet.write_config(state_dir=str(tmp_path / "maintenance-state"))
    fleet.state = tmp_path / "maintenance-state"
    assert fleet.server("verify", "--host", "web1").returncode == 0
    assert fleet.snapshots("web1")
    for snap in fleet.snapshots("web1"):
        subprocess.run(
            ["restic", "forget", snap["id"]],
            env=fleet.repo_env("web1"),
            check=True,
            capture_output=True,
        )
    emptied = fleet.server("verify", "--host", "web1")
    assert emptied.returncode == 1, said(emptied)
    assert "passed a drill before" in said(emptied)


def _slow_restic(tmp_path, marker: Path, seconds: int) -> dict:
    """An environment whose restic sleeps ``seconds`` before ``snapshots`` (writing
    ``marker`` when it starts to sleep)."""
    bin_dir = tmp_path / "slow-bin"
    bin_dir.mkdir()
    found = [d for d in os.environ["PATH"].split(os.pathsep) if (Path(d) / "restic").exists()]
    wrapper = bin_dir / "restic"
    wrapper.write_text(
        "#!/bin/sh\n"
        'for a in "$@"; do case "$a" in -*) ;; *) first="$a"; break;; esac; done\n'
        f'if [ "$first" = snapshots ]; then echo "$$" >> {marker}; sleep {seconds}; fi\n'
        f'exec {Path(found[0]) / "restic"} "$@"\n'
    )
    wrapper.chmod(0o755)
    return {"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}


def test_sigterm_during_the_listing_stops_verify(fleet, tmp_path):
    web1, web2 = fleet.add_host("web1"), fleet.add_host("web2")
    fleet.write_config()
    web1.make_archive({"a": b"1"})
    web2.make_archive({"b": b"2"})
    assert fleet.server("pull").returncode == 0
    marker = tmp_path / "listing"
    env = {**os.environ, **_slow_restic(tmp_path, marker, 5)}
    argv = [
        sys.executable,
        "-m",
        "pullback.server.cli",
        "--config",
        str(fleet.config),
        "verify",
        "--json",
    ]
    proc = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )
    deadline = time.monotonic() + 60
    while not marker.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert marker.exists()
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    listings = marker.read_text().split()
    assert proc.returncode == 143, out + err
    assert len(listings) == 1, f"verify went on after SIGTERM: {listings} {out} {err}"
    entry = status(fleet)
    assert "last_verified" not in entry.get("web2", {}), entry


def test_group_member_never_pulled_fails_when_the_group_repository_is_gone(fleet, tmp_path):
    web1 = fleet.add_host("web1")
    fleet.host_extra["web1"] = {"group": "web"}
    fleet.write_config()
    pulled(fleet, web1)
    fleet.add_host("web2")
    fleet.host_extra["web2"] = {"group": "web"}
    fleet.write_config()
    # the group repository there, web2 not pulled yet: nothing of its own to drill
    fresh = fleet.server("verify", "--host", "web2")
    assert fresh.returncode == 0, said(fresh)
    assert f"{WAITING}: no pullback snapshot" in said(fresh)
    (fleet.repos / "web").rename(tmp_path / "away")
    gone = fleet.server("verify", "--host", "web2")
    assert gone.returncode == 1, said(gone)
    assert "web1 of its group was pulled before" in said(gone)
    assert WAITING not in said(gone)


def test_adopting_host_never_pulled_fails_on_a_missing_repository(fleet):
    fleet.add_host("web1")
    fleet.host_extra["web1"] = {"adopt_host": "web1.example.org"}
    fleet.write_config()
    run = fleet.server("verify", "--host", "web1", "--json")
    assert run.returncode == 1, said(run)
    (host,) = json.loads(run.stdout)["hosts"]
    assert host["waiting"] is False
    assert "adopt_host" in host["summary"]


def test_split_roles_typo_in_the_maintenance_location_fails_once_pulled(fleet, tmp_path):
    web = fleet.add_host("web1")
    fleet.host_extra["web1"] = {"maintenance_repository": str(tmp_path / "maint" / "wbe1")}
    fleet.write_config()
    before = fleet.server("verify", "--host", "web1")
    assert before.returncode == 0 and f"{WAITING}: no repository" in said(before), said(before)
    pulled(fleet, web)
    after = fleet.server("verify", "--host", "web1")
    assert after.returncode == 1, said(after)
    assert "is hosts[web1].maintenance_repository right?" in said(after)
    (fleet.state / "status.json").unlink()  # the record lost: the pull location says
    lost = fleet.server("verify", "--host", "web1")
    assert lost.returncode == 1, said(lost)
    assert "the pull location has a repository" in said(lost)


def test_maintain_drill_of_a_never_pulled_host_is_none_yet(fleet):
    fleet.add_host("web1")
    fleet.write_config()
    run = fleet.server("maintain", "--json")
    assert run.returncode == 0, said(run)
    assert "none yet" in run.stdout
    entry = status(fleet)["web1"]
    assert entry["maintain_result"] == "skipped"
    assert "last_verified_attempt" not in entry


@pytest.mark.parametrize("backend", ["borg"])
def test_borg_never_pulled_gone_and_wrong_password(tmp_path, backend):
    fleet = Fleet(tmp_path / "fleet", backend=backend)
    try:
        web = fleet.add_host("web1")
        fleet.write_config()
        fresh = fleet.server("verify", "--host", "web1")
        assert fresh.returncode == 0 and f"{WAITING}: no repository" in said(fresh), said(fresh)
        pulled(fleet, web)
        ok = fleet.server("verify", "--host", "web1")
        assert ok.returncode == 0, said(ok)
        fleet.password_file.write_text("not the password\n")
        wrong = fleet.server("verify", "--host", "web1")
        assert wrong.returncode == 1, said(wrong)
        assert WAITING not in said(wrong) and "does not exist" not in said(wrong)
        fleet.password_file.write_text("correct horse battery staple 42\n")
        (fleet.repos / "web1").rename(tmp_path / "away")
        gone = fleet.server("verify", "--host", "web1")
        assert gone.returncode == 1, said(gone)
        assert "this host was pulled before" in said(gone) and WAITING not in said(gone)
    finally:
        fleet.stop()


def test_rest_store_never_pulled_waits_and_wrong_rest_password_fails(fleet, tmp_path):
    store = tmp_path / "store"
    store.mkdir()
    endpoint = RestEndpoint(store, append_only=False, user="u", password="right-pw").start()
    try:
        fleet.add_host("web1")
        url = secret_file(tmp_path / "web1.url", endpoint.url("web1"))
        fleet.host_extra["web1"] = {"repository_file": str(url)}
        fleet.write_config()
        fresh = fleet.server("verify", "--host", "web1")
        assert fresh.returncode == 0 and f"{WAITING}: no repository" in said(fresh), said(fresh)
        secret_file(url, endpoint.url("web1").replace("right-pw", "wrong-pw"))
        denied = fleet.server("verify", "--host", "web1")
        assert denied.returncode == 1, said(denied)
        assert WAITING not in said(denied) and "401" in said(denied)
        assert "right-pw" not in said(denied) and "wrong-pw" not in said(denied)
    finally:
        endpoint.stop()


def test_silent_store_past_host_timeout_is_a_failure_not_waiting(silent_fleet):
    # a REST store that never answers: the listing is stopped at host_timeout, and the
    # repository is not opened again past it ("nothing to drill yet" would hide it)
    silent_fleet.write_config(host_timeout="5s")
    started = time.monotonic()
    run = silent_fleet.server("verify", "--host", "web1", "--json", timeout=300)
    took = time.monotonic() - started
    assert run.returncode == 1, said(run)
    (host,) = json.loads(run.stdout)["hosts"]
    assert host["waiting"] is False
    assert "stopped at host_timeout" in host["summary"]
    assert took < 60, f"the drill ran {took:.0f}s past a 5 s host_timeout"
    assert status(silent_fleet)["web1"]["verify_result"] == "failed"


def test_split_roles_missing_maintenance_location_and_silent_pull_store_keep_host_timeout(
    silent_fleet, tmp_path
):
    # the maintenance location (apart) has no repository; telling a typo from a new host
    # opens the pull location, a store that never answers: host_timeout must still hold
    silent_fleet.host_extra["web1"]["maintenance_repository"] = str(tmp_path / "maint" / "wbe1")
    silent_fleet.write_config(host_timeout="5s")
    started = time.monotonic()
    run = silent_fleet.server("verify", "--host", "web1", "--json", timeout=400)
    took = time.monotonic() - started
    assert run.returncode == 1, said(run)
    (host,) = json.loads(run.stdout)["hosts"]
    assert host["waiting"] is False
    assert took < 60, f"the drill ran {took:.0f}s past a 5 s host_timeout: {host['summary']}"
