"""The server's Prometheus metrics, made from the status file after every run."""

from __future__ import annotations

import datetime as dt

from ..common.clock import FUTURE_TOLERANCE, parse_iso, utc_now
from ..common.metrics import Metrics
from ..common.outcome import Status
from .config import ServerConfig
from .host_state import pull_counts
from .journal import NO_ACTIVITY, InterruptedRun, PullActivity

RESULTS = (Status.STORED, Status.SKIPPED, Status.FAILED)


def _ts(value: str | None) -> float | None:
    if not value:
        return None
    return parse_iso(value).timestamp()


def is_stale(entry: dict, max_age: float, now: dt.datetime) -> bool:
    """Whether a host's newest snapshot (its status ``entry``) is stale
    (:func:`stale_time`)."""
    return stale_time(entry.get("newest_snapshot"), max_age, now)


def stale_time(newest: str | None, max_age: float, now: dt.datetime) -> bool:
    """Whether the newest snapshot's time ``newest`` (ISO) is older than ``max_age``,
    dated more than FUTURE_TOLERANCE in the future (a date far ahead would otherwise
    never grow old: a wrong clock, a forged record), or missing (none stored at all)."""
    when = _ts(newest)
    if when is None:
        return True
    age = now.timestamp() - when
    return age > max_age or age < -FUTURE_TOLERANCE.total_seconds()


def build(
    config: ServerConfig,
    status: dict,
    now: dt.datetime | None = None,
    activity: PullActivity = NO_ACTIVITY,
) -> Metrics:
    """The gauges of ``status`` (the status file) for every configured host, and of
    ``activity``'s pull cut short (:func:`~.journal.pull_activity`), if any."""
    now = now or utc_now()
    m = Metrics()
    g = m.gauge
    attempt = g("pullback_last_attempt_timestamp_seconds", "When the host's last pull began.")
    success = g(
        "pullback_last_success_timestamp_seconds",
        "When the host's last pull that did not fail began.",
    )
    result = g(
        "pullback_last_result",
        "1 for the result of the host's last pull; absent for a disabled host unless a run "
        "that named it made that pull.",
    )
    ok = g(
        "pullback_last_attempt_ok",
        "1 when the host's last pull did not fail; absent for a disabled host unless a run "
        "that named it made that pull.",
    )
    duration = g("pullback_pull_duration_seconds", "How long the host's last pull took.")
    archive = g("pullback_archive_bytes", "Size of the host's last stored archive.")
    content = g("pullback_archive_content_bytes", "Bytes of data in the last stored archive.")
    added = g("pullback_repository_added_bytes", "Bytes the last store added to the repository.")
    fetched = g(
        "pullback_fetched_bytes",
        "Bytes the last successful pull fetched (a delta: what changed; every archive applied).",
    )
    delta = g("pullback_last_archive_delta", "1 when the last stored archive came as a delta.")
    fell_back = g(
        "pullback_fell_back_to_full",
        "1 when the last pull found staging was not a delta's base and applied the chain "
        "from its full archive.",
    )
    repo = g("pullback_repository_bytes", "Size of the host's repository.")
    count = g("pullback_snapshots", "Number of pullback snapshots in the host's repository.")
    newest = g("pullback_newest_snapshot_timestamp_seconds", "Time of the host's newest snapshot.")
    stale = g(
        "pullback_stale",
        "1 when the newest snapshot is older than max_age (or missing); absent for a "
        "disabled host.",
    )
    enabled = g(
        "pullback_host_enabled",
        "1 when server.yaml pulls the host, 0 when it is disabled (enabled: false).",
    )
    verified = g(
        "pullback_last_verified_timestamp_seconds",
        "When a restore drill last proved the host's snapshot.",
    )
    verify_ok = g("pullback_last_verify_ok", "1 when the host's last restore drill passed.")
    maintained = g(
        "pullback_last_maintained_timestamp_seconds", "When the host's last maintenance ran."
    )
    maintain_ok = g(
        "pullback_last_maintain_ok",
        "1 when the host's last maintenance (forget, prune, check, drill) did not fail.",
    )
    held = g(
        "pullback_forget_held",
        "1 while the ransomware guard holds forget and prune for the host "
        "(pullback-server release HOST ends it).",
    )
    client_failed = g(
        "pullback_newest_snapshot_failed_services",
        "Services that failed on the client in the host's newest stored archive (its "
        "snapshot is partial).",
    )
    memory = g(
        "pullback_store_peak_memory_bytes",
        "Peak resident memory of restic/borg storing the host's last archive.",
    )
    for host in config.hosts:
        entry = status.get("hosts", {}).get(host.name, {})
        labels = {"host": host.name}
        attempt.add(_ts(entry.get("last_attempt")), **labels)
        success.add(_ts(entry.get("last_success")), **labels)
        counts = "last_result" in entry and pull_counts(entry, host.enabled)
        if counts:  # (disabled: only a run that named it made its last pull, as status says)
            for name in RESULTS:
                result.add(entry["last_result"] == name, result=name, **labels)
            ok.add(entry["last_result"] != Status.FAILED, **labels)
        duration.add(entry.get("duration"), **labels)
        archive.add(entry.get("size"), **labels)
        content.add(entry.get("content_bytes"), **labels)
        added.add(entry.get("bytes_added"), **labels)
        fetched.add(entry.get("fetched_bytes"), **labels)
        delta.add(entry.get("delta"), **labels)
        fell_back.add(entry.get("fell_back"), **labels)
        repo.add(entry.get("repository_bytes"), **labels)
        if counts:
            failed = entry.get("failed_services")
            client_failed.add(len(failed) if isinstance(failed, list) else 0, **labels)
        count.add(entry.get("snapshots"), **labels)
        newest.add(_ts(entry.get("newest_snapshot")), **labels)
        enabled.add(host.enabled, **labels)
        if host.enabled:  # (a disabled host is not pulled: never stale, nothing to alert)
            stale.add(is_stale(entry, host.max_age, now), **labels)
        verified.add(_ts(entry.get("last_verified")), **labels)
        if entry.get("verify_result", Status.SKIPPED) != Status.SKIPPED:
            # 0 too while a snapshot's failed drill stands; none while nothing to drill
            good = not isinstance(entry.get("verify_failed_snapshot"), dict)
            verify_ok.add(entry["verify_result"] == Status.OK and good, **labels)
        maintained.add(_ts(entry.get("last_maintained")), **labels)
        if "maintain_result" in entry:
            maintain_ok.add(entry["maintain_result"] != Status.FAILED, **labels)
        memory.add(entry.get("store_peak_rss"), **labels)
        held.add(isinstance(entry.get("guard_hold"), dict), **labels)
    _cut_short_metrics(m, config, activity.killed)
    if config.backend.copy is not None:
        _copy_metrics(m, config, status, now)
    g("pullback_metrics_timestamp_seconds", "When these metrics were written.").add(now.timestamp())
    return m


