"""pullback-server pull against real sshd, restic and borg, as an administrator meets it."""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pullback.common.archive import tarformat
from tests.helpers.archives import Entry, build_tar, publish
from tests.helpers.files import sha256sum_check
from tests.helpers.fleet import Fleet
from tests.helpers.smtp import SmtpSink
from tests.helpers.sshd import make_key


@pytest.fixture
def fleet(tmp_path):
    fleet = Fleet(tmp_path)
    yield fleet
    fleet.stop()


@pytest.mark.parametrize("backend", ["restic", "borg"])
def test_full_cycle_two_hosts(tmp_path, backend):
    fleet = Fleet(tmp_path, backend=backend)
    try:
        web = fleet.add_host("web1")
        db = fleet.add_host("db1")
        web.make_archive({"site/index.html": b"<h1>hi</h1>", "big.bin": os.urandom(300_000)})
        db.make_archive({"dump.sql": b"INSERT INTO t VALUES (1);\n" * 1000})

        result = fleet.server("pull")
        assert result.returncode == 0, result.stderr
        for name, host in fleet.hosts.items():
            assert len(fleet.snapshots(name)) == 1
            restored = fleet.restore(name, tmp_path / f"restore-{name}")
            sha256sum_check(restored)
            data = str(host.data).lstrip("/")
            for path in host.data.rglob("*"):
                if path.is_file():
                    rel = path.relative_to(host.data)
                    assert (
                        restored / "services/app/files" / data / rel
                    ).read_bytes() == path.read_bytes()
            # marked fetched; the newest stays until a newer one is published
            (newest,) = host.client.published()
            assert (host.client.archives / ".fetched-marks" / newest.name).exists()
            fleet.check_repository(name)

        status = fleet.server("status", "--json")
        assert '"last_result": "stored"' in status.stdout

        # the next day: one file changed; staging keeps the rest untouched
        (newest_web,) = web.client.published()
        web.make_archive({"site/index.html": b"<h1>changed</h1>"})
        result = fleet.server("pull", "--host", "web1")
        assert result.returncode == 0, result.stderr
        assert "1 rewritten" in result.stderr or "2 rewritten" in result.stderr
        assert len(fleet.snapshots("web1")) == 2
        assert len(fleet.snapshots("db1")) == 1

        # the newer archive retired the marked one to fetched/
        assert [p.name for p in (web.client.archives / "fetched").glob("*.tar.zst")] == [
            newest_web.name
        ]
        # nothing new: a quiet, clean run
        result = fleet.server("pull")
        assert result.returncode == 0
        assert "is already stored" in result.stderr
    finally:
        fleet.stop()


def test_unknown_host_key_is_refused_until_trusted(fleet):
    host = fleet.add_host("web1", trust=False)
    fleet.known_hosts.write_text("")
    host.make_archive()
    result = fleet.server("pull")
    assert result.returncode == 1
    fingerprint = subprocess.run(
        ["ssh-keygen", "-lf", f"{host.sshd.host_key}.pub"], capture_output=True, text=True
    ).stdout.split()[1]
    assert f"unknown host key ssh-ed25519 {fingerprint}" in result.stderr
    assert "run: pullback-server trust web1" in result.stderr
    assert not fleet.repos.joinpath("web1").exists() or fleet.snapshots("web1") == []

    refused = fleet.server("trust", "web1")  # not a terminal: asks for --yes
    assert refused.returncode == 1 and fingerprint in refused.stdout
    trusted = fleet.server("trust", "web1", "--yes")
    assert trusted.returncode == 0, trusted.stderr
    assert fingerprint in trusted.stdout
    assert fleet.server("pull").returncode == 0
    assert len(fleet.snapshots("web1")) == 1


def test_a_key_without_the_forced_command_is_named(fleet, tmp_path):
    """A server key added to authorized_keys without ``command=``: the client's shell runs
    ``list`` as a command ("sh: 1: list: not found", status 127); the failure says what
    the line needs (an outside tester got only the shell's words)."""
    host = fleet.add_host("web1")
    host.make_archive()
    shell = tmp_path / "login-shell.sh"  # what sshd does without a forced command
    shell.write_text('#!/bin/sh\nexec /bin/sh -c "$SSH_ORIGINAL_COMMAND"\n')
    shell.chmod(0o755)
    auth = host.sshd.root / "authorized_keys"
    auth.write_text(auth.read_text().replace(host.sshd.forced_command, str(shell)))
    result = fleet.server("pull")
    assert result.returncode == 1
    assert "list: not found" in result.stderr
    assert "needs 'restrict,command=\"pullback-client serve\"' before it" in result.stderr


