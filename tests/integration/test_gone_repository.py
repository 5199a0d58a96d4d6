"""A host's repository that is gone after pulls stored to it (a disk not mounted, a
server.yaml put back from an old recovery bundle pointing at a lost disk): a pull makes
no new, empty repository there (the history would go on in it, out of sight of the
old), ``snapshots`` and ``check`` say it is gone rather than "not yet", and ``pull
--host NAME --new`` starts a new history on purpose. helper-96 found the history forked
by following docs/disaster-recovery.md's unpack step a second time."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.helpers.files import secret_file
from tests.helpers.rest_store import RestEndpoint

pytestmark = pytest.mark.integration


def test_a_gone_repository_is_not_made_anew_unless_asked(fleet, tmp_path):
    web = fleet.add_host("web1")
    fleet.write_config()
    web.make_archive({"site/index.html": b"<h1>day 1</h1>"})
    first = fleet.server("pull")
    assert first.returncode == 0, first.stdout + first.stderr
    repo = fleet.repos / "web1"
    repo.rename(tmp_path / "web1.away")  # its disk is not mounted

    web.make_archive({"site/index.html": b"<h1>day 2</h1>"})
    pulled = fleet.server("pull")
    said = pulled.stdout + pulled.stderr
    assert pulled.returncode == 1, said
    assert f"the repository {repo} does not exist, yet this host was pulled before" in said
    assert "pullback-server pull --host web1 --new" in said
    assert not repo.exists(), "a new, empty repository was made where the history was"

    listed = fleet.server("snapshots", "web1")
    said = listed.stdout + listed.stderr
    assert listed.returncode == 1, said
    assert "no pull has stored to it" not in said and "was pulled before" in said

    checked = fleet.server("check", "--host", "web1")
    said = checked.stdout + checked.stderr
    assert "will be created by the first pull" not in said
    assert "does not exist, yet this host was pulled before" in said

    refused = fleet.server("pull", "--new")
    assert refused.returncode == 2 and "--new needs --host" in refused.stderr

    # the disk is back: the pull goes on in the history, no --new needed
    (tmp_path / "web1.away").rename(repo)
    again = fleet.server("pull")
    assert again.returncode == 0, again.stdout + again.stderr
    assert len(fleet.snapshots("web1")) == 2


def test_pull_new_starts_a_new_history_on_purpose(fleet, tmp_path):
    web = fleet.add_host("web1")
    fleet.write_config()
    web.make_archive({"a": b"1"})
    assert fleet.server("pull").returncode == 0
    repo = fleet.repos / "web1"
    repo.rename(tmp_path / "web1.lost")
    web.make_archive({"a": b"2"})
    started = fleet.server("pull", "--host", "web1", "--new")
    assert started.returncode == 0, started.stdout + started.stderr
    assert len(fleet.snapshots("web1")) == 1
    web.make_archive({"a": b"3"})
    assert fleet.server("pull").returncode == 0  # the new history goes on as any other
    assert len(fleet.snapshots("web1")) == 2


def test_a_host_never_pulled_gets_its_repository_made(fleet):
    web = fleet.add_host("web1")
    fleet.write_config()
    checked = fleet.server("check", "--host", "web1")
    assert "will be created by the first pull" in checked.stdout + checked.stderr
    web.make_archive({"a": b"1"})
    pulled = fleet.server("pull")
    assert pulled.returncode == 0, pulled.stdout + pulled.stderr
    assert len(fleet.snapshots("web1")) == 1


def test_copy_and_restore_say_a_gone_primary_is_gone(fleet, tmp_path):
    """helper-96 saw "no pull has stored to it"; the copy said "nothing to copy" and
    was skipped, quietly, while the primary it copies from was not there."""
    web = fleet.add_host("web1")
    copy_pass = tmp_path / "copy.pass"
    copy_pass.write_text("copy-Password-31\n")
    copy_pass.chmod(0o600)
    fleet.write_config(
        copy={"repository_root": str(tmp_path / "copies"), "password_file": str(copy_pass)}
    )
    web.make_archive({"a": b"1"})
    assert fleet.server("pull").returncode == 0
    assert fleet.server("copy").returncode == 0
    (fleet.repos / "web1").rename(tmp_path / "web1.away")

    copied = fleet.server("copy")
    said = copied.stdout + copied.stderr
    assert copied.returncode == 1, said
    assert "web1: failed" in said and "does not exist, yet this host was pulled before" in said
    restored = fleet.server("restore", "web1", "--target", str(tmp_path / "target"))
    said = restored.stdout + restored.stderr
    assert restored.returncode == 1, said
    assert "does not exist, yet this host was pulled before" in said


def _logging_restic(tmp_path) -> tuple[dict, object]:
    """An environment whose ``restic`` logs each command's first word (then runs the
    tests' restic), and the log."""
    log = tmp_path / "restic.log"
    bin_dir = tmp_path / "logging-bin"
    bin_dir.mkdir()
    wrapper = bin_dir / "restic"
    found = [d for d in os.environ["PATH"].split(os.pathsep) if (Path(d) / "restic").exists()]
    wrapper.write_text(
        "#!/bin/sh\n"
        f'for a in "$@"; do case "$a" in -*) ;; *) echo "$a" >> {log}; break;; esac; done\n'
        f'exec {Path(found[0]) / "restic"} "$@"\n'
    )
    wrapper.chmod(0o755)
    return {"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}, log


def test_verify_says_a_missing_repository_without_opening_a_present_one_twice(fleet, tmp_path):
    # a REST store (rclone serve restic): a local repository is seen without restic
    store = tmp_path / "store"
    store.mkdir()
    endpoint = RestEndpoint(store, append_only=False).start()
    try:
        web = fleet.add_host("web1")
        url = secret_file(tmp_path / "web1.url", endpoint.url("web1"))
        fleet.host_extra["web1"] = {"repository_file": str(url)}
        fleet.write_config()
        env, log = _logging_restic(tmp_path)

        new = fleet.server("verify", "--host", "web1", env=env)
        said = new.stdout + new.stderr
        assert new.returncode == 0, said
        assert "nothing to drill yet: no repository" in said

        web.make_archive({"site/index.html": b"<h1>day 1</h1>"})
        assert fleet.server("pull").returncode == 0
        log.unlink()
        drilled = fleet.server("verify", "--host", "web1", env=env)
        assert drilled.returncode == 0, drilled.stdout + drilled.stderr
        commands = log.read_text().split()
        # the listing and two restores: no "cat config" first to see that it exists
        assert commands == ["snapshots", "restore", "restore"], commands

        # gone from the store behind rclone's back: it still serves the listing it
        # cached, without keys, and restic says "wrong password or no key found"
        (store / "web1").rename(tmp_path / "web1.away")
        cached = fleet.server("verify", "--host", "web1", env=env)
        said = cached.stdout + cached.stderr
        assert cached.returncode == 1, said
        assert "or it holds no key" in said and "nothing to drill yet" not in said
        endpoint.stop()  # started again, it says the repository is not there
        endpoint = RestEndpoint(store, append_only=False, port=endpoint.port).start()
        gone = fleet.server("verify", "--host", "web1", env=env)
        said = gone.stdout + gone.stderr
        assert gone.returncode == 1, said
        assert "does not exist" in said and "this host was pulled before" in said
    finally:
        endpoint.stop()


def test_a_repository_whose_keys_are_gone_is_not_said_to_be_a_wrong_password(fleet):
    web = fleet.add_host("web1")
    fleet.write_config()
    web.make_archive({"a": b"1"})
    assert fleet.server("pull").returncode == 0
    repo = fleet.repos / "web1"
    for key in (repo / "keys").iterdir():
        key.unlink()  # deleted in part

    for argv in (("snapshots", "web1"), ("pull",)):
        ran = fleet.server(*argv)
        said = ran.stdout + ran.stderr
        assert ran.returncode == 1, said
        assert f"the restic repository {repo} holds no key" in said, said
        assert "wrong password for" not in said
