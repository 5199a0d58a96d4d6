"""Cross-host deduplication: the hosts of a ``group`` share one restic repository (real
restic, real pulls over sshd). Data they have in common is stored once; each host's
snapshots stay its own through pull, snapshots, maintain, drill and restore; the
repository is made once when the group's first pulls run at the same time, and pruned
and checked once per maintenance."""

from __future__ import annotations

import json
import os
import subprocess
import time

import pytest

pytestmark = pytest.mark.integration

SHARED = 6 << 20
"""Bytes both web hosts hold alike (random: compression cannot hide a second copy)."""


def repository_bytes(path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def test_a_group_stores_common_data_once_and_keeps_each_hosts_history_its_own(tmp_path, fleet):
    shared = os.urandom(SHARED)
    web1, web2, db1 = (fleet.add_host(n) for n in ("web1", "web2", "db1"))
    fleet.host_extra.update({"web1": {"group": "web"}, "web2": {"group": "web"}})
    copies = tmp_path / "copies"
    fleet.write_config(
        parallel=3, retention={"keep_last": 1}, copy={"repository_root": str(copies)}
    )

    def server(*args: str) -> subprocess.CompletedProcess:
        result = fleet.server(*args)
        assert result.returncode == 0, result.stdout + result.stderr
        return result

    for day in range(2):
        for host in (web1, web2):
            host.make_archive({"os/blob": shared, "own.txt": f"{host.name} {day}".encode()})
        db1.make_archive({"dump.sql": b"INSERT %d;\n" % day})
        server("pull")  # the three at once: the group's two make one repository together

    assert sorted(p.name for p in fleet.repos.iterdir()) == ["db1", "web"]
    by_host = {}
    for snap in fleet.snapshots("web"):
        by_host.setdefault(snap["hostname"], []).append(snap)
    assert {h: len(s) for h, s in by_host.items()} == {"web1": 2, "web2": 2}
    # the common 6 MiB once, not once per host (two separate repositories: >= 12 MiB)
    stored = repository_bytes(fleet.repos / "web")
    assert stored < 1.3 * SHARED, stored
    listed = json.loads(server("snapshots", "web2", "--json").stdout)
    assert len(listed) == 2, listed

    result = json.loads(server("maintain", "--verify", "--json").stdout)
    primaries = [h for h in result["hosts"] if not h["scope"]]  # (then the copies, checked)
    steps = {h["host"]: {s["name"]: s for s in h["steps"]} for h in primaries}
    assert steps["web1"]["forget"]["detail"].startswith("kept 1 snapshot(s), forgot 1")
    assert steps["web2"]["forget"]["detail"].startswith("kept 1 snapshot(s), forgot 1")
    # one prune and one check for the group's repository, by its last host
    assert "its last host prunes" in steps["web1"]["prune"]["detail"]
    assert "check" not in steps["web1"]
    assert steps["web2"]["prune"]["ok"] and steps["web2"]["check"]["ok"]
    for name in ("web1", "web2", "db1"):
        assert steps[name]["drill"]["ok"], steps[name]["drill"]
    sizes = {h["host"]: h["repository_size"] for h in primaries}
    assert sizes["web1"] == sizes["web2"] > 0
    left = [s["hostname"] for s in fleet.snapshots("web")]
    assert sorted(left) == ["web1", "web2"], "each host keeps its own newest snapshot"

    # the group's copy, made once by its hosts copying at once: one key opens it
    copied = json.loads(server("copy", "--no-verify", "--json").stdout)
    assert [h["status"] for h in copied["hosts"]] == ["ok", "ok", "ok"], copied
    env = {**fleet.repo_env("web"), "RESTIC_REPOSITORY": str(copies / "web")}
    keys = subprocess.run(
        ["restic", "key", "list", "--json"], env=env, capture_output=True, check=True
    ).stdout
    assert len(json.loads(keys)) == 1, keys

    target = tmp_path / "restored"
    server("restore", "web2", "--target", str(target))
    (own,) = target.rglob("own.txt")
    assert own.read_bytes() == b"web2 1"
    (blob,) = target.rglob("blob")
    assert blob.read_bytes() == shared


def test_every_member_of_a_group_shows_its_repositorys_size_after_a_pull(fleet):
    """One repository, one size: a member pulled earlier in a run (it measured before the
    next member stored), or not pulled at all, shows what the run last measured."""
    web1, web2 = (fleet.add_host(n) for n in ("web1", "web2"))
    fleet.host_extra.update({"web1": {"group": "web"}, "web2": {"group": "web"}})
    fleet.write_config(parallel=1)
    status_path = fleet.state / "status.json"

    def sizes() -> dict:
        hosts = json.loads(status_path.read_text())["hosts"]
        return {name: hosts[name]["repository_bytes"] for name in ("web1", "web2")}

    for host in (web1, web2):
        host.make_archive({"own.bin": os.urandom(1 << 20)})
    pulled = fleet.server("pull", "--json")
    assert pulled.returncode == 0, pulled.stdout + pulled.stderr
    reported = {h["host"]: h["repository_bytes"] for h in json.loads(pulled.stdout)["hosts"]}
    on_disk = repository_bytes(fleet.repos / "web")
    assert sizes()["web1"] == sizes()["web2"] == reported["web1"] == reported["web2"]
    assert sizes()["web1"] >= on_disk - (64 << 10), (sizes(), on_disk)  # both stored: 2 MiB

    web1.make_archive({"own.bin": os.urandom(1 << 20)})
    time.sleep(1.1)
    pulled = fleet.server("pull", "--host", "web1")
    assert pulled.returncode == 0, pulled.stdout + pulled.stderr
    assert sizes()["web2"] == sizes()["web1"] > reported["web2"] + (1 << 20) - (64 << 10)
