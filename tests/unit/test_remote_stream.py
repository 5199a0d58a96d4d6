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

from pullback.server import remote as remote_module
from pullback.server.remote import SMALL_STREAM, Remote, TransferCut

NAME = "evil-20261201T000000Z.tar.zst"
ARCHIVE = bytes(range(256)) * 4


class _Server(paramiko.ServerInterface):
    def __init__(self, answer: Callable[[paramiko.Channel, str], None], hold_exec: float = 0):
        self.answer = answer
        self.hold_exec = hold_exec

    def check_auth_password(self, username, password):
        return paramiko.AUTH_SUCCESSFUL

    def get_allowed_auths(self, username):
        return "password"

    def check_channel_request(self, kind, chanid):
        return paramiko.OPEN_SUCCEEDED

    def check_channel_exec_request(self, channel, command):
        time.sleep(self.hold_exec)  # (a reply held back: the whole connection waits)

        def answer():
            time.sleep(0.1)  # after paramiko acknowledged the request, as sshd would
            try:
                self.answer(channel, command.decode())
            except (OSError, EOFError, paramiko.SSHException):
                # the client hung up first (a cut, a refused flood): closing the
                # channel then meets a closed transport, which is no finding
                return

        threading.Thread(target=answer, daemon=True).start()
        return True


@pytest.fixture
def connect():
    """``connect(answer)``: a Remote whose control connection reaches an in-process SSH
    server that answers each request with ``answer(channel, request)``."""
    opened = []

    def make(
        answer, idle_timeout: float = 20, session: bool = False, hold_exec: float = 0
    ) -> Remote:
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)

        def serve():
            conn, _ = listener.accept()
            transport = paramiko.Transport(conn)
            transport.add_server_key(paramiko.ECDSAKey.generate())
            transport.start_server(server=_Server(answer, hold_exec))
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
        remote.use_session, remote._session = session, None
        remote.runner = SimpleNamespace(cancel=None)
        return remote

    yield make
    for thing in opened:
        thing.close()


def _flood(channel: paramiko.Channel) -> None:
    """64 MiB of output past the channel's window: paramiko's peer keeps what arrives
    whatever its window (flow control is the sender's courtesy)."""
    transport, chunk = channel.get_transport(), b"A" * 32768
    for _ in range(2048):
        message = Message()
        message.add_byte(cMSG_CHANNEL_DATA)
        message.add_int(channel.remote_chanid)
        message.add_string(chunk)
        transport._send_user_message(message)


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
        try:
            _flood(channel)
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


# -- a session (protocol 4): one channel, one serve process, framed answers ------------


def _lines(channel: paramiko.Channel):
    """The request lines a session channel receives, until the server closes it."""
    buffer = b""
    while True:
        while b"\n" not in buffer:
            data = channel.recv(4096)
            if not data:
                return
            buffer += data
        line, _, buffer = buffer.partition(b"\n")
        yield line.decode()


def _session_server(frame: Callable[[paramiko.Channel, str], None], execs: list[str]):
    """An answer function for ``connect``: a session that answers each line with
    ``frame(channel, line)``; every exec request is noted in ``execs``."""

    def answer(channel, command):
        execs.append(command)  # (the server hanging up on a session it refused, what
        # some tests want, ends this in _Server's answer thread)
        if command != "session":
            channel.sendall_stderr(f"refused request {command!r}: unknown request\n".encode())
            channel.send_exit_status(2)
            channel.close()
            return
        for line in _lines(channel):
            frame(channel, line)
        channel.send_exit_status(0)
        channel.close()

    return answer


def _honest(channel, line):
    from pullback.common import protocol

    if line.startswith("send "):
        data = ARCHIVE[int(line.split()[2]) :]
    elif line == "list":
        data = b'{"protocol": 4, "host": "evil", "archives": []}\n'
    elif line.startswith("fetched "):
        data = b'{"ok": true}\n'
    else:
        channel.sendall(protocol.refused_frame("unknown request"))
        return
    channel.sendall(protocol.ok_frame(len(data)) + data)


def test_a_session_carries_a_whole_pull_over_one_exec(connect):
    """list, two sends and fetched: one ``session`` exec, every answer right."""
    execs: list[str] = []
    remote = connect(_session_server(_honest, execs), session=True)
    assert remote.list_archives().protocol == 4
    assert b"".join(remote.stream(NAME, 0, size=len(ARCHIVE))) == ARCHIVE
    assert b"".join(remote.stream(NAME, 1000, size=len(ARCHIVE))) == ARCHIVE[1000:]
    remote.mark_fetched(NAME, deltas=True)
    assert execs == ["session"]
    remote.close()