def test_changed_host_key_is_refused(fleet):
    host = fleet.add_host("web1")
    host.make_archive()
    assert fleet.server("pull").returncode == 0
    # the host is "reinstalled": a new host key
    host.sshd.stop()
    for suffix in ("", ".pub"):
        Path(f"{host.sshd.host_key}{suffix}").unlink()
    make_key(host.sshd.host_key)
    host.sshd.start()
    host.make_archive({"new.txt": b"new"})
    result = fleet.server("pull")
    assert result.returncode == 1
    assert "HOST KEY CHANGED" in result.stderr
    assert "pullback-server trust --replace web1" in result.stderr
    assert len(fleet.snapshots("web1")) == 1
    assert fleet.server("trust", "web1", "--yes").returncode == 1  # needs --replace
    assert fleet.server("trust", "web1", "--yes", "--replace").returncode == 0
    assert fleet.server("pull").returncode == 0
    assert len(fleet.snapshots("web1")) == 2


HOLD = """
import sys, time
from pullback.common.locks import FileLock
FileLock(sys.argv[1], purpose="publishing an archive").acquire()
print("locked", flush=True)
time.sleep(120)
"""


def test_client_lock_held_is_retried_then_skipped_and_a_stale_one_is_ignored(fleet):
    host = fleet.add_host("web1")
    host.make_archive()
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(host.client.archives / ".lock")],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        result = fleet.server("pull")
        assert result.returncode == 0, result.stderr  # a clean skip, reported
        assert "busy: the client was still publishing an archive after 2 retries" in result.stderr
        assert f"pid {holder.pid}" in result.stderr
        assert "asking again in 1s (2/2)" in result.stderr
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    # the holder died: its lock is stale and does not block
    result = fleet.server("pull")
    assert result.returncode == 0, result.stderr
    assert len(fleet.snapshots("web1")) == 1


def test_already_stored_and_older_archives_are_skipped(fleet):
    host = fleet.add_host("web1")
    archive = host.make_archive()
    assert fleet.server("pull").returncode == 0
    # the mark did not reach the client: the same archive is offered again
    mark = host.client.archives / ".fetched-marks" / archive.name
    mark.unlink()
    result = fleet.server("pull")
    assert result.returncode == 0
    assert f"{archive.name} is already stored" in result.stderr
    assert mark.exists()  # and now it is marked
    # an archive older than the newest snapshot (the stored one retired to fetched/)
    retired = host.client.archives / "fetched"
    retired.mkdir(exist_ok=True)
    for path in (archive, archive.with_name(archive.name + ".json")):
        path.rename(retired / path.name)
    older = dt.datetime.now(dt.UTC) - dt.timedelta(days=3)
    publish(host.client.archives, "web1", build_tar([Entry("services/x/a", data=b"a")]), older)
    result = fleet.server("pull")
    assert result.returncode == 0
    assert "is older than the newest snapshot" in result.stderr
    assert len(fleet.snapshots("web1")) == 1


CUT = """
import os, sys
limit = int(sys.argv[1])
sent = 0
while sent < limit:
    data = os.read(0, min(65536, limit - sent))
    if not data:
        break
    os.write(1, data)
    sent += len(data)
"""


@pytest.mark.parametrize("megabytes", [3, 20], ids=["control-connection", "ssh-child"])
def test_cut_transfer_is_resumed(fleet, tmp_path, megabytes):
    """Both ways an archive travels: up to SMALL_STREAM over the control connection,
    beyond it through an OpenSSH child (the resumed rest too)."""
    from pullback.server.remote import SMALL_STREAM

    host = fleet.add_host("web1")
    archive = host.make_archive({"big.bin": os.urandom(megabytes << 20)})
    size = archive.stat().st_size
    assert (size - (1 << 20) > SMALL_STREAM) == (megabytes == 20)
    # the connection "breaks" after 1 MiB: the serve output goes through a cutter
    cutter = tmp_path / "cut.py"
    cutter.write_text(CUT)
    host.sshd.forced_command += f" | {sys.executable} {cutter} {1 << 20}"
    host.sshd.stop()
    host.sshd.start()
    result = fleet.server("pull")
    assert result.returncode == 1
    assert "what arrived is kept and the next run resumes" in result.stderr
    partial = fleet.state / "partial" / "web1" / archive.name
    assert partial.stat().st_size == 1 << 20
    assert fleet.snapshots("web1") == []  # the repository was created, nothing stored

    host.sshd.forced_command = host.sshd.forced_command.split(" | ")[0]
    host.sshd.stop()
    host.sshd.start()
    result = fleet.server("pull")
    assert result.returncode == 0, result.stderr
    assert f"resuming {archive.name} at 1.0 MiB" in result.stderr
    assert "resumed at 1.0 MiB" in result.stderr
    assert not partial.exists()
    restored = fleet.restore("web1", tmp_path / "restored")
    sha256sum_check(restored)
    assert len(fleet.snapshots("web1")) == 1
    assert (host.client.archives / archive.name).stat().st_size == size
    assert (host.client.archives / ".fetched-marks" / archive.name).exists()


