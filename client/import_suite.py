"""``pullback-client import-backup-suite``: client.yaml from backup-suite's client_config.yml."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..common.backup_suite import Conversion, convert_client, run_import


def command(path: Path, args: argparse.Namespace) -> int:
    """Print (or with ``--write`` write) client.yaml made from ``--from``'s files."""

    def convert(data: dict, common: dict[str, str]) -> Conversion:
        return convert_client(data, common, str(args.source.absolute()))

    return run_import(args.source, path, args.write, convert, "client_config.yml")
