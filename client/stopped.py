"""What a run or a restore stopped and has not started again, kept on disk.

A run stops applications (docker, systemd tasks) in its prepare stage and starts them in
its finish, SIGTERM included. A run killed outright before its finish (systemd's stop
timeout, the OOM killer, ``kill -9``, a power cut) would leave them down until someone
noticed, and ``docker compose stop`` keeps ``restart: unless-stopped`` containers down
even across a reboot. So every stop is written here before it is made
(:meth:`..plugins.task.Task.stopping`), a task's entry leaves once its finish ran, and
``pullback-client start-stopped`` (the client unit's ExecStopPost=, and the start of every
run and restore) calls the finish of each task still named, as its run would have.

A run also writes here that it is under way (:class:`Underway`: its pid, start and
services) and clears it once its status file is written: a run killed with nothing
stopped is reported all the same, its services failed, not left as the last run's
result for monitoring to find stale a day later.

The file is ``stopped.json`` beside the work directory (``/var/lib/pullback`` by
default: it survives a reboot), root's alone, written atomically under the client's
lock. It is read only up to :data:`MAX_BYTES`; a damaged one is set aside, said, and
the run goes on.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import stat
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..common import signals, yamlfile
from ..common.archive.sidecar import ServiceReport
from ..common.clock import iso, utc_now
from ..common.errors import (
    EXIT_FAILED,
    EXIT_OK,
    ConfigError,
    Interrupted,
    LockBusy,
    describe,
)
from ..common.fsutil import atomic_write, fsync_dir
from ..common.log import get_logger
from ..common.notify import Notifier
from ..common.procfs import boot_id
from ..common.schema import apply_defaults, load_schema
from ..common.signals import RESTORING, SignalGuard
from ..common.text import few, printable
from ..common.trees import remove_tree
from ..plugins.manager import PluginSet, load_plugins
from ..plugins.task import Task
from . import outputs
from .config import ClientConfig, load_client_config
from .services import discover
from .stages import make_tasks

log = get_logger("stopped")

RECORD_NAME = "stopped.json"
MAX_BYTES = 1 << 20
"""The record is read up to this size; a longer one is damaged."""
MAX_ENTRIES = 200
"""Entries a record may hold (one per task that stops something: a machine's services
hold a few); more is a damaged record (each entry is one start, one warning and one
rewrite of the record)."""
MAX_SERVICES = 200
"""Service names an :class:`Underway` keeps (the first ones of a longer run): a report
of the killed run marks these failed."""
MAX_EARLIER = 10
"""Lines an :class:`Underway` carries of earlier runs killed and not yet reported."""
NAME_CHARACTERS = 128
"""A service's name is at most this long (the service file's schema): a report keys
the killed run's services by their whole name."""
SHOWN_PROBLEMS = 5
"""Problems named one by one in a report's one line (the rest counted)."""
VERSION = 1


def record_path(config: ClientConfig) -> Path:
    """Where the record lives: beside the work directory (emptied by every run)."""
    return config.work_dir.parent / RECORD_NAME


@dataclass
class Stopped:
    """One task's stops: what its prepare stopped and its finish has not started yet."""

    service: str
    task: str
    """The task's key in the service file."""
    names: list[str]
    """Its ``state["stopped"]``: containers, units."""
    by: str
    """``run`` or ``restore``."""
    pid: int
    at: str
    kept: str | None = None
    """Why its finish left it here after failing (:func:`.signals.stopping_for_now`: "the
    machine is being stopped"): that run or restore ended and reported itself, it was
    not killed; None: its finish never ran."""

    def what(self) -> str:
        """``service: task: names``, bounded (the record could be damaged)."""
        names = few([printable(n, 100) for n in self.names])
        return f"{printable(self.service, 100)}: {printable(self.task, 60)}: {names}"

    def said(self) -> str:
        """The entry in one line of bounded words."""
        return (
            f"{self.what()} (stopped by a {printable(self.by, 20)} that ended before "
            f"starting them again: pid {printable(str(self.pid), 20)}, "
            f"{printable(self.at, 40)})"
        )


