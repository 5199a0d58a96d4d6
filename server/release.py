"""``pullback-server release HOST``: end the ransomware guard's hold on a host.

The guard (:mod:`.guard`) held forget and prune because the host's newest snapshot
changed too much from the one before. Releasing accepts that snapshot: the next
``maintain`` forgets by the retention policy again, and judges only snapshots after it.
"""

from __future__ import annotations

import argparse

from ..common.errors import EXIT_OK, UsageError
from . import status_file
from .config import ServerConfig


def command(config: ServerConfig, args: argparse.Namespace) -> int:
    """Release the hold; print what was released. Raises UsageError for an unknown host
    or a host with no hold."""
    host = config.host(args.hostname)
    hold = status_file.release_hold(config.state_dir, host.name)
    if hold is None:
        raise UsageError(f"{host.name}: forget is not held; nothing to release")
    print(
        f"{host.name}: released the hold of {hold.get('since')} ({hold.get('reason')}); "
        "the next maintain forgets by the retention policy again"
    )
    return EXIT_OK
