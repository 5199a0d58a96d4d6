"""``status`` says what the status file cannot: a pull running now, or one killed
outright (SIGKILL, the OOM killer, a power cut) before it wrote the status file. The
journal a pull keeps, and the server lock as /proc/locks shows it, tell which."""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pullback.common.locks import FileLock
from pullback.common.procfs import flock_held
from pullback.server.journal import (
    DRY_RUN_PURPOSE,
    INSTANCE_LOCK,
    JOURNAL_FILE,
    MAX_JOURNAL,
    PULL_PURPOSE,
    Journal,
    Roster,
    pull_activity,
    read_journal,
)
from tests.helpers.status_servers import Server, make_server, status, stored

pytestmark = pytest.mark.unit


def test_flock_held_sees_a_lock_of_another_process_and_its_release(tmp_path):
    path = tmp_path / "some.lock"
    assert flock_held(path) is False  # no file: nobody holds it
    path.touch()
    assert flock_held(path) is False
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import fcntl, sys, time; f = open(sys.argv[1]); fcntl.flock(f, fcntl.LOCK_EX); "
            "print('held', flush=True); time.sleep(60)",
            str(path),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline() == "held\n"
        assert flock_held(path) is True
        assert flock_held(tmp_path / "other.lock") is False
    finally:
        holder.kill()
        holder.wait()
    assert flock_held(path) is False  # the kernel dropped it with its holder


def killed_pull(server: Server, phases: dict[str, str]) -> None:
    """A pull's journal, as one killed outright leaves it (its pid is long gone)."""
    record = {"pid": 999_999, "started": "2026-12-03T03:00:00Z", "hosts": phases}
    path = server.config.state_dir / JOURNAL_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record))


@pytest.fixture
def server(tmp_path) -> Server:
    """web1 and web2, both stored an hour ago: ok."""
    server = make_server(tmp_path, "b", {"web1": None, "web2": None})
    server.pulled(stored("web1", 1), stored("web2", 1))
    return server


def test_a_killed_pull_makes_its_hosts_need_attention_and_status_exit_1(server, capsys):
    code, out, err = status(server, capsys=capsys)
    assert code == 0, err
    killed_pull(server, {"web1": "storing"})
    code, out, err = status(server, capsys=capsys)
    assert code == 1
    rows = {line.split()[0]: line.split()[1] for line in out.splitlines()[1:3]}
    assert rows == {"web1": "attention", "web2": "ok"}
    assert (
        "web1: the last pull (pid 999999, started 2026-12-03T03:00:00Z) was killed "
        "while storing; the next pull reports it and removes a repository lock it left"
    ) in out
    assert (
        err == "cut short before it wrote its status (the last pull): web1 (killed while storing)\n"
    )
    code, out, _ = status(server, "--check", capsys=capsys)
    assert code == 1 and out.startswith("PULLBACK WARNING - needs attention: web1;")
    code, out, _ = status(server, "--json", capsys=capsys)
    assert json.loads(out)["pull_killed"] == {
        "pid": 999_999,
        "started": "2026-12-03T03:00:00Z",
        "hosts": {"web1": "storing"},
    }
    assert "pull_running" not in json.loads(out)


def test_a_running_pull_is_a_note_and_no_complaint(server, capsys):
    config = server.config
    with FileLock(config.lock_dir / INSTANCE_LOCK, PULL_PURPOSE).acquire():
        journal = Journal(config.state_dir)
        journal.begin()
        journal.phase("web2", "transferring and unpacking")
        code, out, err = status(server, capsys=capsys)
        assert code == 0, err
        assert "a pull is running (pid " in out
        assert out.rstrip().endswith(": web2 transferring and unpacking")
        assert "attention" not in out
        code, out, _ = status(server, "--json", capsys=capsys)
        assert json.loads(out)["pull_running"]["hosts"] == {"web2": "transferring and unpacking"}
        journal.end()
    assert status(server, capsys=capsys)[0] == 0
    assert "a pull is running" not in status(server, capsys=capsys)[1]


def test_a_killed_pulls_journal_under_another_commands_lock_is_still_killed(server):
    """maintain, verify and release hold the same lock: their run is not a pull."""
    killed_pull(server, {"web2": "connecting"})
    config = server.config
    with FileLock(config.lock_dir / INSTANCE_LOCK, "pullback-server maintain").acquire():
        activity = pull_activity(config.state_dir, config.lock_dir)
    assert activity.running is None
    assert activity.killed is not None and activity.killed.phases == {"web2": "connecting"}


