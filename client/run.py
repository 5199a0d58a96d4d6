"""``pullback-client run``: snapshot the services into one verified, published archive."""

from __future__ import annotations

import argparse
import datetime as dt
import os
import stat
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..common import __version__
from ..common.archive import directory as archives
from ..common.archive.filecache import FileCache
from ..common.archive.reader import verify_archive
from ..common.archive.sidecar import (
    LEFT_OUT,
    ArchiveInfo,
    ArchiveKind,
    ServiceReport,
    Sidecar,
)
from ..common.archive.writer import ArchiveWriter, Incremental, WrittenArchive
from ..common.clock import iso, stamp_of, utc_now
from ..common.errors import (
    EXIT_FAILED,
    EXIT_OK,
    ArchiveError,
    InternalError,
    LockBusy,
    PullbackError,
    UsageError,
    describe,
)
from ..common.fsutil import remove_tree_contents, set_dir_mode
from ..common.log import PrefixAdapter, get_logger
from ..common.notify import Notifier
from ..common.outcome import Status
from ..common.progress import Progress, Watched
from ..common.signals import RESTORING, SignalGuard
from ..common.text import few, printable
from ..common.trees import remove_tree
from ..common.units import human_duration, human_size
from ..plugins.manager import PluginSet, as_lines, load_plugins
from . import free_space, incremental, outputs, stopped
from .config import ClientConfig, IncrementalMode
from .services import Service, discover
from .stages import make_tasks, run_service, validate_service

log = get_logger("client")


@dataclass
class RunResult:
    """What a run did: its exit code, the per-service reports, the published archive."""

    exit_code: int
    services: list[ServiceReport] = field(default_factory=list)
    sidecar: Sidecar | None = None
    archive: str | None = None


def select_services(services: list[Service], names: list[str] | None) -> list[Service]:
    """The services named on the command line (all enabled ones when none are named).

    Raises UsageError for a name that matches no service.
    """
    if not names:
        return [s for s in services if s.enabled]
    by_name = {s.name: s for s in services}
    unknown = [n for n in names if n not in by_name]
    if unknown:
        raise UsageError(
            f"no service named {', '.join(repr(n) for n in unknown)}; "
            f"known services: {', '.join(sorted(by_name)) or 'none'}"
        )
    return [by_name[n] for n in dict.fromkeys(names)]


def left_out(services: list[Service], chosen: list[Service]) -> list[str]:
    """The enabled services of ``services`` that ``chosen`` (``run --service``) leaves
    out. Their archive counts as partial: client retention keeps the newest complete
    archive, ``--if-due`` does not take it for fresh, the server's forget waits and
    ``restore --service`` takes such a service from an earlier snapshot (an outside walk
    saw a one-service run delete the only archives holding the others, and the server
    forget their snapshots, with every status saying ok)."""
    named = {s.name for s in chosen}
    return [s.name for s in services if s.enabled and s.name not in named]


def dry_run(services: list[Service], plugins: PluginSet) -> int:
    """Print what a run would do; change nothing. Returns the exit code."""
    code = EXIT_OK
    for service in services:
        print(f"service {service.name} ({service.file})")
        for warning in service.warnings:
            print(f"  warning: {warning}")
        if service.broken:
            code = EXIT_FAILED
            for problem in service.problems:
                print(f"  problem: {problem}")
            continue
        tasks = make_tasks(service, Path("/nonexistent"), None, dry_run=True)
        found = validate_service(service, plugins, tasks)
        for line in found:
            print(f"  problem: {line}")
        if found:
            code = EXIT_FAILED
            continue
        for task in tasks:
            print(f"  {task.key}:")
            try:
                lines = as_lines(plugins.call("plan", task)) or ["(no plan available)"]
            except Exception as exc:
                lines = [f"cannot plan: {describe(exc)}"]
            for line in lines:
                print(f"    {line}")
    return code


def dry_archive_kind(config: ClientConfig, full: bool) -> str:
    """Whether a run now would make a full archive or a delta, and why, in words (the
    server's request for a full is looked at, not used up)."""
    if config.incremental.mode is IncrementalMode.OFF:
        return "full (incremental.enabled: false)"
    forced = incremental.forced_full(config, full, use_up=False)
    cache = FileCache(config.incremental.cache_dir, config.hostname)
    try:
        decision = incremental.decide(config, cache, utc_now(), forced)
    finally:
        cache.close()
    return f"a delta ({decision.reason})" if decision.delta else f"full ({decision.reason})"


