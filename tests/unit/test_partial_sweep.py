"""Partial downloads are swept by age, whatever becomes of the host (helper-167 F4,
helper-168): at each pull of the host, and at each run for the hosts it does not pull
(disabled, not named, gone from server.yaml); a partial without its note of when it
began is counted from its last change as it is found, then by the note written then."""

from __future__ import annotations

import logging
import os
import time

from pullback.common.outcome import Status
from pullback.server import pull
from pullback.server.config import load_server_config
from pullback.server.results import HostResult
from pullback.server.transfer import STARTED, drop_stale_partials

DAY = 86400.0


def make_config(tmp_path):
    path = tmp_path / "server.yaml"
    path.write_text(
        f"state_dir: {tmp_path / 'state'}\nlock_dir: {tmp_path}\n"
        "partial_max_age: 3d\nhosts:\n  - name: a\n  - name: b\n"
    )
    config = load_server_config(path)
    config.state_dir.mkdir(mode=0o700)
    return config


def partial(config, host: str, began: float | None):
    """A partial download of ``host`` whose note says it began ``began`` seconds ago
    (None: no note)."""
    place = config.partial_dir(host)
    place.mkdir(parents=True, exist_ok=True)
    path = place / f"{host}-20261201T030000Z.tar.zst"
    path.write_bytes(b"x" * 1000)
    if began is not None:
        (place / (path.name + STARTED)).write_text(f"{time.time() - began:.0f}\n")
    return path


def test_a_run_sweeps_the_partials_of_hosts_it_does_not_pull(tmp_path, monkeypatch):
    config = make_config(tmp_path)
    gone, named_not, pulled = (
        partial(config, "gone", 4 * DAY),  # a host server.yaml no longer lists
        partial(config, "b", 4 * DAY),  # a host this run does not name
        partial(config, "a", 4 * DAY),  # pulled: its own pull sweeps it
    )

    def pull_hosts(config, hosts, work, journal=None, parent_only=(), progress=None):
        return [HostResult(h.name, Status.SKIPPED, reason="fresh") for h in hosts]

    monkeypatch.setattr(pull, "pull_hosts", pull_hosts)
    pull.pull(config, ["a"])
    assert not gone.exists() and not named_not.exists()
    assert pulled.exists()
    dry = partial(config, "gone", 4 * DAY)
    from pullback.server.host_pull import PullOptions

    pull.pull(config, ["a"], PullOptions(dry_run=True))
    assert dry.exists()  # (a dry run changes nothing)


def test_a_partial_without_its_note_is_counted_from_when_it_was_found(tmp_path):
    """From its last change as it is found, then by the note that is written: counted
    from its last change each time, a partial grown a byte a night was kept for ever."""
    config = make_config(tmp_path)
    log = logging.getLogger("pullback.test")
    noteless = partial(config, "a", None)  # its last change: now
    drop_stale_partials(config.partial_dir("a"), 3 * DAY, log)
    note = noteless.with_name(noteless.name + STARTED)
    assert noteless.exists() and abs(float(note.read_text()) - time.time()) < 60
    note.write_text(f"{time.time() + 30 * DAY:.0f}\n")  # dated ahead (a clock set back)
    drop_stale_partials(config.partial_dir("a"), 3 * DAY, log)
    assert noteless.exists() and float(note.read_text()) <= time.time() + 1
    note.write_text(f"{time.time() - 4 * DAY:.0f}\n")  # a byte a night since: its note stays
    noteless.write_bytes(b"x" * 1001)
    drop_stale_partials(config.partial_dir("a"), 3 * DAY, log)
    assert not noteless.exists() and not note.exists()
    untouched = partial(config, "a", None)
    old = time.time() - 10 * DAY
    os.utime(untouched, (old, old))
    drop_stale_partials(config.partial_dir("a"), 3 * DAY, log)
    assert not untouched.exists()