@dataclass
class Underway:
    """A run that began and has not yet written its status file (the record's ``run``)."""

    pid: int
    at: str
    """When it began (ISO 8601, UTC)."""
    services: list[str]
    """Its services, and those of the earlier runs it carries (at most
    :data:`MAX_SERVICES`)."""
    earlier: list[str] = field(default_factory=list)
    """What the report of earlier runs killed would have said (:meth:`Recovery.report_lines`)
    when this run began: its own report says it, and so does the report of this run
    killed too (at most :data:`MAX_EARLIER` lines)."""
    boot: str | None = None
    """The boot it began in (:func:`.common.procfs.boot_id`; None in an older record):
    another now means the machine restarted before the run ended."""
    invocation: str | None = None
    """Its unit's run (systemd's ``$INVOCATION_ID``; None outside a unit, or in an older
    record): what systemd says of that run is said of this one alone."""
    ended: str | None = None
    """How it ended, when it could still say (its status file could not be written)."""
    token: str | None = None
    """Random, of this run alone (None in an older record): two runs may share a pid and
    the second they began (a PID namespace, a clock set back after a power cut)."""

    def identity(self) -> dict:
        """What tells this run's mark from any other's: its pid, when it began and its
        token (the status file's ``reported_run`` once its report is written)."""
        return {"pid": self.pid, "at": self.at, "token": self.token}

    def said(self) -> str:
        """``the run (pid ..., started at ...)``, bounded."""
        return f"the run (pid {printable(str(self.pid), 20)}, started at {printable(self.at, 40)})"


@dataclass
class Contents:
    """What a record holds."""

    entries: list[Stopped] = field(default_factory=list)
    run: Underway | None = None
    """The run under way when the record was written (None: none, or a restore's)."""


class DamagedRecord(Exception):
    """The record cannot be read as one."""


def read_record(path: Path) -> Contents:
    """What the record at ``path`` holds (nothing when there is no record).

    Raises DamagedRecord when it is not a regular file this user owns and only it can
    write (a record another user could plant would have root start what it names), is
    longer than :data:`MAX_BYTES`, not JSON or not shaped as one; OSError when it cannot
    be read (a symlink: never followed)."""
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC  # (a FIFO: no wait)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        return Contents()
    with os.fdopen(fd, "rb") as handle:
        found = os.fstat(fd)
        if not stat.S_ISREG(found.st_mode):
            raise DamagedRecord("not a regular file")
        if found.st_uid != os.geteuid() or found.st_mode & 0o022:
            raise DamagedRecord(
                f"owned by uid {found.st_uid}, mode {found.st_mode & 0o777:o}: a record "
                "another user can write is never obeyed"
            )
        data = handle.read(MAX_BYTES + 1)
    if len(data) > MAX_BYTES:
        raise DamagedRecord(f"longer than {MAX_BYTES} bytes")
    try:
        doc = json.loads(data)
        items = doc["stopped"]
        if len(items) > MAX_ENTRIES:
            raise DamagedRecord(f"more than {MAX_ENTRIES} entries")
        run = doc.get("run")
        return Contents([_entry(item) for item in items], None if run is None else _run(run))
    except (ValueError, KeyError, TypeError, RecursionError) as exc:
        raise DamagedRecord(f"not a record of stopped services ({describe(exc)})") from None


def _entry(item: dict) -> Stopped:
    names = item["names"]
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise TypeError("names is not a list of strings")
    fields = (item["service"], item["task"], item["by"], item["at"])
    if not all(isinstance(f, str) for f in fields) or not isinstance(item["pid"], int):
        raise TypeError("a field has the wrong type")
    kept = item.get("kept")  # (absent in an older record)
    if kept is not None and not isinstance(kept, str):
        raise TypeError("kept is not a string")
    return Stopped(item["service"], item["task"], names, item["by"], item["pid"], item["at"], kept)


