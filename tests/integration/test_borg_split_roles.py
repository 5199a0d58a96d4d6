"""borg's split roles (docs/scaling.md) on a real sshd on loopback: the pull server's key
on the store runs ``borg serve --append-only --restrict-to-path``, the maintenance
machine's ``borg serve --restrict-to-path``. ``--append-only`` does not stop that key
from deleting, renaming or rewriting archives, nor from changing the repository's key
(an outside test did all of it with rc 0); it only keeps their data until a compact. So
the machine that forgets compares the archives with those it saw at its last maintenance
and holds forget, prune and compact when some vanished, appeared dated in the past or
were rewritten; the pull server says when the newest archive it stored is gone; and a
wrong password says the key may have been changed, with the way back."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers.fleet import PASSWORD, Fleet
from tests.helpers.ssh_store import SshStore
from tests.helpers.sshd import make_key

pytestmark = pytest.mark.integration

BORG = shutil.which("borg") or "/usr/bin/borg"


class SplitStore(SshStore):
    """A borg store with two keys: the pull server's (append-only) and the maintenance
    machine's (may delete)."""

    def start(self) -> SplitStore:
        super().start()
        self.full_key = make_key(self.root / "maint" / "store_ed25519")
        base = self.root / "serve-base"
        served = f"BORG_BASE_DIR={base} {BORG} serve"
        where = f"--restrict-to-path {self.directory}"
        pull = Path(f"{self.key}.pub").read_text().strip()
        full = Path(f"{self.full_key}.pub").read_text().strip()
        (self.root / "sshd" / "authorized_keys").write_text(
            f'restrict,command="{served} --append-only {where}" {pull}\n'
            f'restrict,command="{served} {where}" {full}\n'
        )
        return self

    def rsh(self, key: Path) -> str:
        return self.borg_rsh().replace(str(self.key), str(key))


@pytest.fixture
def split(tmp_path):
    fleet = Fleet(tmp_path / "fleet", backend="borg")
    store = SplitStore(tmp_path / "store", "borg").start()
    try:
        yield fleet, store
    finally:
        store.stop()
        fleet.stop()


class Machine:
    """One ``pullback-server`` machine of the split: its own server.yaml, state and key."""

    def __init__(self, fleet: Fleet, store: SplitStore, name: str, key: Path, **settings):
        self.fleet = fleet
        self.root = fleet.root / name
        fleet.write_config(
            state_dir=str(self.root / "state"), lock_dir=str(self.root / "run"), **settings
        )
        self.config = self.root / "server.yaml"
        self.root.mkdir(parents=True, exist_ok=True)
        self.config.write_text(fleet.config.read_text())
        self.env = {**os.environ, "BORG_RSH": store.rsh(key)}

    def __call__(self, *args: str, rc: int = 0) -> str:
        argv = [sys.executable, "-m", "pullback.server.cli", "--config", str(self.config)]
        done = subprocess.run(
            [*argv, *args], capture_output=True, text=True, env=self.env, timeout=300
        )
        said = done.stdout + done.stderr
        assert done.returncode == rc, said
        return said

    def status(self) -> dict:
        return json.loads((self.root / "state" / "status.json").read_text())["hosts"]["web1"]


def borg(store: SplitStore, key: Path, base: Path, *args: str, **env: str):
    """borg by hand on web1's repository through ``key`` (the attacker: the pull key)."""
    return subprocess.run(
        [BORG, *args],
        env={
            **os.environ,
            "BORG_RSH": store.rsh(key),
            "BORG_REPO": store.borg_url("web1"),
            "BORG_PASSPHRASE": PASSWORD,
            "BORG_BASE_DIR": str(base),
            **env,
        },
        capture_output=True,
        text=True,
        cwd=base.parent,
    )


def archives(store: SplitStore, base: Path) -> dict[str, str]:
    listed = borg(store, store.full_key, base, "list", "--json")
    assert listed.returncode == 0, listed.stderr
    return {a["name"]: a["id"] for a in json.loads(listed.stdout)["archives"]}


def two_machines(fleet: Fleet, store: SplitStore, retention: dict) -> tuple[Machine, Machine]:
    fleet.add_host("web1")
    fleet.host_extra["web1"] = {"repository": store.borg_url("web1")}
    pull = Machine(fleet, store, "pull", store.key, maintenance={"forget": False})
    maint = Machine(
        fleet, store, "maint", store.full_key, retention=retention, maintenance={"forget": True}
    )
    return pull, maint


def days(fleet: Fleet, pull: Machine, count: int) -> None:
    for day in range(count):
        fleet.hosts["web1"].make_archive({"site/index.html": f"<h1>day {day}</h1>".encode()})
        pull("pull")