def test_a_journal_kept_by_a_pull_that_ended_is_not_a_kill(server):
    """A pull that cut a host's store at its deadline ends, keeping that host in the
    journal for the next pull (a repository lock to remove); the status file already
    says why the host failed."""
    config = server.config
    journal = Journal(config.state_dir)
    journal.begin()
    journal.keep({"web1": "storing"})
    journal.end()
    assert json.loads((config.state_dir / JOURNAL_FILE).read_text())["ended"] is True
    activity = pull_activity(config.state_dir, config.lock_dir)
    assert activity.running is None and activity.killed is None
    assert Journal(config.state_dir).begin().phases == {"web1": "storing"}  # still read


@pytest.mark.parametrize(
    "content",
    [b"{not json", b'{"pid": 1}', b"[]", b'{"pid": 1, "started": "x", "hosts": 5}', b" " * 2],
)
def test_an_unreadable_journal_says_nothing(server, content, capsys):
    (server.config.state_dir / JOURNAL_FILE).write_bytes(content)
    activity = pull_activity(server.config.state_dir, server.config.lock_dir)
    assert activity.running is None and activity.killed is None
    assert status(server, capsys=capsys)[0] == 0


def test_a_huge_journal_is_not_read_past_its_bound(server):
    path = server.config.state_dir / JOURNAL_FILE
    hosts = {f"h{i}": "storing" for i in range(MAX_JOURNAL // 10)}
    path.write_text(json.dumps({"pid": 1, "started": "x", "hosts": hosts}))
    assert path.stat().st_size > MAX_JOURNAL
    started = time.monotonic()
    activity = pull_activity(server.config.state_dir, server.config.lock_dir)
    assert activity.killed is None and time.monotonic() - started < 5


def test_hostile_words_in_a_journal_are_made_printable(server, capsys):
    killed_pull(server, {"web1": "storing\x1b[2J\x1b]0;title\x07" + "x" * 10_000})
    code, out, err = status(server, capsys=capsys)
    assert code == 1 and "\x1b" not in out + err and "\x07" not in out + err
    assert max(len(line) for line in (out + err).splitlines()) < 400


@pytest.mark.parametrize("purpose", [PULL_PURPOSE, DRY_RUN_PURPOSE])
def test_a_pull_running_after_a_killed_one_is_running_and_the_kill_still_said(
    server, purpose, capsys
):
    """A dry run keeps no journal, and a pull rewrites the journal a moment after it
    takes the lock: the journal left then is the killed pull's, not the running one's
    (an outside review saw the dead pid shown as running and the kill hidden)."""
    killed_pull(server, {"web1": "storing"})
    config = server.config
    with FileLock(config.lock_dir / INSTANCE_LOCK, purpose).acquire():
        activity = pull_activity(config.state_dir, config.lock_dir)
        code, out, err = status(server, capsys=capsys)
    assert activity.running is not None and activity.running.pid == os.getpid()
    assert activity.killed is not None and activity.killed.pid == 999_999
    assert code == 1 and f"a pull is running (pid {os.getpid()}, since " in out
    assert (
        "cut short before it wrote its status (the last pull): web1 (killed while storing)" in err
    )


def _tmpfs(path: Path) -> Path:
    path.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(path)], check=True)
    return path


@pytest.mark.skipif(os.geteuid() != 0, reason="mounts tmpfs")
def test_a_lock_on_the_same_inode_number_of_another_file_system_hides_no_kill(tmp_path):
    """Separate tmpfs mounts number their inodes alike: an flock on another one's file
    of the same number read as the server lock held, and hid a killed pull."""
    locks, other = _tmpfs(tmp_path / "locks"), _tmpfs(tmp_path / "other")
    try:
        (locks / INSTANCE_LOCK).touch()
        (other / "other.lock").touch()
        if (locks / INSTANCE_LOCK).stat().st_ino != (other / "other.lock").stat().st_ino:
            pytest.skip("these tmpfs mounts number inodes apart")
        state = tmp_path / "state"
        state.mkdir()
        (state / JOURNAL_FILE).write_text(
            json.dumps({"pid": 999_999, "started": "x", "hosts": {"web1": "storing"}})
        )
        with open(other / "other.lock") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            assert flock_held(locks / INSTANCE_LOCK) is None  # cannot be told apart
            activity = pull_activity(state, locks)
        assert activity.running is None and activity.killed is not None
        with FileLock(locks / INSTANCE_LOCK, PULL_PURPOSE).acquire():
            assert flock_held(locks / INSTANCE_LOCK) is True
    finally:
        subprocess.run(["umount", str(locks)], check=True)
        subprocess.run(["umount", str(other)], check=True)


