"""Pings and messages for monitoring: healthchecks.io-style checks, ntfy and Gotify.

Each is optional; each gets one try, bounded as a whole by the timeout; a failure is a
warning in the log and never changes the outcome of a backup (the run says it in its
exit status).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from . import secrets
from .log import get_logger
from .units import parse_duration
from .watchdog import Watchdog

if TYPE_CHECKING:  # loaded when a ping is sent
    import urllib.request

log = get_logger("notify")
MAX_BODY = 10_000
"""Characters of a ping's or message's body: its head (the reason, the first warnings)
and its tail (the last log lines), the middle cut and counted."""
NTFY_BODY = 4000
"""Bytes of an ntfy message: ntfy makes a longer one an attachment (attachment.txt)."""


def _within_bytes(text: str, limit: int) -> str:
    """``text`` cut in the middle (:func:`cut_middle`) until its UTF-8 is at most
    ``limit`` bytes."""
    shown, chars = text, len(text)
    while len(shown.encode()) > limit and chars > 0:
        chars = min(chars - 1, chars * limit // len(shown.encode()) - 64)
        shown = cut_middle(text, max(chars, 0))
    return shown


def cut_middle(text: str, limit: int) -> str:
    """``text`` in at most about ``limit`` characters: its first and last halves, and a
    line that counts what was cut between them."""
    if len(text) <= limit:
        return text
    half = limit // 2
    return f"{text[:half]}\n… ({len(text) - 2 * half} characters cut) …\n{text[-half:]}"


@dataclass(frozen=True)
class NtfyConfig:
    url: str
    token_file: Path | None
    when: str


@dataclass(frozen=True)
class GotifyConfig:
    url: str
    token_file: Path
    priority: int
    when: str


@dataclass(frozen=True)
class NotifyConfig:
    """The validated ``notify`` section; its defaults come from the schema alone."""

    healthchecks: str | None
    ntfy: NtfyConfig | None
    gotify: GotifyConfig | None
    timeout: float


def _path(value: str | None) -> Path | None:
    return Path(value) if value else None


def notify_config(data: dict | None) -> NotifyConfig | None:
    """The ``notify`` section (validated, defaults applied), or None when there is
    nothing to notify."""
    if not data or not any(data.get(k) for k in ("healthchecks", "ntfy", "gotify")):
        return None
    ntfy, gotify = data.get("ntfy"), data.get("gotify")
    if data.get("healthchecks"):
        secrets.register(data["healthchecks"])  # whoever has the URL can ping the check
    return NotifyConfig(
        healthchecks=data.get("healthchecks"),
        ntfy=NtfyConfig(ntfy["url"], _path(ntfy.get("token_file")), ntfy["when"]) if ntfy else None,
        gotify=GotifyConfig(
            gotify["url"], Path(gotify["token_file"]), gotify["priority"], gotify["when"]
        )
        if gotify
        else None,
        timeout=parse_duration(data["timeout"]),
    )


def _token(path: Path | None) -> str | None:
    if path is None:
        return None
    try:
        token = secrets.read_secret_file(path, "token file").strip()
    except secrets.SecretFileError as exc:
        log.warning("%s", exc)
        return None
    secrets.register(token)
    return token


def _shown(url: str) -> str:
    """``url`` as a warning shows it: masked, and a password in its ``user:password@``
    as ``***`` (an outside attack saw ``http://u:NtfySecret55@...`` printed whole)."""
    return secrets.mask(secrets.mask_url_password(url))


MAX_REDIRECTS = 3
"""Redirects a ping or message follows (each to an http(s) URL), all within its one
timeout."""


def _send(what: str, url: str, data: bytes | None, headers: dict[str, str], timeout: float) -> bool:
    """Send one ping or message: a GET of ``url``, or a POST of ``data``, its answer read
    (its first KiB), all within ``timeout`` seconds (:class:`.watchdog.Watchdog`: an
    endpoint that answers a byte at a time is cut there). Returns whether it was
    delivered; a warning in the log naming ``what`` when not."""
    import http.client  # here: http.client, ssl and email load only when a ping is sent
    import urllib.error
    import urllib.request

    if not url.startswith(("http://", "https://")):  # the schema allows nothing else
        log.warning("%s not sent: %s is not an http(s) URL", what, _shown(url))
        return False
    request = urllib.request.Request(  # noqa: S310 - http(s) only, checked above
        url, data=data, headers=headers, method="POST" if data is not None else "GET"
    )
    watchdog = Watchdog(timeout)
    try:
        with watchdog, _opener(watchdog).open(request, timeout=timeout) as response:
            response.read(1024)
    except (urllib.error.URLError, OSError, ValueError, http.client.HTTPException) as exc:
        reason = getattr(exc, "reason", exc)
        if watchdog.fired.is_set():
            reason = f"timed out (no whole answer within {timeout:g}s)"
        log.warning("%s not delivered (%s): %s", what, _shown(url), reason)
        return False
    if watchdog.fired.is_set():  # (read whole as the deadline came: not in time)
        log.warning("%s not delivered (%s): timed out (within %gs)", what, _shown(url), timeout)
        return False
    return True


def _opener(watchdog: Watchdog) -> urllib.request.OpenerDirector:
    """A urllib opener whose every connection (a redirect's, a proxy's) ``watchdog``
    watches, and that follows at most MAX_REDIRECTS redirects, to http(s) URLs alone."""
    import http.client
    import socket
    import urllib.error
    import urllib.request

    def connect(*args, **kwargs) -> socket.socket:
        return watchdog.watch(socket.create_connection(*args, **kwargs))

    def watched(kind: type[http.client.HTTPConnection]):
        def make(*args, **kwargs) -> http.client.HTTPConnection:
            connection = kind(*args, **kwargs)
            connection._create_connection = connect  # type: ignore[attr-defined]
            return connection

        return make

    class Plain(urllib.request.HTTPHandler):
        def http_open(self, req):
            return self.do_open(watched(http.client.HTTPConnection), req)

    class Tls(urllib.request.HTTPSHandler):
        def https_open(self, req):
            context = getattr(self, "_context", None)  # (None: the system's)
            return self.do_open(watched(http.client.HTTPSConnection), req, context=context)

    class Redirects(urllib.request.HTTPRedirectHandler):
        max_redirections = MAX_REDIRECTS

        def redirect_request(self, req, fp, code, msg, headers, newurl):
            if not newurl.startswith(("http://", "https://")):
                raise urllib.error.HTTPError(
                    newurl, code, "a redirect to no http(s) URL", headers, fp
                )
            new = super().redirect_request(req, fp, code, msg, headers, newurl)
            if new is not None and _leaves(req.full_url, newurl):
                new.remove_header("Authorization")  # (a token is for its own host alone)
            return new

    return urllib.request.build_opener(Plain, Tls, Redirects)


def _leaves(old: str, new: str) -> bool:
    """Whether a redirect from ``old`` to ``new`` goes to another host or port, or from
    https down to http: an ntfy or Gotify token must not follow it (urllib sends the
    request's headers on to wherever a redirect points: helper-138)."""
    from urllib.parse import urlsplit

    before, after = urlsplit(old), urlsplit(new)
    downgrade = before.scheme == "https" and after.scheme != "https"
    return downgrade or before.netloc.lower() != after.netloc.lower()


def _due(target: NtfyConfig | GotifyConfig | None, ok: bool) -> bool:
    """Whether ``target`` (configured or None) is messaged at the end of a run that ended
    ``ok`` (or not): on failure always, on success with ``when: always``."""
    return target is not None and (not ok or target.when == "always")


class Notifier:
    """Sends the start and end notifications of one run (or of one host)."""

    def __init__(self, config: NotifyConfig | None, label: str):
        self.config = config
        self.label = label

    def start(self) -> None:
        if self.config and self.config.healthchecks:
            _send(
                f"{self.label}: start ping",
                f"{self.config.healthchecks.rstrip('/')}/start",
                None,
                {},
                self.config.timeout,
            )

    def sends(self, ok: bool) -> bool:
        """Whether :meth:`finish` sends anything for a run that ended ``ok`` (or not):
        a caller with nothing to show makes no body for none."""
        config = self.config
        if config is None:
            return False
        return bool(config.healthchecks) or _due(config.ntfy, ok) or _due(config.gotify, ok)

    def finish(self, ok: bool, title: str, body: str) -> list[str]:
        """Ping and message whoever is configured that the run ended (``ok`` or not).

        Returns what could not be delivered (``healthchecks ping``, ``ntfy message``,
        ``gotify message``; each is also a warning in the log), [] when all went out."""
        config = self.config
        if config is None:
            return []
        body = cut_middle(secrets.mask(body), MAX_BODY)
        title = secrets.mask(title)
        missed = []
        if config.healthchecks:
            url = config.healthchecks.rstrip("/") + ("" if ok else "/fail")
            what = f"{self.label}: {'success' if ok else 'failure'} ping"
            headers = {"Content-Type": "text/plain; charset=utf-8"}
            if not _send(what, url, body.encode(), headers, config.timeout):
                missed.append("healthchecks ping")
        ntfy, gotify = config.ntfy, config.gotify
        if ntfy and _due(ntfy, ok):
            ok_sent = self._ntfy(ntfy, ok, title, body, config.timeout)
            missed += [] if ok_sent else ["ntfy message"]
        if gotify and _due(gotify, ok):
            ok_sent = self._gotify(gotify, ok, title, body, config.timeout)
            missed += [] if ok_sent else ["gotify message"]
        return missed

    def _ntfy(self, ntfy: NtfyConfig, ok: bool, title: str, body: str, timeout: float) -> bool:
        headers = {
            "Title": title.encode("ascii", "replace").decode(),
            "Priority": "high" if not ok else "default",
            "Tags": "warning" if not ok else "white_check_mark",
        }
        token = _token(ntfy.token_file)
        if token:
            headers["Authorization"] = f"Bearer {token}"
        shown = _within_bytes(body, NTFY_BODY)
        return _send(f"{self.label}: ntfy message", ntfy.url, shown.encode(), headers, timeout)

    def _gotify(
        self, gotify: GotifyConfig, ok: bool, title: str, body: str, timeout: float
    ) -> bool:
        token = _token(gotify.token_file)
        if not token:
            return False
        payload = {"title": title, "message": body, "priority": gotify.priority if not ok else 2}
        return _send(
            f"{self.label}: gotify message",
            f"{gotify.url.rstrip('/')}/message",
            json.dumps(payload).encode(),
            {"Content-Type": "application/json", "X-Gotify-Key": token},
            timeout,
        )
