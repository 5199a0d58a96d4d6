"""Two pull servers, one fleet view: each server pulls its own hosts (real sshd, client and
restic) and writes its own status file; a copy of one is merged into the other's
``pullback-server status``, run as the command it is."""

from __future__ import annotations

import json
import shutil
import socket

import pytest

from tests.helpers.fleet import Fleet


@pytest.fixture
def servers(tmp_path):
    a, b = Fleet(tmp_path / "a"), Fleet(tmp_path / "b")
    yield a, b
    a.stop()
    b.stop()


def test_two_pull_servers_merged_into_one_view(servers, tmp_path):
    a, b = servers
    a.add_host("web1").make_archive()
    b.add_host("db1").make_archive()
    b.add_host("web1").make_archive()  # sharded twice by mistake
    assert a.server("pull").returncode == 0
    assert b.server("pull").returncode == 0
    copy = tmp_path / "fleet" / "b.json"  # what the administrator's rsync leaves
    copy.parent.mkdir()
    shutil.copy(b.state / "status.json", copy)
    here = socket.gethostname()  # both ran here: b's copy is told apart by its path
    there = f"{here} ({copy})"

    status = a.server("status", "--merge", str(copy))
    header, *rows, written, twice = status.stdout.splitlines()
    assert header.split()[:3] == ["HOST", "SERVER", "STATE"]
    column = header.index("SERVER")
    shown = sorted((line.split()[0], line[column:].split("  ")[0]) for line in rows)
    assert shown == [("db1", there), ("web1", here), ("web1", there)]
    assert written.startswith(f"{there}: status file written ")
    assert twice == f"web1 on more than one server: {here}, {there}"
    assert status.returncode == 1
    assert status.stderr == (
        f"on more than one server (each host belongs in one server.yaml): web1: {here}, {there}\n"
    )

    check = a.server("status", "--check", "--merge", str(copy))
    assert check.returncode == 1
    assert check.stdout.startswith(
        f"PULLBACK WARNING - on more than one server: web1 ({here}, {there}); 3 of 3 hosts ok |"
    )
    assert "hosts=3 ok=3 attention=0 failed=0 stale=0" in check.stdout

    merged = json.loads(a.server("status", "--json", "--merge", str(copy)).stdout)
    assert [s["server"] for s in merged["servers"]] == [here, there]
    assert merged["duplicates"] == {"web1": [here, there]}

    page = tmp_path / "www" / "fleet.html"
    written = a.server("status", "--html", str(page), "--merge", str(copy))
    assert written.returncode == 1 and written.stdout == ""
    html = page.read_text()
    assert "<th>server</th>" in html and f'data-host="db1" data-server="{there}"' in html

    missing = tmp_path / "fleet" / "c.json"  # the copy of a third server never came
    check = a.server("status", "--check", "--merge", str(missing))
    assert (check.returncode, check.stdout.split(" |")[0]) == (
        3,
        f"PULLBACK UNKNOWN - cannot read: {missing} (No such file or directory); 1 of 1 hosts ok",
    )
    status = a.server("status", "--merge", str(missing))
    assert status.returncode == 1 and f"merged status file {missing}: " in status.stderr


def test_a_named_pull_of_a_disabled_host_is_recorded_so_and_merged_so(servers, tmp_path):
    """helper-141 T1, through real pulls: status.json's ``configured`` records
    ``enabled: false`` for a disabled host, and its pull named by hand (``pull --host``)
    that failed is marked ``pulled_disabled`` and counts (WARNING, never stale); the
    server merging that file sees the host disabled, not stale, its named pull failed."""
    a, b = servers
    a.add_host("web1").make_archive()
    b.add_host("db1").make_archive()
    old = b.add_host("old")
    old.make_archive()
    assert a.server("pull").returncode == 0
    assert b.server("pull").returncode == 0
    b.host_extra["old"] = {"enabled": False, "max_age": "1s"}  # (its snapshot: too old)
    b.write_config()
    old.sshd.stop()  # the machine is gone
    assert b.server("pull").returncode == 0  # (old is not pulled)
    status = json.loads((b.state / "status.json").read_text())
    assert status["configured"]["old"]["enabled"] is False
    assert "enabled" not in status["configured"]["db1"]
    assert "pulled_disabled" not in status["hosts"]["old"]
    assert b.server("status", "--check").stdout.startswith("PULLBACK OK - 1 of 1 hosts ok")

    named = b.server("pull", "--host", "old")
    assert named.returncode == 1, named.stderr[-2000:]
    entry = json.loads((b.state / "status.json").read_text())["hosts"]["old"]
    assert (entry["last_result"], entry["pulled_disabled"]) == ("failed", True), entry
    assert entry.get("stale") is not True, entry  # (never stale, as status says)
    check = b.server("status", "--check")
    assert check.returncode == 1, check.stdout
    assert check.stdout.startswith("PULLBACK WARNING - last pull failed: old; 1 of 2 hosts ok")
    assert "stale=0" in check.stdout, check.stdout

    copy = tmp_path / "fleet" / "b.json"
    copy.parent.mkdir()
    shutil.copy(b.state / "status.json", copy)
    merged = a.server("status", "--check", "--merge", str(copy))
    assert merged.returncode == 1, merged.stdout
    assert merged.stdout.startswith("PULLBACK WARNING - last pull failed: old ("), merged.stdout
    assert "stale=0" in merged.stdout, merged.stdout
    shown = a.server("status", "--merge", str(copy))
    row = next(line for line in shown.stdout.splitlines() if line.startswith("old "))
    assert row.split()[3:5] == ["failed", "failed"] and "stale" not in row, shown.stdout
    assert "stale" not in shown.stderr, shown.stderr  # (its 1s max_age long passed)
