"""``pullback-server status``: how each host stands, as a table or as JSON.

Exits 1 when a host is stale (no snapshot within its ``max_age``), so a monitoring check
can run it as it is.
"""

from __future__ import annotations

import argparse
import json
import sys

from ..common.errors import EXIT_FAILED, EXIT_OK
from ..common.units import human_duration, human_size
from .config import ServerConfig
from .fleet_view import HostState, rows
from .status_file import load_status


def status_table(config: ServerConfig, status: dict) -> str:
    """The status table: a row per host, worst first, then a line per problem."""
    found = rows(config, status)
    table = [
        (
            "HOST",
            "STATE",
            "LAST RESULT",
            "NEWEST SNAPSHOT",
            "LAST VERIFIED",
            "DATABASES PROVEN",
            "REPOSITORY",
            "LAST RUNS",
        )
    ]
    notes = []
    for row in found:
        table.append(
            (
                row.host,
                row.state,
                row.result,
                "never" if row.newest_age is None else f"{human_duration(row.newest_age)} ago",
                "never" if row.verified_age is None else f"{human_duration(row.verified_age)} ago",
                row.databases_text,
                human_size(row.repository_bytes) if row.repository_bytes else "-",
                row.history_text or "-",
            )
        )
        if row.state != HostState.OK and row.reason:
            notes.append(f"{row.host}: {row.reason}")
    widths = [max(len(r[i]) for r in table) for i in range(len(table[0]))]
    lines = ["  ".join(c.ljust(widths[i]) for i, c in enumerate(r)).rstrip() for r in table]
    return "\n".join(lines + notes)


def command(config: ServerConfig, args: argparse.Namespace) -> int:
    status = load_status(config.state_dir)
    if args.json:
        print(json.dumps(status, indent=2, sort_keys=True))
    else:
        print(status_table(config, status))
    stale = [r.host for r in rows(config, status) if r.state == HostState.STALE]
    if stale:
        print(f"stale (no snapshot within max_age): {', '.join(stale)}", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK
