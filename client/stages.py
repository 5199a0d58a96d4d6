"""Run one service through its stages: validate -> prepare -> dump -> finish.

The rules (DESIGN 3.2): all prepares, then all dumps, then a finish for every task whose
prepare was called, in reverse order, whatever happened, SIGTERM included. A failed
prepare skips the dumps; a failed dump discards that task's staging directory; what
succeeded is archived and the report says what failed.
"""

from __future__ import annotations

import shutil
import time
import traceback
from pathlib import Path

from ..common.archive.sidecar import ServiceReport, TaskReport
from ..common.archive.writer import ArchiveWriter
from ..common.errors import ArchiveError, Interrupted, PullbackError
from ..common.log import PrefixAdapter, get_logger
from ..common.outcome import Status
from ..common.runner import Runner
from ..common.signals import SignalGuard
from ..plugins.manager import PluginSet
from ..plugins.task import Task, TaskSkipped
from .services import Service

log = get_logger("client")


def _reason(exc: BaseException) -> str:
    if isinstance(exc, PullbackError):
        return str(exc)
    if isinstance(exc, OSError) and exc.strerror:
        where = f"{exc.filename}: " if exc.filename else ""
        return f"{where}{exc.strerror}"
    return f"{type(exc).__name__}: {exc}"


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
                staging=staging_root / spec.type.name,
                runner=Runner(task_log, secrets=service.secrets),
                log=task_log,
                arcdir=f"services/{service.name}/{spec.type.name}",
                archive=archive,
                dry_run=dry_run,
            )
        )
    return tasks


def validate_service(service: Service, plugins: PluginSet, tasks: list[Task]) -> list[str]:
    """Problems found by the plugins' validate hooks, as ``task: problem`` strings."""
    problems = []
    for task in tasks:
        try:
            found = plugins.call("validate", task) or []
        except Exception as exc:
            found = [f"validate failed: {_reason(exc)}"]
        problems.extend(f"{task.key}: {p}" for p in found)
    return problems


def run_service(
    service: Service,
    plugins: PluginSet,
    archive: ArchiveWriter,
    staging_root: Path,
    guard: SignalGuard,
) -> ServiceReport:
    """Run every stage of ``service``, adding what succeeded to ``archive``.

    Returns the service's report. Raises ArchiveError when the archive itself fails and
    Interrupted on SIGTERM/SIGINT, in both cases after every needed finish has run.
    """
    started = time.monotonic()
    report = ServiceReport(service.name, service_file=str(service.file))
    if service.broken:
        report.error = "; ".join(str(p) for p in service.problems)
        log.error("[%s] skipped, its service file is broken: %s", service.name, report.error)
        return report

    tasks = make_tasks(service, staging_root, archive)
    reports = {id(t): TaskReport(t.type) for t in tasks}
    report.tasks = [reports[id(t)] for t in tasks]

    problems = validate_service(service, plugins, tasks)
    if problems:
        report.error = "; ".join(problems)
        log.error("[%s] not run: %s", service.name, report.error)
        return report

    def fail(task: Task, stage: str, exc: BaseException) -> None:
        task_report = reports[id(task)]
        task_report.status = Status.FAILED
        message = f"{stage} failed: {_reason(exc)}"
        task_report.error = task_report.error or message
        task.log.error("%s", message)
        if not isinstance(exc, PullbackError | OSError):
            task.log.debug("%s", "".join(traceback.format_exception(exc)))

    for task, spec in zip(tasks, service.tasks, strict=True):
        missing = spec.type.missing(spec.config)
        if missing:
            reports[id(task)].error = f"skipped: {'; '.join(missing)}"
            task.log.error("%s", reports[id(task)].error)
    runnable = [t for t in tasks if reports[id(t)].error is None]

    def skip(task: Task, exc: BaseException) -> None:
        reports[id(task)].status = Status.SKIPPED
        reports[id(task)].error = f"skipped: {exc}"
        task.log.error("skipped: %s", exc)

    prepared: list[Task] = []
    fatal: BaseException | None = None
    try:
        for task in runnable:
            task.staging.mkdir(parents=True, exist_ok=True)
        prepare_failed = False
        for task in runnable:
            prepared.append(task)
            try:
                plugins.call("prepare", task)
            except (Interrupted, ArchiveError):
                raise
            except TaskSkipped as exc:
                skip(task, exc)
            except Exception as exc:
                fail(task, "prepare", exc)
                prepare_failed = True
                break
        if not prepare_failed:
            for task in runnable:
                if reports[id(task)].error is not None:
                    continue  # skipped in prepare
                task_started = time.monotonic()
                try:
                    plugins.call("dump", task)
                    reports[id(task)].status = Status.OK
                except (Interrupted, ArchiveError):
                    raise
                except TaskSkipped as exc:
                    skip(task, exc)
                    shutil.rmtree(task.staging, ignore_errors=True)
                except Exception as exc:
                    fail(task, "dump", exc)
                    shutil.rmtree(task.staging, ignore_errors=True)
                reports[id(task)].duration = time.monotonic() - task_started
    except (Interrupted, ArchiveError) as exc:
        fatal = exc
    finally:
        with guard.shielded():
            service_failed = fatal is not None or any(
                r.status == Status.FAILED for r in reports.values()
            )
            for task in reversed(prepared):
                try:
                    plugins.call("finish", task, failed=service_failed)
                except Exception as exc:
                    fail(task, "finish", exc)
    if fatal is not None:
        raise fatal

    for task in tasks:
        task_report = reports[id(task)]
        if (
            task_report.status == Status.OK
            and task.staging.is_dir()
            and any(task.staging.iterdir())
        ):
            task.stats.add(archive.add_tree(task.staging, task.arcdir))
        task_report.files, task_report.bytes = task.stats.files, task.stats.bytes
        task_report.warnings = list(task.stats.warnings)
        if task_report.status == Status.SKIPPED and task_report.error is None:
            task_report.error = "not run: an earlier stage failed"
    failed = [r for r in report.tasks if r.status != Status.OK]
    report.status = Status.FAILED if failed else Status.OK
    if failed:
        report.error = "; ".join(f"{r.type}: {r.error}" for r in failed if r.error)
    report.files = sum(r.files for r in report.tasks)
    report.bytes = sum(r.bytes for r in report.tasks)
    report.duration = time.monotonic() - started
    return report
