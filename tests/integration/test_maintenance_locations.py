"""A maintenance location that points nowhere fails the host's maintenance, in words,
wherever a missing repository cannot be a host not pulled yet (an outside walk of
docs/scaling.md saw a typo on the maintenance-only machine reported "ok, skipped: none
yet" for ever); on a fresh pull server before its first pull it stays "none yet".
Real restic, a real ``rclone serve restic`` store."""

from __future__ import annotations

import json
import shutil

import pytest

from tests.helpers.files import secret_file
from tests.helpers.rest_store import MAINTAIN_SECRET, RestStore, rclone_missing

pytestmark = pytest.mark.integration


@pytest.mark.skipif(rclone_missing() is not None, reason=str(rclone_missing()))
def test_a_typo_on_the_maintenance_only_machine_fails_and_names_the_file(tmp_path, fleet):
    store = RestStore(tmp_path / "rest").start(pull_user="puller", pull_password="pull-pw-1")
    try:
        fleet.add_host("web1")
        typo = secret_file(tmp_path / "web1.maintenance", store.maintain.url("wbe1"))
        # docs/scaling.md's maintenance machine: both locations in one file, no pulls here
        fleet.host_extra["web1"] = {
            "repository_file": str(typo),
            "maintenance_repository_file": str(typo),
        }
        fleet.write_config()
        result = fleet.server("maintain")
        assert result.returncode == 1, result.stdout + (result.stdout + result.stderr)
        assert f"does not exist: is the URL in {typo} right?" in (result.stdout + result.stderr), (
            result.stdout + result.stderr
        )
        assert "no pull is recorded on this machine" in (result.stdout + result.stderr)
        assert "none yet" not in (result.stdout + result.stderr)
        assert MAINTAIN_SECRET not in result.stdout + (result.stdout + result.stderr)
        report = json.loads(fleet.server("maintain", "--json").stdout)
        assert report["exit_code"] == 1, report
    finally:
        store.stop()


def test_a_missing_repository_is_none_yet_only_where_no_pull_was_due(tmp_path, fleet):
    web = fleet.add_host("web1")
    # a fresh pull server before its first pull: nothing to maintain yet
    result = fleet.server("maintain")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "none yet: nothing to maintain" in (result.stdout + result.stderr) + result.stdout

    # a maintenance location of its own, and neither location has a repository: a new
    # host as check calls it (the first pull makes the one both reach)
    elsewhere = tmp_path / "maint" / "web1"
    fleet.host_extra["web1"] = {"maintenance_repository": str(elsewhere)}
    fleet.write_config()
    result = fleet.server("maintain")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "none yet: nothing to maintain" in result.stdout + result.stderr
    assert "neither does the pull location's" in fleet.server("check").stdout
    # ... but once the pull location has one, it is a typo, not a new host
    web.make_archive()
    assert fleet.server("pull").returncode == 0
    for why in ("this host was pulled before", "the pull location has a repository"):
        result = fleet.server("maintain")
        assert result.returncode == 1, result.stdout + result.stderr
        assert "is hosts[web1].maintenance_repository right?" in result.stdout + result.stderr
        assert why in result.stdout + result.stderr, result.stdout + result.stderr
        (fleet.state / "status.json").unlink()  # the record lost: the repository still says

    # pulled before, then the repository is gone (one location for both roles)
    fleet.host_extra["web1"] = {}
    fleet.write_config()
    web.make_archive()
    assert fleet.server("pull").returncode == 0
    shutil.move(fleet.repos / "web1", tmp_path / "moved-away")
    result = fleet.server("maintain")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "this host was pulled before" in (result.stdout + result.stderr), (
        result.stdout + result.stderr
    )
    assert not (fleet.repos / "web1").exists(), "maintain creates no repository"


@pytest.mark.skipif(rclone_missing() is not None, reason=str(rclone_missing()))
def test_check_opens_every_maintenance_location_with_its_own_password(tmp_path, fleet):
    """An outside walk: a typo or a wrong password in maintenance_repository_file passed
    ``check`` (exit 0), found only by the first maintenance, or never."""
    store = RestStore(tmp_path / "rest").start(pull_user="puller", pull_password="pull-pw-1")
    try:
        web = fleet.add_host("web1")
        pull = secret_file(tmp_path / "web1.pull", store.pull.url("web1"))
        maintenance = tmp_path / "web1.maintenance"
        fleet.host_extra["web1"] = {
            "repository_file": str(pull),
            "maintenance_repository_file": str(maintenance),
        }
        secret_file(maintenance, store.maintain.url("web1"))
        fleet.write_config()
        # a new host: neither location has a repository yet, and that is fine
        result = fleet.server("check")
        assert result.returncode == 0, result.stdout + result.stderr
        assert "does not exist yet and neither does the pull location's" in result.stdout
        web.make_archive()
        assert fleet.server("pull").returncode == 0
        result = fleet.server("check")
        assert result.returncode == 0, result.stdout + result.stderr
        assert "web1: maintenance repository rest:http://maintainer:***@" in result.stdout
        assert "has 1 snapshot(s)" in result.stdout

        secret_file(maintenance, store.maintain.url("wbe1"))  # a typo
        result = fleet.server("check")
        assert result.returncode == 1, result.stdout + result.stderr
        assert f"/wbe1/ does not exist: is the URL in {maintenance} right?" in result.stdout
        secret_file(maintenance, store.maintain.url("web1").replace(MAINTAIN_SECRET, "WRONG"))
        result = fleet.server("check")
        assert result.returncode == 1, result.stdout + result.stderr
        assert "problem: web1: maintenance location: " in result.stdout, result.stdout
        assert "401" in result.stdout
        assert MAINTAIN_SECRET not in result.stdout + result.stderr

        # the maintenance-only machine: no SSH to the clients, one location for both
        # roles, no pulls recorded: the repository lines come all the same
        secret_file(maintenance, store.maintain.url("wbe1"))
        fleet.host_extra["web1"] = {
            "repository_file": str(maintenance),
            "maintenance_repository_file": str(maintenance),
            "port": 1,
        }
        fleet.write_config(state_dir=str(tmp_path / "maintenance-state"))
        result = fleet.server("check")
        assert result.returncode == 1, result.stdout + result.stderr
        assert "cannot connect" in result.stdout, result.stdout
        assert f"does not exist: is the URL in {maintenance} right?" in result.stdout
        assert "will be created by the first pull" not in result.stdout
        secret_file(maintenance, store.maintain.url("web1"))
        result = fleet.server("check")
        assert "web1: repository rest:http://maintainer:***@" in result.stdout, result.stdout
        assert "has 1 snapshot(s)" in result.stdout
    finally:
        store.stop()
