"""``pullback-server pull``: fetch every host's newest archive and store it (DESIGN 1).

Hosts run in parallel (``parallel:``), each in its own thread with its own deadline
(``host_timeout``): a hung or slow host times out alone and a failure in one never stops
the others. An instance lock keeps two pulls (or a pull and maintenance) apart.
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import threading
import time
import traceback
from concurrent.futures import ThreadPoolExecutor

from ..common.archive import sidecar as sidecars
from ..common.archive.unpack import HostileArchive
from ..common.clock import age, iso, iso_or_none, parse_stamp, utc_now
from ..common.errors import (
    EXIT_FAILED,
    EXIT_OK,
    ArchiveError,
    CommandError,
    Interrupted,
    PullbackError,
)
from ..common.locks import FileLock
from ..common.log import PrefixAdapter, get_logger, recent_lines
from ..common.notify import Notifier
from ..common.outcome import Status
from ..common.protocol import Listing
from ..common.runner import Runner
from ..common.signals import SignalGuard
from ..common.units import human_duration, human_size
from . import status_file
from .backends import make_backend
from .config import HostConfig, ServerConfig
from .journal import CONNECTING, STORING, TRANSFERRING, InterruptedRun, Journal
from .remote import Remote, TransferCut
from .results import HostResult
from .transfer import discard_partial, fetch_and_unpack

log = get_logger("pull")

INSTANCE_LOCK = "server.lock"
FUTURE_TOLERANCE = dt.timedelta(hours=1)


def _printable(value, limit: int) -> str:
    """``value`` as text of at most ``limit`` printable characters."""
    text = str(value)
    if not text.isprintable():
        text = repr(text)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _choose(listing: Listing, host: HostConfig, result: HostResult, hlog):
    """The newest archive that may be fetched, or None; every archive passed over is warned.

    Passed over: a bad sidecar, a size that differs from the sidecar, a stamp in the future
    (a wrong client clock must not hide every later archive), and a stamp two archives
    share (which one is the real one cannot be told).
    """

    def ignore(message: str) -> None:
        hlog.warning("%s", message)
        result.warnings.append(message)

    for entry in listing.unusable:
        # words from the client: shown, but never trusted to be printable
        name, problem = (_printable(entry.get(k, "?"), 120) for k in ("name", "problem"))
        ignore(f"ignoring {name}: {problem}")
    by_stamp: dict[str, list] = {}
    horizon = utc_now() + FUTURE_TOLERANCE
    for entry in listing.archives:
        try:
            name = str(entry["name"])
            side = sidecars.from_data(entry["sidecar"], expected_name=name)
        except (KeyError, TypeError, ArchiveError) as exc:
            ignore(f"ignoring an archive with a bad sidecar: {exc}")
            continue
        if side.host != host.name:
            raise ArchiveError(
                f"the client calls itself '{side.host}', not '{host.name}' "
                "(check hostname: in its client.yaml)"
            )
        if not isinstance(entry.get("size"), int) or entry["size"] != side.archive.size:
            ignore(f"ignoring {name}: its size differs from its sidecar")
            continue
        if parse_stamp(side.stamp) > horizon:
            ignore(f"ignoring {name}: it is dated in the future; check the client's clock")
            continue
        by_stamp.setdefault(side.stamp, []).append(side)
    best = None
    for stamp, sides in by_stamp.items():
        if len(sides) > 1:
            names = ", ".join(sorted(s.archive.name for s in sides))
            ignore(f"ignoring {names}: two archives share the stamp {stamp}")
        elif best is None or stamp > best.stamp:
            best = sides[0]
    return best


def pull_host(
    config: ServerConfig,
    host: HostConfig,
    cancel: threading.Event,
    dry_run: bool = False,
    if_due: bool = False,
    journal: Journal | None = None,
    interrupted: InterruptedRun | None = None,
) -> HostResult:
    """Pull one host. Never raises (except Interrupted): failures are in the result.

    ``journal`` records the host's phases; ``interrupted`` is the run a crash cut short,
    if it was busy with this host (reported, and a stale repository lock removed)."""
    result = HostResult(host.name, started=iso(utc_now()))
    notifier = Notifier(host.notify, f"pull of {host.name}")
    started = time.monotonic()
    hlog = PrefixAdapter(log, host.name)
    runner = Runner(hlog)
    runner.cancel = cancel
    timer = threading.Timer(config.host_timeout, cancel.set)
    timer.daemon = True
    timer.start()

    def phase(name: str | None) -> None:
        if journal is not None and not dry_run:
            journal.phase(host.name, name)

    if interrupted is not None and host.name in interrupted.phases:
        message = interrupted.describe(host.name)
        hlog.warning("%s", message)
        result.warnings.append(message)
    try:
        _pull(
            config,
            host,
            cancel,
            dry_run,
            result,
            runner,
            hlog,
            started,
            if_due,
            notifier,
            phase,
            interrupted is not None and interrupted.phases.get(host.name) == STORING,
        )
    except Interrupted:
        raise
    except BaseException as exc:
        result.status = Status.FAILED
        if cancel.is_set() and not timer.is_alive():
            result.reason = (
                f"timed out after {human_duration(config.host_timeout)} "
                f"(host_timeout); {_reason(exc)}"
            )
        else:
            result.reason = _reason(exc)
        if not isinstance(exc, PullbackError | OSError):
            hlog.debug("%s", traceback.format_exc())
    finally:
        timer.cancel()
        result.duration = time.monotonic() - started
        phase(None)
    level = logging.ERROR if result.status == Status.FAILED else logging.INFO
    hlog.log(level, "%s: %s", result.status, result.reason)
    if not dry_run:
        body = "\n".join([result.reason, *result.warnings, *recent_lines(f"[{host.name}]")])
        notifier.finish(
            result.status != Status.FAILED, f"pullback: {host.name} {result.status}", body
        )
    return result


def _reason(exc: BaseException) -> str:
    if isinstance(exc, TransferCut):
        return f"{exc}; what arrived is kept and the next run resumes"
    if isinstance(exc, HostileArchive):
        return f"refused a hostile archive: {exc}; nothing was stored"
    if isinstance(exc, ArchiveError) and "nothing was stored" not in str(exc):
        return f"{exc}; nothing was stored"
    if isinstance(exc, CommandError):
        return f"{exc.display.split(' ', 1)[0]} {exc.reason}" + (
            f": {exc.tail[-1]}" if exc.tail else ""
        )
    if isinstance(exc, PullbackError):
        return str(exc)
    if isinstance(exc, OSError):
        return f"{exc.filename + ': ' if exc.filename else ''}{exc.strerror or exc}"
    return f"internal error: {type(exc).__name__}: {exc}"


def _pull(
    config,
    host,
    cancel,
    dry_run,
    result: HostResult,
    runner,
    hlog,
    started,
    if_due: bool,
    notifier: Notifier,
    phase,
    store_was_cut: bool,
) -> None:
    backend = make_backend(
        config.backend, host, config.state_dir, runner, config.maintenance.repository_lock_wait
    )
    backend.prepare()
    if store_was_cut and not dry_run:
        # the killed store may have left its lock; only locks of dead processes go
        try:
            message = backend.unlock()
        except PullbackError as exc:
            message = f"could not remove a stale repository lock: {exc}"
        if message:  # (the backend has logged it)
            result.warnings.append(message)
    # The repository's snapshot list and the client's listing are independent: ask both at
    # once (each costs a process start and, for restic, a key derivation).
    with ThreadPoolExecutor(1, thread_name_prefix=f"snapshots-{host.name}") as pool:
        asked = pool.submit(backend.snapshots)
        if if_due:
            newest, _ = _note_snapshots(asked.result(), result)
            if newest is not None:
                age = (utc_now() - newest.time).total_seconds()
                if age < host.min_interval:
                    result.status, result.fresh = Status.SKIPPED, True
                    result.reason = (
                        f"fresh: the newest snapshot is {human_duration(age)} old "
                        f"(min_interval {human_duration(host.min_interval)})"
                    )
                    return
        if not dry_run:
            notifier.start()
        phase(CONNECTING)
        try:
            with Remote(host, config.ssh, runner) as remote:
                listing = _wait_for_lock(remote, config, cancel, hlog)
                newest, stored_stamps = _note_snapshots(asked.result(), result)
                _pull_listed(
                    config,
                    host,
                    cancel,
                    dry_run,
                    result,
                    runner,
                    hlog,
                    started,
                    backend,
                    remote,
                    listing,
                    newest,
                    stored_stamps,
                    phase,
                )
        finally:
            if result.status != Status.STORED and asked.done() and asked.exception() is None:
                _note_snapshots(asked.result(), result)  # for the report of a failed host


def _note_snapshots(snapshots, result: HostResult):
    """Record the repository's snapshots in ``result``; returns (newest, stored stamps)."""
    newest = snapshots[-1] if snapshots else None
    result.newest_snapshot = iso_or_none(newest.time if newest else None)
    result.oldest_snapshot = iso_or_none(snapshots[0].time if snapshots else None)
    result.snapshot_count = len(snapshots)
    return newest, {s.stamp for s in snapshots if s.stamp}


