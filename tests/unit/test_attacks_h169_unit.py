"""helper-169, an outside attacker of commits df33476 (the hosts that ended recorded
every 10 s while others run, one write for all; what ended recorded as a signal stops
the run) and 52b21de (stale partial downloads swept at each run; a partial without its
note counted from its mtime as found, and the note written).

Each ``test_f*`` fails while its defect exists and passes once it is fixed. The pull
tests drive the real :func:`pullback.server.pull.pull` (its lock, journal, signal guard,
recorder and end) with a stand-in for :func:`~pullback.server.host_process.pull_hosts`
that ends hosts the way the real loop does (``progress(result, busy)``); no sshd or
restic is needed.

Run: .venv/bin/python -m pytest -q -p no:cacheprovider tests/unit/test_attacks_h169_unit.py
"""

from __future__ import annotations

import datetime as dt
import errno
import logging
import os
import signal
import threading
import time

import pytest

from pullback.common.clock import iso, utc_now
from pullback.common.errors import Interrupted
from pullback.common.outcome import Status
from pullback.server import pull, status_file, transfer
from pullback.server.config import load_server_config
from pullback.server.results import HostResult
from pullback.server.transfer import STARTED, drop_stale_partials
from tests.unit.test_attacks_h168_unit import recorded_or_named

DAY = 86400.0


def make_config(tmp_path, hosts: str = "  - name: a\n  - name: b\n", extra: str = ""):
    path = tmp_path / "server.yaml"
    path.write_text(
        f"state_dir: {tmp_path / 'state'}\nlock_dir: {tmp_path}\n"
        f"metrics_file: {tmp_path / 'pullback.prom'}\npartial_max_age: 3d\n{extra}"
        f"hosts:\n{hosts}"
    )
    config = load_server_config(path)
    config.state_dir.mkdir(mode=0o700, exist_ok=True)
    return config


# -- F1: a host that goes stale while the run goes on is no longer reported stale --------


def test_f1_the_summary_judges_staleness_at_the_runs_end_as_before(tmp_path, monkeypatch):
    """Before ebe1aae, pull() assessed every result at the run's end, so the summary
    mail, --json and status.json called a host stale when its newest snapshot was older
    than max_age as the run ended. Now each batch is assessed when it is recorded
    (_Recorder._record, every PUBLISH_EVERY while others run), and never again: host a
    fails at once with its newest snapshot 23 h old (max_age 24h), host b then takes 5 h
    (host_timeout is 6 h by default). At the run's end a's newest snapshot is 28 h old,
    yet the summary says a is not stale and has no stale warning: the final summary
    changed, and the alert the mail carried for a failing host is gone."""
    config = make_config(tmp_path, "  - name: a\n    max_age: 24h\n  - name: b\n")
    monkeypatch.setattr(pull, "PUBLISH_EVERY", 0.0)  # (a's batch recorded at its end)
    start = utc_now()
    clock = {"now": start}
    monkeypatch.setattr(pull, "utc_now", lambda: clock["now"])

    def pull_hosts(config, hosts, work, journal=None, parent_only=(), progress=None):
        failed = HostResult("a", Status.FAILED, reason="connection refused")
        failed.newest_snapshot = iso(start - dt.timedelta(hours=23))
        failed.snapshots_listed = True
        failed.snapshot_count = 3
        progress(failed, True)
        clock["now"] = start + dt.timedelta(hours=5)  # b's pull takes 5 h
        stored = HostResult("b", Status.STORED, reason="stored", snapshot_count=1)
        stored.newest_snapshot = iso(clock["now"])
        stored.snapshots_listed = True
        progress(stored, False)
        return [failed, stored]

    monkeypatch.setattr(pull, "pull_hosts", pull_hosts)
    _, results = pull.pull(config)
    a = results[0]
    assert a.stale and any("old (max_age" in w for w in a.warnings), (
        "host a's newest snapshot is 28 h old as the run ends (max_age 24h), yet the "
        f"summary says stale={a.stale}, warnings {a.warnings}"
    )


# -- F2: a signal as the run's end is recorded loses every host that ended last --------


