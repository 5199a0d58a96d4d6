"""What the pull in progress is doing, kept on disk so that the next run can tell what a
crash interrupted.

A pull that ends in an ordinary way (done, failed) removes the journal. One that is
killed outright (SIGKILL, the OOM killer, a power cut) leaves it behind, and one stopped
by SIGTERM keeps in it the hosts it was pulling (:meth:`Journal.stop`); the next pull,
which holds the same server lock, reads it and reports, per host, what was being done
when the server died ("killed while storing web3"). Until then ``status``, and the
metrics and status page that every run and the unit's ExecStopPost= (``pullback-server
publish --if-failed``) write, say so (:func:`pull_activity`). A host whose store was
cut short may have left a stale repository lock; the pull removes it (only locks whose
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
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from ..common import jsontext
from ..common.clock import iso, utc_now
from ..common.errors import PullbackError
from ..common.fsutil import atomic_write
from ..common.locks import lock_status
from ..common.log import get_logger
from ..common.procfs import flock_held
from ..common.text import printable

JOURNAL_FILE = "pull-in-progress.json"
INSTANCE_LOCK = "server.lock"
"""The server lock (in ``lock_dir``): a pull, a maintenance run, a verification or a
release holds it, one at a time."""
PULL_PURPOSE = "pullback-server pull"
"""What a pull's server lock says it is for (its owner record)."""
DRY_RUN_PURPOSE = "pullback-server pull --dry-run"
"""What a dry run's says: it keeps no journal, so a journal left is another pull's."""

WAITING = "waiting for its turn"
"""A host the pull has not started yet (``parallel`` hosts at a time)."""
CONNECTING = "connecting"
TRANSFERRING = "transferring and unpacking"
STORING = "storing"

log = get_logger("journal")


class PhaseLog(Protocol):
    """Where a host's pull says which phase it is in: the :class:`Journal`, or the pipe
    of a host's process to the parent that keeps it."""

    def phase(self, host: str, phase: str | None) -> None: ...


class _Host(Protocol):
    """A host as server.yaml lists it (:class:`~.config.HostConfig`)."""

    @property
    def name(self) -> str: ...
    @property
    def enabled(self) -> bool: ...


@dataclass(frozen=True)
class Roster:
    """The hosts server.yaml lists now, and which of them are disabled: what of a pull
    cut short still counts (:meth:`InterruptedRun.counted`) and is carried
    (:meth:`Journal.carry`)."""

    configured: frozenset[str]
    disabled: frozenset[str] = frozenset()

    @classmethod
    def of(cls, hosts: Iterable[_Host]) -> Roster:
        """The roster of server.yaml's ``hosts`` (``config.hosts``)."""
        listed = list(hosts)
        return cls(
            frozenset(h.name for h in listed), frozenset(h.name for h in listed if not h.enabled)
        )


