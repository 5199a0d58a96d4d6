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


SYMBOLS: dict[str, str] = {
    Status.STORED: "✓",
    Status.SKIPPED: "·",
    HostState.ATTENTION: "!",
    Status.FAILED: "✗",
}
"""The history cells: a run stored, skipped, needing attention, or failed."""
HISTORY_CELLS = 14
