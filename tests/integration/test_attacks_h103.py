"""helper-103's attack on the reporting of a killed run (``pullback-client start-stopped``,
client/stopped.py) and on what the record of stopped applications could have broken:
normal and SIGTERM runs, partial runs, services with docker and systemd each, prepares
that fail halfway, restores, the status file, metrics, mail and healthchecks pings.

``docker`` and ``systemctl`` are the recording stand-ins (tests/standins/standin.py); a
wrapper in front of them can make one call fail (as in test_attacks_h102.py).
"""

from __future__ import annotations

import http.server
import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest

from tests.helpers.client import ClientSandbox
from tests.helpers.standin_wrappers import compose_app, wrapped_env
from tests.integration.test_app_plugins import short

pytestmark = pytest.mark.integration

SERVICE = """\
service: {{name: {name}}}
docker: {{docker_compose_path: {compose}, wait_after_restart: 0{docker_extra}}}
systemd: {{units: [{units}]}}
command:
  dump: [{{run: "{dump}", output: out.txt}}]
  restore: ["true"]
"""


class Box(ClientSandbox):
    marker: Path
    env: dict
    tmp: Path
    compose: Path


@pytest.fixture
def box(tmp_path, standins):
    compose = compose_app(tmp_path)
    standins.set(running=["web", "db"], active=["app.service", "b.service"])
    b = Box(tmp_path / "client")
    b.tmp = tmp_path
    b.compose = compose
    b.marker = tmp_path / "mark"
    b.env = wrapped_env(tmp_path, standins.env, b.marker)
    _service(b, "shop", "app.service", hang=True)
    return b


def _service(b: Box, name: str, units: str, hang: bool = False, docker_extra: str = "") -> None:
    dump = f"touch {b.marker}; exec sleep 60" if hang else "echo data"
    text = SERVICE.format(
        name=name, compose=b.compose, units=units, dump=dump, docker_extra=docker_extra
    )
    b.add_service(name, text)


def _quick(b: Box, name: str = "shop") -> None:
    path = b.services / name / "service.yaml"
    path.write_text(path.read_text().replace(f"touch {b.marker}; exec sleep 60", "echo data"))


def _disable(b: Box, name: str = "shop") -> None:
    path = b.services / name / "service.yaml"
    path.write_text(
        path.read_text().replace(f"{{name: {name}}}", f"{{name: {name}, enabled: false}}")
    )


def _killed_while_dumping(b: Box, *args: str, sig: int = signal.SIGKILL) -> int:
    """Start ``args`` (a run by default) and send ``sig`` once a dump waits."""
    proc = b.popen(*(args or ("run",)), env={**os.environ, **b.env})
    deadline = time.monotonic() + 60
    while not b.marker.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the dump never started"
        time.sleep(0.05)
    proc.send_signal(sig)
    proc.communicate(timeout=60)
    b.marker.unlink()
    return proc.returncode


def _record(b: Box) -> Path:
    return b.root / "stopped.json"


def _write_record(b: Box, *entries: dict) -> None:
    full = [{"by": "run", "pid": 4242, "at": "2026-12-05T00:00:00Z", **e} for e in entries]
    _record(b).write_text(json.dumps({"version": 1, "stopped": full}))
    _record(b).chmod(0o600)


def _calls(standins, since: int = 0) -> list[str]:
    return [short(c) for c in standins.calls()[since:]]


def _status(b: Box) -> dict:
    return json.loads((b.archives / ".client-status.json").read_text())


def _metrics(b: Box) -> str:
    return (b.root / "client.prom").read_text()


def _mail_to(b: Box, send: str = "on_problem", fail: bool = False, **extra) -> Path:
    """Mail through a sendmail that appends each message to the file returned (``fail``:
    one that refuses every message)."""
    mails = b.tmp / "mails.txt"
    sendmail = b.tmp / "sendmail"
    body = "cat > /dev/null; echo 'sendmail: cannot connect' >&2; exit 75" if fail else ""
    sendmail.write_text(f"#!/bin/sh\n{body or f'cat >> {mails}; echo ==== >> {mails}'}\n")
    sendmail.chmod(0o755)
    email = {"sendmail": str(sendmail), "from": "pb@x.test", "to": ["root@x.test"], "send": send}
    b.write_config(email=email, metrics_file=str(b.root / "client.prom"), **extra)
    return mails


def _mails(path: Path) -> list[str]:
    if not path.exists():
        return []
    return [m for m in path.read_text().split("====\n") if m.strip()]


def _subject(mail: str) -> str:
    return next(line for line in mail.splitlines() if line.startswith("Subject:"))


class _Pings(http.server.BaseHTTPRequestHandler):
    seen: list[str]

    def do_GET(self):
        self.seen.append(self.path)
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"OK")

    do_POST = do_GET

    def log_message(self, *args):
        pass


