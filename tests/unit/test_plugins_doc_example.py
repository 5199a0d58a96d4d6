"""The plugin of docs/plugins.md loads as written and its restore hook does what the page
says (beside the live file, below --target, or over it keeping the live one)."""

from __future__ import annotations

import logging
import re
import sys
from pathlib import Path

import pytest

from pullback.common.runner import Runner
from pullback.plugins import RestorePlan, Task
from pullback.plugins.manager import load_plugins

DOC = Path(__file__).resolve().parents[2] / "docs" / "plugins.md"


@pytest.fixture
def plugins(tmp_path):
    """The plugin set with the page's first ``python`` block as a plugin_dirs file."""
    block = re.search(r"```python\n(.*?)```", DOC.read_text(), re.S)
    assert block is not None
    directory = tmp_path / "plugins"
    directory.mkdir()
    (directory / "redis.py").write_text(block.group(1))
    try:
        yield load_plugins([directory], entry_points=False)
    finally:
        sys.modules.pop("pullback_local_plugin_redis", None)


def _task(plugins, tmp_path: Path, dry_run: bool = False) -> Task:
    task_type = plugins.lookup("redis")
    config = {"rdb_file": str(tmp_path / "live" / "dump.rdb"), "socket": "/nonexistent"}
    log = logging.getLogger("test")
    return Task(
        type=task_type.name,
        key="redis",
        config=config,
        service="cache",
        service_file=tmp_path / "service.yaml",
        staging=tmp_path / "staging",
        runner=Runner(log),
        log=log,  # type: ignore[arg-type]
        dry_run=dry_run,
    )


@pytest.fixture
def snapshot(tmp_path) -> Path:
    source = tmp_path / "snapshot" / "services" / "cache" / "redis"
    source.mkdir(parents=True)
    (source / "dump.rdb").write_bytes(b"snapshot")
    (tmp_path / "live").mkdir()
    (tmp_path / "live" / "dump.rdb").write_bytes(b"live")
    return source


def _restore(plugins, task: Task, source: Path, target: Path | None, plan: RestorePlan):
    plugins.call("restore", task, source=source, target=target, dry_run=plan.dry_run, plan=plan)


def test_the_example_loads_and_declares_its_task_type(plugins):
    assert plugins.errors == []
    task_type = plugins.lookup("redis")
    assert task_type is not None
    assert task_type.requires[0].programs == ("redis-cli",)


def test_the_example_restores_beside_the_live_file(plugins, tmp_path, snapshot):
    plan = RestorePlan(stamp="20260101T000000Z")
    _restore(plugins, _task(plugins, tmp_path), snapshot, None, plan)
    live = tmp_path / "live"
    assert (live / "dump.rdb").read_bytes() == b"live"
    assert (live / "dump.rdb.restored-20260101T000000Z").read_bytes() == b"snapshot"
    assert len(plan.notes) == 1


def test_the_example_restores_below_a_target(plugins, tmp_path, snapshot):
    target = tmp_path / "target"
    _restore(plugins, _task(plugins, tmp_path), snapshot, target, RestorePlan(stamp="S"))
    assert (target / str(tmp_path / "live" / "dump.rdb").lstrip("/")).read_bytes() == b"snapshot"
    assert (tmp_path / "live" / "dump.rdb").read_bytes() == b"live"


def test_the_example_replaces_keeping_the_live_file(plugins, tmp_path, snapshot):
    plan = RestorePlan(stamp="S", replace=True)
    _restore(plugins, _task(plugins, tmp_path), snapshot, None, plan)
    assert (tmp_path / "live" / "dump.rdb").read_bytes() == b"snapshot"
    assert (tmp_path / "live" / "dump.rdb.before-restore-S").read_bytes() == b"live"
    assert any(s.startswith("DESTRUCTIVE: ") for s in plan.steps)


def test_the_example_changes_nothing_in_a_dry_run(plugins, tmp_path, snapshot):
    plan = RestorePlan(stamp="S", replace=True, dry_run=True)
    _restore(plugins, _task(plugins, tmp_path, dry_run=True), snapshot, None, plan)
    assert sorted(p.name for p in (tmp_path / "live").iterdir()) == ["dump.rdb"]
    assert (tmp_path / "live" / "dump.rdb").read_bytes() == b"live"
    assert len(plan.steps) == 2
