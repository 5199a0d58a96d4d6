"""Loading third-party plugins: one broken plugin, task type or name never costs the
others (plugins/manager.py), and the stages take what a plugin returns as meant."""

from __future__ import annotations

import logging
import sys
import textwrap
from pathlib import Path

import pytest

from pullback.client.services import load_service
from pullback.common import schema as schemas
from pullback.plugins import manager
from pullback.plugins.manager import BUILTIN_PLUGINS, load_plugins

HEADER = "from pullback.plugins import Requirement, TaskType, hookimpl\n"


def plugin_source(body: str) -> str:
    return HEADER + textwrap.dedent(body)


def declaring(*task_types: str) -> str:
    """A plugin's source declaring ``task_types`` (Python expressions)."""
    return plugin_source(f"""
        @hookimpl
        def pullback_task_types():
            return [{", ".join(task_types)}]
        """)


def install(root: Path, dist: str, module: str, source: str, entry: str | None = None) -> None:
    """A distribution ``dist`` (a dist-info on ``root``) whose entry point ``entry`` in
    the group ``pullback`` is the module ``module`` (written with ``source``)."""
    (root / f"{module}.py").write_text(source)
    info = root / f"{dist.replace('-', '_')}-1.0.dist-info"  # as a wheel names it
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(f"[pullback]\n{entry or module} = {module}\n")


@pytest.fixture
def site(tmp_path, monkeypatch):
    """A directory on sys.path for the distributions a test installs."""
    root = tmp_path / "site"
    root.mkdir()
    monkeypatch.syspath_prepend(str(root))
    yield root
    for name in [m for m in sys.modules if m.startswith("pb_")]:  # the next test's own
        del sys.modules[name]


def local(tmp_path: Path, name: str, source: str) -> Path:
    directory = tmp_path / "plugins"
    directory.mkdir(exist_ok=True)
    (directory / f"{name}.py").write_text(source)
    return directory


# -- 1: one broken installed plugin -----------------------------------------------------


def test_a_distribution_that_fails_to_import_costs_only_itself(site, caplog):
    install(site, "pb-aaa-broken", "pb_aaa_broken", "import a_library_not_installed\n")
    install(site, "pb-redis", "pb_redis", declaring('TaskType("redis")'))
    install(site, "pb-exits", "pb_exits", "raise SystemExit(3)\n")
    with caplog.at_level(logging.ERROR):
        plugins = load_plugins()
    assert plugins.lookup("redis") is not None
    assert plugins.lookup("files") is not None
    joined = "\n".join(plugins.errors)
    assert (
        "entry point 'pb_aaa_broken' (pb_aaa_broken) of distribution pb-aaa-broken 1.0 "
        "failed to load: ModuleNotFoundError: No module named 'a_library_not_installed'"
    ) in joined
    assert "distribution pb-exits 1.0 failed to load: SystemExit: 3" in joined
    assert not plugins.local_errors  # not client.yaml's plugin_dirs: to mend
    assert sum("pb_aaa_broken" in r.getMessage() for r in caplog.records) == 1


def test_an_installed_plugin_whose_hook_arguments_do_not_match_is_dropped_alone(site):
    install(
        site,
        "pb-typo",
        "pb_typo",
        plugin_source("""
            @hookimpl
            def pullback_task_types():
                return [TaskType("typo")]

            @hookimpl
            def pullback_validate(tsk):
                return []
            """),
    )
    install(site, "pb-redis", "pb_redis", declaring('TaskType("redis")'))
    plugins = load_plugins()
    assert plugins.lookup("redis") is not None
    assert plugins.lookup("typo") is None
    assert plugins.pm.get_plugin("pb_typo") is None  # nothing of it left registered
    assert any(
        "entry point 'pb_typo' (pb_typo) of distribution pb-typo 1.0 failed to register: "
        "PluginValidationError"
        in e
        and "tsk" in e
        for e in plugins.errors
    )


def test_a_local_plugin_whose_hook_arguments_do_not_match_leaves_nothing(tmp_path):
    directory = local(
        tmp_path,
        "typo",
        plugin_source("""
            @hookimpl
            def pullback_task_types():
                return [TaskType("typo")]

            @hookimpl
            def pullback_validate(tsk):
                return []
            """),
    )
    plugins = load_plugins([directory], entry_points=False)
    assert plugins.lookup("typo") is None
    assert plugins.pm.get_plugin(str(directory / "typo.py")) is None
    assert [e for e in plugins.errors if "typo.py failed to load: PluginValidationError" in e]
    assert plugins.local_errors == plugins.errors


def test_two_distributions_with_one_entry_point_name_are_an_error_naming_both(site):
    install(site, "pb-cache-a", "pb_cache_a", declaring('TaskType("cache_a")'), entry="cache")
    install(site, "pb-cache-b", "pb_cache_b", declaring('TaskType("cache_b")'), entry="cache")
    plugins = load_plugins()
    [error] = [e for e in plugins.errors if "'cache'" in e]
    assert "pb-cache-a 1.0" in error and "pb-cache-b 1.0" in error
    assert (plugins.lookup("cache_a") is None) != (plugins.lookup("cache_b") is None)


