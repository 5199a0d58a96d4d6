"""``pullback-client serve``: the only thing the server's SSH key may run.

Installed as ``restrict,command="pullback-client serve" ssh-ed25519 AAAA... pullback@server``
in the authorized_keys of the unprivileged ``pullback`` user. sshd puts what the server
asked for in ``SSH_ORIGINAL_COMMAND``; the requests of :mod:`pullback.common.protocol`
are answered (``fetched`` leaves a mark; the client's own run moves the archive to
``fetched/`` once a newer one exists; ``fetched <archive> deltas`` also leaves the mark
that the server applies deltas, which ``incremental.enabled: auto`` waits for). The
``pullback`` user reads the archive directory and writes only its marks directory.
A ``session`` (protocol 4) answers these requests one after another, read as lines from
standard input, each answer framed (:mod:`pullback.common.protocol`): a whole pull costs
one process start.

Anything else is refused, logged (to syslog and stderr), and exits 2. Nothing else runs.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import logging.handlers
import os
import stat
import sys
from pathlib import Path

from ..common import __version__
from ..common.archive import directory as archives
from ..common.errors import EXIT_CONFIG, EXIT_FAILED, EXIT_OK, ArchiveError
from ..common.fsutil import write_all
from ..common.locks import lock_status
from ..common.log import bare_messages, get_logger
from ..common.protocol import (
    FETCHED_ANSWER,
    MAX_REQUEST,
    MAX_SESSION_REQUESTS,
    Listing,
    Refused,
    Request,
    Verb,
    lock_answer,
    ok_frame,
    parse_request,
    refused_frame,
)
from .config import ClientConfig

log = get_logger("serve")


def _audit_logger() -> logging.Logger:
    """syslog's auth facility only: standard error carries what the server reads (a
    refusal says itself there once, through ``log``)."""
    audit = logging.getLogger("pullback.serve.audit")
    audit.propagate = False
    if not audit.handlers and Path("/dev/log").exists():
        with contextlib.suppress(OSError):
            handler = logging.handlers.SysLogHandler(
                address="/dev/log", facility=logging.handlers.SysLogHandler.LOG_AUTH
            )
            handler.setFormatter(logging.Formatter("pullback-client[%(process)d]: %(message)s"))
            audit.addHandler(handler)
    if not audit.handlers:  # no syslog here: nowhere (never logging's last resort)
        audit.addHandler(logging.NullHandler())
    return audit


def _peer() -> str:
    return (os.environ.get("SSH_CLIENT") or "local").split(" ")[0]


def _lock_record(config: ClientConfig) -> dict | None:
    owner = lock_status(config.archive_dir / archives.LOCK_NAME)
    if owner is None:
        return None
    return {
        "pid": owner.pid,
        "host": owner.host,
        "started": owner.started,
        "purpose": owner.purpose,
    }


def answer_list(config: ClientConfig) -> Listing:
    """The list answer: host, lock status, every complete archive, and the archives
    without a valid sidecar (``unusable``: name and problem)."""
    found, unusable = [], []
    for archive in archives.list_archives(config.archive_dir, include_fetched=False):
        if archive.host != config.hostname:
            # made under another hostname: never offered, but named (hostname: changed?)
            problem = f"made as host {archive.host}; this client is now {config.hostname}"
            unusable.append({"name": archive.name, "problem": problem})
            continue
        if archive.sidecar is None:
            # named, so that the server can say why a host seems to have no archive
            unusable.append({"name": archive.name, "problem": archive.problem})
            continue
        found.append(
            {
                "name": archive.name,
                "size": archive.path.stat().st_size,
                "sidecar": json.loads(archive.sidecar_path.read_text()),
            }
        )
    return Listing(config.hostname, __version__, _lock_record(config), found, unusable)


def _open_archive(config: ClientConfig, name: str) -> int:
    fd = os.open(config.archive_dir / name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise Refused("not a regular file")
    return fd


def send(config: ClientConfig, name: str, offset: int, out_fd: int, framed=False) -> int:
    """Copy the archive from ``offset`` to ``out_fd`` (``framed``: after the ``ok
    <length>`` line of a session); return the bytes sent. Raises Refused (no such
    archive, an offset past its end), OSError (a framed answer that could not be sent
    whole included: the session cannot go on)."""
    try:
        fd = _open_archive(config, name)
    except FileNotFoundError:
        raise Refused(f"no archive {name}") from None
    try:
        size = os.fstat(fd).st_size
        if offset > size:
            raise Refused(f"offset {offset} is past the end ({size} bytes)")
        if framed:
            write_all(out_fd, ok_frame(size - offset))
        sent = _copy(fd, offset, size, out_fd)
        if framed and sent != size - offset:
            raise OSError(f"{name} ended after {sent} of {size - offset} bytes")
        return sent
    finally:
        os.close(fd)


def _copy(fd: int, offset: int, size: int, out_fd: int) -> int:
    """Copy ``fd`` from ``offset`` up to ``size`` to ``out_fd``; return the bytes copied."""
    sent = 0
    position = offset
    try:
        while position < size:
            n = os.sendfile(out_fd, fd, position, min(size - position, 1 << 30))
            if n == 0:
                break
            position += n
            sent += n
    except OSError as exc:
        if exc.errno != 22 or sent:  # EINVAL: the output cannot take sendfile
            raise
        os.lseek(fd, position, os.SEEK_SET)
        while position < size and (chunk := os.read(fd, min(1 << 20, size - position))):
            write_all(out_fd, chunk)
            sent += len(chunk)
            position += len(chunk)
    return sent


def mark_fetched(config: ClientConfig, name: str) -> None:
    """Record that the server stored ``name``: a mark only. The client's own run moves
    it to ``fetched/`` once a newer archive exists (see ``directory.retire_marked``)."""
    try:
        archives.mark_fetched(config.archive_dir, name)
    except ArchiveError as exc:
        raise Refused(str(exc)) from None


def command(config: ClientConfig, args: argparse.Namespace) -> int:
    bare_messages()  # the server quotes what serve says: no time and level of their own
    return serve(config)


def serve(
    config: ClientConfig,
    request_text: str | None = None,
    out: int | None = None,
    stdin: int | None = None,
) -> int:
    """Answer one request (from ``SSH_ORIGINAL_COMMAND``), or every request of a
    ``session`` (lines read from ``stdin``); return the exit code."""
    if request_text is None:
        request_text = os.environ.get("SSH_ORIGINAL_COMMAND")
    out_fd = sys.stdout.fileno() if out is None else out
    audit = _audit_logger()
    try:
        request = parse_request(request_text)
        if request.verb is Verb.SESSION:
            return _session(config, sys.stdin.fileno() if stdin is None else stdin, out_fd, audit)
        _answer(config, request, out_fd, audit)
        return EXIT_OK
    except Refused as exc:
        _refusal(audit, request_text, exc)
        return EXIT_CONFIG
    except BrokenPipeError:
        audit.warning("the server closed the connection during %r", request_text)
        return EXIT_FAILED
    except OSError as exc:
        log.error("cannot answer %r: %s", request_text, exc)
        return EXIT_FAILED


def _refusal(audit: logging.Logger, request_text: str | None, exc: Refused) -> None:
    """Say that ``request_text`` was refused: to syslog's auth facility and standard error."""
    message = f"refused request {repr(request_text)[:200]} from {_peer()}: {exc}"
    audit.warning("%s", message)
    log.error("%s", message)


