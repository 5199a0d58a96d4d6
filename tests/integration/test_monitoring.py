"""Knowing without reading mail: freshness, if-due runs, metrics, pings, history, status page."""

from __future__ import annotations

import datetime as dt
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.helpers.client import ClientSandbox
from tests.helpers.fleet import Fleet
from tests.helpers.http import HttpSink
from tests.helpers.smtp import SmtpSink


@pytest.fixture
def http():
    sink = HttpSink(hang_seconds=20).start()
    yield sink
    sink.stop()


@pytest.fixture
def fleet(tmp_path):
    fleet = Fleet(tmp_path)
    yield fleet
    fleet.stop()


def samples(path: Path) -> dict:
    found = {}
    for family in text_string_to_metric_families(path.read_text()):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def test_pings_messages_metrics_and_a_hanging_endpoint(fleet, http, tmp_path):
    token = tmp_path / "gotify.token"
    token.write_text("gotify-app-token\n")
    token.chmod(0o600)  # a secret file: owner only
    good = fleet.add_host("good")
    bad = fleet.add_host("bad")
    good.make_archive()
    bad.sshd.stop()
    metrics = tmp_path / "metrics" / "pullback.prom"
    fleet.host_extra = {
        "good": {"notify": {"healthchecks": f"{http.url}/hc/good"}},
        "bad": {"notify": {"healthchecks": f"{http.url}/hc/bad"}},
    }
    fleet.write_config(
        notify={
            "healthchecks": f"{http.url}/hc/run",
            "ntfy": {"url": f"{http.url}/ntfy/backups"},
            "gotify": {"url": f"{http.url}/hang/gotify", "token_file": str(token)},
            "timeout": "2s",
        },
        metrics_file=str(metrics),
    )
    started = time.monotonic()
    result = fleet.server("pull")
    assert result.returncode == 1
    assert time.monotonic() - started < 60
    paths = http.paths()
    for path in (
        "/hc/run/start",
        "/hc/good/start",
        "/hc/good",
        "/hc/bad/start",
        "/hc/bad/fail",
        "/hc/run/fail",
        "/ntfy/backups",
        "/hang/gotify/message",
    ):
        assert path in paths, paths
    fail = next(r for r in http.requests if r.path == "/hc/bad/fail")
    assert b"cannot connect to 127.0.0.1" in fail.body  # the log tail as the body
    ntfy = next(r for r in http.requests if r.path == "/ntfy/backups")
    assert ntfy.headers["Priority"] == "high" and "bad" in ntfy.headers["Title"]
    gotify = next(r for r in http.requests if r.path == "/hang/gotify/message")
    assert gotify.headers["X-Gotify-Key"] == "gotify-app-token"
    assert json.loads(gotify.body)["title"]
    assert "gotify message not delivered" in result.stderr  # a warning, nothing more
    assert "gotify-app-token" not in result.stderr and "/hc/run" not in result.stderr

    found = samples(metrics)
    assert found[("pullback_last_attempt_ok", (("host", "good"),))] == 1
    assert found[("pullback_last_attempt_ok", (("host", "bad"),))] == 0
    assert found[("pullback_stale", (("host", "bad"),))] == 1
    assert found[("pullback_stale", (("host", "good"),))] == 0
    assert found[("pullback_snapshots", (("host", "good"),))] == 1
    assert found[("pullback_last_result", (("host", "bad"), ("result", "failed")))] == 1
    assert found[("pullback_store_peak_memory_bytes", (("host", "good"),))] > 1_000_000
    assert found[("pullback_archive_bytes", (("host", "good"),))] > 0


