"""Stand-ins for a repository, for unit tests of the server's per-host steps.

The integration tier runs the same steps against real restic and borg repositories; here a
repository is a list in memory, so every rule and phase can be tested in milliseconds.
"""

from __future__ import annotations

import shutil
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from pullback.common.log import PrefixAdapter, get_logger
from pullback.common.runner import Runner
from pullback.server.backends import ForgetResult, Snapshot, StoreResult
from pullback.server.config import ServerConfig
from pullback.server.host import HostContext
from pullback.server.retention import select


@dataclass
class FakeBackend:
    """A repository in memory: what the server asks of restic or borg."""

    snapshot_list: list[Snapshot] = field(default_factory=list)
    stored: list[tuple[Path, str]] = field(default_factory=list)
    trees: dict[str, Path] = field(default_factory=dict)
    """A copy of each stored staging tree, by snapshot id (what a restore gives back)."""
    unlocked: int = 0
    pruned: int = 0
    checked: list[tuple[int, int]] = field(default_factory=list)
    missing: bool = False
    fail_snapshots: BaseException | None = None
    fail_check: BaseException | None = None
    fail_store: BaseException | None = None
    store_warnings: tuple[str, ...] = ()
    """What the fake tool warns of as it stores (borg's exit 1)."""
    fail_size: BaseException | None = None
    store_timeouts: list[float] = field(default_factory=list)
    read_all: list[bool] = field(default_factory=list)
    """Each store's ``spec.read_all`` (every file read again, not the parent trusted)."""
    events: list[str] = field(default_factory=list)
    """What was asked of it, in order (a test may share the list with a fake client)."""
    copies: Path | None = None
    name: str = "fake"
    snapshots_delay: float = 0.0
    """Seconds the snapshot list takes (restic's key derivation, made visible)."""
    snapshots_answered: float | None = None
    """When (time.monotonic) the snapshot list was last answered."""
    change: object = None
    """What :meth:`changes` answers (None: a normal day)."""

    def location(self):
        from pullback.server.backends.location import Location

        return Location("memory", "memory")

    def repository(self) -> str:
        return "memory"

    def prepare(self, create: bool = True) -> None:
        if self.missing:
            from pullback.server.backends import RepositoryMissing

            raise RepositoryMissing("the fake repository memory does not exist")

    def snapshots(self) -> list[Snapshot]:
        time.sleep(self.snapshots_delay)
        self.snapshots_answered = time.monotonic()
        if self.fail_snapshots:
            raise self.fail_snapshots
        return list(self.snapshot_list)

    def store(self, staging: Path, spec, timeout: float) -> StoreResult:
        stamp, when = spec.stamp, spec.when
        self.events.append("store")
        self.store_timeouts.append(timeout)
        self.read_all.append(spec.read_all)
        if self.fail_store:
            raise self.fail_store
        manifest = (staging / "MANIFEST.sha256").read_bytes()
        self.stored.append((staging, stamp))
        snapshot_id = f"s{len(self.stored)}"
        self.snapshot_list.append(Snapshot(snapshot_id, when, stamp, spec.failed))
        if self.copies is not None:
            self.trees[snapshot_id] = self.copies / snapshot_id
            shutil.copytree(staging, self.trees[snapshot_id], symlinks=True)
        return StoreResult(snapshot_id, len(manifest), 0.1, 1000, self.store_warnings)

    def unlock(self) -> str:
        self.events.append("unlock")
        self.unlocked += 1
        return "removed 1 stale lock(s)"

    def forget(self, policy: dict, before_removing=None) -> ForgetResult:
        kept, removed = select(self.snapshot_list, policy, lambda s: s.time)
        plan = ForgetResult([s.id for s in kept], [s.id for s in removed])
        if before_removing is not None and removed:
            before_removing(plan)
        self.snapshot_list = kept
        return plan

    def prune(self) -> None:
        self.pruned += 1

    def check(self, part: int, parts: int, duration: float, extra=()) -> str:
        if self.fail_check:
            raise self.fail_check
        self.checked.append((part, parts, *extra))
        return f"fake check of part {part}/{parts}: no errors"

    def size(self) -> int:
        self.events.append("size")
        if self.fail_size:
            raise self.fail_size
        return 4096

    def changes(self, older: Snapshot, newer: Snapshot):
        """What the guard measures: ``change`` (a normal day: 2 of 1000 entries)."""
        from pullback.server.backends import Change

        self.events.append(f"changes {older.id} {newer.id}")
        return self.change or Change(1000, 20, 0, 10**9, 10**9 + 10**6)

    def restore(self, snapshot: Snapshot, target: Path, includes: list[str]) -> None:
        source = self.trees[snapshot.id]
        shutil.copytree(source, target, symlinks=True, dirs_exist_ok=True)


def fake_context(config: ServerConfig, host: str, backend) -> HostContext:
    """The context of ``host`` with ``backend`` for its repository."""
    settings = config.host(host)
    log = PrefixAdapter(get_logger("test"), settings.name)
    runner = Runner(log)
    cancel = threading.Event()
    runner.cancel = cancel
    return HostContext(config, settings, log, runner, backend, cancel)


class ScriptedRunner:
    """Stands in for the command runner in the backends' unit tests: records every argv
    and answers from a script, in order: bytes (written to the ``stdout`` file the
    backend passes) or an exception to raise. The integration tier runs the real tools."""

    def __init__(self, *answers):
        self.calls: list[list[str]] = []
        self.answers = list(answers)
        self.log = get_logger("test")
        self.cancel = None

    def run(self, argv, **kwargs):
        import shlex

        from pullback.common.runner import CommandResult

        self.calls.append([str(a) for a in argv])
        answer = self.answers.pop(0) if self.answers else b""
        if isinstance(answer, BaseException):
            raise answer
        out = kwargs.get("stdout")
        if hasattr(out, "write"):
            out.write(answer)
        return CommandResult(shlex.join(self.calls[-1]), 0, 0.01, [], 0)
