"""A pull cut short (SIGKILL as the OOM killer or TimeoutStopSec= does it, SIGTERM as
``systemctl stop`` does) writes neither status.json nor the outputs. The unit's
ExecStopPost= (``pullback-server publish --if-failed``, run with systemd's
``$SERVICE_RESULT``/``$EXIT_STATUS``) makes the metrics file and the status page say so.

Real processes: a real pull of two hosts over sshd, one host's sshd frozen so that the pull
waits on it while connecting (the journal says so) and is then killed or stopped.
"""

from __future__ import annotations

import json
import os
import signal
import time
from contextlib import contextmanager

import pytest

from tests.helpers.faults import kill_tree, wait_for
from tests.helpers.fleet import Fleet
from tests.integration.test_monitoring import samples

pytestmark = [pytest.mark.integration]

KILLED = {"SERVICE_RESULT": "signal", "EXIT_CODE": "killed", "EXIT_STATUS": "KILL"}
STOPPED = {"SERVICE_RESULT": "exit-code", "EXIT_CODE": "exited", "EXIT_STATUS": "143"}
SUCCEEDED = {"SERVICE_RESULT": "success", "EXIT_CODE": "exited", "EXIT_STATUS": "0"}
ONE_FAILED = {"SERVICE_RESULT": "exit-code", "EXIT_CODE": "exited", "EXIT_STATUS": "1"}
"""A pull that ended by itself, a host failed: it mailed and pinged itself."""


@pytest.fixture
def fleet(tmp_path):
    fleet = Fleet(tmp_path)
    yield fleet
    fleet.stop()