def _run(item: dict) -> Underway:
    services = item["services"]
    if not isinstance(services, list) or not all(isinstance(n, str) for n in services):
        raise TypeError("services is not a list of strings")
    if len(services) > MAX_SERVICES:
        raise DamagedRecord(f"a run of more than {MAX_SERVICES} services")
    earlier = item.get("earlier", [])
    if not isinstance(earlier, list) or not all(isinstance(n, str) for n in earlier):
        raise TypeError("earlier is not a list of strings")
    if len(earlier) > MAX_EARLIER:
        raise DamagedRecord(f"a run carrying more than {MAX_EARLIER} earlier lines")
    if not isinstance(item["pid"], int) or not isinstance(item["at"], str):
        raise TypeError("a field of the run has the wrong type")
    known = [item.get(key) for key in ("boot", "invocation", "ended", "token")]  # (null: not known)
    if not all(isinstance(v, str) for v in known if v is not None):
        raise TypeError("boot, invocation, ended or token is not a string")
    return Underway(item["pid"], item["at"], services, earlier, *known)


class StoppedRecord:
    """The record, as one run or restore keeps it (under the client's lock): entries it
    did not write stay as they are."""

    def __init__(self, path: Path, by: str):
        self.path = path
        self.by = by
        contents = Contents()
        # (a damaged one was set aside by start_left_stopped, which ran first)
        with contextlib.suppress(DamagedRecord, OSError):
            contents = read_record(path)
        self.entries = contents.entries
        self.run = contents.run

    def begin(self, services: list[str], carried: Recovery | None = None) -> None:
        """Write that this run is under way (with its services), replacing any earlier
        run's mark: what ``carried`` (the recovery before this run) has to report, and
        the killed run's services, go into this one's, until this run's report says them.
        A record that cannot be written is only said: the backup goes on (only a killed
        run's report would be missed)."""
        earlier: list[str] = []
        names = list(services)
        if carried is not None:
            earlier = [printable(line, 1000) for line in carried.report_lines()[:MAX_EARLIER]]
            killed = carried.killed_run()
            names += killed[1] if killed else []
        names = list(dict.fromkeys(names))[:MAX_SERVICES]
        unit = os.environ.get("INVOCATION_ID")
        self.run = Underway(
            os.getpid(), iso(utc_now()), names, earlier, boot_id(), unit, token=os.urandom(8).hex()
        )
        try:
            self._write()
        except OSError as exc:
            log.warning("cannot write %s: %s", self.path, describe(exc))

    def identity(self) -> dict | None:
        """The mark of the run this record holds (:meth:`Underway.identity`), None when
        it holds none."""
        return self.run.identity() if self.run is not None else None

    def unreported(self) -> None:
        """The run ended but could not write its status file: its mark stays, saying so
        (an error writing is said)."""
        if self.run is not None:
            self.run.ended = "its status file could not be written"
            self._rewrite()

    def reported(self) -> None:
        """The run wrote its status file: its mark leaves (an error writing is said)."""
        if self.run is not None:
            self.run = None
            self._rewrite()

    def attach(self, tasks: list[Task]) -> None:
        """Make each task's :meth:`Task.stopping` write here."""
        for task in tasks:
            task.on_stopping = self.stopping

    def stopping(self, task: Task) -> None:
        """Write the task's ``state["stopped"]`` (before the stop is made).

        Raises OSError when it cannot be written: the prepare then fails, nothing stopped."""
        self._drop(task.service, task.key)
        names = [str(n) for n in task.state.get("stopped", [])]
        at = iso(utc_now())
        self.entries.append(Stopped(task.service, task.key, names, self.by, os.getpid(), at))
        self._write()

    def finished(self, task: Task) -> None:
        """The task's finish ran: its entry leaves."""
        self.remove(task.service, task.key)

    def kept_if_stopping(self, task: Task) -> str | None:
        """After ``task``'s finish failed: when a signal came or the machine is being
        stopped (:func:`.signals.stopping_for_now`: a shutdown cancels the start), its
        entry stays for the next start, marked (:meth:`kept`), and why is returned (said
        as a warning); None otherwise (the caller drops it as tried)."""
        why = signals.stopping_for_now()
        if why:
            log.warning(
                "%s: %s: its finish failed as %s: left in the record for the next start "
                "(the unit's, or the next boot's)",
                task.service,
                task.key,
                why,
            )
            self.kept(task.service, task.key, why)
        return why

    def kept(self, service: str, key: str, why: str) -> None:
        """The finish of ``service``'s task ``key`` failed for ``why`` (the machine is
        being stopped, a signal came): its entry stays for the next start, marked so that
        no one reports its run as killed again (it reported itself, or the report of it
        is under way). An error writing is only said."""
        for entry in self.entries:
            if (entry.service, entry.task) == (service, key):
                entry.kept = why
                self._rewrite()

    def remove(self, service: str, key: str) -> None:
        """The entry of ``service``'s task ``key`` leaves. An error writing is only said
        (the next run would start them again: harmless)."""
        if self._drop(service, key):
            self._rewrite()

    def _rewrite(self) -> None:
        try:
            self._write()
        except OSError as exc:
            log.warning("cannot update %s: %s", self.path, describe(exc))

    def _drop(self, service: str, key: str) -> bool:
        before = len(self.entries)
        self.entries = [e for e in self.entries if (e.service, e.task) != (service, key)]
        return len(self.entries) != before

    def _write(self) -> None:
        if not self.entries and self.run is None:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
                fsync_dir(self.path.parent)  # (a mark back after a power cut: a false report)
            return
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        doc: dict = {"version": VERSION, "stopped": [asdict(e) for e in self.entries]}
        if self.run is not None:
            doc["run"] = asdict(self.run)
        atomic_write(self.path, json.dumps(doc, indent=2) + "\n", mode=0o600)


