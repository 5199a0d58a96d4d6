"""Whether a restore stops the application first: a task type's own word
(``restores_below_target``), so a third-party plugin can say it too."""

from pathlib import Path

from pullback.client.restore import RestoreOptions, _stops_first
from pullback.plugins.manager import load_plugins
from pullback.plugins.task import TaskType

PLUGINS = load_plugins(entry_points=False)
BELOW = Path("/srv/check")


def kind(name: str) -> TaskType:
    found = PLUGINS.lookup(name)
    assert found is not None, name
    return found


def options(**given) -> RestoreOptions:
    return RestoreOptions(service="shop", source=Path("/tmp/snap"), **given)


def test_the_built_ins_that_restore_below_target_say_so_and_command_does_not():
    below = {name for name, (t, _) in PLUGINS.types.items() if t.restores_below_target}
    assert below == {
        "files", "docker", "sqlite", "univention", "postgresql", "mariadb", "mysql",
        "mongodb", "influxdb",
    }  # fmt: skip
    assert not kind("command").restores_below_target


def test_below_target_the_application_keeps_running_only_when_every_task_says_so():
    files, postgresql, command = kind("files"), kind("postgresql"), kind("command")
    assert not _stops_first(options(target=BELOW), [files, postgresql])
    assert _stops_first(options(target=BELOW), [files, command])
    assert _stops_first(options(target=BELOW, replace=True), [files])
    assert _stops_first(options(), [files])
    assert _stops_first(options(target=BELOW), [])  # only stops and starts (systemd)


def test_a_third_party_type_is_stopped_for_unless_it_declares_otherwise():
    theirs = TaskType("redis")
    assert _stops_first(options(target=BELOW), [kind("files"), theirs])
    careful = TaskType("redis", restores_below_target=True)
    assert not _stops_first(options(target=BELOW), [kind("files"), careful])