def seed_old_snapshot(fleet: Fleet, host: str, days: int) -> None:
    env = {**fleet.repo_env(host), "TZ": "UTC"}
    data = fleet.root / "old"
    (data / "services").mkdir(parents=True, exist_ok=True)
    (data / "MANIFEST.sha256").write_text("")
    when = dt.datetime.now(dt.UTC) - dt.timedelta(days=days)
    subprocess.run(["restic", "init"], env=env, check=True, capture_output=True)
    subprocess.run(
        [
            "restic",
            "backup",
            "--host",
            host,
            "--tag",
            "pullback",
            "--tag",
            when.strftime("%Y%m%dT%H%M%SZ"),
            "--time",
            when.strftime("%Y-%m-%d %H:%M:%S"),
            ".",
        ],
        cwd=data,
        env=env,
        check=True,
        capture_output=True,
    )


def test_a_host_that_stopped_producing_is_stale_first_and_in_the_subject(fleet):
    sink = SmtpSink().start()
    try:
        fleet.smtp_port = sink.port
        quiet = fleet.add_host("quiet")
        fine = fleet.add_host("fine")
        fine.make_archive()
        seed_old_snapshot(fleet, "quiet", days=3)  # then nothing new for three days
        fleet.write_config(max_age="36h")
        result = fleet.server("pull")
        assert result.returncode == 0  # nothing failed ...
        (message,) = sink.messages
        assert message["Subject"] == "[pullback] STALE: quiet"  # ... but quiet is stale
        text, html = sink.bodies(message)
        assert text.index("quiet") < text.index("fine")
        assert "the newest snapshot is 3d00h old (max_age 36h00m)" in text
        assert 'class="stale" data-host="quiet"' in html
        status = fleet.server("status")
        assert status.returncode == 1
        assert "stale (no snapshot within max_age): quiet" in status.stderr
    finally:
        sink.stop()
    assert quiet.client.published() == []


def test_status_exit_codes_and_the_monitoring_plugin_line(fleet):
    """``status`` exits 1 for a stale or failing host; ``status --check`` speaks the
    monitoring-plugin convention (0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN) in one line."""
    for name in ("fine", "flaky"):
        fleet.add_host(name).make_archive()
    assert fleet.server("pull").returncode == 0
    assert fleet.server("status").returncode == 0
    check = fleet.server("status", "--check")
    assert (check.returncode, check.stdout) == (
        0,
        "PULLBACK OK - 2 of 2 hosts ok | hosts=2 ok=2 attention=0 failed=0 stale=0 "
        f"oldest_snapshot_age={check.stdout.split('oldest_snapshot_age=')[1].strip()}\n",
    )

    fleet.hosts["flaky"].sshd.stop()  # stored yesterday, unreachable today
    assert fleet.server("pull").returncode == 1
    status = fleet.server("status")
    assert status.returncode == 1
    assert "failed (the last pull): flaky" in status.stderr
    check = fleet.server("status", "--check")
    assert check.returncode == 1
    assert check.stdout.startswith("PULLBACK WARNING - last pull failed: flaky; 1 of 2 hosts ok |")
    assert "failed=1 stale=0" in check.stdout

    fleet.add_host("never", trust=False)  # configured, never stored
    fleet.write_config()
    status = fleet.server("status")
    assert status.returncode == 1 and "stale (no snapshot within max_age): never" in status.stderr
    check = fleet.server("status", "--check")
    assert check.returncode == 2
    assert check.stdout.startswith(
        "PULLBACK CRITICAL - stale: never; last pull failed: flaky; 1 of 3 hosts ok |"
    )

    (fleet.state / "status.json").write_text("[1, 2")
    check = fleet.server("status", "--check")
    assert check.returncode == 3
    assert check.stdout.startswith("PULLBACK UNKNOWN - cannot read status.json: ")
    broken = fleet.root / "broken.yaml"
    broken.write_text("hosts: 7\n")
    check = fleet.server("--config", str(broken), "status", "--check")
    assert check.returncode == 3 and check.stdout.startswith("PULLBACK UNKNOWN - ")
    assert "broken.yaml" in check.stdout and check.stdout.count("\n") == 1
    plain = fleet.server("status")
    assert (
        plain.returncode == 1 and "cannot read" in plain.stderr and "Traceback" not in plain.stderr
    )