@dataclass
class Recovery:
    """What :func:`start_left_stopped` found and did."""

    entries: list[Stopped] = field(default_factory=list)
    """The record's entries, each tried."""
    started: list[Stopped] = field(default_factory=list)
    """Those whose finish returned: started again."""
    problems: list[str] = field(default_factory=list)
    """Each said as an error: a start that failed, a service no longer configured, a
    damaged record (set aside as ``stopped.json.damaged``)."""
    run: Underway | None = None
    """A run that ended before writing its status file (killed), None when none did."""

    def killed_run(self) -> tuple[str, list[str]] | None:
        """The run that ended before its report, in words, and its services (those its
        record names); None when no run did (or only a restore's stops were left: its
        administrator saw it end)."""
        if self.run is not None:
            return self.run.said(), self.run.services
        # (an older version's record has no run: its entries tell; an entry a finish kept
        # is of a run that reported itself)
        left = [e for e in self.entries if e.by == "run" and e.kept is None]
        runs = sorted({(e.pid, printable(e.at, 40)) for e in left})
        if not runs:
            return None
        services = [e.service for e in left]
        pid, at = printable(str(runs[0][0]), 20), runs[0][1]
        return f"the run (pid {pid}, stopping at {at})", services

    def killed_services(self, but: list[str] | None = None) -> list[ServiceReport]:
        """The services of the run that ended before its finish, each failed (``but``:
        those a later run reports itself); none when no run did."""
        killed = self.killed_run()
        names = dict.fromkeys(printable(n, NAME_CHARACTERS) for n in (killed[1] if killed else []))
        return [
            ServiceReport(name, error="its run ended before its finish")
            for name in names
            if name not in (but or [])
        ]

    def report_lines(self) -> list[str]:
        """What a report of this recovery says, each line a problem: a run that ended
        before its finish (it told no one), with what was started again, then each
        problem."""
        killed = self.killed_run()
        if killed is None:
            return list(self.problems)
        line = f"{killed[0]} ended before its finish ({ended_how(self.run)})"
        if self.started:  # (in the order started)
            again = few([e.what() for e in self.started], SHOWN_PROBLEMS, separator="; ")
            line += f"; started again what it had stopped: {again}"
        earlier = [printable(e, 1000) for e in self.run.earlier] if self.run else []
        return [line, *self.problems, *earlier]  # (what asks for a hand before the carried)


