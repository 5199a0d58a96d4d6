"""helper-97's outside attack on three changes: every command's own signal guard, the
gone repository (a pull makes none where status.json records a pull of the host), and
copies that lost snapshots. Real restic, borg, sshd; no mocks. Its six defects (a group
member new to the group remade the group's gone repository; a copy's record that failed
every run after copy.retention was dropped; a status entry of the wrong type ending in a
traceback; pull --new without --host pinging; an adopting host's missing repository made
anew; restore's "no pull has stored to it") are mended: every test passes."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

from tests.helpers.client import ClientSandbox
from tests.helpers.faults import SilentEndpoint, all_gone, restic_of
from tests.helpers.fleet import Fleet
from tests.helpers.rest_store import RestEndpoint

pytestmark = pytest.mark.integration


def write_status(fleet: Fleet, hosts: dict) -> None:
    fleet.state.mkdir(parents=True, exist_ok=True)
    (fleet.state / "status.json").write_text(json.dumps({"hosts": hosts}))


# --- 2. gone repositories --------------------------------------------------------------


def test_a_gone_group_repository_is_not_made_anew_by_a_new_member(fleet, tmp_path):
    web1 = fleet.add_host("web1")
    fleet.host_extra["web1"] = {"group": "web"}
    web1.make_archive({"a": b"day 1"})
    fleet.write_config()
    first = fleet.server("pull")
    assert first.returncode == 0, first.stdout + first.stderr
    repo = fleet.repos / "web"
    assert repo.exists()
    repo.rename(tmp_path / "web.away")  # its disk is not mounted
    web2 = fleet.add_host("web2")  # a new member of the group
    fleet.host_extra["web2"] = {"group": "web"}
    fleet.write_config()
    web1.make_archive({"a": b"day 2"})
    web2.make_archive({"a": b"web2 day 1"})
    pulled = fleet.server("pull")
    said = pulled.stdout + pulled.stderr
    assert pulled.returncode == 1, said
    assert not repo.exists(), f"a new, empty group repository was made: {said}"


def test_pull_new_with_dry_run_makes_nothing_and_init_false_says_so(fleet, tmp_path):
    web = fleet.add_host("web1")
    fleet.write_config()
    web.make_archive({"a": b"1"})
    assert fleet.server("pull").returncode == 0
    repo = fleet.repos / "web1"
    repo.rename(tmp_path / "web1.away")
    web.make_archive({"a": b"2"})
    dry = fleet.server("pull", "--host", "web1", "--new", "--dry-run")
    assert not repo.exists(), dry.stdout + dry.stderr
    assert "Traceback" not in dry.stderr, dry.stderr
    fleet.write_config(backend={"init": False})
    refused = fleet.server("pull")
    said = refused.stdout + refused.stderr
    assert refused.returncode == 1 and not repo.exists(), said
    assert str(repo) in said, said


def test_restore_and_verify_of_a_gone_repository_say_gone(fleet, tmp_path):
    web = fleet.add_host("web1")
    fleet.write_config()
    web.make_archive({"a": b"1"})
    assert fleet.server("pull").returncode == 0
    (fleet.repos / "web1").rename(tmp_path / "web1.away")
    said = ""
    for args in (
        ("restore", "web1", "--target", str(tmp_path / "out")),
        ("verify", "--host", "web1"),
        ("maintain", "--host", "web1"),
    ):
        ran = fleet.server(*args)
        said += ran.stdout + ran.stderr
        assert ran.returncode != 0, said
        assert "Traceback" not in said, said
    assert not (fleet.repos / "web1").exists(), said
    assert "no pull has stored to it" not in said, said


def test_pull_new_for_two_gone_hosts_starts_both(fleet, tmp_path):
    hosts = [fleet.add_host("web1"), fleet.add_host("web2")]
    fleet.write_config()
    for host in hosts:
        host.make_archive({"a": b"1"})
    assert fleet.server("pull").returncode == 0
    for name in ("web1", "web2"):
        (fleet.repos / name).rename(tmp_path / f"{name}.away")
    for host in hosts:
        host.make_archive({"a": b"2"})
    started = fleet.server("pull", "--host", "web1", "--host", "web2", "--new")
    assert started.returncode == 0, started.stdout + started.stderr
    assert len(fleet.snapshots("web1")) == 1 and len(fleet.snapshots("web2")) == 1


def test_a_status_entry_of_the_wrong_type_is_no_traceback(fleet):
    web = fleet.add_host("web1")
    fleet.write_config()
    write_status(fleet, {"web1": ["not", "an", "entry"]})
    web.make_archive({"a": b"1"})
    said = ""
    for args in (("snapshots", "web1"), ("check", "--host", "web1"), ("pull",)):
        ran = fleet.server(*args)
        said += ran.stdout + ran.stderr
        assert ran.returncode != 70, said
    assert "Traceback" not in said and "AttributeError" not in said, said


def test_a_hostile_status_record_is_neither_echoed_raw_nor_unbounded(fleet):
    fleet.add_host("web1")
    fleet.write_config()
    hostile = "\x1b]0;owned\x07\x1b[2J" + "A" * 200_000
    write_status(fleet, {"web1": {"newest_snapshot": hostile}})
    listed = fleet.server("snapshots", "web1")
    said = listed.stdout + listed.stderr
    assert listed.returncode == 1, said[:2000]
    # (since helper-134's F3 a time that does not parse is left out as status.json is
    # read, said once by its key: the record is not taken for a pull's any more, and
    # its words reach no output at all)
    assert "left out" in said and "web1.newest_snapshot" in said, said[:2000]
    assert "does not exist yet" in said, said[:2000]
    assert "AAAA" not in said
    assert "\x1b" not in said and "\x07" not in said, said[:300]
    assert len(said) < 20_000, len(said)


def test_pull_new_without_host_pings_nothing(fleet):
    seen: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            seen.append(self.path)
            self.send_response(200)
            self.end_headers()

        do_POST = do_HEAD = do_GET

        def log_message(self, *args):
            pass

    httpd = HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        fleet.add_host("web1")
        url = f"http://127.0.0.1:{httpd.server_address[1]}/uuid-h97"
        fleet.write_config(notify={"healthchecks": url})
        refused = fleet.server("pull", "--new")
        assert refused.returncode == 2 and "--new needs --host" in refused.stderr
        assert seen == [], seen
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_a_gone_rest_repository_is_not_made_anew(fleet, tmp_path):
    store = tmp_path / "store"
    store.mkdir()
    rest = RestEndpoint(store, append_only=False).start()
    try:
        web = fleet.add_host("web1")
        fleet.write_config(backend={"repository_url": rest.url("{host}")})
        web.make_archive({"a": b"1"})
        first = fleet.server("pull")
        assert first.returncode == 0, first.stdout + first.stderr
        (store / "web1").rename(tmp_path / "web1.away")  # the store lost it
        rest.stop()  # (a running rclone still serves the moved repository's config)
        rest = RestEndpoint(store, append_only=False).start()
        fleet.write_config(backend={"repository_url": rest.url("{host}")})
        web.make_archive({"a": b"2"})
        pulled = fleet.server("pull")
        said = pulled.stdout + pulled.stderr
        assert pulled.returncode == 1, said
        assert "yet this host was pulled before" in said, said
        assert "backend.repository_url" in said, said
        assert not (store / "web1").exists(), said
        listed = fleet.server("snapshots", "web1")
        assert listed.returncode == 1 and "was pulled before" in listed.stderr, listed.stderr
    finally:
        rest.stop()


def test_an_adopted_host_whose_repository_is_missing_gets_none_made(fleet):
    web = fleet.add_host("web1")
    fleet.host_extra["web1"] = {"adopt_host": "web1.example.org"}
    fleet.write_config()
    web.make_archive({"a": b"1"})
    pulled = fleet.server("pull")
    said = pulled.stdout + pulled.stderr
    assert not (fleet.repos / "web1").exists(), said


# --- 3. copies that lost snapshots --------------------------------------------------------


def test_dropping_copy_retention_is_no_lasting_loss(fleet, tmp_path):
    web = fleet.add_host("web1")
    copies = tmp_path / "copies"
    fleet.write_config(
        copy={"repository_root": str(copies), "retention": {"keep_last": 1}},
        retention={"keep_last": 1},
    )
    for day in range(2):
        web.make_archive({"a.txt": f"day {day}".encode() * 100})
        assert fleet.server("pull").returncode == 0
        ran = fleet.server("copy", "--no-verify")
        assert ran.returncode == 0, ran.stdout + ran.stderr
    maintained = fleet.server("maintain")
    assert maintained.returncode == 0, maintained.stdout + maintained.stderr
    # the administrator drops the copy's own retention: it keeps all from now on
    fleet.extra["copy"] = {"repository_root": str(copies)}
    fleet.write_config()
    first = fleet.server("copy", "--no-verify")
    second = fleet.server("copy", "--no-verify")
    said = first.stdout + first.stderr + second.stdout + second.stderr
    assert second.returncode == 0, said


def test_a_copy_keeping_all_after_the_primarys_retention_and_in_a_group(fleet, tmp_path):
    hosts = [fleet.add_host("web1"), fleet.add_host("web2")]
    for host in hosts:
        fleet.host_extra[host.name] = {"group": "web"}
    copies = tmp_path / "copies"
    fleet.write_config(copy={"repository_root": str(copies)}, retention={"keep_last": 1})
    for day in range(2):
        for host in hosts:
            host.make_archive({"a.txt": f"{host.name} day {day}".encode() * 100})
        assert fleet.server("pull").returncode == 0
        ran = fleet.server("copy", "--no-verify")
        assert ran.returncode == 0, ran.stdout + ran.stderr
    maintained = fleet.server("maintain")
    assert maintained.returncode == 0, maintained.stdout + maintained.stderr
    assert len(fleet.snapshots("web")) == 2  # one each
    for host in hosts:
        host.make_archive({"a.txt": f"{host.name} day 3".encode()})
    assert fleet.server("pull").returncode == 0
    for _ in range(2):
        again = fleet.server("copy", "--no-verify", "--json")
        assert again.returncode == 0, again.stdout + again.stderr
        for host in json.loads(again.stdout)["hosts"]:
            assert host["snapshots"] == 3 and not host["problems"], host
    assert "lost" not in again.stdout


def test_a_borg_mirror_after_the_primarys_retention_is_no_loss(tmp_path):
    fleet = Fleet(tmp_path / "fleet", backend="borg")
    try:
        web = fleet.add_host("web1")
        copies = tmp_path / "copies"
        fleet.write_config(copy={"repository_root": str(copies)}, retention={"keep_last": 1})
        for day in range(2):
            web.make_archive({"a.txt": f"day {day}".encode() * 100})
            assert fleet.server("pull").returncode == 0
        ran = fleet.server("copy", "--no-verify", "--json")
        assert ran.returncode == 0, ran.stdout + ran.stderr
        maintained = fleet.server("maintain")
        assert maintained.returncode == 0, maintained.stdout + maintained.stderr
        assert len(fleet.snapshots("web1")) == 1
        web.make_archive({"a.txt": b"day 2"})
        assert fleet.server("pull").returncode == 0
        for _ in range(2):
            again = fleet.server("copy", "--no-verify", "--json")
            assert again.returncode == 0, again.stdout + again.stderr
        host = json.loads(again.stdout)["hosts"][0]
        assert host["snapshots"] == len(fleet.snapshots("web1")) == 2, host
    finally:
        fleet.stop()


# --- 1. signals ---------------------------------------------------------------------------


def test_a_second_signal_leaves_no_store_tool_running(silent_fleet):
    proc = silent_fleet.server_popen("snapshots", "web1")
    with restic_of(proc) as children:
        os.kill(proc.pid, signal.SIGINT)
        time.sleep(0.05)
        os.kill(proc.pid, signal.SIGINT)
        _, err = proc.communicate(timeout=30)
        assert proc.returncode in (130, -signal.SIGINT), err
        assert all_gone(children), "restic ran on after pullback ended"


def test_a_second_sigterm_still_restarts_what_a_client_run_stopped(tmp_path):
    box = ClientSandbox(tmp_path / "box", hostname="web1")
    marks = tmp_path / "marks"
    box.add_service(
        "app",
        f"""\
        service: {{name: app}}
        command:
          pre: ["echo stopped >> {marks}"]
          dump: ["echo dumping >> {marks}; sleep 60"]
          post: ["sleep 3; echo started >> {marks}"]
        """,
    )
    proc = box.popen("run")
    try:
        deadline = time.monotonic() + 60
        while not (marks.exists() and "dumping" in marks.read_text()):
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        time.sleep(1)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 143, err
    assert marks.read_text().split() == ["stopped", "dumping", "started"], err
    assert "still cleaning up" in err and "Traceback" not in err, err
    assert box.published() == []


def test_serve_ends_quietly_on_a_dropped_connection(tmp_path):
    box = ClientSandbox(tmp_path / "box", hostname="web1")
    argv = [sys.executable, "-m", "pullback.client.cli", "--config", str(box.config), "serve"]
    env = {**os.environ, "SSH_ORIGINAL_COMMAND": "session"}
    # SIGHUP while it waits for the next request
    proc = subprocess.Popen(
        argv, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    time.sleep(1.5)
    proc.send_signal(signal.SIGHUP)
    _out, err = proc.communicate(timeout=30)
    assert proc.returncode == 129, err
    assert b"Traceback" not in err, err
    # the reader gone (SIGPIPE is ignored by Python): the answer cannot be written
    proc = subprocess.Popen(
        argv, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    proc.stdout.close()
    proc.stdin.write(b"list\n")
    proc.stdin.close()
    err = proc.stderr.read()
    proc.wait(timeout=30)
    assert proc.returncode == 1, err
    assert b"Traceback" not in err, err


def test_trust_stopped_while_the_host_never_answers(tmp_path):
    endpoint = SilentEndpoint()
    fleet = Fleet(tmp_path / "fleet")
    try:
        fleet.add_host("web1", trust=False)
        fleet.host_extra["web1"] = {"address": "127.0.0.1", "port": endpoint.port}
        fleet.write_config(ssh={"connect_timeout": "60s"})
        proc = fleet.server_popen("trust", "web1", "--yes")
        time.sleep(3)
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
        assert time.monotonic() - started < 10
        assert proc.returncode == 143, out + err
        assert "Traceback" not in err and "interrupted by SIGTERM" in err, err
        assert not fleet.known_hosts.exists() or "127.0.0.1" not in fleet.known_hosts.read_text()
    finally:
        fleet.stop()
        endpoint.close()


def restic_anywhere_under(root: str) -> list[int]:
    """The pids of restic processes whose environment names a repository file below
    ``root`` (those this test's commands started, wherever they were reparented)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/comm") as handle:
                if handle.read().strip() != "restic":
                    continue
            with open(f"/proc/{entry}/environ", "rb") as handle:
                if root.encode() in handle.read():
                    found.append(int(entry))
        except OSError:
            continue
    return found


def test_sigterm_at_any_moment_of_a_start_leaves_nothing_running(silent_fleet):
    root = str(silent_fleet.root)
    codes = set()
    try:
        for step in range(12):
            proc = silent_fleet.server_popen("snapshots", "web1")
            time.sleep(0.3 + step * 0.12)
            proc.send_signal(signal.SIGTERM)
            _, err = proc.communicate(timeout=30)
            codes.add(proc.returncode)
            assert proc.returncode in (143, -signal.SIGTERM), err
            assert "Traceback" not in err, err
            deadline = time.monotonic() + 15
            while restic_anywhere_under(root) and time.monotonic() < deadline:
                time.sleep(0.1)
            assert not restic_anywhere_under(root), f"restic left running at step {step}"
    finally:
        for pid in restic_anywhere_under(root):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    assert 143 in codes, codes