def _new_stamp(config: ClientConfig) -> tuple[str, dt.datetime]:
    while True:
        now = utc_now()
        stamp = stamp_of(now)
        name = archives.archive_name(config.hostname, stamp, config.archive_suffix)
        if not (config.archive_dir / name).exists():
            return stamp, now
        time.sleep(0.2)


def dry_run_command(config: ClientConfig, names: list[str] | None, full: bool) -> int:
    """``run --dry-run``: print what a run would do, change nothing. Returns the exit code."""
    plugins = load_plugins(config.plugin_dirs)
    code = dry_run(select_services(discover(config.service_dirs, plugins), names), plugins)
    print(f"archive: {dry_archive_kind(config, full)}")
    return code


def run(config: ClientConfig, names: list[str] | None = None, *, full: bool = False) -> int:
    """Run the client once and report it (the status file, metrics, mail and pings), under
    the client's lock (``full``: a full archive even when a delta could be made).

    Returns the exit code; raises LockBusy (another run reports itself), ConfigError,
    UsageError, and what the run raised (after reporting it)."""
    plugins = load_plugins(config.plugin_dirs)
    found = discover(config.service_dirs, plugins)
    services = select_services(found, names)
    if not services:
        log.warning(
            "no enabled services found in %s", ", ".join(str(d) for d in config.service_dirs)
        )
        # (what a killed run left is started and reported all the same; this run made
        # nothing to report: its status stays the last real run's)
        left = _killed_or_left(stopped.recover_and_report(config))
        return EXIT_FAILED if left else EXIT_OK
    notifier = Notifier(config.notify, f"run on {config.hostname}")
    notifier.start()
    started = time.monotonic()
    lock = config.instance_lock("pullback-client run")
    with lock.acquire(), SignalGuard(RESTORING) as guard:
        reporter = Reporter(config, notifier, started, guard)
        try:
            reporter.configured = kept_entries(config, found, services)
            result = _recover_and_run(reporter, (found, services), plugins, full)
            with guard.shielded():
                return reporter.ended(result)
        except PullbackError:
            raise
        except Exception as exc:  # a bug (in the run, or its report): reported, then exit 70
            raise reporter.crashed(exc) from exc


def _recover_and_run(
    reporter: Reporter,
    chosen: tuple[list[Service], list[Service]],
    plugins: PluginSet,
    full: bool,
) -> RunResult:
    """Start what a killed run left, mark this run under way, run it (``chosen``: the
    services found and those to run). Returns its result; a failure is reported, then
    raised."""
    config, guard = reporter.config, reporter.guard
    found, services = chosen
    # A stop waits: these were to be started long ago. A signal that came meanwhile
    # is raised as the block ends, before this run reports anything: the killed
    # run's mark, and what was not started, stay for the unit's start-stopped.
    with guard.shielded():
        reporter.recovery = recovery = stopped.start_left_stopped(config, plugins)
        if guard.received is None:
            record = stopped.StoppedRecord(stopped.record_path(config), "run")
            record.begin([s.name for s in services], recovery)  # (carries it)
            reporter.record = record
    try:
        client_run = ClientRun(config, services, plugins, guard, record)
        client_run.full_asked = full
        client_run.left_out = left_out(found, services)
        limit = config.run_timeout
        why = f"the run took longer than its run_timeout ({human_duration(limit)})"
        with guard.time_limit(limit, why):
            return client_run.run()
    except PullbackError as exc:
        with guard.shielded():  # (a stop waits for the report of what it stopped)
            reporter.failed(str(exc))
        raise


def kept_entries(
    config: ClientConfig, found: list[Service], services: list[Service]
) -> frozenset[str] | None:
    """The services whose entries the status file keeps (:attr:`.outputs.RunSummary.configured`):
    the enabled ones and those this run was asked for. None (every entry stays) while
    the configuration is in doubt: a service directory missing, or holding no service (a
    disk not mounted: said), a service file with problems (its name may not be its own)."""
    doubts = [  # (from what discovery found below each: no second look at the disk)
        d for d in config.service_dirs if not any(s.file.is_relative_to(d) for s in found)
    ]
    for directory in doubts:
        log.warning(
            "the service directory %s is missing or holds no service (a disk not mounted?): "
            "no service's status entry is dropped",
            directory,
        )
    if doubts or any(s.problems for s in found):
        return None
    return frozenset(s.name for s in found if s.enabled) | {s.name for s in services}


