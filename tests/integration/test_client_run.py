"""pullback-client run/check/list as a user meets them: real subprocesses, real files."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from pullback.common.archive.directory import mark_server_applies_deltas
from pullback.common.archive.reader import verify_archive
from pullback.common.locks import lock_status
from tests.helpers.client import ClientSandbox

TEST_PLUGINS = Path(__file__).parent.parent / "plugins"


@pytest.fixture
def box(tmp_path) -> ClientSandbox:
    data = tmp_path / "data"
    (data / "uploads").mkdir(parents=True)
    (data / "uploads" / "photo.jpg").write_bytes(os.urandom(200_000))
    (data / "uploads" / "debug.log").write_text("noise\n")
    (data / "config.ini").write_text("[app]\n")
    return ClientSandbox(tmp_path / "client")


def good_service(box: ClientSandbox, name: str = "app") -> None:
    data = box.root.parent / "data"
    box.add_service(
        name,
        f"""\
        service:
          name: {name}
        command:
          dump:
            - run: "printf 'CREATE TABLE t;' "
              output: db.sql
        files:
          paths: [{data}]
          exclude: ["*.log"]
        """,
        subdir="web",
    )


def wait_for(predicate, timeout=20.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def test_failing_service_next_to_a_good_one(box):
    good_service(box)
    box.add_service(
        "db",
        """\
        service: {name: db}
        command:
          dump: ["echo 'connection refused' >&2; exit 2"]
        """,
    )
    result = box.cli("run")
    assert result.returncode == 1, result.stderr
    assert "1 of 2 services failed: db" in result.stderr
    (archive,) = box.published()
    sidecar = box.sidecar(archive)
    assert sidecar["status"] == "partial"
    by_name = {s["name"]: s for s in sidecar["services"]}
    assert by_name["app"]["status"] == "ok"
    assert by_name["db"]["status"] == "failed"
    assert "exited with code 2" in by_name["db"]["error"]
    assert "connection refused" in by_name["db"]["error"]
    verified = verify_archive(archive)
    assert verified.sha256 == sidecar["archive"]["sha256"]
    data = str(box.root.parent / "data").lstrip("/")
    assert set(verified.manifest) == {
        "services/app/command/db.sql",
        f"services/app/files/{data}/config.ini",
        f"services/app/files/{data}/uploads/photo.jpg",
    }
    assert not box.leftovers()
    assert oct(archive.stat().st_mode & 0o777) == "0o640"


def test_all_good_exits_0_and_list_shows_the_archive(box):
    good_service(box)
    result = box.cli("run")
    assert result.returncode == 0, result.stderr
    listing = json.loads(box.cli("list", "--json").stdout)
    assert len(listing) == 1
    assert listing[0]["sidecar"]["status"] == "ok"
    assert listing[0]["name"].startswith("testhost-") and listing[0]["complete"]
    table = box.cli("list").stdout
    assert "1/1 ok" in table and "ready" in table


@pytest.mark.parametrize("compression", ["none", "gzip"])
def test_every_compression_publishes_an_archive_that_verifies(box, compression):
    """``compression: none`` once never published ("changed on disk after it was
    written"): the record padding after the end marker was not counted on reading."""
    good_service(box)
    box.write_config(compression=compression)
    result = box.cli("run")
    assert result.returncode == 0, result.stderr
    (entry,) = json.loads(box.cli("list", "--json").stdout)
    suffix = {"none": ".tar", "gzip": ".tar.gz"}[compression]
    assert entry["name"].endswith(suffix)
    archive = box.archives / entry["name"]
    verified = verify_archive(archive)
    assert verified.size == archive.stat().st_size == entry["sidecar"]["archive"]["size"]


def test_retention_keeps_keep_last(box):
    good_service(box)
    box.write_config(keep_last=2, keep_days=0)
    for _ in range(3):
        assert box.cli("run").returncode == 0
        time.sleep(1.05)  # archive names have one-second stamps
    assert len(box.published()) == 2


def test_second_run_while_one_is_running_exits_75(box):
    box.add_service(
        "slow",
        """\
        service: {name: slow}
        command: {dump: ["sleep 30"]}
        """,
    )
    first = box.popen("run")
    try:
        assert wait_for(lambda: lock_status(box.run_dir / "client.lock") is not None)
        second = box.cli("run")
        assert second.returncode == 75
        assert f"is locked by pid {first.pid}" in second.stderr
    finally:
        first.kill()
        first.wait()


def test_sigterm_mid_dump_restarts_what_was_stopped_and_publishes_nothing(box, tmp_path):
    marks = tmp_path / "marks"
    box.add_service(
        "app",
        f"""\
        service: {{name: app}}
        command:
          pre: ["echo stopped >> {marks}"]
          dump: ["echo dumping >> {marks}; sleep 60"]
          post: ["echo started >> {marks}"]
        """,
    )
    proc = box.popen("run")
    assert wait_for(lambda: marks.exists() and "dumping" in marks.read_text())
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    assert marks.read_text().split() == ["stopped", "dumping", "started"]
    assert "SIGTERM received" in err
    assert box.published() == []
    assert not box.leftovers()


def test_a_killed_run_leaves_a_stale_lock_that_the_next_run_breaks(box, tmp_path):
    good_service(box)
    box.add_service(
        "slow",
        """\
        service: {name: slow}
        command: {dump: ["sleep 60.317"]}
        """,
    )
    proc = box.popen("run")
    assert wait_for(lambda: any(box.archives.glob(".*.partial")))
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    # only this test's orphan: "pkill -f 'sleep 60'" also ended other workers' processes
    # whose command held those words (borg with-lock REPO sleep 60 exited 2 in CI)
    subprocess.run(["pkill", "-x", "-f", "sleep 60.317"], check=False)
    assert box.leftovers()
    result = box.cli("run", "--service", "app")
    # its archive is made; the killed run, which told no one, is this run's to report
    assert result.returncode == 1, result.stderr
    assert f"the run (pid {proc.pid}, started at " in result.stderr
    assert "ended before its finish (killed?): reported as a failed run" in result.stderr
    assert "breaking stale lock" in result.stderr
    assert "removed leftovers of an interrupted run" in result.stderr
    assert not box.leftovers()
    assert len(box.published()) == 1


def test_broken_client_config_exits_2_naming_file_and_line(box):
    box.config.write_text("hostname: x\nkeep_last: many\n")
    for command in ("run", "check", "list"):
        result = box.cli(command)
        assert result.returncode == 2
        assert (
            result.stderr
            == f"{box.config}:2: keep_last: expected an integer, got a string 'many'\n"
        )


def test_check_lists_every_problem_one_per_line(box):
    good_service(box)
    bad = box.add_service(
        "bad",
        """\
        service: {name: bad}
        files:
          paths: [/does/not/exist]
        comand: {dump: [x]}
        """,
    )
    result = box.cli("check")
    assert result.returncode == 2
    assert result.stdout.splitlines() == [
        f"{bad}:4: comand: unknown task 'comand' (did you mean 'command'?)",
    ]
    bad.write_text("service: {name: bad}\nfiles:\n  paths: [/does/not/exist]\n")
    result = box.cli("check")
    assert result.stdout.splitlines() == [f"{bad}:2: files: path /does/not/exist does not exist"]
    bad.unlink()
    result = box.cli("check")
    assert result.returncode == 0 and result.stdout.strip() == f"{box.config}: ok"


def test_a_files_path_that_does_not_exist_fails_its_task_not_the_service(box, tmp_path):
    """backup-suite skipped a missing path and kept the rest; pullback refused the whole
    service at validation, its database dump and other paths lost with it (an outside
    migration walk). Now the files task fails for it (run exit 1, named), its other
    paths and the service's other tasks are archived; check names it."""
    data = box.root.parent / "data"
    box.add_service(
        "app",
        f"""\
        service: {{name: app}}
        command:
          dump:
            - run: [echo, "the dump"]
              output: dump.txt
        files:
          paths: [{data / "uploads"}, {data / "gone"}]
        """,
    )
    ran = box.cli("run")
    assert ran.returncode == 1, ran.stderr
    assert f"1 path(s) do not exist: {data / 'gone'}" in ran.stderr, ran.stderr
    (archive,) = box.published()
    (app,) = box.sidecar(archive)["services"]
    assert app["status"] == "failed"
    assert {t["type"]: t["status"] for t in app["tasks"]} == {"command": "ok", "files": "failed"}
    listed = subprocess.run(
        ["tar", "-tf", str(archive)], capture_output=True, text=True, check=True
    ).stdout
    assert "services/app/command/dump.txt" in listed
    assert "uploads/photo.jpg" in listed
    checked = box.cli("check")
    assert checked.returncode == 2
    assert f"files: path {data / 'gone'} does not exist" in checked.stdout, checked.stdout


def test_check_says_when_the_next_archives_are_full_ones_waiting_for_a_server(box, tmp_path):
    """``enabled: auto`` (the default) before any server said it applies deltas: a note
    (no problem, exit 0); after the serve endpoint left its mark, none. ``--json`` says
    which in ``deltas``."""
    good_service(box, "one")
    box.write_config(incremental={"cache_dir": str(tmp_path / "cache")})
    result = box.cli("check")
    assert result.returncode == 0, result.stdout
    assert result.stdout.splitlines() == [
        "note: archives are full ones for now: no server has said yet that it applies "
        "deltas (incremental.enabled: auto; a pullback server of 0.2 or later says so when "
        "it stores an archive)",
        f"{box.config}: ok",
    ]
    assert json.loads(box.cli("check", "--json").stdout)["deltas"] == "waiting"
    (box.archives / ".fetched-marks").mkdir(parents=True)  # as the serve endpoint makes it
    mark_server_applies_deltas(box.archives)
    result = box.cli("check")
    assert result.returncode == 0 and result.stdout.strip() == f"{box.config}: ok"
    assert json.loads(box.cli("check", "--json").stdout)["deltas"] == "on"
    box.write_config(incremental={"enabled": False})
    assert json.loads(box.cli("check", "--json").stdout)["deltas"] == "off"


def test_service_filter_and_unknown_service(box):
    good_service(box, "one")
    good_service(box, "two")
    assert box.cli("run", "--service", "two").returncode == 0
    (archive,) = box.published()
    sidecar = box.sidecar(archive)
    assert [(s["name"], s["status"]) for s in sidecar["services"]] == [
        ("two", "ok"),
        ("one", "failed"),  # left out: the archive does not hold it
    ]
    assert sidecar["status"] == "partial"
    result = box.cli("run", "--service", "three")
    assert result.returncode == 2
    assert "no service named 'three'; known services: one, two" in result.stderr


def test_a_run_of_one_service_keeps_the_archive_that_holds_the_others(box):
    """An outside walk: ``run --service odd`` published a one-service archive as "ok",
    client retention deleted the only archives holding the other services, the timer
    took it for fresh, and the server forgot their snapshots. Now it is partial."""
    good_service(box, "one")
    good_service(box, "two")
    box.write_config(keep_last=1, keep_days=0, min_interval="3s")
    assert box.cli("run").returncode == 0
    (complete,) = box.published()
    time.sleep(3.1)  # the complete archive is no longer fresh
    result = box.cli("run", "--service", "two")
    assert result.returncode == 0, result.stderr  # what was asked for worked
    assert "this archive holds only two: it counts as partial (one left out" in result.stderr
    kept = box.published()
    assert complete in kept and len(kept) == 2, kept  # keep_last 1, yet the complete stays
    listed = box.cli("list").stdout
    assert "1/2 ok (left out: one)" in listed, listed
    # the timer does not take the one-service archive for the day's backup
    due = box.cli("run", "--if-due")
    assert due.returncode == 0, due.stderr
    assert "nothing to do" not in due.stderr
    newest = box.sidecar(box.published()[-1])
    assert newest["status"] == "ok" and len(newest["services"]) == 2


def test_a_restore_of_a_task_the_service_lacks_is_refused_before_unpacking(box):
    good_service(box)
    assert box.cli("run").returncode == 0
    (archive,) = box.published()
    result = box.cli("restore", "--service", "app", "--from", str(archive), "--task", "file")
    assert result.returncode == 2, result.stderr
    assert "service app has no task 'file'; its tasks: command, files" in result.stderr
    assert "unpacking" not in result.stderr  # said before the archive is read


def test_dry_run_changes_nothing(box):
    good_service(box)
    result = box.cli("run", "--dry-run")
    assert result.returncode == 0, result.stderr
    assert "would archive" in result.stdout and "excluding: *.log" in result.stdout
    assert not box.archives.exists()


def test_not_enough_free_space_is_refused_before_anything_runs(box, tmp_path):
    marks = tmp_path / "marks"
    box.add_service("app", f"service: {{name: app}}\ncommand: {{pre: ['touch {marks}']}}\n")
    box.write_config(min_free_space="900T")
    result = box.cli("run")
    assert result.returncode == 1
    assert f"not enough free space in {box.archives}" in result.stderr
    assert "need 900.0 TiB (min_free_space)" in result.stderr
    assert not marks.exists()


def test_secrets_never_reach_logs_or_sidecar(box):
    box.add_service(
        "app",
        """\
        service: {name: app}
        command:
          environment: {API_TOKEN: tok-9f8e7d6c5b}
          dump:
            - "echo using $API_TOKEN >&2; echo $API_TOKEN > token.txt; exit 1"
        """,
    )
    result = box.cli("-v", "run")
    assert result.returncode == 1
    everything = result.stdout + result.stderr + box.cli("list", "--json").stdout
    assert "tok-9f8e7d6c5b" not in everything
    assert "using ******" in result.stderr


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a small tmpfs needs root")
def test_full_disk_while_packing_publishes_nothing_and_keeps_earlier_archives(box, tmp_path):
    small = tmp_path / "small"
    small.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(small)], check=True)
    try:
        box.archives = small / "archives"
        box.write_config(archive_dir=str(box.archives), min_free_space="1K")
        good_service(box)
        assert box.cli("run").returncode == 0
        (earlier,) = box.published()
        time.sleep(1.05)
        (box.root.parent / "data" / "huge.bin").write_bytes(os.urandom(4 << 20))
        result = box.cli("run")
        assert result.returncode == 1
        assert "no archive was published" in result.stderr
        assert "No space left on device" in result.stderr
        assert box.published() == [earlier]
        verify_archive(earlier)
        assert not box.leftovers()
    finally:
        subprocess.run(["umount", str(small)], check=True)


def test_an_archive_directory_locked_past_its_wait_fails_the_run_not_exit_75(
    box, monkeypatch, capsys
):
    """75 means "another run holds the run's lock" (the unit skips the tick); a publish
    that waited in vain for the archive directory's lock is this run's failure: exit 1,
    said as "no archive was published" (an outside review found it exiting 75)."""
    import fcntl

    from pullback.client.cli import main
    from pullback.common.archive import directory

    good_service(box)
    monkeypatch.setattr(directory, "LOCK_WAIT", 0.5)
    archive_dir = box.root / "archives"
    archive_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(archive_dir / directory.LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # a process stuck while holding it
        assert main(["--config", str(box.config), "run"]) == 1
    finally:
        os.close(fd)
    assert "no archive was published: " in capsys.readouterr().err
    assert box.published() == []