@pytest.mark.skipif(shutil.which("msmtp") is None, reason="msmtp is not installed")
def test_mail_through_the_local_sendmail_and_to_a_host_s_own_recipients(fleet, tmp_path):
    """backup-suite sent its mail with msmtp; pullback does too when told to (a real msmtp
    here, delivering to a real SMTP server), and a host's owners get its result alone."""
    sink = SmtpSink().start()
    try:
        sendmail = tmp_path / "sendmail"
        sendmail.write_text(
            "#!/bin/sh\n"
            f"exec msmtp --host=127.0.0.1 --port={sink.port} --auth=off --tls=off "
            '--from=pullback@server.test "$@"\n'
        )
        sendmail.chmod(0o755)
        fleet.smtp_port = 9  # SMTP itself would fail: the mail must go through sendmail
        fleet.add_host("web1").make_archive()
        fleet.add_host("db1").make_archive()
        fleet.host_extra["db1"] = {"email_to": ["dba@example.test"]}
        fleet.write_config(email={"sendmail": str(sendmail), "send": "always"})
        result = fleet.server("pull")
        assert result.returncode == 0, result.stderr
        subjects = sorted(m["Subject"] for m in sink.messages)
        assert subjects == [
            "[pullback] all 2 hosts are ok (2 stored)",
            "[pullback] db1: the host is ok (1 stored)",
        ]
        own = next(m for m in sink.messages if "db1:" in m["Subject"])
        assert own["To"] == "dba@example.test"
        text, _ = sink.bodies(own)
        assert "db1" in text and "web1" not in text
    finally:
        sink.stop()

    fleet.write_config(email={"sendmail": "/nonexistent/sendmail"})
    fleet.hosts["web1"].make_archive()
    failed = fleet.server("pull")
    assert failed.returncode == 1  # stored, but nobody was told: the unit fails
    assert "/nonexistent/sendmail" in failed.stderr


def test_retry_until_fresh(fleet):
    sink = SmtpSink().start()
    try:
        fleet.smtp_port = sink.port
        host = fleet.add_host("web1")
        host.make_archive()
        flaky = fleet.add_host("flaky")
        flaky.make_archive()
        flaky.sshd.stop()  # unreachable at the first firing
        first = fleet.server("pull", "--if-due")
        assert first.returncode == 1
        assert len(sink.messages) == 1
        flaky.sshd.start()
        second = fleet.server("pull", "--if-due")  # the next hourly firing
        assert second.returncode == 0, second.stderr
        assert "[web1] skipped: fresh: the newest snapshot is" in second.stderr
        assert "[flaky] stored" in second.stderr  # retried, without anyone re-running it
        third = fleet.server("pull", "--if-due")  # everything fresh: nothing, quietly
        assert third.returncode == 0
        assert len(sink.messages) == 2  # the third firing mailed nothing
        status = json.loads(fleet.server("status", "--json").stdout)["hosts"]
        assert len(status["web1"]["history"]) == 1  # fresh skips are not history
        assert status["web1"]["last_checked"]
        assert [h["result"] for h in status["flaky"]["history"]] == ["failed", "stored"]
        assert "last runs: ✗✓" in sink.bodies(sink.messages[1])[0]
    finally:
        sink.stop()