@dataclass
class InterruptedRun:
    """A pull that never finished: its pid, start time and each unfinished host's phase."""

    pid: int
    started: str
    phases: dict[str, str] = field(default_factory=dict)
    ended: bool = False
    """The run ended, keeping hosts whose store it cut (:meth:`Journal.keep`): it was not
    killed, and its status file says why each of those hosts failed."""
    stopped_by: str = ""
    """The signal that stopped the run (``SIGTERM``: systemd stopping the unit, a
    shutdown) before it wrote the status file; empty: it was killed outright."""
    carried: InterruptedRun | None = None
    """An earlier run cut short, for the hosts this run did not pull (``pull --host``):
    they stay named until a pull of them (an outside review saw a pull of another host
    erase that the killed one had a host to report and clean up)."""
    disabled: tuple[str, ...] = ()
    """The hosts of ``phases`` that were disabled in server.yaml (``enabled: false``) when
    the run pulled them: a run named them by hand. A host disabled now and not among them
    was cut short before it was disabled, which counts no more (:meth:`counted`)."""

    def merged(self) -> InterruptedRun:
        """This run and what it carried, as one (this run's identity; its phases win)."""
        if self.carried is None:
            return self
        phases = {**self.carried.phases, **self.phases}
        disabled = tuple(sorted({*self.carried.disabled, *self.disabled}))
        return InterruptedRun(
            self.pid, self.started, phases, self.ended, self.stopped_by, disabled=disabled
        )

    def counted(self, roster: Roster) -> InterruptedRun | None:
        """This run without the hosts server.yaml (``roster``) no longer lists (removed or
        renamed: never pulled again, the journal carried such a host for ever, and
        ``status --json``, the metrics and every ``publish --if-failed`` told its cut;
        helper-144 F3), nor those disabled now that were not when it pulled them (a pull
        killed before the admin disabled a gone machine needed attention for ever;
        helper-141 F1), as for a failed pull (``pulled_disabled``); None when no host is
        left."""
        dropped = {
            h
            for h in self.phases
            if h not in roster.configured or (h in roster.disabled and h not in self.disabled)
        }
        if not dropped:
            return self
        phases = {h: p for h, p in self.phases.items() if h not in dropped}
        if not phases:
            return None
        disabled = tuple(h for h in self.disabled if h in phases)
        return InterruptedRun(
            self.pid, self.started, phases, self.ended, self.stopped_by, disabled=disabled
        )

    @property
    def how(self) -> str:
        """``killed`` or ``stopped by SIGTERM``."""
        return f"stopped by {self.stopped_by}" if self.stopped_by else "killed"

    def describe(self, host: str) -> str:
        """Plain words for one host, e.g. 'the previous pull (pid 42, started ...) was
        killed while storing'."""
        return (
            f"the previous pull (pid {self.pid}, started {self.started}) was {self.how} "
            f"while {self.phases[host]}"
        )


class Journal:
    """The journal of one pull; ``begin()`` it under the server lock, ``end()`` it after."""

    def __init__(self, state_dir: Path):
        self.path = state_dir / JOURNAL_FILE
        self._phases: dict[str, str] = {}
        self._started = iso(utc_now())
        self._lock = threading.Lock()
        self._kept: dict[str, str] = {}
        self._stopped_by = ""
        self._carried: InterruptedRun | None = None
        self._disabled: list[str] = []

    def pulls_disabled(self, hosts: list[str]) -> None:
        """The hosts this run pulls that are disabled in server.yaml (named by hand): the
        journal says so, and a cut of their pull counts (:meth:`InterruptedRun.counted`)."""
        self._disabled = sorted(hosts)

    def begin(self) -> InterruptedRun | None:
        """Start this run's journal; return the run a crash interrupted, if any."""
        previous = None
        try:
            previous = read_journal(self.path.parent)
        except (OSError, ValueError) as exc:
            log.warning("ignoring an unreadable journal %s: %s", self.path, exc)
        self._write()
        return previous

    def carry(
        self, previous: InterruptedRun | None, pulled: list[str], roster: Roster | None = None
    ) -> None:
        """Keep in this run's journal, from its start to its end, the hosts that
        ``previous`` (the run a crash interrupted, with what it carried) was cut short on
        and this run does not pull: each stays named until a pull of it reports it and
        cleans up. (Hosts of a run that ended keeping them are in its status file.) A
        host that server.yaml (``roster``; None: every host) no longer lists is not
        carried: no pull will report it (a disabled one is: enabled again, it is)."""
        if previous is None:
            return
        cut = previous.merged() if not previous.ended else previous.carried
        if cut is None:
            return
        listed = roster.configured if roster is not None else cut.phases
        phases = {h: p for h, p in cut.phases.items() if h not in pulled and h in listed}
        if phases:
            disabled = tuple(h for h in cut.disabled if h in phases)
            self._carried = InterruptedRun(
                cut.pid, cut.started, phases, False, cut.stopped_by, disabled=disabled
            )
            with self._lock:
                self._write()

    def waiting(self, hosts: list[str]) -> None:
        """Record ``hosts`` as waiting for their turn, in one write: a pull killed before
        it started them leaves them named too (they were not pulled that night)."""
        with self._lock:
            self._phases.update(dict.fromkeys(hosts, WAITING))
            self._write()

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

    def stop(self, phases: dict[str, str], signal_name: str) -> None:
        """The run is being stopped by ``signal_name`` and writes no status file: :meth:`end`
        leaves the hosts it was pulling in the journal (their ``phases``), so that
        ``status`` says so until the next pull, which reports it and removes the
        repository locks they may have left."""
        self._kept.update(phases)
        self._stopped_by = signal_name

    def end(self) -> None:
        """The run ended: remove the journal (or keep only what :meth:`keep` and
        :meth:`stop` named)."""
        if self._kept or self._carried:
            with self._lock:
                self._phases = dict(self._kept)
                self._write(ended=not self._stopped_by)
            return
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    def _write(self, ended: bool = False) -> None:
        record: dict = {"pid": os.getpid(), "started": self._started, "hosts": self._phases}
        if ended:
            record["ended"] = True
        if self._stopped_by:
            record["stopped_by"] = self._stopped_by
        if self._disabled:
            record["disabled"] = self._disabled
        carried = self._carried
        if carried is not None:
            record["carried"] = {
                "pid": carried.pid,
                "started": carried.started,
                "hosts": carried.phases,
                "stopped_by": carried.stopped_by,
                "disabled": list(carried.disabled),
            }
        try:
            atomic_write(self.path, json.dumps(record, sort_keys=True) + "\n", mode=0o600)
        except OSError as exc:
            log.debug("could not write the journal %s: %s", self.path, exc)


