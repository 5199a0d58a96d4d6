"""A broken third-party plugin, seen by ``pullback-client run`` and ``check``: the
services it would handle fail, every other service is archived, nothing crashes."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from tests.helpers.client import ClientSandbox

REDIS = """\
from pullback.plugins import TaskType, hookimpl

@hookimpl
def pullback_task_types():
    return [TaskType("redis", SCHEMA)]

@hookimpl
def pullback_dump(task):
    (task.staging / "dump.rdb").write_text("redis")
"""


def redis_plugin(schema: str = '{"type": "object"}') -> str:
    return REDIS.replace("SCHEMA", schema)


@pytest.fixture
def box(tmp_path) -> ClientSandbox:
    data = tmp_path / "data"
    data.mkdir()
    (data / "config.ini").write_text("[app]\n")
    box = ClientSandbox(tmp_path / "client")
    box.add_service("app", f"service: {{name: app}}\nfiles: {{paths: [{data}]}}\n")
    box.add_service("cache", "service: {name: cache}\nredis: {}\n")
    return box


def install(site: Path, dist: str, source: str) -> None:
    """The distribution ``dist`` with the module and the entry point of that name."""
    site.mkdir(exist_ok=True)
    (site / f"{dist}.py").write_text(source)
    info = site / f"{dist}-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(f"[pullback]\n{dist} = {dist}\n")


def statuses(box: ClientSandbox) -> dict[str, str]:
    [archive] = box.published()
    return {s["name"]: s["status"] for s in box.sidecar(archive)["services"]}


def test_a_distribution_that_fails_to_import_costs_only_its_own_tasks(box, tmp_path):
    site = tmp_path / "site"
    install(site, "pb_aaa_broken", "import a_library_not_installed\n")
    install(site, "pb_redis", redis_plugin())
    env = {"PYTHONPATH": str(site)}
    result = box.cli("run", env=env)
    assert result.returncode == 0, result.stderr
    assert statuses(box) == {"app": "ok", "cache": "ok"}
    said = (
        "entry point 'pb_aaa_broken' (pb_aaa_broken) of distribution pb_aaa_broken 1.0 "
        "failed to load: ModuleNotFoundError: No module named 'a_library_not_installed'"
    )
    assert result.stderr.count(said) == 1
    check = box.cli("check", env=env)
    assert check.returncode == 2
    assert said in check.stdout.splitlines()  # not under client.yaml's plugin_dirs:
    assert "plugin_dirs" not in check.stdout


@pytest.mark.parametrize(
    "schema",
    ['{"type": "objekt"}', '{"properties": ["a"]}', '"object"', "{'properties': {'a': True}}"],
)
def test_a_task_type_with_an_invalid_schema_fails_its_services_alone(box, tmp_path, schema):
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "redis.py").write_text(redis_plugin(schema))
    box.write_config(plugin_dirs=[str(plugins)])
    check = box.cli("check")
    assert check.returncode == 2, check.stderr
    assert f"plugin {plugins / 'redis.py'}: task 'redis': its schema is" in check.stdout
    result = box.cli("run")
    assert result.returncode == 1, result.stderr
    assert statuses(box) == {"app": "ok", "cache": "failed"}
    assert "Traceback" not in result.stderr


def test_a_task_key_two_plugins_declare_fails_its_services_in_run_too(box, tmp_path):
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "redis_a.py").write_text(redis_plugin())
    (plugins / "redis_b.py").write_text(redis_plugin())
    box.write_config(plugin_dirs=[str(plugins)])
    declared = (
        f"task 'redis' is declared by {plugins / 'redis_a.py'} and {plugins / 'redis_b.py'}: "
        "none of them handles it"
    )
    check = box.cli("check")
    assert check.returncode == 2
    assert declared in check.stdout.splitlines()
    result = box.cli("run")
    assert result.returncode == 1, result.stderr
    assert declared in result.stderr
    assert statuses(box) == {"app": "ok", "cache": "failed"}


def test_a_task_name_that_is_a_path_is_refused_and_nothing_outside_is_touched(box, tmp_path):
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "keep").write_text("precious")
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "escape.py").write_text(
        textwrap.dedent(f"""\
        from pullback.plugins import TaskType, hookimpl

        @hookimpl
        def pullback_task_types():
            return [TaskType("../../../../../../../../../..{victim}")]

        @hookimpl
        def pullback_dump(task):
            raise RuntimeError("fail, so the staging directory is removed")
        """)
    )
    box.add_service(
        "esc", f"service: {{name: esc}}\n'../../../../../../../../../..{victim}': {{}}\n"
    )
    box.write_config(plugin_dirs=[str(plugins)])
    result = box.cli("run")
    assert result.returncode == 1, result.stderr
    assert "task name" in result.stderr and "refused" in result.stderr
    assert (victim / "keep").read_text() == "precious"
    assert statuses(box)["esc"] == "failed"