def test_a_fresh_host_whose_pull_failed_is_tried_again_at_the_next_firing(fleet):
    """helper-100, following docs/monitoring.md in a booted root: a wrong repository
    password failed a fresh host's firing; once mended, the next firings skipped it as
    fresh and ``status`` said "failed" (exit 1) until the snapshot was min_interval old."""
    host = fleet.add_host("web1")
    host.make_archive()
    assert fleet.server("pull", "--if-due").returncode == 0
    good = fleet.password_file.read_text()
    fleet.password_file.write_text("not-the-one-4711\n")
    failed = fleet.server("pull", "--if-due")
    assert failed.returncode == 1, failed.stderr
    assert "wrong password" in failed.stderr
    fleet.password_file.write_text(good)  # mended
    mended = fleet.server("pull", "--if-due")  # the next hourly firing
    assert mended.returncode == 0, mended.stderr
    assert "its last pull failed: trying again" in mended.stderr, mended.stderr
    status = fleet.server("status")
    assert status.returncode == 0, status.stdout + status.stderr
    entry = json.loads(fleet.server("status", "--json").stdout)["hosts"]["web1"]
    assert entry["last_result"] != "failed" and not entry["problem"]
    quiet = fleet.server("pull", "--if-due")  # and after that, fresh again
    assert quiet.returncode == 0 and "skipped: fresh" in quiet.stderr


def test_client_if_due_failure_mail_pings_and_metrics(tmp_path, http):
    sink = SmtpSink().start()
    try:
        box = ClientSandbox(tmp_path / "client")
        metrics = tmp_path / "client.prom"
        box.write_config(
            email={
                "smtp": {"host": "127.0.0.1", "port": sink.port},
                "from": "client@test",
                "to": ["ops@test"],
            },
            notify={"healthchecks": f"{http.url}/hc/client"},
            metrics_file=str(metrics),
            min_interval="20h",
        )
        (tmp_path / "d").mkdir()
        (tmp_path / "d" / "f").write_text("x")
        box.add_service("app", f"service: {{name: app}}\nfiles: {{paths: [{tmp_path / 'd'}]}}\n")
        assert box.cli("run", "--if-due").returncode == 0
        assert sink.messages == []  # on_problem: a good run mails nothing
        again = box.cli("run", "--if-due")
        assert again.returncode == 0 and "fresh:" in again.stderr
        assert len(box.published()) == 1  # no second archive within min_interval
        # a service file broken since: the next tick says so (exit 1), fresh or not
        typo = box.add_service("typo", "service: {name: typo}\nfile: {paths: [/srv]}\n")
        broken = box.cli("run", "--if-due")
        assert broken.returncode == 1, broken.stderr
        assert "[typo] its service file is broken: " in broken.stderr
        assert "did you mean 'files'" in broken.stderr
        assert len(box.published()) == 1
        shutil.rmtree(typo.parent)
        assert http.paths() == ["/hc/client/start", "/hc/client"]
        found = samples(metrics)
        assert found[("pullback_client_service_ok", (("service", "app"),))] == 1
        assert found[("pullback_client_last_run_ok", ())] == 1

        box.add_service(
            "db", "service: {name: db}\ncommand: {dump: ['echo db is down >&2; exit 1']}\n"
        )
        failed = box.cli("run")  # without --if-due: an administrator's run always runs
        assert failed.returncode == 1
        (message,) = sink.messages
        assert message["Subject"] == "[pullback] testhost: 1 of 2 services failed: db"
        body = message.get_body(("plain",)).get_content()
        assert "FAIL db: command: dump failed" in body and "db is down" in body
        assert http.paths()[-1] == "/hc/client/fail"
        assert samples(metrics)[("pullback_client_service_ok", (("service", "db"),))] == 0
    finally:
        sink.stop()