@pytest.fixture
def pings():
    seen: list[str] = []
    handler = type("Handler", (_Pings,), {"seen": seen})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/check", seen
    server.shutdown()
    server.server_close()


# ---- what held ------------------------------------------------------------------------


def test_normal_and_sigterm_runs_leave_no_record_no_report_no_extra_mail(box, standins, pings):
    """Two services, each with docker and systemd: a run ended by SIGTERM (exit 143) and
    a normal one leave no record; the unit's ExecStopPost= after each is quiet (no mail,
    no ping, the status file untouched)."""
    url, seen = pings
    _service(box, "other", "b.service")
    mails = _mail_to(box, notify={"healthchecks": url})
    assert _killed_while_dumping(box, sig=signal.SIGTERM) == 143
    assert not _record(box).exists()
    status = (box.archives / ".client-status.json").read_bytes()
    sent, pinged = len(_mails(mails)), len(seen)
    post = box.cli("start-stopped", env=box.env)
    assert (post.returncode, post.stderr) == (0, "")
    assert (box.archives / ".client-status.json").read_bytes() == status
    assert (len(_mails(mails)), len(seen)) == (sent, pinged)

    _quick(box)
    made = box.cli("run", env=box.env)
    assert made.returncode == 0, made.stderr
    assert not _record(box).exists()
    assert _status(box)["last_run_ok"] is True and _status(box)["error"] is None
    assert seen[-2:] == ["/check/start", "/check"]
    sent, pinged = len(_mails(mails)), len(seen)
    post = box.cli("start-stopped", env=box.env)
    assert (post.returncode, post.stderr) == (0, "")
    assert (len(_mails(mails)), len(seen)) == (sent, pinged)
    calls = _calls(standins)
    for unit in ("app.service", "b.service"):
        assert calls.count(f"systemctl stop {unit}") == calls.count(f"systemctl start {unit}") == 2


def test_a_killed_run_is_reported_once_and_the_next_good_run_clears_it(box, standins, pings):
    """The killed run: failed in the status and metrics, /fail pinged, one mail;
    last_success keeps the good run's time; the next good run makes it all good again."""
    url, seen = pings
    mails = _mail_to(box, notify={"healthchecks": url})
    _quick(box)
    assert box.cli("run", env=box.env).returncode == 0
    good = _status(box)["last_success"]
    _service(box, "shop", "app.service", hang=True)
    _killed_while_dumping(box)
    assert seen[-1] == "/check/start"
    post = box.cli("start-stopped", env=box.env)
    assert post.returncode == 0, post.stderr
    status = _status(box)
    assert status["last_run_ok"] is False and status["last_success"] == good
    assert "ended before its finish (killed?)" in status["error"]
    assert "pullback_client_last_run_ok 0" in _metrics(box)
    assert seen[-1] == "/check/fail"
    (told,) = _mails(mails)
    assert "testhost: the run (pid " in _subject(told)

    _quick(box)
    again = box.cli("run", env=box.env)
    assert again.returncode == 0, again.stderr
    status = _status(box)
    assert status["last_run_ok"] is True and status["error"] is None
    assert status["last_success"] > good
    assert "pullback_client_last_run_ok 1" in _metrics(box)
    assert seen[-1] == "/check" and len(_mails(mails)) == 1


def test_a_prepare_failing_halfway_starts_what_it_stopped_and_leaves_no_record(box, standins):
    """systemctl stop of the second unit fails (after stopping it): the finish starts
    both units and the docker services; no record is left; the run says it failed."""
    _quick(box)
    path = box.services / "shop" / "service.yaml"
    path.write_text(path.read_text().replace("[app.service]", "[app.service, b.service]"))
    env = {**box.env, "FAIL_ON": "stop b.service"}
    result = box.cli("run", env=env)
    assert result.returncode == 1
    assert not _record(box).exists()
    calls = _calls(standins)
    assert calls[-4:] == [
        "systemctl start b.service",
        "systemctl start app.service",
        "docker compose config --services",
        "docker compose start web db",
    ], calls


def test_stop_services_false_and_a_partial_run_leave_the_others_entries_alone(box, standins):
    """docker with stop_services: false stops nothing and writes nothing; `run
    --service` of it first starts what the record names for another service."""
    _service(box, "other", "b.service", docker_extra=", stop_services: false")
    path = box.services / "other" / "service.yaml"
    path.write_text(path.read_text().replace("systemd: {units: [b.service]}\n", ""))
    _write_record(box, {"service": "shop", "task": "systemd", "names": ["app.service"]})
    before = len(standins.calls())
    result = box.cli("run", "--service", "other", env=box.env)
    assert result.returncode == 1, result.stderr  # (it reports the run that left the record)
    assert "the run (pid 4242" in _status(box)["error"]
    calls = _calls(standins, before)
    assert calls[0] == "systemctl start app.service"
    assert not any(" stop " in c or c.endswith(" ps --services --status running") for c in calls)
    assert not _record(box).exists()


