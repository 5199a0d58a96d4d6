"""The fault testbed: a netns fleet of six hosts, an SMTP sink, and the means to break it.

Used by the fault matrix (tests/integration/test_fault_matrix.py) and the soak
(tests/integration/test_soak.py). Every fault is a function ``inject(bed, host)`` that
breaks one thing at its moment, runs what suffers from it, and returns an
:class:`Outcome` (what was reported, the exit code, whether the host's archive was
stored); ``heal(bed, host)`` undoes the fault the way an administrator (or time) would.

"Killed" means SIGKILL of the process and everything it started, as systemd does to a
unit's control group (``KillMode=control-group``) or the OOM killer's cgroup kill: the
children (ssh, restic, borg) die with it.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import fcntl
import gzip
import hashlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from aiosmtpd.controller import Controller

from pullback.common.clock import STAMP_FORMAT
from tests.helpers.archives import Entry, build_tar, publish
from tests.helpers.files import sha256sum_check
from tests.helpers.http import HttpSink
from tests.helpers.netfleet import NetFleet
from tests.helpers.smtp import SmtpSink
from tests.helpers.sshd import free_port

HOSTS = [f"web{i}" for i in range(1, 7)]


def add_gate(client, gate: Path) -> None:
    """Give ``client`` a service whose dump waits while the file ``gate`` exists: it
    holds a client run in packing until the test removes ``gate``."""
    client.add_service(
        "gate",
        f"""\
        service: {{name: gate}}
        command:
          dump:
            - run: ["sh", "-c", "while [ -e {gate} ]; do sleep 0.05; done; date"]
              output: date.txt
        """,
    )


@dataclass
class Outcome:
    """What a fault did: the words reported, the exit code, and whether the host's
    newest archive ended up stored (None: either is acceptable, e.g. a kill at the very
    end of a store)."""

    report: str
    rc: int | None
    stored: bool | None = False


@dataclass(frozen=True)
class Fault:
    """One row of the matrix: the fault, how it is broken and healed, what must be said."""

    name: str
    inject: Callable[[FaultBed, str], Outcome]
    says: str
    """A regex the report must match (case-insensitive)."""
    rc: int | None
    heal: Callable[[FaultBed, str], None] | None = None
    names_host: bool = True
    """The report must name the host (not for faults of the mail or webhook server)."""


# -- processes ----------------------------------------------------------------------------


def _children() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    return children


def descendants(pid: int) -> list[int]:
    """Every process below ``pid``."""
    children, found, todo = _children(), [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return []


def find_descendant(pid: int, *words: str) -> int | None:
    """The first process below ``pid`` whose command line holds all ``words``."""
    for child in descendants(pid):
        line = " ".join(cmdline(child))
        if all(word in line for word in words):
            return child
    return None


def signal_tree(pid: int, sig: int) -> None:
    for target in [pid, *descendants(pid)]:
        with contextlib.suppress(ProcessLookupError):
            os.kill(target, sig)


def kill_tree(proc: subprocess.Popen) -> tuple[str, str]:
    """SIGKILL ``proc`` and all it started (stopped first, so nothing new is forked in
    between); return its output so far."""
    signal_tree(proc.pid, signal.SIGSTOP)
    signal_tree(proc.pid, signal.SIGSTOP)
    victims = [proc.pid, *descendants(proc.pid)]
    signal_tree(proc.pid, signal.SIGKILL)
    out, err = proc.communicate(timeout=30)
    # The orphans are reaped by PID 1; this sandbox's PID 1 does so only every second or
    # two (systemd at once). Until then restic sees its dead owner as alive: wait.
    wait_for(lambda: not any(Path(f"/proc/{pid}").exists() for pid in victims), 30, "reaping")
    return out or "", err or ""


def stop_while_locked(run: subprocess.Popen, locks: Callable[[], list], *words: str) -> None:
    """Stop ``run``'s process tree at a moment when a descendant matching ``words`` holds
    a repository lock (``locks()`` non-empty). Looking and stopping in the other order
    would race with a quick restic finishing in between."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if find_descendant(run.pid, *words):
            signal_tree(run.pid, signal.SIGSTOP)
            if locks():
                return
            signal_tree(run.pid, signal.SIGCONT)
        time.sleep(0.02)
    raise AssertionError(f"no {' '.join(words)} was caught holding its lock")


