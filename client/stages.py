"""Run one service through its stages: validate -> prepare -> dump -> finish.

The rules (docs/architecture.md, "Plugin stages"): all prepares, then all dumps, then a
finish for every task whose prepare was called, in reverse order, whatever happened,
SIGTERM included. A failed prepare skips the dumps; a failed dump discards that task's
staging directory; what succeeded is archived and the report says what failed.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING

from ..common.archive.sidecar import PARTIAL_DUMP, ServiceReport, TaskReport
from ..common.archive.writer import ArchiveWriter
from ..common.errors import ArchiveError, Interrupted, PullbackError, describe
from ..common.log import PrefixAdapter, get_logger
from ..common.outcome import Status
from ..common.runner import Runner
from ..common.signals import SignalGuard
from ..common.trees import remove_tree
from ..common.yamlfile import KeyPath, format_key
from ..plugins.manager import MAX_ITEMS, PluginSet, as_lines
from ..plugins.task import KeyProblem, Task, TaskPartial, TaskSkipped
from .services import Service

if TYPE_CHECKING:
    from .stopped import StoppedRecord

log = get_logger("client")


def staging_dir(staging_root: Path, name: str) -> Path:
    """``staging_root/name``, the staging directory of a task of type ``name``; raises
    PullbackError when ``name`` would make it anything but a child of ``staging_root``
    (the plugin manager refuses such names: this is the last line before an rmtree)."""
    staging = staging_root / name
    if not name or name in (".", "..") or staging.parent != staging_root or "\0" in name:
        raise PullbackError(f"task type {name!r} is no directory name: refused as a staging dir")
    return staging


def make_tasks(
    service: Service, staging_root: Path, archive: ArchiveWriter | None, dry_run: bool = False
) -> list[Task]:
    """The Task objects of a service, each with its own (not yet created) staging dir."""
    tasks = []
    for spec in service.tasks:
        prefix = f"{service.name}/{spec.type.name}"
        task_log = PrefixAdapter(log, prefix)
        tasks.append(
            Task(
                type=spec.type.name,
                key=spec.key,
                config=spec.config,
                service=service.name,
                service_file=service.file,
                staging=staging_dir(staging_root, spec.type.name),
                runner=Runner(task_log, secrets=service.secrets),
                log=task_log,
                arcdir=f"services/{service.name}/{spec.type.name}",
                archive=archive,
                dry_run=dry_run,
            )
        )
        tasks[-1].stats.warnings.extend(spec.warnings)  # reach the sidecar with the task's own
    return tasks


def validate_task(plugins: PluginSet, task: Task) -> list[tuple[KeyPath, str]]:
    """Problems the plugin's validate hook finds in ``task``, each with the key path in
    the task's section it names (:class:`KeyProblem`; ``()``: the section), in words
    (:func:`as_lines`: escaped, cut, at most so many)."""
    try:
        found = plugins.call("validate", task)
    except Interrupted:
        raise  # a SIGTERM while a validate hook ran: not a problem of the service
    except Exception as exc:
        return [((), f"validate failed: {describe(exc)}")]
    items = list(found) if isinstance(found, list | tuple) else found
    if not isinstance(items, list):
        return [((), line) for line in as_lines(items)]
    keyed = [p for p in items if isinstance(p, KeyProblem)][:MAX_ITEMS]
    said: list[tuple[KeyPath, str]] = [
        (p.key, f"{format_key(p.key)}: {line}") for p in keyed for line in as_lines(p.message)
    ]
    rest = [p for p in items if not isinstance(p, KeyProblem)]
    return said + [((), line) for line in as_lines(rest)]


def validate_service(service: Service, plugins: PluginSet, tasks: list[Task]) -> list[str]:
    """Problems found by the plugins' validate hooks, as ``task: problem`` (or
    ``task.key: problem``) strings."""
    problems: list[str] = []
    for task in tasks:
        for key, text in validate_task(plugins, task):
            problems.append(f"{task.key}.{text}" if key else f"{task.key}: {text}")
    return problems


class ServiceRun:
    """One service going through its stages; :meth:`run` does them in order."""

    def __init__(
        self,
        service: Service,
        plugins: PluginSet,
        archive: ArchiveWriter,
        staging_root: Path,
        guard: SignalGuard,
        *,
        record: StoppedRecord | None = None,
    ):
        self.service = service
        self.plugins = plugins
        self.archive = archive
        self.guard = guard
        self.report = ServiceReport(service.name, service_file=str(service.file))
        self.log = PrefixAdapter(log, service.name)
        # a broken service file has no tasks to speak of: its report lists none
        self.tasks = [] if service.broken else make_tasks(service, staging_root, archive)
        self.reports = {id(t): TaskReport(t.type) for t in self.tasks}
        self.report.tasks = [self.reports[id(t)] for t in self.tasks]
        self.prepared: list[Task] = []
        self.record = record
        """Where each stop is written before it is made (None: nowhere)."""
        if record is not None:
            record.attach(self.tasks)

    def run(self) -> ServiceReport:
        """Every stage; returns the report. Raises ArchiveError (the archive itself
        failed) and Interrupted (SIGTERM/SIGINT), in both cases after every finish ran."""
        started = time.monotonic()
        for warning in self.service.warnings:
            self.log.warning("%s", warning)
        if self.refused():
            return self.report
        runnable = self.runnable()
        fatal: BaseException | None = None
        try:
            if self.prepare(runnable):
                self.dump(runnable)
        except (Interrupted, ArchiveError) as exc:
            fatal = exc
        finally:
            self.finish(failed=fatal is not None)
        if fatal is not None:
            raise fatal
        self.collect()
        self.report.duration = time.monotonic() - started
        return self.report

    # -- before anything runs -------------------------------------------------------------

    def refused(self) -> bool:
        """True (and the report says why) when the service file or a plugin's validate
        hook finds a problem: then nothing of the service runs."""
        service = self.service
        if service.broken:
            self.report.error = "; ".join(str(p) for p in service.problems)
            self.log.error("skipped, its service file is broken: %s", self.report.error)
            return True
        problems = validate_service(service, self.plugins, self.tasks)
        if problems:
            self.report.error = "; ".join(problems)
            self.log.error("not run: %s", self.report.error)
            return True
        return False

    def runnable(self) -> list[Task]:
        """The tasks whose programs are installed; the others are skipped, and said so."""
        found = []
        for task, spec in zip(self.tasks, self.service.tasks, strict=True):
            missing = spec.type.missing(spec.config)
            if missing:
                self.reports[id(task)].error = f"skipped: {'; '.join(missing)}"
                task.log.error("%s", self.reports[id(task)].error)
            else:
                found.append(task)
        return found

    # -- the stages -----------------------------------------------------------------------

    def prepare(self, runnable: list[Task]) -> bool:
        """Every prepare in order; False when one failed (no dump runs then)."""
        for task in runnable:
            task.staging.mkdir(parents=True, exist_ok=True)
        for task in runnable:
            self.prepared.append(task)  # its finish runs whatever prepare does
            try:
                self.plugins.call("prepare", task)
            except (Interrupted, ArchiveError):
                raise
            except TaskSkipped as exc:
                self._skip(task, exc)
            except Exception as exc:
                self._fail(task, "prepare", exc)
                return False
        return True

    def dump(self, runnable: list[Task]) -> None:
        """Every dump of a task not skipped; a failed dump's staging is discarded, a
        partial one's (TaskPartial) kept for the archive."""
        for task in runnable:
            task_report = self.reports[id(task)]
            if task_report.error is not None:
                continue  # skipped in prepare
            started = time.monotonic()
            try:
                self.plugins.call("dump", task)
                task_report.status = Status.OK
            except (Interrupted, ArchiveError):
                raise
            except TaskSkipped as exc:
                self._skip(task, exc)
                remove_tree(task.staging, ignore_errors=True)
            except TaskPartial as exc:
                self._fail(task, PARTIAL_DUMP.removesuffix(": "), exc)
                # what it staged is archived (TaskReport.archived)
            except Exception as exc:
                self._fail(task, "dump", exc)
                remove_tree(task.staging, ignore_errors=True)
            task_report.duration = time.monotonic() - started

    def finish(self, failed: bool) -> None:
        """A finish for every task whose prepare was called, in reverse order; a signal
        waits until they are all done. A task's entry leaves the record of what was
        stopped once its finish ran, or failed for good: one that failed while this run
        or the machine is being stopped (a reboot cancels the start) stays for the next
        start (:meth:`.stopped.StoppedRecord.kept_if_stopping`)."""
        with self.guard.shielded():
            failed = failed or any(r.status == Status.FAILED for r in self.reports.values())
            for task in reversed(self.prepared):
                try:
                    self.plugins.call("finish", task, failed=failed)
                except Exception as exc:
                    self._fail(task, "finish", exc)
                    if self.record is not None and self.record.kept_if_stopping(task):
                        continue
                if self.record is not None:
                    self.record.finished(task)

    def collect(self) -> None:
        """Archive what the successful dumps staged and sum the service's report."""
        for task in self.tasks:
            task_report = self.reports[id(task)]
            if self._archived(task):
                task.stats.add(self.archive.add_tree(task.staging, task.arcdir))
            task_report.files, task_report.bytes = task.stats.files, task.stats.bytes
            task_report.warnings = task.stats.warning_lines()
            if task.stats.warnings.dropped:  # (each kept one was logged as it came)
                task.log.warning("%s", task_report.warnings[-1])
            if task_report.status == Status.SKIPPED and task_report.error is None:
                task_report.error = "not run: an earlier stage failed"
        report = self.report
        failed = [r for r in report.tasks if r.status != Status.OK]
        report.status = Status.FAILED if failed else Status.OK
        if failed:
            report.error = "; ".join(f"{r.type}: {r.error}" for r in failed if r.error)
        report.files = sum(r.files for r in report.tasks)
        report.bytes = sum(r.bytes for r in report.tasks)

    def _archived(self, task: Task) -> bool:
        """Whether what ``task`` staged goes into the archive: its dump succeeded, or
        wrote part of what it should (TaskPartial), and it staged something."""
        kept = self.reports[id(task)].archived
        return kept and task.staging.is_dir() and any(task.staging.iterdir())

    # -- outcomes -------------------------------------------------------------------------

    def _fail(self, task: Task, stage: str, exc: BaseException) -> None:
        task_report = self.reports[id(task)]
        task_report.status = Status.FAILED
        message = f"{stage}: {describe(exc)}" if isinstance(exc, TaskPartial) else None
        message = message or f"{stage} failed: {describe(exc)}"
        task_report.error = task_report.error or message
        task.log.error("%s", message)
        if not isinstance(exc, PullbackError | OSError):
            task.log.debug("the task failed:", exc_info=exc)

    def _skip(self, task: Task, exc: BaseException) -> None:
        self.reports[id(task)].status = Status.SKIPPED
        self.reports[id(task)].error = f"skipped: {exc}"
        task.log.error("skipped: %s", exc)


def run_service(
    service: Service,
    plugins: PluginSet,
    archive: ArchiveWriter,
    staging_root: Path,
    guard: SignalGuard,
    *,
    record: StoppedRecord | None = None,
) -> ServiceReport:
    """Run every stage of ``service``, adding what succeeded to ``archive``; each stop
    written to ``record`` before it is made.

    Returns the service's report. Raises ArchiveError when the archive itself fails and
    Interrupted on SIGTERM/SIGINT, in both cases after every needed finish has run.
    """
    return ServiceRun(service, plugins, archive, staging_root, guard, record=record).run()
