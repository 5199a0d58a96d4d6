"""maintain, verify, snapshots and restore against real restic and borg repositories."""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.helpers.fleet import Fleet
from tests.helpers.smtp import SmtpSink
from tests.helpers.tree import make_rich_tree, snapshot

START = dt.datetime(2026, 11, 1, tzinfo=dt.UTC)
SERIES = [START + dt.timedelta(days=d, hours=h) for d in range(10) for h in (6, 18)]


def stamp(when: dt.datetime) -> str:
    return when.strftime("%Y%m%dT%H%M%SZ")


class Repos:
    """Seed repositories the way pulls would have filled them, and configure a server."""

    def __init__(self, root: Path, backend: str):
        self.fleet = Fleet(root, backend=backend)
        self.data = root / "data"
        self.data.mkdir()
        (self.data / "services").mkdir()
        (self.data / "services" / "f.txt").write_text("x")

    def seed(self, host: str, times: list[dt.datetime]) -> None:
        env = self.fleet.repo_env(host)
        if self.fleet.backend == "restic":
            subprocess.run(["restic", "init"], env=env, check=True, capture_output=True)
            for when in times:
                subprocess.run(
                    [
                        "restic",
                        "backup",
                        "--host",
                        host,
                        "--tag",
                        "pullback",
                        "--tag",
                        stamp(when),
                        "--time",
                        when.strftime("%Y-%m-%d %H:%M:%S"),
                        ".",
                    ],
                    cwd=self.data,
                    env={**env, "TZ": "UTC"},
                    check=True,
                    capture_output=True,
                )
        else:
            subprocess.run(
                ["borg", "init", "--encryption=repokey-blake2", "--make-parent-dirs"],
                env=env,
                check=True,
                capture_output=True,
            )
            for when in times:
                subprocess.run(
                    [
                        "borg",
                        "create",
                        "--timestamp",
                        when.strftime("%Y-%m-%dT%H:%M:%S"),
                        f"::{host}-{stamp(when)}",
                        "services",
                    ],
                    cwd=self.data,
                    env=env,
                    check=True,
                    capture_output=True,
                )

    def configure(self, hosts: list[dict], **extra) -> None:
        data = {
            "state_dir": str(self.fleet.state),
            "lock_dir": str(self.fleet.root / "run"),
            "backend": {
                "type": self.fleet.backend,
                "repository_root": str(self.fleet.repos),
                "password_file": str(self.fleet.password_file),
            },
            "ssh": {"key_file": str(self.fleet.key), "known_hosts": str(self.fleet.known_hosts)},
            "retention": {"keep_daily": 3},
            "maintenance": {"repository_lock_wait": "5s", "wait_for_pull": "1s"},
            "hosts": hosts,
        }
        data.update(extra)
        self.fleet.config.write_text(yaml.safe_dump(data))

    def stamps(self, host: str) -> list[str]:
        found = self.fleet.snapshots(host)
        if self.fleet.backend == "restic":
            return sorted(next(t for t in s["tags"] if t != "pullback") for s in found)
        return sorted(s["name"].split("-", 1)[1] for s in found)


@pytest.mark.parametrize("backend", ["restic", "borg"])
def test_retention_keeps_exactly_the_right_snapshots(tmp_path, backend):
    repos = Repos(tmp_path, backend)
    repos.seed("daily", SERIES)
    repos.seed("last", SERIES)
    repos.configure([{"name": "daily"}, {"name": "last", "retention": {"keep_last": 4}}])
    result = repos.fleet.server("maintain", "--no-verify")
    assert result.returncode == 0, result.stdout + result.stderr
    evening = [stamp(START + dt.timedelta(days=d, hours=18)) for d in (7, 8, 9)]
    assert repos.stamps("daily") == evening
    # per host keys override: keep_last 4 joins the global keep_daily 3
    newest4 = [stamp(w) for w in SERIES[-4:]]
    assert repos.stamps("last") == sorted(set(evening) | set(newest4))
    assert "forgot 17" in result.stdout
    repos.fleet.check_repository("daily")


