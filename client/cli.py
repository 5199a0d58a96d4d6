"""pullback-client: snapshot this machine's services into an archive the server pulls."""

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
from .config import DEFAULT_PATH, load_client_config

DESCRIPTION = __doc__


def build_parser() -> argparse.ArgumentParser:
    parent = common_options(DEFAULT_PATH)
    parser, sub = make_parser("pullback-client", DESCRIPTION, parent)
    p = sub.add_parser(
        "run",
        parents=[parent],
        help="snapshot the services into a new archive",
        description="Run every service's plugins and publish one verified archive. "
        "Exit 0: all services ok; 1: a service failed; 2: bad configuration; "
        "75: another run holds the lock.",
    )
    p.add_argument(
        "-n",
        "--dry-run",
        action="store_true",
        help="validate and show what would be done, change nothing",
    )
    p.add_argument(
        "--if-due",
        action="store_true",
        help="do nothing while the newest good archive is younger than min_interval (timers)",
    )
    p.add_argument(
        "-s", "--service", action="append", metavar="NAME", help="only this service (repeatable)"
    )
    p.add_argument(
        "--full",
        action="store_true",
        help="make a full archive even when a delta could be made (incremental.enabled)",
    )
    p = sub.add_parser(
        "check", parents=[parent], help="validate the configuration, every service and plugin"
    )
    json_option(p)
    sub.add_parser(
        "configured",
        parents=[parent],
        help="exit 1 when no service is configured yet (for systemd's ExecCondition)",
    )
    p = sub.add_parser("list", parents=[parent], help="list the archives on this machine")
    json_option(p)
    p = sub.add_parser(
        "restore",
        parents=[parent],
        help="put a service back from a restored snapshot or an archive",
        description="Stop the service (its docker/systemd tasks), run every "
        "task's restore (files copied back; each database restored beside the live "
        "one, as NAME_restored_STAMP, unless --replace), start it again. --from is a "
        "directory holding services/NAME/ (as `pullback-server restore` writes it) or "
        "a pullback archive file. Exit 0: restored; 1: a task failed (nothing live was "
        "destroyed); 2: wrong service, task or source.",
    )
    p.add_argument("-s", "--service", required=True, metavar="NAME", help="the service")
    p.add_argument(
        "--from",
        dest="source",
        required=True,
        type=given_path,
        metavar="DIR",
        help="restored snapshot directory, or an archive .tar.zst",
    )
    p.add_argument("--task", metavar="TASK", help="only this task (e.g. postgresql, files)")
    p.add_argument(
        "--target",
        type=given_path,
        metavar="DIR",
        help="put files below DIR instead of their original place (made if missing)",
    )
    p.add_argument(
        "-n",
        "--dry-run",
        action="store_true",
        help="say every step (destructive ones marked) and the preflight's verdict; change nothing",
    )
    p.add_argument(
        "--replace",
        action="store_true",
        help="replace the live databases, after a preflight; the replaced ones are kept "
        "(renamed NAME_before_restore_STAMP, or copied aside)",
    )
    server = p.add_argument_group("restore the databases to another server")
    server.add_argument("--hostname", metavar="HOST", help="database server host (or socket dir)")
    server.add_argument("--port", type=int, metavar="N", help="database server port")
    server.add_argument("--username", metavar="USER", help="database user to restore as")
    server.add_argument(
        "--password-file",
        type=given_path,
        metavar="FILE",
        help="file holding that user's password (owner-only; never a password on the command line)",
    )
    sub.add_parser(
        "start-stopped",
        parents=[parent],
        help="start again what a run killed before its finish left stopped",
        description="Start again the applications (docker, systemd tasks) that a run or "
        "restore stopped and, killed outright, never started: the ones its record "
        "(stopped.json beside the work directory) names, through each task's finish. "
        "Every run and restore does it first; the client unit runs it after every run "
        "(ExecStopPost=). Exit 0: nothing was left stopped, all of it started, or a "
        "run or restore holds the lock (it starts them itself); 1: something could not "
        "be started (said).",
    )
    sub.add_parser(
        "serve",
        parents=[parent],
        help="answer the server (the forced command of its SSH key; not for humans)",
    )
    import_suite_parser(sub, parent, "client.yaml", "client_config.yml")
    return parser


ACTIONS = {
    "import-backup-suite": Action("import_suite:command", loads_config=False),
    "configured": Action("config:configured", loads_config=False),
    "run": Action("run:command"),
    "check": Action("check:command"),
    "restore": Action("restore:command"),
    "serve": Action("serve:command"),
    "list": Action("listing:command"),
    "start-stopped": Action("stopped:start_stopped", loads_config=False),
}


def _handle(args: argparse.Namespace) -> int:
    return dispatch(args, "pullback.client", ACTIONS, load_client_config)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "serve" and not hasattr(args, "verbose"):
        args.quiet = True  # stderr goes to the server: only problems belong there
    return main_wrapper(_handle, args, DEFAULT_PATH)


if __name__ == "__main__":
    sys.exit(main())
