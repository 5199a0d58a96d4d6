"""``pullback-server import-backup-suite``: server.yaml from backup-suite's server_config.yml."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..common.backup_suite import Conversion, convert_server
from ..common.backup_suite_files import ImportSpec, run_import
from .config import load_server_config


def command(path: Path, args: argparse.Namespace) -> int:
    """Print (or with ``--write`` write) server.yaml made from ``--from``'s files; a file
    the old configuration keeps below ``--from`` is named at its new place."""
    source = str(args.source.absolute())

    def convert(data: dict, common: dict[str, str]) -> Conversion:
        return convert_server(data, common, source, str(path.absolute().parent))

    return run_import(
        args.source, path, args.write, ImportSpec("server_config.yml", convert, load_server_config)
    )
