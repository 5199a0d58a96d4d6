"""The records plugins receive and return: task types, tasks, their statistics."""

from __future__ import annotations

import os
import shutil
import stat
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from ..common.archive.stats import MAX_TASK_WARNINGS, ExcludeFn, TaskStats
from ..common.errors import PullbackError
from ..common.log import Log
from ..common.runner import CommandResult, Runner
from ..common.yamlfile import format_key


class TaskError(PullbackError):
    """A task failed; the message says why in words an administrator can act on."""


class TaskSkipped(TaskError):
    """The task cannot run here (e.g. its tool is not installed): skipped, and said so."""


class TaskPartial(TaskError):
    """The dump wrote part of what it should (one database of several could not be
    dumped): what it staged is archived, and the task is reported failed with this
    message, so that the run, the mail, the pings and the server say so."""


@dataclass(frozen=True)
class Requirement:
    """A program a task needs: any one of ``programs``, from the Debian ``package``."""

    programs: tuple[str, ...]
    package: str
    when: tuple[tuple[str, object], ...] = ()
    """Only needed when the section has these values, e.g. ``(("version", 2),)``."""

    def missing(self, config: dict | None = None) -> str | None:
        """None when one of the programs is on PATH (or the requirement does not apply),
        else the sentence that says what is missing."""
        if any((config or {}).get(key) != value for key, value in self.when):
            return None
        if any(shutil.which(p) for p in self.programs):
            return None
        names = " or ".join(self.programs)
        return f"{names} is not installed ({self.package})"


@dataclass(frozen=True)
class TaskType:
    """A service.yaml key a plugin handles, and the schema of its section."""

    name: str
    schema: dict = field(default_factory=lambda: {"type": "object"})
    aliases: tuple[str, ...] = ()
    description: str = ""
    requires: tuple[Requirement, ...] = ()
    """Programs without which the task is skipped (and the service reported failed)."""
    stops_service: bool | Callable[[dict], bool] = False
    """Its prepare stops the application (docker, systemd): restores are wrapped in it.
    A function of the task's section says it for one section (docker with
    ``stop_services: false`` stops nothing: an outside attack saw a dry run predict a
    restore the stopped application would allow, and the real one refused)."""
    holds_data: bool | Callable[[dict], bool] = True
    """Its dump puts data in the archive; False (systemd: it only stops and starts
    units): a restore has nothing of it to look for, and says nothing of it. A function
    of the task's section says it for one section (docker with ``backup_config: false``
    and no pinned images archives nothing)."""

    restores_below_target: bool = False
    """With ``--target``, its restore writes only below the target or beside the live
    data (a database restored under a new name): a restore below ``--target`` of tasks
    that all say so does not stop the application (an outside attack saw a compose
    application stopped for a restore below --target). False (the default; ``command``):
    its restore may write anywhere, so the application is stopped first."""

    def missing(self, config: dict | None = None) -> list[str]:
        return [m for r in self.requires if (m := r.missing(config))]

    def stops(self, config: dict) -> bool:
        """Whether a task of this type with the section ``config`` stops the
        application (:attr:`stops_service`)."""
        return self.stops_service(config) if callable(self.stops_service) else self.stops_service

    def holds(self, config: dict) -> bool:
        """Whether a task of this type with the section ``config`` puts data in the
        archive (:attr:`holds_data`)."""
        return self.holds_data(config) if callable(self.holds_data) else self.holds_data


@dataclass(frozen=True)
class KeyProblem:
    """A problem :func:`~pullback.plugins.hookspecs.pullback_validate` finds in one key
    of the task's section (``KeyProblem(("shell",), "... is not executable")``,
    ``("dump", 0)`` for the first dump command): ``check`` names that key and its line,
    not only the section's."""

    key: tuple[str | int, ...]
    message: str

    def __str__(self) -> str:
        return f"{format_key(self.key)}: {self.message}"


