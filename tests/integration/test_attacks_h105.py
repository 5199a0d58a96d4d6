"""helper-105's attack on the mark of a run under way (``stopped.json``'s ``run``, commit
79e05d2) and on the report a run now makes under its lock and its signal guard.

Real client runs and real files; ``systemctl`` is the recording stand-in of
tests/standins/standin.py with a wrapper in front (tests/helpers/standin_wrappers.py)
that can hang one call, or send SIGTERM to the process calling it (``TERM_ON``:
systemd stopping the unit while a run starts what a killed run stopped).
The mail goes through a sendmail that keeps each message.
"""

from __future__ import annotations

import json
import os
import signal
import stat
import time
from pathlib import Path

import pytest

from tests.helpers.killed_run_box import (
    AT,
    KILLED,
    KILLED_RUN,
    QUICK,
    SHOP_STOPPED,
    SLOW,
    Box,
    make_box,
    wait_for_file,
)
from tests.helpers.killed_run_box import configure as _config
from tests.helpers.killed_run_box import good_day as _good_day
from tests.helpers.killed_run_box import mails as _mails
from tests.helpers.killed_run_box import record as _record
from tests.helpers.killed_run_box import set_sendmail as _sendmail
from tests.helpers.killed_run_box import status as _status
from tests.helpers.killed_run_box import write_record as _write_record
from tests.helpers.standin_wrappers import kill_when_marked

pytestmark = pytest.mark.integration


@pytest.fixture
def box(tmp_path, standins) -> Box:
    """``files`` (quick) and ``shop`` (a systemd task, quick); mail kept; metrics."""
    return make_box(tmp_path, standins)


# ---- defects --------------------------------------------------------------------------


def test_sigterm_during_the_next_runs_recovery_keeps_the_killed_runs_mark(box):
    """A run killed (power cut) with app.service stopped; at boot the timer's run starts
    it again (shielded) and systemd stops the unit meanwhile (a shutdown, an
    administrator's ``systemctl stop``). The run ends 143 after the recovery, its
    ExecStopPost= ``start-stopped`` finds an empty record: no one ever says the run was
    killed."""
    _good_day(box)
    _write_record(box, KILLED_RUN, SHOP_STOPPED)
    result = box.cli("run", env={**box.env, "TERM_ON": "start app.service"})
    assert result.returncode == 143, result.stderr
    # app.service started again; the run reported nothing: the mark stays for the next
    assert "run" in json.loads(_record(box).read_text())
    post = box.cli("start-stopped", env=box.env)  # the unit's ExecStopPost=
    assert post.returncode == 0, post.stderr
    status = _status(box)
    said = " ".join(filter(None, [status["error"], *[m for m in _mails(box)]]))
    assert "pid 4242" in said and KILLED in said  # (was: status ok, error None, no mail)


def test_a_recovery_killed_midway_reports_every_service_of_the_killed_run(box):
    """The killed run ran files and shop; only shop stopped something. The next run's
    recovery hangs starting app.service and is killed (OOM, the stop timeout, a power
    cut); the next start-stopped reports "the run (pid 4242, stopping at ...)" with shop
    failed, while files, whose run was killed as well, still reads ok in the status
    and metrics."""
    _good_day(box)
    _write_record(box, KILLED_RUN, SHOP_STOPPED)
    kill_when_marked(box, box.marker, "run", env={**box.env, "HANG_ON": "start app.service"})
    assert "run" in json.loads(_record(box).read_text())  # the mark stays until reported
    post = box.cli("start-stopped", env=box.env)
    assert post.returncode == 0, post.stderr
    status = _status(box)
    assert "pid 4242" in status["error"] and KILLED in status["error"]
    assert status["services"]["shop"]["ok"] is False
    assert status["services"]["files"]["ok"] is False  # (was: still the good day's ok)
    metrics = (box.root / "client.prom").read_text()
    assert 'pullback_client_service_ok{service="files"} 0' in metrics


def test_two_killed_runs_in_a_row_are_both_reported(box):
    """The nightly run (files, slow) is killed with nothing stopped; the administrator's
    ``run --service files`` is killed as well (the same power trouble). start-stopped
    reports only the second run and only ``files``: ``slow``, whose run was killed,
    still reads ok."""
    box.add_service("slow", QUICK.format(name="slow"))
    _good_day(box)
    box.add_service("slow", SLOW.format(name="slow", marker=box.marker))
    kill_when_marked(box, box.marker, "run", env=box.env)
    first = json.loads(_record(box).read_text())["run"]
    box.add_service("files", SLOW.format(name="files", marker=box.marker))
    kill_when_marked(box, box.marker, "run", "--service", "files", env=box.env)
    post = box.cli("start-stopped", env=box.env)
    assert post.returncode == 0, post.stderr
    status = _status(box)
    assert status["last_run_ok"] is False and KILLED in status["error"]
    assert status["services"]["files"]["ok"] is False
    assert f"pid {first['pid']}" in status["error"] or (
        status["services"]["slow"]["ok"] is False
    )  # (was: neither the first run nor its slow service is said)


