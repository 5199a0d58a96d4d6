"""Service discovery and service.yaml validation (docs/architecture.md, *Service files*)."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from pullback.client.services import discover, find_service_files, load_service
from pullback.plugins.manager import load_plugins


@pytest.fixture(scope="module")
def plugins():
    return load_plugins(entry_points=False)


def put(root: Path, rel: str, text: str, mode: int = 0o600) -> Path:
    path = root / rel / "service.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    path.chmod(mode)
    return path


def test_both_layouts_are_found_and_hidden_dirs_skipped(tmp_path):
    a = put(tmp_path, "alpha", "service: {name: a}\nfiles: {paths: [/etc/hostname]}\n")
    b = put(tmp_path, "docker/beta", "service: {name: b}\nfiles: {paths: [/etc/hostname]}\n")
    put(tmp_path, ".old/gamma", "service: {name: g}\n")
    put(tmp_path, "a/b/c/too-deep", "service: {name: d}\n")
    assert find_service_files([tmp_path]) == [a, b]


def test_backup_suite_file_parses_unchanged(tmp_path, plugins):
    # The example of the original design, written for backup-suite. Tasks without a plugin are
    # reported per task; the file itself is understood.
    path = put(
        tmp_path,
        "docker/tandoor",
        """\
        service:
          name: tandoor_recipes
        docker:                      # every top-level key but `service` is a task
          docker_compose_path: /opt/tandoor/docker-compose.yml
          wait_after_restart: 30
        postgresql: {host: localhost, user: tandoor, database: tandoor, port: 5432}
        files:
          paths: [/etc/hostname]
          exclude: ["cache/", "*.log"]
        """,
    )
    service = load_service(path, plugins)
    assert service.name == "tandoor_recipes"
    messages = [str(p) for p in service.problems]
    for line, task in ((3, "docker"), (6, "postgresql")):
        if plugins.lookup(task) is None:
            expected = f"task '{task}' is not available: no installed plugin handles it"
            assert f"{path}:{line}: {task}: {expected}" in messages
    assert not any("files" in m for m in messages)


def test_backup_suite_spellings_are_understood(tmp_path, plugins):
    """What backup-suite's shipped files use: the name service.yml, service.type,
    pin_images_to_digest, and the InfluxDB token in the file itself (a secret: masked)."""
    path = tmp_path / "other/pihole/service.yml"
    path.parent.mkdir(parents=True)
    path.write_text(
        textwrap.dedent(
            """            service: {name: pihole, type: other}
            docker: {docker_compose_path: /opt/ph/compose.yml, pin_images_to_digest: true}
            influxdb: {host: "http://localhost:8086", token: s3cr3t-token-value, org: home}
            """
        )
    )
    path.chmod(0o600)
    assert find_service_files([tmp_path]) == [path]
    service = load_service(path, plugins)
    assert service.problems == [] and service.name == "pihole"
    docker, influx = service.tasks
    assert docker.config["pin_images_to_digest"] is True
    assert influx.config["token"] == "s3cr3t-token-value"
    assert "s3cr3t-token-value" in service.secrets  # masked wherever it could appear


def test_unknown_task_names_file_line_and_suggests(tmp_path, plugins):
    path = put(tmp_path, "x", "service:\n  name: x\nfile:\n  paths: [/etc]\n")
    service = load_service(path, plugins)
    assert [str(p) for p in service.problems] == [
        f"{path}:3: file: unknown task 'file' (did you mean 'files'?)"
    ]


def test_section_errors_carry_the_task_prefix(tmp_path, plugins):
    path = put(
        tmp_path,
        "x",
        """\
        service:
          name: x
        files:
          paths: [relative]
          exclude: "*.log"
        """,
    )
    messages = [str(p) for p in load_service(path, plugins).problems]
    assert messages == [
        f"{path}:4: files.paths[0]: expected an absolute path without . or .. (names of at "
        "most 255 characters), got 'relative'",
        f"{path}:5: files.exclude: expected a list, got a string '*.log'",
    ]


def test_missing_name_and_empty_file(tmp_path, plugins):
    path = put(tmp_path, "noname", "service: {}\nfiles: {paths: [/etc]}\n")
    assert [str(p) for p in load_service(path, plugins).problems] == [
        f"{path}:1: service.name: missing (this key is required)"
    ]
    empty = put(tmp_path, "empty", "")
    service = load_service(empty, plugins)
    assert service.name == "empty"
    assert "the file is empty" in str(service.problems[0])


def test_service_without_tasks(tmp_path, plugins):
    path = put(tmp_path, "lonely", "service: {name: lonely}\n")
    assert "no tasks" in str(load_service(path, plugins).problems[0])


def test_duplicate_service_names(tmp_path, plugins):
    put(tmp_path, "one", "service: {name: same}\nfiles: {paths: [/etc/hostname]}\n")
    second = put(tmp_path, "two", "service: {name: same}\nfiles: {paths: [/etc/hostname]}\n")
    services = discover([tmp_path], plugins)
    assert not services[0].problems
    assert str(services[1].problems[0]).startswith(f"{second}:1: service.name: service name 'same'")


def test_world_readable_secret_is_refused(tmp_path, plugins):
    text = 'service: {name: s}\ncommand:\n  dump: ["true"]\n  environment: {TOKEN: abcdef}\n'
    path = put(tmp_path, "s", text, mode=0o644)
    messages = [str(p) for p in load_service(path, plugins).problems]
    assert messages == [
        f"{path}:4: command.environment: holds a secret but the file is world-readable "
        f"(mode 0644); run: chmod o-rwx {path}"
    ]
    path.chmod(0o640)
    service = load_service(path, plugins)
    assert not service.problems
    assert service.secrets == ["abcdef"]


def test_secret_values_never_appear_in_validation_errors(tmp_path, plugins):
    text = "service: {name: s}\ncommand:\n  environment: {TOKEN: [hunter2-secret]}\n"
    path = put(tmp_path, "s", text)
    messages = " ".join(str(p) for p in load_service(path, plugins).problems)
    assert "command.environment.TOKEN" in messages
    assert "hunter2-secret" not in messages


def test_disabled_service_is_loaded_but_marked(tmp_path, plugins):
    path = put(tmp_path, "p", "service: {name: paused, enabled: false}\nfiles: {paths: [/etc]}\n")
    service = load_service(path, plugins)
    assert not service.problems and service.enabled is False


def test_yaml_booleans_get_a_hint(tmp_path, plugins):
    path = put(tmp_path, "off", "service: {name: off}\nfiles: {paths: [/etc]}\n")
    assert [str(p) for p in load_service(path, plugins).problems] == [
        f"{path}:1: service.name: expected a string, got a boolean False "
        "(YAML reads yes/no/on/off as true/false: put the value in quotes)"
    ]
