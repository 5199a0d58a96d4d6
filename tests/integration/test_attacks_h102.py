"""helper-102's attack on the record of stopped applications (client/stopped.py,
``pullback-client start-stopped``): runs and restores killed at chosen moments, the
record as hostile input, the words and exit codes an administrator sees.

``docker`` and ``systemctl`` are the recording stand-ins (tests/standins/standin.py);
a wrapper in front of them here can make one call hang (to kill a process there) or fail.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.helpers.client import ClientSandbox
from tests.helpers.standin_wrappers import compose_app, kill_when_marked, wrapped_env
from tests.integration.test_app_plugins import short

pytestmark = pytest.mark.integration

SHOP = """\
service: {{name: shop}}
docker: {{docker_compose_path: {compose}, wait_after_restart: 0}}
systemd: {{units: [app.service, kept-down.service]}}
command:
  dump: [{{run: "{dump}", output: out.txt}}]
  restore: ["true"]
"""

OTHER = """\
service: {name: other}
systemd: {units: [other.service]}
command:
  dump: [{run: "echo other", output: out.txt}]
"""


class Box(ClientSandbox):
    marker: Path
    env: dict


@pytest.fixture
def box(tmp_path, standins):
    compose = compose_app(tmp_path)
    # app.service runs; kept-down.service was stopped by the administrator on purpose
    standins.set(running=["web", "db"], active=["app.service", "other.service"])
    b = Box(tmp_path / "client")
    b.marker = tmp_path / "mark"
    b.env = wrapped_env(tmp_path, standins.env, b.marker)
    b.add_service("shop", SHOP.format(compose=compose, dump=f"touch {b.marker}; exec sleep 60"))
    return b


def _quick(b: Box) -> None:
    """The shop's dump no longer waits."""
    path = b.services / "shop" / "service.yaml"
    path.write_text(path.read_text().replace(f"touch {b.marker}; exec sleep 60", "echo data"))


def _killed_when_marked(b: Box, *args: str, hang_on: str = "") -> None:
    """Start ``args`` and SIGKILL it once the marker appears (a dump or a hung call)."""
    kill_when_marked(b, b.marker, *args, env={**b.env, "HANG_ON": hang_on})


def _record(b: Box) -> Path:
    return b.root / "stopped.json"


def _write_record(b: Box, *entries: dict) -> None:
    full = [{"by": "run", "pid": 1, "at": "2026-12-05T00:00:00Z", **e} for e in entries]
    _record(b).write_text(json.dumps({"version": 1, "stopped": full}))


def _calls(standins, since: int = 0) -> list[str]:
    return [short(c) for c in standins.calls()[since:]]


def _mail_to(b: Box, tmp_path: Path, send: str = "on_problem") -> Path:
    """Mail through a sendmail that appends each message to the file returned."""
    mails = tmp_path / "mails.txt"
    sendmail = tmp_path / "sendmail"
    sendmail.write_text(f"#!/bin/sh\ncat >> {mails}\necho ==== >> {mails}\n")
    sendmail.chmod(0o755)
    email = {"sendmail": str(sendmail), "from": "pb@x.test", "to": ["root@x.test"], "send": send}
    b.write_config(email=email)
    return mails


def _status(b: Box) -> dict:
    return json.loads((b.archives / ".client-status.json").read_text())


# ---- what held up -------------------------------------------------------------------


def test_killed_in_its_finish_and_again_in_start_stopped_everything_starts_once_more(box, standins):
    """A run killed while its finish starts app.service (docker not started yet), then a
    start-stopped killed at the same call: the record still names both; the next
    start-stopped starts them, the last stopped first, never the unit the administrator
    had stopped (kept-down.service, inactive before the run)."""
    _quick(box)
    _killed_when_marked(box, "run", hang_on="start app.service")
    assert [(e["task"], e["names"]) for e in json.loads(_record(box).read_text())["stopped"]] == [
        ("docker", ["web", "db"]),
        ("systemd", ["app.service"]),
    ]
    _killed_when_marked(box, "start-stopped", hang_on="start app.service")
    assert _record(box).exists()
    before = len(standins.calls())
    started = box.cli("start-stopped", env=box.env)
    assert started.returncode == 0, started.stderr
    assert _calls(standins, before) == [
        "systemctl start app.service",
        "docker compose config --services",
        "docker compose start web db",
    ]
    assert not any("kept-down" in c and " start " in c for c in _calls(standins))
    assert not _record(box).exists()


