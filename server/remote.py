"""Talking to a client's serve endpoint: paramiko for requests, OpenSSH for large bytes.

Control requests (list, lock, fetched) go over a paramiko session so that host-key
problems are caught precisely. A large archive flows through an OpenSSH ``ssh`` child
(same key, same known_hosts, strict checking): paramiko moves about 70 MB/s to disk here,
OpenSSH over 250 MB/s, as fast as ``scp``. A small one (SMALL_STREAM: a day's delta)
comes over the paramiko connection already open, saving a handshake.

With ``session`` (a client of protocol 4, as its last listing said), the requests of a
pull share one channel and one ``pullback-client serve`` process (:class:`_Session`): each
other request would cost a process start and an sshd session, 0.3-0.4 s over a WAN link.
A client that cannot open one (an older one refuses the word) is asked request by request,
as before.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import select
import socket
import threading
import time
from collections.abc import Callable, Generator

import paramiko

from ..common import protocol
from ..common.errors import PullbackError
from ..common.log import get_logger
from ..common.protocol import Frame, Listing
from ..common.runner import Runner, RunningCommand
from ..common.text import printable
from . import known_hosts
from .config import HostConfig, SshConfig

log = get_logger("remote")

_F_SETPIPE_SZ = 1031
# AES-GCM runs on the CPU's AES instructions and beats OpenSSH's default chacha20 there;
# all three are authenticated ciphers of current OpenSSH.
CIPHERS = "aes128-gcm@openssh.com,aes256-gcm@openssh.com,chacha20-poly1305@openssh.com"


_TICK = 0.02
"""How long one read of a control answer waits for output before standard error is
drained again, and how often a wait looks at its deadline and the host's cancel:
paramiko buffers a peer's standard error without flow control, so what piles up between
two drains is this long's worth (a flood: 135 MiB at 0.5 s)."""
SMALL_STREAM = 16 << 20
"""Archives (what is left of them) up to this size travel over the control connection,
which is open already: no second SSH handshake and no ``ssh`` child, which cost more than
paramiko's slower copying (about 70 MB/s against OpenSSH's 250 MB/s here) up to this size
(a day's delta is typically a few MB)."""
MAX_SHORT_ANSWER = 4096
"""Bytes a ``fetched`` answer may have (it is ``{"ok": true}``)."""
MAX_STDERR = 64 << 10
"""How much of a request's standard error is kept, the last bytes (its last line is
shown; a session's standard error gathers every request's)."""
MAX_STDERR_READ = 1 << 20
"""Standard error a control request may write at all: past it the request fails. paramiko
buffers whatever the peer sends, flow control or not, so it is read (and dropped past
MAX_STDERR) all along, never left to pile up (a client's sshd is the client's)."""


class RemoteError(PullbackError):
    """The client could not be reached or answered something unusable."""


class TransferCut(RemoteError):
    """The byte stream stopped before the end; what arrived is kept for resuming
    (``kept``), unless it was removed (a resume that brought nothing new)."""

    def __init__(self, message: str, kept: bool = True):
        super().__init__(message)
        self.kept = kept


class ArchiveGone(RemoteError):
    """The client no longer has the archive asked for (its own run removed it, or a
    newer archive replaced it, while the server was fetching): nothing to resume."""


def _stopped(host: str, name: str, status: int | None, last: str) -> RemoteError:
    """The error of a ``send`` that ended with ``status`` and last said ``last`` (the
    whole line: a long host name or peer address must not cut its end off): ArchiveGone
    when the client refused it for an archive it does not have (serve's refusal, exit
    2), else TransferCut, quoting at most 200 characters."""
    if status == 2 and last.rstrip().endswith(f": no archive {name}"):
        return ArchiveGone(f"{host}: {name} is no longer on the client")
    return TransferCut(f"{host}: the transfer stopped: {printable(last, 200)}")


