"""What every run leaves for the people and tools watching: metrics, the status page, the
summary mail, pings and messages. None of them can fail a backup."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from ..common.errors import describe
from ..common.log import get_logger
from ..common.notify import Notifier
from ..common.outcome import Status
from . import fleet_view, metrics, report, status_file, status_page
from .config import ServerConfig
from .results import HostResult

log = get_logger("outputs")
T = TypeVar("T")


def publish(config: ServerConfig) -> dict:
    """Rewrite the metrics file and the status page from the status file; return it."""
    status = status_file.load_status(config.state_dir)
    for what, write in (("metrics file", metrics.write), ("status page", status_page.write)):
        try:
            write(config, status)
        except Exception as exc:
            log.warning("could not write the %s: %s", what, describe(exc), exc_info=True)
    return status


def _guarded(what: str, action: Callable[[], T], fallback: T) -> T:
    """``action()``, or ``fallback`` (logged) when it fails in any way: what the people
    watching get must never stop the rest of what they get."""
    try:
        return action()
    except Exception as exc:
        log.error("could not %s: %s", what, describe(exc), exc_info=True)
        return fallback


def finish_pull(
    config: ServerConfig,
    results: list[HostResult],
    notifier: Notifier,
    dry_run: bool = False,
    show: bool = False,
) -> None:
    if dry_run:
        if show:
            print(report.render(results)[0])
        return
    status = publish(config)
    history: dict[str, fleet_view.HostRow] = _guarded(
        "read the fleet's history",
        lambda: {row.host: row for row in fleet_view.rows(config, status)},
        {},
    )
    plain = "\n".join(f"{r.host}: {r.status}: {r.reason}" for r in results)
    text = _guarded("render the summary", lambda: report.render(results, history)[0], plain)
    if show:
        print(text)
    _guarded(
        "send the summary mail", lambda: report.send_summary(config.email, results, history), None
    )
    ok = not any(r.status == Status.FAILED for r in results)
    _guarded(
        "send the pings",
        lambda: notifier.finish(ok, report.subject(results, "pullback:"), text),
        None,
    )


def finish_maintenance(config: ServerConfig, results, notifier: Notifier) -> None:
    publish(config)
    text, _ = report.render_maintenance(results)
    print(text)
    report.send_maintenance(config.email, results)
    ok = not any(r.status == Status.FAILED for r in results)
    notifier.finish(ok, f"pullback maintenance {'ok' if ok else 'FAILED'}", text)
