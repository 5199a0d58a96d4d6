"""The stages take what a plugin gives as it is meant: a task type's name never makes a
staging directory outside its parent, a validate hook's string is one problem."""

from __future__ import annotations

import pytest

from pullback.client.services import load_service
from pullback.client.stages import make_tasks, staging_dir, validate_service
from pullback.common.errors import PullbackError
from pullback.plugins.manager import load_plugins

SOURCE = """\
from pullback.plugins import TaskType, hookimpl

@hookimpl
def pullback_task_types():
    return [TaskType("baddemo")]

@hookimpl
def pullback_validate(task):
    return "the host is missing"
"""


@pytest.mark.parametrize("name", ["..", ".", "", "/etc", "a/../..", "../x", "x\0"])
def test_a_staging_directory_never_leaves_its_parent(tmp_path, name):
    with pytest.raises(PullbackError, match="no directory name"):
        staging_dir(tmp_path / "staging", name)
    assert staging_dir(tmp_path / "staging", "redis") == tmp_path / "staging" / "redis"


# -- 6: validate returning a string -----------------------------------------------------


def test_a_validate_hook_returning_a_string_is_one_problem(tmp_path):
    directory = tmp_path / "plugins"
    directory.mkdir()
    (directory / "baddemo.py").write_text(SOURCE)
    plugins = load_plugins([directory], entry_points=False)
    service_file = tmp_path / "svc" / "service.yaml"
    service_file.parent.mkdir()
    service_file.write_text("service: {name: svc}\nbaddemo: {}\n")
    service = load_service(service_file, plugins)
    tasks = make_tasks(service, tmp_path / "staging", None, dry_run=True)
    assert validate_service(service, plugins, tasks) == ["baddemo: the host is missing"]