def test_no_journal_and_no_lock_file_say_nothing(tmp_path: Path):
    activity = pull_activity(tmp_path / "state", tmp_path / "locks")
    assert activity.running is None and activity.killed is None


def test_a_pull_stopped_by_sigterm_keeps_its_hosts_for_status_and_the_next_pull(server):
    """A pull stopped by SIGTERM writes no status file: status said "ok" (an outside
    review). The journal keeps the hosts it was pulling, and how it ended."""
    config = server.config
    journal = Journal(config.state_dir)
    journal.begin()
    journal.phase("web1", "transferring and unpacking")
    journal.stop({"web1": "transferring and unpacking"}, "SIGTERM")
    journal.end()
    activity = pull_activity(config.state_dir, config.lock_dir)
    assert activity.killed is not None and activity.killed.stopped_by == "SIGTERM"
    assert activity.killed.describe("web1").endswith(
        "was stopped by SIGTERM while transferring and unpacking"
    )
    assert Journal(config.state_dir).begin().how == "stopped by SIGTERM"


def test_a_pull_of_other_hosts_carries_the_killed_ones_to_the_next_pull_of_them(tmp_path):
    """``pull --host good`` after a pull killed while pulling ``hung``: ``hung`` stays
    cut short, and the pull that next reads the journal is told of it."""
    state, locks = tmp_path / "state", tmp_path / "locks"
    state.mkdir()
    locks.mkdir()
    killed = {"pid": 999_999_999, "started": "2026-12-03T03:00:00Z"}
    (state / JOURNAL_FILE).write_text(
        json.dumps({**killed, "hosts": {"good": "transferring", "hung": "connecting"}})
    )
    journal = Journal(state)
    previous = journal.begin()
    journal.carry(previous, ["good"])
    journal.end()
    cut = pull_activity(state, locks).killed
    assert cut is not None and cut.phases == {"hung": "connecting"}
    assert (cut.pid, cut.started) == (killed["pid"], killed["started"])
    again = Journal(state).begin()
    assert again is not None and again.merged().phases == {"hung": "connecting"}
    assert "(pid 999999999, started 2026-12-03T03:00:00Z) was killed while connecting" in (
        again.carried.describe("hung")  # type: ignore[union-attr]
    )
    journal = Journal(state)
    journal.carry(journal.begin(), ["good", "hung"])  # a pull of both: nothing carried
    journal.end()
    assert not (state / JOURNAL_FILE).exists()


def _journal(server: Server, record: dict) -> None:
    path = server.config.state_dir / JOURNAL_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"pid": 999_999, "started": "2026-12-03T03:00:00Z", **record}))


def test_a_pull_killed_before_the_host_was_disabled_does_not_warn_for_ever(tmp_path, capsys):
    """helper-141 F1: the nightly pull of web1 and old was killed (old's machine hung);
    then old was disabled (kept for its snapshots). A disabled host is never pulled, so
    every later pull carries it in the journal: status, --check, --json and the metric
    said it was cut short for ever. As for a failed pull, only a run that named it (the
    journal's ``disabled``) counts."""
    from pullback.server import metrics

    before = make_server(tmp_path, "s", {"web1": None, "old": None})
    before.pulled(stored("web1", 1), stored("old", 30))
    server = make_server(tmp_path, "s", {"web1": None, "old": None}, disabled=("old",))
    server.pulled(stored("web1", 1))  # (what later nightly pulls record)
    carried = {"pid": 999_998, "started": "2026-12-02T03:00:00Z", "hosts": {"old": "connecting"}}
    _journal(server, {"hosts": {}, "ended": True, "carried": carried})
    config = server.config

    def cut(host: str) -> str:
        activity = pull_activity(config.state_dir, config.lock_dir, Roster.of(config.hosts))
        text = metrics.build(config, json.loads(server.status.read_text()), None, activity)
        return next(
            line
            for line in text.render().splitlines()
            if line.startswith(f'pullback_pull_cut_short{{host="{host}"}}')
        )

    code, out, _ = status(server, "--check", capsys=capsys)
    assert code == 0 and out.startswith("PULLBACK OK"), out
    code, out, _ = status(server, "--json", capsys=capsys)
    assert "pull_killed" not in json.loads(out), out
    code, out, _ = status(server, capsys=capsys)
    assert "cut short" not in out and "killed" not in out, out
    assert cut("old").endswith(" 0")
    # a run that named the disabled host was killed: that counts, everywhere
    _journal(server, {"hosts": {"old": "connecting"}, "disabled": ["old"]})
    code, out, _ = status(server, "--check", capsys=capsys)
    assert code == 1 and out.startswith("PULLBACK WARNING - needs attention: old"), out
    code, out, _ = status(server, "--json", capsys=capsys)
    assert json.loads(out)["pull_killed"]["hosts"] == {"old": "connecting"}
    assert cut("old").endswith(" 1")
    # carried by a later nightly pull (old not pulled): still that named run's cut
    journal = Journal(config.state_dir)
    journal.carry(journal.begin(), ["web1"])
    journal.end()
    code, out, _ = status(server, "--check", capsys=capsys)
    assert out.startswith("PULLBACK WARNING - needs attention: old"), out
    # an enabled host killed with it always counts
    _journal(server, {"hosts": {"old": "connecting", "web1": "storing"}})
    code, out, _ = status(server, "--check", capsys=capsys)
    assert out.startswith("PULLBACK WARNING - needs attention: web1;"), out
    assert cut("old").endswith(" 0") and cut("web1").endswith(" 1")


