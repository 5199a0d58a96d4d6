"""The pull's unit rewrites the outputs after a pull cut short (ExecStopPost=), and that
line can never fail the unit."""

from __future__ import annotations

import configparser
import shlex
from pathlib import Path

from pullback.server.cli import build_parser

UNITS = Path(__file__).resolve().parents[2] / "systemd"


def exec_stop_post(name: str) -> str | None:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read(UNITS / name)
    return parser["Service"].get("ExecStopPost")


def test_the_pull_s_unit_publishes_after_a_cut_short_pull_and_ignores_its_exit():
    line = exec_stop_post("pullback-server.service")
    assert line is not None and line.startswith("-/usr/bin/pullback-server "), line
    argv = shlex.split(line[1:])
    args = build_parser().parse_args(argv[1:])
    assert args.command == "publish" and args.if_failed


def test_the_units_without_a_journal_have_none():
    # maintain and copy keep no journal: there is nothing cut short to publish
    for name in ("pullback-maintain.service", "pullback-copy.service"):
        assert exec_stop_post(name) is None, name
