"""Outside review h125: the server's remote repositories (restic over a real
``rclone serve restic``, with and without ``--append-only``) and the second copy
(``pullback-server copy``), read against docs/server.md, docs/scaling.md,
docs/security.md, docs/disaster-recovery.md and docs/man/.

What was reviewed: the pull, copy, maintain, verify, check, status and restore cycle on a
REST store; error words for a store that is down, a wrong repository password, a refused
login, a URL typo, an append-only store with forget configured; a store that stalls
mid-operation (an HTTP proxy in front of rclone that accepts chosen requests and never
answers them), a store answering with megabytes of escape sequences; whether secrets reach
argv, logs or status.json; whether a copy can be "ok" while damaged.

It found eight defects. The five whose tests are here are mended (a copy that is its
primary reached another way, its forget refused by an append-only store, a pack the
primary lost during a copy, a drill of a damaged copy, a copy without copy.retention
never checked): their tests assert what the docs say. A copy store or a primary that
stalls after answering is held to host_timeout and maintenance.timeout now
(test_store_deadlines.py); `check` still waits restic's listing (600 s) of such a store.
"""

from __future__ import annotations

import json
import os
import re
import subprocess

import pytest

from tests.helpers.files import secret_file
from tests.helpers.fleet import Fleet
from tests.helpers.rest_store import RestEndpoint

pytestmark = pytest.mark.integration

COP_SECRET = "CopSecret42xq"
BOSS_SECRET = "BossSecret31zk"


def ok(fleet: Fleet, *args: str) -> subprocess.CompletedProcess:
    result = fleet.server(*args)
    assert result.returncode == 0, result.stdout + result.stderr
    return result


@pytest.fixture
def endpoints(tmp_path):
    """A full REST endpoint (primaries) and an append-only one (copies), with users."""
    (tmp_path / "prim").mkdir()
    (tmp_path / "off").mkdir()
    prim = RestEndpoint(tmp_path / "prim", False, "boss", BOSS_SECRET).start()
    off = RestEndpoint(tmp_path / "off", True, "cop", COP_SECRET).start()
    yield prim, off
    prim.stop()
    off.stop()


def status_json(fleet: Fleet) -> dict:
    return json.loads((fleet.state / "status.json").read_text())["hosts"]


# -- D4 ----------------------------------------------------------------------------------


def test_a_copys_forget_refused_by_an_append_only_store_names_the_copys_settings(
    tmp_path, fleet, endpoints
):
    _, off = endpoints
    web = fleet.add_host("web1")
    fleet.host_extra["web1"] = {
        "copy_repository_file": str(secret_file(tmp_path / "web1.copy", off.url("web1")))
    }
    fleet.write_config(
        copy={"repository_root": str(tmp_path / "unused"), "retention": {"keep_last": 1}}
    )
    for day in range(2):
        web.make_archive({"a.txt": f"{day}".encode() * 1000})
        ok(fleet, "pull")
        ok(fleet, "copy")
    result = fleet.server("maintain")
    assert result.returncode == 1, result.stdout + result.stderr
    (line,) = [
        line for line in result.stdout.splitlines() if "refused to delete (403 Forbidden)" in line
    ]
    assert "web1 (copy)" in result.stdout
    assert "maintenance_repository" not in line, line
    assert "copy" in line.split("refused to delete")[1], line


# -- D5 ----------------------------------------------------------------------------------


