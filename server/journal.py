"""What the pull in progress is doing, kept on disk so that the next run can tell what a
crash interrupted.

A pull that ends in any ordinary way (done, failed, SIGTERM) removes the journal. One
that is killed outright (SIGKILL, the OOM killer, a power cut) leaves it behind; the next
pull, which holds the same server lock, reads it and reports, per host, what was being
done when the server died ("killed while storing web3"). A host whose store was cut
short may have left a stale repository lock; the pull removes it (only locks whose
process is gone are ever removed), for every host the journal names: a host is in it
from before its process starts, and the phase reaches the journal through a pipe, so it
may lag the store.

The journal is best effort: a full scratch disk must not fail a pull because the journal
could not be written.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from ..common.clock import iso, utc_now
from ..common.fsutil import atomic_write
from ..common.log import get_logger

JOURNAL_FILE = "pull-in-progress.json"

CONNECTING = "connecting"
TRANSFERRING = "transferring and unpacking"
STORING = "storing"

log = get_logger("journal")


class PhaseLog(Protocol):
    """Where a host's pull says which phase it is in: the :class:`Journal`, or the pipe
    of a host's process to the parent that keeps it."""

    def phase(self, host: str, phase: str | None) -> None: ...


@dataclass
class InterruptedRun:
    """A pull that never finished: its pid, start time and each unfinished host's phase."""

    pid: int
    started: str
    phases: dict[str, str] = field(default_factory=dict)

    def describe(self, host: str) -> str:
        """Plain words for one host, e.g. 'the previous pull (pid 42, started ...) was
        killed while storing'."""
        return (
            f"the previous pull (pid {self.pid}, started {self.started}) was killed while "
            f"{self.phases[host]}"
        )


class Journal:
    """The journal of one pull; ``begin()`` it under the server lock, ``end()`` it after."""

    def __init__(self, state_dir: Path):
        self.path = state_dir / JOURNAL_FILE
        self._phases: dict[str, str] = {}
        self._started = iso(utc_now())
        self._lock = threading.Lock()
        self._kept: dict[str, str] = {}

    def begin(self) -> InterruptedRun | None:
        """Start this run's journal; return the run a crash interrupted, if any."""
        previous = None
        try:
            data = json.loads(self.path.read_text())
            previous = InterruptedRun(
                int(data["pid"]),
                str(data["started"]),
                {str(h): str(p) for h, p in dict(data["hosts"]).items()},
            )
        except FileNotFoundError:
            pass  # the last run ended normally
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("ignoring an unreadable journal %s: %s", self.path, exc)
        self._write()
        return previous

    def phase(self, host: str, phase: str | None) -> None:
        """Record that ``host`` entered ``phase`` (None: the host is done)."""
        with self._lock:
            if phase is None:
                self._phases.pop(host, None)
            else:
                self._phases[host] = phase
            self._write()

    def keep(self, phases: dict[str, str]) -> None:
        """Hosts whose work was killed in ``phases`` (e.g. while storing): :meth:`end`
        leaves them in the journal for the next pull, as if this run had been killed."""
        self._kept.update(phases)

    def end(self) -> None:
        """The run ended: remove the journal (or keep only what :meth:`keep` named)."""
        if self._kept:
            with self._lock:
                self._phases = dict(self._kept)
                self._write()
            return
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    def _write(self) -> None:
        record = {"pid": os.getpid(), "started": self._started, "hosts": self._phases}
        try:
            atomic_write(self.path, json.dumps(record, sort_keys=True) + "\n", mode=0o600)
        except OSError as exc:
            log.debug("could not write the journal %s: %s", self.path, exc)