def test_a_huge_pid_in_the_mark_is_bounded(box):
    _good_day(box)
    pid = int("9" * 4000)
    _write_record(box, {"pid": pid, "at": AT, "services": ["files"]})
    post = box.cli("start-stopped", env=box.env)
    assert post.returncode == 0, post.stderr
    assert KILLED in _status(box)["error"]
    assert len(post.stderr) < 2000, len(post.stderr)
    assert len(_status(box)["error"]) < 1000, len(_status(box)["error"])


def test_start_stopped_that_fails_to_report_keeps_the_killed_run(box):
    _good_day(box)
    (box.archives / ".client-status.json").unlink()
    (box.archives / ".client-status.json").mkdir()  # (a status file that cannot be written)
    _write_record(box, KILLED_RUN)
    first = box.cli("start-stopped", env=box.env)
    assert first.returncode == 1, first.stderr  # "could not record", in its report
    assert "run" in json.loads(_record(box).read_text())  # the mark stays for the next
    (box.archives / ".client-status.json").rmdir()  # the administrator repairs it
    again = box.cli("start-stopped", env=box.env)
    assert again.returncode == 0, again.stderr
    # (was: nothing left to tell that run 4242 was killed)
    assert "pid 4242" in _status(box)["error"]
    first_mail, second_mail = _mails(box)  # (the first said its status file was not written)
    assert "NOT WRITTEN" in first_mail and "NOT WRITTEN" not in second_mail
    assert not _record(box).exists()


def test_the_clearing_of_the_mark_is_made_durable(tmp_path, monkeypatch):
    """The status file is written durably (atomic_write: fsync of the file and of its
    directory), then the record's mark leaves by ``unlink`` alone. Seen in-process: no
    directory fsync follows the unlink."""
    from pullback.client import stopped

    path = tmp_path / "stopped.json"
    record = stopped.StoppedRecord(path, "run")
    record.begin(["files"])
    assert path.exists()
    synced: list[str] = []
    real_fsync, real_unlink = os.fsync, Path.unlink

    def fsync(fd):
        synced.append("dir" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file")
        return real_fsync(fd)

    def unlink(self, missing_ok=False):
        synced.append("unlink")
        return real_unlink(self, missing_ok=missing_ok)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(Path, "unlink", unlink)
    record.reported()
    assert not path.exists()
    assert "unlink" in synced
    assert "dir" in synced[synced.index("unlink") :], synced  # (was: ['unlink'])


def test_a_killed_run_fails_a_service_whose_name_is_long_but_valid(box):
    """service.yaml allows names of up to 128 characters; report() keys the failed
    services by printable(name, 100)."""
    name = "backup-of-the-customer-database-" + "x" * 90  # 122 characters: valid
    box.add_service("long", QUICK.format(name=name))
    _good_day(box)
    assert _status(box)["services"][name]["ok"] is True
    box.add_service("long", SLOW.format(name=name, marker=box.marker))
    kill_when_marked(box, box.marker, "run", env=box.env)
    assert name in json.loads(_record(box).read_text())["run"]["services"]
    post = box.cli("start-stopped", env=box.env)
    assert post.returncode == 0, post.stderr
    status = _status(box)
    assert KILLED in status["error"] and status["services"]["files"]["ok"] is False
    assert sorted(status["services"]) == sorted(["files", "shop", name])  # (was: + "…")
    assert status["services"][name]["ok"] is False


# ---- what holds -----------------------------------------------------------------------


def test_a_run_killed_during_its_mail_is_not_reported_killed_again(box):
    """The status file is written and the mark cleared before the mail: a run killed
    while its mail hangs keeps its own report; no false "killed", no second mail."""
    _sendmail(box, f"touch {box.marker}; exec sleep 60")
    _config(box, send="always")
    kill_when_marked(box, box.marker, "run", env=box.env)
    assert not _record(box).exists()
    status = _status(box)
    assert status["last_run_ok"] is True and status["error"] is None
    _sendmail(box)
    post = box.cli("start-stopped", env=box.env)
    assert (post.returncode, post.stderr) == (0, "")
    assert _status(box)["last_run_ok"] is True and _mails(box) == []


def test_start_stopped_during_a_run_leaves_its_mark_alone(box):
    _good_day(box)
    box.add_service("files", SLOW.format(name="files", marker=box.marker))
    proc = box.popen("run", env=box.env)
    deadline = time.monotonic() + 60
    while not box.marker.exists():
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    mark = _record(box).read_bytes()
    post = box.cli("start-stopped", env=box.env)
    assert post.returncode == 0, post.stderr
    assert _record(box).read_bytes() == mark
    assert _status(box)["last_run_ok"] is True  # not reported killed
    dry = box.cli("restore", "files", "--dry-run", env=box.env)
    assert _record(box).read_bytes() == mark, dry.stderr
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=30)
    box.add_service("files", QUICK.format(name="files"))
    post = box.cli("start-stopped", env=box.env)
    assert post.returncode == 0, post.stderr
    assert KILLED in _status(box)["error"] and len(_mails(box)) == 1


