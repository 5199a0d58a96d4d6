"""helper-108's attacks on the mended dbe4fd0..2df3faa: the status file's entries kept for
configured, enabled services only (the "in doubt" rule); a run a bug or an OSError ended
reports itself; a killed run's report says how it ended.

The defects it found were strict xfails until mended; every test now asserts its
promise. Real runs of the client as
a subprocess; the crashes put in by a sitecustomize on PYTHONPATH (as test_attacks_h107.py
does), nothing else patched.
"""

from __future__ import annotations

import email
import email.policy
import json
import os
import shutil
import subprocess

import pytest

from tests.helpers.client import ClientSandbox
from tests.helpers.killed_run_box import (
    AT,
    INTERNAL,
    QUICK,
    mailed_client,
    mails,
    site_env,
    status,
)

pytestmark = pytest.mark.integration

FAILING = """\
service: {{name: {name}}}
command:
  dump: [{{run: "exit 3", output: out.txt}}]
"""


def _box(tmp_path, *names: str, **config) -> ClientSandbox:
    """A client with quick services ``names``, mail kept, metrics in client.prom, one
    good run made."""
    box = mailed_client(tmp_path, *names, **config)
    made = box.cli("run")
    assert made.returncode == 0, made.stderr
    return box


@pytest.fixture
def box(tmp_path) -> ClientSandbox:
    return _box(tmp_path, "files", "db")


def _prom(box: ClientSandbox) -> str:
    return (box.root / "client.prom").read_text()


def _bodies(box: ClientSandbox) -> list[str]:
    """Each kept mail's decoded text body."""
    found = []
    for text in mails(box):
        message = email.message_from_string(text.lstrip("\n"), policy=email.policy.default)
        found.append(message.get_body(("plain",)).get_content())
    return found


# -- the "in doubt" rule -----------------------------------------------------------------


def test_a_service_dir_whose_disk_is_not_mounted_drops_nothing(tmp_path):
    mount = tmp_path / "mnt"  # (a mount point of its own, listed in service_dirs)
    box = ClientSandbox(tmp_path / "client")
    box.write_config(
        metrics_file=str(box.root / "client.prom"),
        service_dirs=[str(box.services), str(mount)],
    )
    box.add_service("files", QUICK.format(name="files"))
    (mount / "db").mkdir(parents=True)
    (mount / "db" / "service.yaml").write_text(QUICK.format(name="db"))
    assert box.cli("run").returncode == 0
    assert sorted(status(box)["services"]) == ["db", "files"]
    shutil.rmtree(mount / "db")  # (umount: the mount point stays, empty)
    made = box.cli("run")
    said = status(box)["services"]
    # db is no longer backed up: its entry must stay (and age), or the run must fail
    assert "db" in said or made.returncode != 0, (made.returncode, made.stderr[-600:])


def test_a_service_dir_reached_through_a_symlink_is_no_doubt_and_prunes(tmp_path):
    real = tmp_path / "real-services"
    real.mkdir()
    link = tmp_path / "services-link"
    link.symlink_to(real)  # (to a directory of this test only)
    box = ClientSandbox(tmp_path / "client")
    box.write_config(metrics_file=str(box.root / "client.prom"), service_dirs=[str(link)])
    for name in ("files", "old"):
        (real / name).mkdir()
        (real / name / "service.yaml").write_text(QUICK.format(name=name))
    assert box.cli("run").returncode == 0
    assert sorted(status(box)["services"]) == ["files", "old"]
    shutil.rmtree(real / "old")
    made = box.cli("run")
    assert made.returncode == 0, made.stderr
    assert "is missing" not in made.stderr
    assert sorted(status(box)["services"]) == ["files"]
    assert 'service="old"' not in _prom(box)


def test_a_disabled_service_named_twice_and_the_others_as_they_were(box):
    before = status(box)["services"]["files"]
    off = QUICK.format(name="db").replace("{name: db}", "{name: db, enabled: false}")
    box.add_service("db", off)
    made = box.cli("run", "--service", "db", "--service", "db")
    assert made.returncode == 0, made.stderr
    said = status(box)["services"]
    assert sorted(said) == ["db", "files"] and said["files"] == before
    assert "dropped from the status" not in made.stderr


