"""The static HTML status page, rewritten atomically after every run."""

from __future__ import annotations

import datetime as dt
from collections import Counter

from ..common.clock import shown, utc_now
from ..common.fsutil import atomic_write
from .config import ServerConfig
from .fleet_view import HostState, rows
from .report import _environment


def render(config: ServerConfig, status: dict, now: dt.datetime | None = None) -> str:
    now = now or utc_now()
    found = rows(config, status, now)
    counts = Counter(r.state for r in found)
    return (
        _environment(True)
        .get_template("status.html.j2")
        .render(
            rows=found,
            counts={k: counts.get(k, 0) for k in HostState},
            when=shown(now),
        )
    )


def write(config: ServerConfig, status: dict) -> None:
    if config.status_page is not None:
        config.status_page.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(config.status_page, render(config, status), mode=0o644)