# -- 2: invalid schemas -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("schema", "said"),
    [
        ('{"type": "objekt"}', "its schema is invalid"),
        ('{"type": "object", "properties": ["a"]}', "its schema is invalid"),
        ('"object"', "its schema is str, expected a mapping"),
        ('{"type": "object", "properties": {"a": True}}', "properties.a is True"),
        ('{"$schema": ["x"]}', "its schema is invalid"),
        (
            '{"type": "object", "properties": {"timeout": {"type": "string", "default": 5}}}',
            "properties.timeout.default: 5 is not of type 'string'",
        ),
        (
            '{"properties": {"a": {"properties": {"n": {"minimum": 1, "default": 0}}}}}',
            "properties.a.properties.n.default: 0 is less than the minimum of 1",
        ),
    ],
)
def test_a_task_type_with_an_invalid_schema_is_refused_naming_plugin_and_type(
    tmp_path, schema, said
):
    directory = local(tmp_path, "bad", declaring(f'TaskType("bad", {schema})', 'TaskType("good")'))
    plugins = load_plugins([directory], entry_points=False)
    assert plugins.lookup("bad") is None
    assert plugins.lookup("good") is not None
    [error] = plugins.errors
    assert error.startswith(f"plugin {directory / 'bad.py'}: task 'bad': ")
    assert said in error


def test_a_default_below_a_ref_into_the_whole_schema_is_not_judged_alone(tmp_path):
    schema = (
        '{"$defs": {"d": {"type": "string"}}, "type": "object",'
        ' "properties": {"a": {"$ref": "#/$defs/d", "default": "x"}}}'
    )
    directory = local(tmp_path, "reffed", declaring(f'TaskType("reffed", {schema})'))
    plugins = load_plugins([directory], entry_points=False)
    assert plugins.errors == []
    assert plugins.lookup("reffed") is not None


def test_the_built_in_schemas_are_valid_ones():
    """Their schemas are not checked on every load: this checks them."""
    jsonschema = schemas.jsonschema_module()
    plugins = load_plugins(entry_points=False)
    for task_type, plugin in plugins.types.values():
        assert plugins.pm.get_name(plugin) in BUILTIN_PLUGINS
        jsonschema.validators.validator_for(task_type.schema).check_schema(task_type.schema)
        assert (
            manager._default_problem(
                task_type.schema, jsonschema.validators.validator_for(task_type.schema)
            )
            is None
        ), task_type.name


def test_a_service_of_a_refused_task_type_is_broken_alone(tmp_path):
    directory = local(tmp_path, "bad", declaring('TaskType("bad", {"type": "objekt"})'))
    plugins = load_plugins([directory], entry_points=False)
    service_file = tmp_path / "svc" / "service.yaml"
    service_file.parent.mkdir()
    service_file.write_text("service: {name: svc}\nbad: {x: 1}\n")
    service = load_service(service_file, plugins)  # no jsonschema UnknownType
    assert service.broken
    said = str(service.problems[0])
    assert "task 'bad' is not available: plugin " in said, said  # why, not "unknown"
    assert "objekt" in said, said


# -- 3: task type names -----------------------------------------------------------------


@pytest.mark.parametrize(
    "declared",
    [
        'TaskType("../../../../tmp/x")',
        'TaskType("a/b")',
        'TaskType("..")',
        'TaskType("Redis")',
        'TaskType("")',
        'TaskType("x" * 65)',
        'TaskType("ok", aliases=("../up",))',
        'TaskType("ok", aliases="mysqlx")',
        "TaskType(7)",
        '"redis"',
        'TaskType("ok", requires=("redis-cli",))',
    ],
)
def test_a_task_type_with_a_bad_name_is_refused(tmp_path, declared):
    directory = local(tmp_path, "names", declaring(declared, 'TaskType("good-one_2")'))
    plugins = load_plugins([directory], entry_points=False)
    assert plugins.known_keys() == sorted(
        [*load_plugins(entry_points=False).known_keys(), "good-one_2"]
    )
    [error] = plugins.errors
    assert error.startswith(f"plugin {directory / 'names.py'}: ")


def test_the_built_in_names_and_aliases_pass():
    plugins = load_plugins(entry_points=False)
    assert not plugins.errors
    assert {"files", "mysql", "mariadb", "postgresql", "univention"} <= set(plugins.types)


# -- 4: a task key declared twice -------------------------------------------------------


def test_a_key_two_third_party_plugins_declare_is_handled_by_neither(tmp_path):
    directory = local(tmp_path, "one", declaring('TaskType("redis", aliases=("rds",))'))
    local(tmp_path, "two", declaring('TaskType("keydb", aliases=("redis",))'))
    plugins = load_plugins([directory], entry_points=False)
    assert plugins.lookup("redis") is None
    assert plugins.lookup("rds") is None  # its type lost its own name: nothing routes it
    assert plugins.lookup("keydb").name == "keydb"  # lost an alias only
    assert [e for e in plugins.errors if e.startswith("task 'redis' is declared by ")] == [
        f"task 'redis' is declared by {directory / 'one.py'} and {directory / 'two.py'}: "
        "none of them handles it"
    ]
    assert plugins.known_keys() == sorted([*load_plugins(entry_points=False).known_keys(), "keydb"])


def test_a_built_in_key_stays_built_in(site, tmp_path):
    install(site, "pb-files", "pb_files", declaring('TaskType("files")'))
    directory = local(tmp_path, "mysql", declaring('TaskType("mysql")'))
    plugins = load_plugins([directory])
    assert plugins.pm.get_name(plugins.types["files"][1]) == "pullback.plugins.files"
    assert plugins.pm.get_name(plugins.types["mysql"][1]) == "pullback.plugins.mariadb"
    assert "plugin pb_files: task 'files' is already handled by pullback.plugins.files" in (
        "\n".join(plugins.errors)
    )
    assert f"plugin {directory / 'mysql.py'}: task 'mysql' is already handled by " in (
        "\n".join(plugins.errors)
    )
