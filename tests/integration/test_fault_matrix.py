"""The fault matrix: every way a backup night goes wrong, on a fleet of six netns hosts.

Each row breaks one thing at its moment and is held to the same four assertions:

1. earlier snapshots are intact: the host's snapshot list keeps every earlier snapshot
   and ``restic check`` is clean;
2. nothing partial is stored: when the archive was not stored there is no new snapshot;
   whatever was stored restores and matches its manifest;
3. the fault is reported in plain words naming the host and the cause (exit code, the
   log, ``status --json``, the summary mail; for a killed process, the next run's log);
4. the next run recovers without a human: after the fault is healed (as time or an
   administrator would), a new archive is pulled, stored exactly once, and restores.

Root only (network namespaces, tmpfs mounts); skipped with the reason otherwise.
"""

from __future__ import annotations

import datetime as dt
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers.faults import (
    HOSTS,
    Fault,
    FaultBed,
    Outcome,
    find_descendant,
    kill_tree,
    misbehaving_smtp,
    signal_tree,
    stop_while_locked,
    wait_for,
)
from tests.helpers.netfleet import unavailable_reason
from tests.helpers.sshd import free_port, make_key

pytestmark = [pytest.mark.integration, pytest.mark.fleet]


# -- the network ------------------------------------------------------------------------


def cut_mid_transfer(bed: FaultBed, host: str) -> Outcome:
    bed.new_archive(host, random_mb=6)
    bed.fleet.slow(host, "8mbit")
    run = bed.popen("pull")
    wait_for(lambda: bed.partial_bytes(host) > 1_000_000, 60, "the transfer to be under way")
    bed.fleet.cut(host)
    out, err = run.communicate(timeout=120)
    result = subprocess.CompletedProcess(run.args, run.returncode, out, err)
    assert bed.partial_bytes(host) > 1_000_000, "what arrived must be kept for resuming"
    return Outcome(bed.report(result, host), result.returncode)


def unreachable(bed: FaultBed, host: str) -> Outcome:
    bed.new_archive(host)
    bed.fleet.cut(host)
    result = bed.pull()
    return Outcome(bed.report(result, host), result.returncode)


def hung(bed: FaultBed, host: str) -> Outcome:
    bed.new_archive(host)
    bed.fleet.hang(host)
    result = bed.pull()
    return Outcome(bed.report(result, host), result.returncode)


def very_slow(bed: FaultBed, host: str) -> Outcome:
    """Every host has a new archive; the slow one cannot send its own in host_timeout."""
    for name in HOSTS:
        bed.new_archive(name, random_mb=2 if name == host else 0)
    before = {name: len(bed.snapshot_ids(name)) for name in HOSTS if name != host}
    bed.configure(host_timeout="12s")
    bed.fleet.slow(host, "256kbit")
    started = time.monotonic()
    result = bed.pull()
    took = time.monotonic() - started
    for name, count in before.items():
        assert len(bed.snapshot_ids(name)) == count + 1, f"{name} must be stored on time"
    assert took < 60, f"the slow host held the whole pull for {took:.0f}s"
    return Outcome(bed.report(result, host), result.returncode)


# -- the client -------------------------------------------------------------------------


def client_killed_while_packing(bed: FaultBed, host: str) -> Outcome:
    published = bed.client(host).published()
    bed.gate(host, True)
    run = bed.client_popen(host, "run")
    wait_for(lambda: find_descendant(run.pid, str(bed.gate_file(host))), 30, "the dump to start")
    kill_tree(run)
    bed.gate(host, False)
    assert bed.client(host).published() == published, "a killed run published something"
    return _next_client_run(bed, host)


def client_killed_while_publishing(bed: FaultBed, host: str) -> Outcome:
    published = bed.client(host).published()
    archives = bed.client(host).archives
    with bed.archive_lock_held(host):
        run = bed.client_popen(host, "run")
        wait_for(lambda: list(archives.glob(".*.json.*.partial")), 30, "the publish to start")
        kill_tree(run)
    assert bed.client(host).published() == published, "a killed publish left an archive"
    return _next_client_run(bed, host)


