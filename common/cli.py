"""What both command-line programs share: common options and exit-code handling."""

from __future__ import annotations

import argparse
import dataclasses
import enum
import importlib
import json
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import __version__
from . import log as logs
from .errors import EXIT_CONFIG, EXIT_FAILED, EXIT_SOFTWARE, ConfigError, Interrupted, PullbackError
from .signals import SignalGuard

log = logs.get_logger()


def _jsonable(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, (Path, set, frozenset)):
        return str(value) if isinstance(value, Path) else sorted(value)
    raise TypeError(f"{type(value).__name__} is not JSON")


def print_json(data: Any) -> None:
    """What ``--json`` prints: ``data`` (dataclasses, enums and paths included) as
    indented JSON with sorted keys, on standard output."""
    print(json.dumps(data, indent=2, sort_keys=True, default=_jsonable))


def given_path(value: str) -> Path:
    """A path argument as given; an empty one is refused (argparse says so and exits
    2): it read as the working directory, and ``restore --from "$ARCHIVE"`` with the
    variable unset took ``/`` for a snapshot backup-suite made."""
    if not value:
        raise argparse.ArgumentTypeError("an empty path (a shell variable that was not set?)")
    return Path(value)


def json_option(parser: argparse._ActionsContainer) -> None:
    """``--json``, the same on every command that lists or reports."""
    parser.add_argument("--json", action="store_true", help="machine-readable output (JSON)")


def import_suite_parser(sub, parent: argparse.ArgumentParser, new: str, old: str) -> None:
    """The ``import-backup-suite`` subcommand (``--from DIR``, ``--write``) of either side."""
    p = sub.add_parser(
        "import-backup-suite",
        parents=[parent],
        help=f"{new} from backup-suite's {old} (and common_config)",
        description="Read backup-suite's configuration and print pullback's: every key "
        "mapped, or said why it has no equivalent (on standard error). With --write the "
        "result replaces the configuration file, the old one kept as .before-import.",
    )
    p.add_argument(
        "--from",
        dest="source",
        type=given_path,
        default=Path("/etc/backup"),
        metavar="DIR",
        help="backup-suite's configuration directory (default /etc/backup)",
    )
    p.add_argument("--write", action="store_true", help="write the configuration file")


class WholeOptionsParser(argparse.ArgumentParser):
    """argparse taking whole option names only: by default it takes any unambiguous
    prefix (``run --ful`` made a full archive, ``restore --forc`` wrote into a full
    target: an outside test). Its subcommands' parsers are of this class too."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)


def common_options(default_config: Path) -> argparse.ArgumentParser:
    """A parent parser with --config, -v and -q, usable before and after the subcommand."""
    parent = WholeOptionsParser(add_help=False)
    parent.add_argument(
        "-c",
        "--config",
        type=given_path,
        default=argparse.SUPPRESS,
        help=f"configuration file (default: {default_config})",
    )
    parent.add_argument(
        "-v",
        "--verbose",
        action="count",
        default=argparse.SUPPRESS,
        help="more detail (debug output)",
    )
    parent.add_argument(
        "-q",
        "--quiet",
        action="store_true",
        default=argparse.SUPPRESS,
        help="only warnings and errors",
    )
    return parent


def make_parser(prog: str, description: str, parent: argparse.ArgumentParser):
    parser = WholeOptionsParser(prog=prog, description=description, parents=[parent])
    parser.add_argument("--version", action="version", version=f"{prog} {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    return parser, sub


@dataclass(frozen=True)
class Action:
    """Where a subcommand is implemented: ``module:function`` in the program's package.

    The function is called with the loaded configuration and the parsed arguments, or
    with the configuration's path when ``loads_config`` is false; it returns the exit code.
    """

    target: str
    loads_config: bool = True


def dispatch(
    args: argparse.Namespace,
    package: str,
    actions: Mapping[str, Action],
    load_config: Callable[[Path], Any],
) -> int:
    """Run the action of ``args.command``; returns its exit code."""
    action = actions[args.command]
    module, function = action.target.split(":")
    run = getattr(importlib.import_module(f"{package}.{module}"), function)
    config = load_config(args.config) if action.loads_config else args.config
    return run(config, args)


def main_wrapper(
    handler: Callable[[argparse.Namespace], int], args: argparse.Namespace, default_config: Path
) -> int:
    """Set up logging, run ``handler`` and turn every expected failure into an exit code.

    SIGTERM, SIGINT and SIGHUP raise :class:`Interrupted` in every command (exit 128 +
    the signal's number), so what a command runs is stopped with it: an administrator's
    ``kill`` reaches only this process, and the tools it started in their own sessions
    (restic, borg, ssh) went on alone. A second signal ends the program at once; the
    commands that stop services or pull enter their own, patient guard inside."""
    if not hasattr(args, "config"):
        args.config = default_config
    verbosity = -1 if getattr(args, "quiet", False) else getattr(args, "verbose", 0)
    logs.setup(verbosity)
    try:
        with SignalGuard(patient=False) as guard:
            code = handler(args)
            guard.raise_swallowed()  # a signal caught with a command's own failures
            return code
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return EXIT_CONFIG
    except Interrupted as exc:
        log.error("%s", exc)
        return exc.exit_code
    except PullbackError as exc:
        log.error("%s", exc)
        return exc.exit_code
    except KeyboardInterrupt:
        log.error("interrupted")
        return 130
    except BrokenPipeError:
        return EXIT_FAILED
    except Exception:
        log.critical("internal error, please report it:", exc_info=True)
        return EXIT_SOFTWARE
