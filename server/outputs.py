"""What every run leaves for the people and tools watching: metrics, the status page, the
summary mail, pings and messages. None of them can stop a backup or the other outputs;
one that is configured and cannot be written or delivered makes the run exit 1, is
recorded in status.json (``outputs``) and named in the summary mail: monitoring that
silently stops updating is the failure this guards against."""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import TypeVar

from ..common import mail
from ..common.errors import EXIT_FAILED, EXIT_OK, describe
from ..common.fsutil import atomic_write
from ..common.log import get_logger
from ..common.mail import EmailConfig
from ..common.notify import Notifier, NotifyConfig
from ..common.outcome import Status
from ..common.text import printable
from . import fleet_view, metrics, report, status_file, status_page
from .config import ServerConfig, load_server_config
from .journal import NO_ACTIVITY, InterruptedRun, PullActivity, Roster, pull_activity
from .results import HostResult

log = get_logger("outputs")
PUBLISH_TRIES = 3
"""Times :func:`publish` writes the outputs when the status file keeps changing."""
T = TypeVar("T")


def publish(config: ServerConfig) -> tuple[dict, list[str]]:
    """Rewrite the metrics file and the status page from the status file and the pull's
    journal (a pull cut short before it wrote the status file: its hosts need attention,
    ``pullback_pull_cut_short`` 1); written again (up to :data:`PUBLISH_TRIES` times)
    when the status file changed meanwhile, so what is shown is never older than it.
    Returns the status and what could not be written (``metrics file /path: Read-only
    file system``, each also an error in the log)."""
    for _ in range(PUBLISH_TRIES):
        seen = status_file.version(config.state_dir)
        status = status_file.load_status(config.state_dir)
        problems = _write_outputs(config, status)
        if status_file.version(config.state_dir) == seen:
            break
        # the status changed while they were written (a maintenance recorded its run
        # beside a publish after a killed pull): written again, so the last written is
        # never older than the status file; no lock, so a slow disk holds no writer up
    return status, problems


def _write_outputs(config: ServerConfig, status: dict) -> list[str]:
    """The metrics file and the status page from ``status`` and the pull's journal;
    returns what could not be written."""
    activity = _guarded(
        "read the pull's journal",
        lambda: pull_activity(config.state_dir, config.lock_dir, Roster.of(config.hosts)),
        NO_ACTIVITY,
    )
    problems = []
    for what, path, write in (
        ("metrics file", config.metrics_file, metrics.write),
        ("status page", config.status_page, _write_page),
    ):
        try:
            write(config, status, activity)
        except Exception as exc:
            # a path the units may not write is an administrator's matter: one line; any
            # other failure is a bug, and its traceback says where
            trace = not isinstance(exc, OSError)
            log.error("could not write the %s %s: %s", what, path, describe(exc), exc_info=trace)
            problems.append(printable(f"{what} {path}: {describe(exc)}", 300))
    return problems


def _write_page(config: ServerConfig, status: dict, activity: PullActivity) -> None:
    """The status page (when one is configured): with a pull running or cut short, the
    page ``status --html`` writes, which says so. Raises OSError when it cannot be
    written."""
    if activity == NO_ACTIVITY or config.status_page is None:
        status_page.write(config, status)
        return
    local = fleet_view.Source(status_file.server_name(), None, status)
    view = fleet_view.fleet(config, local, activity=activity)
    status_page.write_page(config.status_page, status_page.render_fleet(view))


