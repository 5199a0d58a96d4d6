"""``pullback-server restore HOST``: restore (part of) a snapshot into a directory, and
say how to prove it and put it back on the client."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from ..common.archive.manifest import MANIFEST_NAME
from ..common.errors import EXIT_OK, PullbackError, UsageError
from ..common.log import get_logger
from ..common.runner import Runner
from .backends import make_backend
from .config import ServerConfig

log = get_logger("restore")


def _relative(path: str) -> str:
    parts = [p for p in path.strip("/").split("/") if p]
    if not parts or any(p in (".", "..") for p in parts):
        raise UsageError(f"--path {path!r} is not a path inside the snapshot (like services/app)")
    return "/".join(parts)


def restore(
    config: ServerConfig,
    name: str,
    target: Path,
    snapshot_id: str = "latest",
    service: str | None = None,
    path: str | None = None,
    force: bool = False,
) -> str:
    """Restore (part of) a snapshot into ``target``; return what to do next. Raises
    PullbackError (exit 2 for a wrong host, snapshot, path or a non-empty target)."""
    host = config.host(name)
    if target.exists() and any(target.iterdir()) and not force:
        raise UsageError(f"{target} is not empty; choose an empty directory or add --force")
    backend = make_backend(config.backend, host, config.state_dir, Runner(log))
    backend.prepare(create=False)
    snapshots = backend.snapshots()
    if not snapshots:
        raise PullbackError(f"{name} has no snapshot yet")
    if snapshot_id == "latest":
        snapshot = snapshots[-1]
    else:
        matches = [s for s in snapshots if s.id.startswith(snapshot_id) or s.stamp == snapshot_id]
        if len(matches) != 1:
            raise UsageError(
                f"no single snapshot {snapshot_id!r} of {name}; see "
                f"pullback-server snapshots {name}"
            )
        snapshot = matches[0]
    includes = []
    if service:
        includes += [f"services/{service}", MANIFEST_NAME]
    if path:
        includes.append(_relative(path))
    target.mkdir(parents=True, exist_ok=True)
    os.chmod(target, 0o700)
    log.info(
        "restoring snapshot %s of %s (%s) into %s",
        snapshot.id,
        name,
        snapshot.time.strftime("%Y-%m-%d %H:%M UTC"),
        target,
    )
    backend.restore(snapshot, target, includes)
    if service and not (target / "services" / service).is_dir():
        raise PullbackError(f"snapshot {snapshot.id} of {name} holds no service {service!r}")
    check = (
        f"grep '  services/{service}/' MANIFEST.sha256 | sha256sum --check"
        if service
        else "sha256sum --check MANIFEST.sha256"
    )
    steps = [
        f"restored snapshot {snapshot.id} of {name} (taken "
        f"{snapshot.time.strftime('%Y-%m-%d %H:%M UTC')}) into {target}",
        f"prove it byte for byte:  cd {target} && {check}",
    ]
    if service:
        steps += [
            f"to put {service} back on {name}: copy {target} to it, e.g.",
            f"  rsync -aHAX {target}/ root@{host.address}:/var/tmp/pullback-restore/",
            "then run on the client:",
            f"  pullback-client restore --service {service} "
            "--from /var/tmp/pullback-restore --dry-run   (then without --dry-run)",
        ]
    return "\n".join(steps)


def command(config: ServerConfig, args: argparse.Namespace) -> int:
    print(
        restore(
            config,
            args.hostname,
            args.target,
            args.snapshot,
            args.service,
            args.path,
            args.force,
        )
    )
    return EXIT_OK
