"""``pullback-server status``: how each host stands, as a table, as JSON, or as one line
for a monitoring system (``--check``).

Exits 1 when a host is stale (no snapshot within its ``max_age``, or never stored), its
last pull failed, it needs attention (a failed drill or maintenance step, an archive
passed over, the ransomware guard holding its forget), or the last run could not write
a configured output, so a monitoring
check can run it as it is. ``--check`` follows the monitoring-plugin convention of
Nagios, Icinga, Zabbix and Checkmk instead.

``--merge FILE`` (repeatable) adds the hosts of other pull servers, from copies of their
status files, to the same table, JSON, line or page (``--html FILE``): one fleet view. A
host that two servers list, or a merged file that cannot be read, makes it exit 1 too
(``--check``: WARNING, UNKNOWN).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from enum import IntEnum
from pathlib import Path

from ..common.errors import EXIT_FAILED, EXIT_OK, ConfigError, PullbackError
from ..common.text import few
from ..common.units import human_ago, human_size
from . import status_page
from .config import ServerConfig, load_server_config
from .fleet_view import Fleet, HostRow, HostState, Source, fleet, read_merged
from .journal import PullActivity, Roster, pull_activity
from .status_file import STATUS_FILE, output_problems, read_status, server_name

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
    """The configuration or the status file cannot be read: nothing can be said (or a
    merged status file cannot be read, and no host is stale: its hosts may be)."""


@dataclass(frozen=True)
class CheckResult:
    state: Check
    line: str
    """``PULLBACK <STATE> - <what> | <perfdata>``: one line, as monitoring systems read it."""


HEADER = (
    "HOST",
    "SERVER",
    "STATE",
    "LAST RESULT",
    "NEWEST SNAPSHOT",
    "LAST VERIFIED",
    "DATABASES PROVEN",
    "REPOSITORY",
    "LAST RUNS",
    "COPY",
)
SERVER_COLUMN = 1
"""Shown only when status files are merged."""
COPY_COLUMN = len(HEADER) - 1
"""Shown only when a second copy is configured (``copy:``)."""


def _cells(row: HostRow) -> tuple[str, ...]:
    return (
        row.host,
        row.server,
        row.state,
        row.result_text,
        human_ago(row.newest_age),
        human_ago(row.verified_age),
        row.databases_text,
        human_size(row.repository_bytes) if row.repository_bytes else "-",
        row.history_text or "-",
        row.copy.text if row.copy else "-",
    )


def status_table(view: Fleet) -> str:
    """The status table: a row per host, worst first (with its SERVER when status files
    are merged), then a line per problem and per merged file."""
    table = [HEADER, *(_cells(row) for row in view.rows)]
    if not any(row.copy for row in view.rows):
        table = [r[:COPY_COLUMN] for r in table]
    if not view.merged:
        table = [r[:SERVER_COLUMN] + r[SERVER_COLUMN + 1 :] for r in table]
    notes = [
        f"{row.label}: {row.reason.removeprefix(row.host + ': ')}"
        for row in view.rows
        if row.state not in (HostState.OK, HostState.DISABLED) and row.reason
    ]
    widths = [max(len(r[i]) for r in table) for i in range(len(table[0]))]
    lines = ["  ".join(c.ljust(widths[i]) for i, c in enumerate(r)).rstrip() for r in table]
    return "\n".join(lines + notes + view.notes())


def _names(hosts: list[str]) -> str:
    return few(hosts, NAMES_SHOWN)


def _kinds(found: list[HostRow]) -> dict[str, list[str]]:
    """The hosts by kind: stale ones, those whose last pull failed and those that need
    attention (a stale host in these too: the mail names a failed one so, ``FAILED:
    web1 (stale)``), the ok ones (in none), and the disabled ones (in this kind alone)."""
    kinds: dict[str, list[str]] = {
        "stale": [],
        "failed": [],
        "attention": [],
        "ok": [],
        "disabled": [],
    }
    for row in found:
        if row.state == HostState.DISABLED:
            kinds["disabled"].append(row.label)
            continue
        if row.stale:
            kinds["stale"].append(row.label)
        if row.state == HostState.FAILED:
            kinds["failed"].append(row.label)
        elif row.state == HostState.ATTENTION:
            kinds["attention"].append(row.label)
        elif not row.stale:
            kinds["ok"].append(row.label)
    return kinds


def _perfdata(found: list[HostRow], kinds: dict[str, list[str]]) -> str:
    """``hosts=N ok=N attention=N failed=N stale=N`` (``disabled=N`` when any is), and
    the age of the oldest newest snapshot of a host that is not disabled."""
    perf = f"hosts={len(found)} " + " ".join(
        f"{kind}={len(kinds[kind])}" for kind in ("ok", "attention", "failed", "stale")
    )
    perf += f" disabled={len(kinds['disabled'])}" if kinds["disabled"] else ""
    ages = [  # (ahead: 0)
        max(0.0, r.newest_age) for r in found if r.newest_age is not None and not r.disabled
    ]
    return perf + (f" oldest_snapshot_age={round(max(ages))}s" if ages else "")


def _verdict(kinds: dict[str, list[str]], warnings: bool, unreadable: bool) -> Check:
    """CRITICAL for a stale host, else UNKNOWN for a merged file that cannot be read,
    else WARNING (``warnings``: a host failed or needs attention, an output not written,
    a host on two servers), else OK."""
    if kinds["stale"]:
        return Check.CRITICAL
    if unreadable:
        return Check.UNKNOWN
    if kinds["failed"] or kinds["attention"] or warnings:
        return Check.WARNING
    return Check.OK


def _first(label: str, items: Sequence[str]) -> str:
    """``label: the first (+N more)``."""
    more = f" (+{len(items) - 1} more)" if items[1:] else ""
    return f"{label}: {items[0]}{more}"


def fleet_check(
    found: list[HostRow],
    outputs: Sequence[str] = (),
    unreadable: Sequence[str] = (),
    duplicates: Sequence[str] = (),
) -> CheckResult:
    """The ``--check`` verdict on the rows of :func:`~.fleet_view.rows`: CRITICAL when a
    host is stale, UNKNOWN when a merged status file cannot be read (``unreadable``:
    ``FILE (why)``), WARNING when a host failed its last pull or needs attention, when
    the last run could not write an output (``outputs``) or a host is on more than one
    server (``duplicates``: ``HOST (a, b)``), else OK; UNKNOWN without hosts. A disabled
    host (``enabled: false``) is named, and counted in nothing else. The perfdata counts
    the hosts by kind and gives the age of the oldest newest snapshot in seconds."""
    if not found and not unreadable:
        return CheckResult(Check.UNKNOWN, "PULLBACK UNKNOWN - server.yaml lists no host")
    kinds = _kinds(found)
    state = _verdict(kinds, bool(outputs or duplicates), bool(unreadable))
    labels = {"stale": "stale", "failed": "last pull failed", "attention": "needs attention"}
    parts = [f"{label}: {_names(kinds[kind])}" for kind, label in labels.items() if kinds[kind]]
    if duplicates:
        parts.append(f"on more than one server: {_names(list(duplicates))}")
    if unreadable:
        parts.append(_first("cannot read", unreadable))
    if outputs:
        parts.append(_first("not written", outputs))
    off = kinds["disabled"]
    parts.append(f"{len(kinds['ok'])} of {len(found) - len(off)} hosts ok")
    if off:
        parts[-1] += f" ({len(off)} disabled: {_names(off)})"
    said = "; ".join(parts).replace("|", "¦")  # a monitor reads perfdata after the first |
    return CheckResult(state, f"PULLBACK {state.name} - {said} | {_perfdata(found, kinds)}")


def _view(config: ServerConfig, status: dict, merged: Sequence[Source]) -> Fleet:
    activity = pull_activity(config.state_dir, config.lock_dir, Roster.of(config.hosts))
    return fleet(config, Source(server_name(), None, status), merged, activity=activity)


def _activity_json(activity: PullActivity) -> dict:
    """``pull_running`` and ``pull_killed`` (each only when there is one): pid, start
    and each host's phase, as the pull's journal holds them."""
    found = {}
    for key, run in (("pull_running", activity.running), ("pull_killed", activity.killed)):
        if run is not None:
            found[key] = {"pid": run.pid, "started": run.started, "hosts": run.phases}
            if run.stopped_by:
                found[key]["stopped_by"] = run.stopped_by
    return found


def _outputs(view: Fleet) -> list[str]:
    """What each server's last run could not write; a merged server's named."""
    found = []
    for source in view.sources:
        prefix = "" if source.file is None else f"{source.server}: "
        found += [prefix + problem for problem in output_problems(source.status)]
    return found


def _duplicates(view: Fleet) -> list[str]:
    return [f"{host} ({', '.join(servers)})" for host, servers in view.duplicates().items()]


def _check(path: Path, merged: Sequence[Source]) -> int:
    """``status --check``: print one line; the exit code is the :class:`Check`."""
    try:
        config = load_server_config(path)
        status = read_status(config.state_dir)
    except ConfigError as exc:
        first = str(exc.problems[0]) if exc.problems else str(exc)
        result = CheckResult(Check.UNKNOWN, f"PULLBACK UNKNOWN - {first.replace('|', '¦')}")
    except (OSError, ValueError) as exc:
        why = exc.strerror if isinstance(exc, OSError) else exc
        result = CheckResult(Check.UNKNOWN, f"PULLBACK UNKNOWN - cannot read {STATUS_FILE}: {why}")
    else:
        view = _view(config, status, merged)
        unreadable = [f"{s.where} ({s.error})" for s in view.unreadable()]
        result = fleet_check(view.rows, _outputs(view), unreadable, _duplicates(view))
    print(result.line)
    return int(result.state)


def _fleet_json(view: Fleet) -> dict:
    """``status --merge ... --json``: each server's status (a merged one as checked and
    cleaned, None when unreadable, with its ``error``), every row, the hosts on more than
    one server."""
    return {
        "servers": [
            {
                "server": source.server,
                "file": None if source.file is None else str(source.file),
                "error": source.error,
                "status": None if source.error else source.status,
            }
            for source in view.sources
        ],
        "rows": [asdict(row) for row in view.rows],
        "duplicates": view.duplicates(),
    }


def command(path: Path, args: argparse.Namespace) -> int:
    """Print the table (or JSON, or the ``--check`` line, or write the page to
    ``--html``), of this server's hosts and those of the ``--merge`` files. Returns 1
    when :func:`_complaints` finds something (``--check``: the :class:`Check` code).
    Raises ConfigError, and PullbackError when this server's status file cannot be read
    or the page cannot be written."""
    merged = [read_merged(file) for file in getattr(args, "merge", None) or ()]
    if args.check:
        return _check(path, merged)
    config = load_server_config(path)
    try:
        status = read_status(config.state_dir)
    except OSError as exc:
        raise PullbackError(
            f"cannot read {config.state_dir / STATUS_FILE}: {exc.strerror}"
        ) from None
    except ValueError as exc:
        raise PullbackError(f"cannot read {config.state_dir / STATUS_FILE}: {exc}") from None
    view = _view(config, status, merged)
    page = getattr(args, "html", None)  # a Namespace made by hand may lack both
    if args.json:
        shown = _fleet_json(view) if merged else status
        shown = {**shown, **_activity_json(view.activity)}
        print(json.dumps(shown, indent=2, sort_keys=True))
    elif page is not None:
        _write_page(page, view)
    else:
        print(status_table(view))
    complaints = _complaints(view)
    for line in complaints:
        print(line, file=sys.stderr)
    return EXIT_FAILED if complaints else EXIT_OK


def _write_page(path: Path, view: Fleet) -> None:
    """The view's status page to ``path``. Raises PullbackError when it cannot be written."""
    try:
        status_page.write_page(path, status_page.render_fleet(view))
    except OSError as exc:
        raise PullbackError(f"cannot write {path}: {exc.strerror}") from None


