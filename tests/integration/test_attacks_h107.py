"""helper-107's attacks on dbe4fd0 and 449b231: the status file's entries kept for
configured, enabled services only; a run a bug ended reports itself (exit 70); a killed
run's report says how it ended (boot id, systemd's $SERVICE_RESULT/$EXIT_STATUS).

The defects it found were strict xfails until mended; every test now asserts its
promise. Real runs of the client as
a subprocess (the crashes put in by a sitecustomize, as test_client_status_entries.py
does), and ``ended_how`` called directly for the words.
"""

from __future__ import annotations

import json
import shutil

import pytest

from pullback.client import stopped
from pullback.common import procfs
from tests.helpers.client import ClientSandbox
from tests.helpers.killed_run_box import (
    AT,
    INTERNAL,
    QUICK,
    mailed_client,
    mails,
    metric_services,
    site_env,
    status,
)

pytestmark = pytest.mark.integration


@pytest.fixture
def box(tmp_path) -> ClientSandbox:
    """Three quick services (files, db, old), mail kept, metrics in client.prom, one good
    run made."""
    box = mailed_client(tmp_path, "files", "db", "old")
    made = box.cli("run")
    assert made.returncode == 0, made.stderr
    assert sorted(status(box)["services"]) == ["db", "files", "old"]
    return box


def _mark(box: ClientSandbox, **run) -> None:
    """stopped.json holding the mark of a run under way (pid 4242), root's 0600."""
    mark = {"pid": 4242, "at": AT, "services": ["files"], **run}
    doc = {"version": 1, "stopped": [], "run": mark}
    path = box.root / "stopped.json"
    path.write_text(json.dumps(doc))
    path.chmod(0o600)


# -- pruning ---------------------------------------------------------------------------


def test_a_missing_service_dir_does_not_silently_drop_its_services(tmp_path):
    extra = tmp_path / "client" / "more-services"
    box = mailed_client(tmp_path, service_dirs=[str(tmp_path / "client" / "services"), str(extra)])
    box.add_service("files", QUICK.format(name="files"))
    (extra / "db").mkdir(parents=True)
    (extra / "db" / "service.yaml").write_text(QUICK.format(name="db"))
    made = box.cli("run")
    assert made.returncode == 0, made.stderr
    assert sorted(status(box)["services"]) == ["db", "files"]
    extra.rename(box.root / "unmounted")  # (the disk it was on is not mounted today)
    made = box.cli("run")
    said = status(box)
    # db is not backed up any more: something must say so beyond one line of the log
    kept = "db" in said["services"] and "db" in metric_services(box)
    assert kept or made.returncode != 0 or mails(box), (made.returncode, said)


def test_a_broken_service_file_keeps_its_services_entry(box):
    box.add_service("web", QUICK.format(name="web"), subdir="apps")  # (directory 'web')
    shutil.move(box.services / "apps" / "web", box.services / "webapp")
    made = box.cli("run")
    assert made.returncode == 0, made.stderr
    assert "web" in status(box)["services"]
    (box.services / "webapp" / "service.yaml").write_text("service: {name: web\n  : [\n")
    made = box.cli("run")
    assert made.returncode == 1, made.stderr  # (the broken one failed)
    said = status(box)["services"]
    assert "dropped from the status" not in made.stderr, made.stderr
    # (a configuration in doubt drops nothing: web's entry stays and ages; the broken
    # file is failed under its directory's name)
    assert said["web"]["ok"] is True and said["webapp"]["ok"] is False, sorted(said)


def test_a_disabled_service_run_by_name_keeps_its_entry_until_a_run_that_does_not_name_it(
    box,
):
    """As docs/monitoring.md now says (it said: until a run of every service)."""
    disabled = QUICK.format(name="db").replace("{name: db}", "{name: db, enabled: false}")
    box.add_service("db", disabled)
    made = box.cli("run", "--service", "db")
    assert made.returncode == 0, made.stderr
    assert "db" in status(box)["services"]
    made = box.cli("run", "--service", "files")
    assert made.returncode == 0, made.stderr
    assert "db" not in status(box)["services"]