def stale_archive_lock(bed: FaultBed, host: str) -> Outcome:
    """A client killed while it held the archive-directory lock left its record behind."""
    script = (
        "import os, signal, sys; from pathlib import Path;"
        "from pullback.common.archive.directory import directory_lock;"
        "directory_lock(Path(sys.argv[1]), 'publishing an archive').acquire();"
        "os.kill(os.getpid(), signal.SIGKILL)"
    )
    archives = bed.client(host).archives
    subprocess.run([sys.executable, "-c", script, str(archives)], check=False)
    assert (archives / ".lock").stat().st_size > 0, "no owner record was left behind"
    first = bed.pull()
    assert "busy" not in first.stderr, "a dead owner's record must not block the server"
    client = bed.client(host).cli("run")
    assert client.returncode == 0, client.stderr
    result = bed.pull()
    return Outcome(f"{client.stderr}\n{bed.report(result, host)}", result.returncode, True)


def _client_log(bed: FaultBed, host: str) -> str:
    result = bed.client(host).cli("run")
    assert result.returncode == 0, result.stderr
    return result.stderr


def _next_client_run(bed: FaultBed, host: str) -> Outcome:
    """The next client run reports and cleans up what the killed one left."""
    before = bed.client(host).published()
    result = bed.client(host).cli("run")
    assert bed.client(host).leftovers() == []
    assert "ended before its finish (killed?): reported as a failed run" in result.stderr
    assert set(bed.client(host).published()) - set(before)  # its own archive made
    return Outcome(f"[{host}] {result.stderr}", result.returncode)


# -- the server killed ------------------------------------------------------------------


def _kill_pull_when(bed: FaultBed, host: str, ready, what: str) -> list[str]:
    before = bed.snapshot_ids(host)
    run = bed.popen("pull")
    wait_for(ready(run), 60, what)
    kill_tree(run)
    assert bed.snapshot_ids(host)[: len(before)] == before
    return before


def server_killed_while_transferring(bed: FaultBed, host: str) -> Outcome:
    bed.new_archive(host, random_mb=6)
    bed.fleet.slow(host, "16mbit")
    before = _kill_pull_when(
        bed, host, lambda run: lambda: bed.partial_bytes(host) > 1_000_000, "the transfer"
    )
    assert bed.snapshot_ids(host) == before, "a killed transfer stored something"
    bed.fleet.unslow(host)
    result = bed.pull()
    assert "resumed at" in result.stderr
    return Outcome(bed.report(result, host), result.returncode, True)


def server_stopped_while_transferring(bed: FaultBed, host: str) -> Outcome:
    """systemd stops the unit (SIGTERM) mid-transfer: the pull writes no status file, so
    until the next pull status says the host was cut short (it said "ok" before)."""
    bed.new_archive(host, random_mb=6)
    bed.fleet.slow(host, "16mbit")
    before = bed.snapshot_ids(host)
    run = bed.popen("pull")
    wait_for(lambda: bed.partial_bytes(host) > 1_000_000, 60, "the transfer")
    run.send_signal(signal.SIGTERM)
    _, err = run.communicate(timeout=120)
    assert run.returncode == 143, err  # 128 + SIGTERM
    assert bed.snapshot_ids(host) == before, "a stopped transfer stored something"
    shown = bed.fleet.server("status")
    assert shown.returncode == 1, shown
    assert f"the last pull (pid {run.pid}, started " in shown.stdout, shown
    assert "was stopped by SIGTERM while transferring" in shown.stdout, shown
    assert f"{host} (stopped by SIGTERM while transferring" in shown.stderr, shown
    bed.fleet.unslow(host)
    result = bed.pull()
    assert "resumed at" in result.stderr
    assert "cut short" not in bed.fleet.server("status").stderr  # the next pull ended it
    return Outcome(bed.report(result, host), result.returncode, True)


