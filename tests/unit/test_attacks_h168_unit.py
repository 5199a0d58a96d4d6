"""helper-168, an outside attacker of commit ebe1aae (each host's result recorded in
status.json as its pull ends, the metrics and page written again while others run).

Each ``test_f*`` fails while its defect exists and passes once it is fixed. They drive
the real :func:`pullback.server.pull.pull` (its lock, journal, recorder and end) with a
stand-in for :func:`~pullback.server.host_process.pull_hosts` that ends hosts the way the
real loop does (``progress(result, busy)``), so no sshd or restic is needed.

Run: .venv/bin/python -m pytest -q -p no:cacheprovider tests/unit/test_attacks_h168_unit.py
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from pullback.common.errors import Interrupted
from pullback.common.locks import FileLock
from pullback.common.outcome import Status
from pullback.server import outputs, pull, status_file
from pullback.server.config import load_server_config
from pullback.server.journal import JOURNAL_FILE, read_journal
from pullback.server.results import HostResult


def make_config(tmp_path, hosts: str = "  - name: a\n  - name: b\n", extra: str = ""):
    path = tmp_path / "server.yaml"
    path.write_text(
        f"state_dir: {tmp_path / 'state'}\nlock_dir: {tmp_path}\n"
        f"metrics_file: {tmp_path / 'pullback.prom'}\n{extra}hosts:\n{hosts}"
    )
    config = load_server_config(path)
    config.state_dir.mkdir(mode=0o700, exist_ok=True)
    return config


def dead_pid() -> int:
    """The pid of a process that has ended (a pull killed outright)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def recorded_or_named(config) -> tuple[dict, set[str]]:
    """The hosts status.json records, and those the journal names (running or waiting
    as the run stopped): a host that ended is in one or the other, or lost."""
    hosts = status_file.load_status(config.state_dir)["hosts"]
    left = read_journal(config.state_dir)
    return hosts, set(left.phases) if left is not None else set()


def cut_short(text: str, host: str) -> str | None:
    found = re.search(rf'^pullback_pull_cut_short\{{host="{host}"\}} (\S+)$', text, re.M)
    return found.group(1) if found else None


# -- F1: a SIGTERM loses the results the run could not record yet -----------------------


def test_f1_a_result_that_could_not_be_recorded_mid_run_survives_a_sigterm(tmp_path, monkeypatch):
    """_Recorder's docstring: "What cannot be recorded while the run goes on is logged
    and recorded at its end (finish)". Host a ends while another writer holds
    status.lock (a copy recording beside the pull on a slow disk) longer than
    RECORD_WAIT; then systemd stops the unit (SIGTERM, b still running). pull() raises
    Interrupted before _conclude: a's stored pull is in neither status.json nor the
    journal (which names only the hosts running or waiting): it is lost, and the next
    run's report, the metrics and the page say a's pull before it."""
    config = make_config(tmp_path)
    monkeypatch.setattr(pull, "RECORD_WAIT", 0.1)
    holder = FileLock(config.state_dir / status_file.STATUS_LOCK, "status.json")

    def pull_hosts(config, hosts, work, journal=None, parent_only=(), progress=None):
        with holder.acquire(wait=0):  # another writer of status.json, for a while
            stored = HostResult("a", Status.STORED, reason="stored", snapshot_count=1)
            stored.snapshot_id = "f00d"
            progress(stored, True)
        # the real loop's answer to SIGTERM: the hosts running or waiting in the journal
        journal.stop({"b": "transferring"}, "SIGTERM")
        raise Interrupted(signal.SIGTERM)

    monkeypatch.setattr(pull, "pull_hosts", pull_hosts)
    with pytest.raises(Interrupted):
        pull.pull(config)
    hosts, named = recorded_or_named(config)
    assert "a" in hosts or "a" in named, (
        f"host a's stored pull was recorded nowhere: status.json hosts {sorted(hosts)}, "
        f"journal {sorted(named)}"
    )


# -- F2: a group's size taken from a member's old record, not from what the run measured --


