"""A run killed outright after its prepare stopped the application: the record of what it
stopped has the next run, or ``pullback-client start-stopped`` (the client unit's
ExecStopPost=), start it again.

A Docker engine and systemd as PID 1 cannot run here: ``docker`` and ``systemctl`` are
the recording stand-ins of tests/standins/standin.py (the calls are asserted); the same
under a real systemd, with the shipped unit, is tests/system/test_packages.py's
``test_a_client_run_killed_outright_has_its_unit_started_again``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import pytest

from tests.helpers.client import ClientSandbox
from tests.helpers.standin_wrappers import kill_when_marked
from tests.integration.test_app_plugins import short

pytestmark = pytest.mark.integration

SERVICE = """\
service: {{name: shop}}
docker: {{docker_compose_path: {compose}, wait_after_restart: 0}}
systemd: {{units: [app.service]}}
command:
  dump: [{{run: "touch {marker}; exec sleep 60", output: out.txt}}]
"""
"""docker stops web and db, systemd app.service; the command's dump then waits (the
marker says it started): a run killed there never reached its finish."""


@pytest.fixture
def shop(tmp_path, standins):
    compose = tmp_path / "app" / "docker-compose.yml"
    compose.parent.mkdir()
    compose.write_text("services:\n  web: {image: nginx:1.25}\n  db: {image: postgres:15}\n")
    standins.set(running=["web", "db"], active=["app.service"])
    box = ClientSandbox(tmp_path / "client")
    box.marker = tmp_path / "dumping"
    box.add_service("shop", SERVICE.format(compose=compose, marker=box.marker))
    return box


def _kill_while_dumping(box: ClientSandbox, env: dict) -> None:
    """Start a run and SIGKILL it once the dump runs (its prepares done)."""
    kill_when_marked(box, box.marker, "run", env=env)


def _record(box: ClientSandbox) -> dict:
    return json.loads((box.root / "stopped.json").read_text())


STARTS = [
    "systemctl start app.service",
    "docker compose config --services",
    "docker compose start web db",
]


def test_start_stopped_starts_what_a_killed_run_stopped(shop, standins):
    _kill_while_dumping(shop, standins.env)
    calls = [short(c) for c in standins.calls()]
    assert "docker compose stop web db" in calls and "systemctl stop app.service" in calls
    assert not any(" start " in c for c in calls)  # the finish never ran
    record = _record(shop)
    assert [(e["service"], e["task"], e["names"], e["by"]) for e in record["stopped"]] == [
        ("shop", "docker", ["web", "db"], "run"),
        ("shop", "systemd", ["app.service"], "run"),
    ]
    assert (shop.root / "stopped.json").stat().st_mode & 0o777 == 0o600

    before = len(calls)
    started = shop.cli("start-stopped", env=standins.env)
    assert started.returncode == 0, started.stderr
    assert [short(c) for c in standins.calls()[before:]] == STARTS  # the last stopped first
    assert "starting again shop: docker: web, db (stopped by a run that ended" in started.stderr
    assert "starting again shop: systemd: app.service" in started.stderr
    assert not (shop.root / "stopped.json").exists()
    # the killed run told no one: now its status says it failed, and why
    status = json.loads((shop.archives / ".client-status.json").read_text())
    assert status["last_run_ok"] is False
    assert status["error"].startswith("the run (pid ")
    assert status["error"].endswith(
        "ended before its finish (killed?); started again what it had stopped: "
        "shop: systemd: app.service; shop: docker: web, db"
    )

    # nothing left: quiet, no call, no lock taken
    again = shop.cli("start-stopped", env=standins.env)
    assert (again.returncode, again.stderr) == (0, "")
    assert len(standins.calls()) == before + len(STARTS)


def test_the_next_run_starts_them_first_and_leaves_no_record(shop, standins):
    _kill_while_dumping(shop, standins.env)
    before = len(standins.calls())
    (shop.services / "shop" / "service.yaml").write_text(  # the next day's run is quick
        (shop.services / "shop" / "service.yaml").read_text().replace("exec sleep 60", "true")
    )
    result = shop.cli("run", env=standins.env)
    assert result.returncode == 1, result.stderr  # the killed run is reported here
    status = json.loads((shop.archives / ".client-status.json").read_text())
    assert status["error"].startswith("the run (pid ")
    assert (
        "ended before its finish (killed?); started again what it had stopped: "
        in (status["error"])
    )
    assert len(shop.published()) == 1  # this run's archive all the same
    calls = [short(c) for c in standins.calls()[before:]]
    assert calls[:3] == STARTS  # before its own stops
    assert calls[3:6] == [
        "systemctl show --property=LoadState app.service",  # (the systemd task's validate)
        "docker compose ps --services --status running",
        "docker compose stop web db",
    ]
    assert calls[-1] == "docker compose start web db"
    assert "starting again shop: docker: web, db" in result.stderr
    assert not (shop.root / "stopped.json").exists()
    assert shop.leftovers() == []


def test_a_run_that_ends_normally_or_by_sigterm_leaves_no_record(shop, standins):
    run = shop.popen("run", env={**os.environ, **standins.env})
    while not shop.marker.exists():
        time.sleep(0.05)
    assert (shop.root / "stopped.json").exists()  # written before the stops
    run.send_signal(signal.SIGTERM)
    _, err = run.communicate(timeout=60)
    assert run.returncode == 143, err
    assert [short(c) for c in standins.calls()][-3:] == STARTS
    assert not (shop.root / "stopped.json").exists()


def test_a_record_that_cannot_be_written_stops_nothing(shop, standins):
    for directory in (shop.archives, shop.work, shop.run_dir):
        directory.mkdir()
    # no file can be made beside the work directory (root ignores modes; not this flag)
    if subprocess.run(["chattr", "+i", str(shop.root)], capture_output=True).returncode:
        pytest.skip("chattr +i is not supported here")
    try:
        result = shop.cli("run", env=standins.env)
    finally:
        subprocess.run(["chattr", "-i", str(shop.root)], check=True)
    assert result.returncode == 1
    calls = [short(c) for c in standins.calls()]
    assert not any(c.endswith((" stop web db", "stop app.service")) for c in calls), calls
    assert "prepare failed" in result.stderr


def test_a_damaged_record_is_set_aside_said_and_the_run_goes_on(shop, standins):
    (shop.services / "shop" / "service.yaml").write_text(
        (shop.services / "shop" / "service.yaml").read_text().replace("exec sleep 60", "true")
    )
    record = shop.root / "stopped.json"
    record.write_bytes(b"{" + b" " * (2 << 20))  # past the 1 MiB bound: not read whole
    result = shop.cli("run", env=standins.env)
    assert result.returncode == 1, result.stderr
    assert f"cannot read {record}, the record of services an interrupted run stopped" in (
        result.stderr
    )
    assert "longer than 1048576 bytes" in result.stderr
    assert record.with_name("stopped.json.damaged").stat().st_size == (2 << 20) + 1  # kept
    assert len(shop.published()) == 1  # the backup was made
    status = json.loads((shop.archives / ".client-status.json").read_text())
    assert status["last_run_ok"] is False and "cannot read" in status["error"]


def test_a_recorded_service_no_longer_configured_is_named_and_hostile_words_bounded(shop, standins):
    hostile = "\x1b]0;owned\x07" + "x" * 5000
    entry = {"service": hostile, "task": "docker", "names": ["web"], "by": "run"}
    (shop.root / "stopped.json").write_text(
        json.dumps({"version": 1, "stopped": [{**entry, "pid": 1, "at": "then"}]})
    )
    result = shop.cli("start-stopped", env=standins.env)
    assert result.returncode == 1
    assert "the service is not configured: start them by hand" in result.stderr
    assert "\x1b" not in result.stderr and len(result.stderr) < 2000, result.stderr
    assert standins.calls() == []
    assert not (shop.root / "stopped.json").exists()  # said once, not at every run


def test_a_restore_killed_while_the_application_is_down_is_started_again(shop, standins):
    service = shop.services / "shop" / "service.yaml"
    service.write_text(
        service.read_text().replace(
            f'dump: [{{run: "touch {shop.marker}; exec sleep 60", output: out.txt}}]',
            f'dump: [{{run: "echo data", output: out.txt}}]\n'
            f'  restore: ["touch {shop.marker}; exec sleep 60"]',
        )
    )
    made = shop.cli("run", env=standins.env)
    assert made.returncode == 0, made.stderr
    (archive,) = shop.published()
    before = len(standins.calls())
    kill_when_marked(
        shop, shop.marker, "restore", "--service", "shop", "--from", str(archive), env=standins.env
    )
    assert {e["by"] for e in _record(shop)["stopped"]} == {"restore"}
    started = shop.cli("start-stopped", env=standins.env)
    assert started.returncode == 0, started.stderr
    calls = [short(c) for c in standins.calls()[before:]]
    assert calls[-3:] == STARTS, calls
    assert "(stopped by a restore that ended before starting them again" in started.stderr


def test_a_timer_run_with_a_fresh_archive_still_starts_them(shop, standins):
    service = shop.services / "shop" / "service.yaml"
    slow = service.read_text()
    service.write_text(slow.replace("exec sleep 60", "true"))
    shop.write_config(incremental={"enabled": False}, min_interval="1d")
    assert shop.cli("run", env=standins.env).returncode == 0  # a good archive: fresh
    shop.marker.unlink()
    service.write_text(slow)
    _kill_while_dumping(shop, standins.env)  # a run by hand, killed
    assert (shop.root / "stopped.json").exists()
    before = len(standins.calls())
    timer = shop.cli("run", "--if-due", env=standins.env)
    assert timer.returncode == 1, timer.stderr  # the killed run, reported: the unit fails
    assert "nothing to do" in timer.stderr
    assert [short(c) for c in standins.calls()[before:]] == STARTS, timer.stderr
    assert not (shop.root / "stopped.json").exists()


def test_start_stopped_leaves_them_to_a_run_or_restore_that_holds_the_lock(shop, standins):
    from pullback.common.locks import FileLock

    entry = {"service": "shop", "task": "systemd", "names": ["app.service"], "by": "restore"}
    record = shop.root / "stopped.json"
    record.write_text(json.dumps({"version": 1, "stopped": [{**entry, "pid": 1, "at": "now"}]}))
    with FileLock(shop.run_dir / "client.lock", purpose="a restore").acquire():
        # (the unit's ExecStopPost= after a timer run that met a restore: not a failure)
        result = shop.cli("start-stopped", env=standins.env)
    assert result.returncode == 0, result.stderr
    assert "is locked by" in result.stderr and "starts what an interrupted run" in result.stderr
    assert standins.calls() == [] and record.exists()


def test_a_restore_starts_what_a_killed_run_left_first_and_writes_it_back_never(shop, standins):
    service = shop.services / "shop" / "service.yaml"
    service.write_text(service.read_text().replace("exec sleep 60", "true"))
    assert shop.cli("run", env=standins.env).returncode == 0
    (archive,) = shop.published()
    entry = {"service": "gone", "task": "docker", "names": ["web"], "by": "run"}
    record = shop.root / "stopped.json"
    record.write_text(json.dumps({"version": 1, "stopped": [{**entry, "pid": 1, "at": "then"}]}))
    restored = shop.cli("restore", "--service", "shop", "--from", str(archive), env=standins.env)
    assert "gone: docker: web (stopped by a run" in restored.stderr, restored.stderr
    assert "the service is not configured: start them by hand" in restored.stderr
    assert not record.exists()  # tried and said once; the restore's own stops came and went
