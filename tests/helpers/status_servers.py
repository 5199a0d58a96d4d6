"""Pull servers of a test: a server.yaml each (loaded), and the status file the real
writer (``status_file.record``) leaves; ``status`` runs ``pullback-server status`` in
this process."""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from pathlib import Path

from pullback.common.clock import iso, utc_now
from pullback.common.outcome import Status
from pullback.server import status_file
from pullback.server.cli import main as server_main
from pullback.server.config import ServerConfig, load_server_config
from pullback.server.results import HostResult

HOURS = 3600.0


@dataclass
class Server:
    """A pull server of the test: its server.yaml, loaded, and its status file."""

    path: Path
    config: ServerConfig

    @property
    def status(self) -> Path:
        return self.config.state_dir / status_file.STATUS_FILE

    def pulled(self, *results: HostResult) -> None:
        """What a pull records: the results, with every configured host's max_age (and
        ``enabled: false`` for a disabled one)."""
        hosts = status_file.configured(self.config.hosts)
        status_file.record(self.config.state_dir, list(results), hosts)

    def renamed(self, name: str) -> Path:
        """The status file as if written on the machine ``name`` (the writer records the
        host name of the machine it runs on, and these tests run on one)."""
        data = json.loads(self.status.read_text())
        data["server"] = name
        self.status.write_text(json.dumps(data))
        return self.status


def make_server(
    root: Path, name: str, hosts: dict[str, str | None], disabled: tuple[str, ...] = ()
) -> Server:
    """A server.yaml listing ``hosts`` (name: its own max_age, or None: the default);
    those of ``disabled`` with ``enabled: false``."""
    lines = [f"state_dir: {root / name / 'state'}", f"lock_dir: {root / name}", "hosts:"]
    for host, max_age in hosts.items():
        lines.append(f"  - name: {host}")
        if max_age:
            lines.append(f"    max_age: {max_age}")
        if host in disabled:
            lines.append("    enabled: false")
    path = root / f"{name}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return Server(path, load_server_config(path))


def stored(host: str, hours: float, reason: str = "") -> HostResult:
    """A pull of ``host`` that stored a snapshot ``hours`` ago."""
    when = iso(utc_now() - dt.timedelta(hours=hours))
    return HostResult(host, Status.STORED, reason, started=when, newest_snapshot=when)


def status(server: Server, *args: str, capsys) -> tuple[int, str, str]:
    """``pullback-server --config <server.yaml> status ARGS``, in this process."""
    code = server_main(["--config", str(server.path), "status", *args])
    out, err = capsys.readouterr()
    return code, out, err


def one_host_config(root: Path, kind: str = "restic", options: str = "") -> ServerConfig:
    """A server.yaml in ``root`` with one host, web1, and the backend ``kind`` (its
    repositories, state and a 0600 password file under ``root``; ``options``: more of
    the backend's keys, ``", key: value"``), loaded."""
    password = root / "repository.pass"
    password.write_text("correct horse\n")
    password.chmod(0o600)
    path = root / "server.yaml"
    path.write_text(
        f"state_dir: {root / 'state'}\n"
        f"backend: {{type: {kind}, repository_root: {root / 'repos'}, "
        f"password_file: {password}{options}}}\n"
        "hosts:\n  - name: web1\n"
    )
    return load_server_config(path)


def one_host_backend(root: Path, kind: str = "restic", options: str = ""):
    """The backend of web1 in :func:`one_host_config`, its repository made (lock wait
    1 s)."""
    from pullback.common.log import get_logger
    from pullback.common.runner import Runner
    from pullback.server.backends import make_backend

    config = one_host_config(root, kind, options)
    backend = make_backend(
        config.backend, config.host("web1"), config.state_dir, Runner(get_logger("t")), 1
    )
    backend.prepare(create=True)
    return backend