def server_killed_while_unpacking(bed: FaultBed, host: str) -> Outcome:
    data = bed.fleet.hosts[host].data
    for index in range(1500):
        (data / f"fault-many-{index:04d}.bin").write_bytes(os.urandom(4096))
    bed.new_archive(host)
    bed.fleet.slow(host, "16mbit")
    staging = bed.state / "staging" / host / "services" / "app" / "files"

    def unpacking(run):
        return lambda: len(list(staging.rglob("fault-many-*"))) > 100

    before = _kill_pull_when(bed, host, unpacking, "the unpack to be under way")
    assert bed.snapshot_ids(host) == before, "a killed unpack stored something"
    bed.fleet.unslow(host)
    result = bed.pull()
    return Outcome(bed.report(result, host), result.returncode, True)


def server_killed_while_storing(bed: FaultBed, host: str) -> Outcome:
    bed.new_archive(host, random_mb=40)
    before = bed.snapshot_ids(host)
    run = bed.popen("pull")
    stop_while_locked(run, lambda: bed.restic_locks(host), "restic", "backup")
    kill_tree(run)
    assert bed.snapshot_ids(host)[: len(before)] == before
    assert bed.restic_locks(host), "the killed store left no lock (the fault was not hit)"
    # before the next pull, status says what the status file cannot: the kill
    shown = bed.fleet.server("status")
    assert shown.returncode == 1, shown
    assert f"{host}: " in shown.stdout and "was killed while storing" in shown.stdout, shown
    assert f"the last pull): {host} (killed while storing)" in shown.stderr, shown
    result = bed.pull()
    assert "was killed" not in bed.fleet.server("status").stdout  # the next pull ended it
    assert not bed.restic_locks(host), f"the stale lock is still there: {result.stderr}"
    return Outcome(bed.report(result, host), result.returncode, None)


def server_killed_while_maintaining(bed: FaultBed, host: str) -> Outcome:
    run = bed.popen("maintain", "--host", host)
    stop_while_locked(run, lambda: bed.restic_locks(host), "restic")
    kill_tree(run)
    result = bed.fleet.server("maintain", "--host", host, timeout=300)
    assert not bed.restic_locks(host)
    return Outcome(f"{result.stderr}\n{result.stdout}", result.returncode)


# -- disks ------------------------------------------------------------------------------


def _small_scratch(bed: FaultBed, host: str) -> Path:
    scratch = bed.tmpfs(bed.fleet.root / f"scratch-{host}", "4m")
    bed.configure(state_dir=str(scratch))
    return scratch


def scratch_full_in_transfer(bed: FaultBed, host: str) -> Outcome:
    """Something else fills the scratch disk while the archive arrives."""
    scratch = bed.tmpfs(bed.fleet.root / f"scratch-{host}", "24m")
    bed.configure(state_dir=str(scratch))
    bed.new_archive(host, random_mb=6)
    bed.fleet.slow(host, "16mbit")
    run = bed.popen("pull")
    wait_for(lambda: bed.partial_bytes(host, scratch) > 1_000_000, 60, "the transfer")
    fill(scratch / "filler")
    out, err = run.communicate(timeout=120)
    result = subprocess.CompletedProcess(run.args, run.returncode, out, err)
    assert not bed.asked_full(host), f"its own disk made the server ask for a full archive: {err}"
    return Outcome(f"{err}\nstatus: {bed.status(host).get('reason', '')}", result.returncode)