def test_f2_a_groups_size_is_what_this_run_measured_not_a_members_old_record(tmp_path):
    """pull.group_sizes: "The size of each group's one repository as this run last
    measured it ... the largest a member's pull measured". Before ebe1aae the sizes were
    taken from the results as they came back; now each result is assessed as its host
    ends (_Recorder._record), and assess() fills a failed member's repository_bytes
    from status.json: that old record (b was alone in a 900 MB repository before it
    joined the group) then counts as measured, and every member of the group is
    recorded at 900 MB, though the run measured the group's repository at 100 MB."""
    config = make_config(
        tmp_path,
        "  - name: a\n    group: g\n  - name: b\n    group: g\n",
    )
    (config.state_dir / status_file.STATUS_FILE).write_text(
        json.dumps({"hosts": {"b": {"last_result": "stored", "repository_bytes": 900_000_000}}})
    )
    recorder = pull._Recorder(config)
    measured = HostResult("a", Status.STORED, reason="stored", snapshot_count=1)
    measured.repository_bytes = 100_000_000
    failed = HostResult("b", Status.FAILED, reason="connection refused")
    recorder.progress(measured, True)
    recorder.progress(failed, False)
    pull._conclude(config, [measured, failed], recorder)
    hosts = status_file.load_status(config.state_dir)["hosts"]
    assert [hosts[h].get("repository_bytes") for h in "ab"] == [100_000_000, 100_000_000], (
        "the group's size recorded is not what this run measured: "
        f"a {hosts['a'].get('repository_bytes')}, b {hosts['b'].get('repository_bytes')}"
    )


# -- F3: the metrics written mid-run drop a cut-short pull that is still to be reported -----


def test_f3_metrics_written_mid_run_keep_a_cut_short_host_this_run_does_not_pull(
    tmp_path, monkeypatch
):
    """The previous pull was killed while pulling c; this one (``pull --host a --host
    b``) does not pull c, and carries it in its journal so that c "stays named until a
    pull of it reports it and cleans up" (Journal.carry): before the run and after it
    the metrics say pullback_pull_cut_short{host="c"} 1. The metrics written while b
    still runs (new in ebe1aae) say 0 (pull_activity gives a running pull's own journal
    no ``killed``, ignoring what it carries), so the alert resolves mid-run and fires
    again when the run ends (a trickling b: for hours)."""
    config = make_config(tmp_path, "  - name: a\n  - name: b\n  - name: c\n")
    (config.state_dir / JOURNAL_FILE).write_text(
        json.dumps(
            {"pid": dead_pid(), "started": "2026-12-01T03:00:00Z", "hosts": {"c": "storing"}}
        )
    )
    prom = tmp_path / "pullback.prom"
    outputs.publish(config)
    before = cut_short(prom.read_text(), "c")
    seen: dict[str, str | None] = {}

    def pull_hosts(config, hosts, work, journal=None, parent_only=(), progress=None):
        assert [h.name for h in hosts] == ["a", "b"]
        done = HostResult("a", Status.STORED, reason="stored", snapshot_count=1)
        progress(done, True)
        monkeypatch.setattr(pull, "PUBLISH_EVERY", 0.0)  # (10 s later in life)
        progress(None, True)  # b still runs: the metrics are written again
        seen["mid-run"] = cut_short(prom.read_text(), "c")
        return [done, HostResult("b", Status.STORED, reason="stored", snapshot_count=1)]

    monkeypatch.setattr(pull, "pull_hosts", pull_hosts)
    pull.pull(config, ["a", "b"])
    outputs.publish(config)  # (finish_pull's)
    after = cut_short(prom.read_text(), "c")
    assert (before, after) == ("1", "1")
    assert seen["mid-run"] == "1", (
        f'pullback_pull_cut_short{{host="c"}}: {before} before the run, '
        f"{seen['mid-run']} while it ran, {after} after it"
    )


# -- F4: every host's end reads status.json twice and rewrites it whole, in the loop ------


def test_f4_hosts_ending_together_are_recorded_together_not_one_rewrite_each(tmp_path, monkeypatch):
    """The hourly ``pull --if-due`` (systemd/pullback-server.service) ends most hosts
    within a second as quiet skips. _Recorder.progress, called by pull_hosts' loop for
    each host as it ends, loads status.json twice (assess, then record) and rewrites it
    whole (indented JSON, fsync) for that one host, in the loop that also starts the
    waiting hosts, reads the children's pipes and kills late hosts (_kill_late). Measured
    here: 2,000 hosts with 30 runs of history each make a 9 MB status.json and cost the
    loop 0.82 s a host, 27 minutes of an hourly run spent serially where one record at
    the end took about a second. Here 40 hosts end in one poll round: status.json is
    written 40 times."""
    hosts = "".join(f"  - name: h{i}\n" for i in range(40))
    config = make_config(tmp_path, hosts)
    saves = []
    real_save = status_file._save
    monkeypatch.setattr(status_file, "_save", lambda d, s: saves.append(1) or real_save(d, s))
    recorder = pull._Recorder(config)
    for i in range(40):  # one poll round: every host ended at once
        recorder.progress(HostResult(f"h{i}", Status.SKIPPED, reason="fresh"), i < 39)
    recorder.finish([], {})
    hosts_recorded = status_file.load_status(config.state_dir)["hosts"]
    assert len(hosts_recorded) == 40
    assert len(saves) <= 10, f"status.json rewritten {len(saves)} times for 40 hosts ending at once"


