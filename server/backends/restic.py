"""restic: one repository per host, snapshots tagged ``pullback`` and the archive stamp."""

from __future__ import annotations

import datetime as dt
import json
import re
import tempfile
import time
from pathlib import Path

from ...common import secrets
from ...common.errors import CommandError
from ...common.sidecar import STAMP_FORMAT
from ..config import BackendConfig, HostConfig
from . import BackendError, IncompleteStore, RepositoryMissing, Snapshot, StoreResult, read_password

TAG = "pullback"
_MISSING = (
    "Is there a repository at the following location?",
    "does not exist",
    "unable to open config file",
    "repository not found",
)
_WRONG_PASSWORD = ("wrong password", "no key found")
_TIME = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(\.\d+)?(Z|[+-]\d\d:\d\d)$")


class ResticBackend:
    name = "restic"

    def __init__(self, config: BackendConfig, host: HostConfig, state_dir: Path, runner):
        self.config = config
        self.host = host
        self.runner = runner
        self.cache = state_dir / "cache" / "restic"

    def repository(self) -> str:
        return self.host.repository or str(self.config.repository_root / self.host.name)

    def _env(self) -> dict[str, str]:
        secrets.register(read_password(self.config.password_file))
        return {
            "RESTIC_REPOSITORY": self.repository(),
            "RESTIC_PASSWORD_FILE": str(self.config.password_file),
            "RESTIC_CACHE_DIR": str(self.cache),
            "RESTIC_PROGRESS_FPS": "0.2",
            "TZ": "UTC",  # --time is read in the local zone; make that UTC
        }

    def _explain(self, exc: CommandError) -> BackendError:
        text = "\n".join(exc.tail)
        if any(s in text for s in _WRONG_PASSWORD):
            return BackendError(
                f"wrong password for the restic repository {self.repository()} "
                f"(password_file {self.config.password_file})"
            )
        reason = exc.tail[-1] if exc.tail else exc.reason
        return BackendError(f"restic failed on {self.repository()}: {reason}")

    def _run(self, args: list[str], **kwargs):
        try:
            return self.runner.run(["restic", *args], env=self._env(), **kwargs)
        except CommandError as exc:
            raise self._explain(exc) from None

    def prepare(self, create: bool = True) -> None:
        try:
            self.runner.run(
                ["restic", "cat", "config"],
                env=self._env(),
                level=10,
                stdout="/dev/null",
                timeout=600,
            )
            return
        except CommandError as exc:
            text = "\n".join(exc.tail)
            if not any(s in text for s in _MISSING) or any(s in text for s in _WRONG_PASSWORD):
                raise self._explain(exc) from None
        if not (self.config.init and create):
            raise RepositoryMissing(
                f"the restic repository {self.repository()} does not exist "
                "and backend.init is false; create it with restic init"
            )
        if "://" not in self.repository() and ":" not in self.repository().split("/")[0]:
            Path(self.repository()).parent.mkdir(parents=True, exist_ok=True)
        self._run(["init"], timeout=600)

    def snapshots(self) -> list[Snapshot]:
        with tempfile.TemporaryFile() as out:
            self._run(
                ["snapshots", "--json", "--host", self.host.name, "--tag", TAG],
                stdout=out,
                level=10,
                timeout=600,
            )
            out.seek(0)
            data = json.loads(out.read() or b"[]")
        found = []
        for item in data or []:
            stamp = next((t for t in item.get("tags") or [] if _is_stamp(t)), None)
            found.append(
                Snapshot(item.get("short_id") or item["id"][:8], parse_time(item["time"]), stamp)
            )
        return sorted(found, key=lambda s: s.time)

    def store(self, staging: Path, stamp: str, when: dt.datetime, timeout: float) -> StoreResult:
        started = time.monotonic()
        args = [
            "backup",
            "--json",
            "--host",
            self.host.name,
            "--tag",
            TAG,
            "--tag",
            stamp,
            "--time",
            when.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S"),
            "--ignore-inode",
            ".",
        ]
        with tempfile.TemporaryFile() as out:
            try:
                self.runner.run(
                    ["restic", *args], env=self._env(), cwd=staging, stdout=out, timeout=timeout
                )
            except CommandError as exc:
                if exc.exit_code_of_command == 3:
                    raise IncompleteStore(
                        "restic stored an incomplete snapshot: some staged files could not be read"
                    ) from None
                raise self._explain(exc) from None
            out.seek(0)
            summary = {}
            for line in out.read().splitlines():
                try:
                    message = json.loads(line)
                except ValueError:
                    continue
                if message.get("message_type") == "summary":
                    summary = message
        if not summary.get("snapshot_id"):
            raise BackendError("restic did not report the snapshot it made")
        return StoreResult(
            summary["snapshot_id"][:8],
            int(summary.get("data_added", 0)),
            int(summary.get("files_new", 0)),
            int(summary.get("files_changed", 0)),
            time.monotonic() - started,
        )


def _is_stamp(text: str) -> bool:
    try:
        dt.datetime.strptime(text, STAMP_FORMAT)
        return True
    except ValueError:
        return False


def parse_time(text: str) -> dt.datetime:
    """restic's RFC 3339 times (nanoseconds, ``Z`` or an offset) as an aware datetime."""
    match = _TIME.match(text)
    if not match:
        raise BackendError(f"restic printed a time pullback does not understand: {text!r}")
    base, fraction, zone = match.groups()
    micro = (fraction or ".0")[1:7].ljust(6, "0")
    zone = "+00:00" if zone == "Z" else zone
    return dt.datetime.fromisoformat(f"{base}.{micro}{zone}")