def test_start_stopped_while_a_run_holds_the_lock_exits_0_and_starts_nothing(box, standins):
    run = box.popen("run", env={**os.environ, **box.env})
    try:
        deadline = time.monotonic() + 60
        while not box.marker.exists():  # dumping: web, db and app.service are down
            assert run.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        before = len(standins.calls())
        busy = box.cli("start-stopped", env=box.env)
        assert busy.returncode == 0, busy.stderr  # (the holder starts them itself)
        assert "locked by" in busy.stderr
        assert _calls(standins, before) == []
        assert _record(box).exists()  # the run's own, untouched
    finally:
        run.send_signal(signal.SIGTERM)
        run.communicate(timeout=60)
    assert run.returncode == 143
    assert not _record(box).exists()


def test_dry_runs_of_run_and_restore_start_nothing_and_keep_the_record(box, standins):
    _quick(box)
    made = box.cli("run", env=box.env)
    assert made.returncode == 0, made.stderr
    (archive,) = box.published()
    _write_record(box, {"service": "shop", "task": "systemd", "names": ["app.service"]})
    kept = _record(box).read_bytes()
    before = len(standins.calls())
    dry = box.cli("run", "--dry-run", env=box.env)
    assert dry.returncode == 0, dry.stderr
    dry = box.cli("restore", "--service", "shop", "--from", str(archive), "--dry-run", env=box.env)
    assert dry.returncode == 0, dry.stderr
    assert not any(" start " in c or " stop " in c for c in _calls(standins, before))
    assert _record(box).read_bytes() == kept


# ---- defects --------------------------------------------------------------------------


def test_a_restore_does_not_write_back_the_entries_its_recovery_tried(box, standins):
    """ServiceRestore reads the record in __init__, before start_left_stopped empties
    it; its first task.stopping() writes those stale entries back. The next run (and the
    unit's ExecStopPost=) then starts other.service again, though the administrator may
    have stopped it since, and says the unconfigured service's error again (failing
    that run too)."""
    box.add_service("other", OTHER)
    _quick(box)
    made = box.cli("run", env=box.env)
    assert made.returncode == 0, made.stderr
    (archive,) = box.published()
    _write_record(
        box,
        {"service": "other", "task": "systemd", "names": ["other.service"]},
        {"service": "gone", "task": "docker", "names": ["web"]},
    )
    restored = box.cli("restore", "--service", "shop", "--from", str(archive), env=box.env)
    assert "starting again other: systemd: other.service" in restored.stderr
    assert not _record(box).exists(), _record(box).read_text()


def test_a_restore_whose_recovery_fails_says_so_in_its_exit_code(box, standins):
    _quick(box)
    made = box.cli("run", env=box.env)
    assert made.returncode == 0, made.stderr
    (archive,) = box.published()
    _write_record(box, {"service": "gone", "task": "docker", "names": ["web"]})
    restored = box.cli("restore", "--service", "shop", "--from", str(archive), env=box.env)
    assert "the service is not configured: start them by hand" in restored.stderr
    assert restored.returncode == 1


def test_a_failed_start_after_a_killed_run_reaches_the_mail(box, standins, tmp_path):
    mails = _mail_to(box, tmp_path)
    _killed_when_marked(box, "run")  # killed dumping: web, db, app.service down
    failed = box.cli("start-stopped", env={**box.env, "FAIL_ON": "start app.service"})
    assert failed.returncode == 1
    assert "could not start them again" in failed.stderr
    _quick(box)
    box.cli("run", env=box.env)  # the next day's run
    told = mails.read_text() if mails.exists() else ""
    assert "app.service" in told, "no mail ever named the application left down"


def test_a_deeply_nested_record_is_set_aside_and_the_run_goes_on(box, standins):
    _quick(box)
    _record(box).write_text('{"stopped": ' + "[" * 100_000 + "]" * 100_000 + "}")  # 200 kB
    result = box.cli("run", env=box.env)
    assert "internal error" not in result.stderr, result.stderr[-2000:]
    assert result.returncode == 1
    assert "cannot read" in result.stderr
    assert _record(box).with_name("stopped.json.damaged").exists()
    assert len(box.published()) == 1


def test_a_fifo_at_the_record_does_not_hang_start_stopped(box, standins):
    """The ExecStopPost= (and every run, holding the client lock) would hang the same."""
    os.mkfifo(_record(box))
    try:
        result = box.cli("start-stopped", env=box.env, timeout=8)
    except subprocess.TimeoutExpired:
        pytest.fail("start-stopped still waits on the FIFO after 8 s")
    assert result.returncode == 1 and "cannot read" in result.stderr