# -- F6: a record that missed status.lock once waits for the slowest host again ----------


def test_f6_a_result_that_missed_the_lock_is_recorded_once_the_lock_is_free(tmp_path, monkeypatch):
    """ebe1aae records each host as it ends so that one slow host does not hold the
    others' records back until its host_timeout (helper-167 F2). A host that ends while
    another writer holds status.lock past RECORD_WAIT (2 s) is only tried again when
    another host ends, else at the run's end: the lock is free a moment later, the loop
    calls progress(None, busy) five times a second and writes the metrics and the page
    from status.json, and a's result stays out of them until a trickling b's
    host_timeout (6 h by default), the very hold-up F2 was about."""
    config = make_config(tmp_path)
    monkeypatch.setattr(pull, "RECORD_WAIT", 0.1)
    monkeypatch.setattr(pull, "PUBLISH_EVERY", 0.0)
    holder = FileLock(config.state_dir / status_file.STATUS_LOCK, "status.json")
    recorder = pull._Recorder(config)
    with holder.acquire(wait=0):
        recorder.progress(HostResult("a", Status.STORED, reason="stored", snapshot_count=1), True)
    for _ in range(5):  # the loop goes on: b still runs, nothing else ends
        recorder.progress(None, True)
    hosts = status_file.load_status(config.state_dir)["hosts"]
    prom = tmp_path / "pullback.prom"
    shown = prom.exists() and 'pullback_last_attempt_ok{host="a"}' in prom.read_text()
    assert "a" in hosts, (
        "a's result is still not in status.json after the lock was freed "
        f"(the metrics written meanwhile show a: {shown})"
    )


# -- F7: a record that raised after status.json was replaced is recorded again -----------


def test_f7_a_record_that_failed_after_the_file_was_replaced_is_not_counted_twice(
    tmp_path, monkeypatch
):
    """atomic_write replaces status.json, then fsyncs its directory; an EIO there (a
    failing disk, a flaky NFS server) raises after the new file is in place. The
    recorder logs "could not record the hosts' results yet", keeps the results it
    believes unrecorded and records them again when the next host ends: a's run gets
    two history entries and its one checksum failure counts 2, which is CHECKSUM_TRIES:
    the next pull passes over the client's newest archive after a single failure. Before
    ebe1aae the one record at the run's end failed the run, and nothing was counted
    twice."""
    config = make_config(tmp_path)
    real = status_file.atomic_write
    failures = [OSError(5, "Input/output error")]

    def atomic_write(path, data, mode=0o644):
        real(path, data, mode)  # os.replace done: the new status.json is in place
        if failures and Path(path).name == status_file.STATUS_FILE:
            raise failures.pop()  # (as fsync_dir(path.parent) raises it there)

    monkeypatch.setattr(status_file, "atomic_write", atomic_write)
    monkeypatch.setattr(pull, "PUBLISH_EVERY", 0.0)  # (a's end is recorded while b runs)
    recorder = pull._Recorder(config)
    damaged = HostResult("a", Status.FAILED, reason="checksum mismatch")
    damaged.checksum_failed = "a-20261208T010000Z.tar.zst"
    recorder.progress(damaged, True)  # status.json replaced, then EIO
    recorder.progress(HostResult("b", Status.STORED, reason="stored", snapshot_count=1), False)
    recorder.finish([], {})
    entry = status_file.load_status(config.state_dir)["hosts"]["a"]
    assert (len(entry["history"]), entry.get("checksum_failures")) == (
        1,
        {"a-20261208T010000Z.tar.zst": 1},
    ), (
        f"a recorded twice: {len(entry['history'])} history entries, "
        f"checksum_failures {entry.get('checksum_failures')}"
    )
