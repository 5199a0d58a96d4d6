"""``pullback-server verify``: the restore drill for the chosen hosts, now: of the newest
snapshot (or one whose drill failed before), a random one, or one named by ``--snapshot``.

It shares the pull's instance lock, waiting ``maintenance.wait_for_pull`` for a running
pull or maintenance.
"""

from __future__ import annotations

import argparse
import dataclasses

from ..common.cli import print_json
from ..common.errors import EXIT_FAILED, EXIT_OK, UsageError
from ..common.log import get_logger
from ..common.signals import SignalGuard
from . import status_file
from .backends import Role
from .config import ServerConfig
from .drill import DrillChoice, DrillResult, drill
from .host import HostContext

log = get_logger("verify")


def verify(
    config: ServerConfig, names: list[str] | None = None, choice: DrillChoice | None = None
) -> tuple[int, list[DrillResult]]:
    """``pullback-server verify``: the restore drill for the hosts, now. Returns the exit
    code (1 when a drill failed; a host with nothing to drill yet is no failure) and each
    host's result. Raises UsageError when ``choice`` names a snapshot and the hosts are
    not exactly one, or the snapshot is not one of its own (nothing is recorded then)."""
    hosts = config.select_hosts(names)
    if choice is not None and choice.snapshot is not None and len(hosts) != 1:
        raise UsageError("--snapshot names one host's snapshot: give that host with --host")
    lock = config.instance_lock("pullback-server verify")
    results = []
    with lock.acquire(wait=config.maintenance.wait_for_pull), SignalGuard():
        try:
            for host in hosts:  # one at a time: each drill may fill the scratch space
                ctx = HostContext.open(config, host, role=Role.MAINTAIN)
                results.append(drill(ctx, choice))
        finally:  # stopped by a signal: the drills that ended, not the one it cut
            if results:
                status_file.record_drills(config.state_dir, results)
    return (EXIT_FAILED if any(r.failed for r in results) else EXIT_OK), results


def command(config: ServerConfig, args: argparse.Namespace) -> int:
    from .outputs import publish, record_problems

    choice = DrillChoice(snapshot=args.snapshot, random=args.random)
    code, results = verify(config, args.host, choice)
    _, unwritten = publish(config)
    record_problems(config, unwritten, "verify")
    code = code or (EXIT_FAILED if unwritten else EXIT_OK)
    if args.json:
        drills = [{**dataclasses.asdict(r), "summary": r.summary} for r in results]
        print_json({"exit_code": code, "hosts": drills, "not_written": unwritten})
        return code
    for result in results:
        print(f"{result.host}: {result.summary}")
    return code