SYSTEMD_RESULTS = {
    "signal": "killed by SIG{status}",
    "core-dump": "it dumped core: SIG{status}",
    "oom-kill": "killed by the OOM killer",
    "timeout": "stopped by systemd at a timeout",
    "exit-code": "it exited with status {status}",
}
"""How the unit's run ended, from ``$SERVICE_RESULT`` and ``$EXIT_STATUS`` (systemd.exec(5):
set for ``ExecStopPost=``); another result is said as it is."""


def ended_how(run: Underway | None, environ: Mapping[str, str] = os.environ) -> str:
    """How a run that left its mark ended, as far as is known, in a few bounded words:
    the machine restarted since (the mark's boot is not this one: a power cut, a crash
    of the system), or what systemd says of the unit's run (``start-stopped`` as the
    client unit's ``ExecStopPost=``, when the mark is of that very run: its
    ``$INVOCATION_ID``), else ``killed?``."""
    if run is None:  # (an older version's record: nothing says which run it was)
        return "killed?"
    if run.ended:
        return printable(run.ended, 100)
    booted = boot_id()
    if run.boot is not None and booted is not None and run.boot != booted:
        return "the machine restarted before it ended"
    result = environ.get("SERVICE_RESULT", "success")
    if result == "success" or not run.invocation or run.invocation != environ.get("INVOCATION_ID"):
        return "killed?"
    status = printable(environ.get("EXIT_STATUS", "?"), 12)
    words = SYSTEMD_RESULTS.get(result, "systemd says: {result}")
    return words.format(status=status, result=printable(result, 30))


def start_left_stopped(config: ClientConfig, plugins: PluginSet) -> Recovery:
    """Start again what an earlier run or restore stopped and never started (its record),
    through each task's finish (``failed=True``, ``state["stopped"]`` as recorded). Call
    it under the client's lock, the last stopped first. Each entry leaves the record once
    tried; the mark of a killed run stays until its report is written (:func:`report`,
    or the next run's :meth:`StoppedRecord.begin` carrying it). Returns what was found
    and what went wrong."""
    path = record_path(config)
    try:
        contents = read_record(path)
    except (DamagedRecord, OSError) as exc:
        return Recovery(problems=[_set_aside(path, exc)])
    if contents.run is not None and _reported(config, contents.run):
        StoppedRecord(path, "run").reported()
        contents.run = None
    recovery = Recovery(contents.entries, run=contents.run)
    if contents.run is not None:  # (the mark stays until the caller's report is written)
        log.error(
            "%s ended before its finish (%s): reported as a failed run",
            contents.run.said(),
            ended_how(contents.run),
        )
    if not contents.entries:
        return recovery
    record = StoppedRecord(path, "run")
    services = {s.name: s for s in discover(config.service_dirs, plugins)}
    scratch = config.work_dir / ".start-stopped"
    try:
        for entry in reversed(contents.entries):  # (the reverse of the order they stopped)
            problem = _start(entry, services, plugins, scratch)
            why = problem and signals.stopping_for_now()
            if why:
                # (its start cut by the signal, or a shutdown's cancelling the start job
                # before its SIGTERM came: the entry stays for the next, unsaid)
                log.warning("%s: left for the next start (%s)", entry.said(), why)
                record.kept(entry.service, entry.task, why)
                break
            if problem:
                recovery.problems.append(problem)
            else:
                recovery.started.append(entry)
            record.remove(entry.service, entry.task)
    finally:
        remove_tree(scratch, ignore_errors=True)
    return recovery


