"""pullback's plugin system: hook specifications, the task model, the built-in plugins.

Third-party plugins import what they need from here::

    from pullback.plugins import Task, TaskError, TaskType, hookimpl, load_plugin_schema
"""

import pluggy

from ..common.schema import load_schema
from .before_restore import check_hand_over, hand_over
from .task import (
    ProbeResult,
    Requirement,
    RestorePlan,
    Task,
    TaskError,
    TaskPartial,
    TaskSkipped,
    TaskStats,
    TaskType,
)

hookimpl = pluggy.HookimplMarker("pullback")


def load_plugin_schema(name: str) -> dict:
    """The JSON Schema of a built-in plugin's section (``schemas/<name>.yaml``)."""
    return load_schema("pullback.plugins", name)


__all__ = [
    "ProbeResult",
    "Requirement",
    "RestorePlan",
    "Task",
    "TaskError",
    "TaskPartial",
    "TaskSkipped",
    "TaskStats",
    "TaskType",
    "check_hand_over",
    "hand_over",
    "hookimpl",
    "load_plugin_schema",
]
