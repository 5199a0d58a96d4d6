"""The record of stopped applications (client/stopped.py): written before each stop,
emptied by each finish, read within its bounds."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pullback.client.stopped import (
    MAX_BYTES,
    MAX_SERVICES,
    DamagedRecord,
    StoppedRecord,
    read_record,
)
from pullback.common.procfs import boot_id
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
    assert [(e.task, e.names) for e in read_record(path).entries] == [
        ("docker", ["web", "db"]),
        ("systemd", ["a.service", "b.service"]),
    ]
    assert path.stat().st_mode & 0o777 == 0o600
    record.finished(systemd)
    assert [e.task for e in read_record(path).entries] == ["docker"]
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
    assert [(e.service, e.by) for e in read_record(path).entries] == [("old", "restore")]


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
        b'{"stopped": [], "run": {"pid": "1", "at": "x", "services": []}}',
        b'{"stopped": [], "run": {"pid": 1, "at": "x", "services": "files"}}',
        b'{"stopped": [], "run": {"pid": 1, "at": "x"}}',
        b'{"stopped": [], "run": {"pid": 1, "at": "x", "services": ['
        + b", ".join([b'"s"'] * (MAX_SERVICES + 1))
        + b"]}}",
    ],
)
def test_a_damaged_record_is_refused_as_one(tmp_path, content):
    path = tmp_path / "stopped.json"
    path.write_bytes(content)
    with pytest.raises(DamagedRecord):
        read_record(path)


def test_no_record_is_no_entry(tmp_path):
    assert read_record(tmp_path / "stopped.json").entries == []
    assert read_record(tmp_path / "stopped.json").run is None


def test_a_run_under_way_is_marked_until_reported_and_its_stops_stay_apart(tmp_path):
    path = tmp_path / "stopped.json"
    record = StoppedRecord(path, "run")
    services = [f"s{n}" for n in range(MAX_SERVICES + 50)]
    record.begin(services)
    run = read_record(path).run
    assert run is not None and run.services == services[:MAX_SERVICES]  # bounded
    task = _task("s1", "docker")
    record.attach([task])
    task.stopping("web")
    record.finished(task)
    assert read_record(path).run == run  # (entries leave; the mark stays)
    record.reported()
    assert not path.exists()


def test_a_mark_that_cannot_be_written_is_only_said(tmp_path, caplog):
    path = tmp_path / "not-a-directory" / "stopped.json"
    path.parent.write_text("")
    StoppedRecord(path, "run").begin(["files"])  # no raise: the backup goes on
    assert "cannot write" in caplog.text


def test_a_run_carries_what_an_earlier_killed_run_left_unreported(tmp_path):
    from pullback.client.stopped import Recovery, Underway

    path = tmp_path / "stopped.json"
    killed = Underway(4242, "then", ["slow", "files"], ["the run (pid 1) ended before"])
    StoppedRecord(path, "run").begin(["files"], Recovery(run=killed, problems=["a start failed"]))
    run = read_record(path).run
    assert run is not None and run.services == ["files", "slow"]  # this run's first, once
    assert run.earlier == [  # (what asks for a hand before what is carried)
        "the run (pid 4242, started at then) ended before its finish (killed?)",
        "a start failed",
        "the run (pid 1) ended before",
    ]
    again = Recovery(run=run).report_lines()  # this run killed too: everything is said
    assert again[1:] == run.earlier


def test_an_older_records_huge_pid_is_said_bounded():
    from pullback.client.stopped import Recovery, Stopped

    entry = Stopped("shop", "systemd", ["app.service"], "run", int("9" * 4000), "then")
    (line,) = Recovery(entries=[entry]).report_lines()
    assert line.endswith("ended before its finish (killed?)") and len(line) < 120, line


@pytest.mark.parametrize(
    ("environ", "words"),
    [
        ({}, "killed?"),
        ({"SERVICE_RESULT": "success", "EXIT_STATUS": "0"}, "killed?"),
        ({"SERVICE_RESULT": "signal", "EXIT_STATUS": "KILL"}, "killed by SIGKILL"),
        ({"SERVICE_RESULT": "core-dump", "EXIT_STATUS": "SEGV"}, "it dumped core: SIGSEGV"),
        ({"SERVICE_RESULT": "oom-kill", "EXIT_STATUS": "KILL"}, "killed by the OOM killer"),
        ({"SERVICE_RESULT": "timeout", "EXIT_STATUS": "KILL"}, "stopped by systemd at a timeout"),
        ({"SERVICE_RESULT": "exit-code", "EXIT_STATUS": "70"}, "it exited with status 70"),
        ({"SERVICE_RESULT": "watchdog"}, "systemd says: watchdog"),
        (  # (the environment is the caller's: bounded words all the same)
            {"SERVICE_RESULT": "x\n" * 1000, "EXIT_STATUS": "{result}\x1b" * 100},
            "systemd says: x",
        ),
    ],
)
def test_how_a_run_ended_is_said_from_what_systemd_tells_its_stop_post(environ, words):
    from pullback.client.stopped import Underway, ended_how

    run = Underway(1, "then", ["files"], boot=boot_id(), invocation="u1")
    said = ended_how(run, {**environ, "INVOCATION_ID": "u1"})
    assert said.startswith(words) and len(said) < 60 and "\n" not in said, said


def test_what_systemd_says_is_said_of_the_units_own_run_alone():
    from pullback.client.stopped import Underway, ended_how

    killed = {"SERVICE_RESULT": "signal", "EXIT_STATUS": "KILL", "INVOCATION_ID": "u2"}
    by_hand = Underway(1, "then", ["files"], boot=boot_id())  # (no unit: a run by hand)
    assert ended_how(by_hand, killed) == "killed?"
    earlier = Underway(1, "then", ["files"], boot=boot_id(), invocation="u1")
    assert ended_how(earlier, killed) == "killed?"  # (another run of the unit)
    assert ended_how(None, killed) == "killed?"  # (an older version's record: no mark)


def test_a_mark_of_another_boot_says_the_machine_restarted():
    from pullback.client.stopped import Underway, ended_how

    other = Underway(1, "then", ["files"], boot="an-earlier-boot", invocation="u1")
    signalled = {"SERVICE_RESULT": "signal", "EXIT_STATUS": "KILL", "INVOCATION_ID": "u1"}
    assert ended_how(other, signalled) == "the machine restarted before it ended"
    assert ended_how(Underway(1, "then", ["files"]), {}) == "killed?"  # (an older mark)


def test_a_run_writes_the_boot_and_the_unit_run_it_began_in(tmp_path, monkeypatch):
    path = tmp_path / "stopped.json"
    monkeypatch.setenv("INVOCATION_ID", "0123abcd")
    StoppedRecord(path, "run").begin(["files"])
    run = read_record(path).run
    assert run is not None and run.boot == boot_id() and boot_id()
    assert run.invocation == "0123abcd"
    doc = json.loads(path.read_text())
    doc["run"]["boot"] = None  # (an older mark rewritten: no boot known)
    path.write_text(json.dumps(doc))
    assert read_record(path).run.boot is None
    doc["run"]["boot"] = 7
    path.write_text(json.dumps(doc))
    with pytest.raises(DamagedRecord):
        read_record(path)


def test_a_mark_whose_run_could_not_write_its_status_says_so(tmp_path):
    from pullback.client.stopped import Recovery, ended_how

    path = tmp_path / "stopped.json"
    record = StoppedRecord(path, "run")
    record.begin(["files"])
    record.unreported()
    run = read_record(path).run
    assert run is not None and ended_how(run, {}) == "its status file could not be written"
    (line,) = Recovery(run=run).report_lines()
    assert line.endswith("ended before its finish (its status file could not be written)")
