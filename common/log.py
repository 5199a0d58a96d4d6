"""Logging that reads well on a terminal and in the journal, with secrets masked.

Under systemd (``JOURNAL_STREAM`` names our stderr) each line carries a ``<N>`` syslog
priority prefix so journald records the level, and no timestamp (journald adds its own).
On a terminal lines get a short time and the level.
"""

from __future__ import annotations

import collections
import logging
import os
import sys

from . import secrets
from .progress import STATUS, interactive
from .text import escaped, printable

LOGGER_NAME = "pullback"
MAX_MESSAGE = 8000
"""Characters of one log message; the rest is cut (what it quotes may be a client's)."""

_PRIORITY = {
    logging.DEBUG: 7,
    logging.INFO: 6,
    logging.WARNING: 4,
    logging.ERROR: 3,
    logging.CRITICAL: 2,
}


def get_logger(name: str = "") -> logging.Logger:
    """Return the pullback logger, or a child of it named ``name``."""
    return logging.getLogger(f"{LOGGER_NAME}.{name}" if name else LOGGER_NAME)


class PrefixAdapter(logging.LoggerAdapter):
    """A logger whose every line starts with ``[prefix]``: a host, or service/task."""

    def __init__(self, logger: logging.Logger, prefix: str):
        super().__init__(logger, {"prefix": prefix})
        self.prefix = prefix

    def process(self, msg, kwargs):
        return f"[{self.prefix}] {msg}", kwargs

    def log(self, level, msg, *args, **kwargs) -> None:
        """Log as the logger would, the prefix said once: a message that begins with it
        (an error of the host's connection says ``web1: ...``) loses that beginning."""
        if not self.isEnabledFor(level):
            return
        kwargs["stacklevel"] = kwargs.get("stacklevel", 1) + 1  # the caller's line, not this
        try:
            text = str(msg) % args if args else str(msg)
        except Exception:  # let logging report the broken call as it does, never raise
            super().log(level, msg, *args, **kwargs)
            return
        head = f"{self.prefix}: "
        if text.startswith(head):
            text = text[len(head) :]
        super().log(level, "%s", text, **kwargs)


Log = logging.Logger | PrefixAdapter
"""What pullback code logs to: the logger itself, or a prefixed view of it."""


class MaskingFormatter(logging.Formatter):
    """Formats a record and masks every registered secret in the result. A message is
    always one line: whatever it quotes (a client's words, a tool's output) is
    :func:`~.text.escaped`, so no message can forge another line or move the cursor;
    only a traceback (``exc_info``) spans lines."""

    def __init__(self, journal: bool, bare: bool = False):
        bare = bare or journal
        fmt = "%(message)s" if bare else "%(asctime)s %(levelname)-7s %(message)s"
        super().__init__(fmt, datefmt="%H:%M:%S")
        self.journal = journal

    def formatMessage(self, record: logging.LogRecord) -> str:
        # masked before it is escaped and cut: escaping turns a NUL before a secret
        # number into a digit (``\x00``), and a cut could leave half a secret
        record.message = printable(secrets.mask(record.message), MAX_MESSAGE)
        return super().formatMessage(record)

    def formatException(self, ei) -> str:
        return _escaped_lines(secrets.mask(super().formatException(ei)))

    def format(self, record: logging.LogRecord) -> str:
        if record.exc_text:  # a host's process sent it formatted: its lines escaped too
            record.exc_text = _escaped_lines(secrets.mask(record.exc_text))
        text = secrets.mask(super().format(record))
        if self.journal:
            prio = _PRIORITY.get(record.levelno, 6)
            text = "\n".join(f"<{prio}>{line}" for line in text.splitlines())
        return text


def _escaped_lines(text: str) -> str:
    """A traceback's lines, each :func:`~.text.escaped` (an exception's words may quote
    what came from outside) and every one after the first indented, so that a line break
    inside an exception's message cannot start a line that looks like a log line."""
    first, *rest = text.split("\n")
    return "\n".join(
        [
            escaped(first),
            *(line if line.startswith("  ") else f"  {line}" for line in map(escaped, rest)),
        ]
    )


class TailHandler(logging.Handler):
    """Keeps the last ``size`` formatted lines, for reports, mails and pings."""

    def __init__(self, size: int = 200):
        super().__init__(logging.DEBUG)
        self.lines: collections.deque[str] = collections.deque(maxlen=size)
        self.setFormatter(MaskingFormatter(journal=False))

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.extend(self.format(record).splitlines())


class _Console(logging.StreamHandler):
    """The terminal (or journal) handler: a log line is written above the status line
    of running work, which is drawn again below it."""

    def emit(self, record: logging.LogRecord) -> None:
        STATUS.clear()
        super().emit(record)
        STATUS.redraw()


def stderr_is_journal() -> bool:
    """True when stderr is connected to journald (systemd sets ``JOURNAL_STREAM``)."""
    stream = os.environ.get("JOURNAL_STREAM", "")
    try:
        dev, ino = (int(x) for x in stream.split(":"))
        st = os.fstat(sys.stderr.fileno())
    except (ValueError, OSError):
        return False
    return (st.st_dev, st.st_ino) == (dev, ino)


_tail: TailHandler | None = None


def recent_lines(containing: str = "") -> list[str]:
    """The most recent log lines of this run (those containing ``containing``)."""
    lines = list(_tail.lines) if _tail is not None else []
    return [line for line in lines if containing in line]


def bare_messages() -> None:
    """Write messages to standard error without time and level: words another program
    reads and quotes (the serve endpoint's, which the server shows in its own)."""
    for handler in get_logger().handlers:
        if isinstance(handler, _Console):
            handler.setFormatter(MaskingFormatter(journal=False, bare=True))


def setup(verbosity: int = 0, journal: bool | None = None) -> TailHandler:
    """Configure the pullback logger for a command-line run.

    ``verbosity`` is -1 (warnings only), 0 (info) or >= 1 (debug). Returns the tail handler
    holding the most recent lines.
    """
    logger = get_logger()
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
    level = logging.WARNING if verbosity < 0 else logging.DEBUG if verbosity > 0 else logging.INFO
    console = _Console(sys.stderr)
    console.setLevel(level)
    STATUS.stream = sys.stderr
    STATUS.enabled = verbosity >= 0 and interactive(sys.stderr)
    console.setFormatter(MaskingFormatter(stderr_is_journal() if journal is None else journal))
    logger.addHandler(console)
    global _tail
    tail = _tail = TailHandler()
    logger.addHandler(tail)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    # paramiko logs (with tracebacks) what pullback reports itself, in plain words
    quiet = logging.getLogger("paramiko")
    quiet.addHandler(logging.NullHandler())
    quiet.propagate = False
    return tail
