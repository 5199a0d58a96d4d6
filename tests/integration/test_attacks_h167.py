"""helper-167, an outside attacker of the bounds docs/security.md promises against a
compromised client: a real fleet (real sshd, the client's forced command replaced by a
hostile one where said), the server's disk, its words and the fleet's other hosts.

Each test named ``test_f*`` fails while its defect exists and passes once it is fixed;
``test_held_*`` prove bounds that hold and had no test of their own.

Run: .venv/bin/python -m pytest -q -p no:cacheprovider tests/integration/test_attacks_h167.py
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import struct
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.helpers.fleet import Fleet
from tests.integration.test_hostile_archives import Corpus, zeros_under_a_wrong_manifest

pytestmark = pytest.mark.integration

MIB = 1 << 20

# A forced command that serves ``send`` of the newest archive in two parts: the bytes up
# to SPLIT, then (after a pause, never idle_timeout long) the rest. Everything else is
# the real serve.
SPLIT_SEND = """\
import os, sys, time
split, pause, config = int(sys.argv[1]), float(sys.argv[2]), sys.argv[3]
request = os.environ.get("SSH_ORIGINAL_COMMAND", "")
if request.startswith("send "):
    _, name, offset = request.split(" ")
    path = os.path.join(os.path.dirname(config), "archives", name)
    out = sys.stdout.buffer
    with open(path, "rb") as handle:
        handle.seek(int(offset))
        if int(offset) < split:
            out.write(handle.read(split - int(offset)))
            out.flush()
            time.sleep(pause)
        while True:
            data = handle.read(1 << 20)
            if not data:
                break
            out.write(data)
    out.flush()
    sys.exit(0)
os.execv(sys.executable, [sys.executable, "-m", "pullback.client.cli", "--config", config, "serve"])
"""


def skippable_frame(size: int) -> bytes:
    """A zstd skippable frame of ``size`` bytes of content: zstd -d passes over it, so
    nothing of it is ever unpacked (nor counted after the end-of-archive marker)."""
    return struct.pack("<II", 0x184D2A50, size) + bytes(size)


def hostile_forced_command(fleet: Fleet, name: str, script: str, *args: str) -> None:
    host = fleet.hosts[name]
    path = fleet.root / f"{name}-serve.py"
    path.write_text(script)
    host.sshd.stop()
    host.sshd.forced_command = f"{sys.executable} {path} {' '.join(args)} {host.client.config}"
    host.sshd.start()


def reseal(archive: Path) -> None:
    """Make the sidecar announce the archive's bytes as they are now."""
    sidecar = archive.with_name(archive.name + ".json")
    data = json.loads(sidecar.read_text())
    data["archive"]["size"] = archive.stat().st_size
    data["archive"]["sha256"] = hashlib.sha256(archive.read_bytes()).hexdigest()
    sidecar.write_text(json.dumps(data))


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a small tmpfs needs root")
def test_f1_a_download_cannot_take_the_servers_disk_below_min_free_space(tmp_path, tmpfs):
    """security.md: "a download must leave min_free_space (2G) free, and so must
    unpacking". The download's look is made once, before its first byte, against the
    disk as it is then; the unpacker's looks count what it writes, not what the download
    has still to write. An archive whose first zstd frame unpacks to 200 MiB of zeros
    (a few KiB on the wire) and whose tail is 240 MiB of skippable frames (never
    unpacked) passes both looks and fills the disk to its last byte."""
    state = tmpfs(tmp_path / "state", "size=400m")
    fleet = Fleet(tmp_path / "fleet")
    fleet.state = state
    try:
        corpus = Corpus(fleet, count=1)
        fleet.write_config(parallel=1, min_free_space="100M", max_unpacked_size="1G")
        archive = corpus.publish_stream("h0", zeros_under_a_wrong_manifest(200 * MIB))
        split = archive.stat().st_size
        with open(archive, "ab") as out:
            out.write(skippable_frame(240 * MIB))
        reseal(archive)
        hostile_forced_command(fleet, "h0", SPLIT_SEND, str(split), "5")
        pulled = corpus.pull(["h0"])
        result = pulled.result("h0")
        assert result.startswith("failed: "), pulled.stderr[-3000:]
        assert "No space left on device" not in pulled.stderr, result
        assert "min_free_space" in result, result
    finally:
        fleet.stop()


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a small tmpfs needs root")
def test_f1_a_download_keeps_min_free_space_when_others_write_beside_it(tmp_path, tmpfs):
    """The download's own looks (every 64 MiB, helper-167 F1 mended): a disk that another
    writer fills while an archive arrives (here the test, during the client's pause; in
    life another host's pull) stops the download before it takes min_free_space; the
    first look alone, before its first byte, let it run on."""
    state = tmpfs(tmp_path / "state", "size=400m")
    fleet = Fleet(tmp_path / "fleet")
    fleet.state = state
    try:
        corpus = Corpus(fleet, count=1)
        fleet.write_config(parallel=1, min_free_space="100M", max_unpacked_size="1G")
        archive = corpus.publish_stream("h0", zeros_under_a_wrong_manifest(MIB))
        with open(archive, "ab") as out:
            out.write(skippable_frame(200 * MIB))
        reseal(archive)
        split = 8 * MIB
        hostile_forced_command(fleet, "h0", SPLIT_SEND, str(split), "6")
        proc = fleet.server_popen("pull", "--host", "h0")
        partial = state / "partial" / "h0" / archive.name
        for _ in range(240):
            if partial.exists() and partial.stat().st_size >= split:
                break
            time.sleep(0.05)
        assert partial.exists() and partial.stat().st_size >= split
        (state / "filler").write_bytes(bytes(150 * MIB))  # another writer, during the pause
        _, err = proc.communicate(timeout=120)
        result = next(line for line in err.splitlines() if "[h0] failed:" in line)
        assert "still to come and 100.0 MiB kept free (min_free_space)" in result, err[-3000:]
        assert "No space left on device" not in err
        assert not partial.exists()  # (removed: nothing of it was good)
    finally:
        fleet.stop()


