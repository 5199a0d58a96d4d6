"""helper-106's attack on the mark of a run under way (``stopped.json``'s ``run``,
commits 79e05d2 and 2b47822), after helper-105's (tests/integration/test_attacks_h105.py,
not repeated here).

Real client runs and real files; ``systemctl`` is the recording stand-in of
tests/standins/standin.py with a wrapper in front (tests/helpers/standin_wrappers.py)
that can hang or fail one call. The mail goes through a sendmail that keeps each
message, or (one test) to a local SMTP server of the test's own.
"""

from __future__ import annotations

import contextlib
import json
import signal
import socket
import subprocess
import threading
import time

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
from tests.helpers.killed_run_box import status as _status
from tests.helpers.killed_run_box import write_record as _write_record
from tests.helpers.standin_wrappers import kill_when_marked

pytestmark = pytest.mark.integration


@pytest.fixture
def box(tmp_path, standins) -> Box:
    """``files`` (quick) and ``shop`` (a systemd task, quick); mail kept; metrics."""
    return make_box(tmp_path, standins)


def _started(b: Box, unit: str) -> int:
    calls = [c for c in b.calls() if c["program"] == "systemctl"]
    return sum(1 for c in calls if "start" in c["args"] and unit in c["args"])


# ---- defects --------------------------------------------------------------------------


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_during_start_stopped_keeps_the_entry_of_what_it_never_started(box, signum):
    """A run killed with app.service stopped. ``start-stopped`` (the unit's
    ExecStopPost=, or the administrator by hand) hangs in ``systemctl start
    app.service``; the administrator presses Ctrl-C, or systemd's stop timeout sends
    SIGTERM. The run's and the restore's recovery are shielded (helper-105);
    start-stopped's is not: the Interrupted is caught as "could not start them again"
    and the entry leaves the record. app.service stays down and no later
    start-stopped, run or restore ever starts it."""
    _good_day(box)
    _write_record(box, KILLED_RUN, SHOP_STOPPED)
    before = _started(box, "app.service")
    proc = box.popen("start-stopped", env={**box.env, "HANG_ON": "start app.service"})
    wait_for_file(box.marker, proc)
    proc.send_signal(signum)
    time.sleep(0.5)
    assert proc.poll() is None  # (it waits for the start, as a run does)
    # the hung call ends as systemd's stop timeout or the terminal's Ctrl-C ends it
    subprocess.run(["pkill", "-TERM", "-P", str(proc.pid)], check=False)
    _, err = proc.communicate(timeout=60)
    box.marker.unlink()
    assert proc.returncode == 128 + signum, err
    assert _started(box, "app.service") == before  # (the hung call never reached systemctl)
    assert "left for the next start (a signal came)" in err
    record = json.loads(_record(box).read_text())  # (was: the entry dropped, never started)
    assert record["run"]["pid"] == 4242 and record["stopped"][0]["names"] == ["app.service"]
    assert _status(box)["last_run_ok"] is True and _mails(box) == []  # nothing said yet
    again = box.cli("start-stopped", env=box.env)
    assert again.returncode == 0, again.stderr
    assert _started(box, "app.service") == before + 1
    assert "pid 4242" in _status(box)["error"] and len(_mails(box)) == 1
    assert not _record(box).exists()


def test_the_mail_of_two_killed_runs_names_both(box):
    """The nightly run is killed (nothing stopped), then the administrator's ``run
    --service files`` (the same power trouble). start-stopped's report carries both
    runs' lines (the status file's error names both pids), but the mail, the channel
    an administrator reads, says the first line only: its template never shows the
    report's problems, and only the last run's line is in the log. The nightly run's
    killing is said nowhere in the mail."""
    box.add_service("slow", QUICK.format(name="slow"))
    _good_day(box)
    box.add_service("slow", SLOW.format(name="slow", marker=box.marker))
    kill_when_marked(box, box.marker, "run", env=box.env)
    first = json.loads(_record(box).read_text())["run"]["pid"]
    box.add_service("files", SLOW.format(name="files", marker=box.marker))
    kill_when_marked(box, box.marker, "run", "--service", "files", env=box.env)
    second = json.loads(_record(box).read_text())["run"]["pid"]
    box.add_service("files", QUICK.format(name="files"))
    box.add_service("slow", QUICK.format(name="slow"))
    post = box.cli("start-stopped", env=box.env)
    assert post.returncode == 0, post.stderr
    error = _status(box)["error"]
    assert f"pid {first}," in error and f"pid {second}," in error  # the status says both
    (mail,) = _mails(box)
    assert f"pid {second}," in mail
    assert f"pid {first}," in mail, mail  # (the nightly run: not in the mail)