@dataclass
class Reporter:
    """A run's report, made under its lock: the record's mark of the run under way is
    cleared once the status file is written (:meth:`.stopped.StoppedRecord.reported`);
    a run killed before then is reported by the next ``start-stopped``."""

    config: ClientConfig
    notifier: Notifier
    started: float
    """When the run began (``time.monotonic``)."""
    guard: SignalGuard
    record: stopped.StoppedRecord | None = None
    """Where the run's mark is (None until written: an earlier mark then stays, and is
    reported by whoever finds it next)."""
    recovery: stopped.Recovery = field(default_factory=stopped.Recovery)
    """What the recovery before the run found (an earlier run killed): this run fails
    with its words (:attr:`problems`), reported even when it publishes nothing, and the
    killed run's services this run does not report itself are failed in its report."""
    configured: frozenset[str] | None = None
    """The services whose entries the status file keeps (:func:`kept_entries`)."""

    @property
    def problems(self) -> list[str]:
        """The recovery's words (:meth:`.stopped.Recovery.report_lines`)."""
        return self.recovery.report_lines()

    def failed(self, error: str) -> None:
        """Report a run that published nothing, for ``error``."""
        elapsed = time.monotonic() - self.started
        killed = self.recovery.killed_services()
        summary = outputs.RunSummary(
            False,
            elapsed,
            killed,
            error=error,
            problems=self.problems,
            configured=self.configured,
            reports=self._mark(),
        )
        self._finish(summary)

    def ended(self, result: RunResult) -> int:
        """Report a run that published its archive; returns the exit code."""
        code = EXIT_FAILED if self.problems else result.exit_code
        reported = [s.name for s in result.services if s.error != LEFT_OUT]  # (run itself)
        summary = outputs.RunSummary(
            code == EXIT_OK,
            time.monotonic() - self.started,
            [*result.services, *self.recovery.killed_services(but=reported)],
            result.sidecar,
            problems=self.problems,
            configured=self.configured,
            reports=self._mark(),
        )
        unwritten = self._finish(summary)
        return code or (EXIT_FAILED if unwritten else EXIT_OK)

    def crashed(self, exc: Exception) -> PullbackError:
        """Report the run as failed for ``exc``, which escaped it or its report; returns
        what to raise: an error of the machine (OSError) in its words, exit 1; else a bug,
        only its type said (its message may hold anything) and its traceback logged after
        the report, exit 70. A signal during the report is raised (the traceback logged)."""
        error: PullbackError = InternalError(
            f"an internal error ended the run ({type(exc).__name__}; "
            "the traceback is in the log: please report it)"
        )
        machine = isinstance(exc, OSError) and bool(exc.strerror)  # (no errno: any words)
        if machine:
            error = PullbackError(f"the run stopped: {printable(describe(exc), 1000)}")
        try:
            with self.guard.shielded():
                self.failed(str(error))
        finally:  # (after the report: the failure mail quotes the log, not the traceback)
            if machine:
                log.debug("the run stopped on an error of the machine:", exc_info=exc)
            else:
                log.critical("internal error, please report it:", exc_info=exc)
        return error

    def _finish(self, summary: outputs.RunSummary) -> list[str]:
        """:func:`.outputs.finish`; when the status file could not be written, the mark
        stays (the next report says this run) and says so. Returns what was not written."""
        unwritten = outputs.finish(self.config, self.notifier, summary, recorded=self._recorded)
        if self.record is not None and self.record.run is not None:
            self.record.unreported()
        return unwritten

    def _mark(self) -> dict | None:
        """This run's mark (:meth:`.stopped.StoppedRecord.identity`), None while unwritten."""
        return self.record.identity() if self.record is not None else None

    def _recorded(self) -> None:
        if self.record is not None:
            self.record.reported()