# -- F2: one hostile host holds the whole fleet's status, metrics and next runs --------

HOSTILE_SEND = Path(__file__).parents[1] / "helpers" / "hostile_send.py"
FLEET_HOST_TIMEOUT = 45
GOOD = ("good1", "good2")


def _stored(fleet: Fleet, name: str) -> bool:
    """Whether ``name``'s restic repository holds a snapshot (its file: no restic run
    that a repository being made would fail)."""
    snapshots = fleet.repos / name / "snapshots"
    return snapshots.is_dir() and any(snapshots.iterdir())


def _status_hosts(fleet: Fleet) -> dict:
    try:
        return json.loads((fleet.state / "status.json").read_text()).get("hosts", {})
    except FileNotFoundError:
        return {}


def test_f2_a_trickling_host_does_not_hold_the_other_hosts_results_until_its_deadline(tmp_path):
    """security.md: a compromised client cannot "hold the pull, or the fleet's next runs";
    "A hostile host holds one of the `parallel` slots for up to `host_timeout` (6 h)".
    It holds more than a slot: status.json, the metrics file and the status page are
    written only when the last host's pull ends, so while one client trickles its archive
    (a byte every half second) the hosts already stored show last night's results (or
    none), for up to host_timeout; monitoring.md's PullbackMetricsNotWritten (2 h) fires
    on every such night, and the hourly `pull --if-due` cannot run (the lock is held)."""
    fleet = Fleet(tmp_path / "fleet")
    try:
        for name in ("good1", "good2"):
            fleet.add_host(name).make_archive()
        evil = fleet.add_host("evil")
        evil.make_archive()
        evil.sshd.stop()
        evil.sshd.forced_command = (
            f"{sys.executable} {HOSTILE_SEND} trickle-send {evil.client.config}"
        )
        evil.sshd.start()
        fleet.write_config(
            host_timeout=f"{FLEET_HOST_TIMEOUT}s",
            parallel=3,
            metrics_file=str(tmp_path / "pullback.prom"),
            status_page=str(tmp_path / "status.html"),
        )
        proc = fleet.server_popen("pull")
        try:
            # the good hosts are stored within seconds; the evil one trickles
            for _ in range(FLEET_HOST_TIMEOUT * 4):
                if all(_stored(fleet, n) for n in ("good1", "good2")):
                    break
                if proc.poll() is not None:
                    break
                time.sleep(0.25)
            assert proc.poll() is None, "the pull ended: the trickle did not hold it"
            assert all(_stored(fleet, n) for n in ("good1", "good2"))
            # each host is recorded as its pull ends, the metrics and the page written
            # again within PUBLISH_EVERY (10 s) of it while others run
            metrics, page = tmp_path / "pullback.prom", tmp_path / "status.html"
            for _ in range(120):
                hosts = _status_hosts(fleet)
                said = metrics.read_text() if metrics.exists() else ""
                shown = page.read_text() if page.exists() else ""  # (written after the metrics)
                if all(f'pullback_last_attempt_ok{{host="{n}"}} 1' in said for n in GOOD) and all(
                    n in shown for n in GOOD
                ):
                    break
                time.sleep(0.25)
            still_running = proc.poll() is None
            hourly = fleet.server("pull", "--if-due", timeout=60)
        finally:
            proc.terminate()
            _, err = proc.communicate(timeout=120)
        assert still_running, err[-3000:]
        for name in GOOD:
            assert hosts.get(name, {}).get("last_result") == "stored", hosts
            assert f'pullback_last_attempt_ok{{host="{name}"}} 1' in said, said
            assert name in shown, err[-3000:]
        assert "evil" not in hosts  # (its pull is running: nothing to record yet)
        # the timer's next run waits for this one: the lock's exit 75, which the unit
        # counts as success (SuccessExitStatus=75), naming the running pull
        assert hourly.returncode == 75, hourly.stderr
        assert "(pullback-server pull)" in hourly.stderr
    finally:
        fleet.stop()


