"""``pullback-client import-backup-suite``: client.yaml from backup-suite's client_config.yml."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..common.backup_suite import Conversion, convert_client
from ..common.backup_suite_files import ImportSpec, run_import
from .config import load_client_config


def command(path: Path, args: argparse.Namespace) -> int:
    """Print (or with ``--write`` write) client.yaml made from ``--from``'s files; the
    service files stay in ``--from``."""
    service_dir = str(args.source.absolute())

    def convert(data: dict, common: dict[str, str]) -> Conversion:
        return convert_client(data, common, service_dir)

    return run_import(
        args.source, path, args.write, ImportSpec("client_config.yml", convert, load_client_config)
    )