@contextmanager
def frozen(fleet: Fleet, host: str):
    """``host``'s sshd stopped (SIGSTOP): a pull's connection to it waits for the banner."""
    proc = fleet.hosts[host].sshd.proc
    assert proc is not None
    os.kill(proc.pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(proc.pid, signal.SIGCONT)


def journal(fleet: Fleet) -> dict:
    """The pull's journal now ({} when there is none or it is being replaced)."""
    try:
        return json.loads((fleet.state / "pull-in-progress.json").read_text())
    except (FileNotFoundError, ValueError):
        return {}


def start_stuck_pull(fleet: Fleet):
    """A pull that is done with ``good`` and now waits on ``hung`` while connecting (its
    own journal says so: not the one a pull before it left)."""
    run = fleet.server_popen("pull")
    wait_for(
        lambda: (
            journal(fleet) == {**journal(fleet), "pid": run.pid, "hosts": {"hung": "connecting"}}
        ),
        60,
        "the pull to be done with good and connecting to hung",
    )
    return run


def cut_short(found: dict, host: str) -> float:
    return found[("pullback_pull_cut_short", (("host", host),))]


def publish_after_stop(fleet: Fleet, env: dict) -> tuple[int, str, float]:
    """What the unit's ExecStopPost= runs, with systemd's variables: (exit code, stderr,
    seconds it took)."""
    started = time.monotonic()
    result = fleet.server("publish", "--if-failed", env=env, timeout=60)
    return result.returncode, result.stderr, time.monotonic() - started


def test_a_pull_killed_or_stopped_is_in_the_metrics_and_on_the_page(fleet, tmp_path, smtp, http):
    """... and in a mail and a failure ping (an outside walk: exit-codes.md promised the
    failure mail; none came, and healthchecks got only /start)."""
    fleet.add_host("good").make_archive()
    fleet.add_host("hung").make_archive()
    out = tmp_path / "out"
    metrics, page = out / "pullback.prom", out / "index.html"
    # a frozen sshd must hold the pull while the test looks (ssh's ConnectTimeout covers
    # the banner exchange)
    fleet.smtp_port = smtp.port
    fleet.host_extra["hung"] = {
        "notify": {"healthchecks": f"{http.url}/hung"},
        "email_to": ["owner@example.test"],
    }
    fleet.write_config(
        metrics_file=str(metrics),
        status_page=str(page),
        ssh={"connect_timeout": "120s"},
        notify={"healthchecks": f"{http.url}/check"},
    )
    first = fleet.server("pull")
    assert first.returncode == 0, first.stderr
    mailed, pinged = len(smtp.messages), len(http.requests)
    assert fleet.server("publish", "--if-failed", env=ONE_FAILED).returncode == 0
    assert (len(smtp.messages), len(http.requests)) == (mailed, pinged), "it mailed itself"
    assert cut_short(samples(metrics), "hung") == 0
    assert cut_short(samples(metrics), "good") == 0

    with frozen(fleet, "hung"):
        # SIGKILL (the OOM killer; systemd when TimeoutStopSec= runs out), everything
        # the pull started with it, as systemd kills the unit's cgroup
        run = start_stuck_pull(fleet)
        kill_tree(run)
        before = metrics.read_text()
        assert cut_short(samples(metrics), "hung") == 0  # what this change is for

        # the unit succeeded: nothing is read or written
        metrics.unlink()
        code, err, _ = publish_after_stop(fleet, SUCCEEDED)
        assert code == 0, err
        assert not metrics.exists(), "a successful pull's ExecStopPost= rewrote the outputs"
        metrics.write_text(before)

        code, err, took = publish_after_stop(fleet, KILLED)
        assert code == 0, err
        assert took < 15, f"the outputs took {took:.1f}s"
        assert f"the pull (pid {run.pid}) was killed (systemd: signal, KILL)" in err, err
        failure, owners = smtp.messages[mailed:]
        assert failure["Subject"].endswith("FAILED: the pull was killed")
        said = failure.get_body(("plain",)).get_content()
        assert f"the pull (pid {run.pid}) was killed (systemd: signal, KILL) while " in said
        # the host it was pulling: its owners and its own check hear of it too
        assert owners["To"] == "owner@example.test"
        assert owners["Subject"].endswith("FAILED: hung: the pull was killed")
        # the killed pull sent its /start; ExecStopPost= the /fail it could not
        sent = sorted(r.path for r in http.requests[pinged:])
        assert sent == ["/check/fail", "/check/start", "/hung/fail", "/hung/start"], sent
        # a later failed run does not tell of the same cut-short pull again
        mailed = len(smtp.messages)
        code, err, _ = publish_after_stop(fleet, {**STOPPED, "EXIT_STATUS": "70"})
        (later,) = smtp.messages[mailed:]
        assert later["Subject"].endswith("FAILED: the pull ended without its report"), later
        found = samples(metrics)
        assert cut_short(found, "hung") == 1
        assert cut_short(found, "good") == 0  # stored before the kill: not cut
        began = found[("pullback_pull_cut_short_started_timestamp_seconds", ())]
        assert 0 < time.time() - began < 600
        # the rest still says the pull before it
        assert found[("pullback_last_attempt_ok", (("host", "hung"),))] == 1
        html = page.read_text()
        assert f"the last pull (pid {run.pid}, started " in html
        assert "was killed while connecting; the next pull reports it" in html

        # SIGTERM (systemctl stop, a shutdown): exit 143, the journal keeps the hosts
        run = start_stuck_pull(fleet)
        run.send_signal(signal.SIGTERM)
        _, err = run.communicate(timeout=90)
        assert run.returncode == 143, err
        code, err, _ = publish_after_stop(fleet, STOPPED)
        assert code == 0, err
        assert cut_short(samples(metrics), "hung") == 1
        assert "was stopped by SIGTERM while connecting" in page.read_text()

        # a pull started at once after it holds the lock and its own journal: as status
        # says, it is running, and nothing is cut short (it reports the one before)
        run = start_stuck_pull(fleet)
        try:
            code, err, _ = publish_after_stop(fleet, KILLED)
            assert code == 0, err
            assert cut_short(samples(metrics), "hung") == 0
            assert f"a pull is running (pid {run.pid}, since " in page.read_text()
        finally:
            kill_tree(run)

    # the next pull that ends clears it
    last = fleet.server("pull")
    assert last.returncode == 0, last.stderr
    assert "was killed while connecting" in last.stderr, last.stderr  # it reports it
    found = samples(metrics)
    assert cut_short(found, "hung") == 0
    assert ("pullback_pull_cut_short_started_timestamp_seconds", ()) not in found
    assert "the next pull reports it" not in page.read_text()  # (its own warning stays)


def test_after_a_successful_pull_nothing_is_read(tmp_path):
    """ExecStopPost= after a successful pull does not even read server.yaml (cost: the
    common case pays only the interpreter's start); after any other, it does."""
    fleet = Fleet(tmp_path)
    fleet.config.write_text("hosts: [")  # not YAML
    ok = fleet.server("publish", "--if-failed", env=SUCCEEDED)
    assert ok.returncode == 0, ok.stderr
    for env in (KILLED, STOPPED, {**STOPPED, "SERVICE_RESULT": "success"}):
        # (a drop-in's SuccessExitStatus=143 calls a stopped pull a success: it is not)
        broken = fleet.server("publish", "--if-failed", env=env)
        assert broken.returncode == 2, (env, broken.stderr)  # "-" in the unit: not failed
