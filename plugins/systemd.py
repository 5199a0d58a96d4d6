"""The ``systemd`` task: stop units in prepare, start the ones that ran in finish."""

from __future__ import annotations

import time
from pathlib import Path

from ..common.errors import CommandError
from . import hookimpl, load_plugin_schema
from ._common import timeout
from .task import Requirement, Task, TaskType


@hookimpl
def pullback_task_types():
    return [
        TaskType(
            "systemd",
            load_plugin_schema("systemd"),
            description="systemd units (stop, start again)",
            requires=(Requirement(("systemctl",), "systemd"),),
            stops_service=True,
            holds_data=False,
        )
    ]


INACTIVE = 3
"""``systemctl is-active``'s exit code for a unit that is not active (or not there); any
other failure is an error (an outside attack saw a template name, ``tpl@.service``,
answer 1 and its running instances left running under the restore, nothing said)."""


def _active(task: Task, unit: str) -> bool:
    """Whether ``unit`` is active. Raises CommandError when systemctl cannot say."""
    try:
        task.run(["systemctl", "is-active", "--quiet", unit], timeout=timeout(task), level=10)
        return True
    except CommandError as exc:
        if exc.exit_code_of_command == INACTIVE:
            return False
        raise


@hookimpl
def pullback_plan(task: Task):
    return [f"stop {', '.join(task.config['units'])} (if active), start them after"]


@hookimpl
def pullback_prepare(task: Task):
    active = [u for u in task.config["units"] if _active(task, u)]
    task.state["stopped"] = []
    for unit in active:
        task.log.info("stopping %s", unit)
        task.stopping(unit)  # first: a failed stop may still have stopped it
        task.run(["systemctl", "stop", unit], timeout=timeout(task))


@hookimpl
def pullback_finish(task: Task, failed: bool):
    errors = []
    for unit in reversed(task.state.pop("stopped", [])):
        task.log.info("starting %s again", unit)
        try:
            task.run(["systemctl", "start", unit], timeout=timeout(task))
        except CommandError as exc:
            errors.append(exc)  # start the others anyway
    if errors:
        raise errors[0]
    if task.config["wait_after_start"]:
        time.sleep(task.config["wait_after_start"])


@hookimpl
def pullback_restore(task: Task, source: Path, target: Path | None, dry_run: bool):
    """Nothing to put back: the units are stopped and started around the restore."""