class ClientRun:
    """One run under the instance lock: every service into one archive, verified and
    published. :meth:`run` does it in order; each step is a method."""

    def __init__(
        self,
        config: ClientConfig,
        services: list[Service],
        plugins: PluginSet,
        guard: SignalGuard,
        record: stopped.StoppedRecord,
    ):
        """``record``: where the tasks' stops are written
        (:meth:`.stopped.StoppedRecord.attach`)."""
        self.config = config
        self.services = services
        self.plugins = plugins
        self.guard = guard
        self.started = time.monotonic()
        self.reports: list[ServiceReport] = []
        _prepare_directories(config)  # before the stamp: a leftover may hold its name
        self.space = free_space.FreeSpaceWatch(config)
        self.stamp, self.created = _new_stamp(config)
        self.name = archives.archive_name(config.hostname, self.stamp, config.archive_suffix)
        self.tmp = config.archive_dir / f".{self.name}.{os.getpid()}{archives.PARTIAL_SUFFIX}"
        self.work = config.work_dir / self.stamp
        self.writer = ArchiveWriter(
            self.tmp,
            config.compression,
            config.compression_level,
            max_holes_and_links=config.max_holes_and_links,
        )
        self.full_asked = False
        """``run --full``: a full archive whatever the chain."""
        self.left_out: list[str] = []
        """The enabled services ``run --service`` did not name (:func:`left_out`)."""
        self.decision: incremental.Decision | None = None
        """Full or delta, and why (None: incremental archives are off)."""
        self.record = record

    def run(self) -> RunResult:
        """Returns the result. Raises ArchiveError when no archive could be published."""
        names = ", ".join(s.name for s in self.services)
        log.info("run %s: %d service(s): %s", self.stamp, len(self.services), names)
        cache = self.plan_incremental()
        complete = False  # (every enabled service archived and published)
        try:
            # (only while it writes: a stop once the archive is made gains no space, and
            # one raised as its publish ends said "nothing published" of a published one)
            with self.guard.stop_when(self.space.words, free_space.EVERY):
                written = self.write()
            self.space.look()
            if written is None:
                return RunResult(EXIT_FAILED, self.reports)
            self.verify(written)
            sidecar = self.sidecar(written)
            if cache is not None:
                cache.finish(self.name, written.manifest_sha256)
            with self.guard.shielded():
                published = archives.publish(self.tmp, sidecar, self.config.archive_dir)
                self._swap_cache(cache)
            complete = self.complete()
        except (ArchiveError, LockBusy) as exc:
            # (the archive directory's lock held past its wait: a failure of this run,
            # exit 1 and reported, not another run's lock, exit 75)
            raise ArchiveError(f"no archive was published: {exc}") from None
        finally:
            self.writer.abort()  # idempotent; removes the temporary file if it is still there
            if cache is not None:
                cache.close()
            remove_tree(self.work, ignore_errors=True)
            # (a delta sets no record: the next full run takes more)
            self.space.record(complete and not self.delta)
        log.info(
            "published %s (%s, %d files, %s of data) in %s",
            published.name,
            human_size(written.size),
            written.files,
            human_size(written.content_bytes),
            human_duration(time.monotonic() - self.started),
        )
        self.retain()
        if self.left_out:
            log.warning(
                "this archive holds only %s: it counts as partial (%s left out; the newest "
                "complete archive is kept, and the server restores them from its snapshot)",
                ", ".join(s.name for s in self.services),
                few(self.left_out),
            )
        failed = [r.name for r in self.reports if r.status != Status.OK and r.error != LEFT_OUT]
        if failed:
            total = len(self.reports)
            log.error("%d of %d services failed: %s", len(failed), total, ", ".join(failed))
        code = EXIT_FAILED if failed else EXIT_OK
        return RunResult(code, self.reports, sidecar, published.name)

    def retain(self) -> None:
        """The archive directory's retention after a publish; a directory lock held past
        its wait leaves it to the next run (a warning: the archive is published)."""
        config = self.config
        try:
            if self.decision is not None and incremental.makes_deltas(config):
                archives.apply_chain_retention(config.archive_dir, config.hostname)
            else:
                archives.apply_retention(
                    config.archive_dir,
                    config.keep_last,
                    config.keep_days,
                    fetched_keep=config.fetched_keep,
                )
        except LockBusy as exc:
            log.warning("retention left to the next run: %s", exc)

    @staticmethod
    def _swap_cache(cache: FileCache | None) -> None:
        """Put the run's new file cache in place, after the archive (a crash between
        keeps the old base); say so when it could not be written (the next run is
        full)."""
        if cache is None:
            return
        cache.swap()
        if cache.lost:
            log.warning(
                "%s; the archive was made and published, and the next run makes a full "
                "one (pullback-client check says when its disk is short of room)",
                cache.lost,
            )

    def plan_incremental(self) -> FileCache | None:
        """Unless incremental archives are off: decide full or delta, open the file cache
        and hand it to the writer (``auto`` keeps the cache while it waits for a server
        that applies deltas, so the first delta comes the run after). Returns the cache
        (None when incremental archives are off)."""
        config = self.config
        if config.incremental.mode is IncrementalMode.OFF:
            return None
        cache = FileCache(config.incremental.cache_dir, config.hostname)
        forced = incremental.forced_full(config, self.full_asked)
        self.decision = decision = incremental.decide(config, cache, self.created, forced)
        try:
            cache.start()
        except OSError as exc:
            cache.close()
            problem = f"cannot write the file cache in {cache.directory}: {exc}"
            self.decision = None  # a full archive, made without the cache: a day is never lost
            if decision.reason == incremental.WAITING_FOR_SERVER:
                log.warning("%s; the first delta waits for it", problem)
            else:
                log.warning(
                    "%s; this archive is a full one, made without it, as every run's will "
                    "be until it can be written (pullback-client check says why)",
                    problem,
                )
            return None
        self.work.mkdir(parents=True, exist_ok=True, mode=0o700)
        lean = decision.delta and incremental.makes_lean_deltas(self.config)
        kind = ("lean delta" if lean else "delta") if decision.delta else "full archive"
        log.info("%s: %s", kind, decision.reason)
        self.writer.incremental = Incremental(
            cache, decision.delta, self.work, lean=lean, fresh_cuts=bool(forced)
        )
        return cache

    def write(self) -> WrittenArchive | None:
        """Run every service into the archive; None (nothing written) when no task of any
        service succeeded."""
        self.writer.progress = Progress("pack")
        with self.writer, Watched(self.writer.progress):
            for service in self.services:
                staging = self.work / "services" / service.name
                report = run_service(
                    service, self.plugins, self.writer, staging, self.guard, record=self.record
                )
                self.reports.append(report)
                self.space.look()  # (its staging whole: a peak the half-second looks miss)
                remove_tree(staging, ignore_errors=True)
                if report.status == Status.OK:
                    PrefixAdapter(log, service.name).info(
                        "ok: %d files, %s in %s",
                        report.files,
                        human_size(report.bytes),
                        human_duration(report.duration),
                    )
            self.guard.check()
            self.reports += [ServiceReport(name, error=LEFT_OUT) for name in self.left_out]
            if not any(t.archived for r in self.reports for t in r.tasks):
                self.writer.abort()
                log.error("nothing succeeded; no archive was published")
                return None
            return self.writer.finish()

    @property
    def delta(self) -> bool:
        """Whether this run makes a delta archive (against a base), not a full one."""
        return self.decision is not None and self.decision.base is not None

    def complete(self) -> bool:
        """Whether this run archived every enabled service (none failed or left out)."""
        return not self.left_out and all(r.status == Status.OK for r in self.reports)

    def verify(self, written: WrittenArchive) -> None:
        """Read the archive back against its manifest, when the compressor's own checks
        were not made or ``verify: manifest`` asks for it. Raises ArchiveError."""
        if self.config.verify != "manifest" and written.tested:
            return
        with self.guard.shielded():
            verified = verify_archive(self.tmp, self.config.compression)
        if (verified.sha256, verified.size) != (written.sha256, written.size):
            raise ArchiveError(f"{self.tmp.name} changed on disk after it was written")

    def sidecar(self, written: WrittenArchive) -> Sidecar:
        ok = all(r.status == Status.OK for r in self.reports)
        base = self.decision.base if self.decision is not None else None
        inc = self.writer.incremental
        return Sidecar(
            host=self.config.hostname,
            stamp=self.stamp,
            created=iso(self.created),
            pullback_version=__version__,
            status=Status.OK if ok else Status.PARTIAL,
            archive=ArchiveInfo(
                self.name,
                written.size,
                written.sha256,
                self.config.compression,
                written.members,
                written.files,
                written.content_bytes,
                kind=ArchiveKind.DELTA if base is not None else ArchiveKind.FULL,
                manifest_sha256=written.manifest_sha256,
                base=base,
                sent_bytes=written.sent_bytes,
                lean=base is not None and inc is not None and inc.lean,
            ),
            services=self.reports,
            duration=round(time.monotonic() - self.started, 3),
        )