# -- F3: the reason of a resume that brought nothing says the opposite of what was done --

HOSTILE_SERVE = Path(__file__).parents[1] / "helpers" / "hostile_serve.py"


def test_f3_a_dropped_partial_download_is_not_reported_as_kept(tmp_path):
    """A client that always stops one byte short: the first pull keeps what arrived; the
    second resumes, gets nothing new, and removes the partial download (security.md: "a
    partial download is dropped when a resume brings nothing new"). Its reason, in the
    log, the mail and status.json, then says both: "...so the partial download was
    removed; what arrived is kept and the next run resumes"."""
    fleet = Fleet(tmp_path / "fleet")
    try:
        host = fleet.add_host("evil")
        host.make_archive({"big.bin": os.urandom(2 * MIB)})
        host.sshd.stop()
        host.sshd.forced_command = (
            f"{sys.executable} {HOSTILE_SERVE} short-send {host.client.config}"
        )
        host.sshd.start()
        partial = fleet.state / "partial" / "evil"
        first = fleet.server("pull", timeout=120)
        assert first.returncode == 1, first.stderr
        assert any(p.stat().st_size for p in partial.iterdir() if not p.name.endswith(".started"))
        second = fleet.server("pull", timeout=120)
        assert second.returncode == 1, second.stderr
        assert not [p for p in partial.iterdir() if not p.name.endswith(".started")], second.stderr
        reason = _status_hosts(fleet)["evil"]["reason"]
        assert "partial download was removed" in reason, reason
        assert "what arrived is kept" not in reason, reason
    finally:
        fleet.stop()


# -- held: an SSH identification line trickled a byte at a time ends at connect_timeout --


class TricklingBanner:
    """A TCP server on loopback that answers every connection with one byte every
    ``every`` seconds, never a newline: an identification line that never ends (a
    compromised client's root runs whatever listens on its SSH port)."""

    def __init__(self, every: float = 1.0):
        self.every = every
        self.stop = threading.Event()
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            threading.Thread(target=self._trickle, args=(conn,), daemon=True).start()

    def _trickle(self, conn: socket.socket) -> None:
        with conn:
            while not self.stop.wait(self.every):
                try:
                    conn.sendall(b"x")
                except OSError:
                    return

    def close(self) -> None:
        self.stop.set()
        self.sock.close()


