"""``pullback-server snapshots HOST``: a host's snapshots, as a table or as JSON."""

from __future__ import annotations

import argparse
import json

from ..common.archive.sidecar import MORE_FAILED
from ..common.clock import iso, utc_now
from ..common.errors import EXIT_OK
from ..common.log import get_logger
from ..common.outcome import Status
from ..common.units import human_ago
from .backends import Snapshot
from .config import ServerConfig
from .host import HostContext
from .missing import open_pulled

log = get_logger("snapshots")


def list_snapshots(config: ServerConfig, name: str) -> list[Snapshot]:
    """The host's snapshots. Raises RepositoryMissing (said as gone where status.json
    records a pull of the host: :func:`.missing.gone_words`), PullbackError."""
    host = config.host(name)
    backend = HostContext.open(config, host).backend
    open_pulled(config, host, backend)
    return backend.snapshots()


def _status(snapshot: Snapshot) -> str:
    if snapshot.adopted:
        return "adopted (backup-suite)"
    if not snapshot.failed:
        return str(Status.OK)
    named = [name for name in snapshot.failed if name != MORE_FAILED]
    more = " and more" if MORE_FAILED in snapshot.failed else ""
    return f"{Status.PARTIAL}: {', '.join(named)}{more} failed"


def render(snapshots: list[Snapshot], as_json: bool) -> str:
    """The snapshots as a table (or JSON), with which are partial and what failed in them."""
    if as_json:
        return json.dumps(
            [
                {
                    "id": s.id,
                    "time": iso(s.time),
                    "stamp": s.stamp,
                    "status": Status.PARTIAL if s.failed else Status.OK,
                    "failed_services": list(s.failed),
                    "adopted": s.adopted,
                }
                for s in snapshots
            ],
            indent=2,
        )
    if not snapshots:
        return "no snapshots"
    now = utc_now()
    rows = [("ID", "TIME (UTC)", "AGE", "ARCHIVE STAMP", "STATUS")]
    rows += [
        (
            s.id,
            s.time.strftime("%Y-%m-%d %H:%M:%S"),
            human_ago((now - s.time).total_seconds()),  # "2d01h ahead": dated in the future
            s.stamp or "-",
            _status(s),
        )
        for s in snapshots
    ]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(widths[i]) for i, c in enumerate(r)).rstrip() for r in rows)


def command(config: ServerConfig, args: argparse.Namespace) -> int:
    """``pullback-server snapshots HOST``."""
    print(render(list_snapshots(config, args.hostname), args.json))
    return EXIT_OK