def test_a_record_another_user_wrote_is_not_obeyed(box, standins, tmp_path):
    """before-restore/ in the same directory is refused when not root's
    (plugins/before_restore._check_safety); stopped.json is read whoever wrote it."""
    if os.geteuid() != 0:
        pytest.skip("needs root to give the record to another user")
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o1777)  # /tmp, /var/tmp
    box.write_config(work_dir=str(shared / "work"))
    planted = shared / "stopped.json"
    entry = {"service": "shop", "task": "systemd", "names": ["attacker-chosen.target"]}
    planted.write_text(
        json.dumps({"version": 1, "stopped": [{**entry, "by": "run", "pid": 1, "at": "x"}]})
    )
    os.chown(planted, 65534, 65534)  # nobody's
    box.cli("start-stopped", env=box.env)
    assert "systemctl start attacker-chosen.target" not in _calls(standins)


def test_a_line_break_in_the_record_does_not_cost_the_mail(box, standins, tmp_path):
    mails = _mail_to(box, tmp_path)
    _quick(box)
    entry = {"service": "gone", "task": "docker", "names": ["web"]}
    _write_record(box, {**entry, "at": "2026-12-05\nBcc: someone@x.test"})
    result = box.cli("run", env=box.env)
    assert len(box.published()) == 1
    assert "internal error" not in result.stderr, result.stderr[-2000:]
    assert result.returncode == 1
    headers = mails.read_text().split("\n\n")[0].replace("\n ", " ").splitlines()  # unfolded
    assert not any(line.startswith("Bcc:") for line in headers), headers
    assert any("\\nBcc: someone" in line for line in headers), headers  # said, escaped


def test_a_record_of_many_entries_is_said_within_bounds(box, standins):
    _quick(box)
    _write_record(
        box, *({"service": f"gone{i}", "task": "docker", "names": ["web"]} for i in range(600))
    )
    result = box.cli("run", env=box.env)
    assert result.returncode == 1
    error = _status(box)["error"]
    assert len(error) < 20_000, f"status error: {len(error)} characters"
    assert len(result.stderr) < 50_000, f"stderr: {len(result.stderr)} characters"


def test_a_run_with_no_enabled_service_still_starts_what_was_left_stopped(box, standins):
    path = box.services / "shop" / "service.yaml"
    path.write_text(path.read_text().replace("{name: shop}", "{name: shop, enabled: false}"))
    _write_record(box, {"service": "shop", "task": "systemd", "names": ["app.service"]})
    box.cli("run", env=box.env)
    assert "systemctl start app.service" in _calls(standins)
    assert not _record(box).exists()


def test_the_reliability_table_rows_are_whole():
    doc = Path(__file__).parents[2] / "docs" / "reliability.md"
    rows = [line for line in doc.read_text().splitlines() if line.startswith("| client killed")]
    cells = [len(row.strip().strip("|").split(" | ")) for row in rows]
    assert cells == [4] * len(rows), list(zip(cells, (r[:60] for r in rows), strict=True))
    assert sum("client killed while publishing |" in r[:40] for r in rows) == 1


def test_the_units_stop_post_does_not_fail_the_unit_while_another_run_holds_the_lock(box, standins):
    """The timer's tick during a run started by hand (or a restore): its `run --if-due`
    exits 75, "skipped, not failed" (the unit's comment); its ExecStopPost= then finds
    the other run's record and exits 75 too, which systemd counts as a failed
    ExecStopPost= (systemd.service(5): SuccessExitStatus= is "returned by the main
    service process"): the unit ends failed."""
    unit = Path(__file__).parents[2] / "systemd" / "pullback-client.service"
    (line,) = [s for s in unit.read_text().splitlines() if s.startswith("ExecStopPost=")]
    ignored = line.startswith(("ExecStopPost=-", "ExecStopPost=@-", "ExecStopPost=:-"))
    run = box.popen("run", env={**os.environ, **box.env})
    try:
        deadline = time.monotonic() + 60
        while not box.marker.exists():
            assert run.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        post = box.cli("start-stopped", env=box.env)
    finally:
        run.send_signal(signal.SIGTERM)
        run.communicate(timeout=60)
    assert ignored or post.returncode == 0, f"{line}: exit {post.returncode}"
