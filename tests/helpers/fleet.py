"""A fleet on one machine: client sandboxes behind their own sshd, and a server config.

Every client host gets a ClientSandbox and a real sshd on a loopback port whose only
authorized key forces ``pullback-client serve``. The server gets its own key, a pinned
known_hosts, a repository password file and a state directory.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from tests.helpers.client import ClientSandbox
from tests.helpers.sshd import Sshd, make_key, serve_command

PASSWORD = "correct horse battery staple 42"


@dataclass
class FleetHost:
    name: str
    client: ClientSandbox
    sshd: Sshd
    data: Path
    made_at: float = 0.0
    """When this host's last make_archive ended (its archive's stamp is no later)."""

    def make_archive(self, files: dict[str, bytes] | None = None) -> Path:
        """Write data files, run the client, return the new archive: stamped in a later
        second than the archive made before it here (archive stamps are seconds; it waits
        only what the time since then lacks, where a fixed 1.1 s sleep waited always)."""
        lacking = math.floor(self.made_at) + 1.02 - time.time()
        if lacking > 0:  # (before the files are written: they too are newer than it)
            time.sleep(lacking)
        for rel, content in (files or {}).items():
            path = self.data / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(content)
        before = set(self.client.published())
        result = self.client.cli("run")
        self.made_at = time.time()
        assert result.returncode == 0, result.stderr
        (new,) = set(self.client.published()) - before
        return new


@dataclass
class Fleet:
    root: Path
    backend: str = "restic"
    hosts: dict[str, FleetHost] = field(default_factory=dict)
    smtp_port: int | None = None
    host_extra: dict = field(default_factory=dict)

    def __post_init__(self):
        self.server_dir = self.root / "server"
        self.server_dir.mkdir(parents=True, exist_ok=True)
        self.key = make_key(self.server_dir / "id_ed25519")
        self.known_hosts = self.server_dir / "known_hosts"
        self.password_file = self.server_dir / "repository.pass"
        self.password_file.write_text(PASSWORD + "\n")
        self.password_file.chmod(0o600)
        self.repos = self.root / "repositories"
        self.state = self.root / "state"
        self.config = self.server_dir / "server.yaml"
        self.extra: dict = {}

    def add_host(self, name: str, trust: bool = True) -> FleetHost:
        client = ClientSandbox(self.root / "hosts" / name, hostname=name)
        data = self.root / "hosts" / name / "data"
        data.mkdir(parents=True)
        (data / "hello.txt").write_text(f"hello from {name}\n")
        client.add_service(
            "app",
            f"""\
            service: {{name: app}}
            files: {{paths: [{data}]}}
            """,
        )
        host = FleetHost(name, client, self.start_sshd(name, client), data)
        self.hosts[name] = host
        if trust:
            self.trust(name)
        self.write_config()
        return host

    def start_sshd(self, name: str, client: ClientSandbox) -> Sshd:
        """Start the host's sshd (here on loopback; the netns fleet overrides this)."""
        return Sshd(
            self.root / "hosts" / name / "sshd",
            Path(f"{self.key}.pub"),
            serve_command(client.config),
        ).start()

    def trust(self, name: str) -> None:
        with open(self.known_hosts, "a") as handle:
            handle.write(self.hosts[name].sshd.known_hosts_line())

    def write_config(self, **extra) -> Path:
        self.extra.update(extra)
        data = {
            "state_dir": str(self.state),
            "lock_dir": str(self.root / "run"),
            "backend": {
                "type": self.backend,
                "repository_root": str(self.repos),
                "password_file": str(self.password_file),
            },
            "ssh": {
                "key_file": str(self.key),
                "known_hosts": str(self.known_hosts),
                "connect_timeout": "10s",
                "idle_timeout": "20s",
                "keepalive": "5s",
            },
            "lock_wait": "1s",
            "lock_retries": 2,
            "min_free_space": "100M",
            "hosts": [
                {
                    "name": h.name,
                    "address": h.sshd.address,
                    "port": h.sshd.port,
                    "user": h.sshd.user,
                    **self.host_extra.get(h.name, {}),
                }
                for h in self.hosts.values()
            ],
        }
        if self.smtp_port:
            data["email"] = {
                "smtp": {"host": "127.0.0.1", "port": self.smtp_port},
                "from": "pullback@server.test",
                "to": ["ops@example.test"],
                "send": "always",
            }
        for key, value in self.extra.items():
            if isinstance(value, dict) and isinstance(data.get(key), dict):
                data[key] = {**data[key], **value}
            else:
                data[key] = value
        self.config.write_text(yaml.safe_dump(data))
        self.config.chmod(0o600)  # (as an administrator keeps it: it may hold a secret)
        return self.config

    def server(self, *args: str, timeout: float = 300, env=None):
        argv = [sys.executable, "-m", "pullback.server.cli", "--config", str(self.config), *args]
        return subprocess.run(
            argv, capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})}
        )

    def server_popen(self, *args: str):
        argv = [sys.executable, "-m", "pullback.server.cli", "--config", str(self.config), *args]
        return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def repo_env(self, name: str) -> dict:
        repo = str(self.repos / name)
        if self.backend == "restic":
            return {
                **os.environ,
                "RESTIC_REPOSITORY": repo,
                "RESTIC_PASSWORD_FILE": str(self.password_file),
                "RESTIC_CACHE_DIR": str(self.root / "restic-cache"),
            }
        return {
            **os.environ,
            "BORG_REPO": repo,
            "BORG_PASSPHRASE": PASSWORD,
            "BORG_BASE_DIR": str(self.root / "borg-base"),
        }

    def snapshots(self, name: str) -> list[dict]:
        """The snapshots (restic) or archives (borg) in a host's repository ([] while it
        has none: a repository is made with the host's first store)."""
        if not (self.repos / name).exists():
            return []
        if self.backend == "restic":
            out = subprocess.run(
                ["restic", "snapshots", "--json"],
                env=self.repo_env(name),
                capture_output=True,
                check=True,
            ).stdout
            return json.loads(out)
        out = subprocess.run(
            ["borg", "list", "--json"], env=self.repo_env(name), capture_output=True, check=True
        ).stdout
        return json.loads(out)["archives"]

    def check_repository(self, name: str, lock_wait: float = 90) -> None:
        """``restic check`` / ``borg check`` of the host's repository must pass. A lock is
        waited for up to ``lock_wait`` seconds; the failure then names the restic and borg
        processes still running. (restic 0.14 refuses its exclusive lock while any lock is
        there, a dead process's too: a soak's failure here was a killed store's lock that
        the next pull had not removed, with no restic running.)"""
        tool = ["restic", "check"] if self.backend == "restic" else ["borg", "check"]
        ends = time.monotonic() + lock_wait
        while True:
            done = subprocess.run(tool, env=self.repo_env(name), capture_output=True, text=True)
            words = f"{done.stdout}{done.stderr}"
            if done.returncode == 0 or "already locked" not in words:
                break
            if time.monotonic() > ends:
                running = subprocess.run(
                    ["ps", "-eo", "pid,ppid,etimes,args"], capture_output=True, text=True
                ).stdout
                words += "\n" + "\n".join(
                    line for line in running.splitlines() if "restic" in line or "borg" in line
                )
                break
            time.sleep(2)
        assert done.returncode == 0, f"{' '.join(tool)} of {name}: {words}"

    def restore(self, name: str, target: Path) -> Path:
        """Restore the newest snapshot; return the directory holding services/."""
        target.mkdir(parents=True, exist_ok=True)
        env = self.repo_env(name)
        if self.backend == "restic":
            subprocess.run(
                ["restic", "restore", "latest", "--target", str(target)],
                env=env,
                capture_output=True,
                check=True,
            )
            (services,) = list(target.rglob("MANIFEST.sha256"))
            return services.parent
        archive = self.snapshots(name)[-1]["name"]
        subprocess.run(
            ["borg", "extract", f"::{archive}"],
            env=env,
            cwd=target,
            capture_output=True,
            check=True,
        )
        return target

    def stop(self) -> None:
        for host in self.hosts.values():
            host.sshd.stop()