class ArchiveSink(Protocol):
    """Where streamed files go: the archive being written."""

    def add_tree(
        self,
        source: Path,
        arcname: str,
        exclude: ExcludeFn | None = None,
        xattrs: bool = True,
        recursive: bool = True,
    ) -> TaskStats: ...


@dataclass
class RestorePlan:
    """How ``pullback-client restore`` puts a task back, and what it did.

    By default a restore never replaces live data: a database comes back as a new one,
    ``<name>_restored_<stamp>``, and :attr:`notes` say how to swap it in. With ``replace``
    the live data is replaced, but only after a preflight proved the restore can rebuild
    it, and what it replaces is kept (renamed ``<name>_before_restore_<stamp>``, or copied
    to :attr:`safety_dir` where the engine cannot rename). Every step goes through
    :meth:`step`, so ``--dry-run`` prints them all, the destructive ones marked.
    """

    stamp: str
    """The time of the restore: names the copies (``_restored_``, ``_before_restore_``),
    so a second restore never overwrites what an earlier one kept."""
    replace: bool = False
    dry_run: bool = False
    safety_dir: Path | None = None
    """Where replaced data is kept when the engine cannot keep it by a rename."""
    min_free: int = 0
    """Bytes a restore leaves free on a file system it copies files onto (client.yaml
    ``min_free_space``; 0: what it copies must fit)."""
    temporary_source: bool = False
    """The snapshot was unpacked from an archive into a directory the restore removes as
    it ends: a file of it the notes name is moved out first
    (:func:`.before_restore.hand_over`)."""
    steps: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    """What the administrator reads afterwards (where the data went, how to swap it in)."""
    stops_first: bool = False
    """A task of the service (docker, systemd) stops the application before the
    databases are restored: a dry run, which stops nothing, does not count the sessions
    it would end as a reason the restore would fail (an outside walk saw ``--replace
    --dry-run`` predict a failure that the real restore did not have)."""

    def sessions_problem(self, log: Log, problem: str) -> list[str]:
        """``[problem]`` (live sessions that would stop a ``--replace``), or none in a dry
        run whose service stops the application first: said as what it would meet."""
        if self.dry_run and self.stops_first:
            log.info("would: %s; the application is stopped first, which ends them", problem)
            return []
        return [problem]

    def step(self, log: Log, text: str, destructive: bool = False) -> bool:
        """Record one step (and log it); True when it is to be done (not a dry run)."""
        line = f"{'DESTRUCTIVE: ' if destructive else ''}{text}"
        self.steps.append(line)
        log.info("%s%s", "would: " if self.dry_run else "", line)
        return not self.dry_run

    def note(self, log: Log, text: str) -> None:
        """Record what the administrator reads afterwards (and log it); in a dry run it
        begins ``then:``, being what the restore would say (an outside walk read a dry
        run's "shop is restored as ..." as done)."""
        if self.dry_run:
            text = f"then: {text}"
        self.notes.append(text)
        log.info("%s", text)


@dataclass
class ProbeResult:
    """What ``pullback-client check`` learned by connecting with a task's credentials."""

    problems: list[str] = field(default_factory=list)
    """What would make the next dump fail."""
    warnings: list[str] = field(default_factory=list)
    """What a restore would lack (a privilege, a tool)."""