def test_a_pull_records_the_disabled_hosts_it_was_named_to_pull_in_its_journal(tmp_path):
    state = tmp_path / "state"
    state.mkdir()
    journal = Journal(state)
    journal.begin()
    journal.pulls_disabled(["old"])
    journal.waiting(["old", "web1"])
    killed = read_journal(state)
    assert killed is not None and killed.disabled == ("old",)
    listed = frozenset({"old", "web1"})
    assert killed.counted(Roster(listed, frozenset({"old"}))) is killed
    assert killed.counted(Roster(listed)) is killed
    journal.keep({"old": "storing"})
    journal.end()
    ended = read_journal(state)
    assert ended is not None and ended.disabled == ("old",)


def test_a_host_no_longer_in_server_yaml_leaves_the_journal(tmp_path, capsys, monkeypatch):
    """helper-144 F3: a pull was killed while pulling web9; then web9 was removed from
    server.yaml (or renamed). It is never pulled again, so every later pull carried it
    and the journal stayed for ever: ``status --json`` said ``pull_killed``, the metrics
    had the cut-short start time with no host cut short, and every ``publish
    --if-failed`` said the pull was killed while pulling web9."""
    from pullback.server import metrics
    from pullback.server.cli import main as server_main

    server = make_server(tmp_path, "s", {"web1": None})
    server.pulled(stored("web1", 1))
    config = server.config
    _journal(server, {"hosts": {"web9": "storing"}})
    roster = Roster.of(config.hosts)
    assert roster == Roster(frozenset({"web1"}))
    assert pull_activity(config.state_dir, config.lock_dir, roster).killed is None
    assert pull_activity(config.state_dir, config.lock_dir).killed is not None  # (all count)
    code, out, _ = status(server, "--json", capsys=capsys)
    assert code == 0 and "pull_killed" not in json.loads(out), out
    code, out, _ = status(server, "--check", capsys=capsys)
    assert code == 0 and out.startswith("PULLBACK OK"), out
    activity = pull_activity(config.state_dir, config.lock_dir, roster)
    text = metrics.build(config, json.loads(server.status.read_text()), None, activity).render()
    assert "pullback_pull_cut_short_started_timestamp_seconds" not in text
    assert 'pullback_pull_cut_short{host="web1"} 0' in text
    monkeypatch.setenv("SERVICE_RESULT", "signal")
    monkeypatch.setenv("EXIT_STATUS", "KILL")
    assert server_main(["--config", str(server.path), "publish", "--if-failed"]) == 0
    said = capsys.readouterr().err
    assert "rewriting the outputs" in said and "web9" not in said, said
    # a host still listed, cut with it, counts alone; the next pull carries it alone
    _journal(server, {"hosts": {"web9": "storing", "web1": "connecting"}})
    killed = pull_activity(config.state_dir, config.lock_dir, roster).killed
    assert killed is not None and killed.phases == {"web1": "connecting"}
    assert server_main(["--config", str(server.path), "publish", "--if-failed"]) == 0
    said = capsys.readouterr().err
    assert "was killed (systemd: signal, KILL) while pulling web1:" in said, said
    journal = Journal(config.state_dir)
    journal.carry(journal.begin(), [], roster)
    journal.end()
    left = read_journal(config.state_dir)
    assert left is not None and left.carried is not None
    assert left.carried.phases == {"web1": "connecting"}
    # a pull that carries only the host no longer listed leaves no journal
    _journal(server, {"hosts": {"web9": "storing"}})
    journal = Journal(config.state_dir)
    journal.carry(journal.begin(), ["web1"], roster)
    journal.end()
    assert not (config.state_dir / JOURNAL_FILE).exists()