def test_disabling_every_service_leaves_the_status_file_as_it_was(box):
    """As docs/monitoring.md now says: a run with no enabled service writes nothing (the
    docs said a disabled service leaves at the next run, whatever the others)."""
    before = status(box)
    for name in ("files", "db", "old"):
        off = QUICK.format(name=name).replace("}", ", enabled: false}", 1)
        box.add_service(name, off)
    made = box.cli("run")
    assert made.returncode == 0, made.stderr
    assert "no enabled services" in made.stderr
    assert status(box) == before


def test_a_run_of_one_service_keeps_the_others_entries_as_they_were(box):
    before = status(box)["services"]["db"]
    made = box.cli("run", "--service", "files")
    assert made.returncode == 0, made.stderr
    after = status(box)["services"]["db"]
    assert (after["ok"], after["error"]) == (before["ok"], before["error"]), after
    assert 'pullback_client_service_ok{service="db"} 1' in (box.root / "client.prom").read_text()


def test_runs_that_report_nothing_prune_nothing(box):
    """--dry-run, a run refused by the lock, start-stopped, a run with no enabled service
    named: the entries stay."""
    shutil.rmtree(box.services / "old")
    before = status(box)["services"]
    assert box.cli("run", "--dry-run").returncode == 0
    assert box.cli("start-stopped").returncode == 0
    assert box.cli("run", "--service", "nosuch").returncode == 2
    assert status(box)["services"] == before
    _mark(box)  # a killed run's mark: start-stopped reports it, and prunes nothing
    made = box.cli("start-stopped")
    assert made.returncode == 0, made.stderr
    assert sorted(status(box)["services"]) == ["db", "files", "old"]
    assert "dropped from the status" not in made.stderr


def test_a_run_that_fails_as_a_whole_prunes_but_reports(box):
    shutil.rmtree(box.services / "old")
    box.write_config(
        email=box.email, metrics_file=str(box.root / "client.prom"), min_free_space="100P"
    )
    made = box.cli("run")
    assert made.returncode == 1
    said = status(box)
    assert said["last_run_ok"] is False and "not enough free space" in said["error"]
    assert sorted(said["services"]) == ["db", "files"]


def test_odd_names_of_entries_and_a_service_named_like_json(box):
    """Entries a hand (or an older version) left with odd names: dropped, said escaped and
    bounded in one line; the run reports normally."""
    path = box.archives / ".client-status.json"
    said = json.loads(path.read_text())
    said["services"].update({"x\n\x1b[31mevil" * 50: {"ok": True}, "": {}, "Files": {"ok": 1}})
    path.write_text(json.dumps(said))
    made = box.cli("run")
    assert made.returncode == 0, made.stderr
    assert sorted(status(box)["services"]) == ["db", "files", "old"]
    (line,) = [x for x in made.stderr.splitlines() if "dropped from the status" in x]
    assert "\x1b" not in line and len(line) < 600


# -- odd status files ------------------------------------------------------------------


@pytest.mark.parametrize(
    "shape", [{"services": []}, {"services": {"files": 5}}, [], {"services": None}]
)
def test_a_status_file_of_another_shape_does_not_stop_every_report(box, shape):
    (box.archives / ".client-status.json").write_text(json.dumps(shape))
    made = box.cli("run")
    assert made.returncode == 0, made.stderr[-2000:]
    assert "is not a status file of this shape: written anew" in made.stderr
    assert status(box)["last_run_ok"] is True
    assert sorted(status(box)["services"]) == ["db", "files", "old"]


# -- a run a bug ended -----------------------------------------------------------------