def _wait_for_lock(remote: Remote, config, cancel, hlog) -> Listing:
    """List the client's archives, asking again while it is publishing one (lock_retries)."""
    listing = remote.list()
    for attempt in range(config.lock_retries):
        if not listing.lock:
            break
        hlog.info(
            "the client is publishing an archive; asking again in %s (%d/%d)",
            human_duration(config.lock_wait),
            attempt + 1,
            config.lock_retries,
        )
        if cancel.wait(config.lock_wait):
            raise PullbackError("cancelled while waiting for the client's lock")
        listing = remote.list()
    return listing


def _pull_listed(
    config,
    host,
    cancel,
    dry_run,
    result: HostResult,
    runner,
    hlog,
    started,
    backend,
    remote: Remote,
    listing: Listing,
    newest,
    stored_stamps: set[str],
    phase,
) -> None:
    if listing.lock:
        owner = listing.lock
        result.status, result.problem = Status.SKIPPED, True
        result.reason = (
            f"busy: the client was still publishing an archive after "
            f"{config.lock_retries} retries (pid {owner.get('pid')}, since "
            f"{owner.get('started')})"
        )
        return
    if listing.host != host.name:
        raise ArchiveError(
            f"the client calls itself '{listing.host}', not '{host.name}' "
            "(check hostname: in its client.yaml)"
        )
    chosen = _choose(listing, host, result, hlog)
    if chosen is None:
        result.status, result.problem = Status.SKIPPED, True
        result.reason = (
            "no archive can be fetched: " + "; ".join(result.warnings)
            if result.warnings
            else "the client has no archive to fetch"
        )
        return
    name = chosen.archive.name
    result.archive, result.stamp = name, chosen.stamp
    result.size, result.content_bytes = chosen.archive.size, chosen.archive.content_bytes
    result.client_failed_services = chosen.failed_services
    when = parse_stamp(chosen.stamp)
    if chosen.stamp in stored_stamps:
        result.status = Status.SKIPPED
        result.reason = f"{name} is already stored"
        if not dry_run:
            _mark_fetched(remote, name, result, hlog)
        return
    if newest is not None and when < newest.time:
        result.status = Status.SKIPPED
        result.reason = f"{name} is older than the newest snapshot ({iso(newest.time)}); not stored"
        return
    if dry_run:
        result.status = Status.SKIPPED
        result.reason = f"dry run: would fetch {name} ({human_size(chosen.archive.size)})"
        return

    phase(TRANSFERRING)
    fetched = fetch_and_unpack(
        remote,
        name,
        chosen.archive.size,
        chosen.archive.sha256,
        chosen.archive.compression,
        config.partial_dir(host.name),
        config.staging_dir(host.name),
        runner,
        cancel,
    )
    result.resumed_from = fetched.resumed_from
    warnings = fetched.unpacked.warnings
    for warning in warnings[:10]:
        hlog.warning("%s", warning)
    if len(warnings) > 10:
        hlog.warning("... and %d more warnings like these", len(warnings) - 10)
    result.warnings.extend(warnings[:20])
    hlog.info(
        "fetched %s (%s%s), unpacked %d files (%d rewritten, %d unchanged, %d removed)",
        name,
        human_size(fetched.size),
        f", resumed at {human_size(fetched.resumed_from)}" if fetched.resumed_from else "",
        fetched.unpacked.files,
        fetched.unpacked.written,
        fetched.unpacked.unchanged,
        fetched.unpacked.removed,
    )
    phase(STORING)
    remaining = max(60.0, config.host_timeout - (time.monotonic() - started))
    stored = backend.store(
        config.staging_dir(host.name),
        chosen.stamp,
        when,
        min(config.backend.timeout, remaining),
    )
    result.status = Status.STORED
    result.snapshot_id = stored.snapshot_id
    result.bytes_added = stored.bytes_added
    result.store_peak_rss = stored.peak_rss
    result.snapshot_count += 1
    result.newest_snapshot = iso(when)
    result.reason = (
        f"stored {name} as {backend.name} snapshot {stored.snapshot_id} "
        f"(+{human_size(stored.bytes_added)})"
    )
    discard_partial(fetched.path)
    _mark_fetched(remote, name, result, hlog)
    try:
        result.repository_bytes = backend.size()
    except PullbackError as exc:
        hlog.warning("could not measure the repository: %s", exc)


