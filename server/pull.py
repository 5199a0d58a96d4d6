"""``pullback-server pull``: fetch every host's newest archive and store it.

Hosts run in parallel (``parallel:``), each in a process of its own with its own deadline
(``host_timeout``) and memory cap (``pull_memory_limit``), killed if it overstays (see
:mod:`.host_process`): a hung, slow or hostile host times out alone and a failure in one
never stops the others. An instance lock keeps two pulls (or a pull
and maintenance) apart; a journal tells the next pull what a killed one was doing.
"""

from __future__ import annotations

import argparse
import copy
import datetime as dt
import time
from dataclasses import dataclass, field

from ..common.cli import print_json
from ..common.clock import FUTURE_TOLERANCE, age, iso, signed_age, utc_now
from ..common.errors import EXIT_FAILED, EXIT_OK, UsageError, describe
from ..common.log import get_logger
from ..common.notify import Notifier
from ..common.outcome import Status
from ..common.signals import KEPT_FOR_NEXT_PULL, SignalGuard, deferred_signals
from ..common.units import human_ago, human_duration
from . import status_file
from .config import HostConfig, ServerConfig
from .host import HostContext
from .host_process import PhaseRelay, Work, pull_hosts, told_no_one
from .host_pull import HostPull, PullOptions
from .journal import DRY_RUN_PURPOSE, PULL_PURPOSE, Journal, Roster
from .metrics import stale_time
from .results import HostResult
from .transfer import drop_stale_partials

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
        if not dry_run:
            _sweep_partials(config, {h.name for h in hosts})

        def work(ctx: HostContext, relay: PhaseRelay) -> HostResult:
            host_pull = HostPull(ctx, asked, relay, interrupted)
            relay.result = host_pull.result
            return host_pull.run()

        recorder = None if dry_run else _Recorder(config)
        try:
            results = _pull_all(config, hosts, work, journal, lock.descriptors(), recorder)
        finally:
            if journal:
                journal.end()
        _conclude(config, results, recorder)
    failed = [r for r in results if r.status == Status.FAILED]
    return (EXIT_FAILED if failed else EXIT_OK), results


def _sweep_partials(config: ServerConfig, pulled: set[str]) -> None:
    """The stale partial downloads of the hosts this run does not pull (disabled, not
    named, or gone from server.yaml: nothing else would ever look at them); each host
    pulled sweeps its own. Never raises."""
    try:
        places = [p for p in config.partials_dir().iterdir() if p.name not in pulled]
    except FileNotFoundError:
        return
    except OSError as exc:
        log.warning("could not look at the partial downloads: %s", describe(exc))
        return
    for place in places:
        if place.is_symlink() or not place.is_dir():  # (only what pulls made: never followed)
            continue
        try:
            drop_stale_partials(place, config.partial_max_age, log)
        except OSError as exc:
            log.warning("could not look at the partial downloads in %s: %s", place, describe(exc))


def _pull_all(
    config: ServerConfig,
    hosts: list[HostConfig],
    work: Work,
    journal: Journal | None,
    parent_only: tuple[int, ...],
    recorder: _Recorder | None,
) -> list[HostResult]:
    """:func:`~.host_process.pull_hosts`, telling ``recorder`` (None: a dry run) as hosts
    end; on a signal or an error, what ended is recorded before it goes on."""
    progress = recorder.progress if recorder else told_no_one
    try:
        return pull_hosts(config, hosts, work, journal, parent_only, progress)
    except BaseException:  # a signal, or an error (a fork refused at TasksMax)
        if recorder is not None:
            recorder.stopped()
        raise


def _conclude(config: ServerConfig, results: list[HostResult], recorder: _Recorder | None) -> None:
    """The run's end: the groups' sizes on their members' results; the results assessed
    (a dry run) or what is left of them recorded, with the fleet's facts (and, when a
    signal comes meanwhile, what is left recorded as it stops)."""
    if recorder is None:
        _shared(config, results, {r.host: r.repository_bytes for r in results})
        assess(config, results)
        return
    try:
        recorder.finish(results, _shared(config, results, recorder.measured))
    except BaseException:
        recorder.stopped()
        raise


def _shared(
    config: ServerConfig, results: list[HostResult], measured: dict[str, int | None]
) -> dict[str, int]:
    """The groups' sizes (:func:`group_sizes` of what the run ``measured``), put on their
    members' results; returns them."""
    shared = group_sizes(config, measured)
    for result in results:
        result.repository_bytes = shared.get(result.host, result.repository_bytes)
    return shared


PUBLISH_EVERY = 10.0
"""Seconds between two records of the hosts that ended while a pull's others still run
(one rewrite of status.json for all of them: thousands of hosts ending in a minute once
cost 0.8 s each), each followed by the metrics file and the status page."""
RECORD_WAIT = 2.0
"""Seconds such a record waits for another writer of status.json (the run's loop ends
late hosts meanwhile); past it, it is tried again :data:`PUBLISH_EVERY` later."""
STOP_RECORD_WAIT = 60.0
"""Seconds the record made as a signal stops the run waits for another writer (the
units give a stopping run 5 minutes)."""
PUBLISH_ANYWAY = 300.0
"""Seconds after which the metrics file and the status page are written again while
hosts run even when none ended (the metrics' timestamp says the server is at work, not
that its timer stopped)."""


