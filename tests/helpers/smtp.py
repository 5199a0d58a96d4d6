"""A real SMTP server (aiosmtpd) on loopback that keeps what it receives."""

from __future__ import annotations

import email
import email.policy
from dataclasses import dataclass, field

from aiosmtpd.controller import Controller

from tests.helpers.sshd import free_port


class _Keeper:
    def __init__(self, sink):
        self.sink = sink

    async def handle_DATA(self, server, session, envelope):
        message = email.message_from_bytes(envelope.content, policy=email.policy.default)
        self.sink.messages.append(message)
        self.sink.envelopes.append((envelope.mail_from, list(envelope.rcpt_tos)))
        return "250 OK"


@dataclass
class SmtpSink:
    port: int = 0
    messages: list = field(default_factory=list)
    envelopes: list = field(default_factory=list)
    controller: Controller | None = None

    def start(self, **kwargs) -> SmtpSink:
        self.port = self.port or free_port()
        self.controller = Controller(_Keeper(self), hostname="127.0.0.1", port=self.port, **kwargs)
        self.controller.start()
        return self

    def stop(self) -> None:
        if self.controller is not None:
            self.controller.stop()

    @staticmethod
    def bodies(message) -> tuple[str, str]:
        text = message.get_body(("plain",)).get_content()
        html = message.get_body(("html",)).get_content()
        return text, html