def test_f2_a_sigterm_while_the_runs_end_is_recorded_loses_no_host(tmp_path, monkeypatch):
    """docs/security.md: "the hosts that ended before a signal stops the run are
    recorded as it stops". The signal guard stays active until pull() returns, but
    _pull_all's `except Interrupted: recorder.stopped()` wraps only pull_hosts, and the
    journal is ended (it names no host) before _conclude records what is left. A
    SIGTERM (systemd stopping the unit) that comes once the last host ended but before
    the end's record is written (group_sizes, assess, the wait for status.lock that
    another writer holds: STATUS_LOCK_WAIT) raises Interrupted out of _conclude: the
    hosts of the last batch are in neither status.json nor the journal."""
    config = make_config(tmp_path)
    monkeypatch.setattr(pull, "PUBLISH_EVERY", 3600.0)  # (both still pending at the end)

    def pull_hosts(config, hosts, work, journal=None, parent_only=(), progress=None):
        stored = HostResult("a", Status.STORED, reason="stored", snapshot_count=1)
        stored.snapshot_id = "f00d"
        progress(stored, True)
        failed = HostResult("b", Status.FAILED, reason="connection refused")
        progress(failed, False)
        return [stored, failed]

    real_group_sizes = pull.group_sizes

    def group_sizes(config, measured):
        os.kill(os.getpid(), signal.SIGTERM)  # systemctl stop, as the end is recorded
        return real_group_sizes(config, measured)

    monkeypatch.setattr(pull, "pull_hosts", pull_hosts)
    monkeypatch.setattr(pull, "group_sizes", group_sizes)
    with pytest.raises(Interrupted):
        pull.pull(config)
    hosts, named = recorded_or_named(config)
    lost = [h for h in "ab" if h not in hosts and h not in named]
    assert not lost, (
        f"hosts {lost} ended before the signal and were recorded nowhere: status.json "
        f"hosts {sorted(hosts)}, journal {sorted(named)}"
    )


# -- F3: on a full disk a stale partial without its note is never removed ---------------


def old_partial(place, days: float):
    place.mkdir(parents=True, exist_ok=True)
    path = place / "a-20261101T030000Z.tar.zst"
    path.write_bytes(b"x" * 4096)
    then = time.time() - days * DAY
    os.utime(path, (then, then))
    return path