def test_a_killed_restore_with_task_is_started_again_without_a_failure_report(box, standins):
    _quick(box)
    mails = _mail_to(box)
    assert box.cli("run", env=box.env).returncode == 0
    (archive,) = box.published()
    status = (box.archives / ".client-status.json").read_bytes()
    path = box.services / "shop" / "service.yaml"
    path.write_text(
        path.read_text().replace('restore: ["true"]', f'restore: ["touch {box.marker}; sleep 60"]')
    )
    _killed_while_dumping(
        box, "restore", "--service", "shop", "--task", "command", "--from", str(archive)
    )
    assert [e["by"] for e in json.loads(_record(box).read_text())["stopped"]] == ["restore"] * 2
    before = len(standins.calls())
    post = box.cli("start-stopped", env=box.env)
    assert post.returncode == 0, post.stderr
    assert "systemctl start app.service" in _calls(standins, before)
    assert (box.archives / ".client-status.json").read_bytes() == status
    assert _mails(mails) == []


# ---- defects --------------------------------------------------------------------------


def test_a_run_with_no_enabled_service_keeps_the_killed_runs_report(box, standins):
    mails = _mail_to(box)
    _killed_while_dumping(box)
    _disable(box)  # the administrator disables the service the killed run was in
    result = box.cli("run", env=box.env)
    assert result.returncode == 1, result.stderr  # (a killed run it reports fails it)
    (told,) = _mails(mails)
    assert "ended before its finish" in told  # reported ...
    status = _status(box)
    # ... and at once overwritten by the run's own "success"
    assert status["last_run_ok"] is False, status
    assert "ended before its finish" in (status["error"] or "")
    assert "last_success" not in status
    assert "pullback_client_last_run_ok 0" in _metrics(box)


def test_a_recovery_problem_in_a_run_with_no_enabled_service_is_said_once_and_right(box, standins):
    mails = _mail_to(box)
    _disable(box)
    _write_record(box, {"service": "gone", "task": "docker", "names": ["web"]})
    result = box.cli("run", env=box.env)
    assert result.returncode == 1
    subjects = [_subject(m) for m in _mails(mails)]
    assert not any("all 0 services ok" in s for s in subjects), subjects
    assert len(subjects) == 1, subjects
    status = _status(box)
    assert status["last_run_ok"] is False
    assert "the service is not configured" in (status["error"] or ""), status


def test_a_damaged_record_is_not_reported_as_a_killed_restore(box, standins):
    mails = _mail_to(box)
    _record(box).write_text("{not json")
    _record(box).chmod(0o600)
    result = box.cli("start-stopped", env=box.env)
    assert result.returncode == 1
    assert "set aside" in _status(box)["error"]
    told = _subject(_mails(mails)[0]) + _status(box)["error"]
    assert "a restore ended before its finish" not in told, told


def test_start_stopped_says_in_its_exit_that_its_report_was_not_mailed(box, standins):
    _mail_to(box, fail=True)
    _killed_while_dumping(box)
    result = box.cli("start-stopped", env=box.env)
    assert "the mail was not sent" in result.stderr
    assert result.returncode == 1, result.stderr


def test_a_killed_run_recovered_by_the_next_run_is_reported(box, standins, pings):
    """A power cut while dumping: no ExecStopPost=. The hourly timer's next `run
    --if-due` (the archive is not fresh: the killed run published none) starts the
    applications again, warns in its log, and tells no one that a run was killed and
    the applications were down; had the archive been fresh, the same record would have
    been reported as a failed run, with a mail and a /fail ping."""
    url, seen = pings
    mails = _mail_to(box, notify={"healthchecks": url})
    _killed_while_dumping(box)
    _quick(box)
    result = box.cli("run", "--if-due", env=box.env)
    assert "starting again shop: docker: web, db" in result.stderr
    told = [m for m in _mails(mails) if "ended before its finish" in m]
    assert told or "/check/fail" in seen, (
        f"mails: {len(_mails(mails))}, pings: {seen}, status: {_status(box)}"
    )


def test_the_killed_runs_services_are_not_left_ok_in_the_metrics(box, standins):
    _mail_to(box, send="never")
    _quick(box)
    assert box.cli("run", env=box.env).returncode == 0
    _service(box, "shop", "app.service", hang=True)
    _killed_while_dumping(box)
    assert box.cli("start-stopped", env=box.env).returncode == 0
    assert _status(box)["last_run_ok"] is False
    assert 'pullback_client_service_ok{service="shop"} 1' not in _metrics(box)


def test_the_plugin_guide_tells_authors_to_call_task_stopping():
    guide = (Path(__file__).parents[2] / "docs" / "plugins.md").read_text()
    assert "task.stopping(" in guide
    assert "start-stopped" in guide  # a finish may run in another process, state all but lost