# -- odd status files ----------------------------------------------------------------------


def test_a_status_entry_of_another_shape_does_not_stop_the_report(box):
    path = box.archives / ".client-status.json"
    said = json.loads(path.read_text())
    said["services"]["db"]["last_success"] = "yesterday"
    path.write_text(json.dumps(said))
    old_prom = _prom(box)
    made = box.cli("run", "--service", "files")  # (db's entry stays as it was)
    assert _prom(box) != old_prom, "the metrics file was not written"
    assert made.returncode == 0, made.stderr[-800:]


@pytest.mark.parametrize("depth", [975, 5000])
def test_a_deeply_nested_status_file_does_not_stop_the_report(box, depth):
    path = box.archives / ".client-status.json"
    text = path.read_text().rstrip().rstrip("}")
    path.write_text(text + ', "x": ' + "[" * depth + "]" * depth + "}")
    made = box.cli("run")
    assert made.returncode == 0, made.stderr[-800:]
    assert '"last_run_ok": true' in path.read_text()  # (too deep for this test's own stack)
    assert "pullback_client_last_run_ok 1" in _prom(box)


def test_a_status_file_that_is_a_symlink_is_replaced_not_followed(box, tmp_path):
    path = box.archives / ".client-status.json"
    elsewhere = tmp_path / "elsewhere.json"
    elsewhere.write_text(json.dumps({"services": {"files": {"ok": True}}, "mine": 1}))
    path.unlink()
    path.symlink_to(elsewhere)
    made = box.cli("run")
    assert made.returncode == 0, made.stderr
    assert not path.is_symlink()
    assert json.loads(elsewhere.read_text())["mine"] == 1  # (untouched)
    assert "last_run" not in json.loads(elsewhere.read_text())


def test_a_status_file_that_is_a_fifo_does_not_hang_the_run(box):
    path = box.archives / ".client-status.json"
    path.unlink()
    os.mkfifo(path)
    try:
        made = box.cli("run", timeout=5)
    except subprocess.TimeoutExpired:
        pytest.fail("the run hung on the FIFO")
    assert made.returncode in (0, 1), made.stderr


# -- what a crash says -------------------------------------------------------------------


def test_an_os_error_without_errno_does_not_put_its_message_in_the_status(box, tmp_path):
    env = site_env(
        tmp_path,
        """
        import pullback.client.run as run
        from pullback.common import secrets
        secrets.register("hunter2-SECRET")
        def crash(self):
            raise ConnectionRefusedError("https://u:hunter2-SECRET@example.test/ refused")
        run.ClientRun.run = crash
        """,
    )
    made = box.cli("run", env=env)
    assert made.returncode == 70, made.stderr  # (no errno: its words are anything, a bug's)
    assert json.loads((box.archives / ".client-status.json").read_text())["error"] == (
        "an internal error ended the run (ConnectionRefusedError; the traceback is in the log: "
        "please report it)"
    )
    assert "hunter2" not in made.stderr  # (the log masks it)
    assert all("hunter2" not in m for m in mails(box))  # (the mail masks it)
    raw = (box.archives / ".client-status.json").read_text()
    assert "hunter2" not in raw, json.loads(raw)["error"]


def test_an_os_errors_odd_path_is_bounded_and_escaped(box, tmp_path):
    env = site_env(
        tmp_path,
        """
        import errno
        import pullback.client.run as run
        def crash(self):
            odd = "/srv/a\\nFAIL forged\\x1b[2J" + "y" * 10000
            raise OSError(errno.EIO, "Input/output error", odd)
        run.ClientRun.run = crash
        """,
    )
    made = box.cli("run", env=env)
    assert made.returncode == 1, made.stderr[-500:]
    error = status(box)["error"]
    assert error.startswith("the run stopped: /srv/a")
    (body,) = _bodies(box)
    assert "\nFAIL forged" not in body and "\x1b" not in body, body[:300]
    assert error.isprintable() and len(error) < 2000, (len(error), error[:100])