MAX_JOURNAL = 1 << 20
"""Bytes of a journal that are read (a pull writes a line per host it is pulling)."""


def read_journal(state_dir: Path) -> InterruptedRun | None:
    """The journal in ``state_dir``: the pull in progress, or the one a crash
    interrupted; None when there is none (the last pull ended normally). Raises OSError
    and ValueError when it cannot be read or is not a journal."""
    data = _journal_document(state_dir)
    return None if data is None else _interrupted(data)


def _journal_document(state_dir: Path) -> dict | None:
    """The journal's JSON object as written (at most MAX_JOURNAL bytes), None when there
    is none. Raises OSError, and ValueError when it is longer or no JSON object."""
    try:
        with open(state_dir / JOURNAL_FILE, "rb") as handle:
            raw = handle.read(MAX_JOURNAL + 1)
    except FileNotFoundError:
        return None
    if len(raw) > MAX_JOURNAL:
        raise ValueError(f"longer than {MAX_JOURNAL} bytes")
    try:
        data = jsontext.document(raw, standard=False)
    except ValueError as exc:
        raise ValueError(f"not a pull journal ({exc})") from None
    if not isinstance(data, dict):  # (a null read as "no journal": helper-149 F9)
        raise ValueError(f"not a pull journal (a JSON {type(data).__name__}, not an object)")
    return data


def _interrupted(data: Any) -> InterruptedRun:
    """The run a journal's ``data`` records. Raises ValueError when it is not a
    journal."""
    try:
        carried = data.get("carried")
        return InterruptedRun(
            *_run_of(data),
            data.get("ended") is True,
            str(data.get("stopped_by") or "")[:20],
            InterruptedRun(
                *_run_of(carried),
                False,
                str(carried.get("stopped_by") or "")[:20],
                disabled=_names(carried.get("disabled")),
            )
            if carried is not None
            else None,
            disabled=_names(data.get("disabled")),
        )
    except (KeyError, TypeError, AttributeError, ValueError, OverflowError, RecursionError) as exc:
        # (damage: a pid of 1e400 is an OverflowError, deep nesting a RecursionError;
        # an outside review saw either stop every pull, status and publish with exit 70)
        why = printable(f"{exc.__class__.__name__}: {exc}", 200)
        raise ValueError(f"not a pull journal ({why})") from None


def _names(value: object) -> tuple[str, ...]:
    """A run's ``disabled`` hosts (nothing when it is not a list: an older journal)."""
    return tuple(str(h) for h in value) if isinstance(value, list) else ()


def _run_of(data: dict) -> tuple[int, str, dict[str, str]]:
    """The pid, start and phases of a run's record. Raises KeyError, TypeError,
    ValueError, AttributeError."""
    phases = {str(h): str(p) for h, p in dict(data["hosts"]).items()}
    return int(data["pid"]), str(data["started"]), phases


@dataclass(frozen=True)
class PullActivity:
    """What ``status`` says of pulls beside the status file: one running now, or one that
    was killed before it could write the status file."""

    running: InterruptedRun | None = None
    """The pull holding the server lock now, with the phase of each host it pulls."""
    killed: InterruptedRun | None = None
    """The last pull, killed outright (its hosts' phases then): the status file still
    holds the results of the pull before it; the next pull reports and cleans up."""