def test_check_rotates_through_the_data(tmp_path):
    repos = Repos(tmp_path, "restic")
    repos.seed("web1", SERIES[:2])
    repos.configure(
        [{"name": "web1"}], maintenance={"check_subsets": 3, "repository_lock_wait": "5s"}
    )
    parts = []
    for _ in range(4):
        result = repos.fleet.server("maintain", "--no-verify")
        assert result.returncode == 0, result.stdout + result.stderr
        parts.append(result.stdout.split("read part ")[1].split()[0])
    assert parts == ["1/3", "2/3", "3/3", "1/3"]
    state = json.loads((repos.fleet.state / "maintenance.json").read_text())
    assert state["web1"]["check_part"] == 1


def test_a_stale_lock_is_cleared_and_a_live_one_waited_for(tmp_path):
    repos = Repos(tmp_path, "restic")
    repos.seed("web1", SERIES[:3])
    repos.configure([{"name": "web1"}])
    env = repos.fleet.repo_env("web1")

    def locks():
        return subprocess.run(
            ["restic", "list", "locks", "--no-lock"], env=env, capture_output=True, text=True
        ).stdout.split()

    # a backup that holds its lock (reading a pipe), killed with SIGKILL mid-way
    killed = subprocess.Popen(
        ["restic", "backup", "--host", "web1", "--stdin"],
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 30
    while not locks() and time.monotonic() < deadline:
        time.sleep(0.2)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    assert len(locks()) == 1  # left behind by the killed process
    result = repos.fleet.server("maintain", "--no-verify")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "removed 1 stale lock(s)" in result.stdout + result.stderr
    assert repos.stamps("web1") == [stamp(w) for w in SERIES[1:3]]  # keep_daily 3 of 2 days

    # a live process holds a lock: waited for, then reported in plain words
    live = subprocess.Popen(
        ["restic", "backup", "--host", "other", "--stdin"],
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        time.sleep(2)
        started = time.monotonic()
        result = repos.fleet.server("maintain", "--no-verify")
        assert result.returncode == 1
        assert "is locked by a live process" in result.stdout
        assert time.monotonic() - started >= 5  # repository_lock_wait
        # released while maintenance waits: it goes on
        waiter = repos.fleet.server_popen("maintain", "--no-verify")
        time.sleep(2)
        live.stdin.close()
        live.wait(timeout=30)
        out, err = waiter.communicate(timeout=120)
        assert waiter.returncode == 0, out + err
    finally:
        if live.poll() is None:
            live.kill()


def test_maintain_waits_for_a_running_pull(tmp_path):
    repos = Repos(tmp_path, "restic")
    repos.configure([{"name": "web1"}])
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time\nfrom pullback.common.locks import FileLock\n"
            "FileLock(sys.argv[1], purpose='pullback-server pull').acquire()\n"
            "print('locked', flush=True)\ntime.sleep(60)",
            str(repos.fleet.root / "run/server.lock"),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        result = repos.fleet.server("maintain")
        assert result.returncode == 75
        assert "(pullback-server pull)" in result.stderr
    finally:
        holder.kill()
        holder.wait()


@pytest.fixture(params=["restic", "borg"])
def pulled(request, tmp_path, is_root):
    fleet = Fleet(tmp_path, backend=request.param)
    host = fleet.add_host("web1")
    host.client.add_service("app", f"service: {{name: app}}\nfiles: {{paths: [{host.data}]}}\n")
    make_rich_tree(host.data / "tree", as_root=is_root)
    # a FIFO is kept (the manifest lists regular files only): an outside test had every
    # drill of such a tree fail, "not in the manifest"
    os.mkfifo(host.data / "tree" / "data" / "pipe")
    host.make_archive()
    assert fleet.server("pull").returncode == 0
    yield fleet, host
    fleet.stop()


def test_restore_round_trip_is_byte_exact_with_owners_modes_mtimes(pulled, tmp_path):
    fleet, host = pulled
    listing = fleet.server("snapshots", "web1", "--json")
    assert listing.returncode == 0, listing.stderr
    (snap,) = json.loads(listing.stdout)
    target = tmp_path / "restored"
    result = fleet.server("restore", "web1", "--service", "app", "--target", str(target))
    assert result.returncode == 0, result.stderr
    assert "pullback-client restore --service app" in result.stdout
    restored = target / "services/app/files" / str(host.data).lstrip("/") / "tree"
    assert snapshot(restored) == snapshot(host.data / "tree")
    check = subprocess.run(
        "grep '  services/app/' MANIFEST.sha256 | sha256sum --check --quiet",
        shell=True,
        cwd=target,
        capture_output=True,
        text=True,
    )
    assert check.returncode == 0, check.stdout + check.stderr
    again = fleet.server("restore", "web1", "--snapshot", snap["id"], "--target", str(target))
    assert again.returncode == 2 and "is not empty" in again.stderr
    (tmp_path / "a-file").write_bytes(b"")  # an outside try: a traceback, exit 70
    onto_a_file = fleet.server("restore", "web1", "--target", str(tmp_path / "a-file"))
    assert onto_a_file.returncode == 2, onto_a_file.stderr
    assert f"--target {tmp_path}/a-file is not a directory" in onto_a_file.stderr


def _proof(output: str) -> str:
    (line,) = [x for x in output.splitlines() if x.startswith("prove it byte for byte:")]
    return line.split(":", 1)[1].strip()


def test_restore_of_one_path_proves_it_and_refuses_a_path_not_there(pulled, tmp_path):
    """``--path``: a file or a directory comes with the manifest, and the proof line the
    output gives passes in the target; a path the snapshot does not have is exit 2 and
    leaves the target empty (an outside test got "restored", exit 0, an empty target,
    and a proof line that failed for want of the manifest)."""
    fleet, host = pulled
    inside = "services/app/files" + str(host.data) + "/tree"
    for number, (path, kind) in enumerate(
        [(f"{inside}/etc/app/config.ini", "file"), (f"{inside}/data", "directory")]
    ):
        target = tmp_path / f"one-{number}"
        result = fleet.server("restore", "web1", "--path", path, "--target", str(target))
        assert result.returncode == 0, result.stderr
        assert (target / path).exists() and (target / "MANIFEST.sha256").is_file(), kind
        proof = subprocess.run(_proof(result.stdout), shell=True, cwd=target, capture_output=True)
        assert proof.returncode == 0, (kind, proof.stdout, proof.stderr)
        assert b": OK" in proof.stdout
        if kind == "directory":  # a file the restore lost fails the proof
            (target / path / "exact-block").unlink()
            again = subprocess.run(_proof(result.stdout), shell=True, cwd=target)
            assert again.returncode != 0
    link = fleet.server(
        "restore", "web1", "--path", f"{inside}/data/dangling", "--target", str(tmp_path / "l")
    )
    assert link.returncode == 0, link.stderr
    assert "nothing to prove it by" in link.stdout
    missing = tmp_path / "missing"
    result = fleet.server("restore", "web1", "--path", f"{inside}/nosuch", "--target", str(missing))
    assert result.returncode == 2, result.stdout + result.stderr
    assert "has nothing at" in result.stderr and "services/<service>/" in result.stderr
    assert not any(missing.iterdir())


def test_a_forced_restore_over_an_earlier_one_sets_it_aside(pulled, tmp_path):
    """``--force`` into the target of an earlier restore (a FIFO, symlinks and hard
    links in it): what was there moves to ``.pullback-replaced-…`` and the restore
    proves; a forced restore that fails puts it back (an outside test's restic failed
    on "file exists", exit 1, the target half replaced)."""
    fleet, host = pulled
    target = tmp_path / "again"
    first = fleet.server("restore", "web1", "--service", "app", "--target", str(target))
    assert first.returncode == 0, first.stderr
    tree = target / "services/app/files" / str(host.data).lstrip("/") / "tree"
    (tree / "etc/app/config.ini").write_text("edited after the first restore\n")
    kept = snapshot(tree)
    second = fleet.server("restore", "web1", "--service", "app", "--target", str(target), "--force")
    assert second.returncode == 0, second.stdout + second.stderr
    assert snapshot(tree) == snapshot(host.data / "tree")
    proof = subprocess.run(_proof(second.stdout), shell=True, cwd=target, capture_output=True)
    assert proof.returncode == 0, proof.stdout + proof.stderr
    (aside,) = target.glob(".pullback-replaced-*")
    assert str(aside) in second.stdout
    assert snapshot(aside / tree.relative_to(target)) == kept  # nothing destroyed
    before = snapshot(target)
    failed = fleet.server(
        "restore", "web1", "--path", "services/app/nosuch", "--target", str(target), "--force"
    )
    assert failed.returncode == 2, failed.stdout + failed.stderr
    assert snapshot(target) == before  # what it moved aside came back


SIGNAL_WHILE_SETTING_ASIDE = """\
import os, runpy, signal, sys
import pullback.server.restore as restore
real, sent = os.rename, []
def rename(*args, **kwargs):
    real(*args, **kwargs)
    if not sent:  # a SIGTERM right after --force moved its first entry aside
        sent.append(1)
        os.kill(os.getpid(), signal.SIGTERM)
restore.os.rename = rename
sys.argv = ["pullback-server", *sys.argv[1:]]
runpy.run_module("pullback.server.cli", run_name="__main__")
"""


def test_a_signal_while_force_sets_things_aside_puts_them_back(pulled, tmp_path):
    """A SIGTERM while ``--force`` moves what is in the way aside: the moving ends,
    everything moved comes back and nothing is left in ``.pullback-replaced-*``
    (helper-132: the signal came before the restore's clean-up began, and what was set
    aside stayed there unsaid)."""
    fleet, _ = pulled
    target = tmp_path / "again"
    first = fleet.server("restore", "web1", "--service", "app", "--target", str(target))
    assert first.returncode == 0, first.stderr
    before = snapshot(target)
    argv = [sys.executable, "-c", SIGNAL_WHILE_SETTING_ASIDE, "--config", str(fleet.config)]
    argv += ["restore", "web1", "--service", "app", "--target", str(target), "--force"]
    stopped = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    assert stopped.returncode != 0, stopped.stdout + stopped.stderr
    assert "SIGTERM received; finishing the current step first" in stopped.stderr
    assert not list(target.glob(".pullback-replaced-*")), stopped.stderr
    assert snapshot(target) == before


def test_a_forced_restore_never_follows_a_symlink_left_in_the_target(pulled, tmp_path):
    """An earlier restore left a symlink on the way of ``--force --path`` (a client's
    symlink, or one the operator made): the restore moved the file the link led to out
    of its place, and restic wrote the client's bytes there, outside the target (an
    outside attack). The link is set aside now; nothing outside the target changes."""
    fleet, host = pulled
    target = tmp_path / "t"
    inside = "services/app/files" + str(host.data) + "/tree/data"
    first = fleet.server("restore", "web1", "--service", "app", "--target", str(target))
    assert first.returncode == 0, first.stderr
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "exact-block").write_text("the server's own file\n")
    shutil.rmtree(target / inside)
    (target / inside).symlink_to(victim)  # data -> victim
    forced = fleet.server(
        "restore", "web1", "--path", f"{inside}/exact-block", "--target", str(target), "--force"
    )
    assert forced.returncode == 0, forced.stdout + forced.stderr
    assert (victim / "exact-block").read_text() == "the server's own file\n"
    assert not (target / inside).is_symlink()
    assert (target / inside / "exact-block").read_bytes() == b"x" * 512
    (aside,) = target.glob(".pullback-replaced-*")
    assert (aside / inside).is_symlink()  # set aside, not followed
    # a glob character in --path is a name, not a pattern: nothing else moves
    mine = target / inside / "mine.txt"
    mine.write_text("the operator's\n")
    star = fleet.server(
        "restore", "web1", "--path", f"{inside}/[em]*", "--target", str(target), "--force"
    )
    assert star.returncode == 2, star.stdout + star.stderr
    assert "read as a pattern: restore it into an empty directory" in star.stderr
    assert mine.read_text() == "the operator's\n"


def test_a_drill_proves_a_good_snapshot_and_status_shows_it(pulled):
    fleet, _ = pulled
    result = fleet.server("verify")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "match the manifest" in result.stdout
    status = json.loads(fleet.server("status", "--json").stdout)["hosts"]["web1"]
    assert status["verify_result"] == "ok" and status["last_verified"]
    table = fleet.server("status").stdout
    assert "LAST VERIFIED" in table and "ago" in table.splitlines()[1]
    # one snapshot by name (a short id prefix), as after a repository's repair
    proven = status["last_verified_snapshot"]
    named = fleet.server("verify", "--host", "web1", "--snapshot", proven[:8])
    assert named.returncode == 0, named.stdout + named.stderr
    assert f"web1: snapshot {proven} restored and all" in named.stdout
    unknown = fleet.server("verify", "--host", "web1", "--snapshot", "0" * 12)
    assert unknown.returncode == 2, unknown.stdout + unknown.stderr
    assert f"no single snapshot '{'0' * 12}' of web1; see pullback-server snapshots web1" in (
        unknown.stderr
    )


def _damage_one_pack(repository: Path, backend: str) -> None:
    if backend == "restic":
        packs = sorted((repository / "data").rglob("*"), key=lambda p: p.stat().st_size)
    else:
        packs = sorted((repository / "data").rglob("[0-9]*"), key=lambda p: p.stat().st_size)
    pack = [p for p in packs if p.is_file()][-1]  # the biggest holds file contents
    pack.chmod(0o644)
    data = bytearray(pack.read_bytes())
    for offset in range(len(data) // 3, len(data) // 3 + 64):
        data[offset] ^= 0xFF
    pack.write_bytes(bytes(data))


def test_a_drill_catches_a_damaged_pack(pulled):
    fleet, _ = pulled
    _damage_one_pack(fleet.repos / "web1", fleet.backend)
    result = fleet.server("verify")
    assert result.returncode == 1
    assert "FAILED" in result.stdout
    assert "services/app/files/" in result.stdout  # names the files that do not restore
    status = json.loads(fleet.server("status", "--json").stdout)["hosts"]["web1"]
    assert status["verify_result"] == "failed"
    assert status["verify_failed_snapshot"]["id"] in result.stdout
    # the check finds it too, within check_subsets runs (8 here; it reads the failing part
    # again until it passes), and that reaches status: an outside test saw "repository
    # contains errors" in maintain's output and "ok" in status, --check and the metrics
    for _ in range(8):
        maintained = fleet.server("maintain", "--no-verify")
        if maintained.returncode:
            break
    assert maintained.returncode == 1, maintained.stdout + maintained.stderr
    fleet.server("verify")  # the drill's failure stays; the maintenance's is its own
    check = fleet.server("status", "--check")
    assert check.returncode == 1 and check.stdout.startswith("PULLBACK WARNING"), check.stdout
    table = fleet.server("status").stdout
    assert "the last maintenance failed: check: " in table, table


def test_a_drill_catches_a_file_missing_from_the_snapshot(pulled):
    fleet, _ = pulled
    staging = fleet.state / "staging" / "web1"
    victim = next(p for p in (staging / "services/app/files").rglob("*.ini") if p.is_file())
    victim.unlink()
    env = {**fleet.repo_env("web1"), "TZ": "UTC"}
    later = dt.datetime.now(dt.UTC) + dt.timedelta(minutes=1)
    if fleet.backend == "restic":
        command = [
            "restic",
            "backup",
            "--host",
            "web1",
            "--tag",
            "pullback",
            "--time",
            later.strftime("%Y-%m-%d %H:%M:%S"),
            ".",
        ]
    else:
        command = [
            "borg",
            "create",
            "--timestamp",
            later.strftime("%Y-%m-%dT%H:%M:%S"),
            f"::web1-{stamp(later)}",
            "services",
            "MANIFEST.sha256",
        ]
    subprocess.run(command, cwd=staging, env=env, check=True, capture_output=True)
    sink = SmtpSink().start()
    try:
        fleet.smtp_port = sink.port
        fleet.write_config()
        result = fleet.server("maintain", "--verify")
    finally:
        sink.stop()
    assert result.returncode == 1
    rel = victim.relative_to(staging)
    assert f"missing: {rel}" in result.stdout
    (message,) = sink.messages
    assert "maintenance FAILED on 1 of 1 repositories: web1" in message["Subject"]
    text, html = sink.bodies(message)
    assert f"missing: {rel}" in text and f"missing: {rel}" in html