def _mark_fetched(remote: Remote, name: str, result: HostResult, hlog) -> None:
    try:
        remote.mark_fetched(name)
    except PullbackError as exc:
        message = f"could not tell the client that {name} was fetched: {exc}"
        hlog.warning("%s", message)
        result.warnings.append(message)


def pull(
    config: ServerConfig,
    names: list[str] | None = None,
    dry_run: bool = False,
    if_due: bool = False,
) -> tuple[int, list[HostResult]]:
    """Pull the hosts (with ``if_due``, only those not fresh). Returns (exit code,
    results). Raises LockBusy, PullbackError."""
    hosts = config.select_hosts(names)
    lock = FileLock(config.lock_dir / INSTANCE_LOCK, purpose="pullback-server pull")
    with lock.acquire(), SignalGuard():
        config.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        journal = None if dry_run else Journal(config.state_dir)
        interrupted = journal.begin() if journal else None
        try:
            results = _run_hosts(config, hosts, dry_run, if_due, journal, interrupted)
        finally:
            if journal:
                journal.end()
        assess(config, results)
        if not dry_run:
            status_file.record(config.state_dir, results)
    failed = [r for r in results if r.status == Status.FAILED]
    return (EXIT_FAILED if failed else EXIT_OK), results


def assess(config: ServerConfig, results: list[HostResult]) -> None:
    """Flag hosts whose newest snapshot is too old or whose last drill is too old."""
    now = utc_now()
    recorded = status_file.load_status(config.state_dir)["hosts"]
    for result in results:
        host = config.host(result.host)
        entry = recorded.get(result.host, {})
        result.last_verified = entry.get("last_verified")
        if result.repository_bytes is None:
            result.repository_bytes = entry.get("repository_bytes")
        newest_age = age(result.newest_snapshot, now)
        if newest_age is None or newest_age > host.max_age:
            result.stale = True
            result.warnings.insert(
                0,
                (
                    "no snapshot has been stored yet"
                    if newest_age is None
                    else f"the newest snapshot is {human_duration(newest_age)} old "
                    f"(max_age {human_duration(host.max_age)})"
                ),
            )
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