def _session(config: ClientConfig, in_fd: int, out_fd: int, audit: logging.Logger) -> int:
    """Answer the requests read as lines from ``in_fd`` until it ends, each answer framed
    (``ok <length>`` and its bytes, or ``refused <words>``: the session goes on). Returns
    EXIT_OK at the end of the input. Raises Refused for a line longer than MAX_REQUEST or
    past MAX_SESSION_REQUESTS requests (the session ends), OSError when an answer cannot
    be written whole (the server sees the answer cut)."""
    lines = _RequestLines(in_fd)
    for _ in range(MAX_SESSION_REQUESTS):
        line = lines.next()
        if line is None:
            return EXIT_OK
        try:
            request = parse_request(line)
            if request.verb is Verb.SESSION:
                raise Refused("a session cannot open another")
            _answer(config, request, out_fd, audit, framed=True)
        except Refused as exc:
            _refusal(audit, line, exc)
            write_all(out_fd, refused_frame(str(exc)))
    raise Refused(f"more than {MAX_SESSION_REQUESTS} requests in one session")


class _RequestLines:
    """A session's request lines, read from a descriptor: at most MAX_REQUEST characters
    each (ASCII; anything else is left to :func:`parse_request` to refuse)."""

    def __init__(self, fd: int):
        self.fd = fd
        self.buffer = b""

    def next(self) -> str | None:
        """The next line without its newline, or None at the end of the input (a last
        line without its newline is dropped: the server went away). Raises Refused."""
        while b"\n" not in self.buffer:
            if len(self.buffer) > MAX_REQUEST:
                raise Refused(f"a request line longer than {MAX_REQUEST} characters")
            data = os.read(self.fd, 4096)
            if not data:
                return None
            self.buffer += data
        line, _, self.buffer = self.buffer.partition(b"\n")
        if len(line) > MAX_REQUEST:
            raise Refused(f"a request line longer than {MAX_REQUEST} characters")
        return line.decode("ascii", "replace")


def _answer(
    config: ClientConfig, request: Request, out_fd: int, audit: logging.Logger, framed=False
) -> None:
    """Answer ``request`` on ``out_fd`` (``framed``: after the ``ok <length>`` line of a
    session). Raises Refused, OSError."""
    if request.verb is Verb.SEND:
        sys.stdout.flush()
        sent = send(config, request.archive, request.offset, out_fd, framed)
        audit.info(
            "sent %s from byte %d (%d bytes) to %s", request.archive, request.offset, sent, _peer()
        )
        return
    if request.verb is Verb.LIST:
        answer = answer_list(config).to_json()
    elif request.verb is Verb.LOCK:
        answer = lock_answer(_lock_record(config))
    elif request.verb is Verb.FETCHED:
        mark_fetched(config, request.archive)
        claim = ""
        if request.lean:
            archives.mark_server_applies_lean_deltas(config.archive_dir)
            claim = ", who says it applies lean deltas"
        elif request.deltas:
            archives.mark_server_applies_deltas(config.archive_dir)
            claim = ", who says it applies deltas"
        audit.info("%s marked fetched by %s%s", request.archive, _peer(), claim)
        answer = FETCHED_ANSWER
    else:
        assert request.verb is Verb.FULL
        archives.mark_want_full(config.archive_dir)
        audit.info("a full archive asked for by %s", _peer())
        answer = FETCHED_ANSWER
    data = (answer + "\n").encode()
    write_all(out_fd, ok_frame(len(data)) + data if framed else data)