def test_checksum_mismatch_stores_nothing(fleet):
    host = fleet.add_host("web1")
    archive = host.make_archive({"big.bin": os.urandom(200_000)})
    data = bytearray(archive.read_bytes())
    data[len(data) // 2] ^= 0x01
    archive.write_bytes(bytes(data))
    result = fleet.server("pull")
    assert result.returncode == 1
    assert "checksum mismatch" in result.stderr and "nothing was stored" in result.stderr
    assert not (fleet.repos / "web1").exists() or fleet.snapshots("web1") == []
    assert not list((fleet.state / "partial" / "web1").iterdir())
    assert host.client.published() == [archive]  # not marked fetched


HOSTILE = {
    "absolute path": [Entry("/tmp/pullback-escape-abs", data=b"x")],
    "dot-dot": [Entry("services/x/../../../../tmp/pullback-escape-dots", data=b"x")],
    "outside services": [Entry("etc/cron.d/evil", data=b"x")],
    "write through a symlink": [
        Entry("services/x/files/link", tarformat.SYMTYPE, linkname="/tmp"),
        Entry("services/x/files/link/pullback-escape-link", data=b"x"),
    ],
    "hard link to a system file": [
        Entry("services/x/files/passwd", tarformat.LNKTYPE, linkname="/etc/passwd"),
    ],
    "hard link up and out": [
        Entry("services/x/files/passwd", tarformat.LNKTYPE, linkname="../../../../etc/passwd"),
    ],
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_archive_writes_nothing_outside_staging(fleet, case):
    host = fleet.add_host("web1")
    publish(host.client.archives, "web1", build_tar(HOSTILE[case]))
    before = Path("/etc/passwd").read_bytes()
    result = fleet.server("pull")
    assert result.returncode == 1, result.stderr
    assert "refused a hostile archive" in result.stderr
    assert "nothing was stored" in result.stderr
    for leaked in (
        "/tmp/pullback-escape-abs",
        "/tmp/pullback-escape-dots",
        "/tmp/pullback-escape-link",
    ):
        assert not Path(leaked).exists()
    assert Path("/etc/passwd").read_bytes() == before
    assert not (fleet.repos / "web1").exists() or fleet.snapshots("web1") == []


def test_device_nodes_are_dropped_and_setuid_bits_kept_in_a_root_only_staging(fleet, tmp_path):
    host = fleet.add_host("web1")
    publish(
        host.client.archives,
        "web1",
        build_tar(
            [
                Entry("services/x/files/null", tarformat.CHRTYPE),
                Entry("services/x/files/tool", data=b"#!/bin/sh\n", mode=0o4755),
            ]
        ),
    )
    result = fleet.server("pull")
    assert result.returncode == 0, result.stderr
    staging = fleet.state / "staging" / "web1"
    assert not (staging / "services/x/files/null").exists()
    assert "services/x/files/null: device node dropped" in result.stderr
    tool = staging / "services/x/files/tool"
    if os.geteuid() == 0:  # kept: only root can reach the staging tree
        assert oct(tool.stat().st_mode & 0o7777) == "0o4755"
        assert oct(staging.stat().st_mode & 0o777) == "0o700"
    assert len(fleet.snapshots("web1")) == 1


def test_wrong_repository_password(fleet):
    host = fleet.add_host("web1")
    host.make_archive()
    assert fleet.server("pull").returncode == 0
    fleet.password_file.write_text("not the password\n")
    host.make_archive({"new.txt": b"new"})
    result = fleet.server("pull")
    assert result.returncode == 1
    assert "wrong password for the restic repository" in result.stderr
    assert "not the password" not in result.stderr
    fleet.password_file.write_text("correct horse battery staple 42\n")
    assert len(fleet.snapshots("web1")) == 1


def test_missing_repository_with_init_false(fleet):
    host = fleet.add_host("web1")
    host.make_archive()
    fleet.write_config(backend={"init": False})
    result = fleet.server("pull")
    assert result.returncode == 1
    assert "does not exist: is its disk mounted? (backend.init is false" in result.stderr


def test_summary_mail_lists_failures_first(fleet):
    sink = SmtpSink().start()
    try:
        fleet.smtp_port = sink.port
        good = fleet.add_host("good1")
        bad = fleet.add_host("bad1")
        good.make_archive()
        bad.sshd.stop()  # unreachable
        result = fleet.server("pull")
        assert result.returncode == 1
        (message,) = sink.messages
        # never stored: stale too, as status --check says first (an outside walk)
        assert message["Subject"] == "[pullback] 1 of 2 hosts FAILED: bad1 (stale)"
        assert message["To"] == "ops@example.test"
        text, html = sink.bodies(message)
        assert text.index("bad1") < text.index("good1")
        assert "cannot connect to 127.0.0.1" in text
        assert 'class="failed" data-host="bad1"' in html
        assert 'class="ok" data-host="good1"' in html
        assert html.index("bad1") < html.index("good1")
    finally:
        sink.stop()


def test_unreachable_smtp_stores_all_and_says_so_in_the_exit_status(fleet):
    fleet.smtp_port = 9  # nothing listens on the discard port here
    host = fleet.add_host("web1")
    host.make_archive()
    result = fleet.server("pull")
    assert result.returncode == 1, result.stderr  # the unit fails: nobody got the mail
    assert (
        "the summary mail was not sent: cannot reach the SMTP server 127.0.0.1:9" in result.stderr
    )
    assert len(fleet.snapshots("web1")) == 1
    status = fleet.server("status")
    assert "not written by the last run: summary mail not sent" in status.stderr


def test_two_pulls_at_once_and_bad_config(fleet):
    fleet.add_host("web1")
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(fleet.root / "run/server.lock")],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        result = fleet.server("pull")
        assert result.returncode == 75
        assert "server.lock is locked by pid" in result.stderr
    finally:
        holder.kill()
        holder.wait()
    fleet.config.write_text(
        fleet.config.read_text().replace("parallel", "paralel") + "paralel: 2\n"
    )
    result = fleet.server("pull")
    assert result.returncode == 2
    assert "paralel: unknown key (did you mean 'parallel'?)" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_hung_host_times_out_alone(fleet):
    good = fleet.add_host("good1")
    hung = fleet.add_host("hung1")
    good.make_archive()
    hung.make_archive()
    fleet.write_config(ssh={"connect_timeout": "3s"}, parallel=2)
    hung.sshd.pause()  # accepts TCP (the kernel does) but never answers
    try:
        started = time.monotonic()
        result = fleet.server("pull")
        elapsed = time.monotonic() - started
    finally:
        hung.sshd.resume()
    assert result.returncode == 1
    assert "[hung1] failed: hung1: cannot connect to 127.0.0.1" in result.stderr
    assert "timed out" in result.stderr
    assert "[good1] stored" in result.stderr
    assert elapsed < 60
    assert len(fleet.snapshots("good1")) == 1


def test_check_and_status(fleet):
    host = fleet.add_host("web1")
    result = fleet.server("check")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "web1: reachable, 0 archive(s) ready" in result.stdout
    assert "will be created by the first pull" in result.stdout
    status = fleet.server("status")
    assert status.returncode == 1  # a host never stored is stale: a monitoring check fails
    assert "web1  stale  never pulled" in status.stdout
    assert "stale (no snapshot within max_age): web1" in status.stderr
    host.make_archive()
    assert fleet.server("pull").returncode == 0
    status = fleet.server("status")
    assert status.returncode == 0
    line = next(line for line in status.stdout.splitlines() if line.startswith("web1"))
    assert "ok" in line and "stored" in line and "ago" in line
    fleet.password_file.chmod(0o644)
    result = fleet.server("check")
    assert result.returncode == 1
    assert "readable by others (mode 0644); run: chmod 600" in result.stdout


def test_one_host_name_rule_check_says_what_a_pull_would_trip_over(fleet):
    """The client once defaulted to its FQDN while server.yaml said web1: check said
    "reachable, 1 archive(s) ready" and every pull failed. Then, with hostname: fixed,
    --if-due still counted the archive of the old name as fresh."""
    host = fleet.add_host("web1")
    client = host.client
    client.hostname = "web1.example.org"
    client.write_config()
    old = host.make_archive()
    assert old.name.startswith("web1.example.org-")
    check = fleet.server("check")
    assert check.returncode == 1
    assert (
        "problem: web1: the client names itself and its archives 'web1.example.org', not "
        "'web1': every pull would fail; set hostname: web1 in its /etc/pullback/client.yaml"
    ) in check.stdout
    assert fleet.server("pull").returncode == 1
    assert not (fleet.repos / "web1").exists()  # no empty repository for a host that failed

    client.hostname = "web1"
    client.write_config()
    run = client.cli("run", "--if-due")  # the old name's archive does not count as fresh
    assert run.returncode == 0, run.stderr
    assert "fresh:" not in run.stderr
    check = fleet.server("check")
    assert check.returncode == 0, check.stdout
    assert "web1: reachable, 1 archive(s) ready, newest web1-" in check.stdout
    assert (
        f"web1: 1 archive(s) not offered: {old.name}: made as host web1.example.org; "
        "this client is now web1"
    ) in check.stdout
    pull = fleet.server("pull")
    assert pull.returncode == 0, pull.stderr
    assert "[web1] stored: stored web1-" in pull.stderr


def test_every_command_that_lists_or_reports_speaks_json(fleet):
    host = fleet.add_host("web1")
    host.make_archive()
    pull = fleet.server("pull", "--json")
    assert pull.returncode == 0, pull.stderr
    pulled = json.loads(pull.stdout)
    assert pulled["exit_code"] == 0 and pulled["not_written"] == []
    ((result),) = pulled["hosts"]
    assert (result["host"], result["status"]) == ("web1", "stored")
    status_names = json.loads(fleet.server("status", "--json").stdout)["hosts"]["web1"]
    for key in ("snapshots", "failed_services", "pull_peak_rss", "database_dumps"):
        assert key in result and key in status_names  # one name for one fact
    check = json.loads(fleet.server("check", "--json").stdout)
    assert check["problems"] == [] and any("reachable" in line for line in check["ok"])
    snapshots = json.loads(fleet.server("snapshots", "web1", "--json").stdout)
    assert len(snapshots) == 1
    status = json.loads(fleet.server("status", "--json").stdout)
    assert status["hosts"]["web1"]["last_result"] == "stored"
    verify = fleet.server("verify", "--json")
    assert verify.returncode == 0, verify.stderr
    (drill,) = json.loads(verify.stdout)["hosts"]
    assert drill["ok"] and "match the manifest" in drill["summary"]
    maintain = fleet.server("maintain", "--no-verify", "--json")
    assert maintain.returncode == 0, maintain.stderr
    (maintained,) = json.loads(maintain.stdout)["hosts"]
    assert maintained["status"] == "ok" and [s["name"] for s in maintained["steps"]][:3] == [
        "locks",
        "guard",
        "forget",
    ]
    client_check = host.client.cli("check", "--json")
    assert client_check.returncode == 0, client_check.stdout
    assert json.loads(client_check.stdout) == {
        "hostname": "web1",
        "problems": [],
        "warnings": [],
        "notes": [],
        "deltas": "off",
    }
    (listed,) = json.loads(host.client.cli("list", "--json").stdout)
    assert listed["stored_by_server"] and not listed["fetched"]  # marked, kept until a newer
    assert "stored, kept" in host.client.cli("list").stdout


def test_a_refused_key_says_where_to_look(fleet):
    """The client's sshd refused the server's key: the words say to add it, and that a
    key already there is ignored when the file or its directories are writable by others
    (sshd's StrictModes: a newcomer's chmod 0666 got only "add it")."""
    host = fleet.add_host("web1")
    host.make_archive()
    (host.sshd.root / "authorized_keys").write_text("")
    result = fleet.server("pull")
    assert result.returncode == 1
    assert "the client refused the server's key for user" in result.stderr
    assert "writable by anyone but that user" in result.stderr
    assert "web1: web1:" not in result.stderr, result.stderr
