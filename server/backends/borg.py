"""borg (borgbackup 1.2): one repository per host, archives named ``<host>-<stamp>``."""

from __future__ import annotations

import datetime as dt
import json
import re
import shlex
import tempfile
import time
from pathlib import Path

from ...common.errors import CommandError
from ...common.manifest import MANIFEST_NAME
from ..config import BackendConfig, HostConfig
from . import BackendError, IncompleteStore, RepositoryMissing, Snapshot, StoreResult, read_password

_WRONG_PASSWORD = ("passphrase supplied", "is incorrect")
_MISSING = ("does not exist", "is not a valid repository")


class BorgBackend:
    name = "borg"

    def __init__(self, config: BackendConfig, host: HostConfig, state_dir: Path, runner):
        self.config = config
        self.host = host
        self.runner = runner
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
            "TZ": "UTC",  # borg list prints local times; make local UTC
        }

    def _explain(self, exc: CommandError) -> BackendError:
        text = "\n".join(exc.tail)
        if all(s in text for s in _WRONG_PASSWORD):
            return BackendError(
                f"wrong password for the borg repository {self.repository()} "
                f"(password_file {self.config.password_file})"
            )
        reason = exc.tail[-1] if exc.tail else exc.reason
        return BackendError(f"borg failed on {self.repository()}: {reason}")

    def prepare(self, create: bool = True) -> None:
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
                f"the borg repository {self.repository()} does not exist and "
                "backend.init is false; create it with borg init"
            )
        try:
            self.runner.run(
                ["borg", "init", "--encryption=repokey-blake2", "--make-parent-dirs"],
                env=self._env(),
                timeout=600,
            )
        except CommandError as exc:
            raise self._explain(exc) from None

    def snapshots(self) -> list[Snapshot]:
        with tempfile.TemporaryFile() as out:
            try:
                self.runner.run(
                    ["borg", "list", "--json", "--glob-archives", f"{self.host.name}-*"],
                    env=self._env(),
                    stdout=out,
                    level=10,
                    timeout=600,
                )
            except CommandError as exc:
                raise self._explain(exc) from None
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
        argv = [
            "borg",
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
            try:
                self.runner.run(
                    argv, env=self._env(), cwd=staging, stdout=out, timeout=timeout, ok_codes=(0, 1)
                )
            except CommandError as exc:
                raise self._explain(exc) from None
            out.seek(0)
            try:
                data = json.loads(out.read())
            except ValueError:
                raise BackendError("borg create did not report the archive it made") from None
        stats = data.get("archive", {}).get("stats", {})
        result = StoreResult(
            name,
            int(stats.get("deduplicated_size", 0)),
            int(stats.get("nfiles", 0)),
            0,
            time.monotonic() - started,
        )
        if data.get("archive", {}).get("name") != name:
            raise IncompleteStore(f"borg reported an unexpected archive for {name}")
        return result
