"""server.pull's recorder: each host's result in status.json as its pull ends (helper-167
F2: a trickling client held every host's record back until its host_timeout), the
metrics file and status page written again while hosts still run, and what could not be
recorded meanwhile recorded at the run's end."""

from __future__ import annotations

import logging

import pytest

from pullback.common.locks import FileLock
from pullback.common.outcome import Status
from pullback.server import pull, status_file
from pullback.server.config import load_server_config
from pullback.server.results import HostResult


def make_config(tmp_path):
    path = tmp_path / "server.yaml"
    path.write_text(
        f"state_dir: {tmp_path / 'state'}\nlock_dir: {tmp_path}\n"
        f"metrics_file: {tmp_path / 'pullback.prom'}\n"
        "hosts:\n  - name: a\n  - name: b\n"
    )
    config = load_server_config(path)
    config.state_dir.mkdir(mode=0o700)
    return config


def test_a_host_is_recorded_as_it_ends_and_shown_while_others_run(tmp_path, monkeypatch):
    config = make_config(tmp_path)
    recorder = pull._Recorder(config)
    recorder.progress(HostResult("a", Status.STORED, reason="stored"), True)
    assert "a" not in status_file.load_status(config.state_dir)["hosts"]  # (PUBLISH_EVERY)
    assert not (tmp_path / "pullback.prom").exists()
    monkeypatch.setattr(pull, "PUBLISH_EVERY", 0.0)
    recorder.progress(None, True)
    assert status_file.load_status(config.state_dir)["hosts"]["a"]["last_result"] == "stored"
    assert 'pullback_last_attempt_ok{host="a"} 1' in (tmp_path / "pullback.prom").read_text()
    (tmp_path / "pullback.prom").unlink()
    recorder.progress(None, True)  # nothing new since: not written again
    assert not (tmp_path / "pullback.prom").exists()
    recorder.progress(HostResult("b", Status.FAILED, reason="no"), False)
    assert not (tmp_path / "pullback.prom").exists()  # the last: the run's end publishes
    recorder.finish([], {})
    hosts = status_file.load_status(config.state_dir)["hosts"]
    assert [len(hosts[h]["history"]) for h in "ab"] == [1, 1]  # each recorded once


def test_a_result_that_cannot_be_recorded_yet_is_recorded_at_the_end(tmp_path, monkeypatch, caplog):
    config = make_config(tmp_path)
    recorder = pull._Recorder(config)
    monkeypatch.setattr(pull, "RECORD_WAIT", 0.2)
    monkeypatch.setattr(pull, "PUBLISH_EVERY", 0.0)
    holder = FileLock(config.state_dir / status_file.STATUS_LOCK, "status.json")
    with caplog.at_level(logging.WARNING), holder.acquire(wait=0):
        recorder.progress(HostResult("a", Status.STORED, reason="stored"), True)
    assert "could not record the hosts' results yet" in caplog.text
    assert "a" not in status_file.load_status(config.state_dir)["hosts"]
    recorder.progress(HostResult("b", Status.STORED, reason="stored"), False)
    recorder.finish([], {})
    hosts = status_file.load_status(config.state_dir)["hosts"]
    assert [hosts[h]["last_result"] for h in "ab"] == ["stored", "stored"]
    assert [len(hosts[h]["history"]) for h in "ab"] == [1, 1]


def test_an_end_that_wrote_then_raised_is_not_recorded_again_as_it_stops(tmp_path, monkeypatch):
    """The run's end wrote status.json and then raised (its directory's fsync): the
    stop's record that follows finds the results there, and counts nothing twice."""
    from pathlib import Path

    config = make_config(tmp_path)
    real = status_file.atomic_write
    failures = [OSError(5, "Input/output error")]

    def atomic_write(path, data, mode=0o644):
        real(path, data, mode)
        if failures and Path(path).name == status_file.STATUS_FILE:
            raise failures.pop()

    monkeypatch.setattr(status_file, "atomic_write", atomic_write)
    recorder = pull._Recorder(config)
    results = [HostResult(h, Status.STORED, reason="stored") for h in "ab"]
    for i, result in enumerate(results):
        recorder.progress(result, i == 0)
    with pytest.raises(OSError):  # (the run says its status file could not be written)
        pull._conclude(config, results, recorder)
    hosts = status_file.load_status(config.state_dir)["hosts"]
    assert [len(hosts[h]["history"]) for h in "ab"] == [1, 1]
    assert all(len(r.warnings) == len(set(r.warnings)) == 1 for r in results), results