def command(config: ServerConfig, args: argparse.Namespace) -> int:
    """``pullback-server pull``: pull, then report (status, metrics, page, mail, pings)."""
    from .outputs import finish_pull

    notifier = Notifier(config.notify, "pull")
    if not args.dry_run:
        notifier.start()
    code, results = pull(config, args.host, args.dry_run, args.if_due)
    finish_pull(config, results, notifier, args.dry_run, args.summary)
    return code


def _run_hosts(
    config: ServerConfig,
    hosts: list[HostConfig],
    dry_run: bool,
    if_due: bool,
    journal: Journal | None = None,
    interrupted: InterruptedRun | None = None,
):
    cancels = {h.name: threading.Event() for h in hosts}
    with ThreadPoolExecutor(max_workers=config.parallel, thread_name_prefix="host") as pool:
        futures = {
            h.name: pool.submit(
                pull_host, config, h, cancels[h.name], dry_run, if_due, journal, interrupted
            )
            for h in hosts
        }
        try:
            while not all(f.done() for f in futures.values()):
                time.sleep(0.1)  # the main thread stays free for SIGTERM
        except Interrupted:
            for event in cancels.values():
                event.set()
            for future in futures.values():
                future.cancel()
            raise
        return [futures[h.name].result() for h in hosts]