def fill(path: Path) -> None:
    """Write zeros to ``path`` until the disk is full."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        while os.write(fd, bytes(2**16)):
            pass
    except OSError:
        pass  # ENOSPC: full
    finally:
        os.close(fd)


def _free_scratch(bed: FaultBed, host: str) -> None:
    (bed.fleet.root / f"scratch-{host}" / "filler").unlink()
    bed.fleet.unslow(host)


def scratch_full_in_unpack(bed: FaultBed, host: str) -> Outcome:
    _small_scratch(bed, host)
    archive = bed.new_archive(host, zeros_mb=32)
    assert archive.stat().st_size < 2**20, "the archive itself must fit the scratch disk"
    result = bed.pull()
    assert not bed.asked_full(host), f"its own disk made the server ask: {result.stderr}"
    return Outcome(
        result.stderr + f"\nstatus: {bed.status(host).get('reason', '')}", result.returncode
    )


def _grow_scratch(bed: FaultBed, host: str) -> None:
    scratch = bed.fleet.root / f"scratch-{host}"
    subprocess.run(["mount", "-o", "remount,size=256m", scratch], check=True)


def repository_full(bed: FaultBed, host: str) -> Outcome:
    """The repository lives on a disk with 2 MiB to spare; the new archive needs 8."""
    repo = bed.fleet.repos / host
    used = int(
        subprocess.run(["du", "-sb", repo], capture_output=True, text=True).stdout.split()[0]
    )
    disk = bed.fleet.root / f"repodisk-{host}"
    disk.mkdir()
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={used + 2 * 2**20}", "tmpfs", disk], check=True
    )
    subprocess.run(["cp", "-a", f"{repo}/.", str(disk)], check=True)
    subprocess.run(["mount", "--bind", disk, repo], check=True)

    def unmount() -> None:
        # keep what the recovery stored: copy the tmpfs back onto the real disk
        copy = bed.fleet.root / f"repocopy-{host}"
        subprocess.run(["cp", "-a", f"{repo}/.", str(copy)], check=True)
        subprocess.run(["umount", repo], check=True)
        subprocess.run(["umount", disk], check=True)
        subprocess.run(["rm", "-rf", str(repo)], check=True)
        copy.rename(repo)

    bed.on_cleanup(unmount)
    bed.new_archive(host, random_mb=8)
    result = bed.pull()
    return Outcome(bed.report(result, host), result.returncode)


def _grow_repository(bed: FaultBed, host: str) -> None:
    disk = bed.fleet.root / f"repodisk-{host}"
    subprocess.run(["mount", "-o", "remount,size=256m", disk], check=True)
    subprocess.run(["mount", "-o", "remount,size=256m", bed.fleet.repos / host], check=False)


# -- archives ---------------------------------------------------------------------------


def _damage(change):
    def inject(bed: FaultBed, host: str) -> Outcome:
        change(bed.new_archive(host, random_mb=0.5))
        result = bed.pull()
        return Outcome(bed.report(result, host), result.returncode)

    return inject


def _truncate(archive: Path) -> None:
    os.truncate(archive, archive.stat().st_size // 2)


def _flip(archive: Path) -> None:
    data = bytearray(archive.read_bytes())
    data[len(data) // 2] ^= 0xFF
    archive.write_bytes(bytes(data))


def _drop_sidecar(archive: Path) -> None:
    archive.with_name(archive.name + ".json").unlink()


def _mangle_sidecar(archive: Path) -> None:
    archive.with_name(archive.name + ".json").write_text('{"format": 1, "host": ')


def future_archive(bed: FaultBed, host: str) -> Outcome:
    when = dt.datetime.now(dt.UTC).replace(microsecond=0) + dt.timedelta(days=3)
    bed.publish_tar(host, when)
    result = bed.pull()
    return Outcome(bed.report(result, host), result.returncode)


def same_stamp(bed: FaultBed, host: str) -> Outcome:
    bed.gzip_twin(bed.new_archive(host))
    result = bed.pull()
    return Outcome(bed.report(result, host), result.returncode)


# -- repositories -----------------------------------------------------------------------


def wrong_password(bed: FaultBed, host: str) -> Outcome:
    good = bed.fleet.password_file.read_text()
    bed.fleet.password_file.write_text("not the password\n")
    bed.on_cleanup(lambda: bed.fleet.password_file.write_text(good))
    before = bed.status(host)
    assert before["snapshots"] >= 1 and not before["stale"], before
    bed.new_archive(host)
    result = bed.pull("--host", host)
    assert "not the password" not in result.stderr + bed.last_mail()
    # the snapshots could not be listed: what was known of them stands (not "none", not
    # stale, not 0 snapshots; an outside test saw all three)
    after = bed.status(host)
    assert (after["snapshots"], after["stale"]) == (before["snapshots"], False), after
    assert after["newest_snapshot"] == before["newest_snapshot"]
    assert "newest snapshot: none" not in bed.last_mail()
    assert "no snapshot has been stored yet" not in result.stderr + bed.last_mail()
    bed.run_cleanups()  # the earlier-snapshot assertions need the right password
    return Outcome(bed.report(result, host), result.returncode)


def repository_missing(bed: FaultBed, host: str) -> Outcome:
    repo = bed.fleet.repos / host
    away = repo.with_name(f"{host}.away")
    repo.rename(away)
    bed.configure(backend={"init": False})
    bed.new_archive(host)
    result = bed.pull()
    assert not repo.exists(), "init: false must not create the repository"
    away.rename(repo)  # the disk is back (e.g. the NFS mount returned)
    return Outcome(bed.report(result, host), result.returncode)


def repository_locked(bed: FaultBed, host: str) -> Outcome:
    """A live process holds the exclusive lock: ``restic key passwd`` takes it, then waits
    for the new password on a pipe nobody writes to (deterministic, unlike a stopped
    ``restic check`` that may finish first)."""
    holder = subprocess.Popen(
        ["restic", "key", "passwd"],
        env=bed.fleet.repo_env(host),
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_for(lambda: bed.restic_locks(host), 30, "restic to lock the repository")

    def release() -> None:
        holder.stdin.close()  # an empty new password: restic gives up and unlocks
        holder.wait(timeout=60)

    bed.on_cleanup(release)
    bed.new_archive(host)
    result = bed.pull()
    assert holder.poll() is None, "the lock holder ended before the pull"
    return Outcome(bed.report(result, host), result.returncode)


# -- SSH trust --------------------------------------------------------------------------


def _replace_known_hosts(bed: FaultBed, host: str, line: str | None) -> None:
    known = bed.fleet.known_hosts
    good = known.read_text()
    address = bed.fleet.hosts[host].sshd.address
    kept = [
        entry for entry in good.splitlines(keepends=True) if not entry.startswith(address + " ")
    ]
    known.write_text("".join(kept) + (line or ""))
    bed.on_cleanup(lambda: known.write_text(good))


def unknown_host_key(bed: FaultBed, host: str) -> Outcome:
    _replace_known_hosts(bed, host, None)
    bed.new_archive(host)
    result = bed.pull()
    return Outcome(bed.report(result, host), result.returncode)


def changed_host_key(bed: FaultBed, host: str) -> Outcome:
    other = make_key(bed.fleet.root / f"other-hostkey-{time.time_ns()}")
    kind, key = Path(f"{other}.pub").read_text().split()[:2]
    _replace_known_hosts(bed, host, f"{bed.fleet.hosts[host].sshd.address} {kind} {key}\n")
    bed.new_archive(host)
    result = bed.pull()
    return Outcome(bed.report(result, host), result.returncode)


def key_file_unreadable(bed: FaultBed, host: str) -> Outcome:
    """The key file holds garbage (root reads any mode, so unreadable means unusable)."""
    key = bed.fleet.key
    good = key.read_bytes()
    key.write_bytes(b"\x00garbage, not an OpenSSH key\n")
    bed.on_cleanup(lambda: key.write_bytes(good))
    bed.new_archive(host)
    result = bed.pull("--host", host)
    return Outcome(bed.report(result, host), result.returncode)


# -- mail and webhooks ------------------------------------------------------------------


def _with_smtp(bed: FaultBed, host: str, port: int) -> Outcome:
    bed.configure(email={"smtp": {"port": port}})
    bed.new_archive(host)
    started = time.monotonic()
    result = bed.pull()
    assert time.monotonic() - started < 60, "the mail server held the pull"
    return Outcome(bed.report(result, host, mail=False), result.returncode, True)


def smtp_down(bed: FaultBed, host: str) -> Outcome:
    return _with_smtp(bed, host, free_port())


def _smtp_misbehaving(kind: str):
    def inject(bed: FaultBed, host: str) -> Outcome:
        server = misbehaving_smtp(kind)
        bed.on_cleanup(server.stop)
        return _with_smtp(bed, host, server.port)

    return inject


def webhook_hanging(bed: FaultBed, host: str) -> Outcome:
    bed.fleet.host_extra[host] = {
        "notify": {"healthchecks": f"{bed.http.url}/hang/{host}", "timeout": "2s"}
    }
    bed.configure()
    bed.new_archive(host)
    started = time.monotonic()
    result = bed.pull()
    assert time.monotonic() - started < 60, "the webhook held the pull"
    return Outcome(bed.report(result, host, mail=False), result.returncode, True)


# -- running twice ----------------------------------------------------------------------


def two_pulls(bed: FaultBed, host: str) -> Outcome:
    bed.new_archive(host, random_mb=4)
    bed.fleet.slow(host, "8mbit")
    first = bed.popen("pull")
    wait_for(lambda: bed.partial_bytes(host) > 0, 60, "the first pull to be transferring")
    second = bed.pull()
    bed.fleet.unslow(host)
    _, err = first.communicate(timeout=300)
    assert first.returncode == 0, err
    return Outcome(f"[{host}] {second.stderr}", second.returncode, True)


def pull_during_maintain(bed: FaultBed, host: str) -> Outcome:
    maintain = bed.popen("maintain", "--host", host)
    wait_for(lambda: find_descendant(maintain.pid, "restic"), 120, "maintenance to start")
    signal_tree(maintain.pid, 19)  # hold it, lock and all
    bed.new_archive(host)
    try:
        result = bed.pull()
    finally:
        signal_tree(maintain.pid, 18)
        maintain.communicate(timeout=300)
    assert maintain.returncode == 0
    return Outcome(f"[{host}] {result.stderr}", result.returncode)


def two_client_runs(bed: FaultBed, host: str) -> Outcome:
    bed.gate(host, True)
    first = bed.client_popen(host, "run")
    wait_for(
        lambda: find_descendant(first.pid, str(bed.gate_file(host))), 30, "the first run to pack"
    )
    second = bed.client(host).cli("run")
    bed.gate(host, False)
    first.communicate(timeout=120)
    assert first.returncode == 0
    return Outcome(f"[{host}] {second.stderr}", second.returncode)


# -- healing ----------------------------------------------------------------------------


def reconnect(bed: FaultBed, host: str) -> None:
    bed.fleet.reconnect(host)


def wake(bed: FaultBed, host: str) -> None:
    bed.fleet.unhang(host)


def speed_up(bed: FaultBed, host: str) -> None:
    bed.fleet.unslow(host)
    bed.configure()


def undo(bed: FaultBed, host: str) -> None:
    """Put back what the fault changed (password, key, known_hosts, a lock holder)."""
    bed.run_cleanups()


def reconfigure(bed: FaultBed, host: str) -> None:
    bed.fleet.host_extra.clear()
    bed.configure()


# -- the matrix -------------------------------------------------------------------------

LEFTOVERS = r"removed leftovers of an interrupted run"
LOCKED = r"is locked by|holds the lock|another .*pull"

# fmt: off
FAULTS = [
    # the network
    Fault("connection cut mid-transfer", cut_mid_transfer,
          r"(timed out|connection|cut).*the next run resumes", 1, reconnect),
    Fault("host unreachable", unreachable, r"cannot connect to .* timed out", 1, reconnect),
    Fault("host hung (no answer at all)", hung, r"timed out|no answer", 1, wake),
    Fault("host very slow (times out alone)", very_slow,
          r"timed out after 12s \(host_timeout\)", 1, speed_up),
    # the client
    # (1: the next run reports the killed one, which told no one; its archive is made)
    Fault("client killed while packing", client_killed_while_packing, LEFTOVERS, 1),
    Fault("client killed while publishing", client_killed_while_publishing, LEFTOVERS, 1),
    Fault("stale archive lock left behind", stale_archive_lock, r"breaking stale lock", 0),
    # the server killed
    Fault("server killed while transferring", server_killed_while_transferring,
          r"killed while transferring", 0),
    Fault("server stopped (SIGTERM) while transferring", server_stopped_while_transferring,
          r"stopped by SIGTERM while transferring", 0),
    Fault("server killed while unpacking", server_killed_while_unpacking,
          r"killed while transferring and unpacking", 0),
    Fault("server killed while storing", server_killed_while_storing,
          r"killed while storing(.|\n)*removed 1 stale lock", 0),
    Fault("server killed while maintaining", server_killed_while_maintaining,
          r"removed 1 stale lock", 0),
    # disks
    Fault("scratch disk full during transfer", scratch_full_in_transfer,
          r"no space left on device", 1, _free_scratch),
    Fault("scratch disk full during unpack", scratch_full_in_unpack,
          r"no space left on device|not enough free space", 1, _grow_scratch),
    Fault("repository disk full during store", repository_full,
          r"no space left on device", 1, _grow_repository),
    # archives
    Fault("archive truncated", _damage(_truncate), r"size differs from its sidecar", 0),
    Fault("archive bytes flipped (checksum mismatch)", _damage(_flip),
          r"checksum mismatch.*nothing was stored", 1),
    Fault("sidecar missing", _damage(_drop_sidecar), r"no sidecar", 0),
    Fault("sidecar malformed", _damage(_mangle_sidecar), r"ignoring .*sidecar", 0),
    Fault("archive newer than the clock", future_archive, r"dated in the future", 0),
    Fault("two archives with the same stamp", same_stamp, r"two archives share the stamp", 0),
    # repositories
    Fault("wrong repository password", wrong_password, r"wrong password", 1),
    Fault("repository missing with init: false", repository_missing,
          r"does not exist: is its disk mounted\? \(backend.init is false", 1, reconfigure),
    Fault("repository locked by a live process", repository_locked,
          r"locked by a live process", 1, undo),
    # SSH trust
    Fault("unknown host key", unknown_host_key, r"unknown host key", 1, undo),
    Fault("changed host key", changed_host_key, r"host key .*(changed|differs)", 1, undo),
    Fault("key file unreadable", key_file_unreadable, r"cannot use the SSH key .*id_ed25519", 1,
          undo),
    # mail and webhooks: the backups go on, the failure to tell is logged
    Fault("SMTP server down", smtp_down, r"mail.*(refused|could not)", 1, reconfigure,
          names_host=False),
    Fault("SMTP server slow", _smtp_misbehaving("slow"), r"mail.*timed out", 1, reconfigure,
          names_host=False),
    Fault("SMTP server refusing", _smtp_misbehaving("refuse"), r"mail.*relaying denied", 1,
          reconfigure, names_host=False),
    Fault("webhook endpoint hanging", webhook_hanging, r"timed out", 1, reconfigure,
          names_host=False),
    # running twice
    Fault("two pulls at once", two_pulls, LOCKED, 75),
    Fault("pull during maintain", pull_during_maintain, LOCKED, 75),
    Fault("two client runs at once", two_client_runs, LOCKED, 75),
]
# fmt: on


@pytest.fixture(scope="module", params=["full", "incremental"])
def bed(tmp_path_factory, request):
    """The fleet, once with full archives every day and once with delta archives (the
    clients' ``incremental.enabled``): each fault meets both paths."""
    reason = unavailable_reason()
    if reason:
        pytest.skip(reason)
    incremental = request.param == "incremental"
    bed = FaultBed.start(tmp_path_factory.mktemp("faults"), incremental=incremental)
    try:
        for name in HOSTS:
            bed.new_archive(name)
        result = bed.pull()
        assert result.returncode == 0, result.stderr
        yield bed
    finally:
        bed.stop()


NOT_ABOUT_ARCHIVES = {
    "host unreachable",
    "host hung (no answer at all)",
    "server killed while maintaining",
    "two pulls at once",
    "wrong repository password",
    "repository missing with init: false",
    "repository locked by a live process",
    "unknown host key",
    "changed host key",
    "key file unreadable",
    "SMTP server down",
    "SMTP server slow",
    "SMTP server refusing",
    "webhook endpoint hanging",
    "pull during maintain",
    "two client runs at once",
    "stale archive lock left behind",
    "host very slow (times out alone)",
}
"""Rows whose fault never meets an archive's kind (the connection before a listing, the
pull lock, maintenance, the repository, SSH trust, mail; the client's own directory
lock; a host's time running out, which stops a delta's transfer as it stops a full
one, and a cut delta's resume has its own row): with deltas they are skipped, to keep
the matrix's time (``PULLBACK_FULL_MATRIX=1`` runs them too; all passed on 2026-11-30,
the first four on 2026-12-01; the last three ran with deltas in every CI until
2026-12-03, 8-26 s each)."""


KIND_ALIKE = {
    "server killed while storing",
    "repository disk full during store",
    "server stopped (SIGTERM) while transferring",
    "scratch disk full during transfer",
    "client killed while publishing",
}
"""Rows whose fault meets an archive where a delta and a full one take the same code: the
store from staging (a delta stored from staging after a failed store has unit tests of
its own, tests/unit/test_host_pull.py), the download's bytes (a delta's kill while
transferring and its cut transfer keep their rows), the publish. With deltas they are
skipped in CI since 2026-12-03 (about 75 s of a worker; all passed with deltas in every
CI before); ``PULLBACK_FULL_MATRIX=1`` runs them."""


@pytest.mark.parametrize("fault", FAULTS, ids=[f.name for f in FAULTS])
def test_fault(bed: FaultBed, fault: Fault, tmp_path):
    if (
        bed.incremental
        and fault.name in NOT_ABOUT_ARCHIVES | KIND_ALIKE
        and not os.environ.get("PULLBACK_FULL_MATRIX")
    ):
        pytest.skip("its fault meets no archive's kind: run once, with full archives")
    host = HOSTS[FAULTS.index(fault) % len(HOSTS)]
    bed.reset()
    try:
        before = bed.snapshot_ids(host)
        outcome = fault.inject(bed, host)

        # 3. reported in plain words, naming host and cause
        assert outcome.rc == fault.rc, outcome.report
        assert re.search(fault.says, outcome.report, re.IGNORECASE), outcome.report
        if fault.names_host:
            assert host in outcome.report, outcome.report
        if fault.heal:
            fault.heal(bed, host)
        # 1. earlier snapshots intact (checked once healed: a live lock or a wrong
        # password would stop the check itself)
        after = bed.snapshot_ids(host)
        assert after[: len(before)] == before, "an earlier snapshot was lost"
        bed.fleet.check_repository(host)
        # 2. nothing partial stored
        if outcome.stored is False:
            assert after == before, "a snapshot was stored for a failed pull"
        if len(after) > len(before):
            bed.verify_newest(host, tmp_path / "fault")
        # 4. the next run recovers without a human
        _recovers(bed, host, tmp_path / "recovered")
    finally:
        bed.reset()


def _recovers(bed: FaultBed, host: str, target: Path) -> None:
    before = bed.snapshot_ids(host)
    mails = len(bed.smtp.messages)
    archive = bed.new_archive(host)
    result = bed.pull()
    assert result.returncode == 0, result.stderr
    status = bed.status(host)
    assert status["last_result"] == "stored", status
    assert status["archive"] == archive.name
    assert bed.snapshot_ids(host)[:-1] == before and len(bed.snapshot_ids(host)) == len(before) + 1
    bed.fleet.check_repository(host)
    bed.verify_newest(host, target)
    assert len(bed.smtp.messages) > mails, "the summary mail of the recovered run is missing"
    assert bed.client(host).leftovers() == []
    assert not any((bed.state / "partial" / host).glob("*")), "a partial file was left"
