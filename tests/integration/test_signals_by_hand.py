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


@pytest.mark.parametrize("command", ["verify", "check"])
def test_a_command_stopped_by_hand_goes_on_to_no_other_host(silent_fleet, command):
    """verify: a drill cut short by the administrator is no failed drill, and nothing
    about it or the hosts after it goes into status.json (a failed one would alarm until
    a drill passes; it went on to drill them, each "failed"). check: paramiko's
    connections are no tool the runner refuses to start, and it went on to connect to
    every other client."""
    silent_fleet.add_host("web2")
    silent_fleet.write_config()
    status = silent_fleet.state / "status.json"
    before = status.read_bytes() if status.exists() else None
    proc = silent_fleet.server_popen(command)
    with restic_of(proc) as children:
        os.kill(proc.pid, signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
        assert proc.returncode == 143, err
        assert all_gone(children), "restic ran on after pullback ended"
    assert "web2" not in out + err, out + err
    assert (status.read_bytes() if status.exists() else None) == before
