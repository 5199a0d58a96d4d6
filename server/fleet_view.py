"""One view of the fleet, from the status file: what the status page, ``status`` and the
summary's history show."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from enum import StrEnum

from ..common.clock import age, utc_now
from ..common.outcome import Status
from ..common.units import human_duration, human_size
from .config import ServerConfig
from .metrics import is_stale


class HostState(StrEnum):
    """How a host stands, worst first: what the status table and page sort by."""

    FAILED = "failed"
    STALE = "stale"
    ATTENTION = "attention"
    """Stored or skipped, but with something an administrator should look at."""
    OK = "ok"


SYMBOLS: dict[str, str] = {
    Status.STORED: "✓",
    Status.SKIPPED: "·",
    HostState.ATTENTION: "!",
    Status.FAILED: "✗",
}
"""The history cells: a run stored, skipped, needing attention, or failed."""
HISTORY_CELLS = 14
_ORDER = {state: rank for rank, state in enumerate(HostState)}


@dataclass
class HostRow:
    host: str
    state: HostState
    result: str
    reason: str = ""
    stale: bool = False
    """No snapshot within ``max_age``, or none at all (whatever the state says first)."""
    newest_age: float | None = None
    verified_age: float | None = None
    verify_result: Status | None = None
    databases_age: float | None = None
    """How long ago a drill last loaded every database dump of the host."""
    has_databases: bool = False
    """The host's newest snapshot holds database dumps (seen when stored, or by a drill)."""
    repository_bytes: int | None = None
    duration: float | None = None
    store_peak_rss: int | None = None
    history: list[str] = field(default_factory=list)
    sizes: list[int] = field(default_factory=list)
    held: str | None = None
    """Why the ransomware guard holds forget for the host (None: it does not)."""

    @property
    def databases_text(self) -> str:
        """``2 hours ago``, ``never`` (dumps but never all proven) or ``-`` (no dumps)."""
        if self.databases_age is not None:
            return f"{human_duration(self.databases_age)} ago"
        return "never" if self.has_databases else "-"

    @property
    def history_text(self) -> str:
        return "".join(SYMBOLS.get(r, "?") for r in self.history)

    @property
    def trend(self) -> str:
        """``1.2 GiB, +35 MiB over the last 9 runs`` from the recorded sizes."""
        if not self.sizes:
            return "-"
        now = human_size(self.sizes[-1])
        if len(self.sizes) < 2:
            return now
        delta = self.sizes[-1] - self.sizes[0]
        sign = "+" if delta >= 0 else "-"
        return f"{now}, {sign}{human_size(abs(delta))} over the last {len(self.sizes)} runs"


def rows(config: ServerConfig, status: dict, now: dt.datetime | None = None) -> list[HostRow]:
    """A row per configured host, failures first, then stale, then needing attention."""
    now = now or utc_now()
    found = []
    for host in config.hosts:
        entry = status.get("hosts", {}).get(host.name, {})
        result = entry.get("last_result", "never pulled")
        stale = is_stale(entry, host.max_age, now)
        if result == Status.FAILED:
            state = HostState.FAILED
        elif stale:
            state = HostState.STALE
        elif (
            entry.get("problem")
            or entry.get("verify_result") == Status.FAILED
            or isinstance(entry.get("guard_hold"), dict)
        ):
            state = HostState.ATTENTION
        else:
            state = HostState.OK
        hold = entry.get("guard_hold")
        held = (
            f"forget held by the ransomware guard: {hold.get('reason')}"
            if isinstance(hold, dict)
            else None
        )
        history = entry.get("history", [])[-HISTORY_CELLS:]
        found.append(
            HostRow(
                host=host.name,
                state=state,
                result=result,
                reason=held or entry.get("reason", ""),
                stale=stale,
                newest_age=age(entry.get("newest_snapshot"), now),
                verified_age=age(entry.get("last_verified"), now),
                verify_result=entry.get("verify_result"),
                databases_age=age(entry.get("databases_proven"), now),
                has_databases=bool(entry.get("database_proofs") or entry.get("database_dumps")),
                repository_bytes=entry.get("repository_bytes"),
                duration=entry.get("duration"),
                store_peak_rss=entry.get("store_peak_rss"),
                history=[h.get("result", "?") for h in history],
                sizes=[h["repository_bytes"] for h in history if h.get("repository_bytes")],
                held=held,
            )
        )
    return sorted(found, key=lambda r: (_ORDER[r.state], r.host))
