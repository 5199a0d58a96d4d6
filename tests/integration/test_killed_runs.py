"""A client run killed outright with nothing stopped (no docker or systemd task) is
reported all the same: the run writes that it is under way in the record of stopped
applications, and the next ``pullback-client start-stopped`` (the client unit's
ExecStopPost=) or run reports the run as failed, every one of its services with it.

Before, such a run left the status file, the metrics and the mail saying the last run's
result: monitoring saw it only as stale, a day or more later. Real runs, real files;
the mail goes through a sendmail that keeps each message.
"""

from __future__ import annotations

import email
import email.policy
import json
import os
import signal
import time
from pathlib import Path

import pytest

from tests.helpers.client import ClientSandbox
from tests.helpers.killed_run_box import KILLED, QUICK, SLOW, mailed_client
from tests.helpers.killed_run_box import mails as _mails
from tests.helpers.killed_run_box import status as _status
from tests.helpers.standin_wrappers import kill_when_marked

pytestmark = pytest.mark.integration


@pytest.fixture
def box(tmp_path):
    """Two services, ``files`` quick and ``slow`` whose dump waits (its marker said)."""
    box = mailed_client(tmp_path, "files")
    box.marker = tmp_path / "dumping"
    box.add_service("slow", SLOW.format(name="slow", marker=box.marker))
    return box


def _record(box: ClientSandbox) -> Path:
    return box.root / "stopped.json"


def _quick(box: ClientSandbox) -> None:
    """The next day's ``slow`` dump is quick."""
    box.add_service("slow", QUICK.format(name="slow"))


@pytest.fixture
def good_day(box):
    """One good run (the slow dump made quick for it), then the slow one back."""
    _quick(box)
    made = box.cli("run")
    assert made.returncode == 0, made.stderr
    assert _status(box)["last_run_ok"] is True
    assert not _record(box).exists()  # a run that ended leaves no mark
    box.add_service("slow", SLOW.format(name="slow", marker=box.marker))
    return box


def test_start_stopped_reports_a_run_killed_with_nothing_stopped(good_day):
    box = good_day
    proc = box.popen("run", env=dict(os.environ))
    while not box.marker.exists():
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.05)
    mark = json.loads(_record(box).read_text())  # written before the services ran
    assert mark["stopped"] == []
    assert (mark["run"]["pid"], mark["run"]["services"]) == (proc.pid, ["files", "slow"])
    assert _record(box).stat().st_mode & 0o777 == 0o600
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=30)
    assert _status(box)["last_run_ok"] is True  # the killed run told no one

    result = box.cli("start-stopped")
    assert result.returncode == 0, result.stderr  # (the unit's ExecStopPost=: reported)
    status = _status(box)
    assert status["last_run_ok"] is False
    assert status["error"] == f"the run (pid {proc.pid}, started at {mark['run']['at']}) {KILLED}"
    # every service of the killed run is failed, not only those that stopped something
    for name in ("files", "slow"):
        assert status["services"][name]["ok"] is False
        assert status["services"][name]["error"] == "its run ended before its finish"
    metrics = (box.root / "client.prom").read_text()
    assert "pullback_client_last_run_ok 0" in metrics
    assert 'pullback_client_service_ok{service="files"} 0' in metrics
    (mail,) = _mails(box)
    assert f"Subject: [pullback] testhost: the run (pid {proc.pid}" in mail
    assert not _record(box).exists()

    # said once: nothing more at the next start-stopped, nor at the next good run
    again = box.cli("start-stopped")
    assert (again.returncode, again.stderr) == (0, "")
    _quick(box)
    assert box.cli("run").returncode == 0
    assert _status(box)["last_run_ok"] is True and len(_mails(box)) == 1


