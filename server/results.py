"""What happened to each host in a pull: the record behind the summary, status and exit code."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..common.outcome import Status


@dataclass
class HostResult:
    """One host's outcome. ``problem`` marks skips an administrator should hear about."""

    host: str
    status: Status = Status.FAILED
    reason: str = ""
    problem: bool = False
    archive: str | None = None
    stamp: str | None = None
    size: int = 0
    content_bytes: int = 0
    bytes_added: int = 0
    snapshot_id: str | None = None
    duration: float = 0.0
    started: str | None = None
    newest_snapshot: str | None = None
    resumed_from: int = 0
    oldest_snapshot: str | None = None
    last_verified: str | None = None
    databases_proven: str | None = None
    """When a drill last loaded every database dump of the host (None: never, or none)."""
    repository_bytes: int | None = None
    stale: bool = False
    """The newest snapshot is older than the host's max_age (or there is none)."""
    unverified: bool = False
    """The last successful restore drill is older than verify_max_age."""
    fresh: bool = False
    """Skipped quietly: its newest snapshot is younger than min_interval (pull --if-due)."""
    snapshot_count: int = 0
    store_peak_rss: int = 0
    """Highest resident memory of the restic/borg process that stored the archive."""
    client_failed_services: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def is_problem(self) -> bool:
        return (
            self.status == Status.FAILED
            or self.problem
            or self.stale
            or self.unverified
            or bool(self.client_failed_services)
        )
