"""pullback-server: pull every client's newest archive over SSH into restic or borg."""

from __future__ import annotations

import argparse
import sys

from ..common.cli import (
    Action,
    common_options,
    dispatch,
    given_path,
    import_suite_parser,
    json_option,
    main_wrapper,
    make_parser,
)
from .config import DEFAULT_PATH, load_server_config

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
        "--new",
        action="store_true",
        help="make a new, empty repository where the one a host was pulled into is gone "
        "(needs --host)",
    )
    shown = p.add_mutually_exclusive_group()
    shown.add_argument(
        "--summary",
        action="store_true",
        help="print the summary (the mail's text) on standard output",
    )
    json_option(shown)
    p = sub.add_parser(
        "maintain",
        parents=[parent],
        help="forget and prune by the retention policy, check, restore drills",
        description="Per host: remove stale repository locks, forget snapshots "
        "by the retention policy, prune, check a rotating part of the data, and "
        "run the restore drill when it is due. Waits for a running pull.",
    )
    p.add_argument("--host", action="append", metavar="NAME", help="only this host (repeatable)")
    drill_options(p, "the restore drill")
    json_option(p)
    p = sub.add_parser(
        "verify",
        parents=[parent],
        help="restore drill: restore a snapshot and check it against its manifest",
    )
    p.add_argument("--host", action="append", metavar="NAME", help="only this host (repeatable)")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--random", action="store_true", help="a random snapshot, not the newest")
    which.add_argument(
        "--snapshot",
        metavar="ID",
        help="this snapshot (id prefix or archive stamp) of the one --host",
    )
    json_option(p)
    p = sub.add_parser(
        "copy",
        parents=[parent],
        help="copy new snapshots into each host's second copy and prove it",
        description="Per host: copy the snapshots its copy (copy: in server.yaml) lacks, "
        "compare the copy's snapshot list with the primary's, and run the restore drill "
        "against the copy when copy.verify_every says it is due. Exit 1 when a copy "
        "failed, fell behind or diverged.",
    )
    p.add_argument("--host", action="append", metavar="NAME", help="only this host (repeatable)")
    drill_options(p, "the copy's restore drill")
    p.add_argument(
        "--new",
        action="store_true",
        help="make a copy anew where the one that held snapshots is gone",
    )
    json_option(p)
    p = sub.add_parser("snapshots", parents=[parent], help="list a host's snapshots")
    p.add_argument("hostname", metavar="HOST")
    json_option(p)
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
        "--target",
        required=True,
        type=given_path,
        metavar="DIR",
        help="where to restore (must be empty)",
    )
    p.add_argument(
        "--force",
        action="store_true",
        help="restore into a non-empty directory (what is in the way is set aside)",
    )
    p = sub.add_parser(
        "configured",
        parents=[parent],
        help="exit 1 when server.yaml lists no enabled host (for systemd's ExecCondition)",
    )
    p.add_argument("--copy", action="store_true", help="exit 1 also when it has no copy: section")
    p = sub.add_parser(
        "status",
        parents=[parent],
        help="how each host's last pull went",
        description="Exit 0: every host fresh and its last pull not failed; 1: a host is "
        "stale (no snapshot within max_age, or never stored) or its last pull failed "
        "(with --merge also: a host on two servers, a file that cannot be read). "
        "With --check: 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN.",
    )
    p.add_argument(
        "--merge",
        action="append",
        type=given_path,
        metavar="FILE",
        help="another pull server's status.json, copied here: its hosts too (repeatable)",
    )
    form = p.add_mutually_exclusive_group()
    json_option(form)
    form.add_argument(
        "--check",
        action="store_true",
        help="one line for Nagios, Icinga, Zabbix or Checkmk: state, hosts by kind, perfdata",
    )
    form.add_argument(
        "--html", type=given_path, metavar="FILE", help="write the status page to FILE instead"
    )
    p = sub.add_parser(
        "publish",
        parents=[parent],
        help="rewrite the metrics file and the status page now (ExecStopPost= of the pull)",
        description="Rewrite the metrics file and the status page from status.json and "
        "the pull's journal, as every run does when it ends: the hosts of a pull killed "
        "or stopped by a signal before it wrote status.json need attention "
        "(pullback_pull_cut_short 1). Exit 0; 1: an output could not be written; "
        "2: bad configuration.",
    )
    p.add_argument(
        "--if-failed",
        action="store_true",
        help="only when the unit's main process did not succeed: nothing when "
        "$SERVICE_RESULT is success or exec-condition (for ExecStopPost=)",
    )
    p = sub.add_parser(
        "check", parents=[parent], help="validate the configuration and reach every host"
    )
    p.add_argument("--host", action="append", metavar="NAME", help="only this host (repeatable)")
    json_option(p)
    p = sub.add_parser(
        "trust", parents=[parent], help="show a host's SSH key and record it in known_hosts"
    )
    p.add_argument("hostname", metavar="HOST", help="a host name from server.yaml")
    p.add_argument("--yes", action="store_true", help="record without asking")
    p.add_argument("--replace", action="store_true", help="replace a different pinned key")
    p = sub.add_parser(
        "release",
        parents=[parent],
        help="end the ransomware guard's hold on a host: forget by the policy again",
        description="End the ransomware guard's hold on HOST (with --copy, on its second "
        "copy): the next maintain forgets by the retention policy again. For a host "
        "disabled in server.yaml (enabled: false), also accept the last pull a run named "
        "(pull --host HOST) that failed or was cut short, of a machine that is gone: it "
        "counts no more. An enabled host's failed pull is not accepted: the next pull "
        "that passes ends it.",
    )
    p.add_argument("hostname", metavar="HOST", help="a host name from server.yaml")
    p.add_argument("--copy", action="store_true", help="the hold on the host's second copy")
    p = sub.add_parser(
        "export-recovery",
        parents=[parent],
        help="write what a new server needs if this one is lost (docs/disaster-recovery.md)",
        description="A tar file (mode 0600) with server.yaml, the clients' pinned host keys, "
        "this server's public key, every host's repository locations and, with "
        "--with-secrets, the password and location files and what reaches the stores "
        "(matching ssh_config drop-ins, their keys and pinned host keys, pullback's unit "
        "drop-ins and the credential files they name) encrypted with age to the "
        "recipients in --recipient. Keep it away from this server.",
    )
    p.add_argument("--output", required=True, type=given_path, metavar="FILE", help="the bundle")
    p.add_argument(
        "--with-secrets",
        action="store_true",
        help="add the passwords, location files and store access files, encrypted "
        "(needs --recipient)",
    )
    p.add_argument(
        "--recipient",
        type=given_path,
        metavar="FILE",
        help="age recipients file (age1… or ssh-ed25519 public keys, one per line)",
    )
    import_suite_parser(sub, parent, "server.yaml", "server_config.yml")
    return parser


