"""The ``systemd`` task: stop units in prepare, start the ones that ran in finish."""

from __future__ import annotations

import tempfile
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


def _show(task: Task, prop: str, units: list[str]) -> list[str] | None:
    """``systemctl show --property=PROP`` of ``units``: each one's value, in order, or
    None when systemctl does not answer one line per unit."""
    argv = ["systemctl", "show", f"--property={prop}", *units]
    with tempfile.TemporaryFile() as answer:
        task.run(argv, stdout=answer, timeout=timeout(task), level=10)
        answer.seek(0)
        out = answer.read(1 << 20).decode(errors="replace")
    values = [line.split("=", 1)[1] for line in out.splitlines() if line.startswith(f"{prop}=")]
    return values if len(values) == len(units) else None


@hookimpl
def pullback_validate(task: Task):
    """A unit systemd does not know (a typo: ``postgressql.service``) is a problem: it
    is never active, so the run would stop nothing, and say nothing (an outside attack
    saw every night's archive taken with the database running); so is one that could be
    stopped but not started again (running, but masked or with a broken setting:
    :data:`LOAD_PROBLEMS`)."""
    units = list(task.config["units"])
    try:
        states = _show(task, "LoadState", units)
    except CommandError:
        return []  # (no systemd running here, a chroot: the run's stop says what is wrong)
    if states is None:
        return []
    return [
        f"units: {unit} {LOAD_PROBLEMS[state]}"
        for unit, state in zip(units, states, strict=True)
        if state == "not-found" or (state in LOAD_PROBLEMS and _active(task, unit))
    ]


LOAD_PROBLEMS = {
    "not-found": (
        "is not a unit systemd knows (LoadState=not-found): nothing would be stopped for "
        "it; check its name (systemctl list-units --all)"
    ),
    "masked": (
        "is masked (LoadState=masked): a run could stop it and never start it again; "
        "unmask it (systemctl unmask) or leave it out of units"
    ),
    "bad-setting": (
        "has a setting systemd cannot use (LoadState=bad-setting): it would not start "
        "again after the run; systemctl status says which"
    ),
    "error": (
        "could not be loaded (LoadState=error): it would not start again after the run; "
        "systemctl status says why"
    ),
}
"""What each LoadState a run cannot stop and start again means (``loaded``, and the
states of units systemd merged or stubbed, are fine). A unit that is not found is a
problem always (a typo); one of the others only while it runs (a run stops active
units only: a masked, retired unit left in ``units`` stops nothing)."""


STOPPED_WITH = ("RequiredBy", "RequisiteOf", "BoundBy", "ConsistsOf")
"""The properties naming the units systemd stops with a unit (its stop propagates to
them: src/core/unit-dependency-atom.c)."""

MAX_DEPENDENTS = 100
"""The units followed from one unit stopped (systemd stops each unit that requires it,
and theirs, in turn)."""


def _dependents(task: Task, unit: str) -> list[str]:
    """The active units that stopping ``unit`` stops too (``RequiredBy=``,
    ``RequisiteOf=``, ``BoundBy=``, ``ConsistsOf=``, and theirs), nearest last: nginx
    with ``Requires=`` php-fpm goes down with it, and starting php-fpm again does not
    start nginx. Targets are followed but not returned: starting one again would start
    all it wants, units stopped on purpose too (a service ``PartOf=`` a target that
    requires ``unit`` is returned)."""
    found: list[str] = []
    seen = {unit}
    todo = [unit]
    while todo and len(seen) < MAX_DEPENDENTS:
        current = todo.pop(0)
        for prop in STOPPED_WITH:
            for name in (_show(task, prop, [current]) or [""])[0].split():
                if name in seen or not _active(task, name):
                    continue
                seen.add(name)
                todo.append(name)
                if not name.endswith(".target"):
                    found.append(name)
    return list(reversed(found))


@hookimpl
def pullback_plan(task: Task):
    return [f"stop {', '.join(task.config['units'])} (if active), start them after"]


@hookimpl
def pullback_prepare(task: Task):
    active = [u for u in task.config["units"] if _active(task, u)]
    task.state["stopped"] = []
    for unit in (u for u in active if u not in task.state["stopped"]):
        going = [u for u in _dependents(task, unit) if u not in task.state["stopped"]]
        if going:
            task.log.info("stopping %s (and with it %s)", unit, ", ".join(going))
        else:
            task.log.info("stopping %s", unit)
        task.stopping(*going, unit)  # first: a failed stop may still have stopped them
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
