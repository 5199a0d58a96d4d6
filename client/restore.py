"""``pullback-client restore``: put a service back from a restored snapshot or an archive.

The order mirrors a backup: the service's stopping tasks (docker, systemd) stop the
application, every selected task's restore hook puts its data back (databases are
re-imported, files copied to their place or below ``--target``), and the application
is started again whatever happened.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from ..common.archive.compression import compression_of
from ..common.archive.reader import TarStream
from ..common.archive.sidecar import ARCHIVE_NAME
from ..common.archive.unpack import Unpacker
from ..common.errors import EXIT_FAILED, EXIT_OK, ConfigError, PullbackError, UsageError
from ..common.locks import FileLock
from ..common.log import get_logger
from ..common.signals import SignalGuard
from ..plugins.manager import load_plugins
from .config import ClientConfig
from .run import INSTANCE_LOCK
from .services import discover
from .stages import make_tasks

log = get_logger("restore")


def unpack_archive(archive: Path, into: Path) -> Path:
    """Unpack a pullback archive safely (manifest checked) into ``into``; return it."""
    with (
        open(archive, "rb") as raw,
        TarStream(raw, compression_of(archive.name)) as stream,
        Unpacker(into) as unpacker,
    ):
        for member in stream.members():
            unpacker.add(member, stream.read_data(member))
        unpacker.finish()
    return into


def service_root(source: Path, name: str) -> Path:
    """The ``services/<name>`` directory inside ``source`` (a snapshot root or that dir)."""
    for candidate in (source / "services" / name, source / name, source):
        if candidate.is_dir() and any(p.is_dir() for p in candidate.iterdir()):
            if candidate == source and not (source / "services").exists() and source.name != name:
                continue
            return candidate
    raise UsageError(
        f"{source} holds no services/{name}/: restore the snapshot first "
        f"(pullback-server restore HOST --service {name} --target DIR)"
    )


def restore(
    config: ClientConfig,
    name: str,
    source: Path,
    task_filter: str | None = None,
    target: Path | None = None,
    dry_run: bool = False,
) -> int:
    """Restore service ``name``; returns the exit code. Raises PullbackError (exit 2 for
    a wrong service, task or source)."""
    plugins = load_plugins(config.plugin_dirs)
    services = {s.name: s for s in discover(config.service_dirs, plugins)}
    if name not in services:
        raise UsageError(
            f"no service named {name!r} in "
            f"{', '.join(map(str, config.service_dirs))}; known services: "
            f"{', '.join(sorted(services)) or 'none'}"
        )
    service = services[name]
    if service.broken:
        raise ConfigError(service.problems)
    if not source.exists():
        raise UsageError(f"{source} does not exist")
    with tempfile.TemporaryDirectory(prefix="pullback-restore-") as scratch:
        if source.is_file():
            if not ARCHIVE_NAME.match(source.name):
                raise UsageError(f"{source} is not a pullback archive")
            log.info("unpacking %s (checked against its manifest)", source.name)
            source = unpack_archive(source, Path(scratch) / "archive")
        root = service_root(source, name)
        return _restore(config, service, plugins, root, task_filter, target, dry_run, Path(scratch))


def command(config: ClientConfig, args: argparse.Namespace) -> int:
    return restore(config, args.service, args.source, args.task, args.target, args.dry_run)


def _restore(
    config, service, plugins, root: Path, task_filter, target, dry_run, scratch: Path
) -> int:
    tasks = make_tasks(service, scratch / "staging", None, dry_run=dry_run)
    specs = {id(t): s for t, s in zip(tasks, service.tasks, strict=True)}
    if task_filter and not any(task_filter in (t.key, t.type) for t in tasks):
        raise UsageError(
            f"service {service.name} has no task {task_filter!r}; its tasks: "
            f"{', '.join(t.key for t in tasks)}"
        )
    selected = [t for t in tasks if not task_filter or task_filter in (t.key, t.type)]
    stoppers = [t for t in tasks if specs[id(t)].type.stops_service]
    lock = FileLock(config.lock_dir / INSTANCE_LOCK, purpose="pullback-client restore")
    failures: list[str] = []
    with lock.acquire(), SignalGuard() as guard:
        for task in tasks:
            task.staging.mkdir(parents=True, exist_ok=True)
        prepared = []
        try:
            for task in stoppers:
                if dry_run:
                    log.info("[%s] would stop the application first", task.key)
                    continue
                prepared.append(task)
                plugins.call("prepare", task)
            for task in selected:
                source = root / task.type
                if not source.is_dir():
                    message = f"{task.key}: nothing to restore ({source} is not in the snapshot)"
                    log.warning("%s", message)
                    if task_filter:
                        failures.append(message)
                    continue
                try:
                    plugins.call("restore", task, source=source, target=target, dry_run=dry_run)
                except PullbackError as exc:
                    failures.append(f"{task.key}: {exc}")
                    log.error("[%s] restore failed: %s", task.key, exc)
        finally:
            with guard.shielded():
                for task in reversed(prepared):
                    try:
                        plugins.call("finish", task, failed=bool(failures))
                    except Exception as exc:
                        failures.append(f"{task.key}: could not start again: {exc}")
                        log.error("[%s] could not start the application again: %s", task.key, exc)
    if failures:
        log.error("restore of %s incomplete: %s", service.name, "; ".join(failures))
        return EXIT_FAILED
    log.info("%s %s", "checked" if dry_run else "restored", service.name)
    return EXIT_OK