def test_an_output_that_cannot_be_written_fails_the_run_visibly(fleet, tmp_path):
    """The shipped units once made the recommended metrics path read-only: every timer run
    logged an error and succeeded, and the monitoring silently stopped updating. Now the
    run exits 1, status.json and ``status`` say what was not written, ``--check`` warns
    and the summary mail names it; the next good run clears it."""
    sink = SmtpSink().start()
    try:
        fleet.smtp_port = sink.port
        fleet.add_host("web1").make_archive()
        blocked = tmp_path / "not-a-directory"
        blocked.write_text("a file where the directory should be\n")
        fleet.write_config(
            metrics_file=str(blocked / "pullback.prom"),
            status_page=str(tmp_path / "www" / "index.html"),
            email={"send": "on_problem"},
        )
        pull = fleet.server("pull")
        assert pull.returncode == 1, pull.stderr
        assert "[web1] stored" in pull.stderr
        assert f"could not write the metrics file {blocked}/pullback.prom" in pull.stderr
        assert "Traceback" not in pull.stderr  # an administrator's matter: one line
        assert (tmp_path / "www" / "index.html").exists()  # the other output is still written
        (message,) = sink.messages
        assert message["Subject"] == "[pullback] OUTPUTS NOT WRITTEN: 1"
        text, html = sink.bodies(message)
        assert f"metrics file {blocked}/pullback.prom: " in text
        assert "OUTPUTS NOT WRITTEN" in text and 'class="outputs"' in html
        status = fleet.server("status")
        assert status.returncode == 1
        assert f"not written by the last run: metrics file {blocked}/pullback.prom" in status.stderr
        check = fleet.server("status", "--check")
        assert check.returncode == 1
        assert check.stdout.startswith(
            f"PULLBACK WARNING - not written: metrics file {blocked}/pullback.prom: "
        )
        recorded = json.loads((fleet.state / "status.json").read_text())["outputs"]
        assert len(recorded["problems"]) == 1

        fleet.write_config(metrics_file=str(tmp_path / "metrics" / "pullback.prom"))
        again = fleet.server("pull")
        assert again.returncode == 0, again.stderr
        assert fleet.server("status").returncode == 0
        assert "outputs" not in json.loads((fleet.state / "status.json").read_text())
    finally:
        sink.stop()


def test_a_client_whose_metrics_cannot_be_written_exits_1_and_mails(tmp_path):
    sink = SmtpSink().start()
    try:
        box = ClientSandbox(tmp_path / "client")
        blocked = tmp_path / "not-a-directory"
        blocked.write_text("x")
        box.write_config(
            email={
                "smtp": {"host": "127.0.0.1", "port": sink.port},
                "from": "client@test",
                "to": ["ops@test"],
            },
            metrics_file=str(blocked / "client.prom"),
        )
        (tmp_path / "d").mkdir()
        (tmp_path / "d" / "f").write_text("x")
        box.add_service("app", f"service: {{name: app}}\nfiles: {{paths: [{tmp_path / 'd'}]}}\n")
        result = box.cli("run")
        assert result.returncode == 1
        assert len(box.published()) == 1  # the backup itself is made
        assert f"could not write the metrics file {blocked}/client.prom" in result.stderr
        (message,) = sink.messages  # on_problem: this is one
        assert message["Subject"] == (
            "[pullback] testhost: all 1 services ok; 1 output(s) NOT WRITTEN"
        )
        body = message.get_body(("plain",)).get_content().replace("\r\n", "\n")
        heading = "NOT WRITTEN (monitoring that reads it is out of date):"
        assert f"{heading}\n    metrics file {blocked}/client.prom: " in body
    finally:
        sink.stop()


WRITER = """
import sys, time
from pathlib import Path
from pullback.common.fsutil import atomic_write
target = Path(sys.argv[1])
n = 0
while True:
    n += 1
    atomic_write(target, ("x" * 4_000_000) + f"\\nversion {n} complete\\n")
"""


def test_status_and_metrics_are_never_half_written(tmp_path):
    target = tmp_path / "metrics.prom"
    target.write_text("version 0 complete\n")
    rng = random.Random(7)
    for _ in range(15):
        proc = subprocess.Popen([sys.executable, "-c", WRITER, str(target)])
        time.sleep(0.3 + rng.random() * 0.4)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        text = target.read_text()
        assert text.endswith(" complete\n"), "a half-written file replaced the old one"
    leftovers = [p.name for p in tmp_path.iterdir() if p.name != "metrics.prom"]
    assert all(name.startswith(".metrics.prom.") for name in leftovers)  # temp files only
