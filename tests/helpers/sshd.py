"""A real OpenSSH server on loopback, with its own host key and authorized_keys.

Each client host of a test gets one: a random free port, a temporary directory, and an
``authorized_keys`` whose only entry forces ``pullback-client serve`` (docs/architecture.md,
*The serve protocol*).
"""

from __future__ import annotations

import contextlib
import getpass
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

SSHD = shutil.which("sshd") or "/usr/sbin/sshd"


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def make_key(path: Path, kind: str = "ed25519") -> Path:
    """Create an OpenSSH key pair without passphrase; return the private key path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        ["ssh-keygen", "-q", "-t", kind, "-N", "", "-C", "pullback@test", "-f", str(path)],
        check=True,
    )
    return path


def serve_command(client_config: Path, python: str = sys.executable) -> str:
    """The forced command of a client's serve endpoint, run by ``python``."""
    return f"{python} -m pullback.client.cli --config {client_config} serve"


@dataclass
class Sshd:
    """One running sshd; stop() it, or use as a context manager."""

    root: Path
    client_key_pub: Path
    forced_command: str
    address: str = "127.0.0.1"
    port: int = 0
    user: str = field(default_factory=getpass.getuser)
    plain: bool = False
    """No forced command: an ordinary login key with sftp (to compare with scp)."""
    proc: subprocess.Popen | None = None
    host_key: Path | None = None
    netns: str | None = None
    """Run inside this network namespace (``ip netns exec``), listening on its address."""

    def start(self) -> Sshd:
        self.root.mkdir(parents=True, exist_ok=True)
        self.port = self.port or free_port(self.address)
        self.host_key = self.host_key or make_key(self.root / "ssh_host_ed25519_key")
        auth = self.root / "authorized_keys"
        key = self.client_key_pub.read_text().strip()
        auth.write_text(
            f"{key}\n" if self.plain else f'restrict,command="{self.forced_command}" {key}\n'
        )
        auth.chmod(0o600)
        config = self.root / "sshd_config"
        config.write_text(
            "\n".join(
                [
                    f"ListenAddress {self.address}",
                    f"Port {self.port}",
                    f"HostKey {self.host_key}",
                    f"AuthorizedKeysFile {auth}",
                    f"PidFile {self.root / 'sshd.pid'}",
                    "UsePAM no",
                    "StrictModes no",
                    "PasswordAuthentication no",
                    "KbdInteractiveAuthentication no",
                    "PubkeyAuthentication yes",
                    "PermitRootLogin "
                    + ("prohibit-password" if self.plain else "forced-commands-only"),
                    *(["Subsystem sftp /usr/lib/openssh/sftp-server"] if self.plain else []),
                    f"AllowUsers {self.user}",
                    "LogLevel VERBOSE",
                    "MaxStartups 50",
                    "",
                ]
            )
        )
        if os.geteuid() == 0:
            Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
        with open(self.root / "sshd.log", "ab") as log:
            prefix = ["ip", "netns", "exec", self.netns] if self.netns else []
            self.proc = subprocess.Popen(
                [*prefix, SSHD, "-D", "-e", "-f", str(config)],
                stdout=subprocess.DEVNULL,
                stderr=log,
            )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with (
                contextlib.suppress(OSError),
                socket.create_connection((self.address, self.port), timeout=0.5),
            ):
                return self
            if self.proc.poll() is not None:
                raise RuntimeError(f"sshd exited: {(self.root / 'sshd.log').read_text()}")
            time.sleep(0.05)
        raise RuntimeError("sshd did not start listening")

    def known_hosts_line(self) -> str:
        key = Path(f"{self.host_key}.pub").read_text().split()
        host = self.address if self.port == 22 else f"[{self.address}]:{self.port}"
        return f"{host} {key[0]} {key[1]}\n"

    def pause(self) -> None:
        os.kill(self.proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        os.kill(self.proc.pid, signal.SIGCONT)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGCONT)
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def __enter__(self) -> Sshd:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
