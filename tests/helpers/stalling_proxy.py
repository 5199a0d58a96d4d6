"""A real HTTP proxy on loopback in front of a REST store (``rclone serve restic``) whose
chosen requests are accepted and never answered: a store whose disk or link hangs after
it answered the first requests (helper-125's outside attack built the first one)."""

from __future__ import annotations

import http.client
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class StallingProxy:
    """Forwards every request to ``127.0.0.1:upstream``, except those whose
    ``METHOD PATH`` matches :attr:`stall` (a regex, settable at any time): read, then
    held until :meth:`close`."""

    def __init__(self, upstream: int):
        self.upstream = upstream
        self.stall: str | None = None
        self.stalled: list[str] = []
        self.release = threading.Event()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def _any(self) -> None:
                line = f"{self.command} {self.path}"
                size = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(size) if size else b""
                if proxy.stall and re.search(proxy.stall, line):
                    proxy.stalled.append(line)
                    proxy.release.wait()
                    self.close_connection = True
                    return
                proxy.forward(self, body)

            do_GET = do_POST = do_DELETE = do_HEAD = do_PUT = _any

        return Handler

    def forward(self, handler: BaseHTTPRequestHandler, body: bytes) -> None:
        """Send the request on, and its answer back."""
        conn = http.client.HTTPConnection("127.0.0.1", self.upstream, timeout=600)
        headers = {k: v for k, v in handler.headers.items() if k.lower() != "connection"}
        conn.request(handler.command, handler.path, body=body, headers=headers)
        answer = conn.getresponse()
        data = answer.read()
        handler.send_response(answer.status)
        for key, value in answer.getheaders():
            if key.lower() not in ("transfer-encoding", "connection", "content-length"):
                handler.send_header(key, value)
        length = answer.getheader("Content-Length") if handler.command == "HEAD" else None
        handler.send_header("Content-Length", length or str(len(data)))
        handler.end_headers()
        if handler.command != "HEAD":
            handler.wfile.write(data)
        conn.close()

    def url(self, path: str, user: str, password: str) -> str:
        """The restic repository URL of ``path`` through the proxy."""
        return f"rest:http://{user}:{password}@127.0.0.1:{self.port}/{path}/"

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()
