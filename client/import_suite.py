"""``pullback-client import-backup-suite``: client.yaml from backup-suite's client_config.yml."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..common.backup_suite import convert_client, run_import


def command(path: Path, args: argparse.Namespace) -> int:
    """Print (or with ``--write`` write) client.yaml made from ``--from``'s files."""
    return run_import(args.source, path, args.write, convert_client, "client_config.yml")
