"""``pullback-server status``: how each host stands, as a table, as JSON, or as one line
for a monitoring system (``--check``).

Exits 1 when a host is stale (no snapshot within its ``max_age``, or never stored), its
last pull failed, the ransomware guard holds its forget, or the last run could not write
a configured output, so a monitoring
check can run it as it is. ``--check`` follows the monitoring-plugin convention of
Nagios, Icinga, Zabbix and Checkmk instead.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from enum import IntEnum
from pathlib import Path

from ..common.errors import EXIT_FAILED, EXIT_OK, ConfigError, PullbackError
from ..common.units import human_duration, human_size
from .config import ServerConfig, load_server_config
from .fleet_view import HostRow, HostState, rows
from .status_file import STATUS_FILE, output_problems, read_status

NAMES_SHOWN = 10
"""Host names a ``--check`` line lists per kind before it only counts the rest."""


class Check(IntEnum):
    """The exit codes of a monitoring plugin."""

    OK = 0
    WARNING = 1
    """A host's last pull failed or needs attention, but its newest snapshot is fresh."""
    CRITICAL = 2
    """A host is stale: no snapshot within its ``max_age``, or never stored."""
    UNKNOWN = 3
    """The configuration or the status file cannot be read: nothing can be said."""


@dataclass(frozen=True)
class CheckResult:
    state: Check
    line: str
    """``PULLBACK <STATE> - <what> | <perfdata>``: one line, as monitoring systems read it."""


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


def _names(hosts: list[str]) -> str:
    shown = ", ".join(hosts[:NAMES_SHOWN])
    return shown + (f" and {len(hosts) - NAMES_SHOWN} more" if len(hosts) > NAMES_SHOWN else "")


def _kinds(found: list[HostRow]) -> dict[str, list[str]]:
    """The hosts by kind, each host in one: stale (whatever else), failed, attention, ok."""
    kinds: dict[str, list[str]] = {"stale": [], "failed": [], "attention": [], "ok": []}
    for row in found:
        if row.stale:
            kinds["stale"].append(row.host)
        elif row.state == HostState.FAILED:
            kinds["failed"].append(row.host)
        elif row.state == HostState.ATTENTION:
            kinds["attention"].append(row.host)
        else:
            kinds["ok"].append(row.host)
    return kinds


def _perfdata(found: list[HostRow], kinds: dict[str, list[str]]) -> str:
    perf = f"hosts={len(found)} " + " ".join(
        f"{kind}={len(kinds[kind])}" for kind in ("ok", "attention", "failed", "stale")
    )
    ages = [r.newest_age for r in found if r.newest_age is not None]
    return perf + (f" oldest_snapshot_age={round(max(ages))}s" if ages else "")


def fleet_check(found: list[HostRow], outputs: Sequence[str] = ()) -> CheckResult:
    """The ``--check`` verdict on the rows of :func:`~.fleet_view.rows`: CRITICAL when a
    host is stale, WARNING when one failed its last pull or needs attention, or when the
    last run could not write an output (``outputs``), else OK; UNKNOWN without hosts. The
    perfdata counts the hosts by kind and gives the age of the oldest newest snapshot in
    seconds."""
    if not found:
        return CheckResult(Check.UNKNOWN, "PULLBACK UNKNOWN - server.yaml lists no host")
    kinds = _kinds(found)
    if kinds["stale"]:
        state = Check.CRITICAL
    elif kinds["failed"] or kinds["attention"] or outputs:
        state = Check.WARNING
    else:
        state = Check.OK
    labels = {"stale": "stale", "failed": "last pull failed", "attention": "needs attention"}
    parts = [f"{label}: {_names(kinds[kind])}" for kind, label in labels.items() if kinds[kind]]
    if outputs:
        more = f" (+{len(outputs) - 1} more)" if outputs[1:] else ""
        parts.append(f"not written: {outputs[0]}{more}")
    parts.append(f"{len(kinds['ok'])} of {len(found)} hosts ok")
    return CheckResult(
        state, f"PULLBACK {state.name} - {'; '.join(parts)} | {_perfdata(found, kinds)}"
    )


def _check(path: Path) -> int:
    """``status --check``: print one line; the exit code is the :class:`Check`."""
    try:
        config = load_server_config(path)
        status = read_status(config.state_dir)
    except ConfigError as exc:
        first = str(exc.problems[0]) if exc.problems else str(exc)
        result = CheckResult(Check.UNKNOWN, f"PULLBACK UNKNOWN - {first}")
    except (OSError, ValueError) as exc:
        why = exc.strerror if isinstance(exc, OSError) else exc
        result = CheckResult(Check.UNKNOWN, f"PULLBACK UNKNOWN - cannot read {STATUS_FILE}: {why}")
    else:
        result = fleet_check(rows(config, status), output_problems(status))
    print(result.line)
    return int(result.state)


def command(path: Path, args: argparse.Namespace) -> int:
    """Print the table (or JSON, or the ``--check`` line). Returns 1 when a host is stale
    or failed its last pull (``--check``: the :class:`Check` code). Raises ConfigError, and
    PullbackError when the status file cannot be read."""
    if args.check:
        return _check(path)
    config = load_server_config(path)
    try:
        status = read_status(config.state_dir)
    except OSError as exc:
        raise PullbackError(
            f"cannot read {config.state_dir / STATUS_FILE}: {exc.strerror}"
        ) from None
    except ValueError as exc:
        raise PullbackError(f"cannot read {config.state_dir / STATUS_FILE}: {exc}") from None
    if args.json:
        print(json.dumps(status, indent=2, sort_keys=True))
    else:
        print(status_table(config, status))
    complaints = _complaints(rows(config, status), output_problems(status))
    for line in complaints:
        print(line, file=sys.stderr)
    return EXIT_FAILED if complaints else EXIT_OK


def _complaints(found: list[HostRow], unwritten: list[str]) -> list[str]:
    """The lines that make ``status`` exit 1: stale hosts, failed pulls, forget held by
    the ransomware guard, outputs the last run could not write."""
    lines = []
    stale = [r.host for r in found if r.stale]
    failed = [r.host for r in found if r.state == HostState.FAILED]
    held = [r.host for r in found if r.held]
    if stale:
        lines.append(f"stale (no snapshot within max_age): {', '.join(stale)}")
    if failed:
        lines.append(f"failed (the last pull): {', '.join(failed)}")
    if held:
        lines.append(
            f"forget held by the ransomware guard: {', '.join(held)} "
            "(pullback-server release HOST once the change is understood)"
        )
    return lines + [f"not written by the last run: {problem}" for problem in unwritten]
