"""Real PostgreSQL and MariaDB servers in temporary data directories on free ports.

As root the servers run as the ``postgres`` / ``mysql`` users (they refuse root); the
test's own commands talk to them over TCP or their socket with real credentials.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from tests.helpers.sshd import free_port

PG_BIN = (
    Path(sorted(glob.glob("/usr/lib/postgresql/*/bin"))[-1])
    if glob.glob("/usr/lib/postgresql/*/bin")
    else None
)


def _run(argv: list, **kwargs) -> subprocess.CompletedProcess:
    """subprocess.run, output captured as text; a failure raises CalledProcessError
    noted with what the tool said (pytest shows the note: a database server that failed
    to start in CI otherwise showed only the exit status)."""
    try:
        return subprocess.run(
            [str(a) for a in argv], check=True, capture_output=True, text=True, **kwargs
        )
    except subprocess.CalledProcessError as exc:
        exc.add_note(f"stdout: {(exc.stdout or '')[-2000:]}\nstderr: {(exc.stderr or '')[-2000:]}")
        raise


def _as(user: str | None, argv: list, **kwargs):
    if user and os.geteuid() == 0:
        argv = ["runuser", "-u", user, "--", *map(str, argv)]
    return _run(argv, **kwargs)


def _owner() -> str | None:
    return None if os.geteuid() != 0 else "postgres"


def _wait(predicate, what: str, timeout: float = 30):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise RuntimeError(f"{what} did not come up")


@dataclass
class Postgres:
    """``postgres`` superuser over the socket (trust); ``backup`` over TCP (password)."""

    root: Path
    port: int = 0
    password: str = "pg-backup-Pa55"
    proc: subprocess.Popen | None = None
    auth_local: str = "trust"
    """How the socket authenticates: ``trust``, or ``peer`` as a stock Debian does."""

    def start(self) -> Postgres:
        self.port = self.port or free_port()
        self.data = self.root / "data"
        self.socket = self.root / "sock"
        user = _owner()
        if not self.data.exists():
            self.root.mkdir(parents=True, exist_ok=True)
            self.socket.mkdir(exist_ok=True)
            if user:
                shutil.chown(self.root, user)
                shutil.chown(self.socket, user)
            _as(
                user,
                [
                    PG_BIN / "initdb",
                    "-D",
                    self.data,
                    "-U",
                    "postgres",
                    f"--auth-local={self.auth_local}",
                    "--auth-host=scram-sha-256",
                    "-E",
                    "UTF8",
                    "--locale=C.UTF-8",
                ],
            )
        log = self.root / "server.log"
        argv = [
            PG_BIN / "postgres",
            "-D",
            self.data,
            "-p",
            self.port,
            "-k",
            self.socket,
            "-c",
            "listen_addresses=127.0.0.1",
            "-c",
            "fsync=off",
            "-c",
            "shared_buffers=16MB",
        ]
        if user:
            argv = ["runuser", "-u", user, "--", *argv]
        with open(log, "ab") as handle:
            self.proc = subprocess.Popen([str(a) for a in argv], stdout=handle, stderr=handle)
        _wait(lambda: (self.socket / f".s.PGSQL.{self.port}").exists(), "postgres")
        time.sleep(0.3)
        with contextlib.suppress(subprocess.CalledProcessError):
            self.sql(f"CREATE ROLE backup LOGIN SUPERUSER PASSWORD '{self.password}'")
        return self

    def sql(self, statement: str, database: str = "postgres") -> str:
        return _as(
            _owner(),
            [
                PG_BIN / "psql",
                "-X",
                "-A",
                "-t",
                "-v",
                "ON_ERROR_STOP=1",
                "-h",
                self.socket,
                "-p",
                self.port,
                "-U",
                "postgres",
                "-d",
                database,
                "-c",
                statement,
            ],
        ).stdout.strip()

    def psql_argv(self, database: str) -> list[str]:
        argv = [
            str(PG_BIN / "psql"),
            "-X",
            "-q",
            "-h",
            str(self.socket),
            "-p",
            str(self.port),
            "-U",
            "postgres",
            "-d",
            database,
        ]
        return ["runuser", "-u", "postgres", "--", *argv] if _owner() else argv

    def stop(self) -> None:
        """A fast shutdown of the postmaster itself: as root ``self.proc`` is runuser, which
        passes a SIGTERM on and then waits 2 s before it kills ("...killed."), whenever
        postgres had long ended (2 s of every test with a PostgreSQL server)."""
        if self.proc is not None and self.proc.poll() is None:
            postmaster = self._postmaster()
            if postmaster is None:
                self.proc.terminate()
            else:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(postmaster, signal.SIGINT)
            self.proc.wait(timeout=30)

    def _postmaster(self) -> int | None:
        """The postgres process runuser started (``postmaster.pid``'s first line, whose
        parent is ``self.proc``), or None."""
        if self.proc is None or _owner() is None:
            return None
        try:
            pid = int((self.data / "postmaster.pid").read_text().split()[0])
            stat = Path(f"/proc/{pid}/stat").read_text()
        except (OSError, ValueError, IndexError):
            return None
        parent = int(stat.rpartition(")")[2].split()[1])
        return pid if parent == self.proc.pid else None


@dataclass
class MariaDB:
    """root over the socket; ``backup``@127.0.0.1 over TCP with a password."""

    root: Path
    port: int = 0
    password: str = "my-backup-Pa55"
    proc: subprocess.Popen | None = None

    def start(self) -> MariaDB:
        self.port = self.port or free_port()
        self.data = self.root / "data"
        self.socket = self.root / "mysqld.sock"
        user = "mysql" if os.geteuid() == 0 else pwd.getpwuid(os.getuid()).pw_name
        fresh = not self.data.exists()
        if fresh:
            self.root.mkdir(parents=True, exist_ok=True)
            if os.geteuid() == 0:
                shutil.chown(self.root, "mysql")
            _run(
                [
                    "mariadb-install-db",
                    "--no-defaults",
                    f"--datadir={self.data}",
                    f"--user={user}",
                    "--auth-root-authentication-method=socket",
                    "--skip-test-db",
                ]
            )
        log = self.root / "server.log"
        with open(log, "ab") as handle:
            self.proc = subprocess.Popen(
                [
                    "mariadbd",
                    "--no-defaults",
                    f"--datadir={self.data}",
                    f"--socket={self.socket}",
                    f"--port={self.port}",
                    "--bind-address=127.0.0.1",
                    f"--user={user}",
                    f"--pid-file={self.root / 'mysqld.pid'}",
                    "--skip-log-bin",
                    "--innodb-buffer-pool-size=32M",
                    "--innodb-log-file-size=16M",
                    "--skip-name-resolve",
                    f"--log-error={log}",
                ],
                stdout=handle,
                stderr=handle,
            )
        _wait(lambda: self.socket.exists(), "mariadbd")
        _wait(self._ready, "mariadbd")
        if fresh:
            self.sql(
                f"CREATE USER 'backup'@'127.0.0.1' IDENTIFIED BY '{self.password}'; "
                "GRANT ALL ON *.* TO 'backup'@'127.0.0.1' WITH GRANT OPTION;"
            )
        return self

    def _ready(self) -> bool:
        try:
            self.sql("SELECT 1")
            return True
        except subprocess.CalledProcessError:
            return False

    def client_argv(self, database: str | None = None) -> list[str]:
        return [
            "mariadb",
            "--no-defaults",
            f"--socket={self.socket}",
            "-uroot",
            "--batch",
            "--skip-column-names",
            *([database] if database else []),
        ]

    def sql(self, statement: str, database: str | None = None) -> str:
        return _run([*self.client_argv(database), "-e", statement]).stdout.strip()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=60)


def as_role(pg: Postgres, role: str, statement: str, database: str = "postgres") -> str:
    """One statement run by psql as ``role`` over ``pg``'s socket (trust), outside a
    transaction block (as postgres when we are root); returns its unaligned output.
    Raises CalledProcessError."""
    assert PG_BIN is not None
    argv = [
        str(PG_BIN / "psql"), "-X", "-A", "-t", "-v", "ON_ERROR_STOP=1",
        "-h", str(pg.socket), "-p", str(pg.port), "-U", role, "-d", database,
        "-c", statement,
    ]  # fmt: skip
    if os.geteuid() == 0:
        argv = ["runuser", "-u", "postgres", "--", *argv]
    return _run(argv).stdout.strip()
