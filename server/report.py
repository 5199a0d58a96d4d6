"""The summary of a pull, rendered with Jinja2 as text and HTML, and when to send it."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from importlib import resources

import jinja2

from ..common import clock, mail
from ..common.clock import utc_now
from ..common.log import get_logger
from ..common.mail import EmailConfig
from ..common.outcome import Status
from ..common.units import human_ago, human_duration, human_size
from .results import HostResult

log = get_logger("report")

_ORDER = {Status.FAILED: 0, Status.SKIPPED: 1, Status.STORED: 2}


def _read_templates() -> dict[str, str]:
    """Every template's text, read once as the command starts: a run that an upgrade
    (or a removal) overtakes renders with the templates it started with, not the new
    ones (an outside walk saw a pull render the upgrade's page, and one whose package
    was removed fail 'No module named pullback.server.templates')."""
    folder = resources.files("pullback.server.templates")
    return {
        entry.name: entry.read_text("utf-8")
        for entry in folder.iterdir()
        if entry.name.endswith(".j2")
    }


TEMPLATES = _read_templates()


def _environment(autoescape: bool) -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.DictLoader(TEMPLATES),
        autoescape=autoescape,  # noqa: S701 - the text body is not HTML; the HTML one escapes
        trim_blocks=True,
        lstrip_blocks=True,
        undefined=jinja2.StrictUndefined,
    )
    env.filters["size"] = lambda n: human_size(n) if n else "-"
    env.filters["duration"] = human_duration
    env.filters["age"] = _age
    env.filters["ago"] = human_ago
    return env


def _age(when: str | None, now: dt.datetime) -> str:
    if not when:
        return "never"
    return human_duration(clock.age(when, now) or 0.0)


def ordered(results: list[HostResult]) -> list[HostResult]:
    """Problems first (failures, then problem skips), then the rest, by host name."""
    return sorted(results, key=lambda r: (not r.is_problem, _ORDER[r.status], r.host))


def _headline(results: list[HostResult], outputs: Sequence[str] = ()) -> str:
    # a failed host that is stale too says so: status --check calls it stale first
    failed = [f"{r.host}{' (stale)' * r.stale}" for r in results if r.status == Status.FAILED]
    stale = [r.host for r in results if r.stale and r.status != Status.FAILED]
    parts = []
    if failed:
        parts.append(f"{len(failed)} of {len(results)} hosts FAILED: {', '.join(failed)}")
    if stale:
        parts.append(f"STALE: {', '.join(stale)}")
    if outputs:
        parts.append(f"OUTPUTS NOT WRITTEN: {len(outputs)}")
    if parts:
        return "; ".join(parts)
    problems = [r.host for r in results if r.is_problem]
    if problems:
        return f"{len(problems)} of {len(results)} hosts need attention: {', '.join(problems)}"
    stored = sum(r.status == Status.STORED for r in results)
    hosts = "the host is" if len(results) == 1 else f"all {len(results)} hosts are"
    return f"{hosts} ok ({stored} stored)"


def subject(results: list[HostResult], prefix: str, outputs: Sequence[str] = ()) -> str:
    """The mail's subject: failures, stale hosts and outputs not written first, then hosts
    needing attention."""
    return f"{prefix} {_headline(results, outputs)}".strip()


def render(
    results: list[HostResult],
    history: dict | None = None,
    now: dt.datetime | None = None,
    outputs: Sequence[str] = (),
) -> tuple[str, str]:
    """The (text, html) bodies of the summary mail; ``history`` maps hosts to fleet
    rows, ``outputs`` are the configured outputs that could not be written."""
    context = _summary(results, history, now, outputs)
    return (
        _environment(False).get_template("summary.txt.j2").render(context),
        _environment(True).get_template("summary.html.j2").render(context),
    )


def render_text(
    results: list[HostResult],
    history: dict | None = None,
    now: dt.datetime | None = None,
    outputs: Sequence[str] = (),
) -> str:
    """The summary's text body alone (the terminal, the pings): the HTML template is
    compiled only for a mail."""
    context = _summary(results, history, now, outputs)
    return _environment(False).get_template("summary.txt.j2").render(context)


def _summary(
    results: list[HostResult], history: dict | None, now: dt.datetime | None, outputs
) -> dict:
    """The summary templates' context."""
    now = now or utc_now()
    return {
        "outputs": list(outputs),
        "history": history or {},
        "results": ordered(results),
        "now": now,
        "when": clock.shown(now),
        "stored": sum(r.status == Status.STORED for r in results),
        "failed": sum(r.status == Status.FAILED for r in results),
        "total_added": sum(r.bytes_added for r in results),
    }


