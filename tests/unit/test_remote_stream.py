"""A small archive over the control connection (``Remote.stream`` below SMALL_STREAM),
against an SSH server in this process that does what a hostile client's sshd may: the
archive's bytes and then more after the end, no exit status, an exit status of failure.
Its bounds are those of a control request: whatever follows the end is counted and past
1 MiB fails the transfer (paramiko would buffer it all), and cancel stops it at once."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable
from types import SimpleNamespace

import paramiko
import pytest
from paramiko.common import cMSG_CHANNEL_DATA
from paramiko.message import Message

from pullback.server.remote import SMALL_STREAM, Remote, TransferCut

NAME = "evil-20261201T000000Z.tar.zst"
ARCHIVE = bytes(range(256)) * 4


class _Server(paramiko.ServerInterface):
    def __init__(self, answer: Callable[[paramiko.Channel, str], None]):
        self.answer = answer

    def check_auth_password(self, username, password):
        return paramiko.AUTH_SUCCESSFUL

    def get_allowed_auths(self, username):
        return "password"

    def check_channel_request(self, kind, chanid):
        return paramiko.OPEN_SUCCEEDED

    def check_channel_exec_request(self, channel, command):
        def answer():
            time.sleep(0.1)  # after paramiko acknowledged the request, as sshd would
            self.answer(channel, command.decode())

        threading.Thread(target=answer, daemon=True).start()
        return True


@pytest.fixture
def connect():
    """``connect(answer)``: a Remote whose control connection reaches an in-process SSH
    server that answers each request with ``answer(channel, request)``."""
    opened = []

    def make(answer, idle_timeout: float = 20) -> Remote:
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)

        def serve():
            conn, _ = listener.accept()
            transport = paramiko.Transport(conn)
            transport.add_server_key(paramiko.ECDSAKey.generate())
            transport.start_server(server=_Server(answer))
            opened.append(transport)

        threading.Thread(target=serve, daemon=True).start()
        client = paramiko.SSHClient()
        client.set_missing_host_key_policy(paramiko.AutoAddPolicy())
        client.connect(
            "127.0.0.1",
            listener.getsockname()[1],
            "x",
            "x",
            look_for_keys=False,
            allow_agent=False,
        )
        opened.append(client)
        listener.close()
        remote = Remote.__new__(Remote)
        remote.host = SimpleNamespace(name="evil")
        remote.ssh = SimpleNamespace(connect_timeout=5, idle_timeout=idle_timeout)
        remote._client = client
        return remote

    yield make
    for thing in opened:
        thing.close()


def _send(channel: paramiko.Channel, request: str) -> None:
    offset = int(request.split()[2])
    channel.sendall(ARCHIVE[offset:])


def test_the_archive_arrives_from_its_offset(connect):
    def honest(channel, request):
        _send(channel, request)
        channel.send_exit_status(0)
        channel.close()

    remote = connect(honest)
    assert len(ARCHIVE) <= SMALL_STREAM
    assert b"".join(remote.stream(NAME, 0, size=len(ARCHIVE))) == ARCHIVE
    assert b"".join(remote.stream(NAME, 100, size=len(ARCHIVE))) == ARCHIVE[100:]


def test_a_failure_after_the_bytes_is_a_cut_with_the_clients_words(connect):
    def fails(channel, request):
        _send(channel, request)
        channel.sendall_stderr(b"noise\nrefused: the disk said no\n")
        channel.send_exit_status(2)
        channel.close()

    remote = connect(fails)
    with pytest.raises(TransferCut, match="the disk said no"):
        list(remote.stream(NAME, 0, size=len(ARCHIVE)))


def test_data_after_the_end_is_counted_and_stops_the_transfer(connect):
    """The announced bytes, the end of output, then 64 MiB past the window and no exit
    status: paramiko would keep every byte; the transfer fails within 1 MiB of it."""

    def floods(channel, request):
        _send(channel, request)
        channel.shutdown_write()
        time.sleep(0.3)
        transport, chunk = channel.get_transport(), b"A" * 32768
        try:
            for _ in range(2048):
                message = Message()
                message.add_byte(cMSG_CHANNEL_DATA)
                message.add_int(channel.remote_chanid)
                message.add_string(chunk)
                transport._send_user_message(message)
        except (OSError, EOFError, paramiko.SSHException):
            return  # the server hung up: what this test wants

    remote = connect(floods)
    started = time.monotonic()
    with pytest.raises(TransferCut, match="more than 1 MiB of output after its end"):
        list(remote.stream(NAME, 0, size=len(ARCHIVE)))
    assert time.monotonic() - started < 15


def test_cancel_stops_the_wait_for_an_end_that_never_comes(connect):
    def never_ends(channel, request):
        _send(channel, request)
        channel.shutdown_write()  # and no exit status, ever

    remote = connect(never_ends)
    cancel = threading.Event()
    threading.Timer(0.5, cancel.set).start()
    started = time.monotonic()
    with pytest.raises(TransferCut, match="cancelled"):
        list(remote.stream(NAME, 0, cancel, size=len(ARCHIVE)))
    assert time.monotonic() - started < 5  # not idle_timeout's 20 s


@pytest.mark.parametrize("length", [8, 36, 60])
@pytest.mark.parametrize("offset", [0, 12_345_678_901])
def test_an_archive_the_client_no_longer_has_is_told_from_a_cut(length, offset):
    """serve's refusal "... from <peer>: no archive <name>" is matched whole: with a long
    host name and an IPv6 peer the line passes 200 characters, and its cut end hid the
    words (found by an outside review; the pull then failed instead of listing again)."""
    from pullback.common import protocol
    from pullback.server.remote import ArchiveGone, TransferCut, _stopped

    host = "h" * length
    name = f"{host}-20261201T030000Z.tar.zst"
    text = protocol.Request.send(name, offset).text
    line = f"refused request {text!r} from 2001:db8:abcd:12:3456:789a:bcde:f012: no archive {name}"
    gone = _stopped(host, name, 2, line)
    assert isinstance(gone, ArchiveGone) and str(gone).endswith(
        f"{name} is no longer on the client"
    )
    assert isinstance(_stopped(host, name, 1, line), TransferCut)  # not serve's refusal
    other = f"{host}-20261202T030000Z.tar.zst"  # another archive's refusal is a cut
    assert isinstance(_stopped(host, other, 2, line), TransferCut)
    cut = _stopped(host, name, 255, "x" * 1000)
    assert isinstance(cut, TransferCut) and len(str(cut)) < 400
