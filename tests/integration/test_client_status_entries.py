"""What the client's status file and metrics say of services, as an administrator changes
the configuration, and of a run that a bug ended: real runs, real files.

Before: the status file never dropped a service's entry, so a service removed from the
configuration (or disabled) kept its last ``ok`` and ``last_success`` in the metrics for
good, and a staleness alert on it fired forever; and a run that a bug ended (exit 70)
left its mark of a run under way, reported later by ``start-stopped`` as "killed?".
"""

from __future__ import annotations

import fcntl
import json
import shutil

import pytest

from tests.helpers.client import ClientSandbox
from tests.helpers.killed_run_box import (
    INTERNAL,
    KILLED,
    QUICK,
    mailed_client,
    mails,
    metric_services,
    site_env,
    status,
)

pytestmark = pytest.mark.integration

CRASH = """\
import pullback.client.run as run


def crash(self):
    raise TypeError("the secret s3cr3t-in-a-message")


run.ClientRun.run = crash
"""
"""A sitecustomize that puts a bug in the run (:func:`site_env`)."""

DISABLED_DB = QUICK.format(name="db").replace("{name: db}", "{name: db, enabled: false}")


@pytest.fixture
def box(tmp_path) -> ClientSandbox:
    """Three quick services, each with its entry after one good run."""
    box = mailed_client(tmp_path, "files", "db", "old")
    assert box.cli("run").returncode == 0
    assert sorted(status(box)["services"]) == ["db", "files", "old"]
    return box


def test_a_service_removed_or_disabled_leaves_the_status_file_and_metrics(box):
    shutil.rmtree(box.services / "old")
    box.add_service("db", DISABLED_DB)
    made = box.cli("run")
    assert made.returncode == 0, made.stderr
    assert sorted(status(box)["services"]) == ["files"]
    assert metric_services(box) == ["files"]
    gone = "dropped from the status file and metrics (no longer configured, or disabled): db, old"
    assert gone in made.stderr  # (said once, as they leave)
    again = box.cli("run")
    assert again.returncode == 0 and "dropped from the status" not in again.stderr


def test_a_run_of_one_service_keeps_the_others_entries(box):
    made = box.cli("run", "--service", "files")
    assert made.returncode == 0, made.stderr
    assert sorted(status(box)["services"]) == ["db", "files", "old"]
    assert metric_services(box) == ["db", "files", "old"]


def test_a_disabled_service_run_by_name_keeps_its_entry(box):
    box.add_service("db", DISABLED_DB)
    made = box.cli("run", "--service", "db")
    assert made.returncode == 0, made.stderr
    assert status(box)["services"]["db"]["ok"] is True
    made = box.cli("run")  # (a run of every enabled service: db is not one)
    assert made.returncode == 0, made.stderr
    assert sorted(status(box)["services"]) == ["files", "old"]


def test_a_run_a_bug_ended_reports_itself_and_leaves_no_mark(box, tmp_path):
    crashed = box.cli("run", env=site_env(tmp_path, CRASH))
    assert crashed.returncode == 70, crashed.stderr
    assert "internal error, please report it" in crashed.stderr  # (the traceback, logged)
    said = status(box)
    assert said["last_run_ok"] is False
    assert said["error"] == (
        "an internal error ended the run (TypeError; the traceback is in the log: please report it)"
    )
    record = box.root / "stopped.json"
    assert not record.exists() or "run" not in json.loads(record.read_text())  # cleared
    (mail,) = mails(box)
    assert "an internal error ended the run\n (TypeError;" in mail  # (the subject, folded)
    assert "s3cr3t" not in mail and "s3cr3t" not in json.dumps(said)
    after = box.cli("start-stopped")  # (the unit's ExecStopPost=): nothing more to say
    assert after.returncode == 0, after.stderr
    assert KILLED not in after.stderr
    assert len(mails(box)) == 1


BUG_IN = """\
import pullback.client.run as run


def bug(*args, **kwargs):
    raise KeyError("the secret s3cr3t-in-a-message")


run.{name} = bug
"""
"""A sitecustomize that puts a bug into ``pullback.client.run.NAME`` (:func:`site_env`)."""


@pytest.mark.parametrize(
    ("where", "argv"),
    [
        ("discover", ["run"]),  # finding the services: before the run takes its lock
        ("broken_services", ["run", "--if-due"]),  # a fresh archive: no run of its own
    ],
)
def test_a_bug_before_the_run_holds_its_lock_reports_itself(box, tmp_path, where, argv):
    """Before: exit 70 and a traceback, the status file still saying the last run's ``ok``
    (monitoring saw nothing until the archive went stale). Now reported as a run a bug
    ended, every service's entry kept as it was (which were to run is not known)."""
    if "--if-due" in argv:
        box.write_config(
            email=box.email, metrics_file=str(box.root / "client.prom"), min_interval="1d"
        )
    crashed = box.cli(*argv, env=site_env(tmp_path, BUG_IN.format(name=where)))
    assert crashed.returncode == 70, crashed.stderr
    assert "internal error, please report it:" in crashed.stderr  # (the traceback, logged)
    said = status(box)
    assert said["last_run_ok"] is False
    assert said["error"] == INTERNAL.format("KeyError")
    assert sorted(said["services"]) == ["db", "files", "old"]
    assert all(entry["ok"] for entry in said["services"].values())  # (kept as they were)
    (mail,) = mails(box)
    assert "s3cr3t" not in mail and "s3cr3t" not in json.dumps(said)
    again = box.cli("run")  # the bug gone: the next run clears it
    assert again.returncode == 0, again.stderr
    assert status(box)["last_run_ok"] is True


def test_a_bug_before_the_lock_while_another_run_holds_it_is_only_logged(box, tmp_path):
    """The run that holds the lock reports itself: this one does not write over it."""
    before = status(box)
    box.run_dir.mkdir(parents=True, exist_ok=True)
    with open(box.run_dir / "client.lock", "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        crashed = box.cli("run", env=site_env(tmp_path, BUG_IN.format(name="discover")))
    assert crashed.returncode == 70, crashed.stderr
    assert "internal error, please report it (not reported: " in crashed.stderr
    assert "is locked by" in crashed.stderr
    assert status(box) == before
    assert mails(box) == []