def test_the_next_run_reports_a_killed_run_after_a_power_cut(good_day):
    """No ExecStopPost= ran (a power cut): the next run tells, in its own report, and
    says that the machine restarted (the mark's boot is not this one)."""
    box = good_day
    kill_when_marked(box, box.marker, "run", env={})
    mark = json.loads(_record(box).read_text())
    with open("/proc/sys/kernel/random/boot_id") as handle:
        assert mark["run"]["boot"] == handle.read().strip()
    mark["run"]["boot"] = "an-earlier-boot"  # (the machine restarted since)
    _record(box).write_text(json.dumps(mark))
    _quick(box)
    result = box.cli("run")
    assert result.returncode == 1, result.stderr  # the killed run is this run's to report
    status = _status(box)
    restarted = "ended before its finish (the machine restarted before it ended)"
    assert status["error"].startswith("the run (pid ") and status["error"].endswith(restarted)
    assert status["services"]["files"]["ok"] is True  # this run's own services: done
    assert len(box.published()) == 2
    (mail,) = _mails(box)
    assert restarted in mail
    assert not _record(box).exists()


def test_a_next_run_that_publishes_nothing_names_the_killed_run_too(good_day):
    box = good_day
    kill_when_marked(box, box.marker, "run", env={})
    _quick(box)
    text = box.config.read_text().replace("min_free_space: 1M", "min_free_space: 1P")
    box.config.write_text(text)
    result = box.cli("run")
    assert result.returncode == 1
    status = _status(box)
    assert status["error"].startswith("not enough free space in ")
    assert "; the run (pid " in status["error"] and status["error"].endswith(KILLED)
    (mail,) = _mails(box)
    subject = email.message_from_string(mail, policy=email.policy.default)["Subject"]
    assert "the run failed: not enough free space" in subject and "(and: the run (pid" in subject
    assert not _record(box).exists()  # this run's own report is written: no mark left


def test_a_run_stopped_by_sigterm_or_refused_by_the_lock_leaves_no_mark(good_day):
    box = good_day
    proc = box.popen("run", env=dict(os.environ))
    while not box.marker.exists():
        time.sleep(0.05)
    second = box.cli("run")  # the lock is held: this one writes nothing
    assert second.returncode == 75, second.stderr
    assert json.loads(_record(box).read_text())["run"]["pid"] == proc.pid
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    assert not _record(box).exists()  # it reported itself
    assert _status(box)["last_run_ok"] is False
    assert KILLED not in _status(box)["error"]
    assert box.cli("start-stopped").stderr == ""
    dry = box.cli("run", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert not _record(box).exists()


WAITS = """\
service: {{name: {name}}}
command:
  dump:
    - run: "echo data; touch {marker}; while [ -e {marker} ]; do sleep 0.05; done"
      output: out.txt
"""


def test_a_mark_left_after_its_report_was_written_is_not_a_killed_run(box):
    """A power cut between the run's status file and its mark's removal: the status file
    names the run it reports (``reported_run``), so the mark it left is not reported as a
    killed run; a mark of any other run still is."""
    box.add_service("slow", WAITS.format(name="slow", marker=box.marker))
    proc = box.popen("run", env=dict(os.environ))
    while not box.marker.exists():
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.05)
    left = _record(box).read_text()  # the mark as the power cut leaves it
    box.marker.unlink()  # the dump ends
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert not _record(box).exists()
    reported = json.loads(left)["run"]
    identity = {k: reported[k] for k in ("pid", "at", "token")}
    assert _status(box)["reported_run"] == identity and len(identity["token"]) == 16
    before = _status(box)

    metrics = box.root / "client.prom"
    written = metrics.read_text()
    assert "pullback_client_last_run_ok 1" in written
    metrics.unlink()  # (the power cut came before the run wrote them)
    _record(box).write_text(left)
    result = box.cli("start-stopped")
    assert result.returncode == 0, result.stderr
    assert _status(box) == before and _mails(box) == []  # nothing reported again
    assert "wrote its status file, then ended before its mark" in result.stderr
    assert not _record(box).exists()
    assert metrics.read_text() == written  # from the status file the run wrote

    other = json.loads(left)
    other["run"]["token"] = "0" * 16  # another run's mark (same pid and second): killed
    _record(box).write_text(json.dumps(other))
    assert box.cli("start-stopped").returncode == 0
    status = _status(box)
    assert status["last_run_ok"] is False and status["error"].endswith(KILLED)
    assert status["reported_run"] == {**identity, "token": "0" * 16}
    assert not _record(box).exists()
