"""pullback-server: pull every client's newest archive over SSH into restic or borg."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..common.cli import common_options, main_wrapper, make_parser
from ..common.errors import EXIT_FAILED, EXIT_OK
from ..common.units import human_duration, human_size
from .config import DEFAULT_PATH, load_server_config
from .fleet_view import HostState

DESCRIPTION = __doc__


def build_parser() -> argparse.ArgumentParser:
    parent = common_options(DEFAULT_PATH)
    parser, sub = make_parser("pullback-server", DESCRIPTION, parent)
    p = sub.add_parser(
        "pull",
        parents=[parent],
        help="fetch and store every host's newest archive",
        description="Exit 0: every host stored or cleanly skipped; 1: a host "
        "failed; 2: bad configuration; 75: another pull or maintenance runs.",
    )
    p.add_argument("--host", action="append", metavar="NAME", help="only this host (repeatable)")
    p.add_argument(
        "-n",
        "--dry-run",
        action="store_true",
        help="ask the clients what would be fetched; store nothing",
    )
    p.add_argument(
        "--if-due",
        action="store_true",
        help="skip hosts whose newest snapshot is younger than min_interval (for timers)",
    )
    p.add_argument(
        "--summary",
        action="store_true",
        help="print the summary (the mail's text) on standard output",
    )
    p = sub.add_parser(
        "maintain",
        parents=[parent],
        help="forget and prune by the retention policy, check, restore drills",
        description="Per host: remove stale repository locks, forget snapshots "
        "by the retention policy, prune, check a rotating part of the data, and "
        "run the restore drill when it is due. Waits for a running pull.",
    )
    p.add_argument("--host", action="append", metavar="NAME", help="only this host")
    drill_choice = p.add_mutually_exclusive_group()
    drill_choice.add_argument(
        "--verify",
        dest="verify",
        action="store_const",
        const=True,
        help="run the restore drill even if it is not due",
    )
    drill_choice.add_argument(
        "--no-verify",
        dest="verify",
        action="store_const",
        const=False,
        help="skip the restore drill",
    )
    p = sub.add_parser(
        "verify",
        parents=[parent],
        help="restore drill: restore a snapshot and check it against its manifest",
    )
    p.add_argument("--host", action="append", metavar="NAME", help="only this host")
    p.add_argument("--random", action="store_true", help="a random snapshot, not the newest")
    p = sub.add_parser("snapshots", parents=[parent], help="list a host's snapshots")
    p.add_argument("hostname", metavar="HOST")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p = sub.add_parser(
        "restore", parents=[parent], help="restore (part of) a host's snapshot into a directory"
    )
    p.add_argument("hostname", metavar="HOST")
    p.add_argument(
        "--snapshot",
        default="latest",
        metavar="ID",
        help="snapshot id (or archive stamp); default: latest",
    )
    p.add_argument("--service", metavar="NAME", help="only this service")
    p.add_argument("--path", metavar="P", help="only this path (e.g. services/app/files/etc)")
    p.add_argument(
        "--target", required=True, type=Path, metavar="DIR", help="where to restore (must be empty)"
    )
    p.add_argument("--force", action="store_true", help="restore into a non-empty directory")
    sub.add_parser(
        "configured",
        parents=[parent],
        help="exit 1 when server.yaml lists no host yet (for systemd's ExecCondition)",
    )
    p = sub.add_parser("status", parents=[parent], help="how each host's last pull went")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p = sub.add_parser(
        "check", parents=[parent], help="validate the configuration and reach every host"
    )
    p.add_argument("--host", action="append", metavar="NAME", help="only this host")
    p = sub.add_parser(
        "trust", parents=[parent], help="show a host's SSH key and record it in known_hosts"
    )
    p.add_argument("hostname", metavar="HOST", help="a host name from server.yaml")
    p.add_argument("--yes", action="store_true", help="record without asking")
    p.add_argument("--replace", action="store_true", help="replace a different pinned key")
    return parser


def _status_table(config, status: dict) -> str:
    from .fleet_view import rows

    found = rows(config, status)
    table = [
        (
            "HOST",
            "STATE",
            "LAST RESULT",
            "NEWEST SNAPSHOT",
            "LAST VERIFIED",
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
                human_size(row.repository_bytes) if row.repository_bytes else "-",
                row.history_text or "-",
            )
        )
        if row.state != HostState.OK and row.reason:
            notes.append(f"{row.host}: {row.reason}")
    widths = [max(len(r[i]) for r in table) for i in range(len(table[0]))]
    lines = ["  ".join(c.ljust(widths[i]) for i, c in enumerate(r)).rstrip() for r in table]
    return "\n".join(lines + notes)


def _configured(path) -> int:
    """0 unless the configuration is valid and lists no enabled host (see the client's)."""
    from ..common.errors import ConfigError

    try:
        config = load_server_config(path)
    except ConfigError:
        return EXIT_OK
    if any(h.enabled for h in config.hosts):
        return EXIT_OK
    print(f"no host listed in {config.path}: nothing to pull yet")
    return 1


def _handle(args: argparse.Namespace) -> int:
    if args.command == "configured":
        return _configured(args.config)
    config = load_server_config(args.config)
    if args.command == "pull":
        from ..common.notify import Notifier
        from .outputs import finish_pull
        from .pull import pull

        notifier = Notifier(config.notify, "pull")
        if not args.dry_run:
            notifier.start()
        code, results = pull(config, args.host, args.dry_run, args.if_due)
        finish_pull(config, results, notifier, args.dry_run, args.summary)
        return code
    if args.command == "maintain":
        from ..common.notify import Notifier
        from .maintain import maintain
        from .outputs import finish_maintenance

        notifier = Notifier(config.notify, "maintenance")
        notifier.start()
        code, results = maintain(config, args.host, args.verify)
        finish_maintenance(config, results, notifier)
        return code
    if args.command == "verify":
        from .maintain import verify
        from .outputs import publish

        code, results = verify(config, args.host, args.random)
        publish(config)
        for result in results:
            print(f"{result.host}: {result.summary}")
        return code
    if args.command == "snapshots":
        from .snapshots import list_snapshots, render

        print(render(list_snapshots(config, args.hostname), args.json))
        return EXIT_OK
    if args.command == "restore":
        from .snapshots import restore

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
    if args.command == "status":
        from .fleet_view import rows
        from .status import load_status

        status = load_status(config.state_dir)
        if args.json:
            print(json.dumps(status, indent=2, sort_keys=True))
        else:
            print(_status_table(config, status))
        stale = [r.host for r in rows(config, status) if r.state == HostState.STALE]
        if stale:
            print(f"stale (no snapshot within max_age): {', '.join(stale)}", file=sys.stderr)
            return EXIT_FAILED
        return EXIT_OK
    if args.command == "check":
        from .check import check

        good, problems = check(config, args.host)
        for line in good:
            print(line)
        for line in problems:
            print(f"problem: {line}")
        return EXIT_FAILED if problems else EXIT_OK
    if args.command == "trust":
        from .trust import trust

        return trust(config.host(args.hostname), config.ssh, args.yes, args.replace)
    raise AssertionError(args.command)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return main_wrapper(_handle, args, DEFAULT_PATH)


if __name__ == "__main__":
    sys.exit(main())