def test_a_disabled_host_is_still_carried_and_counts_again_once_enabled(tmp_path):
    """Only a host server.yaml no longer lists leaves the journal: a disabled one is
    carried (its cut counts again if it is enabled again), as before."""
    state = tmp_path / "state"
    state.mkdir()
    (state / JOURNAL_FILE).write_text(
        json.dumps({"pid": 999_999, "started": "2026-12-03T03:00:00Z", "hosts": {"old": "x"}})
    )
    journal = Journal(state)
    journal.carry(journal.begin(), ["web1"], Roster(frozenset({"web1", "old"}), frozenset({"old"})))
    journal.end()
    left = read_journal(state)
    assert left is not None and left.carried is not None and left.carried.phases == {"old": "x"}
    cut = left.carried
    assert cut.counted(Roster(frozenset({"web1", "old"}), frozenset({"old"}))) is None
    assert cut.counted(Roster(frozenset({"web1", "old"}))) is cut
    assert cut.counted(Roster(frozenset({"web1"}))) is None


def test_release_accepts_a_disabled_host_s_cut_named_pull(tmp_path, capsys):
    """helper-144 F2: ``pull --host old`` of a disabled host, killed while connecting to
    a machine that is gone, counted until a pull of old ended (which fails, and counts
    then as failed). ``release old`` accepts the cut: the journal no longer names old as
    pulled while disabled, so it counts no more; old's phase stays in it (a later pull
    of it removes the repository lock it may have left). An enabled host's cut, in the
    same journal, still counts."""
    from pullback.server.cli import main as server_main

    server = make_server(tmp_path, "s", {"web1": None, "old": None}, disabled=("old",))
    server.pulled(stored("web1", 1))
    config = server.config
    journal = Journal(config.state_dir)  # the real writer; killed: never ended
    journal.begin()
    journal.pulls_disabled(["old"])
    journal.waiting(["old", "web1"])
    journal.phase("old", "connecting")
    journal.phase("web1", None)  # (pulled to the end)
    code, out, _ = status(server, "--check", capsys=capsys)
    assert code == 1 and out.startswith("PULLBACK WARNING - needs attention: old"), out

    assert server_main(["--config", str(server.path), "release", "old"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"old: accepted that the previous pull (pid {os.getpid()}, started ")
    assert out.endswith(
        " was killed while connecting; disabled in server.yaml, it counts no more\n"
    )
    code, out, _ = status(server, "--check", capsys=capsys)
    assert code == 0 and out.startswith("PULLBACK OK - 1 of 1 hosts ok (1 disabled: old)"), out
    kept = read_journal(config.state_dir)
    assert kept is not None and kept.phases == {"old": "connecting"} and kept.disabled == ()
    assert pull_activity(config.state_dir, config.lock_dir, Roster.of(config.hosts)).killed is None
    assert server_main(["--config", str(server.path), "release", "old"]) == 0
    assert capsys.readouterr().out.endswith("; nothing to release\n")
    # carried by a later pull, beside an enabled host's own cut: only old's is accepted
    _journal(
        server,
        {
            "hosts": {"web1": "storing"},
            "carried": {
                "pid": 999_998,
                "started": "2026-12-02T03:00:00Z",
                "hosts": {"old": "storing"},
                "disabled": ["old"],
            },
        },
    )
    assert server_main(["--config", str(server.path), "release", "old"]) == 0
    assert "pid 999998" in capsys.readouterr().out
    code, out, _ = status(server, "--check", capsys=capsys)
    assert code == 1 and out.startswith("PULLBACK WARNING - needs attention: web1;"), out
    killed = pull_activity(config.state_dir, config.lock_dir, Roster.of(config.hosts)).killed
    assert killed is not None and list(killed.phases) == ["web1"]