def test_a_hostile_mark_is_bounded_and_escaped(box):
    """200 services of long names full of escape sequences, an ``at`` with line breaks
    and terminal escapes: one line of bounded words, every service failed under an
    escaped name, the record cleared; 201 services: a damaged record set aside."""
    _good_day(box)
    evil = "\x1b[2J\x1b]0;pwned\x07\nFAKE: ok\r" * 20
    services = [f"s{i}{evil}" for i in range(200)]
    _write_record(box, {"pid": -1, "at": evil, "services": services})
    post = box.cli("start-stopped", env=box.env)
    assert post.returncode == 0, post.stderr
    assert "\x1b" not in post.stderr and "\nFAKE" not in post.stderr
    assert len(post.stderr) < 2000
    status = _status(box)
    assert len(status["error"]) < 500 and "\x1b" not in status["error"]
    failed = [n for n, e in status["services"].items() if e["ok"] is False]
    assert len(failed) == 200 and all(len(n) <= 130 and "\x1b" not in n for n in failed)
    (mail,) = _mails(box)
    assert "\x1b" not in mail and "\nFAKE: ok" not in mail
    assert not _record(box).exists()

    _write_record(box, {"pid": 1, "at": AT, "services": [f"s{i}" for i in range(201)]})
    post = box.cli("start-stopped", env=box.env)
    assert post.returncode == 1
    assert (box.root / "stopped.json.damaged").exists() and not _record(box).exists()


def test_a_second_sigterm_during_a_slow_mail_waits_only_the_mail_timeout(box):
    """The report now runs under the run's patient guard: a second SIGTERM waits. It
    waits no longer than the sendmail's timeout (smtp.timeout), far below systemd's
    TimeoutStopSec; the status file is written before the mail."""
    _good_day(box)
    box.add_service("files", SLOW.format(name="files", marker=box.marker))
    hang = box.marker.with_name("mailing")
    _sendmail(box, f"cat > /dev/null; touch {hang}; exec sleep 60")
    _config(box, timeout="5s")
    proc = box.popen("run", env=box.env)
    deadline = time.monotonic() + 60
    while not box.marker.exists():
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    wait_for_file(hang, proc, deadline - time.monotonic())
    started = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert time.monotonic() - started < 20, err
    assert proc.returncode == 143, err
    assert _status(box)["last_run_ok"] is False and not _record(box).exists()


def test_sigterm_during_a_restores_recovery_still_reports_the_killed_run(box):
    """A restore starts what the killed run stopped in one shielded block: a SIGTERM
    meanwhile waits for the starts, then ends the restore with the mark kept; the next
    start-stopped reports it."""
    _good_day(box)
    (archive,) = box.published()
    _write_record(box, KILLED_RUN, SHOP_STOPPED)
    env = {**box.env, "TERM_ON": "start app.service"}
    result = box.cli("restore", "--service", "shop", "--from", str(archive), env=env)
    assert result.returncode == 143, result.stderr
    assert "run" in json.loads(_record(box).read_text())  # (helper-106: said by the next)
    assert box.cli("start-stopped", env=box.env).returncode == 0
    status = _status(box)
    assert "pid 4242" in status["error"] and KILLED in status["error"]
    assert status["services"]["files"]["ok"] is False
    assert len(_mails(box)) == 1 and not _record(box).exists()


def test_a_run_with_no_enabled_service_and_a_fresh_if_due_report_the_mark_once(box):
    _good_day(box)
    _write_record(box, KILLED_RUN)
    fresh = box.cli("run", "--if-due", env=box.env)
    assert fresh.returncode == 1, fresh.stderr  # (helper-106: the unit fails, visibly)
    assert KILLED in _status(box)["error"] and len(_mails(box)) == 1
    assert not _record(box).exists()
    _write_record(box, {**KILLED_RUN, "pid": 4343})
    for name in ("files", "shop"):
        path = box.services / name / "service.yaml"
        path.write_text(
            path.read_text().replace(f"{{name: {name}}}", f"{{name: {name}, enabled: false}}")
        )
    none = box.cli("run", env=box.env)
    assert none.returncode == 1, none.stderr
    assert "pid 4343" in _status(box)["error"] and len(_mails(box)) == 2, none.stderr
    assert not _record(box).exists()
    again = box.cli("run", env=box.env)
    assert again.returncode == 0 and len(_mails(box)) == 2