def test_a_bug_between_the_lock_and_the_run_is_reported(box, tmp_path):
    env = site_env(
        tmp_path,
        """
        import pullback.client.run as run
        def kept_entries(config, found, services):
            raise TypeError("SECRET")
        run.kept_entries = kept_entries
        """,
    )
    made = box.cli("run", env=env)
    assert made.returncode == 70, made.stderr
    assert status(box)["error"] == INTERNAL.format("TypeError"), status(box)


def test_a_crash_carrying_a_killed_runs_mark_reports_both_once(box, tmp_path):
    mark = {"pid": 4242, "at": AT, "services": ["db"], "boot": None, "invocation": None}
    record = box.root / "stopped.json"
    record.write_text(json.dumps({"version": 1, "stopped": [], "run": mark}))
    record.chmod(0o600)
    env = site_env(
        tmp_path,
        """
        import pullback.client.run as run
        def crash(self):
            raise KeyError("SECRET")
        run.ClientRun.run = crash
        """,
    )
    made = box.cli("run", env=env)
    assert made.returncode == 70, made.stderr
    said = status(box)
    assert said["error"].startswith(INTERNAL.format("KeyError")), said["error"]
    assert "pid 4242" in said["error"] and "(killed?)" in said["error"]
    assert said["services"]["db"]["ok"] is False  # (the killed run's service)
    assert not record.exists() or "run" not in json.loads(record.read_text())
    after = box.cli("start-stopped")
    assert after.returncode == 0 and len(mails(box)) == 1, after.stderr
    assert "SECRET" not in json.dumps(said) + "".join(mails(box))


def test_a_failing_service_and_a_crash_in_the_mail_body_still_say_failed(box, tmp_path):
    """The report itself fails after the status file is written (the mail's template):
    the status says failed, the mark leaves, exit 70."""
    box.add_service("db", FAILING.format(name="db"))
    env = site_env(
        tmp_path,
        """
        import pullback.client.outputs as outputs
        def body(*args, **kw):
            raise TypeError("SECRET")
        outputs._failure_mail = body
        """,
    )
    made = box.cli("run", env=env)
    assert made.returncode == 70, made.stderr
    said = status(box)
    assert said["last_run_ok"] is False and "SECRET" not in json.dumps(said)
    assert "pullback_client_last_run_ok 0" in _prom(box)
    assert not (box.root / "stopped.json").exists()


# -- how a killed run ended ------------------------------------------------------------


def test_a_mark_a_finished_run_left_is_not_blamed_on_a_restart(box):
    path = box.archives / ".client-status.json"
    path.unlink()
    path.mkdir()  # (the status file cannot be written this time)
    made = box.cli("run")
    assert made.returncode == 1 and "could not record the run's status" in made.stderr
    assert len(box.published()) == 2  # (the run ended: its archive published)
    record = box.root / "stopped.json"
    doc = json.loads(record.read_text())
    doc["run"]["boot"] = "0" * 36  # (as if the machine restarted since)
    record.write_text(json.dumps(doc))
    path.rmdir()
    made = box.cli("run")
    assert made.returncode == 1
    assert "the machine restarted before it ended" not in status(box)["error"]


def test_a_run_killed_under_the_unit_by_a_keyboardinterrupt_is_said_by_exit_status(box, tmp_path):
    """A KeyboardInterrupt raised in the run (no Exception: not the crash report's) ends
    it with exit 130, its mark kept: the unit's ExecStopPost= reports it in systemd's words."""
    env = site_env(
        tmp_path,
        """
        import pullback.client.run as run
        def crash(self):
            raise KeyboardInterrupt
        run.ClientRun.run = crash
        """,
    )
    unit = {"INVOCATION_ID": "a" * 32}
    made = box.cli("run", env={**env, **unit})
    assert made.returncode == 130, made.stderr
    post = {**unit, "SERVICE_RESULT": "exit-code", "EXIT_STATUS": "130"}
    made = box.cli("start-stopped", env=post)
    assert made.returncode == 0, made.stderr
    assert "(it exited with status 130)" in status(box)["error"], status(box)["error"]