def test_a_client_that_refuses_a_session_is_asked_request_by_request(connect):
    """An older client refuses the word (exit 2): the same request is asked on its own
    channel, and so is every later one."""
    execs: list[str] = []

    def old_client(channel, command):
        execs.append(command)
        if command == "session":
            channel.sendall_stderr(b"refused request 'session' from x: unknown request\n")
            channel.send_exit_status(2)
        elif command == "list":
            channel.sendall(b'{"protocol": 3, "host": "evil", "archives": []}\n')
            channel.send_exit_status(0)
        else:
            _send(channel, command)
            channel.send_exit_status(0)
        channel.close()

    remote = connect(old_client, session=True)
    assert remote.list_archives().protocol == 3
    assert not remote.use_session
    assert b"".join(remote.stream(NAME, 0, size=len(ARCHIVE))) == ARCHIVE
    assert execs == ["session", "list", f"send {NAME} 0"]


def test_a_refused_request_keeps_the_session_and_no_archive_is_gone(connect):
    from pullback.common import protocol
    from pullback.server.remote import ArchiveGone, RemoteError

    execs: list[str] = []

    def frame(channel, line):
        if line.startswith("send "):
            channel.sendall(protocol.refused_frame(f"no archive {NAME}"))
        elif line.startswith("fetched "):
            channel.sendall(protocol.refused_frame("the disk said \x1b[31mno"))
        else:
            _honest(channel, line)

    remote = connect(_session_server(frame, execs), session=True)
    with pytest.raises(ArchiveGone, match="no longer on the client"):
        list(remote.stream(NAME, 0, size=len(ARCHIVE)))
    with pytest.raises(RemoteError, match=r"refused 'fetched .*': the disk said \?\[31mno"):
        remote.mark_fetched(NAME)
    assert remote.list_archives().host == "evil"
    assert execs == ["session"]


@pytest.mark.parametrize(
    "answer, words",
    [
        (b"ok 99999999\n", "too big"),  # past the list answer's bound, before reading it
        (b"x" * 5000, "first line is too long"),
        (b"ok 5\nabc", "stopped 2 bytes before its end"),
        (b"yes 5\n", "neither ok nor refused"),
    ],
)
def test_a_session_answer_out_of_bounds_fails_the_request(connect, answer, words):
    """A hostile client's session answer: an announced length past the request's bound,
    a first line without end, an answer cut short, a frame that is none. Each fails the
    request in words, reading no more than it bounds, and drops the session."""
    from pullback.server.remote import RemoteError

    def frame(channel, line):
        channel.sendall(answer)
        if b"abc" in answer:
            channel.close()

    remote = connect(_session_server(frame, []), session=True, idle_timeout=3)
    with pytest.raises(RemoteError, match=words):
        remote.list_archives()
    assert remote._session is None


def test_a_send_whose_length_is_not_the_listings_is_a_cut(connect):
    from pullback.common import protocol

    def frame(channel, line):
        channel.sendall(protocol.ok_frame(len(ARCHIVE) * 1000))

    remote = connect(_session_server(frame, []), session=True)
    with pytest.raises(TransferCut, match="offers 1024000 bytes"):
        list(remote.stream(NAME, 0, size=len(ARCHIVE)))
    assert remote._session is None


def test_a_session_that_trickles_or_stalls_is_cut_at_idle_timeout(connect):
    """The bytes of a send stop half way: the transfer is cut after idle_timeout; a
    control answer that never completes fails at the same bound."""
    from pullback.common import protocol
    from pullback.server.remote import RemoteError

    def frame(channel, line):
        if line.startswith("send "):
            channel.sendall(protocol.ok_frame(len(ARCHIVE)) + ARCHIVE[:10])
        else:
            channel.sendall(b"ok 40\n{")

    remote = connect(_session_server(frame, []), session=True, idle_timeout=1)
    started = time.monotonic()
    with pytest.raises(TransferCut, match="no data for 1s"):
        list(remote.stream(NAME, 0, size=len(ARCHIVE)))
    with pytest.raises(RemoteError, match="within 1s"):
        remote.list_archives()
    assert time.monotonic() - started < 8


def test_a_stream_left_half_read_drops_the_session_and_the_next_request_opens_one(connect):
    """The unpacker refused an archive half way: the rest of its answer is never read,
    so the session cannot frame another answer; the next request opens a new one."""
    execs: list[str] = []
    big = bytes(range(256)) * 8192  # 2 MiB: more than one read

    def frame(channel, line):
        from pullback.common import protocol

        if line.startswith("send "):
            channel.sendall(protocol.ok_frame(len(big)) + big)
        else:
            _honest(channel, line)

    remote = connect(_session_server(frame, execs), session=True)
    stream = remote.stream(NAME, 0, size=len(big))
    next(stream)
    stream.close()
    assert remote._session is None
    assert remote.list_archives().host == "evil"
    assert execs == ["session", "session"]