class _Stderr:
    """A control request's standard error: the last MAX_STDERR bytes kept, what came
    before dropped; more than MAX_STDERR_READ in all fails the request."""

    def __init__(self, host: str, request: str):
        self.host, self.request = host, request
        self.kept = bytearray()
        self.total = 0

    def drain(self, channel) -> None:
        """Read what has arrived. Raises RemoteError past MAX_STDERR_READ."""
        while channel.recv_stderr_ready():
            data = channel.recv_stderr(1 << 16)
            if not data:
                return
            self.kept += data[-MAX_STDERR:]
            if len(self.kept) > MAX_STDERR:
                del self.kept[: len(self.kept) - MAX_STDERR]
            self.count(len(data))

    def count(self, size: int, what: str = "messages") -> None:
        """Count ``size`` bytes of ``what``. Raises RemoteError past MAX_STDERR_READ."""
        self.total += size
        if self.total > MAX_STDERR_READ:
            raise RemoteError(
                f"{self.host}: the client wrote more than {MAX_STDERR_READ >> 20} MiB of "
                f"{what} in answer to {self.request!r}; refused"
            )

    def await_status(self, channel, waiting: Callable[[], None]) -> int:
        """The exit status that follows the end of a request's output: its messages read
        and anything that comes after the end counted and dropped all along (paramiko
        would keep every byte of it). ``waiting`` raises when the wait is over (late, or
        cancelled). Raises RemoteError past MAX_STDERR_READ."""
        while not channel.status_event.wait(_TICK):
            waiting()
            self.drain(channel)
            while channel.recv_ready():  # nothing may follow the end
                self.count(len(channel.recv(1 << 16)), "output after its end")
        self.drain(channel)
        return channel.recv_exit_status()


