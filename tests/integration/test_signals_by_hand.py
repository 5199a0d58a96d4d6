"""A server command stopped by hand (``kill PID``: SIGTERM, or SIGHUP from a dropped SSH
session) ends its store's tool too, for every command, not only those that stop services
or pull. systemd kills a unit's whole cgroup; an administrator's ``kill`` reaches only
pullback's own process, and a ``restic`` it ran in its own session went on holding the
repository's lock (and a connection) after pullback was gone.

The store here is a real ``restic`` talking to a REST endpoint on loopback that accepts
connections and never answers, so restic waits until it is killed."""

from __future__ import annotations

import os
import signal

import pytest

from tests.helpers.faults import all_gone, restic_of

pytestmark = pytest.mark.integration


@pytest.mark.parametrize(
    ("args", "sig"),
    [
        (("snapshots", "web1"), signal.SIGTERM),
        (("snapshots", "web1"), signal.SIGHUP),
        (("check", "--host", "web1"), signal.SIGTERM),
    ],
    ids=["snapshots-TERM", "snapshots-HUP", "check-TERM"],
)
def test_a_command_killed_by_hand_leaves_no_store_tool_running(silent_fleet, args, sig):
    proc = silent_fleet.server_popen(*args)
    with restic_of(proc) as children:
        os.kill(proc.pid, sig)
        _, err = proc.communicate(timeout=30)
        assert proc.returncode == 128 + sig, err
        assert f"interrupted by {sig.name}" in err, err
        assert all_gone(children), "restic ran on after pullback ended"


def test_a_verify_stopped_by_hand_records_no_drill_and_drills_no_other_host(silent_fleet):
    """A drill cut short by the administrator is no failed drill: nothing about it, or
    about the hosts after it, goes into status.json (a failed one would alarm until a
    drill passes)."""
    silent_fleet.add_host("web2")
    silent_fleet.write_config()
    status = silent_fleet.state / "status.json"
    before = status.read_bytes() if status.exists() else None
    proc = silent_fleet.server_popen("verify")
    with restic_of(proc) as children:
        os.kill(proc.pid, signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
        assert proc.returncode == 143, err
        assert all_gone(children), "restic ran on after pullback ended"
    assert "web2" not in out + err, out + err
    assert (status.read_bytes() if status.exists() else None) == before


def test_a_check_stopped_by_hand_reaches_no_other_host(silent_fleet):
    """paramiko's connections are no tool the runner refuses to start: the first signal
    ended the host's restic, and check went on to connect to every other client."""
    silent_fleet.add_host("web2")
    silent_fleet.write_config()
    proc = silent_fleet.server_popen("check")
    with restic_of(proc) as children:
        os.kill(proc.pid, signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
        assert proc.returncode == 143, err
        assert all_gone(children), "restic ran on after pullback ended"
    assert "web2" not in out + err, out + err