def record_problems(config: ServerConfig, problems: list[str], kind: str = "run") -> None:
    """Keep the outputs' problems of a run of ``kind`` in status.json (``status`` and
    ``--check`` show them, until a run of the same kind writes them all)."""
    _guarded(
        "record the outputs' problems",
        lambda: status_file.record_outputs(config.state_dir, problems, kind),
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
    ok = not any(r.status == Status.FAILED for r in results) and not problems
    if show or notifier.sends(ok):  # (rendered only for someone: 0.06 s a pull)
        plain = "\n".join(f"{r.host}: {r.status}: {r.reason}" for r in results)
        text = _guarded(
            "render the summary",
            lambda: report.render_text(results, history, outputs=problems),
            plain,
        )
        if show:
            print(text)
        missed = _guarded(
            "send the pings",
            lambda: notifier.finish(ok, report.subject(results, "pullback:", problems), text),
            ["pings"],
        )
        problems += [f"{what} not delivered" for what in missed]
    problems += _mail(config, results, history, problems)
    record_problems(config, problems, "pull")
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
    record_problems(config, problems, "maintain")
    return problems


SUCCEEDED = ("success", "exec-condition")
"""systemd's ``$SERVICE_RESULT`` when the unit's main process succeeded (an exit status
in SuccessExitStatus= too) and wrote its outputs itself, or ExecCondition= skipped it
(nothing configured yet): ``publish --if-failed`` has nothing to do."""
STOPPED = ("130", "143", "INT", "TERM")
"""``$EXIT_STATUS`` of a pull a signal stopped: a drop-in's SuccessExitStatus= may call
it success, but it wrote no status file."""


def _succeeded(environ: Mapping[str, str]) -> bool:
    """Whether systemd's variables in ``environ`` say the unit's main process succeeded
    (or was skipped) and was not stopped by a signal (``$EXIT_CODE`` ``killed`` or
    ``dumped``: systemd counts SIGHUP, SIGINT, SIGTERM and SIGPIPE as clean for some
    units, and a drop-in may list any signal in SuccessExitStatus=)."""
    return (
        environ.get("SERVICE_RESULT", "") in SUCCEEDED
        and environ.get("EXIT_STATUS", "") not in STOPPED
        and environ.get("EXIT_CODE", "") not in ("killed", "dumped")
    )


def _say_cut_short(killed: InterruptedRun, result: str) -> str:
    """Log (a warning) what cut the pull short, as the journal and systemd say, and the
    hosts it was pulling. Returns the words."""
    hosts = sorted(killed.phases)
    named = printable(", ".join(hosts[:10]), 1000)
    more = f" and {len(hosts) - 10} more" if len(hosts) > 10 else ""
    exited = printable(os.environ.get("EXIT_STATUS", ""), 20)
    systemd = f" (systemd: {printable(result, 20)}, {exited})" if result else ""
    words = (
        f"the pull (pid {killed.pid}) was {killed.how}{systemd} while pulling {named}{more}: "
        "the metrics and the status page say so until the next pull ends"
    )
    log.warning("%s", words)
    return words


def command(path: Path, args: argparse.Namespace) -> int:
    """``pullback-server publish``: rewrite the metrics file and the status page now, from
    the status file and the pull's journal (:func:`publish`: a pull cut short, or one
    running that took over, as ``status`` tells them). With ``--if-failed`` (the unit's
    ExecStopPost=): nothing when systemd's variables say the pull succeeded
    (:func:`_succeeded`; the configuration not even read). Returns 0, or 1 when an
    output could not be written. Raises ConfigError."""
    result = os.environ.get("SERVICE_RESULT", "")
    if args.if_failed and _succeeded(os.environ):
        return EXIT_OK
    config = load_server_config(path)
    killed = pull_activity(config.state_dir, config.lock_dir, Roster.of(config.hosts)).killed
    said = _say_cut_short(killed, result) if killed is not None else ""
    if killed is None and result:
        log.info(
            "the run did not succeed (systemd: %s, %s): rewriting the outputs from %s",
            printable(result, 20),
            printable(os.environ.get("EXIT_STATUS", ""), 20),
            status_file.STATUS_FILE,
        )
    _, problems = publish(config)
    if args.if_failed and not _reported_itself(os.environ):
        if killed is not None and _first_told(config.state_dir, killed):
            problems += _tell_failed(config, f"the pull was {killed.how}", said, killed.phases)
        else:  # crashed, or stopped before its journal: an earlier cut is told already
            words = (
                f"the pull ended without its report (systemd: {printable(result, 20)}, "
                f"{printable(os.environ.get('EXIT_STATUS', ''), 20)}): journalctl -u "
                "pullback-server.service says why"
            )
            problems += _tell_failed(config, "the pull ended without its report", words)
    return EXIT_FAILED if problems else EXIT_OK


TOLD = "cut-short-told.json"
"""Which cut-short pull (pid, start) ``publish --if-failed`` last told of: its journal
stays until a pull ends, and a later failed run must not tell of it again."""


def _first_told(state_dir: Path, killed: InterruptedRun) -> bool:
    """Whether ``killed`` was not told of before (and remember that it now is)."""
    record = json.dumps({"pid": killed.pid, "started": killed.started})
    path = state_dir / TOLD
    try:
        if path.read_text() == record:
            return False
    except (OSError, UnicodeDecodeError):
        pass
    try:
        atomic_write(path, record, mode=0o600)
    except OSError as exc:
        log.warning("could not note the cut-short pull as told: %s", describe(exc))
    return True


REPORTED = ("0", "1", "75")
"""``$EXIT_STATUS`` of a pull that ended on its own and sent its own mail and pings (ok,
a host failed, another run held the lock)."""


def _reported_itself(environ: Mapping[str, str]) -> bool:
    """Whether systemd's variables say the pull exited by itself with a code after which
    it has mailed and pinged (:data:`REPORTED`)."""
    return environ.get("EXIT_CODE", "") == "exited" and environ.get("EXIT_STATUS", "") in REPORTED


def _tell_failed(
    config: ServerConfig, what: str, words: str, hosts: Iterable[str] = ()
) -> list[str]:
    """The failure mail (unless ``send: never``) and the failure ping and messages of a
    pull that could not send its own (killed, stopped, crashed): ``what`` in the subject,
    ``words`` the body; each of ``hosts`` (those it was pulling) with pings or owners of
    its own is told too. Returns what could not be delivered."""
    problems = _ping_failed(config.notify, "pull", f"pullback: {what}", words)
    problems += _mail_failed(config.email, config.email.to if config.email else (), what, words)
    for host in config.hosts:
        if host.name in hosts:
            title = f"pullback: {host.name}: {what}"
            problems += _ping_failed(host.notify, f"pull of {host.name}", title, words)
            said = f"{host.name}: {what}"
            problems += _mail_failed(config.email, host.email_to, said, words)
    return problems


def _ping_failed(notify: NotifyConfig | None, label: str, title: str, words: str) -> list[str]:
    """A failure ping and messages to ``notify`` (none: nothing). Returns the misses."""
    if notify is None:
        return []
    notifier = Notifier(notify, label)
    missed = _guarded("send the pings", lambda: notifier.finish(False, title, words), ["pings"])
    return [f"{what} not delivered" for what in missed]


def _mail_failed(
    email: EmailConfig | None, to: tuple[str, ...] | list[str], what: str, words: str
) -> list[str]:
    """The failure mail to ``to`` (none, or ``send: never``: nothing). Returns the
    misses."""
    if email is None or not to or email.send == "never":
        return []
    subject = f"{email.subject_prefix} FAILED: {what}"
    try:  # (the message too: a header it cannot hold is a mail not sent, not a crash)
        mail.deliver(email, mail.build_message(email.sender, to, subject, words + "\n"))
    except mail.MailError as exc:
        log.error("the failure mail to %s was not sent: %s", ", ".join(to), exc)
        return [f"failure mail to {', '.join(to)} not sent"]
    return []
