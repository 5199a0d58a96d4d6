"""How a run and a restore treat a third-party plugin that misbehaves (an outside plugin
author's walk): its words are masked and bounded, a task that failed in the snapshot or
that its plugin cannot restore is never said restored. The plugins are real files in a
client's ``plugin_dirs``."""

from __future__ import annotations

import json
import textwrap

import pytest

from tests.helpers.client import ClientSandbox

pytestmark = pytest.mark.integration

PLUGIN = """\
from pullback.plugins import TaskType, hookimpl
from pullback.plugins.task import TaskError

SCHEMA = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "secret": {"type": "string", "x-secret": True},
        "how": {"type": "string", "default": "ok"},
        "tree": {"type": "string"},
    },
}


@hookimpl
def pullback_task_types():
    return [TaskType("demo", SCHEMA)]


@hookimpl
def pullback_dump(task):
    how = task.config.get("how", "ok")
    (task.staging / "state").write_text("x")
    if how == "ok":
        return
    if how == "secret":
        task.log.info("logging the secret %s", task.config["secret"])
        raise TaskError(f"login refused for password {task.config['secret']}")
    if how == "huge":
        raise TaskError("x" * 2_000_000)
    if how == "stream_then_raise":
        task.add_tree(__import__("pathlib").Path(task.config["tree"]), "tree")
        raise TaskError("failed after streaming")
    if how == "exit":
        raise SystemExit(3)
    if how in ("swallow", "swallow_raise"):
        # a plugin that catches too much: the SIGTERM systemd sends lands in its try
        import os, signal, time

        try:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)
        except Exception as exc:
            if how == "swallow_raise":
                raise TaskError(f"the dump broke: {exc}")
        (task.staging / "state").write_text("cut short")


@hookimpl
def pullback_validate(task):
    if task.config.get("how") == "signal_in_validate":
        import os, signal, time

        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)
    return []


@hookimpl
def pullback_restore(task, source, target, dry_run, plan):
    if task.config.get("how") == "swallow":
        import os, signal, time

        try:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)
        except Exception:
            pass
    plan.step(task.log, f"restore the demo from {source}")
"""

NO_RESTORE = """\
from pullback.plugins import TaskType, hookimpl


@hookimpl
def pullback_task_types():
    return [TaskType("norestore", {"type": "object"})]


@hookimpl
def pullback_dump(task):
    (task.staging / "state").write_text("x")
"""


def sandbox(tmp_path, how: str, extra: str = "") -> ClientSandbox:
    plugins = tmp_path / "plugins"
    plugins.mkdir(exist_ok=True)
    (plugins / "demo.py").write_text(PLUGIN)
    (plugins / "norestore.py").write_text(NO_RESTORE)
    data = tmp_path / "data"
    data.mkdir(exist_ok=True)
    (data / "a.txt").write_text("a")
    box = ClientSandbox(tmp_path / "client")
    box.write_config(plugin_dirs=[str(plugins)])
    box.add_service(
        "app",
        textwrap.dedent(
            f"""\
            service: {{name: app}}
            demo: {{how: {how}, secret: Hunter2SecretValue{extra}}}
            """
        ),
    )
    box.add_service("web", f"service: {{name: web}}\nfiles: {{paths: [{data}]}}\n")
    return box


def test_a_plugins_secret_is_masked_in_its_log_lines_errors_and_the_sidecar(tmp_path):
    box = sandbox(tmp_path, "secret")
    result = box.cli("run")
    assert result.returncode == 1, result.stderr
    assert "Hunter2SecretValue" not in result.stdout + result.stderr
    assert "login refused for password ******" in result.stderr
    (archive,) = box.published()
    assert "Hunter2SecretValue" not in box.sidecar(archive).__repr__()
    assert "Hunter2SecretValue" not in archive.with_name(archive.name + ".json").read_text()


def test_a_huge_error_is_cut_in_the_sidecar_and_the_host_stays_listable(tmp_path):
    """A plugin's 2 MB error was kept twice in the sidecar (4 MB): the listing passed the
    server's 2 MiB bound and the host could not be pulled while the archive was kept."""
    from pullback.common.archive.sidecar import MAX_WORDS

    box = sandbox(tmp_path, "huge")
    assert box.cli("run").returncode == 1
    (archive,) = box.published()
    text = archive.with_name(archive.name + ".json").read_text()
    assert len(text) < 4 * MAX_WORDS + 8000, len(text)
    (app,) = [s for s in json.loads(text)["services"] if s["name"] == "app"]
    assert app["tasks"][0]["error"].endswith("... (cut off)")


def test_sys_exit_in_a_hook_fails_its_service_and_the_others_run(tmp_path):
    """``sys.exit()`` in a dump ended the whole run, exit 3, no message, no archive."""
    box = sandbox(tmp_path, "exit")
    result = box.cli("run")
    assert result.returncode == 1, result.stderr
    assert "dump failed: the plugin called sys.exit(3)" in result.stderr, result.stderr
    (archive,) = box.published()
    services = {s["name"]: s["status"] for s in box.sidecar(archive)["services"]}
    assert services == {"app": "failed", "web": "ok"}


def test_a_task_that_failed_in_the_snapshot_is_never_said_restored(tmp_path):
    """A dump that streamed files and then failed left them in the archive; a restore
    said "restored app", exit 0."""
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "f").write_text("half")
    box = sandbox(tmp_path, "stream_then_raise", f", tree: {tree}")
    assert box.cli("run").returncode == 1
    (archive,) = box.published()
    result = box.cli("restore", "--service", "app", "--from", str(archive))
    assert result.returncode == 1, result.stderr
    assert "this task failed in the snapshot" in result.stderr, result.stderr
    assert "restored app" not in result.stderr


def test_a_task_whose_plugin_cannot_restore_is_a_failure(tmp_path):
    """A plugin without pullback_restore: the restore said "restored", exit 0."""
    box = sandbox(tmp_path, "ok")
    box.add_service("nr", "service: {name: nr}\nnorestore: {}\n")
    assert box.cli("run").returncode == 0
    (archive,) = box.published()
    result = box.cli("restore", "--service", "nr", "--from", str(archive))
    assert result.returncode == 1, result.stderr
    assert "its plugin has no restore" in result.stderr, result.stderr
    assert "restored nr" not in result.stderr


@pytest.mark.parametrize("how", ["swallow", "swallow_raise", "signal_in_validate"])
def test_a_signal_a_plugin_swallows_still_stops_the_run(tmp_path, how):
    """A hook's ``except Exception`` caught the Interrupted that SIGTERM raises in it: the
    run went on, and published an archive with the cut-short dump said ok. A SIGTERM in
    a validate hook was the service's problem: the others ran and were published."""
    box = sandbox(tmp_path, how)
    result = box.cli("run")
    assert result.returncode == 143, result.stderr
    assert "SIGTERM received" in result.stderr, result.stderr
    assert box.published() == []


def test_a_signal_a_restore_hook_swallows_still_stops_the_restore(tmp_path):
    """The same in a restore: it went on to the service's other tasks and said restored."""
    box = sandbox(tmp_path, "ok")
    assert box.cli("run").returncode == 0
    (archive,) = box.published()
    box.add_service("app", "service: {name: app}\ndemo: {how: swallow, secret: x}\n")
    result = box.cli("restore", "--service", "app", "--from", str(archive))
    assert result.returncode == 143, result.stderr
    assert "SIGTERM received" in result.stderr, result.stderr
    assert "restored app" not in result.stderr, result.stderr
