"""A ping or message is bounded as a whole by ``notify.timeout`` (helper-134: urllib's
timeout bounds each read, and an endpoint answering a byte every 0.4 s held the pull as
long as it liked), redirects included; one cut is not delivered."""

from __future__ import annotations

import logging
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from pullback.common.notify import MAX_REDIRECTS, _send


class _Endpoint:
    """A loopback socket server: each connection gets ``answer(conn)``, in a thread."""

    def __init__(self, answer):
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(8)
        self.answer = answer
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.listener.getsockname()[1]}"

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._one, args=(conn,), daemon=True).start()

    def _one(self, conn: socket.socket) -> None:
        try:
            self.answer(conn)
        except OSError:
            pass
        finally:
            conn.close()

    def close(self) -> None:
        self.listener.close()


def _dribble(conn: socket.socket) -> None:
    """An answer a byte every 0.2 s for 10 s: no read ever waits long."""
    conn.recv(65536)
    ends = time.monotonic() + 10
    for byte in b"HTTP/1.1 200 OK\r\nX-Slow: ":
        conn.sendall(bytes([byte]))
        time.sleep(0.2)
    while time.monotonic() < ends:
        conn.sendall(b"a")
        time.sleep(0.2)
    conn.sendall(b"\r\nContent-Length: 2\r\nConnection: close\r\n\r\nOK")


def _tls_dribble(conn: socket.socket) -> None:
    """A TLS handshake record of 16 KiB, a byte every 0.2 s after its header: the
    handshake never ends, and no read ever waits long."""
    conn.sendall(b"\x16\x03\x03\x40\x00")
    for _ in range(50):
        conn.sendall(b"\x02")
        time.sleep(0.2)


@pytest.fixture
def endpoint():
    made = []

    def make(answer) -> _Endpoint:
        made.append(_Endpoint(answer))
        return made[-1]

    yield make
    for one in made:
        one.close()


def test_a_dribbling_answer_is_cut_at_the_timeout(endpoint, caplog):
    slow = endpoint(_dribble)
    started = time.monotonic()
    with caplog.at_level(logging.WARNING):
        assert not _send("x: start ping", f"{slow.url}/ping/start", None, {}, 1.0)
    assert time.monotonic() - started < 2.5
    assert "not delivered" in caplog.text and "within 1s" in caplog.text


def test_a_dribbling_tls_handshake_is_cut_at_the_timeout(endpoint):
    slow = endpoint(_tls_dribble)
    url = slow.url.replace("http://", "https://")
    started = time.monotonic()
    assert not _send("x: message", url, b"body", {}, 1.0)
    assert time.monotonic() - started < 2.5


class _Redirecting(BaseHTTPRequestHandler):
    """``/loop/N`` redirects to ``/loop/N+1`` for ever; ``/away`` to a file: URL;
    ``/hop/N`` to ``/hop/N-1`` until ``/hop/0``, which answers OK."""

    def do_GET(self):
        if self.path.startswith("/hop/0"):
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"OK")
            return
        kind, _, number = self.path.strip("/").partition("/")
        step = {"loop": 1, "hop": -1}.get(kind, 0)
        where = f"/{kind}/{int(number or 0) + step}" if step else "file:///etc/passwd"
        self.send_response(302)
        self.send_header("Location", where)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def redirecting():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Redirecting)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_redirects_are_bounded_and_http_alone(redirecting):
    assert _send("x: ping", f"{redirecting}/hop/{MAX_REDIRECTS}", None, {}, 5.0)
    assert not _send("x: ping", f"{redirecting}/hop/{MAX_REDIRECTS + 1}", None, {}, 5.0)
    assert not _send("x: ping", f"{redirecting}/loop/0", None, {}, 5.0)
    assert not _send("x: ping", f"{redirecting}/away", None, {}, 5.0)


def test_a_prompt_endpoint_is_delivered(redirecting):
    assert _send("x: ping", f"{redirecting}/hop/0", None, {}, 5.0)


def test_a_token_follows_no_redirect_to_another_host():
    """helper-138: urllib passed the request's headers on to wherever a redirect
    pointed, an ntfy or Gotify token to another host, or from https down to http."""
    seen: list[str | None] = []

    class Recording(BaseHTTPRequestHandler):
        def do_GET(self):
            seen.append(self.headers.get("Authorization"))
            if self.path == "/elsewhere":
                self.send_response(302)
                self.send_header("Location", f"http://localhost:{other.server_address[1]}/ok")
            elif self.path == "/here":
                self.send_response(302)
                self.send_header("Location", "/ok")
            else:
                self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    first = ThreadingHTTPServer(("127.0.0.1", 0), Recording)
    other = ThreadingHTTPServer(("127.0.0.1", 0), Recording)
    for server in (first, other):
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        token = {"Authorization": "Bearer s3cret"}
        base = f"http://127.0.0.1:{first.server_address[1]}"
        assert _send("x: message", f"{base}/here", None, token, 5.0)
        assert seen == ["Bearer s3cret", "Bearer s3cret"]  # the same host: kept
        seen.clear()
        assert _send("x: message", f"{base}/elsewhere", None, token, 5.0)
        assert seen == ["Bearer s3cret", None]  # another host: dropped
    finally:
        for server in (first, other):
            server.shutdown()
            server.server_close()


def test_leaving_waits_for_a_cut_under_way(monkeypatch):
    """helper-138 R8: a deadline met as the conversation ended: leaving cancelled the timer
    (which stops no cut already running) and closed the duplicates while the cut was
    still shutting them, so it could shut a descriptor number reused meanwhile. Leaving
    now waits for the cut; it shut every duplicate while it was still open."""
    from pullback.common import watchdog

    cutting = threading.Event()
    seen: list[int] = []
    real = watchdog._shut

    def slow_shut(sock: socket.socket) -> None:
        cutting.set()
        time.sleep(0.3)
        seen.append(sock.fileno())  # -1: closed under the cut
        real(sock)

    monkeypatch.setattr(watchdog, "_shut", slow_shut)
    ours, theirs = socket.socketpair()
    try:
        guard = watchdog.Watchdog(0.2)
        with guard:
            guard.watch(ours)
            assert cutting.wait(5)
        assert not guard._timer.is_alive()
        assert seen and -1 not in seen, seen
        assert guard.fired.is_set()
    finally:
        ours.close()
        theirs.close()
