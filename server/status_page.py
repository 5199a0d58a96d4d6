"""The static HTML status page, rewritten atomically after every run; and the page of a
fleet view (``status --merge ... --html FILE``), written when that command runs."""

from __future__ import annotations

import datetime as dt
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from ..common.clock import shown, utc_now
from ..common.fsutil import atomic_write
from ..common.sandbox import lasting_output
from .config import ServerConfig
from .fleet_view import Fleet, HostRow, HostState, rows
from .report import _environment


def _render(
    found: list[HostRow], now: dt.datetime, servers: bool = False, notes: Sequence[str] = ()
) -> str:
    """The page of ``found``; ``servers``: with a server column; ``notes``: lines above
    the table (escaped, as every word on the page)."""
    counts = Counter(r.state for r in found)
    return (
        _environment(True)
        .get_template("status.html.j2")
        .render(
            rows=found,
            counts={k: counts.get(k, 0) for k in HostState},
            when=shown(now),
            servers=servers,
            notes=notes,
            copies=any(r.copy for r in found),
        )
    )


def render(config: ServerConfig, status: dict, now: dt.datetime | None = None) -> str:
    """This server's page: a row per configured host, worst first."""
    now = now or utc_now()
    return _render(rows(config, status, now), now)


def render_fleet(view: Fleet) -> str:
    """The page of a fleet view: every row with its server, and the view's notes (merged
    files unreadable or when written, hosts on more than one server)."""
    return _render(view.rows, view.now, servers=view.merged, notes=view.notes())


def write_page(path: Path, html: str) -> None:
    """Replace ``path`` (world-readable) by ``html`` atomically. Raises OSError."""
    lasting_output(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, html, mode=0o644)


def write(config: ServerConfig, status: dict) -> None:
    if config.status_page is not None:
        write_page(config.status_page, render(config, status))
