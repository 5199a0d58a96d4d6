"""Sending a report: by SMTP (plain text plus HTML, STARTTLS/SSL/none, optional login) or
through the local sendmail program."""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from . import secrets
from .errors import CommandError, PullbackError
from .text import printable
from .units import parse_duration
from .watchdog import Watchdog

if TYPE_CHECKING:  # the email package, smtplib and ssl load when a mail is sent: every
    # command reads the mail settings, few send (the serve endpoint never does)
    from email.message import EmailMessage


@dataclass(frozen=True)
class SmtpConfig:
    host: str
    port: int
    security: str
    username: str | None
    password_file: Path | None
    ca_file: Path | None
    timeout: float


@dataclass(frozen=True)
class EmailConfig:
    smtp: SmtpConfig
    sender: str
    to: tuple[str, ...]
    send: str
    subject_prefix: str
    sendmail: Path | None = None
    """Deliver through this program (``sendmail -t -oi``) instead of SMTP."""


def email_config(data: dict | None) -> EmailConfig | None:
    """The ``email`` section of client.yaml or server.yaml (validated), or None."""
    if not data:
        return None
    smtp = data["smtp"]
    security = smtp["security"]
    return EmailConfig(
        smtp=SmtpConfig(
            host=smtp["host"],
            security=security,
            username=smtp.get("username"),
            port=smtp.get("port") or {"ssl": 465, "starttls": 587}.get(security, 25),
            password_file=Path(smtp["password_file"]) if smtp.get("password_file") else None,
            ca_file=Path(smtp["ca_file"]) if smtp.get("ca_file") else None,
            timeout=parse_duration(smtp["timeout"]),
        ),
        sender=data["from"],
        to=tuple(data["to"]),
        send=data["send"],
        subject_prefix=data["subject_prefix"],
        sendmail=Path(data["sendmail"]) if data.get("sendmail") else None,
    )


class MailError(PullbackError):
    """The mail could not be sent; the message says why."""


def _password(path: Path | None) -> str | None:
    if path is None:
        return None
    try:
        return secrets.read_secret_file(path, "SMTP password file")
    except secrets.SecretFileError as exc:
        raise MailError(str(exc)) from None


def build_message(
    sender: str, to: list[str] | tuple[str, ...], subject: str, text: str, html: str | None = None
) -> EmailMessage:
    """The mail from ``sender`` to ``to``: ``text``, and ``html`` as its alternative
    (every secret masked). Raises MailError when a header cannot hold what it is given
    (a line break in an address or the subject: the schemas refuse them in the
    settings)."""
    from email.message import EmailMessage
    from email.utils import formatdate, make_msgid

    message = EmailMessage()
    try:
        message["From"] = sender
        message["To"] = ", ".join(to)
        message["Subject"] = secrets.mask(subject)
        message["Date"] = formatdate(localtime=True)
        message["Message-ID"] = make_msgid(domain=sender.rpartition("@")[2] or None)
    except ValueError:  # (its words may quote the value: not repeated)
        raise MailError(
            "the mail's From, To or Subject cannot be made: a line break or another "
            "control character in email.from, email.to or email.subject_prefix?"
        ) from None
    message["Auto-Submitted"] = "auto-generated"
    message.set_content(secrets.mask(text))
    if html is not None:
        message.add_alternative(secrets.mask(html), subtype="html")
    return message


def deliver(email: EmailConfig, message: EmailMessage) -> None:
    """Deliver ``message`` the way ``email`` says: its sendmail program, or SMTP. Raises
    MailError in plain words."""
    if email.sendmail is not None:
        sendmail(email.sendmail, message, email.smtp.timeout)
    else:
        send(email.smtp, message)


def sendmail_argv(program: Path) -> list[str]:
    """How the local sendmail is run: recipients from the message's headers (``-t``), a
    line of a single dot is no end of the message (``-oi``)."""
    return [str(program), "-t", "-oi"]


def sendmail(program: Path, message: EmailMessage, timeout: float) -> None:
    """Hand ``message`` to the local ``program`` (msmtp, exim, postfix). Raises MailError
    with the program's last words when it fails."""
    from .runner import Runner  # sh loads only when a mail is handed over

    with tempfile.TemporaryFile() as text:
        text.write(message.as_bytes())
        text.seek(0)
        try:
            Runner().run(sendmail_argv(program), stdin=text, timeout=timeout, level=logging.DEBUG)
        except CommandError as exc:
            said = exc.tail[-1] if exc.tail else exc.reason
            raise MailError(f"{program} did not take the mail: {said}") from None