def test_held_an_identification_line_trickled_ends_at_connect_timeout(tmp_path):
    """configuration.md: ssh.connect_timeout is the "Longest wait for a client to answer
    a connection"; reliability.md: "the SSH banner never comes; the host fails after
    ssh.connect_timeout". paramiko's banner_timeout bounds each read of the line, not
    the line; the negotiation's own timeout (start_client) bounds the whole: "no SSH
    answer within 5s (timed out)", not host_timeout. (Held; no test had a banner that
    comes, but never ends.)"""
    banner = TricklingBanner()
    fleet = Fleet(tmp_path / "fleet")
    try:
        fleet.add_host("good").make_archive()
        fleet.add_host("evil").make_archive()
        fleet.host_extra["evil"] = {"port": banner.port}
        fleet.write_config(host_timeout="40s", ssh={"connect_timeout": "5s"})
        result = fleet.server("pull", timeout=200)
        assert "[good] stored" in result.stderr, result.stderr[-3000:]
        line = next(x for x in result.stderr.splitlines() if "[evil] failed:" in x)
        assert "host_timeout" not in line, line
        assert "5s" in line or "timed out" in line, line
    finally:
        fleet.stop()
        banner.close()


# -- F4: a partial download the host never fetches again is kept for ever ---------------


def _partials(fleet: Fleet, host: str) -> list[Path]:
    where = fleet.state / "partial" / host
    if not where.exists():
        return []
    return [p for p in where.iterdir() if not p.name.endswith(".started")]


def _serve_as(host, helper: Path, mode: str) -> None:
    host.sshd.stop()
    host.sshd.forced_command = f"{sys.executable} {helper} {mode} {host.client.config}"
    host.sshd.start()


def test_f4_a_partial_download_is_dropped_after_partial_max_age_even_unfetched(tmp_path):
    """security.md: "a partial download is dropped when a resume brings nothing new, or
    `partial_max_age` (3 days) after its first byte"; server.yaml's schema: "older than
    this is removed at the host's next pull". Only a fetch of the same host looks at its
    partial downloads (transfer._open_partial): a client that cuts its transfer one byte
    short and then fails every pull before a fetch (here: a listing naming another host)
    keeps what it sent, up to max_archive_size (512G), on the server's disk for ever,
    while its staging tree was emptied "so a failed host keeps no space from the
    others"."""
    fleet = Fleet(tmp_path / "fleet")
    try:
        evil = fleet.add_host("evil")
        evil.make_archive({"big.bin": os.urandom(4 * MIB)})
        _serve_as(evil, HOSTILE_SERVE, "short-send")
        first = fleet.server("pull", timeout=120)
        assert first.returncode == 1, first.stderr
        kept = _partials(fleet, "evil")
        assert kept and kept[0].stat().st_size > 3 * MIB, first.stderr
        fleet.write_config(partial_max_age="1s")
        time.sleep(2.5)  # (past partial_max_age: the bound is what is tested)
        _serve_as(evil, HOSTILE_SERVE, "forged-host")
        for _night in range(2):
            pulled = fleet.server("pull", timeout=120)
            assert pulled.returncode == 1, pulled.stderr
        assert not _partials(fleet, "evil"), [(p.name, p.stat().st_size) for p in kept]
    finally:
        fleet.stop()


# -- held: a send trickled a byte every half second ends at host_timeout ----------------

TRICKLE_HOST_TIMEOUT = 20