def _prepare_directories(config: ClientConfig) -> None:
    """Create the archive and work directories with their modes whatever the umask,
    remove what an interrupted run left, and refuse to start without enough free space
    (raises PullbackError)."""
    for directory in (config.archive_dir, config.work_dir):
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    # work: root's alone (database dumps); archives: read by the serve endpoint's group
    set_dir_mode(config.work_dir, 0o700)
    setgid = os.stat(config.archive_dir).st_mode & stat.S_ISGID
    set_dir_mode(config.archive_dir, setgid | 0o750)
    archives.prepare_marks(config.archive_dir)
    leftovers = remove_tree_contents(config.work_dir) + archives.remove_partials(config.archive_dir)
    if leftovers:
        log.warning("removed leftovers of an interrupted run: %s", ", ".join(leftovers))
    free_space.check_free_space(config)


def fresh(config: ClientConfig) -> str | None:
    """Why the run is not due (a good archive younger than min_interval), or None."""
    good = [
        a
        for a in archives.list_archives(config.archive_dir)
        if a.good and a.host == config.hostname  # not one made under an earlier hostname
    ]
    if not good:
        return None
    age = (utc_now() - good[-1].created).total_seconds()
    if age >= config.min_interval:
        return None
    return (
        f"fresh: {good[-1].name} is {human_duration(age)} old "
        f"(min_interval {human_duration(config.min_interval)})"
    )