def test_a_carrying_run_that_publishes_nothing_fails_the_killed_runs_services(box):
    """docs/client.md: a killed run "is reported by whoever finds its record, as a
    failed run with every one of its services failed (status file, metrics, ...)". A
    next run that publishes nothing (here: short of space) reports it in its own words,
    clears the mark, and leaves every service of the killed run as the day before: ok,
    pullback_client_service_ok 1, though neither run backed any of them up."""
    _good_day(box)
    _write_record(box, KILLED_RUN)
    _config(box, min_free_space="100000T")
    failed = box.cli("run", env=box.env)
    assert failed.returncode == 1, failed.stderr
    status = _status(box)
    assert "not enough free space" in status["error"] and "pid 4242" in status["error"]
    assert not _record(box).exists()
    metrics = (box.root / "client.prom").read_text()
    assert status["services"]["files"]["ok"] is False, status["services"]
    assert 'pullback_client_service_ok{service="files"} 0' in metrics


def test_a_status_file_that_cannot_be_written_keeps_the_killed_runs_mark(box):
    """docs/client.md: "A killed run's mark stays until a report of it is written (one
    that fails ... leaves it for the next)". With no mail configured (metrics only), a
    status file that cannot be written (here a directory in its place: EISDIR; a full
    or read-only disk alike) fails start-stopped's report (exit 1) and the mark leaves
    all the same: once the administrator mends it, nothing ever says the run was
    killed; the metrics file was rewritten from an empty status meanwhile."""
    _good_day(box)
    box.write_config(metrics_file=str(box.root / "client.prom"))
    _write_record(box, KILLED_RUN)
    status = box.archives / ".client-status.json"
    status.unlink()
    status.mkdir()
    post = box.cli("start-stopped", env=box.env)
    assert post.returncode == 1, post.stderr
    status.rmdir()  # the administrator mends it
    again = box.cli("start-stopped", env=box.env)
    assert again.returncode == 0, again.stderr
    said = status.exists() and "pid 4242" in (_status(box)["error"] or "")
    assert said or _record(box).exists()  # (was: the mark gone, nothing said)


def _dripping_smtp(seconds: float) -> tuple[int, threading.Event]:
    """A local SMTP server that answers every connection with a greeting one byte at a
    time, a byte every 0.4 s for ``seconds`` (each byte well within any timeout), then
    closes. Returns its port and an event set when it is done."""
    server = socket.create_server(("127.0.0.1", 0))
    done = threading.Event()

    def serve() -> None:
        with server:
            server.settimeout(60)
            try:
                conn, _ = server.accept()
            except OSError:
                done.set()
                return
            with conn:
                end = time.monotonic() + seconds
                with contextlib.suppress(OSError):
                    conn.sendall(b"220")
                    while time.monotonic() < end:
                        conn.sendall(b"-")
                        time.sleep(0.4)
        done.set()

    threading.Thread(target=serve, daemon=True).start()
    return server.getsockname()[1], done


