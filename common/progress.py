"""Progress of long work on a terminal: bytes, rate and time left, on one status line.

Transfers, unpacks, restores and packing report how far they are with a
:class:`Progress`; a :class:`StatusLine` shows every running one on the last line of the
terminal and redraws it below each log line. Under systemd, with ``--quiet``, or when
standard error is not a terminal, nothing is shown: the journal gets only log lines.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable
from typing import TextIO

from .units import human_duration, human_size

INTERVAL = 0.5
"""Seconds between two redraws of the status line (and two progress messages of a
host's pull process)."""


class Progress:
    """How far one piece of work is: ``done`` bytes of ``total`` (None: unknown)."""

    def __init__(
        self,
        label: str,
        total: int | None = None,
        start: int = 0,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.label = label
        self.total = total
        self.done = self._start = start
        """Bytes done; ``start``: what was done before (a resumed transfer)."""
        self._clock = clock
        self._started = clock()

    def advance(self, amount: int) -> None:
        self.done += amount

    def text(self) -> str:
        """``fetch 1.2 GiB of 3.4 GiB (35%), 85.0 MiB/s, 26s left`` (without a total:
        the bytes and the rate)."""
        elapsed = max(self._clock() - self._started, 1e-6)
        rate = (self.done - self._start) / elapsed
        if not self.total:
            return f"{self.label} {human_size(self.done)}, {human_size(rate)}/s"
        share = min(self.done / self.total, 1.0)
        left = (self.total - self.done) / rate if rate > 0 else None
        eta = f", {human_duration(left)} left" if left is not None else ""
        return (
            f"{self.label} {human_size(self.done)} of {human_size(self.total)} "
            f"({share:.0%}), {human_size(rate)}/s{eta}"
        )


class StatusLine:
    """The terminal's last line: one entry per running piece of work, redrawn at most
    every INTERVAL seconds and below every log line (:meth:`around`)."""

    def __init__(self, stream: TextIO | None = None, enabled: bool | None = None):
        self.stream = stream or sys.stderr
        self.enabled = interactive(self.stream) if enabled is None else enabled
        self._entries: dict[str, str] = {}
        self._shown = ""
        self._drawn_at = 0.0
        self._lock = threading.RLock()

    def show(self, key: str, text: str, force: bool = False) -> None:
        """Set ``key``'s entry and redraw (at most every INTERVAL seconds)."""
        if not self.enabled:
            return
        with self._lock:
            self._entries[key] = text
            if force or time.monotonic() - self._drawn_at >= INTERVAL:
                self._draw()

    def drop(self, key: str) -> None:
        """Remove ``key``'s entry (its work ended) and redraw."""
        if not self.enabled:
            return
        with self._lock:
            if self._entries.pop(key, None) is not None:
                self._draw()

    def clear(self) -> None:
        """Erase the line (before a log line is written)."""
        with self._lock:
            if self._shown:
                self.stream.write("\r\x1b[K")
                self._shown = ""

    def redraw(self) -> None:
        with self._lock:
            if self._entries:
                self._draw()

    def _draw(self) -> None:
        width = _columns(self.stream) - 1
        line = " | ".join(self._entries.values())
        line = line if len(line) <= width else line[: max(width - 1, 0)] + "…"
        self.stream.write("\r\x1b[K" + line)
        self.stream.flush()
        self._shown, self._drawn_at = line, time.monotonic()


def interactive(stream: TextIO) -> bool:
    """True when ``stream`` is a terminal a person watches (not the journal, not a pipe)."""
    from .log import stderr_is_journal

    try:
        tty = stream.isatty()
    except ValueError:
        return False
    return tty and os.environ.get("TERM") != "dumb" and not stderr_is_journal()


def _columns(stream: TextIO) -> int:
    try:
        return os.get_terminal_size(stream.fileno()).columns or 80  # 0: a pty never sized
    except (OSError, ValueError):
        return 80


STATUS = StatusLine(enabled=False)
"""The process's status line; :func:`pullback.common.log.setup` turns it on for a
terminal."""


class CountingReader:
    """A file-like reader that moves ``progress`` on by what is read through it and
    shows it on the status line."""

    def __init__(self, source, progress: Progress):
        self.source = source
        self.progress = progress

    def read(self, n: int = -1) -> bytes:
        data = self.source.read(n)
        self.progress.advance(len(data))
        if STATUS.enabled:  # no text made per read unless a terminal shows it
            STATUS.show(self.progress.label, self.progress.text())
        return data


class Watched:
    """``with Watched(progress):`` shows ``progress`` while the block runs (a thread
    redraws it every INTERVAL seconds, so a rate and the time left stay current while
    another process does the work) and removes it at the end. ``sample`` (optional)
    returns the bytes done so far."""

    def __init__(self, progress: Progress, sample: Callable[[], int] | None = None):
        self.progress = progress
        self.sample = sample
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="progress", daemon=True)

    def __enter__(self) -> Progress:
        if STATUS.enabled:
            self._thread.start()
        return self.progress

    def __exit__(self, *_exc) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        STATUS.drop(self.progress.label)

    def _run(self) -> None:
        while not self._stop.wait(INTERVAL):
            if self.sample is not None:
                self.progress.done = self.sample()
            STATUS.show(self.progress.label, self.progress.text())
