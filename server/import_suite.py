"""``pullback-server import-backup-suite``: server.yaml from backup-suite's server_config.yml."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..common.backup_suite import convert_server
from ..common.backup_suite_files import ImportSpec, run_import
from .config import load_server_config

SPEC = ImportSpec("server_config.yml", convert_server, load_server_config)


def command(path: Path, args: argparse.Namespace) -> int:
    """Print (or with ``--write`` write) server.yaml made from ``--from``'s files."""
    return run_import(args.source, path, args.write, SPEC)
