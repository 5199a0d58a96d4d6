"""What every run leaves for the people and tools watching: metrics, the status page, the
summary mail, pings and messages. None of them can fail a backup."""

from __future__ import annotations

from ..common.log import get_logger
from ..common.notify import Notifier
from ..common.outcome import Status
from . import fleet_view, metrics, report, status_file, status_page
from .config import ServerConfig
from .results import HostResult

log = get_logger("outputs")


def publish(config: ServerConfig) -> dict:
    """Rewrite the metrics file and the status page from the status file; return it."""
    status = status_file.load_status(config.state_dir)
    for what, write in (("metrics file", metrics.write), ("status page", status_page.write)):
        try:
            write(config, status)
        except OSError as exc:
            log.warning("could not write the %s: %s", what, exc)
    return status


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
    history = {row.host: row for row in fleet_view.rows(config, status)}
    text, _ = report.render(results, history)
    if show:
        print(text)
    report.send_summary(config.email, results, history)
    ok = not any(r.status == Status.FAILED for r in results)
    notifier.finish(ok, report.subject(results, "pullback:"), text)


def finish_maintenance(config: ServerConfig, results, notifier: Notifier) -> None:
    publish(config)
    text, _ = report.render_maintenance(results)
    print(text)
    report.send_maintenance(config.email, results)
    ok = not any(r.status == Status.FAILED for r in results)
    notifier.finish(ok, f"pullback maintenance {'ok' if ok else 'FAILED'}", text)
