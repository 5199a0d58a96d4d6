"""Pings and messages for monitoring: healthchecks.io-style checks, ntfy and Gotify.

Each is optional; each gets one try with a short timeout; a failure is a warning in the
log and never changes the outcome of a backup.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from . import secrets
from .log import get_logger
from .units import parse_duration

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


def _send(what: str, url: str, data: bytes | None, headers: dict[str, str], timeout: float) -> bool:
    import urllib.error  # here: http.client, ssl and email load only when a ping is sent
    import urllib.request

    if not url.startswith(("http://", "https://")):  # the schema allows nothing else
        log.warning("%s not sent: %s is not an http(s) URL", what, _shown(url))
        return False
    request = urllib.request.Request(  # noqa: S310 - http(s) only, checked above
        url, data=data, headers=headers, method="POST" if data is not None else "GET"
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
            response.read(1024)
        return True
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        log.warning("%s not delivered (%s): %s", what, _shown(url), reason)
        return False


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
        if ntfy and (not ok or ntfy.when == "always"):
            ok_sent = self._ntfy(ntfy, ok, title, body, config.timeout)
            missed += [] if ok_sent else ["ntfy message"]
        if gotify and (not ok or gotify.when == "always"):
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