@pytest.mark.parametrize("kind", ["MemoryError", "RecursionError", "KeyError"])
def test_a_crash_reports_its_type_alone_everywhere(box, tmp_path, kind):
    env = site_env(
        tmp_path,
        f"""
        import pullback.client.run as run
        def crash(self):
            raise {kind}("SECRET-password-in-message")
        run.ClientRun.run = crash
        """,
    )
    made = box.cli("run", env=env)
    assert made.returncode == 70, made.stderr
    said = status(box)
    assert said["error"] == INTERNAL.format(kind)
    prom = (box.root / "client.prom").read_text()
    assert "pullback_client_last_run_ok 0" in prom
    (mail,) = mails(box)
    for text in (json.dumps(said), prom, mail, made.stdout):
        assert "SECRET" not in text
    assert not (box.root / "stopped.json").exists()


def test_a_crash_while_an_application_is_stopped_starts_it_again(tmp_path, standins):
    from tests.helpers.killed_run_box import make_box, record

    b = make_box(tmp_path, standins)
    env = {
        **b.env,
        **site_env(
            tmp_path,
            """
            import pullback.client.stages as stages
            original = stages.ServiceRun.dump
            def dump(self, runnable):
                if self.service.name == "shop":  # (after its prepare stopped app.service)
                    raise TypeError("SECRET")
                return original(self, runnable)
            stages.ServiceRun.dump = dump
            """,
        ),
    }
    made = b.cli("run", env=env)
    assert made.returncode == 70, made.stderr
    calls = [c for c in map(json.dumps, b.calls()) if "app.service" in c]
    assert any("stop" in c for c in calls) and any('"start"' in c for c in calls), (
        calls,
        b.calls(),
        made.stderr,
    )
    assert not record(b).exists()
    said = status(b)
    assert said["error"] == INTERNAL.format("TypeError")
    assert said["last_run_ok"] is False


def test_an_os_error_is_not_reported_as_a_bug(box):
    (box.root / "plain").write_text("x")
    box.write_config(
        email=box.email,
        metrics_file=str(box.root / "client.prom"),
        work_dir=str(box.root / "plain" / "work"),
    )
    made = box.cli("run")
    assert made.returncode == 1, made.stderr  # (an error of the machine, said: not a bug)
    said = status(box)["error"]
    first = said.split("; ")[0]  # (then: the record beside work_dir cannot be read)
    assert first.startswith("the run stopped: ") and first.endswith(": Not a directory"), said
    assert "please report it" not in made.stderr and "Traceback" not in made.stderr
    assert first in made.stderr


def test_a_crash_before_the_mark_reports_itself(box, tmp_path):
    env = site_env(
        tmp_path,
        """
        import pullback.client.stopped as stopped
        def begin(self, services, carried=None):
            raise TypeError("SECRET")
        stopped.StoppedRecord.begin = begin
        """,
    )
    made = box.cli("run", env=env)
    assert made.returncode == 70, made.stderr
    assert status(box)["error"] == INTERNAL.format("TypeError")


def test_a_crash_in_the_report_is_not_reported_as_ok(box, tmp_path):
    env = site_env(
        tmp_path,
        """
        import pullback.client.outputs as outputs
        def metrics(status):
            raise TypeError("SECRET")
        outputs.metrics = metrics
        """,
    )
    made = box.cli("run", env=env)
    assert made.returncode == 70, made.stderr
    assert status(box)["last_run_ok"] is False


def test_a_signal_during_the_crash_report_keeps_the_traceback(box, tmp_path):
    env = site_env(
        tmp_path,
        """
        import os, signal
        import pullback.client.run as run
        def crash(self):
            with self.guard.shielded():  # (a finish stage, say, when the unit is stopped)
                os.kill(os.getpid(), signal.SIGTERM)
                raise TypeError("SECRET")
        run.ClientRun.run = crash
        """,
    )
    made = box.cli("run", env=env)
    assert status(box)["error"] == INTERNAL.format("TypeError")  # (what the report says)
    assert "internal error, please report it" in made.stderr, made.stderr
    assert "Traceback" in made.stderr and "TypeError" in made.stderr
    assert made.returncode == 143  # (the signal's: the unit was stopped)


# -- how a killed run ended ------------------------------------------------------------


