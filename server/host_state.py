"""How a host stands, and the symbols of its recent runs: shared by the fleet view and
the reading of other servers' status files."""

from __future__ import annotations

from enum import StrEnum

from ..common.outcome import Status


class HostState(StrEnum):
    """How a host stands, worst first: what the status table and page sort by."""

    FAILED = "failed"
    STALE = "stale"
    ATTENTION = "attention"
    """Stored or skipped, but with something an administrator should look at."""
    OK = "ok"
    DISABLED = "disabled"
    """Left out of pulls by server.yaml (``hosts[].enabled: false``): not pulled,
    maintained or copied, so its record is shown and counted in no kind of trouble."""


def pull_counts(entry: dict, enabled: bool) -> bool:
    """Whether the last pull a host's status ``entry`` records counts (its result, reason,
    problem and failed services): always for a host server.yaml pulls (``enabled``); for
    a disabled one only when a run that named it made that pull (``pulled_disabled``). A
    pull that failed before the host was disabled (a machine gone) would otherwise count
    for ever. The rule of ``status``, ``--check``, the page and the metrics alike."""
    return enabled or entry.get("pulled_disabled") is True


SYMBOLS: dict[str, str] = {
    Status.STORED: "✓",
    Status.SKIPPED: "·",
    HostState.ATTENTION: "!",
    Status.FAILED: "✗",
}
"""The history cells: a run stored, skipped, needing attention, or failed."""
HISTORY_CELLS = 14
