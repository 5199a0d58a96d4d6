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
import time
from dataclasses import dataclass, field

from ..common.cli import print_json
from ..common.clock import FUTURE_TOLERANCE, age, signed_age, utc_now
from ..common.errors import EXIT_FAILED, EXIT_OK, UsageError, describe
from ..common.log import get_logger
from ..common.notify import Notifier
from ..common.outcome import Status
from ..common.signals import KEPT_FOR_NEXT_PULL, SignalGuard, deferred_signals
from ..common.units import human_ago, human_duration
from . import status_file
from .config import ServerConfig
from .host import HostContext
from .host_process import PhaseRelay, pull_hosts, told_no_one
from .host_pull import HostPull, PullOptions
from .journal import DRY_RUN_PURPOSE, PULL_PURPOSE, Journal, Roster
from .metrics import stale_time
from .results import HostResult

log = get_logger("pull")


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

        recorder = None if dry_run else _Recorder(config)
        try:
            results = pull_hosts(
                config,
                hosts,
                work,
                journal,
                parent_only=lock.descriptors(),
                progress=recorder.progress if recorder else told_no_one,
            )
        finally:
            if journal:
                journal.end()
        _conclude(config, results, recorder)
    failed = [r for r in results if r.status == Status.FAILED]
    return (EXIT_FAILED if failed else EXIT_OK), results


def _conclude(config: ServerConfig, results: list[HostResult], recorder: _Recorder | None) -> None:
    """The run's end: the groups' sizes on their members' results; the results assessed
    (a dry run) or what is left of them recorded, with the fleet's facts."""
    shared = group_sizes(config, results)
    for result in results:
        result.repository_bytes = shared.get(result.host, result.repository_bytes)
    if recorder is None:
        assess(config, results)
    else:
        recorder.finish(shared)


PUBLISH_EVERY = 10.0
"""Seconds between two writes of the metrics file and the status page while a pull's
hosts still run, when a host's result was recorded since."""
RECORD_WAIT = 2.0
"""Seconds a record made while hosts still run waits for another writer of status.json
(the run's loop ends late hosts meanwhile); past it, the result is recorded later."""
PUBLISH_ANYWAY = 300.0
"""Seconds after which they are written again while hosts run even when none ended (the
metrics' timestamp says the server is at work, not that its timer stopped)."""


@dataclass
class _Recorder:
    """Each host's result in status.json as its pull ends, not when the slowest host's
    does (an outside attack: a client trickling its archive a byte every half second held
    every host's record, the metrics file and the status page back until its
    ``host_timeout``, 6 h by default, and monitoring's alert on the metrics' age fired);
    the metrics file and the status page written again from it while hosts still run
    (:data:`PUBLISH_EVERY`, :data:`PUBLISH_ANYWAY`). What cannot be recorded while the
    run goes on is logged and recorded at its end (:meth:`finish`)."""

    config: ServerConfig
    unrecorded: list[HostResult] = field(default_factory=list)
    assessed: set[str] = field(default_factory=set)
    published: float = field(default_factory=time.monotonic)
    changed: bool = False

    def progress(self, result: HostResult | None, busy: bool) -> None:
        """:func:`~.host_process.pull_hosts`'s ``progress``; raises nothing but
        Interrupted (a signal that came meanwhile is raised as it ends); what fails is
        logged: the pull goes on, and its end records and publishes."""
        with deferred_signals():  # (a signal is no failure to record: the loop stops)
            self._progress(result, busy)

    def _progress(self, result: HostResult | None, busy: bool) -> None:
        try:
            if result is not None:
                self.unrecorded.append(result)
                self._record()
            waited = time.monotonic() - self.published
            if busy and (waited >= PUBLISH_ANYWAY or (self.changed and waited >= PUBLISH_EVERY)):
                from .outputs import publish

                self.published, self.changed = time.monotonic(), False
                publish(self.config)  # (what it cannot write is logged, and said at the end)
        except Exception as exc:
            log.warning("could not record the hosts' results yet: %s", describe(exc))

    def finish(self, shared: dict[str, int]) -> None:
        """Record what could not be recorded as it ended, and the fleet's facts (the
        hosts server.yaml lists, the groups' sizes). Raises OSError, PullbackError."""
        self._record(shared, final=True)

    def _record(self, shared: dict[str, int] | None = None, final: bool = False) -> None:
        """The results not yet recorded, assessed once each, into status.json (waiting
        for another writer :data:`RECORD_WAIT` while hosts run, as long as any writer
        waits at the ``final`` record)."""
        fresh = [r for r in self.unrecorded if r.host not in self.assessed]
        assess(self.config, fresh)
        self.assessed.update(r.host for r in fresh)
        listed = status_file.configured(self.config.hosts)
        wait = None if final else RECORD_WAIT
        status_file.record(self.config.state_dir, self.unrecorded, listed, shared, wait)
        self.unrecorded.clear()
        self.changed = True


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