def send(smtp, message: EmailMessage) -> None:
    """Deliver ``message`` with the settings ``smtp`` (host, port, security, username,
    password_file, ca_file, timeout: the longest wait for each answer, and for the whole
    delivery). Raises MailError in plain words: a recipient refused among others that
    were accepted too (they got the mail), and any failure of the conversation (its
    words never hold the password)."""
    import smtplib
    import ssl

    context = ssl.create_default_context(cafile=str(smtp.ca_file) if smtp.ca_file else None)
    where = f"{smtp.host}:{smtp.port}"
    client: smtplib.SMTP
    if smtp.security == "ssl":
        client = smtplib.SMTP_SSL(timeout=smtp.timeout, context=context)
    else:
        client = smtplib.SMTP(timeout=smtp.timeout)
    # (TLS's server name: smtplib sets it only when its constructor connects)
    client._host = smtp.host  # type: ignore[attr-defined]
    watchdog = Watchdog(smtp.timeout, lambda: getattr(client, "sock", None))
    try:
        with watchdog, client:
            refused = _converse(client, smtp, message, context)
    except MailError:
        raise
    except (smtplib.SMTPException, ssl.SSLError, OSError) as exc:
        if watchdog.fired.is_set():
            raise MailError(
                f"the SMTP server {where} timed out (the mail not taken within {smtp.timeout:g}s)"
            ) from None
        raise _in_words(exc, where, smtp) from None
    except Exception as exc:  # (a bug's or a library's: its type alone, never its words)
        raise MailError(
            f"the mail could not be delivered through {where} ({type(exc).__name__})"
        ) from None
    if refused:
        raise MailError(_refused_words(refused, where))


def _converse(client, smtp, message: EmailMessage, context) -> dict:
    """Connect ``client`` (smtplib.SMTP) to the server of ``smtp``, log in, send
    ``message``. Returns the recipients the server refused (others took it): address,
    (code, answer). Raises smtplib.SMTPException, ssl.SSLError, OSError, MailError."""
    import smtplib

    code, said = client.connect(smtp.host, smtp.port)
    if code != 220:
        raise smtplib.SMTPConnectError(code, said)
    if smtp.security == "starttls":
        client.starttls(context=context)
    if smtp.username:
        _login(client, smtp, _password(smtp.password_file) or "")
    return client.send_message(message)


def _login(client, smtp, password: str) -> None:
    """Log ``client`` in as ``smtp.username``. A name and password in ASCII as smtplib
    does (CRAM-MD5, PLAIN or LOGIN: what the server offers); others, which smtplib
    refuses with an error that quotes a character of them, in UTF-8 by AUTH PLAIN
    (RFC 4616), else LOGIN. Raises smtplib.SMTPException, OSError, MailError."""
    import smtplib

    username = smtp.username
    if (username + password).isascii():
        client.login(username, password)
        return
    client.ehlo_or_helo_if_needed()
    offered = client.esmtp_features.get("auth", "").upper().split()
    if "PLAIN" in offered:
        code, said = client.docmd("AUTH", "PLAIN " + _b64(f"\0{username}\0{password}"))
    elif "LOGIN" in offered:
        code, said = client.docmd("AUTH", "LOGIN " + _b64(username))
        if code == 334:
            code, said = client.docmd(_b64(password))
    else:
        raise MailError(
            f"the SMTP server {smtp.host}:{smtp.port} offers neither AUTH PLAIN nor LOGIN, "
            "which a user name or password that is not ASCII needs"
        )
    if code not in (235, 503):  # (503: logged in already)
        raise smtplib.SMTPAuthenticationError(code, said)


def _b64(text: str) -> str:
    """``text`` in UTF-8, as base64 (one line)."""
    import base64

    return base64.b64encode(text.encode("utf-8")).decode("ascii")


def _refused_words(refused: dict, where: str) -> str:
    """What a MailError says of the recipients the server ``where`` refused (``refused``:
    address, (code, answer)) while it took the others."""
    said = "; ".join(
        f"{printable(address, 200)} ({code} {printable(_text(answer), 200)})"
        for address, (code, answer) in sorted(refused.items())
    )
    return f"the SMTP server {where} refused the recipient(s) {said}; the others got the mail"


def _text(answer: bytes | str) -> str:
    """A server's answer as text."""
    return answer.decode("utf-8", "replace") if isinstance(answer, bytes) else str(answer)


def _in_words(exc: BaseException, where: str, smtp) -> MailError:
    """The MailError that says ``exc`` of the SMTP conversation with ``where``."""
    import smtplib
    import ssl

    if isinstance(exc, smtplib.SMTPAuthenticationError):
        return MailError(f"the SMTP server {where} refused the login of {smtp.username}")
    if isinstance(exc, smtplib.SMTPException):
        return MailError(f"the SMTP server {where} refused the mail: {exc}")
    if isinstance(exc, ssl.SSLError):
        return MailError(f"TLS with the SMTP server {where} failed: {exc.reason}")
    if isinstance(exc, TimeoutError):
        return MailError(f"the SMTP server {where} did not answer within {smtp.timeout:g}s")
    return MailError(
        f"cannot reach the SMTP server {where}: {getattr(exc, 'strerror', None) or exc}"
    )