def test_f3_a_full_disk_keeps_a_stale_partial_without_its_note_for_ever(tmp_path, monkeypatch):
    """52b21de: _partial_age writes a missing note (atomic_write) before it returns the
    age, and drop_stale_partials only removes after that. On a full disk (ENOSPC, or no
    inode left) the note cannot be written: the partial download, 10 days old by its
    mtime and the very thing filling the disk, is never removed, and the OSError goes
    out of drop_stale_partials: HostPull._steps calls it first, so every pull of the
    host fails (even one with nothing to fetch), and the run's sweep only logs a warning
    for the others. Before 52b21de the age came from the mtime and the partial went."""
    config = make_config(tmp_path)
    path = old_partial(config.partial_dir("a"), days=10)

    def full_disk(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(transfer, "atomic_write", full_disk)
    try:
        drop_stale_partials(path.parent, config.partial_max_age, logging.getLogger("t"))
        raised = None
    except OSError as exc:
        raised = exc
    assert raised is None and not path.exists(), (
        f"a partial 10 days old (partial_max_age 3d) on a full disk: still there "
        f"{path.exists()}, drop_stale_partials raised {raised!r} (the host's pull fails)"
    )


# -- F4: the run's sweep follows a symlink under state_dir/partial ----------------------


def test_f4_the_sweep_does_not_follow_a_symlink_out_of_the_partial_tree(tmp_path):
    """_sweep_partials walks every entry of state_dir/partial that is no pulled host's,
    and drop_stale_partials lists it with os.listdir, which follows a symlink: every
    file in the link's target older than partial_max_age is unlinked as a "partial
    download", and a `.started` note is written beside each younger one. The entry
    could be a host's directory replaced by a link to a restore area or a share by an
    administrator (state_dir is root's alone, so this needs root). The sweep should
    look at real directories of partial downloads only."""
    config = make_config(tmp_path)
    elsewhere = tmp_path / "elsewhere"
    kept = old_partial(elsewhere, days=10)
    young = elsewhere / "notes.txt"
    young.write_text("mine\n")
    config.partials_dir().mkdir(parents=True)
    (config.partials_dir() / "gone-host").symlink_to(elsewhere)
    pull._sweep_partials(config, {"a", "b"})
    assert kept.exists() and not (elsewhere / (young.name + STARTED)).exists(), (
        f"the sweep followed partial/gone-host -> {elsewhere}: {kept.name} removed "
        f"{not kept.exists()}, notes written there {sorted(os.listdir(elsewhere))}"
    )


# -- F5: the record made as a signal stops the run waits 2 s, then loses what ended -----


def test_f5_a_signal_while_another_writer_holds_status_lock_loses_no_host(tmp_path, monkeypatch):
    """_Recorder.stopped records what ended with wait=RECORD_WAIT (2 s), where the run's
    end waits STATUS_LOCK_WAIT (300 s) for the same lock, and on failure only logs
    ("could not record the hosts that ended before the stop"); the journal names only
    the hosts running or waiting. So when another writer of status.json (a copy
    recording beside the pull, on the slow disk STATUS_LOCK_WAIT is sized for) holds
    status.lock as systemd stops the unit, the hosts that ended in the last 10 s are in
    neither status.json nor the journal: helper-168's F1, fixed only for a lock that
    was free again by the time the signal came. (RECORD_WAIT is cut to 0.1 s here; the
    other writer ends a second after the signal: STOP_RECORD_WAIT waits for it.)"""
    from pullback.common.locks import FileLock

    config = make_config(tmp_path)
    monkeypatch.setattr(pull, "RECORD_WAIT", 0.1)
    monkeypatch.setattr(pull, "PUBLISH_EVERY", 3600.0)
    holder = FileLock(config.state_dir / status_file.STATUS_LOCK, "status.json")

    def pull_hosts(config, hosts, work, journal=None, parent_only=(), progress=None):
        stored = HostResult("a", Status.STORED, reason="stored", snapshot_count=1)
        stored.snapshot_id = "f00d"
        progress(stored, True)
        journal.stop({"b": "transferring"}, "SIGTERM")  # the real loop's answer
        raise Interrupted(signal.SIGTERM)

    monkeypatch.setattr(pull, "pull_hosts", pull_hosts)
    holder.acquire(wait=0)  # a copy records meanwhile, for a second past the signal
    timer = threading.Timer(1.0, holder.release)
    timer.start()
    try:
        with pytest.raises(Interrupted):
            pull.pull(config)
    finally:
        timer.join()
    hosts, named = recorded_or_named(config)
    assert "a" in hosts or "a" in named, (
        f"host a's stored pull was recorded nowhere: status.json hosts {sorted(hosts)}, "
        f"journal {sorted(named)}"
    )


# -- F6: a run stopped by an error (not a signal) records nothing of what ended ---------


def test_f6_a_run_stopped_by_an_error_records_the_hosts_that_ended(tmp_path, monkeypatch):
    """docs/security.md: "the run always writes status". _pull_all records what ended
    only on Interrupted. When the loop stops on an error instead, e.g. os.fork() failing
    with EAGAIN as the next host starts (systemd's TasksMax reached by `parallel`
    restic processes and their threads; _start does not catch it), pull() raises
    OSError: the hosts that ended in the last PUBLISH_EVERY are recorded nowhere, and
    journal.end() removes the journal (nothing kept, nothing stopped), so neither the
    ended host nor the ones still running are named for the next run."""
    config = make_config(tmp_path)
    monkeypatch.setattr(pull, "PUBLISH_EVERY", 3600.0)

    def pull_hosts(config, hosts, work, journal=None, parent_only=(), progress=None):
        stored = HostResult("a", Status.STORED, reason="stored", snapshot_count=1)
        stored.snapshot_id = "f00d"
        progress(stored, True)
        raise OSError(errno.EAGAIN, os.strerror(errno.EAGAIN))  # os.fork() for b

    monkeypatch.setattr(pull, "pull_hosts", pull_hosts)
    with pytest.raises(OSError):
        pull.pull(config)
    hosts, named = recorded_or_named(config)
    assert "a" in hosts or "a" in named, (
        f"host a's stored pull was recorded nowhere: status.json hosts {sorted(hosts)}, "
        f"journal {sorted(named)}"
    )