def broken_services(config: ClientConfig, names: list[str] | None = None) -> list[str]:
    """The services whose file is broken, each logged as the run would skip it: a timer
    tick with nothing to do still says so at once (exit 1), not only the next due run."""
    plugins = load_plugins(config.plugin_dirs)
    broken = [s for s in select_services(discover(config.service_dirs, plugins), names) if s.broken]
    for service in broken:
        problems = "; ".join(str(p) for p in service.problems)
        PrefixAdapter(log, service.name).error("its service file is broken: %s", problems)
    return [s.name for s in broken]


def command(config: ClientConfig, args: argparse.Namespace) -> int:
    return run_and_report(config, args.service, args.dry_run, args.if_due, full=args.full)


def _killed_or_left(done: stopped.Reported | None) -> bool:
    """Whether what :func:`.stopped.recover_and_report` did fails a run that found it: a
    killed run reported, something not started again, a report not written."""
    return done is not None and (done.failed() or done.recovery.killed_run() is not None)


def run_and_report(
    config: ClientConfig,
    names: list[str] | None = None,
    dry_run_only: bool = False,
    if_due: bool = False,
    *,
    full: bool = False,
) -> int:
    """``pullback-client run``: the run, then its status, metrics, mail and pings.

    Returns the exit code; raises what :func:`run` raises (after reporting it).
    """
    if dry_run_only:
        return dry_run_command(config, names, full)
    try:
        if if_due:
            reason = fresh(config)
            if reason:
                log.info("%s; nothing to do", reason)
                # (a run killed after it stopped applications is not a fresh archive's
                # reason to leave them down; a killed run it reports fails the unit, as
                # the run's own failure would)
                left = _killed_or_left(stopped.recover_and_report(config))
                return EXIT_FAILED if broken_services(config, names) or left else EXIT_OK
        return run(config, names, full=full)
    except PullbackError:  # (said, and reported where a run was under way)
        raise
    except Exception as exc:  # a bug before the run held its lock, or with no run of its own
        raise crashed_before_the_run(config, exc) from exc


def crashed_before_the_run(config: ClientConfig, exc: Exception) -> PullbackError:
    """Report ``exc``, which escaped a run before it held its lock (loading plugins,
    finding services) or a path with no run of its own (``run --if-due`` with a fresh
    archive, a run with no enabled service), as :meth:`Reporter.crashed` reports a run a
    bug ended: under the client's lock, the status file's entries kept. Returns what to
    raise; when another run or restore holds the lock, only the log says it (that one
    reports itself). A lock that cannot be taken at all (its directory cannot be made:
    no one else holds it either) is reported without it."""
    lock = config.instance_lock("pullback-client run")
    held = False
    try:
        lock.acquire()
        held = True
    except LockBusy as busy:
        log.critical("internal error, please report it (not reported: %s):", busy, exc_info=exc)
        return InternalError(f"an internal error ended the run ({type(exc).__name__})")
    except OSError:
        pass  # (reported without it)
    try:
        with SignalGuard(RESTORING) as guard:
            notifier = Notifier(config.notify, f"run on {config.hostname}")
            return Reporter(config, notifier, time.monotonic(), guard).crashed(exc)
    finally:
        if held:
            lock.release()
