"""A client run past its ``run_timeout`` (client.yaml): a plugin's hook that waits for
ever, out of reach of any tool's timeout, is stopped as SIGTERM stops it; the finish
stages run (what the prepare stopped is started again), nothing is published, and the
run is reported failed with words that say why (docs/configuration.md, run_timeout).

Client runs are real ``pullback-client`` subprocesses (tests/helpers/client.py) with a
plugin in ``plugin_dirs``; its prepare and finish write marks where a real one would
stop and start an application.
"""

from __future__ import annotations

import json
import time

import pytest

from tests.helpers.client import ClientSandbox, with_plugin

pytestmark = pytest.mark.integration

PLUGIN = r"""
import os, socket, threading, time
from pathlib import Path
from pullback.plugins import TaskType, hookimpl

SCHEMA = {"type": "object", "additionalProperties": False, "properties": {
    "wait": {"type": "string", "default": "socket"}}}
OUT = Path(os.environ["HUNG_OUT"])


@hookimpl
def pullback_task_types():
    return [TaskType("hung", SCHEMA)]


@hookimpl
def pullback_prepare(task):
    (OUT / "stopped").write_text("the application was stopped\n")


@hookimpl
def pullback_dump(task):
    (task.staging / "hung.txt").write_text("never finished\n")
    if task.config["wait"] == "socket":  # a reply that never comes, no timeout set
        a, b = socket.socketpair()
        a.recv(1)
    elif task.config["wait"] == "event":  # an event nobody sets
        threading.Event().wait()
    else:  # slow, not hung
        time.sleep(float(task.config["wait"].rstrip("s")))


@hookimpl
def pullback_finish(task, failed):
    (OUT / "started").write_text(f"started again (failed={failed})\n")
"""


@pytest.fixture
def box(tmp_path) -> ClientSandbox:
    b = with_plugin(ClientSandbox(tmp_path / "client"), "hung", PLUGIN)
    (tmp_path / "out").mkdir()
    return b


@pytest.mark.parametrize("wait", ["socket", "event"])
def test_a_hook_that_waits_for_ever_is_stopped_at_the_run_timeout(box, tmp_path, wait):
    box.write_config(plugin_dirs=[str(tmp_path / "plugins")], run_timeout="3s")
    box.add_service("app", f"service:\n  name: app\nhung:\n  wait: {wait}\n")
    out = tmp_path / "out"
    began = time.monotonic()
    result = box.cli("run", timeout=60, env={"HUNG_OUT": str(out)})
    took = time.monotonic() - began
    said = result.stderr
    assert result.returncode == 143, said[-2000:]
    assert 3 <= took < 30, took
    assert "the run took longer than its run_timeout (3s)" in said
    assert "SIGTERM received" not in said  # (no one sent it: the words say why)
    assert (out / "stopped").exists()
    assert (out / "started").read_text() == "started again (failed=True)\n"
    assert box.published() == []
    assert box.leftovers() == []
    status = json.loads((box.archives / ".client-status.json").read_text())
    assert status["last_run_ok"] is False
    assert "the run took longer than its run_timeout (3s)" in status["error"]
    assert not (box.root / "stopped.json").exists()  # (nothing left stopped)


def test_a_slow_run_within_its_timeout_is_not_touched(box, tmp_path):
    """A hook that takes a while, inside the limit: the run's own result stands."""
    box.write_config(plugin_dirs=[str(tmp_path / "plugins")], run_timeout="8s")
    box.add_service("app", "service:\n  name: app\nhung:\n  wait: 2s\n")
    result = box.cli("run", timeout=60, env={"HUNG_OUT": str(tmp_path / "out")})
    assert result.returncode == 0, result.stderr[-2000:]
    assert "run_timeout" not in result.stderr
    assert len(box.published()) == 1
    assert (tmp_path / "out" / "started").read_text() == "started again (failed=False)\n"


def test_the_run_timeout_is_checked_and_worded(box, tmp_path):
    box.write_config(plugin_dirs=[str(tmp_path / "plugins")], run_timeout="soon")
    result = box.cli("run", timeout=60, env={"HUNG_OUT": str(tmp_path / "out")})
    assert result.returncode == 2
    assert f"{box.config}:" in result.stderr
    assert "run_timeout: expected a duration like 12h, or 0 for no limit, got 'soon'" in (
        result.stderr
    ), result.stderr
