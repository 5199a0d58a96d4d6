"""What a client run leaves for monitoring: its status file, metrics, failure mail, pings."""

from __future__ import annotations

import datetime as dt
import functools
import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources

from ..common import mail
from ..common.archive.sidecar import LEFT_OUT, ServiceReport, Sidecar, kept_words
from ..common.fsutil import atomic_write, read_regular
from ..common.log import get_logger, recent_lines
from ..common.metrics import Metrics
from ..common.notify import Notifier
from ..common.outcome import Status
from ..common.text import few, printable
from .config import ClientConfig

log = get_logger("outputs")
STATUS_FILE = ".client-status.json"


def status_path(config: ClientConfig):
    return config.archive_dir / STATUS_FILE


MAX_STATUS_BYTES = 16 << 20
"""The longest status file read (some 200 bytes per service); a longer one is written anew."""

NUMBERS = ("last_run", "last_success", "duration", "archive_bytes", "bytes", "ok", "last_run_ok")
"""The status file's keys (of the file and of each service's entry) that hold a number
(or a boolean): another value there is dropped as the file is read (the metrics write
numbers alone)."""


def load_status(config: ClientConfig) -> dict:
    """The client's status file. One of another shape (a hand's edit, a damaged disk: not
    a regular file, longer than :data:`MAX_STATUS_BYTES`, not JSON, values of other types)
    is said and read as empty, or without its odd values, so that the run's report still
    gets written."""
    path = status_path(config)
    try:
        status = json.loads(read_regular(path, MAX_STATUS_BYTES))
    except FileNotFoundError:
        return {"services": {}}
    except (ValueError, RecursionError) as exc:
        log.warning("%s is not a status file (%s): written anew", path, printable(exc, 200))
        return {"services": {}}
    services = status.setdefault("services", {}) if isinstance(status, dict) else None
    if not isinstance(services, dict) or not all(isinstance(e, dict) for e in services.values()):
        log.warning("%s is not a status file of this shape: written anew", path)
        return {"services": {}}
    if _drop_odd_values(status) + sum(_drop_odd_values(e) for e in services.values()):
        log.warning("%s held values of another type: dropped", path)
    return status


def _drop_odd_values(record: dict) -> int:
    """Drop the values of ``record``'s number keys that are no number; returns how many."""
    odd = [k for k in NUMBERS if k in record and not _number(record[k])]
    for key in odd:
        del record[key]
    return len(odd)


def _number(value: object) -> bool:
    """A value the metrics can write: None, a boolean, a finite float, an integer a float
    holds (10**400 is valid JSON)."""
    if isinstance(value, int):
        return abs(value) < 1 << 1023
    return value is None or (isinstance(value, float) and math.isfinite(value))


@dataclass
class RunSummary:
    """What a run did, for its status file, metrics, mail and pings."""

    ok: bool
    duration: float
    services: list[ServiceReport] = field(default_factory=list)
    sidecar: Sidecar | None = None
    """The published archive's sidecar (None when nothing was published)."""
    error: str | None = None
    """Why the run failed as a whole (no archive published)."""
    problems: list[str] = field(default_factory=list)
    """What failed beside the services (:meth:`.stopped.Recovery.report_lines`: a run
    killed before its report, an application it left down)."""
    configured: frozenset[str] | None = None
    """The services the status file keeps an entry for (the run's
    :func:`.run.kept_entries`); None: every entry stays (``start-stopped`` reads no
    configuration; a configuration in doubt)."""
    reports: dict | None = None
    """The mark in ``stopped.json`` of the run this reports (:meth:`.stopped.Underway.
    identity`: its pid, start and random token), kept in the status file as
    ``reported_run``: a mark a power cut left after the status file was written is then
    known as reported (None: no mark)."""

    def headline(self) -> str:
        failed = [s.name for s in self.services if s.status != Status.OK and s.error != LEFT_OUT]
        if self.error:  # (and an earlier run killed, found by this one: said after it)
            also = f" (and: {self.problems[0]})" if self.problems else ""
            return f"the run failed: {self.error}{also}"
        if self.problems:  # (first: an application left down, a run that told no one)
            return self.problems[0]
        if failed:
            return f"{len(failed)} of {len(self.services)} services failed: {', '.join(failed)}"
        return f"all {len(self.services)} services ok"


