"""Plugin discovery: built-ins, entry points and plugin directories, registered alike."""

from __future__ import annotations

import textwrap
from pathlib import Path

from pullback.plugins.manager import BUILTIN_PLUGINS, load_plugins

TEST_PLUGINS = Path(__file__).parent.parent / "plugins"


def test_builtins_declare_their_tasks():
    plugins = load_plugins(entry_points=False)
    assert {"files", "command"} <= set(plugins.known_keys())
    assert not plugins.errors
    assert all(plugins.pm.get_plugin(name) is not None for name in BUILTIN_PLUGINS)


def test_plugin_directory_file_is_registered_with_its_aliases():
    plugins = load_plugins([TEST_PLUGINS], entry_points=False)
    assert plugins.lookup("record").name == "record"
    assert plugins.lookup("recorder").name == "record"
    owner = plugins.types["record"][1]

    def implements(stage: str) -> bool:
        hook = getattr(plugins.pm.hook, f"pullback_{stage}")
        return any(impl.plugin is owner for impl in hook.get_hookimpls())

    assert implements("dump")
    assert not implements("plan")


def test_entry_point_plugin_is_registered(tmp_path, monkeypatch):
    (tmp_path / "pullback_redis_demo.py").write_text(
        textwrap.dedent("""\
        from pullback.plugins import TaskType, hookimpl

        @hookimpl
        def pullback_task_types():
            return [TaskType("redis")]
        """)
    )
    dist = tmp_path / "pullback_redis_demo-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: pullback-redis-demo\nVersion: 1.0\n"
    )
    (dist / "entry_points.txt").write_text("[pullback]\nredis = pullback_redis_demo\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    plugins = load_plugins()
    assert plugins.lookup("redis") is not None


def test_broken_plugin_file_is_reported_and_others_still_load(tmp_path):
    (tmp_path / "broken.py").write_text("def oops(:\n")
    (tmp_path / "typo.py").write_text(
        textwrap.dedent("""\
        from pullback.plugins import hookimpl

        @hookimpl
        def pullback_dumpp(task):
            pass
        """)
    )
    plugins = load_plugins([tmp_path, tmp_path / "missing"], entry_points=False)
    joined = "\n".join(plugins.errors)
    assert f"plugin {tmp_path / 'broken.py'} failed to load: SyntaxError" in joined
    assert "pullback_dumpp" in joined
    assert f"plugin directory {tmp_path / 'missing'} does not exist" in joined
    assert plugins.lookup("files") is not None


def test_a_task_key_claimed_twice_is_an_error(tmp_path):
    (tmp_path / "dup.py").write_text(
        textwrap.dedent("""\
        from pullback.plugins import TaskType, hookimpl

        @hookimpl
        def pullback_task_types():
            return [TaskType("files")]
        """)
    )
    plugins = load_plugins([tmp_path], entry_points=False)
    assert any(
        "task 'files' is already handled by pullback.plugins.files" in e for e in plugins.errors
    )
    assert plugins.pm.get_name(plugins.types["files"][1]) == "pullback.plugins.files"
