"""borg (borgbackup 1.2): one repository per host, archives named ``<host>-<stamp>``."""

from __future__ import annotations

import datetime as dt
import json
import re
import shlex
import tempfile
import time
from pathlib import Path

from ...common.archive.manifest import MANIFEST_NAME
from ...common.errors import CommandError
from ..config import BackendConfig, HostConfig
from ..retention import select
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
    read_password,
)

_WRONG_PASSWORD = ("passphrase supplied", "is incorrect")
_MISSING = ("does not exist", "is not a valid repository")
_LOCKED = ("Failed to create/acquire the lock", "lock.exclusive")


class BorgBackend:
    name = "borg"

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
        self.base = state_dir / "cache" / "borg"
        self._name = re.compile(rf"^{re.escape(host.name)}-(\d{{8}}T\d{{6}}Z)$")

    def repository(self) -> str:
        return self.host.repository or str(self.config.repository_root / self.host.name)

    def _env(self) -> dict[str, str]:
        read_password(self.config.password_file)  # refuses a missing or exposed file
        return {
            "BORG_REPO": self.repository(),
            "BORG_PASSCOMMAND": f"head -n 1 {shlex.quote(str(self.config.password_file))}",
            "BORG_BASE_DIR": str(self.base),
            "BORG_RELOCATED_REPO_ACCESS_IS_OK": "no",
            "BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK": "no",
            # locks of dead processes on this host are stale and removed by borg itself
            "BORG_HOSTNAME_IS_UNIQUE": "yes",
            "TZ": "UTC",  # borg list prints local times; make local UTC
        }

    def _explain(self, exc: CommandError) -> BackendError:
        text = "\n".join(exc.tail)
        if all(s in text for s in _WRONG_PASSWORD):
            return BackendError(
                f"wrong password for the borg repository {self.repository()} "
                f"(password_file {self.config.password_file})"
            )
        if any(s in text for s in _LOCKED):
            return RepositoryLocked(
                f"the borg repository {self.repository()} is locked by a "
                f"live process; waited {self.lock_wait:g}s"
            )
        lines = [line for line in exc.tail if line.strip()]
        reason = lines[-1] if lines else exc.reason
        return BackendError(f"borg failed on {self.repository()}: {reason}")

    def _run(self, args: list[str], **kwargs):
        argv = ["borg", args[0], "--lock-wait", str(int(self.lock_wait)), *args[1:]]
        try:
            return self.runner.run(argv, env=self._env(), **kwargs)
        except CommandError as exc:
            raise self._explain(exc) from None

    def prepare(self, create: bool = True) -> None:
        local = local_path(self.repository())
        if local is not None and (local / "config").is_file():
            return
        try:
            self.runner.run(
                ["borg", "info", "--json"],
                env=self._env(),
                level=10,
                stdout="/dev/null",
                timeout=600,
            )
            return
        except CommandError as exc:
            text = "\n".join(exc.tail)
            if not any(s in text for s in _MISSING):
                raise self._explain(exc) from None
        if not (self.config.init and create):
            raise RepositoryMissing(
                f"the borg repository {self.repository()} does not exist "
                "and backend.init is false; create it with borg init"
            )
        self._run(["init", "--encryption=repokey-blake2", "--make-parent-dirs"], timeout=600)

    def snapshots(self) -> list[Snapshot]:
        with tempfile.TemporaryFile() as out:
            self._run(
                ["list", "--json", "--glob-archives", f"{self.host.name}-*"],
                stdout=out,
                level=10,
                timeout=600,
            )
            out.seek(0)
            data = json.loads(out.read() or b"{}")
        found = []
        for item in data.get("archives", []):
            match = self._name.match(item["name"])
            if not match:
                continue
            when = dt.datetime.fromisoformat(item["start"]).replace(tzinfo=dt.UTC)
            found.append(Snapshot(item["name"], when, match[1]))
        return sorted(found, key=lambda s: s.time)

    def store(self, staging: Path, stamp: str, when: dt.datetime, timeout: float) -> StoreResult:
        started = time.monotonic()
        name = f"{self.host.name}-{stamp}"
        args = [
            "create",
            "--json",
            "--files-cache=ctime,size",
            "--timestamp",
            when.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S"),
            f"::{name}",
            "services",
            MANIFEST_NAME,
        ]
        with tempfile.TemporaryFile() as out:
            ran = self._run(args, cwd=staging, stdout=out, timeout=timeout, ok_codes=(0, 1))
            out.seek(0)
            try:
                data = json.loads(out.read())
            except ValueError:
                raise BackendError("borg create did not report the archive it made") from None
        stats = data.get("archive", {}).get("stats", {})
        if data.get("archive", {}).get("name") != name:
            raise IncompleteStore(f"borg reported an unexpected archive for {name}")
        return StoreResult(
            name,
            int(stats.get("deduplicated_size", 0)),
            time.monotonic() - started,
            ran.peak_rss,
        )

    def unlock(self) -> str:
        return ""  # borg removes a dead process's lock itself (BORG_HOSTNAME_IS_UNIQUE)

    def forget(self, policy: dict) -> ForgetResult:
        """pullback's retention rules (restic's), then ``borg delete`` of the rest."""
        try:
            kept, removed = select(self.snapshots(), policy, lambda s: s.time)
        except ValueError as exc:
            raise BackendError(str(exc)) from None
        for start in range(0, len(removed), 50):
            batch = [s.id for s in removed[start : start + 50]]
            self._run(["delete", f"::{batch[0]}", *batch[1:]], timeout=24 * 3600)
        return ForgetResult([s.id for s in kept], [s.id for s in removed])

    def prune(self) -> None:
        self._run(["compact"], timeout=24 * 3600)

    def check(self, part: int, parts: int, duration: float) -> str:
        self._run(
            ["check", "--repository-only", "--max-duration", str(int(duration))],
            timeout=duration + 3600,
        )
        self._run(["check", "--archives-only", "--last", "1"], timeout=24 * 3600)
        return (
            f"borg check: repository checked for up to {int(duration)}s (resuming where "
            "the last one stopped), newest archive consistent"
        )

    def size(self) -> int:
        local = local_path(self.repository())
        if local is not None:
            return directory_size(local)
        with tempfile.TemporaryFile() as out:
            self._run(["info", "--json"], stdout=out, level=10, timeout=3600)
            out.seek(0)
            data = json.loads(out.read() or b"{}")
        return int(data.get("cache", {}).get("stats", {}).get("unique_csize", 0))

    def restore(self, snapshot: Snapshot, target: Path, includes: list[str]) -> None:
        self._run(["extract", f"::{snapshot.id}", *includes], cwd=target, timeout=24 * 3600)