def merged(config: ClientConfig, run: RunSummary) -> dict:
    """The client's status file with the run merged in (not written). An entry stays for
    each service the run did not report (``run --service``) while it is configured and
    enabled (:attr:`RunSummary.configured`)."""
    status = load_status(config)
    now = dt.datetime.now(dt.UTC).timestamp()
    status.update(
        {
            "last_run": now,
            "last_run_ok": run.ok,
            "duration": round(run.duration, 3),
            "error": kept_words(
                few([*([run.error] if run.error else []), *run.problems], separator="; ") or None
            ),
        }
    )
    if run.sidecar is not None:
        status.update(
            {"archive": run.sidecar.archive.name, "archive_bytes": run.sidecar.archive.size}
        )
    if run.ok:
        status["last_success"] = now
    for service in run.services:
        if service.error == LEFT_OUT:  # (run --service: not run, its entry stays as it was)
            continue
        entry = status.setdefault("services", {}).setdefault(service.name, {})
        entry.update(
            {
                "ok": service.status == Status.OK,
                "duration": round(service.duration, 3),
                "bytes": service.bytes,
                "error": kept_words(service.error),  # (a plugin's words: masked, cut)
                "last_run": now,
            }
        )
        if service.status == Status.OK:
            entry["last_success"] = now
    if run.configured is not None:  # (a service removed or disabled: no alert for it)
        _drop_unconfigured(status, run.configured)
    if run.reports is not None:
        status["reported_run"] = run.reports
    return status


def write_status(config: ClientConfig, status: dict) -> None:
    """Write ``status`` as the client's status file. Raises OSError."""
    config.archive_dir.mkdir(parents=True, exist_ok=True)
    atomic_write(status_path(config), json.dumps(status, indent=2, sort_keys=True) + "\n")


def _drop_unconfigured(status: dict, configured: frozenset[str]) -> None:
    """Drop the entries of services not in ``configured``, each said once, as it leaves
    (a service directory moved by mistake is seen here, not only as a missing backup)."""
    entries = status.get("services", {})
    gone = [name for name in entries if name not in configured]
    if gone:
        shown = few([printable(name, 100) for name in sorted(gone)])
        log.warning(
            "dropped from the status file and metrics (no longer configured, or disabled): %s",
            shown,
        )
    status["services"] = {name: e for name, e in entries.items() if name in configured}


def metrics(status: dict) -> Metrics:
    m = Metrics()
    m.gauge("pullback_client_last_run_timestamp_seconds", "When the last run ended.").add(
        status.get("last_run")
    )
    m.gauge(
        "pullback_client_last_success_timestamp_seconds",
        "When the last run in which every service succeeded ended.",
    ).add(status.get("last_success"))
    m.gauge("pullback_client_last_run_ok", "1 when every service of the last run succeeded.").add(
        status.get("last_run_ok")
    )
    m.gauge("pullback_client_run_duration_seconds", "How long the last run took.").add(
        status.get("duration")
    )
    m.gauge("pullback_client_archive_bytes", "Size of the last published archive.").add(
        status.get("archive_bytes")
    )
    ok = m.gauge("pullback_client_service_ok", "1 when the service succeeded in the last run.")
    success = m.gauge(
        "pullback_client_service_last_success_timestamp_seconds", "When the service last succeeded."
    )
    seconds = m.gauge("pullback_client_service_duration_seconds", "The service's last duration.")
    size = m.gauge("pullback_client_service_bytes", "Bytes the service put in the last archive.")
    for name, entry in sorted(status.get("services", {}).items()):
        ok.add(entry.get("ok"), service=name)
        success.add(entry.get("last_success"), service=name)
        seconds.add(entry.get("duration"), service=name)
        size.add(entry.get("bytes"), service=name)
    return m


FAILURE_TEMPLATE = (
    resources.files("pullback.client.templates").joinpath("failure.txt.j2").read_text("utf-8")
)
"""The failure mail's template, read as the run starts: a run an upgrade overtakes mails
with the template it started with (or one whose package was removed: with one)."""