def test_deleted_rewritten_and_backdated_archives_hold_forget_and_compact(split, tmp_path):
    fleet, store = split
    pull, maint = two_machines(fleet, store, {"keep_within": "30d"})
    days(fleet, pull, 3)
    base = tmp_path / "by-hand"
    maint("--verbose", "maintain", "--no-verify")
    assert set(maint.status()["guard_seen"]["snapshots"]) == set(archives(store, base))
    before = archives(store, base)
    _, second, newest = sorted(before)
    repo = store.directory / "web1"
    good = transactions(repo)[-1]

    # the pull server's key (--append-only) deletes the newest archive, empties one and
    # adds one dated 60 days back: all rc 0
    attacker = tmp_path / "attacker"
    for args in (
        ("delete", f"::{newest}"),
        ("recreate", "--exclude", "sh:**", f"::{second}"),
    ):
        done = borg(store, store.key, attacker, *args)
        assert done.returncode == 0, done.stderr
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(time.time() - 60 * 86400))
    when = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(time.time() - 60 * 86400))
    (tmp_path / "x").write_text("x")
    done = borg(store, store.key, attacker, "create", "--timestamp", when, f"::web1-{stamp}", "x")
    assert done.returncode == 0, done.stderr
    assert archives(store, base)[second] != before[second]

    # the pull server (forget: false) says its newest archive is gone
    said = pull("maintain", "--verify", rc=1)
    assert f"the newest snapshot this server stored ({newest}" in said, said
    assert "is gone from the repository" in said and "Rolling a borg repository back" in said
    said = pull("status", rc=1)  # the host's row needs attention, in the maintenance's words
    assert "attention" in said and "the last maintenance failed: history: the newest" in said
    assert "needs attention: web1" in said

    # the maintenance machine holds: nothing forgotten (the backdated archive is outside
    # keep_within), nothing compacted
    said = maint("--verbose", "maintain", "--no-verify", rc=1)
    assert "forget held: the snapshots changed behind this machine's back" in said, said
    assert f"1 snapshot(s) seen at the last maintenance are gone: {newest}" in said
    assert "appeared dated before the newest one seen then" in said and stamp in said
    assert f"rewritten under the same name (another archive id): {second}" in said
    assert "Rolling a borg repository back" in said
    assert "pullback-server release web1" in said
    assert "running: borg compact" not in said and "running: borg delete" not in said
    hold = maint.status()["guard_hold"]
    assert hold["kind"] == "tampered", hold
    assert f"web1-{stamp}" in archives(store, base)

    # the hold outlives a run, and still compacts nothing
    said = maint("--verbose", "maintain", "--no-verify", rc=1)
    assert "forget held since" in said and "running: borg compact" not in said, said

    # the data is still there: the pull key's transactions are rolled back on the store
    # (docs/scaling.md), and every archive is back as it was
    assert transactions(repo)[-1] > good
    rollback(repo, good)
    for machine in (pull, maint):
        shutil.rmtree(machine.root / "state" / "cache" / "borg", ignore_errors=True)
    assert archives(store, tmp_path / "after") == before

    # released, the next maintenance records what is there and forgets by the policy
    out = maint("release", "web1")
    assert "released the hold" in out, out
    maint("--verbose", "maintain", "--no-verify")
    assert "guard_hold" not in maint.status()
    pull("maintain", "--verify")


def transactions(repo: Path) -> list[int]:
    """The transactions the store's ``transactions`` log names (append-only mode writes
    it: ``transaction 12, UTC time 2026-12-04T16:20:00.000000``)."""
    text = (repo / "transactions").read_text()
    return [int(n) for n in re.findall(r"^transaction (\d+),", text, re.M)]


def rollback(repo: Path, before_attack: int) -> None:
    """docs/scaling.md, *Rolling a borg repository back*: remove the segments after the
    last good transaction, and the index, hints and integrity files."""
    for segment in (repo / "data").glob("*/*"):
        if segment.name.isdigit() and int(segment.name) > before_attack:
            segment.unlink()
    for pattern in ("index.*", "hints.*", "integrity.*"):
        for path in repo.glob(pattern):
            path.unlink()


def test_a_changed_passphrase_is_said_with_the_way_back(split, tmp_path):
    """``borg key change-passphrase`` through the append-only key: both machines then
    read "wrong password"; the words say the key may have been changed, and the key
    exported beforehand puts it back."""
    fleet, store = split
    pull, maint = two_machines(fleet, store, {"keep_last": 5})
    days(fleet, pull, 1)
    base = tmp_path / "by-hand"
    escrow = tmp_path / "web1.borg-key"
    done = borg(store, store.full_key, base, "key", "export", "::", str(escrow))
    assert done.returncode == 0, done.stderr

    done = borg(
        store, store.key, tmp_path / "attacker", "key", "change-passphrase", BORG_NEW_PASSPHRASE="x"
    )
    assert done.returncode == 0, done.stderr
    said = maint("maintain", "--no-verify", rc=1)
    assert "wrong password for the borg repository" in said, said
    assert "last changed" in said and "borg key change-passphrase" in said
    assert "borg key export" in said and "Rolling a borg repository back" in said

    done = borg(store, store.full_key, base, "key", "import", "::", str(escrow))
    assert done.returncode == 0, done.stderr
    maint("maintain", "--no-verify")
    days(fleet, pull, 1)


@pytest.mark.skipif(os.geteuid() != 0, reason="a tmpfs mount needs root")
def test_a_full_store_is_said_in_the_stores_words(split, tmp_path):
    """An outside test filled the store's disk: the pull read "borg failed on ssh://...:
    Borg server: SSH_ORIGINAL_COMMAND: 'borg serve'", the last line of the store's
    report; the error before it is said."""
    fleet, store = split
    pull, _ = two_machines(fleet, store, {"keep_last": 5})
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", store.directory], check=True)
    try:
        fleet.hosts["web1"].make_archive({"big.bin": os.urandom(6 << 20)})
        said = pull("pull", rc=1)
    finally:
        subprocess.run(["umount", store.directory], check=True)
    failed = [line for line in said.splitlines() if "borg failed on" in line]
    assert failed, said
    assert "SSH_ORIGINAL_COMMAND" not in failed[0] and "Borg server:" not in failed[0], failed
    assert "No space left on device" in failed[0] or "free space" in failed[0], failed