def _reported(config: ClientConfig, run: Underway) -> bool:
    """Whether the status file says that ``run``'s report was written (its mark was left
    by a power cut, or an error, between that write and the mark's removal): the mark
    then leaves, said in the log, and the metrics file is written from the status file
    (the run may have ended before it wrote them); no run is reported as killed that was
    not. Its mail, when one was due, may not have gone out: the warning says so."""
    try:
        status = outputs.load_status(config)
    except OSError:
        return False
    if status.get("reported_run") != run.identity():
        return False
    log.warning(
        "%s wrote its status file, then ended before its mark in %s left (a power cut?): "
        "not reported again; the metrics are written from its status file, and its mail "
        "(if one was due) may not have been sent",
        run.said(),
        RECORD_NAME,
    )
    outputs.write_metrics(config, status)
    return True


def _start(entry: Stopped, services: dict, plugins: PluginSet, scratch: Path) -> str | None:
    """Start what ``entry`` names through its task's finish; the problem (said as an
    error), or None."""
    service = services.get(entry.service)
    tasks = [] if service is None or service.broken else make_tasks(service, scratch, None)
    task = next((t for t in tasks if t.key == entry.task), None)
    if task is None:
        why = "is not configured" if service is None else "has no such task now"
        if service is not None and service.broken:
            why = "has a broken service file"
        problem = f"{entry.said()}: the service {why}: start them by hand"
        log.error("%s", problem)
        return problem
    log.warning("starting again %s", entry.said())
    task.state["stopped"] = list(entry.names)
    try:
        plugins.call("finish", task, failed=True)
    except Interrupted:
        raise  # (not a start that failed: the entry stays for the next)
    except Exception as exc:
        first, *rest = describe(exc).splitlines() or [type(exc).__name__]
        problem = f"{entry.said()}: could not start them again: {first}"
        log.error("%s", problem)
        for line in rest:  # (a command's last lines: in the log, not in the report's line)
            task.log.error("%s", line)
        return problem
    return None


def _set_aside(path: Path, exc: BaseException) -> str:
    """Move a record that cannot be read to ``<path>.damaged`` (kept, never read again);
    returns the problem in words."""
    aside = path.with_name(path.name + ".damaged")
    try:
        os.replace(path, aside)
        where = f"set aside as {aside}"
    except OSError as error:
        where = f"left in place ({describe(error)})"
    problem = (
        f"cannot read {path}, the record of services an interrupted run stopped: "
        f"{describe(exc)}; {where}: check that every application this machine backs up "
        "is running"
    )
    log.error("%s", problem)
    return problem


def default_record_path(path: Path | None = None) -> Path:
    """Where the record lives with the ``work_dir`` the configuration at ``path`` names,
    when it can be parsed and names one (it may not be valid otherwise), else the
    schema's default ``work_dir``."""
    work_dir = None
    if path is not None:
        with contextlib.suppress(yamlfile.YamlFileError, ConfigError):
            data = yamlfile.load(path).data
            if isinstance(data, dict) and isinstance(data.get("work_dir"), str):
                work_dir = data["work_dir"]
    if not work_dir:
        work_dir = apply_defaults(load_schema("pullback.common", "client"), {})["work_dir"]
    return Path(work_dir).parent / RECORD_NAME