NO_ACTIVITY = PullActivity()
"""No pull running, none killed (or nothing could be read)."""


def pull_activity(state_dir: Path, lock_dir: Path, roster: Roster | None = None) -> PullActivity:
    """Whether a pull runs now (it holds the server lock, as /proc/locks and the lock's
    owner record tell) and whether one was killed (its journal is left, written by
    another process than the lock's holder, if any). When /proc/locks cannot tell, a
    live owner record decides. What cannot be read (the journal, both of those) says
    nothing: :data:`NO_ACTIVITY`. A killed pull's hosts that server.yaml (``roster``;
    None: every host counts) no longer lists do not count, nor those disabled now unless
    that pull named them (:meth:`InterruptedRun.counted`)."""
    try:
        journal = read_journal(state_dir)
    except (OSError, ValueError):
        return NO_ACTIVITY
    lock = lock_dir / INSTANCE_LOCK
    held = flock_held(lock)
    owner = lock_status(lock) if held is not False else None
    if held is None:
        held = owner is not None
    if held and owner is None:
        return NO_ACTIVITY  # held, by whom cannot be told
    running = None
    if owner is not None and owner.purpose in (PULL_PURPOSE, DRY_RUN_PURPOSE):
        own = journal is not None and journal.pid == owner.pid
        running = journal if own else InterruptedRun(owner.pid, owner.started)
        if own:  # (and what it carries, never pulled by it: still cut short meanwhile)
            carried = journal.carried if journal is not None else None
            return PullActivity(running=running, killed=_counted(carried, roster))
    if journal is None:
        return PullActivity(running=running)
    # this run's own cut (with what it carried), else what it carried: its hosts are
    # still to be pulled
    cut = journal.merged() if journal.phases and not journal.ended else journal.carried
    return PullActivity(running=running, killed=_counted(cut, roster))


def _counted(cut: InterruptedRun | None, roster: Roster | None) -> InterruptedRun | None:
    """What of ``cut`` counts (:meth:`InterruptedRun.counted`; None roster: all of it)."""
    if cut is None or roster is None:
        return cut
    return cut.counted(roster)


def accept_cut(state_dir: Path, host: str) -> InterruptedRun | None:
    """Accept the cut of a pull that named ``host`` while it was disabled in server.yaml
    (:attr:`InterruptedRun.disabled`; killed or stopped while pulling a machine that is
    gone, it counted until a pull of it ended, which fails: helper-144 F2): the journal
    no longer names it among those, so it counts no more while the host is disabled, as
    a cut from before it was disabled (:meth:`InterruptedRun.counted`). Its phase stays:
    a later pull of it still removes the repository lock it may have left. Returns the
    run whose cut was accepted (the one that pulled the host), or None when the journal
    names no such cut (or cannot be read; nothing written). Call it under the server
    lock (no pull runs). Raises PullbackError when the journal cannot be written."""
    try:
        data = _journal_document(state_dir)
        if data is None:
            return None
        found = _interrupted(data)
    except (OSError, ValueError):
        return None
    # (a run that ended keeping hosts: its status file says why each failed)
    own = None if data.get("ended") is True else data
    records = (own, data.get("carried"))
    named = [r for r in records if isinstance(r, dict) and _cut_while_disabled(r, host)]
    if not named:
        return None
    for record in named:
        record["disabled"] = [h for h in _names(record["disabled"]) if h != host]
    try:
        atomic_write(state_dir / JOURNAL_FILE, json.dumps(data, sort_keys=True) + "\n", mode=0o600)
    except OSError as exc:
        raise PullbackError(f"the pull journal could not be written: {exc}") from None
    # the run that pulled it (a carried one has its own pid and start)
    return found if own is not None and host in found.phases else found.carried


def _cut_while_disabled(record: dict, host: str) -> bool:
    """Whether a run's ``record`` in the journal has ``host`` cut short (in its
    ``hosts``) and named while disabled (its ``disabled`` also names hosts it pulled to
    the end)."""
    hosts = record.get("hosts")
    return isinstance(hosts, dict) and host in hosts and host in _names(record.get("disabled"))