def test_held_a_trickled_send_ends_at_host_timeout_and_is_reported(tmp_path):
    """security.md: each host's pull "ends itself at `host_timeout`"; the run "always
    writes status". A send's bytes are never idle for idle_timeout when they come a byte
    every half second, so only host_timeout ends it (hostile_send.py's trickle-send had
    no test): the other host is stored, and status.json and the metrics say the evil
    host failed, in words that name the deadline. (The subprocess timeout is the guard:
    host_timeout, the 30 s kill, and slack.)"""
    fleet = Fleet(tmp_path / "fleet")
    try:
        fleet.add_host("good").make_archive()
        evil = fleet.add_host("evil")
        evil.make_archive()
        _serve_as(evil, HOSTILE_SEND, "trickle-send")
        prom = tmp_path / "pullback.prom"
        fleet.write_config(
            host_timeout=f"{TRICKLE_HOST_TIMEOUT}s", parallel=2, metrics_file=str(prom)
        )
        result = fleet.server("pull", timeout=TRICKLE_HOST_TIMEOUT + 30 + 90)
        assert result.returncode == 1, result.stderr[-3000:]
        assert "[good] stored" in result.stderr
        hosts = _status_hosts(fleet)
        assert hosts["good"]["last_result"] == "stored"
        assert hosts["evil"]["last_result"] == "failed"
        assert "host_timeout" in hosts["evil"]["reason"], hosts["evil"]["reason"]
        said = prom.read_text()
        assert 'pullback_last_attempt_ok{host="evil"} 0' in said, said
        assert 'pullback_last_attempt_ok{host="good"} 1' in said, said
    finally:
        fleet.stop()


# -- held: a resumed transfer cannot grow the partial download past the archive ---------

OVERFLOW_ON_RESUME = """\
import os, sys
config = sys.argv[1]
request = os.environ.get("SSH_ORIGINAL_COMMAND", "")
if request == "session":  # (refused as an older client does: every request alone)
    sys.stderr.write("refused request 'session': unknown request\\n")
    sys.exit(2)
if request.startswith("send "):
    _, name, offset = request.split(" ")
    path = os.path.join(os.path.dirname(config), "archives", name)
    with open(path, "rb") as handle:
        handle.seek(int(offset))
        data = handle.read()
    out = sys.stdout.buffer
    if int(offset) == 0:
        out.write(data[: len(data) // 2])  # cut: half kept for the resume
    else:
        out.write(data + b"\\0" * (1 << 20))  # the rest, and a MiB past the archive's end
    out.flush()
    sys.exit(0)
os.execv(sys.executable, [sys.executable, "-m", "pullback.client.cli", "--config", config, "serve"])
"""


def test_held_a_resume_cannot_grow_the_partial_download_past_the_archive(tmp_path):
    """The brief's resume question: a cut transfer resumed with more bytes than the
    sidecar announced is refused ("the client sent more than the N bytes its sidecar
    announced"), the partial download and staging are emptied, and the next honest pull
    stores the archive."""
    fleet = Fleet(tmp_path / "fleet")
    try:
        evil = fleet.add_host("evil")
        evil.make_archive({"big.bin": os.urandom(4 * MIB)})
        script = tmp_path / "overflow.py"
        script.write_text(OVERFLOW_ON_RESUME)
        evil.sshd.stop()
        evil.sshd.forced_command = f"{sys.executable} {script} {evil.client.config}"
        evil.sshd.start()
        first = fleet.server("pull", timeout=120)
        assert first.returncode == 1, first.stderr
        assert _partials(fleet, "evil"), first.stderr
        second = fleet.server("pull", timeout=120)
        assert second.returncode == 1, second.stderr
        reason = _status_hosts(fleet)["evil"]["reason"]
        assert "the client sent more than the" in reason, reason
        assert not _partials(fleet, "evil")
        staging = fleet.state / "staging" / "evil"
        assert not staging.exists() or not any(staging.iterdir())
        _serve_as_real(evil)
        third = fleet.server("pull", timeout=120)
        assert third.returncode == 0, third.stderr
        assert len(fleet.snapshots("evil")) == 1
    finally:
        fleet.stop()


def _serve_as_real(host) -> None:
    from tests.helpers.sshd import serve_command

    host.sshd.stop()
    host.sshd.forced_command = serve_command(host.client.config)
    host.sshd.start()
