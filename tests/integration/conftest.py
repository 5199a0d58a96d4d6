"""Fixtures the integration tests share: real database servers, a fleet of clients and
a server, recording stand-ins."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import pytest

from tests.helpers.databases import MariaDB, Postgres
from tests.helpers.faults import SilentEndpoint
from tests.helpers.files import secret_file
from tests.helpers.fleet import Fleet
from tests.helpers.http import HttpSink
from tests.helpers.smtp import SmtpSink


@pytest.fixture
def fleet(tmp_path):
    """A server configuration and client hosts reached over a real sshd (tests that
    need another kind of fleet define their own ``fleet``)."""
    fleet = Fleet(tmp_path / "fleet")
    yield fleet
    fleet.stop()


@pytest.fixture
def smtp():
    """A real SMTP server on loopback that keeps what it receives."""
    sink = SmtpSink().start()
    yield sink
    sink.stop()


@pytest.fixture
def http():
    """A real HTTP endpoint on loopback that keeps the requests it receives (a module
    that needs one that hangs defines its own ``http``)."""
    sink = HttpSink().start()
    yield sink
    sink.stop()


@pytest.fixture
def borg_fleet(tmp_path):
    """A ``fleet`` whose repositories are borg's."""
    fleet = Fleet(tmp_path / "fleet", backend="borg")
    yield fleet
    fleet.stop()


@pytest.fixture
def silent_fleet(tmp_path):
    """A fleet whose web1 stores into a REST endpoint that never answers: restic waits
    until it is killed."""
    endpoint = SilentEndpoint()
    fleet = Fleet(tmp_path / "fleet")
    fleet.add_host("web1")
    url = f"rest:http://127.0.0.1:{endpoint.port}/web1"
    fleet.host_extra["web1"] = {"repository_file": str(secret_file(tmp_path / "web1.url", url))}
    fleet.write_config()
    yield fleet
    fleet.stop()
    endpoint.close()


@pytest.fixture
def shared_root():
    """A directory the postgres and mysql users can reach (pytest's tmp is root-only)."""
    root = Path(tempfile.mkdtemp(prefix="pullback-db-", dir="/tmp"))
    root.chmod(0o755)
    yield root
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def pg(shared_root):
    """A PostgreSQL server of its own: ``postgres`` over the socket, ``backup`` over TCP."""
    server = Postgres(shared_root / "pg").start()
    yield server
    server.stop()


@pytest.fixture
def maria(shared_root):
    """A MariaDB server of its own: root over the socket, ``backup`` over TCP."""
    server = MariaDB(shared_root / "maria").start()
    yield server
    server.stop()


STANDIN = Path(__file__).parent.parent / "standins" / "standin.py"
"""Recording stand-ins for docker, systemctl, mongodump, mongorestore and influx (no
Docker engine, no systemd as PID 1, no MongoDB tools or InfluxDB 2 here: mocked)."""


@pytest.fixture
def standins(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in ("docker", "systemctl", "mongodump", "mongorestore", "influx"):
        (bin_dir / name).symlink_to(STANDIN)
    log = tmp_path / "calls.jsonl"
    state = tmp_path / "state.json"

    class Standins:
        env = {
            "PATH": f"{bin_dir}:{os.environ['PATH']}",
            "STANDIN_LOG": str(log),
            "STANDIN_STATE": str(state),
        }

        @staticmethod
        def set(**values):
            state.write_text(json.dumps(values))

        @staticmethod
        def calls():
            if not log.exists():
                return []
            return [json.loads(line) for line in log.read_text().splitlines()]

    return Standins()
