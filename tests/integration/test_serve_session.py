"""One serve process per pull (protocol 4's ``session``) behind a real sshd and the real
client: the first pull learns the client's protocol request by request, every later pull
asks everything (list, the delta, fetched) over one ``session``, and what it stores
restores exactly; a client that cannot open a session is asked request by request."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from tests.helpers.client import ClientSandbox
from tests.helpers.fleet import Fleet
from tests.helpers.sshd import Sshd
from tests.helpers.tree import snapshot
from tests.integration.test_incremental_pulls import (
    day_of_changes,
    incremental_host,
    pull,
    restored,
    run_client,
    snapshot_ids,
)

pytestmark = pytest.mark.integration


class LoggedFleet(Fleet):
    """A fleet whose clients' forced command first writes the request to a log (one
    line per serve process sshd starts), then runs the real serve."""

    def start_sshd(self, name: str, client: ClientSandbox) -> Sshd:
        wrapper = self.root / "hosts" / name / "serve-logged"
        wrapper.write_text(
            "#!/bin/sh\n"
            f"printf '%s\\n' \"$SSH_ORIGINAL_COMMAND\" >> {self.root / 'hosts' / name / 'serves'}\n"
            f"exec {sys.executable} -m pullback.client.cli --config {client.config} serve\n"
        )
        wrapper.chmod(0o755)
        return Sshd(
            self.root / "hosts" / name / "sshd", Path(f"{self.key}.pub"), str(wrapper)
        ).start()


@pytest.fixture
def fleet(tmp_path):
    fleet = LoggedFleet(tmp_path)
    yield fleet
    fleet.stop()


def serves(fleet: Fleet) -> list[str]:
    path = fleet.root / "hosts" / "web1" / "serves"
    return path.read_text().splitlines() if path.exists() else []


def test_pulls_after_the_first_ask_over_one_session(fleet, tmp_path):
    host = incremental_host(fleet, enabled="auto")
    first = run_client(host)
    day1 = pull(fleet)
    assert day1["rc"] == 0, day1["log"]
    name = first["archive"]["name"]
    # nothing known of the client yet: request by request, and its protocol noted
    assert serves(fleet) == ["list", f"send {name} 0", f"fetched {name} lean-deltas"]
    assert day1["host"]["client_protocol"] == 5
    trees = [snapshot(host.data)]

    for day in (1, 2):
        day_of_changes(host.data, day)
        sidecar = run_client(host)
        assert sidecar["archive"]["kind"] == "delta"
        before = len(serves(fleet))
        result = pull(fleet)
        assert result["rc"] == 0, result["log"]
        assert result["host"]["delta"] is True
        assert serves(fleet)[before:] == ["session"]  # list, send, fetched: one process
        trees.append(snapshot(host.data))
    marks = sorted(os.listdir(host.client.archives / ".fetched-marks"))
    assert sidecar["archive"]["name"] in marks and "server-applies-lean-deltas" in marks

    for number, (snap, tree) in enumerate(zip(snapshot_ids(fleet), trees, strict=True)):
        assert restored(fleet, snap, tmp_path / f"r{number}") == tree


def test_a_client_that_refuses_a_session_is_asked_request_by_request(fleet):
    """The server remembers protocol 4, and the client refuses ``session`` now as an
    older one would (downgraded): the refusal costs one serve start, and the same pull
    goes on request by request."""
    host = incremental_host(fleet, enabled="auto")
    first = run_client(host)
    assert pull(fleet)["rc"] == 0
    wrapper = fleet.root / "hosts" / "web1" / "serve-logged"
    old = wrapper.read_text().replace(
        "exec ",
        'if [ "$SSH_ORIGINAL_COMMAND" = session ]; then '
        "echo \"refused request 'session' from x: unknown request\" >&2; exit 2; fi\n"
        "exec ",
    )
    wrapper.write_text(old)
    day_of_changes(host.data, 1)
    second = run_client(host)
    before = len(serves(fleet))
    result = pull(fleet)
    assert result["rc"] == 0, result["log"]
    name = second["archive"]["name"]
    assert serves(fleet)[before:] == [
        "session",
        "list",
        f"send {name} 0",
        f"fetched {name} lean-deltas",
    ]
    status = json.loads((fleet.state / "status.json").read_text())["hosts"]["web1"]
    assert status["last_result"] == "stored" and status["archive"] == name
    assert status["delta"] is True and first["archive"]["name"] != name
