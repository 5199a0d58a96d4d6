"""``pullback-server pull``: fetch every host's newest archive and store it.

Hosts run in parallel (``parallel:``), each in a process of its own with its own deadline
(``host_timeout``) and memory cap (``pull_memory_limit``), killed if it overstays (see
:mod:`.host_process`): a hung, slow or hostile host times out alone and a failure in one
never stops the others. An instance lock keeps two pulls (or a pull
and maintenance) apart; a journal tells the next pull what a killed one was doing.
"""

from __future__ import annotations

import argparse
import datetime as dt

from ..common.cli import print_json
from ..common.clock import FUTURE_TOLERANCE, age, signed_age, utc_now
from ..common.errors import EXIT_FAILED, EXIT_OK, UsageError
from ..common.notify import Notifier
from ..common.outcome import Status
from ..common.signals import KEPT_FOR_NEXT_PULL, SignalGuard
from ..common.units import human_ago, human_duration
from . import status_file
from .config import ServerConfig
from .host import HostContext
from .host_process import PhaseRelay, pull_hosts
from .host_pull import HostPull, PullOptions
from .journal import DRY_RUN_PURPOSE, PULL_PURPOSE, Journal, Roster
from .metrics import stale_time
from .results import HostResult


def pull(
    config: ServerConfig, names: list[str] | None = None, options: PullOptions | None = None
) -> tuple[int, list[HostResult]]:
    """Pull the hosts (with ``options.if_due``, only those not fresh). Returns (exit
    code, results). Raises LockBusy, PullbackError."""
    asked = options or PullOptions()
    dry_run = asked.dry_run
    hosts = config.select_hosts(names)
    purpose = DRY_RUN_PURPOSE if dry_run else PULL_PURPOSE
    lock = config.instance_lock(purpose)
    with lock.acquire(), SignalGuard(KEPT_FOR_NEXT_PULL):
        config.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        journal = None if dry_run else Journal(config.state_dir)
        interrupted = journal.begin() if journal else None
        if journal is not None:
            pulled = [h.name for h in hosts]
            journal.carry(interrupted, pulled, Roster.of(config.hosts))
            journal.pulls_disabled(sorted(set(pulled) & set(config.disabled)))
        if interrupted is not None:
            interrupted = interrupted.merged()  # (each host pulled reports what it carried)

        def work(ctx: HostContext, relay: PhaseRelay) -> HostResult:
            host_pull = HostPull(ctx, asked, relay, interrupted)
            relay.result = host_pull.result
            return host_pull.run()

        try:
            results = pull_hosts(config, hosts, work, journal, parent_only=lock.descriptors())
        finally:
            if journal:
                journal.end()
        shared = group_sizes(config, results)
        for result in results:
            result.repository_bytes = shared.get(result.host, result.repository_bytes)
        assess(config, results)
        if not dry_run:
            listed = status_file.configured(config.hosts)
            status_file.record(config.state_dir, results, listed, shared)
    failed = [r for r in results if r.status == Status.FAILED]
    return (EXIT_FAILED if failed else EXIT_OK), results


def group_sizes(config: ServerConfig, results: list[HostResult]) -> dict[str, int]:
    """The size of each group's one repository as this run last measured it, for every
    member of the group (those this run did not pull too): the largest a member's pull
    measured, since a pull only adds. A member measured earlier in the run, or in an
    earlier run, would otherwise show an older size of the same repository."""
    measured: dict[str, int] = {}
    for result in results:
        group = config.host(result.host).group
        if group is not None and result.repository_bytes is not None:
            measured[group] = max(measured.get(group, 0), result.repository_bytes)
    return {h.name: measured[h.group] for h in config.hosts if h.group in measured}


def _stale_words(result: HostResult, max_age: float, now: dt.datetime) -> str:
    """Why the host's newest snapshot counts as stale (:func:`.metrics.stale_time`)."""
    newest_age = signed_age(result.newest_snapshot, now)
    if newest_age is None:
        return (
            "no snapshot has been stored yet"
            if result.snapshots_listed
            else "no snapshot is known: the repository's snapshots could not be listed, "
            "and the status file records none"
        )
    if newest_age < 0:
        ahead = human_duration(FUTURE_TOLERANCE.total_seconds())
        return (
            f"the newest snapshot is dated {human_ago(newest_age)} (max_age "
            f"{human_duration(max_age)}; a date over {ahead} ahead counts as stale)"
        )
    return (
        f"the newest snapshot is {human_duration(newest_age)} old "
        f"(max_age {human_duration(max_age)})"
    )


def assess(config: ServerConfig, results: list[HostResult]) -> None:
    """Flag hosts whose newest snapshot is too old or whose last drill is too old."""
    now = utc_now()
    recorded = status_file.load_status(config.state_dir)["hosts"]
    for result in results:
        host = config.host(result.host)
        entry = recorded.get(result.host, {})
        result.last_verified = entry.get("last_verified")
        result.databases_proven = entry.get("databases_proven")
        if result.repository_bytes is None:
            result.repository_bytes = entry.get("repository_bytes")
        if not result.snapshots_listed:
            _recorded_snapshots(result, entry)
        # (a disabled host, pulled by name, is never stale: as status, --check and the
        # metrics say; status.json kept "stale": true for it)
        if host.enabled and stale_time(result.newest_snapshot, host.max_age, now):
            result.stale = True
            result.warnings.insert(0, _stale_words(result, host.max_age, now))
        verified = age(result.last_verified, now)
        limit = config.maintenance.verify_max_age
        oldest = age(result.oldest_snapshot, now)
        if (verified is None and oldest is not None and oldest > limit) or (
            verified is not None and verified > limit
        ):
            result.unverified = True
            result.warnings.append(
                "never proven restorable by a drill"
                if verified is None
                else f"the last successful restore drill is {human_duration(verified)} old "
                f"(verify_max_age {human_duration(limit)})"
            )


def _recorded_snapshots(result: HostResult, entry: dict) -> None:
    """A pull that could not list the repository's snapshots says what the status file
    last recorded of them, not that there are none (which would call the host never
    stored, and count it 0 snapshots)."""
    recorded = entry.get("newest_snapshot")
    if result.newest_snapshot is None and isinstance(recorded, str):
        result.newest_snapshot = recorded
    count = entry.get("snapshots")
    if isinstance(count, int) and not isinstance(count, bool):
        result.snapshot_count = max(result.snapshot_count, count)


def command(config: ServerConfig, args: argparse.Namespace) -> int:
    """``pullback-server pull``: pull, then report (status, metrics, page, mail, pings)."""
    from .outputs import finish_pull

    if args.new and not args.host:
        raise UsageError("--new needs --host NAME: it starts a new history for that host only")
    notifier = Notifier(config.notify, "pull")
    if not args.dry_run:
        notifier.start()
    options = PullOptions(dry_run=args.dry_run, if_due=args.if_due, new=args.new)
    code, results = pull(config, args.host, options)
    unwritten = finish_pull(config, results, notifier, args.dry_run, args.summary)
    code = code or (EXIT_FAILED if unwritten else EXIT_OK)
    if args.json:
        print_json(
            {"exit_code": code, "hosts": [r.to_report() for r in results], "not_written": unwritten}
        )
    return code
