"""A restic REST store on loopback: ``rclone serve restic`` (Debian's rclone package).

Two endpoints over one directory, as the split roles of docs/scaling.md set them up: an
append-only one for pulls and a full one for maintenance, each with its own user.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

MAINTAIN_SECRET = "maint-Secret-93kq"


def rclone_missing() -> str | None:
    """Why the REST tests cannot run here, or None."""
    return None if shutil.which("rclone") else "rclone is not installed (apt install rclone)"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class RestEndpoint:
    """One ``rclone serve restic`` process."""

    directory: Path
    append_only: bool
    user: str | None = None
    password: str | None = None
    port: int = field(default_factory=_free_port)
    process: subprocess.Popen | None = None

    def start(self) -> RestEndpoint:
        argv = ["rclone", "serve", "restic", str(self.directory), "--config", "/dev/null"]
        argv += ["--addr", f"127.0.0.1:{self.port}"]
        if self.append_only:
            argv.append("--append-only")
        if self.user:
            argv += ["--user", self.user, "--pass", str(self.password)]
        log = open(self.directory.parent / f"rclone-{self.port}.log", "wb")  # noqa: SIM115
        self.process = subprocess.Popen(argv, stdout=log, stderr=log)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return self
            except OSError:
                assert self.process.poll() is None, "rclone serve restic exited"
                time.sleep(0.1)
        raise AssertionError("rclone serve restic did not listen within 20 s")

    def url(self, path: str) -> str:
        """The restic repository URL of ``path`` on this endpoint (its credentials in it)."""
        auth = f"{self.user}:{self.password}@" if self.user else ""
        return f"rest:http://{auth}127.0.0.1:{self.port}/{path}/"

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)


@dataclass
class RestStore:
    """One directory of repositories behind an append-only and a full endpoint."""

    root: Path
    pull: RestEndpoint = field(init=False)
    maintain: RestEndpoint = field(init=False)

    def __post_init__(self):
        self.directory = self.root / "store"
        self.directory.mkdir(parents=True)

    def start(
        self, pull_user: str | None = None, pull_password: str | None = None, maintain_auth=True
    ) -> RestStore:
        """Start both endpoints: the pull one with the given user (none: open), the
        maintenance one as ``maintainer`` (or open)."""
        self.pull = RestEndpoint(self.directory, True, pull_user, pull_password).start()
        user, password = ("maintainer", MAINTAIN_SECRET) if maintain_auth else (None, None)
        self.maintain = RestEndpoint(self.directory, False, user, password).start()
        return self

    def stop(self) -> None:
        for endpoint in (getattr(self, "pull", None), getattr(self, "maintain", None)):
            if endpoint is not None:
                endpoint.stop()
