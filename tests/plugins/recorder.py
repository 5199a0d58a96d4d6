"""A third-party plugin used by the tests: records every stage call in a file.

Task ``record``: ``log`` names the file that receives one line per call; ``fail`` names
stages that raise; ``sleep_in`` a stage that sleeps (to be interrupted); ``write`` a
file to create in staging during the dump.
"""

import time
from pathlib import Path

from pullback.plugins import TaskError, TaskType, hookimpl

SCHEMA = {
    "type": "object",
    "required": ["log"],
    "additionalProperties": False,
    "properties": {
        "log": {"type": "string"},
        "label": {"type": "string", "default": ""},
        "fail": {"type": "array", "items": {"type": "string"}, "default": []},
        "sleep_in": {"type": "string", "default": ""},
        "write": {"type": "string", "default": ""},
    },
}


@hookimpl
def pullback_task_types():
    return [TaskType("record", SCHEMA, aliases=("recorder",))]


def _note(task, stage, extra=""):
    label = task.config["label"] or task.service
    with open(task.config["log"], "a") as handle:
        handle.write(f"{label}:{stage}{extra}\n")
    if stage == task.config["sleep_in"]:
        time.sleep(60)
    if stage in task.config["fail"] and stage != "validate":
        if task.config["write"] and stage == "dump":
            (task.staging / "half-written.sql").write_text("partial")
        raise TaskError(f"{stage} failed on purpose")


@hookimpl
def pullback_validate(task):
    _note(task, "validate")
    return ["told to fail validation"] if "validate" in task.config["fail"] else []


@hookimpl
def pullback_prepare(task):
    _note(task, "prepare")


@hookimpl
def pullback_dump(task):
    if task.config["write"]:
        (task.staging / task.config["write"]).write_text(f"dump of {task.service}\n")
    _note(task, "dump")


@hookimpl
def pullback_finish(task, failed):
    _note(task, "finish", f" failed={failed}")


@hookimpl
def pullback_restore(task, source, target, dry_run):
    _note(task, "restore", f" source={Path(source).name}")