def _at_most(lines: list[str]) -> list[str]:
    """The first NAMES_SHOWN ``lines``, and one that counts the rest (a merged file may
    name thousands of hosts)."""
    more = len(lines) - NAMES_SHOWN
    return lines[:NAMES_SHOWN] + ([f"... and {more} more such lines"] if more > 0 else [])


def _copy_complaints(view: Fleet) -> list[tuple[HostRow, str]]:
    """The hosts whose second copy failed or is stale, with why."""
    return [(r, r.copy.complaint) for r in view.rows if r.copy is not None and r.copy.complaint]


def _host_complaints(found: list[HostRow]) -> list[str]:
    """A line per kind of host trouble that makes ``status`` exit 1, naming the hosts:
    a killed pull was pulling them, stale, failed, forget held."""
    killed = [f"{r.label} ({r.killed})" for r in found if r.killed]
    lines = [f"cut short before it wrote its status (the last pull): {_names(killed)}"] * bool(
        killed
    )
    kinds = (
        ("stale (no snapshot within max_age)", lambda r: r.stale, ""),
        ("failed (the last pull)", lambda r: r.state == HostState.FAILED, ""),
        (
            "failed on the client (the newest snapshot is partial)",
            lambda r: r.client_failed,
            " (pullback-client list on the host says why)",
        ),
        (
            "forget held by the ransomware guard",
            lambda r: r.held,
            " (pullback-server release HOST once the change is understood)",
        ),
    )
    for label, has, advice in kinds:
        named = [r.label for r in found if has(r)]
        if named:
            lines.append(f"{label}: {_names(named)}{advice}")
    named = [r.label for r in found if _attention_only(r)]
    if named:
        lines.append(f"needs attention: {_names(named)} (the lines under the table say why)")
    return lines