def start_stopped(path: Path, args: argparse.Namespace) -> int:
    """``pullback-client start-stopped`` (:func:`command`), the configuration at ``path``
    read here. One that cannot be read (raises ConfigError) is said together with what the
    record holds, at the place its ``work_dir`` names or the default one
    (:func:`default_record_path`), which stays as it is:
    what it names stays stopped until someone mends the configuration or starts them.
    With nothing recorded there it is only a warning, exit 0 (the boot's unit and a
    run's ExecStopPost= have nothing to do; the next run fails for it)."""
    try:
        config = load_client_config(path)
    except ConfigError as exc:
        where = default_record_path(path)
        try:
            contents: Contents | None = read_record(where)
        except (DamagedRecord, OSError):
            contents = None  # (read, and set aside, once the configuration is mended)
        if contents is not None and not contents.entries and contents.run is None:
            log.warning(
                "cannot read %s (%d problem(s): the next run says them); nothing is "
                "recorded in %s: nothing to start",
                path,
                len(exc.problems),
                where,
            )
            return EXIT_OK
        held = "a record it cannot read"
        if contents is not None and contents.entries:
            held = "what stays stopped: " + few(
                [e.what() for e in contents.entries], separator="; "
            )
        elif contents is not None:
            held = "a run that ended before its finish, not reported yet"
        log.error(
            "cannot read %s: %s is left as it is, holding %s; mend the configuration, then "
            "run pullback-client start-stopped (or start them by hand)",
            path,
            where,
            held,
        )
        raise
    return command(config, args)


def command(config: ClientConfig, args: argparse.Namespace | None = None) -> int:
    """``pullback-client start-stopped``: exit 0 when nothing was left stopped, all of it
    started, or a run or restore holds the client's lock (it starts them itself, and
    may have stopped them: the client unit's ExecStopPost= after a run that found a
    restore going on must not fail the unit); 1 when something could not be started
    (said). A run that left its record (killed before its finish: no one else tells)
    is reported as a failed run: the status file, metrics, mail and pings say it."""
    done = recover_and_report(config)
    return EXIT_FAILED if done is not None and done.failed() else EXIT_OK


@dataclass
class Reported:
    """What :func:`recover_and_report` did."""

    recovery: Recovery
    unwritten: list[str]
    """What of its report could not be written or delivered."""

    def failed(self) -> bool:
        """Something could not be started, or its report was not all written."""
        return bool(self.recovery.problems or self.unwritten)


def recover_and_report(config: ClientConfig) -> Reported | None:
    """Under the client's lock, start what the record names and report a run that left
    it (:func:`start_left_stopped`, :func:`report`). Returns what was done; None when
    there is no record (nothing else loaded: the unit's ExecStopPost= after every run)
    or a run or restore holds the lock (it does this itself). Raises Interrupted when a
    signal came meanwhile (after the starts under way: the record kept for the next)."""
    if not record_path(config).exists():
        return None
    lock = config.instance_lock("pullback-client start-stopped")
    try:
        lock.acquire()
    except LockBusy as exc:
        log.info("%s; it starts what an interrupted run left stopped itself", exc)
        return None
    # (reported under the lock: no run reads the mark until it is cleared; a signal
    # waits for the starts and the report, as in a run: an entry is never dropped
    # unstarted, and the unit's stop timeout ends it by SIGKILL, the record kept)
    try:
        with SignalGuard(RESTORING) as guard, guard.shielded():
            recovery = start_left_stopped(config, load_plugins(config.plugin_dirs))
            if guard.received is not None:  # (the record as it is, for the next)
                raise Interrupted(guard.received)
            return Reported(recovery, report(config, recovery))
    finally:
        lock.release()


def report(config: ClientConfig, recovery: Recovery) -> list[str]:
    """Report what :meth:`Recovery.report_lines` says as a failed run (the status file,
    metrics, mail, pings), the services of the run that ended before its finish marked
    failed; nothing when it says nothing. Its mark leaves the record once the status file
    is written (call it under the client's lock). For a command that is no run of its
    own (``start-stopped``, ``restore``); a run carries the lines in its own report.
    Returns what could not be written or delivered (each said)."""
    lines = recovery.report_lines()
    if not lines:
        return []
    record = StoppedRecord(record_path(config), "run")
    summary = outputs.RunSummary(
        False, 0.0, recovery.killed_services(), problems=lines, reports=record.identity()
    )
    notifier = Notifier(config.notify, f"run on {config.hostname}")
    return outputs.finish(config, notifier, summary, recorded=record.reported)