def test_a_dripping_smtp_server_is_cut_at_smtp_timeout(box):
    """start-stopped (and every run) now reports under the client's lock. smtp.timeout
    is documented as "Longest wait for the SMTP server", but smtplib's timeout bounds
    each read, not the delivery: a server (or a middlebox) that trickles its greeting
    keeps start-stopped, and the client's lock, as long as it likes. Meanwhile every
    timer run exits 75, which the unit counts as a skipped tick, not a failure (the
    unit's own run would hang the same way: a oneshot unit has no start timeout)."""
    _good_day(box)
    port, done = _dripping_smtp(15)
    email = {"from": "pb@x.test", "to": ["root@x.test"]}
    email["smtp"] = {"host": "127.0.0.1", "port": port, "security": "none", "timeout": "2s"}
    box.write_config(email=email, metrics_file=str(box.root / "client.prom"))
    _write_record(box, KILLED_RUN)
    started = time.monotonic()
    proc = box.popen("start-stopped", env=box.env)
    _, err = proc.communicate(timeout=60)
    took = time.monotonic() - started
    assert proc.returncode == 1, err  # (the mail not sent: said, in the exit status)
    assert "timed out (the mail not taken within 2s)" in err
    assert KILLED in _status(box)["error"]
    assert took < 3 * 2 + 2, (took, err)  # (was ~15 s, any length the server liked)
    tick = box.cli("run", env=box.env)  # the lock is free again: a timer run runs
    assert tick.returncode == 0, tick.stderr  # (a good run: no mail to send)
    done.wait(30)


def test_an_application_left_down_is_said_before_earlier_killed_runs(box):
    """A week of runs killed (the OOM killer every night): the mark carries their lines.
    The next run finds also an entry it cannot start (its service file was removed: "start
    them by hand", the one line asking the administrator to act) and is killed in turn.
    Report lines are ordered [this run, the earlier runs..., problems] and the status
    file's error shows five of them ("and 2 more"), the mail only the first: the
    application left down is said in neither."""
    _good_day(box)
    earlier = [f"the run (pid {100 + i}, started at {AT}) {KILLED}" for i in range(4)]
    gone = {"service": "gone", "task": "systemd", "names": ["old.service"]}
    _write_record(box, {**KILLED_RUN, "earlier": earlier}, gone)
    box.add_service("files", SLOW.format(name="files", marker=box.marker))
    kill_when_marked(box, box.marker, "run", env=box.env)
    box.add_service("files", QUICK.format(name="files"))
    post = box.cli("start-stopped", env=box.env)
    assert post.returncode == 0, post.stderr
    error = _status(box)["error"]
    assert "pid 4242" in error and "and 2 more" in error
    (mail,) = _mails(box)
    assert "start them by hand" in error or "start them by hand" in mail, error


# ---- what holds -----------------------------------------------------------------------


def test_an_older_record_of_entries_only_is_reported_once_with_its_services(box):
    """A record written by the version before the mark (entries only, no ``run``): the
    killed run is named from its entries, its service failed, the record emptied, one
    mail; the next start-stopped and run say nothing of it again."""
    _good_day(box)
    _write_record(box, None, SHOP_STOPPED)
    post = box.cli("start-stopped", env=box.env)
    assert post.returncode == 0, post.stderr
    status = _status(box)
    assert "pid 4242, stopping at" in status["error"] and KILLED in status["error"]
    assert status["services"]["shop"]["ok"] is False and not _record(box).exists()
    assert len(_mails(box)) == 1
    assert box.cli("start-stopped", env=box.env).returncode == 0
    again = box.cli("run", env=box.env)
    assert again.returncode == 0, again.stderr
    assert _status(box)["last_run_ok"] is True and len(_mails(box)) == 1


def test_run_service_carrying_a_killed_run_of_every_service(box):
    """``run --service files`` finds the mark of a killed run of files and shop: it
    exits 1, says the killed run first, shop is failed (left out), the mark leaves; a
    second kill of that run keeps both services in its mark."""
    _good_day(box)
    _write_record(box, KILLED_RUN)
    box.add_service("files", SLOW.format(name="files", marker=box.marker))
    kill_when_marked(box, box.marker, "run", "--service", "files", env=box.env)
    mark = json.loads(_record(box).read_text())["run"]
    assert sorted(mark["services"]) == ["files", "shop"] and "pid 4242" in mark["earlier"][0]
    box.add_service("files", QUICK.format(name="files"))
    one = box.cli("run", "--service", "files", env=box.env)
    assert one.returncode == 1, one.stderr
    status = _status(box)
    assert status["error"].startswith("the run (pid") and "pid 4242" in status["error"]
    assert status["services"]["shop"]["ok"] is False and not _record(box).exists()
    assert len(_mails(box)) == 1
