"""What every run leaves for the people and tools watching: metrics, the status page, the
summary mail, pings and messages. None of them can stop a backup or the other outputs;
one that is configured and cannot be written or delivered makes the run exit 1, is
recorded in status.json (``outputs``) and named in the summary mail: monitoring that
silently stops updating is the failure this guards against."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from ..common.errors import describe
from ..common.log import get_logger
from ..common.notify import Notifier
from ..common.outcome import Status
from ..common.text import printable
from . import fleet_view, metrics, report, status_file, status_page
from .config import ServerConfig
from .results import HostResult

log = get_logger("outputs")
T = TypeVar("T")


def publish(config: ServerConfig) -> tuple[dict, list[str]]:
    """Rewrite the metrics file and the status page from the status file. Returns the
    status and what could not be written (``metrics file /path: Read-only file system``,
    each also an error in the log)."""
    status = status_file.load_status(config.state_dir)
    problems = []
    for what, path, write in (
        ("metrics file", config.metrics_file, metrics.write),
        ("status page", config.status_page, status_page.write),
    ):
        try:
            write(config, status)
        except Exception as exc:
            # a path the units may not write is an administrator's matter: one line; any
            # other failure is a bug, and its traceback says where
            trace = not isinstance(exc, OSError)
            log.error("could not write the %s %s: %s", what, path, describe(exc), exc_info=trace)
            problems.append(printable(f"{what} {path}: {describe(exc)}", 300))
    return status, problems


def record_problems(config: ServerConfig, problems: list[str]) -> None:
    """Keep the outputs' problems in status.json (``status`` and ``--check`` show them)."""
    _guarded(
        "record the outputs' problems",
        lambda: status_file.record_outputs(config.state_dir, problems),
        None,
    )


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
) -> list[str]:
    """Status page, metrics, pings and the summary mail after a pull. Returns the
    outputs that could not be written or delivered ([] when all were)."""
    if dry_run:
        if show:
            print(report.render_text(results))
        return []
    status, problems = publish(config)
    problems += [missed for r in results for missed in r.not_delivered[:5]]
    history: dict[str, fleet_view.HostRow] = _guarded(
        "read the fleet's history",
        lambda: {row.host: row for row in fleet_view.rows(config, status)},
        {},
    )
    plain = "\n".join(f"{r.host}: {r.status}: {r.reason}" for r in results)
    text = _guarded(
        "render the summary", lambda: report.render_text(results, history, outputs=problems), plain
    )
    if show:
        print(text)
    ok = not any(r.status == Status.FAILED for r in results) and not problems
    missed = _guarded(
        "send the pings",
        lambda: notifier.finish(ok, report.subject(results, "pullback:", problems), text),
        ["pings"],
    )
    problems += [f"{what} not delivered" for what in missed]
    problems += _mail(config, results, history, problems)
    record_problems(config, problems)
    return problems


def _mail(
    config: ServerConfig, results: list[HostResult], history: dict, problems: list[str]
) -> list[str]:
    """The summary to ``email.to``, each host's own result to its ``email_to``. Returns
    what could not be sent."""
    unsent = []
    mailed = _guarded(
        "send the summary mail",
        lambda: report.send_summary(config.email, results, history, problems),
        False,
    )
    email = config.email
    if mailed is False and email is not None and report.should_send(email.send, results, problems):
        unsent.append("summary mail not sent")
    recipients = {h.name: h.email_to for h in config.hosts if h.email_to}
    hosts = _guarded(
        "send the hosts' own mails",
        lambda: report.send_host_mails(email, results, recipients),
        sorted(recipients),
    )
    return unsent + [f"the mail to {host}'s recipients not sent" for host in hosts]


def finish_maintenance(
    config: ServerConfig, results, notifier: Notifier, show: bool = True
) -> list[str]:
    """As :func:`finish_pull`, after maintenance (``show``: print the report). Returns
    the outputs' problems."""
    _, problems = publish(config)
    text, _ = report.render_maintenance(results)
    if show:
        print(text)
    if (
        not _guarded(
            "send the maintenance report",
            lambda: report.send_maintenance(config.email, results),
            False,
        )
        and config.email is not None
        and report.should_send(config.email.send, results)
    ):
        problems.append("maintenance report not mailed")
    ok = not any(r.status == Status.FAILED for r in results) and not problems
    title = f"pullback maintenance {'ok' if ok else 'FAILED'}"
    missed = _guarded("send the pings", lambda: notifier.finish(ok, title, text), ["pings"])
    problems += [f"{what} not delivered" for what in missed]
    record_problems(config, problems)
    return problems
