"""TREE.list, end to end with a real client, sshd, restic and borg: the server lists every
stored snapshot's directories, symlinks and FIFOs beside its manifest; an administrator
who restores two snapshots into one directory (``restic restore`` and ``borg extract``
leave what the first put there) is told which entry is not the chosen snapshot's before
``pullback-client restore --from DIR`` changes anything; the drill proves those entries."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from pullback.common.archive.tree_list import TREE_NAME
from pullback.server.drill import DrillResult, check_tree
from tests.helpers.fleet import Fleet
from tests.helpers.tree import differences

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the client restores as root")


@pytest.fixture(params=["restic", "borg"])
def fleet(request, tmp_path):
    fleet = Fleet(tmp_path / "fleet", backend=request.param)
    yield fleet
    fleet.stop()


def pull(fleet: Fleet) -> None:
    result = fleet.server("pull")
    assert result.returncode == 0, result.stderr


def extract(fleet: Fleet, snapshot: dict, target: Path) -> Path:
    """Restore one snapshot into ``target`` as an administrator would, by hand, whatever
    is there already; returns the directory holding ``services/``. (Debian's restic 0.14
    exits 1 over a FIFO it restored before, "file exists", and restores the rest.)"""
    env = fleet.repo_env("web1")
    target.mkdir(exist_ok=True)
    if fleet.backend == "restic":
        argv = ["restic", "restore", snapshot["id"], "--target", str(target)]
        done = subprocess.run(argv, env=env, capture_output=True)
        errors = [line for line in done.stderr.splitlines() if b"ignoring error" in line]
        assert all(line.endswith(b"/pipe: file exists") for line in errors), done.stderr
        assert done.returncode == (1 if errors else 0), done.stderr
        (manifest,) = list(target.rglob("MANIFEST.sha256"))
        return manifest.parent
    argv = ["borg", "extract", f"::{snapshot['name']}"]
    subprocess.run(argv, env=env, cwd=target, capture_output=True, check=True)
    return target


def test_an_entry_of_another_snapshot_restored_over_is_refused(fleet, tmp_path):
    host = fleet.add_host("web1")
    data = host.data
    os.symlink("hello.txt", data / "current")
    os.mkfifo(data / "pipe")
    (data / "empty").mkdir()
    host.make_archive()
    pull(fleet)
    os.unlink(data / "current")  # the next day: the link is gone, another is there
    os.symlink("hello.txt", data / "next")
    host.make_archive()
    pull(fleet)
    older, newer = fleet.snapshots("web1")

    fetched = tmp_path / "fetched"
    fetched.mkdir()
    extract(fleet, older, fetched)
    where = extract(fleet, newer, fetched)  # over the older one: its link stays
    below = f"services/app/files/{str(data).lstrip('/')}"
    listed = (where / TREE_NAME).read_bytes().splitlines()
    assert f"l  {below}/next".encode() in listed and f"p  {below}/pipe".encode() in listed
    assert f"d  {below}/empty".encode() in listed
    assert not any(line.endswith(b"/current") for line in listed), listed
    assert os.path.islink(where / below / "current")  # the tools left it

    target = tmp_path / "restored"
    result = host.client.cli(
        "restore", "--service", "app", "--from", str(where), "--target", str(target)
    )
    said = result.stdout + result.stderr
    assert result.returncode == 2, said
    assert f"describe: 1 entry ({below}/current) not in it" in said, said
    assert not target.exists() or not any(target.iterdir())  # nothing was changed

    kept = os.stat(where / below)
    os.unlink(where / below / "current")  # as a fetch into an empty directory: its time too
    os.utime(where / below, ns=(kept.st_atime_ns, kept.st_mtime_ns))
    result = host.client.cli(
        "restore", "--service", "app", "--from", str(where), "--target", str(target)
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert differences(data, target / str(data).lstrip("/")) == []  # rsync's word
    verified = fleet.server("verify", "--host", "web1")
    assert verified.returncode == 0, verified.stdout + verified.stderr


def test_the_drill_names_a_lost_symlink_an_extra_entry_and_a_changed_kind(fleet, tmp_path):
    host = fleet.add_host("web1")
    os.symlink("hello.txt", host.data / "current")
    (host.data / "empty").mkdir()
    host.make_archive()
    pull(fleet)
    (snapshot,) = fleet.snapshots("web1")
    root = extract(fleet, snapshot, tmp_path / "drilled")
    clean = DrillResult("web1")
    check_tree(root, clean)
    assert clean.problems == [] and clean.files_checked == 1

    below = root / "services/app/files" / str(host.data).lstrip("/")
    os.unlink(below / "current")  # lost by a backend
    os.rmdir(below / "empty")
    os.symlink("/etc", below / "empty")  # another kind
    os.mkfifo(below / "extra")
    damaged = DrillResult("web1")
    check_tree(root, damaged)
    name = f"services/app/files/{str(host.data).lstrip('/')}"
    assert sorted(damaged.problems) == sorted(
        [
            f"changed kind: {name}/empty",
            f"not in {TREE_NAME}: {name}/extra",
            f"missing: {name}/current",
        ]
    ), damaged.problems
