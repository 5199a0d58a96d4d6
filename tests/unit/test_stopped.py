"""The record of stopped applications (client/stopped.py): written before each stop,
emptied by each finish, read within its bounds."""

from __future__ import annotations

from pathlib import Path

import pytest

from pullback.client.stopped import MAX_BYTES, DamagedRecord, StoppedRecord, read_record
from pullback.plugins.task import Task

pytestmark = pytest.mark.unit


def _task(service: str, key: str) -> Task:
    return Task(key, key, {}, service, Path("/nonexistent"), Path("/nonexistent"), None, None)


def test_each_stop_is_written_before_and_each_finish_empties_it(tmp_path):
    path = tmp_path / "stopped.json"
    record = StoppedRecord(path, "run")
    docker, systemd = _task("shop", "docker"), _task("shop", "systemd")
    record.attach([docker, systemd])
    docker.stopping("web", "db")
    systemd.stopping("a.service")
    systemd.stopping("b.service")  # one entry per task, its whole list
    assert [(e.task, e.names) for e in read_record(path)] == [
        ("docker", ["web", "db"]),
        ("systemd", ["a.service", "b.service"]),
    ]
    assert path.stat().st_mode & 0o777 == 0o600
    record.finished(systemd)
    assert [e.task for e in read_record(path)] == ["docker"]
    record.finished(docker)
    assert not path.exists()
    assert StoppedRecord(path, "run").entries == []


def test_another_runs_entries_stay(tmp_path):
    path = tmp_path / "stopped.json"
    other = _task("old", "docker")
    StoppedRecord(path, "restore").attach([other])
    other.stopping("web")
    mine = _task("shop", "systemd")
    record = StoppedRecord(path, "run")
    record.attach([mine])
    mine.stopping("a.service")
    record.finished(mine)
    assert [(e.service, e.by) for e in read_record(path)] == [("old", "restore")]


@pytest.mark.parametrize(
    "content",
    [
        b"not json",
        b"[]",
        b'{"stopped": [{"service": "a"}]}',
        b'{"stopped": [{"service": "a", "task": "t", "names": "web", "by": "run",'
        b' "pid": 1, "at": "x"}]}',
        b'{"stopped": [{"service": 1, "task": "t", "names": [], "by": "run",'
        b' "pid": 1, "at": "x"}]}',
        b"{" + b" " * MAX_BYTES,
    ],
)
def test_a_damaged_record_is_refused_as_one(tmp_path, content):
    path = tmp_path / "stopped.json"
    path.write_bytes(content)
    with pytest.raises(DamagedRecord):
        read_record(path)


def test_no_record_is_no_entry(tmp_path):
    assert read_record(tmp_path / "stopped.json") == []