def drill_options(parser: argparse.ArgumentParser, what: str) -> None:
    """``--verify`` (run ``what`` now, due or not) and ``--no-verify`` (not this time);
    neither: when it is due. The value lands in ``verify`` (True, False or None)."""
    choice = parser.add_mutually_exclusive_group()
    choice.add_argument(
        "--verify", dest="verify", action="store_const", const=True, help=f"run {what} now"
    )
    choice.add_argument(
        "--no-verify", dest="verify", action="store_const", const=False, help=f"skip {what}"
    )


ACTIONS = {
    "import-backup-suite": Action("import_suite:command", loads_config=False),
    "configured": Action("configured:command", loads_config=False),
    "pull": Action("pull:command"),
    "maintain": Action("maintain:command"),
    "verify": Action("verify:command"),
    "copy": Action("copy:command"),
    "snapshots": Action("snapshots:command"),
    "restore": Action("restore:command"),
    "status": Action("status:command", loads_config=False),
    "publish": Action("outputs:command", loads_config=False),
    "check": Action("check:command"),
    "trust": Action("trust:command"),
    "release": Action("release:command"),
    "export-recovery": Action("export_recovery:command"),
}


def _handle(args: argparse.Namespace) -> int:
    return dispatch(args, "pullback.server", ACTIONS, load_server_config)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return main_wrapper(_handle, args, DEFAULT_PATH)


if __name__ == "__main__":
    sys.exit(main())
