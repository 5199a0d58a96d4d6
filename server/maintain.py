"""``pullback-server maintain``: per host, forget by the retention policy, prune, check a
rotating part of the data, and run the restore drill when it is due.

It shares the pull's instance lock (waiting ``maintenance.wait_for_pull`` for a running
pull), so the two never work on a repository at the same time.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from ..common.clock import parse_iso, utc_now
from ..common.errors import EXIT_FAILED, EXIT_OK, Interrupted, PullbackError
from ..common.fsutil import atomic_write
from ..common.locks import FileLock
from ..common.log import PrefixAdapter, get_logger
from ..common.notify import Notifier
from ..common.outcome import Status
from ..common.runner import Runner
from ..common.signals import SignalGuard
from ..common.units import human_size
from . import status_file
from .backends import RepositoryMissing, make_backend
from .config import HostConfig, ServerConfig
from .drill import DrillResult, drill
from .pull import INSTANCE_LOCK

log = get_logger("maintain")
ROTATION_FILE = "maintenance.json"


@dataclass
class Step:
    name: str
    ok: bool
    detail: str


@dataclass
class MaintainResult:
    host: str
    status: Status = Status.OK  # ok | failed | skipped
    steps: list[Step] = field(default_factory=list)
    repository_size: int | None = None
    forgotten: int = 0
    drill: DrillResult | None = None
    duration: float = 0.0

    @property
    def reason(self) -> str:
        failed = [s for s in self.steps if not s.ok]
        return "; ".join(f"{s.name}: {s.detail}" for s in failed) or "; ".join(
            f"{s.name}: {s.detail}" for s in self.steps[-1:]
        )

    @property
    def is_problem(self) -> bool:
        return self.status == Status.FAILED


def _rotation(config: ServerConfig) -> dict:
    try:
        return json.loads((config.state_dir / ROTATION_FILE).read_text())
    except (FileNotFoundError, ValueError):
        return {}


def drill_due(config: ServerConfig, host: HostConfig, now: dt.datetime) -> bool:
    entry = status_file.load_status(config.state_dir)["hosts"].get(host.name, {})
    last = entry.get("last_verified_attempt")
    if not last:
        return True
    then = parse_iso(last)
    return (now - then).total_seconds() >= host.verify_every


def maintain_host(
    config: ServerConfig,
    host: HostConfig,
    part: int,
    cancel: threading.Event,
    verify: bool | None = None,
) -> MaintainResult:
    """Maintain one host's repository; never raises (except Interrupted)."""
    started = time.monotonic()
    result = MaintainResult(host.name)
    hlog = PrefixAdapter(log, host.name)
    runner = Runner(hlog)
    runner.cancel = cancel
    backend = make_backend(
        config.backend, host, config.state_dir, runner, config.maintenance.repository_lock_wait
    )

    def step(name: str, action):
        try:
            detail = action()
            result.steps.append(Step(name, True, detail))
            hlog.info("%s: %s", name, detail)
            return True
        except Interrupted:
            raise
        except PullbackError as exc:
            result.steps.append(Step(name, False, str(exc)))
            result.status = Status.FAILED
            hlog.error("%s failed: %s", name, exc)
            return False

    try:
        try:
            backend.prepare(create=False)
        except RepositoryMissing:
            result.status = Status.SKIPPED
            result.steps.append(Step("repository", True, "none yet: nothing to maintain"))
            return result
        except PullbackError as exc:
            result.status = Status.FAILED
            result.steps.append(Step("repository", False, str(exc)))
            return result
        step("locks", lambda: backend.unlock() or "no stale lock")

        def forget():
            outcome = backend.forget(host.retention)
            result.forgotten = len(outcome.removed)
            return f"kept {len(outcome.kept)} snapshot(s), forgot {len(outcome.removed)}" + (
                f" ({', '.join(outcome.removed)})" if outcome.removed else ""
            )

        if step("forget", forget) and result.forgotten:
            step("prune", lambda: backend.prune() or "space of forgotten snapshots freed")
        parts = config.maintenance.check_subsets
        step("check", lambda: backend.check(part, parts, config.maintenance.borg_check_duration))

        def size():
            result.repository_size = backend.size()
            return human_size(result.repository_size)

        step("size", size)
        due = drill_due(config, host, utc_now()) if verify is None else verify
        if due:
            result.drill = drill(config, host, backend)
            result.steps.append(Step("drill", result.drill.ok, result.drill.summary))
            if not result.drill.ok:
                result.status = Status.FAILED
        else:
            result.steps.append(Step("drill", True, "not due yet"))
        return result
    finally:
        result.duration = time.monotonic() - started


def maintain(
    config: ServerConfig, names: list[str] | None = None, verify: bool | None = None
) -> tuple[int, list[MaintainResult]]:
    """Maintain the hosts' repositories. Returns (exit code, results)."""
    hosts = config.select_hosts(names)
    lock = FileLock(config.lock_dir / INSTANCE_LOCK, purpose="pullback-server maintain")
    with lock.acquire(wait=config.maintenance.wait_for_pull), SignalGuard():
        rotation = _rotation(config)
        cancels = {h.name: threading.Event() for h in hosts}
        parts = config.maintenance.check_subsets
        with ThreadPoolExecutor(max_workers=config.parallel) as pool:
            futures = {
                h.name: pool.submit(
                    maintain_host,
                    config,
                    h,
                    rotation.get(h.name, {}).get("check_part", 0) % parts + 1,
                    cancels[h.name],
                    verify,
                )
                for h in hosts
            }
            try:
                while not all(f.done() for f in futures.values()):
                    time.sleep(0.1)
            except Interrupted:
                for event in cancels.values():
                    event.set()
                raise
            results = [futures[h.name].result() for h in hosts]
        for result in results:
            if any(s.name == "check" and s.ok for s in result.steps):
                part = rotation.get(result.host, {}).get("check_part", 0) % parts + 1
                rotation.setdefault(result.host, {})["check_part"] = part
        config.state_dir.mkdir(parents=True, exist_ok=True)
        atomic_write(config.state_dir / ROTATION_FILE, json.dumps(rotation, indent=2) + "\n")
        status_file.record_maintenance(config.state_dir, results)
    failed = [r for r in results if r.status == Status.FAILED]
    return (EXIT_FAILED if failed else EXIT_OK), results


def command(config: ServerConfig, args: argparse.Namespace) -> int:
    """``pullback-server maintain``: maintain, then report."""
    from .outputs import finish_maintenance

    notifier = Notifier(config.notify, "maintenance")
    notifier.start()
    code, results = maintain(config, args.host, args.verify)
    finish_maintenance(config, results, notifier)
    return code