MAILED_PROBLEMS = 20
"""Problems a failure mail names after its headline (the rest counted)."""


def _more_problems(problems: list[str]) -> list[str]:
    """The lines a failure mail gives after its headline (which holds the first problem),
    bounded."""
    more = [printable(p, 1000) for p in problems[1 : MAILED_PROBLEMS + 1]]
    if len(problems) > MAILED_PROBLEMS + 1:
        more.append(f"and {len(problems) - MAILED_PROBLEMS - 1} more (the log has them)")
    return more


def _failure_mail(config: ClientConfig, run: RunSummary, unwritten: list[str]) -> str:
    import jinja2  # here: only a failed run writes a mail (25 ms of every run's start)

    env = jinja2.Environment(
        loader=jinja2.DictLoader({"failure.txt.j2": FAILURE_TEMPLATE}),
        autoescape=False,  # noqa: S701 - a plain text mail, not HTML
        trim_blocks=True,
        lstrip_blocks=True,
        undefined=jinja2.StrictUndefined,
    )
    return env.get_template("failure.txt.j2").render(
        host=config.hostname,
        headline=printable(run.headline(), 500),
        more=_more_problems(run.problems),
        services=run.services,
        archive=run.sidecar.archive.name if run.sidecar else None,
        status=run.sidecar.status if run.sidecar else None,
        log=recent_lines()[-60:],
        unwritten=unwritten,
    )


def _status_recorded(
    config: ClientConfig, run: RunSummary, recorded: Callable[[], None] | None
) -> tuple[dict, list[str]]:
    """Write the run's status file, then call ``recorded`` (not when writing failed).
    Returns the new status and what could not be written."""
    status: dict = {"services": {}}
    try:
        status = merged(config, run)
        write_status(config, status)
    except OSError as exc:  # (the metrics still say the run, failed: what was merged)
        log.error("could not record the run's status: %s", exc)
        problem = f"status file {status_path(config)}: {exc.strerror}"
        said = few([e for e in (status.get("error"), problem) if e], separator="; ")
        status.update(last_run_ok=False, error=said)
        return status, [problem]
    if recorded is not None:
        recorded()
    return status, []


def write_metrics(config: ClientConfig, status: dict) -> list[str]:
    """Write the metrics file (when one is configured) from the status ``status``;
    returns what could not be written (also said as an error)."""
    if config.metrics_file is None:
        return []
    try:
        metrics(status).write(config.metrics_file)
    except OSError as exc:
        log.error("could not write the metrics file %s: %s", config.metrics_file, exc)
        return [f"metrics file {config.metrics_file}: {exc.strerror}"]
    return []


def finish(
    config: ClientConfig,
    notifier: Notifier,
    run: RunSummary,
    recorded: Callable[[], None] | None = None,
) -> list[str]:
    """Record the run and tell whoever listens; ``recorded`` is called once the status
    file is written (not when that failed). Never raises for a delivery problem;
    returns what could not be written or delivered (the metrics file, the mail, a ping),
    each also an error in the log, so that the run can say so in its exit status."""
    status, problems = _status_recorded(config, run, recorded)
    problems += write_metrics(config, status)
    # one line (a mail's subject): an error's words may hold line breaks
    headline = printable(run.headline(), 500)
    headline += f"; {len(problems)} output(s) NOT WRITTEN" if problems else ""
    # rendered only for a mail or a notification (jinja2 costs ~40 ms of a run)
    body = functools.cache(lambda: _failure_mail(config, run, problems))
    email = config.email
    if email is not None and (
        email.send == "always" or (email.send == "on_problem" and (not run.ok or problems))
    ):
        subject = f"{email.subject_prefix} {config.hostname}: {headline}"
        try:  # (the message too: one that cannot be made is a mail not sent, the pings go)
            mail.deliver(email, mail.build_message(email.sender, email.to, subject, body()))
        except mail.MailError as exc:
            log.error("the mail was not sent: %s", exc)
            problems.append("mail not sent")
    ok = run.ok and not problems
    title = f"pullback-client {config.hostname}: {headline}"
    text = body() if notifier.config is not None else ""
    problems += [f"{what} not delivered" for what in notifier.finish(ok, title, text)]
    return problems
