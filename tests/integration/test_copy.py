"""The second copy (``pullback-server copy``, issue 20), with real restic: into a local
directory and into an append-only REST store (``rclone serve restic --append-only``).
Only what the copy lacks travels; the copy's list is compared with the primary's; a copy
that diverged or fell behind is a problem in ``status``; the copy is drilled."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest

from tests.helpers.fleet import Fleet
from tests.helpers.rest_store import RestEndpoint

pytestmark = pytest.mark.integration

COPY_PASSWORD = "copy-Own-Password-71"


def restic(repo: str, password_file: Path, *args: str, check: bool = True):
    env = {**os.environ, "RESTIC_REPOSITORY": repo, "RESTIC_PASSWORD_FILE": str(password_file)}
    return subprocess.run(
        ["restic", "--no-cache", *args], env=env, capture_output=True, text=True, check=check
    )


def snapshots(repo: str, password_file: Path) -> list[dict]:
    return json.loads(restic(repo, password_file, "snapshots", "--json").stdout)


def test_a_local_copy_takes_only_what_it_lacks_and_a_diverged_or_stale_copy_is_a_problem(
    tmp_path, fleet
):
    web = fleet.add_host("web1")
    copy_pass = tmp_path / "copy.pass"
    copy_pass.write_text(COPY_PASSWORD + "\n")
    copy_pass.chmod(0o600)
    copies = tmp_path / "copies"
    metrics = tmp_path / "metrics.prom"
    page = tmp_path / "status.html"
    fleet.write_config(
        copy={"repository_root": str(copies), "password_file": str(copy_pass)},
        metrics_file=str(metrics),
        status_page=str(page),
    )

    def server(*args: str, rc: int = 0) -> subprocess.CompletedProcess:
        result = fleet.server(*args)
        assert result.returncode == rc, result.stdout + result.stderr
        return result

    for day in range(2):
        web.make_archive({"site/index.html": f"day {day}".encode(), "blob": os.urandom(200_000)})
        server("pull")
    result = json.loads(server("copy", "--json").stdout)
    (host,) = result["hosts"]
    assert host["status"] == "ok" and host["copied"] == 2 and host["snapshots"] == 2, host
    assert host["drill"]["ok"], "the first copy is drilled (never drilled before)"
    copy_repo = str(copies / "web1")
    primary = {s["tree"] for s in fleet.snapshots("web1")}
    assert {s["tree"] for s in snapshots(copy_repo, copy_pass)} == primary
    # the copy opens with its own password only
    assert restic(copy_repo, fleet.password_file, "cat", "config", check=False).returncode != 0

    # the next day: one snapshot travels, not the history
    web.make_archive({"site/index.html": b"day 2"})
    server("pull")
    host = json.loads(server("copy", "--json").stdout)["hosts"][0]
    assert host["copied"] == 1 and host["snapshots"] == 3, host
    assert host["drill"] is None, "drilled again only when copy.verify_every is due"
    table = server("status").stdout
    assert "COPY" in table and "copied" in table and "ago, drilled" in table, table
    assert 'pullback_copy_ok{host="web1"} 1' in metrics.read_text()
    assert "<th>copy</th>" in page.read_text() and "ago, drilled" in page.read_text()
    summary = server("pull", "--summary").stdout  # the mail's text
    assert "second copy: copied" in summary and "ago, drilled" in summary, summary

    # a snapshot the primary never had appears in the copy: the copy diverged
    planted = tmp_path / "planted"
    planted.mkdir()
    (planted / "x").write_text("not from the primary")
    restic(copy_repo, copy_pass, "backup", "--host", "web1", "--tag", "pullback", str(planted))
    result = server("copy", rc=1)
    assert "holds snapshots the primary never had" in result.stdout, result.stdout
    status = server("status", rc=1)
    assert "web1: copy failed" in status.stderr, status.stderr
    assert 'pullback_copy_ok{host="web1"} 0' in metrics.read_text()
    restic(copy_repo, copy_pass, "forget", "latest", "--host", "web1", "--tag", "pullback")

    # the copy vanishes (an off-site disk not mounted): not remade silently
    moved = tmp_path / "copies-elsewhere"
    (copies / "web1").rename(moved)
    result = server("copy", rc=1)
    assert "is gone, yet it held 3 snapshot(s)" in result.stdout, result.stdout
    assert not (copies / "web1").exists()
    assert server("status", rc=1).stderr.count("web1: copy failed") == 1
    moved.rename(copies / "web1")

    # the copy falls behind its limit: stale, like a stale backup
    server("copy")
    fleet.write_config(  # (a copy is not judged stricter than its primary's max_age)
        copy={"repository_root": str(copies), "password_file": str(copy_pass), "max_age": "2s"},
        max_age="2s",
    )
    time.sleep(2.5)
    status = server("status", rc=1)
    assert "web1: copy stale" in status.stderr, status.stderr


def test_a_copy_that_lost_a_snapshot_fails_once_and_gets_it_again(tmp_path, fleet):
    """helper-96: without copy.retention nothing forgets in a copy, yet one that lost
    its oldest snapshot (a file removed in the store) was reported "ok" by copy and
    status: the loss would have shown only after a rebuild from the copies."""
    web = fleet.add_host("web1")
    copy_pass = tmp_path / "copy.pass"
    copy_pass.write_text(COPY_PASSWORD + "\n")
    copy_pass.chmod(0o600)
    copies = tmp_path / "copies"
    fleet.write_config(copy={"repository_root": str(copies), "password_file": str(copy_pass)})
    for day in range(3):
        web.make_archive({"site/index.html": f"day {day}".encode()})
        assert fleet.server("pull").returncode == 0
    assert fleet.server("copy").returncode == 0
    copy_repo = copies / "web1"
    oldest = min(snapshots(str(copy_repo), copy_pass), key=lambda s: s["time"])
    (copy_repo / "snapshots" / oldest["id"]).unlink()

    ran = fleet.server("copy", "--json")
    assert ran.returncode == 1, ran.stdout + ran.stderr
    (host,) = json.loads(ran.stdout)["hosts"]
    assert host["status"] == "failed" and host["copied"] == 1 and host["snapshots"] == 3, host
    assert "the copy lost 1 snapshot(s) since the last copy (it held 3, it holds 2" in ran.stdout
    status = fleet.server("status")
    assert status.returncode == 1 and "web1: copy failed" in status.stderr, status.stderr
    trees = {s["tree"] for s in snapshots(str(copy_repo), copy_pass)}
    assert trees == {s["tree"] for s in fleet.snapshots("web1")}, "copied again"
    again = fleet.server("copy")
    assert again.returncode == 0 and "the copy holds 3" in again.stdout, again.stdout


def test_a_copy_into_an_append_only_rest_store_is_made_and_drilled(tmp_path, fleet):
    store_dir = tmp_path / "offsite"
    store_dir.mkdir()
    offsite = RestEndpoint(store_dir, append_only=True).start()
    try:
        web = fleet.add_host("web1")
        fleet.write_config(copy={"repository_url": offsite.url("{host}")})
        for day in range(2):
            web.make_archive({"a.txt": f"{day}".encode() * 1000})
            assert fleet.server("pull").returncode == 0
        result = fleet.server("copy", "--verify", "--json")
        assert result.returncode == 0, result.stdout + result.stderr
        host = json.loads(result.stdout)["hosts"][0]
        assert host["copied"] == 2 and host["drill"]["ok"], host
        assert len(snapshots(offsite.url("web1"), fleet.password_file)) == 2
        again = json.loads(fleet.server("copy", "--json").stdout)["hosts"][0]
        assert again["copied"] == 0 and again["status"] == "ok", again
    finally:
        offsite.stop()


def test_the_copys_own_retention_is_applied_by_maintain_and_guarded(tmp_path, fleet):
    """``copy.retention`` (here shorter than the primary's, to see it act) is applied by
    ``maintain``, not by ``copy``; a day that looks encrypted holds the copy's forget as it
    holds the primary's, until ``release HOST --copy``."""
    web = fleet.add_host("web1")
    copies = tmp_path / "copies"
    fleet.write_config(
        copy={"repository_root": str(copies), "retention": {"keep_last": 1}},
        retention={"keep_last": 5},
        maintenance={"guard": {"min_files": 5, "min_bytes": "1"}},
    )
    files = {f"data/f{i}.txt": f"file {i} ".encode() * 500 for i in range(20)}

    def day(changed: dict[str, bytes]) -> None:
        files.update(changed)
        web.make_archive(files)
        assert fleet.server("pull").returncode == 0
        result = fleet.server("copy", "--no-verify")
        assert result.returncode == 0, result.stdout + result.stderr

    def copy_count() -> int:
        return len(snapshots(str(copies / "web1"), fleet.password_file))

    day({})
    day({"data/f0.txt": b"an ordinary day"})
    result = fleet.server("copy", "--json")  # nothing new: retention is not copy's business
    assert copy_count() == 2, result.stdout
    maintained = json.loads(fleet.server("maintain", "--json").stdout)
    copy_run = next(h for h in maintained["hosts"] if h["scope"] == "copy")
    forget = next(s for s in copy_run["steps"] if s["name"] == "forget")
    assert forget["detail"].startswith("kept 1 snapshot(s), forgot 1"), copy_run
    assert copy_count() == 1 and len(fleet.snapshots("web1")) == 2

    # every file rewritten with random bytes: both forgets are held
    day({name: os.urandom(len(data)) for name, data in files.items()})
    result = fleet.server("maintain")
    assert result.returncode == 1
    assert "release web1 --copy" in result.stderr + result.stdout, result.stderr
    assert copy_count() == 2, "the held copy keeps every snapshot"
    status = fleet.server("status")
    assert "web1: copy's forget held by the ransomware guard" in status.stderr, status.stderr
    released = fleet.server("release", "web1", "--copy")
    assert "web1's copy: released the hold" in released.stdout, released.stdout
    result = fleet.server("maintain")
    assert result.returncode == 1, "the primary's hold stays until it is released too"
    assert copy_count() == 1, "the released copy forgets by its own policy again"


def test_a_borg_copy_is_a_mirror_taken_under_the_primarys_lock_and_drilled(tmp_path):
    """borg 1.2 copies no archives between repositories: the copy is the primary's
    directory mirrored under ``borg with-lock`` (deduplication kept: it is the same
    repository), listed and compared like restic's, and drilled."""
    fleet = Fleet(tmp_path / "fleet", backend="borg")
    try:
        web = fleet.add_host("web1")
        copies = tmp_path / "copies"
        bad = fleet.write_config(
            copy={"repository_root": str(copies), "retention": {"keep_last": 1}}
        )
        refused = fleet.server("copy")
        assert refused.returncode == 2 and "drop retention" in refused.stderr, refused.stderr
        assert str(bad) in refused.stderr
        fleet.write_config(copy={"repository_root": str(copies)})
        for day in range(2):
            web.make_archive({"a.txt": f"day {day}".encode() * 1000})
            assert fleet.server("pull").returncode == 0
        result = fleet.server("copy", "--json")
        assert result.returncode == 0, result.stdout + result.stderr
        host = json.loads(result.stdout)["hosts"][0]
        assert host["copied"] == 2 and host["snapshots"] == 2 and host["drill"]["ok"], host
        env = {**fleet.repo_env("web1"), "BORG_REPO": str(copies / "web1")}
        env["BORG_BASE_DIR"] = str(tmp_path / "borg-look")
        listed = subprocess.run(
            ["borg", "list", "--short"], env=env, capture_output=True, text=True, check=True
        )
        assert len(listed.stdout.split()) == 2, listed.stdout
        web.make_archive({"a.txt": b"day 2"})
        assert fleet.server("pull").returncode == 0
        again = json.loads(fleet.server("copy", "--json").stdout)["hosts"][0]
        assert again["copied"] == 1 and again["snapshots"] == 3, again
    finally:
        fleet.stop()


def test_a_copy_moved_or_made_anew_is_a_new_copy_drilled_at_once(tmp_path, fleet):
    """An outside walk of disaster-recovery.md: a copy: section moved to another store
    was refused with the old store's count ("is gone, yet it held 7"), and a copy made
    anew (``--new``) showed the old store's drill ("drilled 15m ago") and was not drilled
    for copy.verify_every. Now either is a new copy: its record starts anew and it is
    drilled at once. A failed maintenance of the copy is in the metrics, and ``check``
    names the copy."""
    web = fleet.add_host("web1")
    metrics = tmp_path / "metrics.prom"
    first, second = tmp_path / "copies", tmp_path / "other-disk"

    def configure(root: Path, **extra) -> None:
        fleet.write_config(copy={"repository_root": str(root), **extra}, metrics_file=str(metrics))

    def copy_run(*args: str, rc: int = 0) -> dict:
        result = fleet.server("copy", "--json", *args)
        assert result.returncode == rc, result.stdout + result.stderr
        return json.loads(result.stdout)["hosts"][0]

    configure(first)
    for day in range(2):
        web.make_archive({"site/index.html": f"day {day}".encode()})
        assert fleet.server("pull").returncode == 0
    assert copy_run()["drill"]["ok"]
    assert copy_run()["drill"] is None  # verify_every (30 days) not due

    configure(second)  # the copy moves to another disk
    moved = copy_run()
    assert moved["made"] and moved["snapshots"] == 2, moved
    assert moved["drill"] is not None and moved["drill"]["ok"], "a new store is drilled at once"
    entry = json.loads((fleet.state / "status.json").read_text())["hosts"]["web1"]["copy"]
    assert entry["snapshots"] == 2 and entry["verify_result"] == "ok", entry

    # the copy's disk emptied, then made anew on purpose: drilled at once, not "drilled
    # 1s ago" from the store that is gone
    subprocess.run(["rm", "-rf", str(second / "web1")], check=True)
    refused = fleet.server("copy")
    assert refused.returncode == 1 and "is gone, yet it held 2" in refused.stdout, refused.stdout
    checked = fleet.server("check")
    assert "is gone, yet it held 2" in checked.stdout + checked.stderr, checked.stdout
    anew = copy_run("--new")
    assert anew["made"] and anew["drill"] is not None and anew["drill"]["ok"], anew
    checked = fleet.server("check")
    assert "web1: copy " in checked.stdout and "has 2 snapshot(s)" in checked.stdout, checked.stdout

    # a maintenance of the copy that fails is in the metrics (an outside walk saw only
    # pullback_copy_ok 1): the copy's repository made unreadable to restic
    configure(second, retention={"keep_last": 1})
    for pack in (second / "web1" / "keys").iterdir():
        pack.write_bytes(b"not a key")
    assert fleet.server("maintain").returncode == 1
    assert 'pullback_copy_last_maintain_ok{host="web1"} 0' in metrics.read_text()
    assert 'pullback_last_maintain_ok{host="web1"} 1' in metrics.read_text()


def test_a_run_that_cannot_read_the_copys_location_keeps_its_record(tmp_path, fleet):
    """helper-67's attack: a location file unusable for one run (mode 0644) gave that
    run another location; its failure wiped the copy's record, and the next run, the
    copy's disk not mounted, made the copy anew with exit 0. A failed run never ends the
    record: the gone copy is refused."""
    from tests.helpers.files import secret_file

    web = fleet.add_host("web1")
    store = tmp_path / "copies" / "web1"
    repo_file = secret_file(tmp_path / "web1.copyrepo", str(store))
    fleet.host_extra["web1"] = {"copy_repository_file": str(repo_file)}
    fleet.write_config(copy={"repository_root": str(tmp_path / "unused")})

    def copy_run() -> tuple[int, dict]:
        result = fleet.server("copy", "--json")
        return result.returncode, json.loads(result.stdout)["hosts"][0]

    for day in range(2):
        web.make_archive({"site/index.html": f"day {day}".encode()})
        assert fleet.server("pull").returncode == 0
    assert copy_run()[0] == 0
    repo_file.chmod(0o644)
    assert copy_run()[0] == 1
    repo_file.chmod(0o600)
    entry = json.loads((fleet.state / "status.json").read_text())["hosts"]["web1"]["copy"]
    assert entry["snapshots"] == 2, entry
    subprocess.run(["rm", "-rf", str(store)], check=True)
    code, result = copy_run()
    assert code == 1 and "is gone, yet it held 2" in " ".join(result["problems"]), result
    assert not store.exists()