def _started(run: InterruptedRun) -> float | None:
    """When ``run`` began, in seconds since the epoch; None when its journal's time is
    not a time."""
    try:
        return _ts(run.started)
    except ValueError:
        return None


def _cut_short_metrics(m: Metrics, config: ServerConfig, killed: InterruptedRun | None) -> None:
    """``pullback_pull_cut_short`` per host: 1 for each host the last pull was pulling
    when it was killed or stopped by a signal before it wrote the status file (``killed``,
    the journal it left), else 0; and, while there is one, when that pull began."""
    cut = m.gauge(
        "pullback_pull_cut_short",
        "1 when the last pull was killed or stopped by a signal while pulling the host, "
        "before it wrote the status file (the other gauges show the pull before it); "
        "the next pull to end sets it to 0.",
    )
    for host in config.hosts:
        cut.add(killed is not None and host.name in killed.phases, host=host.name)
    if killed is not None:
        m.gauge(
            "pullback_pull_cut_short_started_timestamp_seconds",
            "When the pull that was cut short began (only while pullback_pull_cut_short "
            "is 1 for a host).",
        ).add(_started(killed))


def _copy_metrics(m: Metrics, config: ServerConfig, status: dict, now: dt.datetime) -> None:
    """The second copies' gauges (``pullback-server copy``), per host."""
    g = m.gauge
    copied = g(
        "pullback_copy_last_success_timestamp_seconds", "When the host's copy last succeeded."
    )
    ok = g("pullback_copy_ok", "1 when the host's last copy succeeded and matched its primary.")
    newest = g(
        "pullback_copy_newest_snapshot_timestamp_seconds", "Time of the copy's newest snapshot."
    )
    stale = g(
        "pullback_copy_stale",
        "1 when the copy's newest snapshot is older than copy.max_age (or dated ahead); "
        "absent for a disabled host.",
    )
    drilled = g(
        "pullback_copy_verified_timestamp_seconds", "When a restore drill last proved the copy."
    )
    held = g(
        "pullback_copy_forget_held",
        "1 while the ransomware guard holds forget and prune on the host's copy "
        "(pullback-server release HOST --copy ends it).",
    )
    maintained = g(
        "pullback_copy_last_maintain_ok",
        "1 when the last maintenance of the host's copy (its retention, check and drill "
        "by pullback-server maintain) succeeded; absent before the first.",
    )
    copy_limit = config.backend.copy.max_age if config.backend.copy else 0.0
    for host in config.hosts:
        entry = status.get("hosts", {}).get(host.name, {}).get("copy") or {}
        if not host.enabled and not entry:  # not pulled, not copied, no copy recorded
            continue
        labels = {"host": host.name}
        limit = max(copy_limit, host.max_age)
        copied.add(_ts(entry.get("copied")), **labels)
        if "result" in entry:
            ok.add(entry["result"] != Status.FAILED, **labels)
        newest.add(_ts(entry.get("newest")), **labels)
        if host.enabled:  # (a disabled host is not copied: never stale; its hold and
            # failures count, as in status: helper-144 F8)
            stale.add(stale_time(entry.get("newest"), limit, now), **labels)
        drilled.add(_ts(entry.get("verified")), **labels)
        held.add(isinstance(entry.get("guard_hold"), dict), **labels)
        if "maintain_result" in entry:  # an outside walk saw a failed one in no gauge
            maintained.add(entry["maintain_result"] != Status.FAILED, **labels)


def write(config: ServerConfig, status: dict, activity: PullActivity = NO_ACTIVITY) -> None:
    """Replace the metrics file (when one is configured) by :func:`build`'s gauges.
    Raises OSError when it cannot be written."""
    if config.metrics_file is not None:
        build(config, status, activity=activity).write(config.metrics_file)
