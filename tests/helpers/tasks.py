"""A plugin task as the client makes one, for tests that call a plugin's hooks or helpers
directly (a real runner, a logger, a staging directory in the test's tmp)."""

from __future__ import annotations

from pathlib import Path

from pullback.common.log import get_logger
from pullback.common.runner import Runner
from pullback.plugins.task import Task


def task_for(task_type: str, config: dict, tmp_path: Path, service: str = "db", **more) -> Task:
    """A ``task_type`` task of the service ``service`` with ``config`` (its section, as
    the schema's defaults would leave it); ``more`` as Task's other fields (dry_run)."""
    log = get_logger("test")
    return Task(
        type=task_type,
        key=task_type,
        config=config,
        service=service,
        service_file=tmp_path / "service.yaml",
        staging=tmp_path / "staging",
        runner=Runner(log),
        log=log,
        **more,
    )
