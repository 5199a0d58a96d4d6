"""restic: one repository per host, snapshots tagged ``pullback`` and the archive stamp."""

from __future__ import annotations

import datetime as dt
import json
import re
import tempfile
import time
from pathlib import Path

from ...common.clock import is_stamp
from ...common.errors import CommandError
from ..config import BackendConfig, HostConfig
from . import (
    BackendError,
    ForgetResult,
    IncompleteStore,
    RepositoryLocked,
    RepositoryMissing,
    Snapshot,
    StoreResult,
    directory_size,
    local_path,
    policy_arguments,
    read_password,
    within_to_restic,
)

TAG = "pullback"
_MISSING = (
    "Is there a repository at the following location?",
    "does not exist",
    "unable to open config file",
    "repository not found",
)
_WRONG_PASSWORD = ("wrong password", "no key found")
_LOCKED = "repository is already locked"
_TIME = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(\.\d+)?(Z|[+-]\d\d:\d\d)$")
_LOCK_POLL = 5.0


class ResticBackend:
    name = "restic"

    def __init__(
        self,
        config: BackendConfig,
        host: HostConfig,
        state_dir: Path,
        runner,
        lock_wait: float = 1800.0,
    ):
        self.config = config
        self.host = host
        self.runner = runner
        self.lock_wait = lock_wait
        self.cache = state_dir / "cache" / "restic"

    def repository(self) -> str:
        return self.host.repository or str(self.config.repository_root / self.host.name)

    def _env(self) -> dict[str, str]:
        read_password(self.config.password_file)  # registered as a secret; refuses a bad file
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
        if _LOCKED in text:
            holder = next((line for line in exc.tail if _LOCKED in line), "")
            return RepositoryLocked(
                f"the restic repository {self.repository()} is locked by a "
                f"live process ({holder.split(_LOCKED)[-1].strip()}); "
                f"waited {self.lock_wait:g}s"
            )
        lines = [line for line in exc.tail if line.strip()]
        reason = lines[-1] if lines else exc.reason
        return BackendError(f"restic failed on {self.repository()}: {reason}")

    def _run(self, args: list[str], **kwargs):
        """Run restic; a stale lock is removed and a live one waited for."""
        deadline = time.monotonic() + self.lock_wait
        while True:
            try:
                return self.runner.run(["restic", *args], env=self._env(), **kwargs)
            except CommandError as exc:
                if args[0] == "backup" and exc.exit_code_of_command == 3:
                    raise IncompleteStore(
                        "restic stored an incomplete snapshot: some staged files could not be read"
                    ) from None
                if _LOCKED not in "\n".join(exc.tail):
                    raise self._explain(exc) from None
                if self.unlock():
                    continue  # a stale lock is gone: try again at once
                if time.monotonic() >= deadline:
                    raise self._explain(exc) from None
                self.runner.log.info("the repository is locked by a live process; waiting")
                time.sleep(_LOCK_POLL)

    def _json(self, args: list[str], timeout: float = 3600):
        with tempfile.TemporaryFile() as out:
            self._run([*args, "--json"], stdout=out, level=10, timeout=timeout)
            out.seek(0)
            return json.loads(out.read() or b"null")

    def prepare(self, create: bool = True) -> None:
        local = local_path(self.repository())
        if local is not None and (local / "config").is_file():
            return  # no restic process (and key derivation) needed to know it exists
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
        data = self._json(["snapshots", "--host", self.host.name, "--tag", TAG], timeout=600)
        found = []
        for item in data or []:
            stamp = next((t for t in item.get("tags") or [] if is_stamp(t)), None)
            found.append(
                Snapshot(
                    item.get("short_id") or item["id"][:8],
                    parse_time(item["time"]),
                    stamp,
                    tuple(item.get("paths") or ()),
                )
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
            ran = self._run(args, cwd=staging, stdout=out, timeout=timeout)
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
            time.monotonic() - started,
            ran.peak_rss,
        )

    def _locks(self) -> list[str]:
        with tempfile.TemporaryFile() as out:
            try:
                self.runner.run(
                    ["restic", "list", "locks", "--no-lock"],
                    env=self._env(),
                    stdout=out,
                    level=10,
                    timeout=600,
                )
            except CommandError as exc:
                raise self._explain(exc) from None
            out.seek(0)
            return out.read().decode().split()

    def unlock(self) -> str:
        """``restic unlock`` removes only locks whose process is gone; it says "removed"
        either way, so the locks are counted before and after."""
        before = self._locks()
        if not before:
            return ""
        try:
            self.runner.run(
                ["restic", "unlock"], env=self._env(), stdout="/dev/null", level=10, timeout=600
            )
        except CommandError as exc:
            raise self._explain(exc) from None
        removed = len(before) - len(self._locks())
        if removed <= 0:
            return ""
        message = (
            f"removed {removed} stale lock(s) from {self.repository()} (their process is gone)"
        )
        self.runner.log.warning("%s", message)
        return message

    def forget(self, policy: dict) -> ForgetResult:
        data = self._json(
            [
                "forget",
                "--host",
                self.host.name,
                "--tag",
                TAG,
                "--group-by",
                "host",
                *policy_arguments(policy, within_to_restic),
            ]
        )
        kept, removed = [], []
        for group in data or []:
            kept += [s.get("short_id") or s["id"][:8] for s in group.get("keep") or []]
            removed += [s.get("short_id") or s["id"][:8] for s in group.get("remove") or []]
        return ForgetResult(kept, removed)

    def prune(self) -> None:
        self._run(["prune"], timeout=24 * 3600)

    def check(self, part: int, parts: int, duration: float) -> str:
        args = ["check"]
        if parts > 1:
            args.append(f"--read-data-subset={part}/{parts}")
        else:
            args.append("--read-data")
        self._run(args, stdout="/dev/null", timeout=24 * 3600)
        return f"restic check read part {part}/{parts} of the data: no errors"

    def size(self) -> int:
        local = local_path(self.repository())
        if local is not None:
            return directory_size(local)
        data = self._json(["stats", "--mode", "raw-data"])
        return int((data or {}).get("total_size", 0))

    def restore(self, snapshot: Snapshot, target: Path, includes: list[str]) -> None:
        """pullback snapshots are taken with ``backup .`` in the staging tree, so their
        root holds ``services/`` and ``MANIFEST.sha256`` and restores straight into
        ``target``."""
        args = ["restore", snapshot.id, "--target", str(target)]
        for include in includes:
            args += ["--include", f"/{include.strip('/')}"]
        self._run(args, timeout=24 * 3600)


def parse_time(text: str) -> dt.datetime:
    """restic's RFC 3339 times (nanoseconds, ``Z`` or an offset) as an aware datetime."""
    match = _TIME.match(text)
    if not match:
        raise BackendError(f"restic printed a time pullback does not understand: {text!r}")
    base, fraction, zone = match.groups()
    micro = (fraction or ".0")[1:7].ljust(6, "0")
    zone = "+00:00" if zone == "Z" else zone
    return dt.datetime.fromisoformat(f"{base}.{micro}{zone}")