@dataclass
class _Recorder:
    """The results of the hosts that ended in status.json while the slowest host still
    runs, not only at the run's end (an outside attack: a client trickling its archive a
    byte every half second held every host's record, the metrics file and the status
    page back until its ``host_timeout``, 6 h by default, and monitoring's alert on the
    metrics' age fired): every :data:`PUBLISH_EVERY` seconds, those ended since, then the
    metrics file and the status page. What is left is recorded at the run's end
    (:meth:`finish`), or as a signal stops it (:meth:`stopped`)."""

    config: ServerConfig
    pending: list[HostResult] = field(default_factory=list)
    measured: dict[str, int | None] = field(default_factory=dict)
    """Each ended host's repository size as its pull measured it (before :func:`assess`
    fills in the recorded one): what the groups' sizes are made of."""
    looked: float = field(default_factory=time.monotonic)
    published: float = field(default_factory=time.monotonic)
    concluded: bool = False
    """Whether :meth:`finish` assessed the results (the run's end)."""

    def progress(self, result: HostResult | None, busy: bool) -> None:
        """:func:`~.host_process.pull_hosts`'s ``progress``; raises nothing but
        Interrupted (a signal that came meanwhile is raised as it ends); what fails is
        logged: the pull goes on, and its end records and publishes."""
        if result is not None:
            self.measured[result.host] = result.repository_bytes
            result.started = result.started or iso(utc_now())  # (what a record is known by)
            self.pending.append(result)
        now = time.monotonic()
        due = now - self.looked >= PUBLISH_EVERY and bool(self.pending)
        if busy and (due or now - self.published >= PUBLISH_ANYWAY):
            self.looked = now
            with deferred_signals():  # (a signal is no failure to record: the loop stops)
                self._record_and_publish()

    def _record_and_publish(self) -> None:
        try:
            if self.pending:
                self._record(wait=RECORD_WAIT)
            from .outputs import publish

            self.published = time.monotonic()
            publish(self.config)  # (what it cannot write is logged, and said at the end)
        except Exception as exc:
            log.warning("could not record the hosts' results yet: %s", describe(exc))
            self._forget_recorded()

    def stopped(self) -> None:
        """A signal or an error stops the run: what ended and is not recorded yet,
        recorded now (the journal names only the hosts running or waiting), waiting
        :data:`STOP_RECORD_WAIT` for another writer. Never raises."""
        try:
            self._forget_recorded()  # (the run's end may have written them, then raised)
            if self.pending:
                self._record(wait=STOP_RECORD_WAIT)
        except Exception as exc:
            log.warning("could not record the hosts that ended before the stop: %s", describe(exc))

    def _forget_recorded(self) -> None:
        """Drop from the results to record those status.json holds already: a record
        that raised after the file was replaced (its directory's fsync) recorded them,
        and recording them again counted a pull twice (its history, its checksum
        failure: two of those pass over the client's newest archive)."""
        try:
            hosts = status_file.load_status(self.config.state_dir)["hosts"]
        except Exception:
            return
        self.pending = [r for r in self.pending if not _holds(hosts.get(r.host), r)]

    def finish(self, results: list[HostResult], shared: dict[str, int]) -> None:
        """Assess every result as the run ends (the summary judges staleness then, as it
        always did), record what is left, and the fleet's facts (the hosts server.yaml
        lists, the groups' sizes). Raises OSError, PullbackError."""
        assess(self.config, results)
        self.concluded = True
        self._record(shared)

    def _record(self, shared: dict[str, int] | None = None, wait: float | None = None) -> None:
        """The results not recorded yet into status.json (``wait``: for another writer;
        None, as long as any writer waits): before the run's end a copy of each,
        assessed as it is now (the result itself is assessed once, at :meth:`finish`).
        A result already in the file (the write was done, and what raised came after
        it: a directory's fsync) is not counted again (:meth:`_forget_recorded`)."""
        done = self.pending if self.concluded else [copy.deepcopy(r) for r in self.pending]
        if not self.concluded:
            assess(self.config, done)
        listed = status_file.configured(self.config.hosts)
        status_file.record(self.config.state_dir, done, listed, shared, wait)
        self.pending.clear()


def _holds(entry: object, result: HostResult) -> bool:
    """Whether a host's status.json ``entry`` records ``result`` (its attempt's time is
    the last, in the entry and in its history)."""
    if not isinstance(entry, dict) or entry.get("last_attempt") != result.started:
        return False
    history = entry.get("history")
    return isinstance(history, list) and bool(history) and history[-1].get("time") == result.started


def group_sizes(config: ServerConfig, measured: dict[str, int | None]) -> dict[str, int]:
    """The size of each group's one repository as this run last measured it (``measured``:
    each pulled host's measure, None where its pull took none), for every member of the
    group (those this run did not pull too): the largest a member's pull measured, since
    a pull only adds. A member measured earlier in the run, or in an earlier run, would
    otherwise show an older size of the same repository."""
    largest: dict[str, int] = {}
    for host, size in measured.items():
        group = config.host(host).group
        if group is not None and size is not None:
            largest[group] = max(largest.get(group, 0), size)
    return {h.name: largest[h.group] for h in config.hosts if h.group in largest}


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
