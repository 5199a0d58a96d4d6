"""Both programs take whole option names only. argparse takes any unambiguous prefix by
default: an outside test ran ``pullback-client run --ful`` (a full archive, whose
retention deleted the chain) and ``pullback-server restore --forc`` (a restore into a
full target) without a word. A prefix is now an unknown argument: exit 2."""

from __future__ import annotations

import argparse

import pytest

from pullback.client.cli import build_parser as client_parser
from pullback.client.cli import main as client_main
from pullback.server.cli import build_parser as server_parser


def _commands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    (sub,) = (a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


def _required(parser: argparse.ArgumentParser) -> list[str]:
    """Arguments that satisfy the command: a value for each required positional argument
    and option (a choice when there are some), one option of each required group."""
    values = []
    for action in parser._actions:
        value = str(next(iter(action.choices))) if action.choices else "1"
        if not action.option_strings and action.nargs in (None, 1, "+"):
            values.append(value)
        elif action.required:
            values += [action.option_strings[-1], value]
    for group in parser._mutually_exclusive_groups:
        if group.required:
            values += [group._group_actions[0].option_strings[-1], "1"]
    return values


@pytest.mark.parametrize("build", [client_parser, server_parser], ids=["client", "server"])
def test_no_command_takes_a_prefix_of_its_options(build):
    checked = 0
    for name, command in _commands(build()).items():
        options = {o for a in command._actions for o in a.option_strings}
        for option in sorted(o for o in options if o.startswith("--") and len(o) > 4):
            prefix = option[:-1]
            if prefix in options:
                continue
            _, unknown = command.parse_known_args([*_required(command), prefix])
            assert unknown == [prefix], f"{name} took {prefix} for {option}"
            checked += 1
    assert checked > 20  # (the walk found the options)


def test_a_prefix_is_an_unknown_argument_exit_2(capsys):
    with pytest.raises(SystemExit) as exited:
        client_main(["run", "--ful", "--dry-run"])
    assert exited.value.code == 2
    assert "unrecognized arguments: --ful" in capsys.readouterr().err


@pytest.mark.parametrize("build", [client_parser, server_parser], ids=["client", "server"])
def test_every_path_option_refuses_an_empty_path(build, capsys):
    """``restore --from "$ARCHIVE"`` with the variable unset read as the working
    directory (/ under a root shell), and the restore took it for a snapshot backup-suite
    made (a booted root's trial). Every path option now refuses "": exit 2, in words."""
    from pullback.common.cli import given_path

    checked = 0
    for name, command in _commands(build()).items():
        for action in command._actions:
            if action.type is not given_path:
                continue
            argv = [name, *_required(command)]
            if action.option_strings[-1] in argv:
                argv[argv.index(action.option_strings[-1]) + 1] = ""
            else:
                argv += [action.option_strings[-1], ""]
            with pytest.raises(SystemExit) as ended:
                build().parse_args(argv)
            assert ended.value.code == 2
            assert "an empty path" in capsys.readouterr().err, argv
            checked += 1
    assert checked >= 4