def _run(**kw) -> stopped.Underway:
    return stopped.Underway(4242, AT, ["files"], [], **kw)


def test_ended_how_words_are_bounded_and_escaped():
    booted = procfs.boot_id()
    assert booted
    hostile = "x" * 5000 + "\n\x1b[2J{status}{result}"
    unit = {"INVOCATION_ID": "u1"}
    for result in ("signal", "core-dump", "exit-code", hostile, "{0}", "{status!r}"):
        words = stopped.ended_how(
            _run(boot=booted, invocation="u1"),
            {"SERVICE_RESULT": result, "EXIT_STATUS": hostile, **unit},
        )
        assert words.isprintable() and len(words) < 80, words
    assert stopped.ended_how(_run(boot=booted), {}) == "killed?"
    assert stopped.ended_how(_run(), {"SERVICE_RESULT": "success"}) == "killed?"
    odd = "\n" * 3 + "y" * 100000
    assert stopped.ended_how(_run(boot=odd), {}) == "the machine restarted before it ended"
    oom = {"SERVICE_RESULT": "oom-kill", **unit}
    assert stopped.ended_how(_run(boot=None, invocation="u1"), oom) == "killed by the OOM killer"


def test_ended_how_without_a_boot_id(monkeypatch):
    monkeypatch.setattr(stopped, "boot_id", lambda: None)
    assert stopped.ended_how(_run(boot="abc"), {}) == "killed?"
    timeout = {"SERVICE_RESULT": "timeout", "INVOCATION_ID": "u1"}
    assert stopped.ended_how(_run(boot="abc", invocation="u1"), timeout) == (
        "stopped by systemd at a timeout"
    )


@pytest.mark.parametrize("boot", [5, ["a"], {"a": 1}])
def test_a_mark_whose_boot_is_no_string_is_a_damaged_record(box, boot):
    _mark(box, boot=boot)
    made = box.cli("start-stopped")
    assert made.returncode == 1, made.stderr
    assert (box.root / "stopped.json.damaged").exists()
    assert "boot, invocation, ended or token is not a string" in status(box)["error"]


def test_a_mark_of_an_earlier_boot_and_of_an_older_version(box):
    _mark(box, boot="0" * 36)
    made = box.cli("start-stopped", env={"SERVICE_RESULT": "signal", "EXIT_STATUS": "KILL"})
    assert made.returncode == 0, made.stderr
    assert "(the machine restarted before it ended)" in status(box)["error"]
    # each mark another run's (pid and start): the status file names the run it reported,
    # and a mark of that run again would be one a power cut left after its report
    _mark(box, at="2026-12-05T01:00:01Z")  # (no boot, no unit run: an older version's;
    # systemd speaks of another run)
    made = box.cli("start-stopped", env={"SERVICE_RESULT": "signal", "EXIT_STATUS": "KILL"})
    assert "(killed?)" in status(box)["error"]
    _mark(box, at="2026-12-05T01:00:02Z", invocation="u1")  # (the unit's own run)
    unit = {"SERVICE_RESULT": "signal", "EXIT_STATUS": "KILL", "INVOCATION_ID": "u1"}
    made = box.cli("start-stopped", env=unit)
    assert "(killed by SIGKILL)" in status(box)["error"]
    _mark(box, at="2026-12-05T01:00:03Z")
    made = box.cli("run")  # (the next run: no $SERVICE_RESULT)
    assert made.returncode == 1
    assert "(killed?)" in status(box)["error"]


def test_systemds_words_are_said_of_the_units_run_alone(box):
    _mark(box, boot=procfs.boot_id())  # (a run started by hand, pid 4242, killed)
    unit = {"SERVICE_RESULT": "exit-code", "EXIT_STATUS": "70", "INVOCATION_ID": "f" * 32}
    made = box.cli("start-stopped", env=unit)  # (the unit's run crashed before its mark)
    assert made.returncode == 0, made.stderr
    assert "it exited with status 70" not in status(box)["error"]
