"""What happened to each host in a pull: the record behind the summary, status and exit code."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields

from ..common.outcome import Status
from ..common.text import printable

MAX_REASON = 2000
"""Characters of a host's reason, in a log line, the mail and status.json."""
MAX_WARNING = 500
MAX_WARNINGS = 25
"""Warnings kept per host (the last says how many more there were)."""
MAX_WORD = 300


_REPORT_NAMES = {
    "snapshot_count": "snapshots",
    "client_failed_services": "failed_services",
    "peak_rss": "pull_peak_rss",
}


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
    snapshots_listed: bool = False
    """The repository's snapshots were listed in this pull. False: it could not be opened
    (a wrong password, a read-only disk), or the pull failed before; ``newest_snapshot``
    and ``snapshot_count`` then come from the status file (see ``pull.assess``)."""
    store_peak_rss: int = 0
    """Highest resident memory of the restic/borg process that stored the archive."""
    peak_rss: int = 0
    """Highest resident memory of the host's own pull process (see host_process)."""
    client_failed_services: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    checksum_failed: str | None = None
    delta: bool = False
    """The archive stored came as a delta (only what changed travelled)."""
    applied: int = 0
    """Archives applied to reach it (more than one: days the server had missed)."""
    fell_back: bool = False
    """Staging was not a delta's base: the chain was applied from its full archive."""
    fetched_bytes: int = 0
    """Bytes that travelled in this pull (all archives applied, resumed parts not counted)."""
    """The archive whose bytes did not match its sidecar's sha256 in this pull."""
    database_dumps: int | None = None
    """Database dumps in the stored snapshot (None: nothing stored this time)."""
    not_delivered: list[str] = field(default_factory=list)
    """The host's own pings and messages that could not be delivered (the run exits 1)."""
    client_protocol: int | None = None
    """The serve protocol the client's listing said it speaks (None: no listing came)."""

    @property
    def is_problem(self) -> bool:
        return (
            self.status == Status.FAILED
            or self.problem
            or self.stale
            or self.unverified
            or bool(self.client_failed_services)
        )

    def to_dict(self) -> dict:
        """The result as JSON-ready data (what a host's pull process sends its parent)."""
        return asdict(self)

    def to_report(self) -> dict:
        """The result as ``pull --json`` shows it: :meth:`to_dict` with the names
        status.json uses for the same facts (``snapshots``, ``failed_services``,
        ``pull_peak_rss``)."""
        data = self.to_dict()
        for ours, theirs in _REPORT_NAMES.items():
            data[theirs] = data.pop(ours)
        return data

    @classmethod
    def from_dict(cls, data: dict) -> HostResult:
        """The result :meth:`to_dict` gave, :meth:`cleaned`. Raises ValueError, KeyError
        or TypeError."""
        known = {f.name for f in fields(cls)}
        result = cls(**{k: v for k, v in data.items() if k in known})
        result.status = Status(result.status)
        return result.cleaned()

    def cleaned(self) -> HostResult:
        """This result with every word in it fit to print (it quotes a client's words):
        each text :func:`~pullback.common.text.printable` and capped, at most
        MAX_WARNINGS warnings and a count of the rest. Returns ``self``."""
        self.reason = printable(self.reason, MAX_REASON)
        for name in ("archive", "stamp", "snapshot_id", "started", "checksum_failed"):
            value = getattr(self, name)
            if value is not None:
                setattr(self, name, printable(value, MAX_WORD))
        services = [printable(s, MAX_WORD) for s in self.client_failed_services]
        self.client_failed_services = services[:MAX_WARNINGS]
        warnings = [printable(w, MAX_WARNING) for w in self.warnings]
        if len(warnings) > MAX_WARNINGS:
            more = len(warnings) - MAX_WARNINGS + 1
            warnings = [*warnings[: MAX_WARNINGS - 1], f"... and {more} more warnings"]
        self.warnings = warnings
        self.not_delivered = [printable(w, MAX_WORD) for w in self.not_delivered[:5]]
        return self