class Remote:
    """One client host, reached as its ``user`` with the server's key (or its own)."""

    def __init__(
        self,
        host: HostConfig,
        ssh: SshConfig,
        runner: Runner | None = None,
        *,
        session: bool = False,
    ):
        self.host = host
        self.ssh = ssh
        self.key_file = host.key_file or ssh.key_file
        self.runner = runner or Runner(log)
        self._client: paramiko.SSHClient | None = None
        self.use_session = session
        """Ask over one ``session`` (protocol 4); cleared when the client cannot open one."""
        self._session: _Session | None = None

    # -- control (paramiko) -------------------------------------------------------------

    def connect(self) -> None:
        """Open the control connection. Raises HostKeyError or RemoteError in plain words."""
        if not os.access(self.key_file, os.R_OK):
            raise RemoteError(f"cannot read the SSH key {self.key_file}")
        client = paramiko.SSHClient()
        known_hosts.load(self.ssh.known_hosts)  # raises in words if it is unreadable
        if self.ssh.known_hosts.exists():
            client.load_host_keys(str(self.ssh.known_hosts))  # only ours, never ~/.ssh
        client.set_missing_host_key_policy(
            known_hosts.RefuseUnknown(self.host.name, self.ssh.known_hosts)
        )
        timeout = self.ssh.connect_timeout
        started = time.monotonic()
        try:
            client.connect(
                self.host.address,
                self.host.port,
                self.host.user,
                key_filename=str(self.key_file),
                look_for_keys=False,
                allow_agent=False,
                timeout=timeout,
                banner_timeout=timeout,
                auth_timeout=timeout,
            )
        except paramiko.BadHostKeyException as exc:
            client.close()
            raise known_hosts.HostKeyError(
                known_hosts.changed_key_message(
                    self.host.name, exc.hostname, exc.key, exc.expected_key, self.ssh.known_hosts
                )
            ) from None
        except known_hosts.HostKeyError:
            client.close()
            raise
        except paramiko.AuthenticationException:
            client.close()
            raise RemoteError(
                f"{self.host.name}: the client refused the server's key for user "
                f"{self.host.user}: add it to that user's authorized_keys (already "
                "there? sshd ignores the file when it, ~/.ssh or the home directory is "
                "writable by anyone but that user)"
            ) from None
        except (OSError, paramiko.SSHException, EOFError) as exc:
            client.close()
            reason = _plain(exc)
            if "private key" in reason.lower():  # paramiko's words for a key it cannot read
                raise RemoteError(
                    f"{self.host.name}: cannot use the SSH key {self.key_file}: {reason}"
                ) from None
            if time.monotonic() - started >= 0.9 * timeout and "timed out" not in reason:
                # paramiko words a stalled handshake in many ways; what counts is the wait
                reason = f"no SSH answer within {timeout:g}s (timed out)"
            raise RemoteError(
                f"{self.host.name}: cannot connect to {self.host.address} port "
                f"{self.host.port}: {reason}"
            ) from None
        transport = client.get_transport()
        transport.set_keepalive(max(1, int(self.ssh.keepalive)))
        self._client = client

    def close(self) -> None:
        self._drop_session()
        if self._client is not None:
            self._client.close()
            self._client = None

    def _exec(self, channel, text: str, cancel=None) -> None:
        """``channel.exec_command(text)`` within ``connect_timeout``: paramiko waits for
        the exec request's reply without a deadline, so a client's sshd that never
        replies would hold the pull until ``host_timeout``. The channel is closed at the
        deadline, or when the host is cancelled, which ends the wait. Raises TimeoutError
        then, SSHException when the request is refused."""
        cancel = cancel or self.runner.cancel
        replied = threading.Event()
        late = threading.Event()

        def watch() -> None:
            ends = time.monotonic() + self.ssh.connect_timeout
            while not replied.wait(_TICK):
                if time.monotonic() > ends or (cancel is not None and cancel.is_set()):
                    late.set()
                    with contextlib.suppress(OSError, EOFError, paramiko.SSHException):
                        channel.close()
                    return

        threading.Thread(target=watch, name="exec-watch", daemon=True).start()
        try:
            channel.exec_command(text)
        except (OSError, EOFError, paramiko.SSHException):
            if late.is_set():
                raise TimeoutError(f"no answer to {text!r}") from None
            raise
        finally:
            replied.set()

    def _drop_session(self) -> None:
        """Close the session (its serve process sees its input end and exits); the next
        request opens another."""
        if self._session is not None:
            self._session.close()
            self._session = None

    def _ask(self, text: str, retried: bool = False) -> tuple[_Session, Frame] | None:
        """Send ``text`` over the session (opened first if need be; once more on a new
        one when it ended between answers); return it and the answer's first line, held
        (:meth:`_Session.done` when the answer is read), or None when the client cannot
        open a session (then it is asked request by request from now on). Raises
        RemoteError (the session dropped)."""
        if self._client is None:
            self.connect()
        assert self._client is not None
        if self._session is None:
            try:
                channel = self._client.get_transport().open_session(
                    timeout=self.ssh.connect_timeout
                )
                channel.settimeout(_TICK)
                self._exec(channel, protocol.SESSION.text)
            except (OSError, paramiko.SSHException, EOFError) as exc:
                raise RemoteError(f"{self.host.name}: 'session' failed: {_plain(exc)}") from None
            self._session = _Session(self, channel)
        session = self._session
        try:
            return session, session.ask(text)
        except _NoSession as exc:
            self._drop_session()
            self.use_session = False
            log.debug("%s: no session (%s); asking request by request", self.host.name, exc)
            return None
        except _SessionEnded as exc:
            # between two answers (a long store): sshd's ChannelTimeout, a killed serve
            self._drop_session()
            if retried:
                raise RemoteError(str(exc)) from None
            log.debug("%s: %s; opening another session", self.host.name, exc)
            return self._ask(text, retried=True)
        except BaseException:
            self._drop_session()
            raise

    def __enter__(self) -> Remote:
        self.connect()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def request(self, text: str, limit: int = protocol.MAX_LISTING) -> bytes:
        """Send one request; return its standard output. The whole answer (its output,
        at most ``limit`` bytes; its standard error, at most MAX_STDERR; its exit status)
        must arrive within ``idle_timeout``, and a cancelled host stops waiting at once:
        a client that trickles its answer cannot hold the pull. Raises RemoteError."""
        if self.use_session:
            asked = self._ask(text)
            if asked is not None:
                return self._session_answer(text, limit, *asked)
        if self._client is None:
            self.connect()
        assert self._client is not None
        ends = time.monotonic() + self.ssh.idle_timeout
        try:
            channel = self._client.get_transport().open_session(timeout=self.ssh.connect_timeout)
            channel.settimeout(_TICK)
            self._exec(channel, text)
            err = _Stderr(self.host.name, text)
            out = self._collect(channel, text, ends, limit, err)
            status = err.await_status(channel, lambda: self._waiting(text, ends))
            channel.close()
        except (OSError, paramiko.SSHException, EOFError) as exc:
            raise RemoteError(f"{self.host.name}: {text!r} failed: {_plain(exc)}") from None
        if status != 0:
            message = bytes(err.kept).decode("utf-8", "replace").strip().splitlines()
            reason = message[-1] if message else f"exit status {status}"
            hint = ""
            if status == 127:  # the shell ran the request as a command: no forced command
                hint = (
                    "; the server's key in the client's /var/lib/pullback/.ssh/authorized_keys "
                    "needs 'restrict,command=\"pullback-client serve\"' before it"
                )
            raise RemoteError(
                f"{self.host.name}: the client refused {text!r}: {printable(reason, 200)}{hint}"
            )
        return bytes(out)

    def _session_answer(self, text: str, limit: int, session: _Session, frame: Frame) -> bytes:
        """The rest of a session's answer to ``text`` (at most ``limit`` bytes). Raises
        RemoteError for a refusal (the session goes on) or a broken answer (dropped)."""
        try:
            if frame.refused is not None:
                raise RemoteError(
                    f"{self.host.name}: the client refused {text!r}: "
                    f"{printable(frame.refused, 200)}"
                )
            if frame.length > limit:
                self._drop_session()
                raise RemoteError(f"{self.host.name}: the answer to {text!r} is too big")
            try:
                waiting = lambda: self._waiting(text, session.ends)  # noqa: E731
                return b"".join(session.body(frame.length, waiting))
            except BaseException:
                self._drop_session()
                raise
        finally:
            session.done()

    def _collect(self, channel, text: str, ends: float, limit: int, err: _Stderr) -> bytearray:
        """The request's standard output, up to its end (its standard error read all
        along into ``err``). Raises RemoteError."""
        out = bytearray()
        while True:
            self._waiting(text, ends)
            err.drain(channel)
            try:
                data = channel.recv(1 << 16)
            except TimeoutError:
                continue
            if not data:
                return out
            out += data
            if len(out) > limit:
                raise RemoteError(f"{self.host.name}: the answer to {text!r} is too big")

    def _waiting(self, text: str, ends: float) -> None:
        """Raises RemoteError when the answer is late or the host was cancelled."""
        cancel = self.runner.cancel
        if cancel is not None and cancel.is_set():
            raise RemoteError(f"{self.host.name}: {text!r} cancelled")
        if time.monotonic() > ends:
            raise RemoteError(
                f"{self.host.name}: no whole answer to {text!r} within "
                f"{self.ssh.idle_timeout:g}s (idle_timeout)"
            )

    def list_archives(self) -> Listing:
        raw = self.request(protocol.LIST.text)
        try:
            return protocol.parse_listing(raw)
        except ValueError as exc:
            raise RemoteError(
                f"{self.host.name}: the client's list answer is not understood ({exc}; "
                "is pullback-client serve its forced command?)"
            ) from None

    def mark_fetched(self, name: str, deltas: bool = False, lean: bool = False) -> None:
        """Say that ``name`` is stored and (``deltas``) that this server applies deltas,
        (``lean``) lean ones too."""
        request = protocol.Request.fetched(name, deltas, lean)
        self.request(request.text, limit=MAX_SHORT_ANSWER)

    def ask_full(self) -> None:
        """Ask the client to make its next archive a full one (protocol 2)."""
        self.request(protocol.FULL.text, limit=MAX_SHORT_ANSWER)

    # -- bytes (OpenSSH) ----------------------------------------------------------------

    def ssh_argv(self, request: str) -> list[str]:
        keepalive = max(1, int(self.ssh.keepalive))
        count = max(1, int(self.ssh.idle_timeout // keepalive))
        return [
            "ssh",
            "-F",
            "/dev/null",
            "-T",
            "-x",
            "-a",
            "-i",
            str(self.key_file),
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            "IdentityAgent=none",
            "-o",
            f"UserKnownHostsFile={self.ssh.known_hosts}",
            "-o",
            "GlobalKnownHostsFile=/dev/null",
            "-o",
            "StrictHostKeyChecking=yes",
            "-o",
            "UpdateHostKeys=no",
            "-o",
            "BatchMode=yes",
            "-o",
            "LogLevel=ERROR",
            "-o",
            f"Ciphers={CIPHERS}",
            "-o",
            f"ConnectTimeout={max(1, int(self.ssh.connect_timeout))}",
            "-o",
            f"ServerAliveInterval={keepalive}",
            "-o",
            f"ServerAliveCountMax={count}",
            "-p",
            str(self.host.port),
            "-l",
            self.host.user,
            "--",
            self.host.address,
            request,
        ]

    def stream(
        self, name: str, offset: int, cancel=None, size: int | None = None
    ) -> Generator[bytes, None, None]:
        """Yield the archive's bytes from ``offset`` as they arrive: up to SMALL_STREAM
        (of ``size``, what the sidecar announced) over the control connection already
        open, more through an OpenSSH child.

        Raises TransferCut when the stream stops early, stalls for ``idle_timeout``, or the
        ssh child fails; the caller keeps what arrived and resumes from there later.
        Raises ArchiveGone when the client says it has no such archive (any more).
        """
        if size is not None and size - offset <= SMALL_STREAM and self._client is not None:
            if self.use_session:
                asked = self._stream_ask(name, offset, size)
                if asked is not None:
                    yield from self._stream_session(asked, size - offset, cancel)
                    return
            yield from self._stream_control(name, offset, cancel)
            return
        read_end, write_end = os.pipe2(os.O_CLOEXEC)
        with contextlib.suppress(OSError):  # fewer, larger reads
            fcntl.fcntl(read_end, _F_SETPIPE_SZ, 1 << 20)
        with os.fdopen(write_end, "wb", buffering=0) as stdout:
            child = self.runner.start(
                self.ssh_argv(protocol.Request.send(name, offset).text), stdout=stdout, level=10
            )
        try:
            yield from self._drain(read_end, child, cancel, name)
        finally:
            os.close(read_end)
            if child.alive():
                child.stop(grace=2.0)

    def _stream_control(self, name: str, offset: int, cancel) -> Generator[bytes, None, None]:
        """The archive's bytes from ``offset`` over a channel of the control connection,
        as they arrive. Raises TransferCut or ArchiveGone as :meth:`stream` does."""
        assert self._client is not None
        host = self.host.name
        text = protocol.Request.send(name, offset).text
        try:
            channel = self._client.get_transport().open_session(timeout=self.ssh.connect_timeout)
        except (OSError, paramiko.SSHException, EOFError) as exc:
            raise TransferCut(f"{host}: the transfer could not start: {_plain(exc)}") from None
        err = _Stderr(host, text)
        try:
            channel.settimeout(_TICK)
            self._exec(channel, text, cancel)
            last = time.monotonic()
            while True:
                self._stream_idle(cancel, last)
                err.drain(channel)
                try:
                    data = channel.recv(1 << 20)
                except TimeoutError:
                    continue
                if not data:
                    break
                last = time.monotonic()
                yield data
            status = err.await_status(channel, lambda: self._stream_waiting(cancel, last))
        except TransferCut:
            raise
        except RemoteError as exc:  # past MAX_STDERR_READ of words
            raise TransferCut(str(exc)) from None
        except (OSError, paramiko.SSHException, EOFError) as exc:
            raise TransferCut(f"{host}: the transfer stopped: {_plain(exc)}") from None
        finally:
            channel.close()
        if status != 0:
            words = bytes(err.kept).decode("utf-8", "replace").strip().splitlines()
            raise _stopped(host, name, status, words[-1] if words else f"exit status {status}")

    def _stream_ask(self, name: str, offset: int, size: int) -> _Session | None:
        """Ask the session for ``name`` from ``offset``: the session, its answer's length
        checked against what the sidecar announced, or None (no session: ask otherwise).
        Raises ArchiveGone when the client has no such archive, TransferCut else."""
        host = self.host.name
        text = protocol.Request.send(name, offset).text
        try:
            asked = self._ask(text)
        except RemoteError as exc:
            raise TransferCut(str(exc)) from None
        if asked is None:
            return None
        session, frame = asked
        if frame.refused is not None:
            session.done()
            raise _stopped(host, name, 2, f"the client refused {text!r}: {frame.refused}")
        if frame.length != size - offset:
            session.done()
            self._drop_session()
            raise TransferCut(
                f"{host}: the client offers {frame.length} bytes of {name} from byte {offset}; "
                f"its listing said {size - offset}"
            )
        return session

    def _stream_session(
        self, session: _Session, length: int, cancel
    ) -> Generator[bytes, None, None]:
        """The ``length`` bytes of a ``send`` the session answers (:meth:`_stream_ask`), as
        they arrive. Raises TransferCut; an answer not read to its end drops the session."""
        last = [time.monotonic()]
        complete = False
        try:
            for data in session.body(length, lambda: self._stream_idle(cancel, last[0])):
                last[0] = time.monotonic()
                yield data
            complete = True
        except TransferCut:
            raise
        except RemoteError as exc:
            raise TransferCut(str(exc)) from None
        finally:
            session.done()
            if not complete:
                self._drop_session()

    def _stream_idle(self, cancel, last: float) -> None:
        """Raises TransferCut when a stream was cancelled or idle past ``idle_timeout``."""
        if cancel is not None and cancel.is_set():
            raise TransferCut(f"{self.host.name}: transfer cancelled")
        if time.monotonic() - last > self.ssh.idle_timeout:
            raise TransferCut(
                f"{self.host.name}: no data for {self.ssh.idle_timeout:g}s; the transfer was cut"
            )

    def _stream_waiting(self, cancel, last: float) -> None:
        """Raises TransferCut when a stream's end is awaited past ``idle_timeout`` since
        its ``last`` bytes, or the host was cancelled."""
        if cancel is not None and cancel.is_set():
            raise TransferCut(f"{self.host.name}: transfer cancelled")
        if time.monotonic() - last > self.ssh.idle_timeout:
            raise TransferCut(f"{self.host.name}: the transfer never ended; it was cut")

    def _drain(
        self, fd: int, child: RunningCommand, cancel, name: str
    ) -> Generator[bytes, None, None]:
        poller = select.poll()
        poller.register(fd, select.POLLIN | select.POLLHUP)
        last = time.monotonic()
        while True:
            self._stream_idle(cancel, last)
            if not poller.poll(500):
                continue
            data = os.read(fd, 1 << 20)
            if not data:
                break
            last = time.monotonic()
            yield data
        ended = time.monotonic()
        while child.alive():  # its end awaited, bounded (helper-91: sshd waits for ever
            self._stream_waiting(cancel, ended)  # on a send that never exits)
            time.sleep(0.1)
        try:
            child.wait()
        except PullbackError as exc:
            tail = getattr(exc, "tail", None) or []
            status = getattr(exc, "exit_code_of_command", None)
            raise _stopped(self.host.name, name, status, tail[-1] if tail else str(exc)) from None


class _NoSession(Exception):
    """The client ended a session before its first answer (an older one refuses the
    word): it is asked request by request instead."""


class _SessionEnded(Exception):
    """A session that answered before ended before a byte of the next answer (closed
    while idle between answers): the request is asked once more on a new one."""


class _Session:
    """One ``session`` channel: requests written as lines, their answers read framed
    (``ok <length>`` and that many bytes, or ``refused <words>``). What the client sends
    is read all along, bounded as a control request's (:class:`_Stderr`): during an
    answer by whoever reads it, between answers (the download of a large archive, the
    store, hours maybe) by a watcher thread that drops it (paramiko would keep every byte
    of a peer that ignores flow control)."""

    def __init__(self, remote: Remote, channel):
        self.remote = remote
        self.channel = channel
        self.err = _Stderr(remote.host.name, protocol.SESSION.text)
        self.buffer = bytearray()
        self.answered = 0
        self.ends = 0.0
        """When the whole answer to the request being asked must have arrived."""
        self.busy = threading.Lock()
        """Held from a request's line to the end of its answer (:meth:`done`)."""
        self._held = False
        self.broken = ""
        """Why the watcher closed the session."""
        self._closed = threading.Event()
        threading.Thread(target=self._watch, name="session-watch", daemon=True).start()

    def close(self) -> None:
        self._closed.set()
        with contextlib.suppress(OSError, EOFError, paramiko.SSHException):
            self.channel.close()

    def done(self) -> None:
        """The answer asked for is read (or given up): the watcher may drain again."""
        if self._held:
            self._held = False
            self.busy.release()

    def _watch(self) -> None:
        """Between answers: read whatever arrives and drop it, standard error counted as
        messages, output as output between answers (there should be none); past
        MAX_STDERR_READ the session is closed."""
        while not self._closed.wait(_TICK):
            if not self.busy.acquire(blocking=False):
                continue
            try:
                self.err.drain(self.channel)
                while self.channel.recv_ready():
                    size = len(self.channel.recv(1 << 16))
                    self.err.count(size, "output between its answers")
            except (RemoteError, OSError, EOFError, paramiko.SSHException) as exc:
                self.broken = str(exc)
                self.close()
            finally:
                self.busy.release()

    def ask(self, text: str) -> Frame:
        """Write the request ``text``; return its answer's first line. The whole answer
        is due within ``idle_timeout``. Raises _NoSession (ended before its first answer),
        RemoteError."""
        if not self.busy.acquire(timeout=self.remote.ssh.idle_timeout):
            raise RemoteError(
                f"{self.remote.host.name}: {text!r} waited {self.remote.ssh.idle_timeout:g}s "
                "for the session's answer before it to be read"
            )
        self._held = True
        try:
            return self._ask(text)
        except BaseException:
            self.done()
            raise

    def _ask(self, text: str) -> Frame:
        remote = self.remote
        if self.broken:
            raise RemoteError(self.broken)
        self.ends = time.monotonic() + remote.ssh.idle_timeout
        waiting = lambda: remote._waiting(text, self.ends)  # noqa: E731
        try:
            self._write(f"{text}\n".encode(), waiting)
            line = self._line(waiting)
        except (OSError, paramiko.SSHException, EOFError) as exc:
            if not self.answered:
                raise _NoSession(_plain(exc)) from None
            if not self.buffer:
                raise _SessionEnded(
                    f"{remote.host.name}: {text!r} found the session closed: {_plain(exc)}"
                ) from None
            raise RemoteError(f"{remote.host.name}: {text!r} failed: {_plain(exc)}") from None
        if line is None:
            status = self.err.await_status(self.channel, waiting)
            words = bytes(self.err.kept).decode("utf-8", "replace").strip().splitlines()
            if not self.answered and status != 0:
                raise _NoSession(words[-1] if words else f"exit status {status}")
            if self.answered and not self.buffer:
                raise _SessionEnded(
                    f"{remote.host.name}: the session ended before {text!r} (exit {status})"
                )
            raise RemoteError(
                f"{remote.host.name}: the client ended its session before answering {text!r}"
                + (f": {printable(words[-1], 200)}" if words else "")
            )
        try:
            frame = protocol.parse_frame(line)
        except ValueError as exc:
            raise RemoteError(f"{remote.host.name}: the answer to {text!r}: {exc}") from None
        self.answered += 1
        return frame

    def body(self, length: int, waiting: Callable[[], None]) -> Generator[bytes, None, None]:
        """The ``length`` bytes that follow an answer's first line, as they arrive;
        ``waiting`` raises when the wait is over. Raises RemoteError when they stop."""
        left = length
        if self.buffer:
            data = bytes(self.buffer[:left])
            del self.buffer[: len(data)]
            left -= len(data)
            if data:
                yield data
        while left:
            data = self._recv(min(left, 1 << 20), waiting)
            if not data:
                raise RemoteError(
                    f"{self.remote.host.name}: the answer stopped {left} bytes before its end"
                )
            left -= len(data)
            yield data

    def _line(self, waiting: Callable[[], None]) -> bytes | None:
        """The answer's first line (newline included), None when the channel ends first.
        Raises RemoteError past MAX_FRAME bytes without a newline."""
        while (end := self.buffer.find(b"\n")) < 0:
            if len(self.buffer) > protocol.MAX_FRAME:
                raise RemoteError(
                    f"{self.remote.host.name}: a session answer's first line is too long"
                )
            data = self._recv(1 << 16, waiting)
            if not data:
                return None
            self.buffer += data
        line = bytes(self.buffer[: end + 1])
        del self.buffer[: end + 1]
        return line

    def _recv(self, size: int, waiting: Callable[[], None]) -> bytes:
        """Up to ``size`` bytes of output (b"" at its end), standard error drained."""
        while True:
            waiting()
            self.err.drain(self.channel)
            try:
                return self.channel.recv(size)
            except TimeoutError:
                continue

    def _write(self, data: bytes, waiting: Callable[[], None]) -> None:
        view = memoryview(data)
        while view:
            waiting()
            self.err.drain(self.channel)
            try:
                view = view[self.channel.send(view) :]
            except TimeoutError:
                continue


def _plain(exc: BaseException) -> str:
    if isinstance(exc, socket.timeout | TimeoutError):
        return "timed out"
    if "protocol banner" in str(exc):
        return "the connection was accepted but no SSH server answered (timed out)"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__