def _attention_only(row: HostRow) -> bool:
    """The row needs attention for a reason no other complaint names: an archive passed
    over, a failed restore drill, a maintenance step that failed (a ``check`` that found
    damage). An outside review saw ``status`` exit 0 for such a host while ``--check``
    said WARNING."""
    named = row.killed or row.client_failed or row.held or (row.copy and row.copy.complaint)
    return row.state == HostState.ATTENTION and not named


def _complaints(view: Fleet) -> list[str]:
    """The lines that make ``status`` exit 1: hosts a killed pull was pulling, stale
    hosts, failed pulls, forget held by the ransomware guard, hosts needing attention for
    another reason, outputs the last run could
    not write; with merged files, hosts on more than one server and files that cannot be
    read."""
    lines = _host_complaints(view.rows)
    lines += _at_most([f"{row.label}: {why}" for row, why in _copy_complaints(view)])
    lines += _at_most(
        [
            f"on more than one server (each host belongs in one server.yaml): {host}: "
            + ", ".join(servers)
            for host, servers in view.duplicates().items()
        ]
    )
    lines += [
        f"cannot read the merged status file {s.where}: {s.error} (its hosts are unknown)"
        for s in view.unreadable()
    ]
    return lines + [f"not written by the last run: {problem}" for problem in _outputs(view)]
