"""``pullback-server release HOST [--copy]``: end the ransomware guard's hold on a host
(or on its second copy).

The guard (:mod:`.guard`) held forget and prune because the host's newest snapshot
changed too much from the last one judged normal. Releasing accepts the held snapshot:
the next ``maintain`` compares the newest snapshot against it and, if that is normal,
forgets by the retention policy again.
"""

from __future__ import annotations

import argparse

from ..common.errors import EXIT_FAILED, EXIT_OK, UsageError
from . import status_file
from .config import ServerConfig


def command(config: ServerConfig, args: argparse.Namespace) -> int:
    """Release the hold; print what was released (or that there was none: exit 0 all the
    same, so that a script may release twice), and write the metrics and the status page
    again (they said "held" until the next pull: an alert kept firing). Returns 1 when
    those could not be written. Raises UsageError for an unknown host, or ``--copy``
    without a ``copy:`` section."""
    from .outputs import publish, record_problems

    host = config.host(args.hostname)
    scope = "copy" if getattr(args, "copy", False) else ""
    if scope and config.backend.copy is None:
        raise UsageError(f"{config.path} has no copy: section: {host.name} has no copy")
    lock = config.instance_lock("pullback-server release")
    with lock.acquire(wait=config.maintenance.wait_for_pull):  # pulls rewrite status.json
        hold = status_file.release_hold(config.state_dir, host.name, scope)
    name = f"{host.name}'s copy" if scope else host.name
    if hold is None:
        print(f"{name}: forget is not held; nothing to release")
        return EXIT_OK
    print(
        f"{name}: released the hold of {hold.get('since')} ({hold.get('reason')}); "
        "the next maintain forgets by the retention policy again"
    )
    _, unwritten = publish(config)
    record_problems(config, unwritten)
    return EXIT_FAILED if unwritten else EXIT_OK