def test_a_flood_between_answers_is_dropped_as_it_arrives_and_closes_the_session(connect):
    """After its answer the client's sshd sends 64 MiB past the window while the server
    is busy elsewhere (a store: nobody asks): the watcher reads and drops it, closes the
    session past 1 MiB, and the next request says why (paramiko would keep every byte)."""
    from pullback.server.remote import RemoteError

    flooded = threading.Event()

    def frame(channel, line):
        _honest(channel, line)
        if line == "list" and not flooded.is_set():
            flooded.set()
            _flood(channel)

    remote = connect(_session_server(frame, []), session=True)
    remote.list_archives()
    session = remote._session
    deadline = time.monotonic() + 20
    while not session.broken and time.monotonic() < deadline:
        time.sleep(0.1)
    assert "more than 1 MiB of output between its answers" in session.broken
    # what piled up before the close: a few ticks of an in-process flood, not all of it
    assert len(session.channel.in_buffer) < 40 << 20
    with pytest.raises(RemoteError, match="more than 1 MiB of output between its answers"):
        remote.mark_fetched(NAME)
    assert remote._session is None


def test_a_session_closed_between_answers_is_opened_again_once(connect):
    """sshd's ChannelTimeout (or a killed serve) ends the session during a long store:
    the next request goes over a new session, once."""
    execs: list[str] = []

    def one_answer(channel, command):
        execs.append(command)
        for line in _lines(channel):
            _honest(channel, line)
            break
        time.sleep(0.2)
        channel.send_exit_status(0)
        channel.close()

    remote = connect(one_answer, session=True)
    assert remote.list_archives().host == "evil"
    time.sleep(0.5)  # the session ends while the server does something else
    remote.mark_fetched(NAME, deltas=True)
    assert execs == ["session", "session"]
    time.sleep(0.5)
    assert b"".join(remote.stream(NAME, 0, size=len(ARCHIVE))) == ARCHIVE
    assert execs == ["session", "session", "session"]
    assert remote.use_session


@pytest.mark.parametrize("session", [False, True])
def test_an_exec_request_never_answered_fails_at_connect_timeout(connect, session):
    """A client's sshd that never replies to the exec request: paramiko would wait for
    ever; the request fails at connect_timeout (2 s here)."""
    from pullback.server.remote import RemoteError

    remote = connect(_session_server(_honest, []), session=session, hold_exec=30)
    remote.ssh.connect_timeout = 2
    started = time.monotonic()
    with pytest.raises(RemoteError, match="timed out"):
        remote.list_archives()
    assert time.monotonic() - started < 6


def test_a_cancel_ends_the_wait_for_an_exec_reply(connect):
    remote = connect(_session_server(_honest, []), hold_exec=30)
    remote.ssh.connect_timeout = 60
    cancel = threading.Event()
    threading.Timer(0.5, cancel.set).start()
    started = time.monotonic()
    with pytest.raises(TransferCut, match="timed out"):
        list(remote.stream(NAME, 0, cancel, size=len(ARCHIVE)))
    assert time.monotonic() - started < 5


def test_a_request_behind_an_answer_never_read_waits_at_most_idle_timeout(connect):
    """A stream left open half read (a caller that neither reads nor closes it) holds the
    session: the next request waits idle_timeout for it, then fails in words."""
    from pullback.server.remote import RemoteError

    big = bytes(range(256)) * 8192

    def frame(channel, line):
        from pullback.common import protocol

        if line.startswith("send "):
            channel.sendall(protocol.ok_frame(len(big)) + big)
        else:
            _honest(channel, line)

    remote = connect(_session_server(frame, []), session=True, idle_timeout=1)
    stream = remote.stream(NAME, 0, size=len(big))
    next(stream)
    started = time.monotonic()
    with pytest.raises(RemoteError, match="waited 1s for the session's answer before it"):
        remote.list_archives()
    assert time.monotonic() - started < 4
    stream.close()
    assert remote._session is None
    assert remote.list_archives().host == "evil"


class _StderrOnly:
    """A channel that has only standard error to give, in the pieces it was given."""

    def __init__(self, pieces: list[bytes]):
        self.pieces = pieces

    def recv_stderr_ready(self) -> bool:
        return bool(self.pieces)

    def recv_stderr(self, size: int) -> bytes:
        return self.pieces.pop(0)


def test_the_newest_standard_error_is_kept_and_its_bound_holds():
    # a session's many refusals: the line that ended it is the one shown, not the first
    err = remote_module._Stderr("web1", "session")
    older = [f"refused {n}\n".encode() * 2000 for n in range(5)]  # 5 x 22 KB
    err.drain(_StderrOnly([*older, b"the last words\n"]))
    assert len(err.kept) == remote_module.MAX_STDERR
    assert bytes(err.kept).splitlines()[-1] == b"the last words"
    assert err.total == sum(map(len, older)) + len(b"the last words\n")
