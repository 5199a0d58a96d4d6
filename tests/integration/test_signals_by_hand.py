"""A server command stopped by hand (``kill PID``: SIGTERM, or SIGHUP from a dropped SSH
session) ends its store's tool too, for every command, not only those that stop services
or pull. systemd kills a unit's whole cgroup; an administrator's ``kill`` reaches only
pullback's own process, and a ``restic`` it ran in its own session went on holding the
repository's lock (and a connection) after pullback was gone.

The store here is a real ``restic`` talking to a REST endpoint on loopback that accepts
connections and never answers, so restic waits until it is killed."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import threading
import time
from pathlib import Path

import pytest

from tests.helpers.faults import descendants
from tests.helpers.files import secret_file
from tests.helpers.fleet import Fleet

pytestmark = pytest.mark.integration


class SilentEndpoint:
    """A TCP listener on loopback that accepts every connection and never answers."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.held: list[socket.socket] = []
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.held.append(conn)

    def close(self) -> None:
        self.sock.close()
        for conn in self.held:
            conn.close()


def restic_children(pid: int) -> list[int]:
    """The pids of ``restic`` processes below ``pid``."""
    found = []
    for child in descendants(pid):
        try:
            if Path(f"/proc/{child}/comm").read_text().strip() == "restic":
                found.append(child)
        except OSError:
            continue
    return found


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"


@pytest.fixture
def silent_fleet(tmp_path):
    endpoint = SilentEndpoint()
    fleet = Fleet(tmp_path / "fleet")
    fleet.add_host("web1")
    url = f"rest:http://127.0.0.1:{endpoint.port}/web1"
    fleet.host_extra["web1"] = {"repository_file": str(secret_file(tmp_path / "web1.url", url))}
    fleet.write_config()
    yield fleet
    fleet.stop()
    endpoint.close()


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
    children: list[int] = []
    try:
        deadline = time.monotonic() + 60
        while not children and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.1)
            children = restic_children(proc.pid)
        assert children, f"restic never started: {proc.communicate(timeout=30)}"
        os.kill(proc.pid, sig)
        _, err = proc.communicate(timeout=30)
        assert proc.returncode == 128 + sig, err
        assert f"interrupted by {sig.name}" in err, err
        deadline = time.monotonic() + 15
        while any(alive(pid) for pid in children) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not any(alive(pid) for pid in children), "restic ran on after pullback ended"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for pid in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
