"""Pings and messages for monitoring: healthchecks.io-style checks, ntfy and Gotify.

Each is optional; each gets one try with a short timeout; a failure is a warning in the
log and never changes the outcome of a backup.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from . import secrets
from .log import get_logger
from .units import parse_duration

log = get_logger("notify")
MAX_BODY = 10_000


@dataclass(frozen=True)
class NotifyConfig:
    healthchecks: str | None = None
    ntfy_url: str | None = None
    ntfy_token_file: Path | None = None
    ntfy_when: str = "failure"
    gotify_url: str | None = None
    gotify_token_file: Path | None = None
    gotify_priority: int = 8
    gotify_when: str = "failure"
    timeout: float = 10.0


def notify_config(data: dict | None) -> NotifyConfig | None:
    """The ``notify`` section (validated), or None when there is nothing to notify."""
    if not data or not any(data.get(k) for k in ("healthchecks", "ntfy", "gotify")):
        return None
    ntfy = data.get("ntfy") or {}
    gotify = data.get("gotify") or {}
    if data.get("healthchecks"):
        secrets.register(data["healthchecks"])  # whoever has the URL can ping the check
    return NotifyConfig(
        healthchecks=data.get("healthchecks"),
        ntfy_url=ntfy.get("url"),
        ntfy_token_file=Path(ntfy["token_file"]) if ntfy.get("token_file") else None,
        ntfy_when=ntfy.get("when", "failure"),
        gotify_url=gotify.get("url"),
        gotify_token_file=Path(gotify["token_file"]) if gotify.get("token_file") else None,
        gotify_priority=gotify.get("priority", 8),
        gotify_when=gotify.get("when", "failure"),
        timeout=parse_duration(data.get("timeout", "10s")),
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


def _send(what: str, url: str, data: bytes | None, headers: dict[str, str], timeout: float) -> bool:
    if not url.startswith(("http://", "https://")):  # the schema allows nothing else
        log.warning("%s not sent: %s is not an http(s) URL", what, secrets.mask(url))
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
        log.warning("%s not delivered (%s): %s", what, secrets.mask(url), reason)
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

    def finish(self, ok: bool, title: str, body: str) -> None:
        config = self.config
        if config is None:
            return
        body = secrets.mask(body)[-MAX_BODY:]
        title = secrets.mask(title)
        if config.healthchecks:
            url = config.healthchecks.rstrip("/") + ("" if ok else "/fail")
            _send(
                f"{self.label}: {'success' if ok else 'failure'} ping",
                url,
                body.encode(),
                {"Content-Type": "text/plain; charset=utf-8"},
                config.timeout,
            )
        if config.ntfy_url and (not ok or config.ntfy_when == "always"):
            headers = {
                "Title": title.encode("ascii", "replace").decode(),
                "Priority": "high" if not ok else "default",
                "Tags": "warning" if not ok else "white_check_mark",
            }
            token = _token(config.ntfy_token_file)
            if token:
                headers["Authorization"] = f"Bearer {token}"
            _send(
                f"{self.label}: ntfy message",
                config.ntfy_url,
                body.encode(),
                headers,
                config.timeout,
            )
        if config.gotify_url and (not ok or config.gotify_when == "always"):
            token = _token(config.gotify_token_file)
            if token:
                payload = {
                    "title": title,
                    "message": body,
                    "priority": config.gotify_priority if not ok else 2,
                }
                _send(
                    f"{self.label}: gotify message",
                    f"{config.gotify_url.rstrip('/')}/message",
                    json.dumps(payload).encode(),
                    {"Content-Type": "application/json", "X-Gotify-Key": token},
                    config.timeout,
                )