def test_a_copy_that_is_the_primary_under_another_name_never_forgets_its_history(tmp_path, fleet):
    from tests.helpers.rest_store import RestStore

    store = RestStore(tmp_path / "rest").start(maintain_auth=False)
    try:
        web = fleet.add_host("web1")
        primary = store.maintain.url("web1")  # rest:http://127.0.0.1:PORT/web1/
        same = primary.replace("127.0.0.1", "localhost")  # the very same repository
        fleet.host_extra["web1"] = {
            "repository_file": str(secret_file(tmp_path / "web1.repo", primary)),
            "copy_repository_file": str(secret_file(tmp_path / "web1.copy", same)),
        }
        fleet.write_config(
            retention={"keep_last": 3},
            copy={"repository_root": str(tmp_path / "unused"), "retention": {"keep_last": 1}},
        )
        for day in range(3):
            web.make_archive({"a.txt": f"{day}".encode() * 1000})
            ok(fleet, "pull")
        copied = fleet.server("copy")
        checked = fleet.server("check")
        maintained = fleet.server("maintain")
        kept = fleet.server("snapshots", "web1", "--json")
        ids = [line for line in kept.stdout.splitlines() if "web1-" in line or '"id"' in line]
        env = {
            **os.environ,
            "RESTIC_REPOSITORY": primary,
            "RESTIC_PASSWORD_FILE": str(fleet.password_file),
        }
        listed = subprocess.run(
            ["restic", "--no-cache", "snapshots", "--json"],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
        held = len(json.loads(listed.stdout))
        assert held == 3, (
            f"the primary kept {held} of 3 snapshots (keep_last 3): the copy's retention "
            f"forgot its history\n{maintained.stdout}\n{ids}"
        )
        # and the words say what is wrong: the copy is the primary itself
        said = copied.stdout + checked.stdout + checked.stderr
        assert re.search(r"(is|same as) the primary|same repository", said), said
    finally:
        store.stop()


# -- D6 ----------------------------------------------------------------------------------


def test_a_primary_pack_missing_during_copy_is_named_as_the_primarys(tmp_path, fleet):
    web = fleet.add_host("web1")
    copies = tmp_path / "copies"
    fleet.write_config(copy={"repository_root": str(copies)})
    web.make_archive({"a.bin": os.urandom(300_000)})
    ok(fleet, "pull")
    ok(fleet, "copy")
    data = fleet.repos / "web1" / "data"
    day1 = {p for p in data.rglob("*") if p.is_file()}
    web.make_archive({"b.bin": os.urandom(300_000)})
    ok(fleet, "pull")
    cached = {p.name for p in (fleet.state / "cache").rglob("*") if p.is_file()}
    new = [p for p in data.rglob("*") if p.is_file() and p not in day1 and p.name not in cached]
    assert new, "day 2 stored a data pack"
    for pack in new:  # the primary lost day 2's data (a disk error, a hand)
        pack.rename(tmp_path / pack.name)
    result = fleet.server("copy")
    assert result.returncode == 1, result.stdout + result.stderr
    (line,) = [line for line in result.stdout.splitlines() if line.startswith("web1:")]
    assert not line.rstrip().endswith("StreamPack"), line
    assert str(fleet.repos / "web1") in line, f"the primary is not named: {line}"


# -- D7 ----------------------------------------------------------------------------------


def test_a_drill_of_a_damaged_copy_says_the_data_is_damaged_not_missing(tmp_path, fleet):
    web = fleet.add_host("web1")
    copies = tmp_path / "copies"
    fleet.write_config(copy={"repository_root": str(copies)})
    web.make_archive({"a.bin": os.urandom(300_000)})
    ok(fleet, "pull")
    ok(fleet, "copy")
    for pack in (copies / "web1" / "data").rglob("*"):
        if pack.is_file() and pack.stat().st_size > 100_000:  # the data pack
            data = bytearray(pack.read_bytes())
            middle = len(data) // 2  # (inside a.bin's blob: the first may be a file the
            data[middle : middle + 40] = os.urandom(40)  # drill does not restore)
            pack.write_bytes(bytes(data))
    result = fleet.server("copy", "--verify")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "ciphertext verification failed" in result.stdout, result.stdout
    assert "missing from the snapshot" not in result.stdout, result.stdout


def test_damage_to_an_older_snapshot_of_a_copy_that_keeps_all_is_found(tmp_path, fleet):
    """D3: without copy.retention, maintain's copy pass still checks the copy (locks,
    check, size: nothing forgotten); damage to a pack only an older snapshot uses, that
    the primary no longer holds, fails the copy's maintenance and shows in status."""
    web = fleet.add_host("web1")
    copies = tmp_path / "copies"
    fleet.write_config(
        copy={"repository_root": str(copies)},
        retention={"keep_last": 1},
        maintenance={"check_subsets": 1},
    )
    web.make_archive({"big.bin": os.urandom(24 << 20)})
    ok(fleet, "pull")
    ok(fleet, "copy")
    day1 = {p.name for p in (copies / "web1" / "data").rglob("*") if p.is_file()}
    (web.data / "big.bin").unlink()
    web.make_archive({"small.txt": b"the next day"})
    ok(fleet, "pull")
    ok(fleet, "copy")
    kept = ok(fleet, "maintain").stdout  # the primary forgets day 1: the copy alone holds it
    assert "web1 (copy)" in kept and "the copy keeps every snapshot" in kept, kept
    packs = [p for p in (copies / "web1" / "data").rglob("*") if p.is_file() and p.name in day1]
    victim = max(packs, key=lambda p: p.stat().st_size)  # 24 MiB of day 1's big.bin
    data = bytearray(victim.read_bytes())
    data[100:200] = os.urandom(100)
    victim.write_bytes(bytes(data))

    maintained = fleet.server("maintain")
    status = fleet.server("status")

    assert maintained.returncode == 1, maintained.stdout + maintained.stderr
    copy_rows = maintained.stdout.split("web1 (copy)", 1)[1]
    assert re.search(r"FAIL +check", copy_rows), maintained.stdout
    said = status.stdout + status.stderr
    assert status.returncode == 1 and "copy's last maintenance failed: check" in said, said
    assert len(list(copies.glob("web1/snapshots/*"))) == 2, "nothing is forgotten in the copy"