def render_maintenance(results, now: dt.datetime | None = None) -> tuple[str, str]:
    """The (text, html) bodies of a maintenance report (failures first)."""
    now = now or utc_now()
    ordered_results = sorted(results, key=lambda r: (r.status != Status.FAILED, r.host))
    context = {
        "results": ordered_results,
        "when": clock.shown(now),
        "failed": sum(r.status == Status.FAILED for r in results),
    }
    return (
        _environment(False).get_template("maintain.txt.j2").render(context),
        _environment(True).get_template("maintain.html.j2").render(context),
    )


def send_maintenance(email: EmailConfig | None, results) -> bool:
    """Mail the maintenance report by the same ``send`` policy as the pull summary."""
    if email is None or not results or not should_send(email.send, results):
        return False
    failed = [r.label for r in results if r.status == Status.FAILED]
    # a host's copy is maintained apart ("web1 (copy)"): one host and its copy were
    # "0 of 2 hosts" (an outside walk)
    text = (
        f"maintenance FAILED on {len(failed)} of {len(results)} repositories: {', '.join(failed)}"
        if failed
        else f"maintenance ok on {len(results)} repositories"
    )
    body, html = render_maintenance(results)
    subject = f"{email.subject_prefix} {text}"
    return _mailed(email, email.to, (subject, body, html), "the maintenance report")


def _mailed(
    email: EmailConfig,
    to: list[str] | tuple[str, ...],
    parts: tuple[str, str, str | None],
    what: str,
) -> bool:
    """Build and deliver the mail ``parts`` (subject, text, html) to ``to``. Returns
    True when it was delivered; an error in the log naming ``what`` when not."""
    try:
        mail.deliver(email, mail.build_message(email.sender, to, *parts))
    except mail.MailError as exc:
        log.error("%s was not sent: %s", what, exc)
        return False
    return True


def send_host_mails(
    email: EmailConfig | None, results: list[HostResult], recipients: dict[str, tuple[str, ...]]
) -> list[str]:
    """Mail each host's owners (``hosts[].email_to``) its result alone, by the ``send``
    policy. Returns the hosts whose mail could not be sent."""
    if email is None:
        return []
    failed = []
    for result in results:
        to = recipients.get(result.host)
        if not to or not should_send(email.send, [result]):
            continue
        text, html = render([result])
        said = subject([result], f"{email.subject_prefix} {result.host}:")
        if not _mailed(email, to, (said, text, html), f"the mail for {result.host}'s recipients"):
            failed.append(result.host)
    return failed


def should_send(policy: str, results, outputs: Sequence[str] = ()) -> bool:
    """Whether the ``send`` policy (always, on_problem, never) mails this run."""
    if policy == "never":
        return False
    if outputs:
        return True  # monitoring is not being written: say so, whatever else happened
    if all(getattr(r, "fresh", False) for r in results) and not any(r.is_problem for r in results):
        return False  # an hourly run that found every host fresh: say nothing
    return policy == "always" or any(r.is_problem for r in results)


def send_summary(
    email: EmailConfig | None,
    results: list[HostResult],
    history: dict | None = None,
    outputs: Sequence[str] = (),
) -> bool:
    """Mail the summary when the policy says so. Returns True if a mail was delivered.

    An unreachable or refusing SMTP server is logged (the caller decides what it means).
    """
    if email is None or not results or not should_send(email.send, results, outputs):
        return False
    text, html = render(results, history, outputs=outputs)
    said = subject(results, email.subject_prefix, outputs)
    if not _mailed(email, email.to, (said, text, html), "the summary mail"):
        return False
    log.info("summary mailed to %s", ", ".join(email.to))
    return True