@dataclass
class Task:
    """One task of one service, as the stage hooks see it."""

    type: str
    """Canonical task type (``mariadb`` even when the file says ``mysql``)."""
    key: str
    """The key as written in service.yaml."""
    config: dict[str, Any]
    """The validated section, defaults applied."""
    service: str
    service_file: Path
    staging: Path
    """An empty directory of this task; what is here after a successful dump is archived."""
    runner: Runner
    log: Log
    arcdir: str = ""
    """Where this task's data lives in the archive: ``services/<service>/<type>``."""
    archive: ArchiveSink | None = None
    dry_run: bool = False
    state: dict[str, Any] = field(default_factory=dict)
    stats: TaskStats = field(default_factory=TaskStats)
    on_stopping: Callable[[Task], None] | None = None
    """Set by the client: writes ``state["stopped"]`` to its record (:meth:`stopping`)."""

    def stopping(self, *names: str) -> None:
        """Say, in prepare, that the task is about to stop ``names`` (containers, units):
        they are added to ``state["stopped"]`` and written to the client's record of
        stopped applications *before* the stop is made. Call it before each stop.

        The finish hook starts what ``state["stopped"]`` names. A run killed before its
        finish (``kill -9``, systemd's stop timeout) leaves the record behind; the next
        run, or the client unit's ExecStopPost= (``pullback-client start-stopped``), then
        calls the finish of a task made anew, ``failed=True``, whose ``state`` holds only
        ``stopped``. Raises OSError when the record cannot be written (the prepare fails
        then, before anything is stopped)."""
        self.state.setdefault("stopped", []).extend(names)
        if self.on_stopping is not None:
            self.on_stopping(self)

    def warn(self, text: str) -> None:
        """Log ``text`` as a warning and keep it for the archive's sidecar. Past the
        MAX_TASK_WARNINGS the task keeps, it is only counted: the run logs the count
        once, as the task ends (a tenant's thousands of databases that fail to dump, a
        user's thousands of entries, each a line, helper-158 F3)."""
        if self.stats.warnings.total < MAX_TASK_WARNINGS:
            self.log.warning("%s", text)
        self.stats.warnings.append(text)

    def run(self, argv: Sequence[str | os.PathLike], **kwargs) -> CommandResult:
        """Run a command through the task's runner (secrets masked, output logged); as
        the task's ``run_as`` user when its section names one (``runuser``), then from
        ``/`` unless ``cwd`` says otherwise (the caller's directory, /root, is closed to
        that user: runuser said so on every dump)."""
        user = self.config.get("run_as")
        if user:
            argv = ["runuser", "-u", user, "--", *argv]
            kwargs.setdefault("cwd", "/")
        return self.runner.run(argv, **kwargs)

    def add_tree(
        self, source: str | os.PathLike, exclude: ExcludeFn | None = None, xattrs: bool = True
    ) -> TaskStats:
        """Stream ``source`` (a file or a directory tree) into the archive, uncopied.

        It lands at ``<arcdir>/<source without its leading />``. Returns what was added;
        the counts are also added to ``task.stats``. Raises TaskError outside a dump.
        """
        if self.archive is None:
            raise TaskError("files can only be added to the archive during the dump stage")
        source = Path(os.path.abspath(source))
        # the real directories above `source` first, so a restore gets their modes right;
        # not a symlink on the way (/var/lib/mysql -> /data/mysql): the unpacking refuses
        # every member below a symlink member, and the backup could never be restored
        # (helper-149 F10); its place is an archive-only directory, a restore's cp follows
        # the live link; nor a file (a mistyped path): nothing lists it, so it is not
        # archived (helper-155 F7), and the path below it is missing
        for parent in reversed(source.parents[:-1]):
            if _real_directory(parent):
                self.archive.add_tree(parent, self._arcname(parent), xattrs=xattrs, recursive=False)
        stats = self.archive.add_tree(source, self._arcname(source), exclude=exclude, xattrs=xattrs)
        self.stats.add(stats)
        return stats

    def _arcname(self, path: Path) -> str:
        return f"{self.arcdir}/{name_in_archive(path)}".rstrip("/")


def _real_directory(path: Path) -> bool:
    """Whether ``path`` is a directory, not a symlink to one (nor anything else)."""
    try:
        return stat.S_ISDIR(os.lstat(path).st_mode)
    except OSError:
        return False


def name_in_archive(path: str | os.PathLike) -> str:
    """The name a path's tree has below its task's directory of the archive: absolute,
    normalised, without leading slashes (``//srv/./app/`` is ``srv/app``, ``/`` is
    empty). The one rule for :meth:`Task.add_tree` and whoever compares listed paths
    as the archive will hold them."""
    return os.path.normpath(os.path.abspath(path)).lstrip("/")