def wait_for(predicate: Callable[[], object], timeout: float, what: str) -> object:
    """Poll until ``predicate()`` is true; return its value. Fails the test on timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")


# -- mail servers that misbehave ----------------------------------------------------------


class _Slow:
    async def handle_DATA(self, server, session, envelope):
        await asyncio.sleep(60)
        return "250 OK"


class _Refusing:
    async def handle_RCPT(self, server, session, envelope, address, options):
        return "550 5.7.1 relaying denied"


def misbehaving_smtp(kind: str) -> Controller:
    """A running SMTP server that is slow (never finishes DATA) or refuses recipients."""
    handler = _Slow() if kind == "slow" else _Refusing()
    controller = Controller(handler, hostname="127.0.0.1", port=free_port())
    controller.start()
    return controller


# -- the testbed --------------------------------------------------------------------------


def _merge(base: dict, extra: dict) -> dict:
    merged = copy.deepcopy(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


@dataclass
class FaultBed:
    fleet: NetFleet
    smtp: SmtpSink
    http: HttpSink
    scratch: Path
    cleanups: list[Callable[[], None]] = field(default_factory=list)
    incremental: bool = False
    """The clients make delta archives after their first."""

    @classmethod
    def start(cls, root: Path, hosts: list[str] = HOSTS, incremental: bool = False) -> FaultBed:
        """Six hosts (``incremental``: their clients make delta archives after the
        first, so every fault meets the incremental path)."""
        fleet = NetFleet(root)
        smtp = SmtpSink().start()
        http = HttpSink(hang_seconds=60).start()
        bed = cls(fleet, smtp, http, root / "scratch", incremental=incremental)
        try:
            for name in hosts:
                host = fleet.add_host(name)
                if incremental:
                    cache = str(root / "hosts" / name / "cache")
                    host.client.write_config(incremental={"enabled": True, "cache_dir": cache})
                add_gate(host.client, bed.gate_file(name))
            bed.configure()
        except BaseException:
            bed.stop()
            raise
        return bed

    def stop(self) -> None:
        self.run_cleanups()
        with contextlib.suppress(Exception):
            self.fleet.stop()
        self.smtp.stop()
        self.http.stop()

    # -- configuration --------------------------------------------------------------------

    def base_config(self) -> dict:
        return {
            "parallel": 6,
            "host_timeout": "120s",
            "min_free_space": "1K",  # the disk-full faults fill small disks on purpose
            "lock_wait": "1s",
            "lock_retries": 1,
            # idle_timeout: six hosts' serve processes start at once on a loaded CI machine
            # (6 s was once too short for a whole `list` answer)
            "ssh": {"connect_timeout": "3s", "idle_timeout": "15s", "keepalive": "1s"},
            "maintenance": {"repository_lock_wait": "3s"},
            "retention": {"keep_last": 1000},  # every snapshot stays: losses show
            "email": {
                "smtp": {"host": "127.0.0.1", "port": self.smtp.port, "timeout": "3s"},
                "from": "pullback@server.test",
                "to": ["ops@example.test"],
                "send": "always",
            },
        }

    def configure(self, **overrides) -> None:
        """Write server.yaml: the base settings merged with ``overrides``."""
        self.fleet.extra = {}
        self.fleet.write_config(**_merge(self.base_config(), overrides))

    def on_cleanup(self, undo: Callable[[], None]) -> None:
        self.cleanups.append(undo)

    def run_cleanups(self) -> None:
        while self.cleanups:
            with contextlib.suppress(Exception):
                self.cleanups.pop()()

    def reset(self) -> None:
        """Back to a healthy fleet: undo what the last fault left, heal every network."""
        self.run_cleanups()
        for name in self.fleet.hosts:
            self.fleet.heal(name)
            self.gate(name, False)
            for leftover in self.fleet.hosts[name].data.glob("fault-*"):
                leftover.unlink()
        self.fleet.host_extra.clear()
        self.configure()

    # -- the server -----------------------------------------------------------------------

    def pull(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
        return self.fleet.server("pull", *args, timeout=timeout)

    def popen(self, *args: str) -> subprocess.Popen:
        argv = [sys.executable, "-m", "pullback.server.cli", "--config", str(self.fleet.config)]
        return subprocess.Popen(
            [*argv, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )

    def status(self, host: str) -> dict:
        result = self.fleet.server("status", "--json")
        return json.loads(result.stdout)["hosts"].get(host, {})

    def last_mail(self) -> str:
        if not self.smtp.messages:
            return ""
        message = self.smtp.messages[-1]
        return f"{message['Subject']}\n{message.get_body(('plain',)).get_content()}"

    def report(self, result: subprocess.CompletedProcess, host: str, mail: bool = True) -> str:
        """Everything an administrator sees of a pull: its log, the host's status
        reason, and the summary mail."""
        parts = [result.stderr, f"status: {self.status(host).get('reason', '')}"]
        if mail:
            parts.append(f"mail: {self.last_mail()}")
        return "\n".join(parts)

    @property
    def state(self) -> Path:
        return self.fleet.state

    def partial_bytes(self, host: str, state: Path | None = None) -> int:
        directory = (state or self.state) / "partial" / host
        return sum(p.stat().st_size for p in directory.glob("*")) if directory.exists() else 0

    # -- the clients ----------------------------------------------------------------------

    def client(self, host: str):
        return self.fleet.hosts[host].client

    def asked_full(self, host: str) -> bool:
        """Whether the server left the client its mark asking for a full archive."""
        return (self.client(host).archives / ".fetched-marks" / "want-full").exists()

    def gate_file(self, host: str) -> Path:
        return self.fleet.root / "hosts" / host / "gate"

    def gate(self, host: str, closed: bool) -> None:
        """Close the gate: the host's next client run waits in its dump until reopened."""
        if closed:
            self.gate_file(host).touch()
        else:
            self.gate_file(host).unlink(missing_ok=True)

    def new_archive(self, host: str, random_mb: float = 0, zeros_mb: float = 0) -> Path:
        """Change the host's data (optionally a big random or zero file), run the client,
        return the new archive."""
        data = self.fleet.hosts[host].data
        (data / "fault-note.txt").write_text(f"{time.time_ns()}\n")
        if random_mb:
            (data / "fault-random.bin").write_bytes(os.urandom(int(random_mb * 2**20)))
        if zeros_mb:
            (data / "fault-zeros.bin").write_bytes(bytes(int(zeros_mb * 2**20)))
        wait_for_next_second()
        return self.fleet.hosts[host].make_archive()

    def client_popen(self, host: str, *args: str) -> subprocess.Popen:
        return self.client(host).popen(*args)

    def publish_tar(self, host: str, when=None) -> Path:
        """Publish a small hand-made archive (valid sidecar) dated ``when``."""
        tar = build_tar([Entry("services/app/files/hand.txt", data=b"made by hand\n")])
        return publish(self.client(host).archives, host, tar, when)

    def gzip_twin(self, archive: Path) -> Path:
        """Publish a second archive with the same stamp (gzip instead of zstd)."""
        raw = subprocess.run(
            ["zstd", "-d", "-q", "-c", str(archive)], capture_output=True, check=True
        ).stdout
        data = gzip.compress(raw)
        twin = archive.with_name(archive.name.replace(".tar.zst", ".tar.gz"))
        twin.write_bytes(data)
        sidecar = json.loads(archive.with_name(archive.name + ".json").read_text())
        sidecar["archive"].update(
            name=twin.name,
            size=len(data),
            sha256=hashlib.sha256(data).hexdigest(),
            compression="gzip",
        )
        twin.with_name(twin.name + ".json").write_text(json.dumps(sidecar))
        return twin

    @contextlib.contextmanager
    def archive_lock_held(self, host: str):
        """Hold the client's archive-directory lock, as a publishing client does."""
        path = self.client(host).archives / ".lock"
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    # -- the repositories -----------------------------------------------------------------

    def snapshot_ids(self, host: str) -> list[str]:
        if not (self.fleet.repos / host).exists():
            return []
        out = subprocess.run(
            ["restic", "snapshots", "--json", "--no-lock"],
            env=self.fleet.repo_env(host),
            capture_output=True,
            check=True,
        ).stdout
        return [s["id"] for s in json.loads(out)]

    def restic_locks(self, host: str) -> list[str]:
        out = subprocess.run(
            ["restic", "list", "locks", "--no-lock"],
            env=self.fleet.repo_env(host),
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        return out.split()

    def verify_newest(self, host: str, target: Path) -> None:
        """Restore the newest snapshot and prove every file against its manifest."""
        top = self.fleet.restore(host, target)
        lines = (top / "MANIFEST.sha256").read_text().splitlines()
        assert lines, "the restored manifest is empty"
        sha256sum_check(top)

    # -- mounts ---------------------------------------------------------------------------

    def tmpfs(self, path: Path, size: str) -> Path:
        """A small tmpfs at ``path`` (unmounted by the next reset)."""
        path.mkdir(parents=True, exist_ok=True)
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", path], check=True)
        self.on_cleanup(lambda: subprocess.run(["umount", "-l", path], check=False))
        return path


def wait_for_next_second() -> None:
    """Archive stamps have one-second resolution: never make two in the same second."""
    now = time.time()
    time.sleep(1.02 - (now % 1))


def stamp_of(archive: Path) -> str:
    match = re.search(r"-(\d{8}T\d{6}Z)\.tar", archive.name)
    assert match, archive.name
    return match.group(1)


class SilentEndpoint:
    """A TCP listener on loopback that accepts every connection and never answers."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.held: list[socket.socket] = []
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.held.append(conn)

    def close(self) -> None:
        self.sock.close()
        for conn in self.held:
            conn.close()


def restic_children(pid: int) -> list[int]:
    """The pids of ``restic`` processes below ``pid``."""
    found = []
    for child in descendants(pid):
        try:
            if Path(f"/proc/{child}/comm").read_text().strip() == "restic":
                found.append(child)
        except OSError:
            continue
    return found


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"


@contextlib.contextmanager
def restic_of(proc: subprocess.Popen):
    """Wait (60 s at most) until ``proc`` runs restic; yield the restic pids. Whatever
    happens, ``proc`` and they are killed afterwards if still alive."""
    children: list[int] = []
    try:
        deadline = time.monotonic() + 60
        while not children and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.1)
            children = restic_children(proc.pid)
        assert children, f"restic never started: {proc.communicate(timeout=30)}"
        yield children
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for pid in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def all_gone(pids: list[int], within: float = 15.0) -> bool:
    """Whether every process of ``pids`` has ended within ``within`` seconds."""
    deadline = time.monotonic() + within
    while any(alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    return not any(alive(pid) for pid in pids)


__all__ = ["HOSTS", "STAMP_FORMAT", "Fault", "FaultBed", "Outcome"]
