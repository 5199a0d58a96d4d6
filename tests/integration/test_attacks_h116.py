"""helper-116's outside review: a third-party plugin written from docs/plugins.md and the
docstrings of plugins/hookspecs.py, read literally; then plugins that misbehave.

Part 1 (newcomer): a plugin shipped as a distribution (an entry point of the group
``pullback``), checked, run and restored with the real ``pullback-client``; the mistakes
a newcomer makes (a misspelled hook, a wrong return type) and what the client says.
Part 2 (hostile or buggy plugins): hooks that raise BaseException subclasses, call
sys.exit() at load, leak their secret into an exception, raise enormous messages,
change the process's umask, environment or signal handlers, fork a child that lives on.

A promise that did not hold was ``xfail(strict=True)`` until mended (none is marked
now); every test asserts what the documents say. Real client runs as subprocesses
(tests/helpers/client.py's ClientSandbox). The distribution is a real one as far as
``importlib.metadata`` can tell (a package and its ``.dist-info`` with
``entry_points.txt``, on PYTHONPATH), not pip-installed: a pip install per test is slow
and needs the network or a wheel cache; docs/plugins.md's other way, a ``*.py`` in
``plugin_dirs``, is used for the misbehaving plugins. ``systemctl`` is the recording
stand-in (tests/standins/standin.py, the ``standins`` fixture).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from tests.helpers.client import ClientSandbox

pytestmark = pytest.mark.integration

SECRET = "tok-S3cretValue-h116"

# -- the newcomer's plugin, as docs/plugins.md's example, archiving one notes file --------

NOTES_PLUGIN = '''
"""A third-party pullback plugin written from docs/plugins.md: archives one notes file."""
import os
import shutil
from pathlib import Path

from pullback.plugins import Requirement, TaskError, TaskType, hookimpl

SCHEMA = {
    "type": "object",
    "additionalProperties": False,
    "required": ["path"],
    "properties": {
        "path": {"type": "string", "pattern": "^/", "description": "The notes file."},
        "token": {"type": "string", "x-secret": True, "description": "A token."},
        "timeout": {"type": "integer", "minimum": 1, "default": 60,
                    "description": "Seconds one dump may take."},
    },
}


@hookimpl
def pullback_task_types():
    return [TaskType("h116notes", SCHEMA, description="a notes file",
                     requires=(Requirement(("cat",), "coreutils"),))]


@hookimpl
def pullback_validate(task):
    path = task.config["path"]
    return [] if os.path.isfile(path) else [f"notes file {path} does not exist"]


@hookimpl
def pullback_plan(task):
    return [f"copy {task.config['path']}"]


@hookimpl
def pullback_dump(task):
    env = {"NOTES_TOKEN": task.config["token"]} if "token" in task.config else {}
    task.run(["cat", task.config["path"]], stdout=task.staging / "notes.txt", env=env,
             timeout=task.config["timeout"])


@hookimpl
def pullback_restore(task, source, target, plan):
    copy = source / "notes.txt"
    if not copy.is_file():
        raise TaskError(f"{copy} is not in the snapshot")
    live = Path(task.config["path"])
    if target is not None:
        place = target / str(live).lstrip("/")
    elif plan.replace:
        place = live
    else:
        place = live.with_name(f"{live.name}.restored-{plan.stamp}")
    kept = live.with_name(f"{live.name}.before-restore-{plan.stamp}")
    if place == live and live.exists() and plan.step(task.log, f"keep {live} as {kept}"):
        shutil.copy2(live, kept)
    if plan.step(task.log, f"restore the notes to {place}", destructive=place.exists()):
        place.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(copy, place)
        if place != live:
            plan.note(task.log, f"restored as {place}")
'''


def distribution(site: Path, dist: str, module: str, entry: str, code: str) -> None:
    """An installed distribution as importlib.metadata sees one: ``module`` and
    ``<dist>-0.1.dist-info`` with ``[pullback] entry = module`` (docs/plugins.md,
    "Where plugins come from")."""
    (site / module).mkdir(parents=True)
    (site / module / "__init__.py").write_text(textwrap.dedent(code))
    info = site / f"{dist.replace('-', '_')}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[pullback]\n{entry} = {module}\n")


@pytest.fixture
def newcomer(tmp_path):
    site = tmp_path / "site"
    distribution(site, "pullback-h116fake", "h116fake_notes", "h116fake", NOTES_PLUGIN)
    env = {"PYTHONPATH": os.pathsep.join([str(site), *sys.path])}
    box = ClientSandbox(tmp_path / "client")
    notes = tmp_path / "live" / "notes.txt"
    notes.parent.mkdir()
    notes.write_text("hello notes\n")
    box.add_service(
        "diary",
        f"""\
        service:
          name: diary
        h116notes:
          path: {notes}
          token: "{SECRET}"
        """,
    )
    return box, env, notes, site


def test_a_distribution_plugin_as_documented_checks_runs_and_restores(newcomer, tmp_path):
    """docs/plugins.md read literally: an entry point of the group ``pullback``, a
    schema with a secret and defaults, validate/plan/dump/restore; check, run --dry-run,
    run, and restore beside, with --replace and with --target. Held."""
    box, env, notes, _ = newcomer
    checked = box.cli("check", env=env)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    dry = box.cli("run", "--dry-run", env=env)
    assert dry.returncode == 0 and f"copy {notes}" in dry.stdout
    made = box.cli("run", env=env)
    assert made.returncode == 0, made.stderr
    assert SECRET not in made.stderr
    [archive] = box.published()
    assert box.sidecar(archive)["services"][0]["status"] == "ok"
    beside = box.cli("restore", "--service", "diary", "--from", str(archive), env=env)
    assert beside.returncode == 0, beside.stderr
    [restored] = notes.parent.glob("notes.txt.restored-*")
    assert restored.read_text() == "hello notes\n"
    notes.write_text("changed\n")
    replaced = box.cli(
        "restore", "--service", "diary", "--from", str(archive), "--replace", env=env
    )
    assert replaced.returncode == 0, replaced.stderr
    assert notes.read_text() == "hello notes\n"
    [kept] = notes.parent.glob("notes.txt.before-restore-*")
    assert kept.read_text() == "changed\n"
    target = tmp_path / "target"
    below = box.cli(
        "restore",
        "--service",
        "diary",
        "--from",
        str(archive),
        "--target",
        str(target),
        env=env,
    )
    assert below.returncode == 0, below.stderr
    assert (target / str(notes).lstrip("/")).read_text() == "hello notes\n"


def test_an_entry_point_that_fails_to_import_is_named_with_its_distribution(newcomer):
    """docs/plugins.md: "An entry point that fails to import is reported with its
    distribution and skipped alone; the others load." Held."""
    box, env, _, site = newcomer
    distribution(site, "pullback-h116broken", "h116broken", "h116broken", "import nosuchmod\n")
    checked = box.cli("check", env=env)
    assert checked.returncode == 2
    assert "pullback-h116broken" in checked.stdout and "nosuchmod" in checked.stdout
    made = box.cli("run", env=env)
    assert made.returncode == 0, made.stderr  # (the other plugin's service ran)


# -- plugins in plugin_dirs ----------------------------------------------------------------

EVIL = """
import os, signal, subprocess, sys, time
from pullback.plugins import TaskType, hookimpl

SCHEMA = {"type": "object", "additionalProperties": False, "properties": {
    "mode": {"type": "string", "default": "ok"},
    "finish_mode": {"type": "string", "default": "ok"},
    "restore_mode": {"type": "string", "default": "ok"},
    "arg": {"type": "string", "default": ""},
    "token": {"type": "string", "x-secret": True}}}


@hookimpl
def pullback_task_types():
    return [TaskType("evil", SCHEMA)]


def misbehave(task, mode):
    arg, token = task.config["arg"], task.config.get("token", "")
    if mode == "kbint":
        raise KeyboardInterrupt
    if mode == "genexit":
        raise GeneratorExit
    if mode == "sysexit":
        sys.exit(3)
    if mode == "secret":
        raise RuntimeError(f"cannot log in with {token}")
    if mode == "hugemsg":
        raise RuntimeError("x" * int(arg))
    if mode == "umask":
        os.umask(0)
    if mode == "path":
        os.environ["PATH"] = "/nonexistent"
    if mode == "sigign":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if mode == "sleep":
        time.sleep(float(arg))
    if mode == "fork":
        child = os.fork()
        if child == 0:
            time.sleep(float(arg))
            os._exit(0)
        (task.staging.parent.parent.parent.parent.parent / "child.pid").write_text(str(child))
    if mode == "flood":
        task.run(["sh", "-c", "seq 1 100000"], timeout=60)
    if mode == "symlink":
        (task.staging / "shadow").symlink_to("/etc/shadow")


@hookimpl
def pullback_prepare(task):
    pass


@hookimpl
def pullback_dump(task):
    (task.staging / "evil.txt").write_text("evil data\\n")
    misbehave(task, task.config["mode"])
    return "x" * 10**6  # (a return value is ignored)


@hookimpl
def pullback_restore(task, source, plan):
    misbehave(task, task.config["restore_mode"])


@hookimpl
def pullback_finish(task, failed):
    misbehave(task, task.config["finish_mode"])
"""

GOOD = """\
service:
  name: {name}
files:
  paths: [{data}]
command:
  dump:
    - run: ["cat", "{data}/a.txt"]
      output: cat.txt
"""


class Box(ClientSandbox):
    plugins: Path
    data: Path


@pytest.fixture
def box(tmp_path) -> Box:
    """A client with the misbehaving plugin in plugin_dirs and a good service ``zgood``
    (sorted after the evil ones: it runs last), its metrics file and a mail kept."""
    b = Box(tmp_path / "client")
    b.plugins = tmp_path / "plugins"
    b.plugins.mkdir()
    (b.plugins / "evil.py").write_text(EVIL)
    b.data = tmp_path / "data"
    b.data.mkdir()
    (b.data / "a.txt").write_text("good data\n")
    b.mails = tmp_path / "mails.txt"
    sendmail = tmp_path / "sendmail"
    sendmail.write_text(f"#!/bin/sh\ncat >> {b.mails}; echo ==== >> {b.mails}\n")
    sendmail.chmod(0o755)
    b.write_config(
        plugin_dirs=[str(b.plugins)],
        metrics_file=str(tmp_path / "client.prom"),
        email={"sendmail": str(sendmail), "from": "pb@x.test", "to": ["root@x.test"]},
    )
    b.add_service("zgood", GOOD.format(name="zgood", data=b.data))
    return b


def evil(b: Box, name: str = "bad", **section: str) -> None:
    lines = "".join(f"  {k}: {json.dumps(v)}\n" for k, v in section.items())
    b.add_service(name, f"service:\n  name: {name}\nevil:\n  token: {SECRET!r}\n{lines}")


def start(b: Box, *args: str) -> subprocess.Popen:
    """``pullback-client`` started, its output to ``out.txt`` (not a pipe: a child the
    plugin leaves behind would hold a pipe open)."""
    out = (b.root / "out.txt").open("w")
    argv = [sys.executable, "-m", "pullback.client.cli", "--config", str(b.config), *args]
    return subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)


def status(b: Box) -> dict:
    return json.loads((b.archives / ".client-status.json").read_text())


def good_archived(b: Box) -> bool:
    """The newest archive holds zgood's file, and its sidecar says zgood is ok."""
    if not b.published():
        return False
    archive = b.published()[-1]
    side = b.sidecar(archive)
    ok = {s["name"]: s["status"] for s in side["services"]}.get("zgood") == "ok"
    names = subprocess.run(
        ["tar", "--zstd", "-tf", str(archive)], capture_output=True, text=True, check=True
    ).stdout
    return ok and "services/zgood/command/cat.txt" in names


def fingerprint(b: Box) -> dict[str, str]:
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in b.archives.glob("testhost-*")
    }


@pytest.fixture
def earlier(box) -> dict[str, str]:
    """One good archive made before the attack; its files' sha256 (must never change)."""
    made = box.cli("run")
    assert made.returncode == 0, made.stderr
    return fingerprint(box)


def assert_earlier_intact(b: Box, before: dict[str, str]) -> None:
    now = fingerprint(b)
    assert {k: now.get(k) for k in before} == before


# -- held ----------------------------------------------------------------------------------


def test_sys_exit_in_a_dump_fails_only_its_service(box, earlier):
    """docs/plugins.md "Never call sys.exit()": caught, the task fails, the others run."""
    evil(box, mode="sysexit")
    time.sleep(1.1)  # (a new archive stamp)
    made = box.cli("run")
    assert made.returncode == 1
    assert "dump failed: the plugin called sys.exit(3)" in made.stderr
    assert good_archived(box)
    assert status(box)["services"]["bad"]["ok"] is False
    metrics = (box.root.parent / "client.prom").read_text()
    assert 'pullback_client_service_ok{service="bad"} 0' in metrics
    assert_earlier_intact(box, earlier)


def test_a_secret_in_an_exception_is_masked_in_the_log_sidecar_and_mail(box):
    """docs/plugins.md "Secrets": masked in task.log lines and exception messages, and
    in the sidecar. Held for the log, the sidecar, the mail and the metrics."""
    evil(box, mode="secret")
    made = box.cli("run")
    assert made.returncode == 1
    assert "cannot log in with ******" in made.stderr and SECRET not in made.stderr
    [archive] = box.published()
    assert SECRET not in archive.with_name(archive.name + ".json").read_text()
    assert box.mails.exists() and SECRET not in box.mails.read_text()
    assert SECRET not in (box.root.parent / "client.prom").read_text()


def test_a_symlink_out_of_the_staging_directory_is_archived_as_a_symlink(box):
    """A dump that leaves ``shadow -> /etc/shadow`` in its staging: the link, never the
    file it points to, is archived."""
    evil(box, mode="symlink")
    made = box.cli("run")
    assert made.returncode == 0, made.stderr
    listing = subprocess.run(
        ["tar", "--zstd", "-tvf", str(box.published()[-1])],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    [line] = [x for x in listing.splitlines() if "services/bad/evil/shadow" in x]
    assert line.startswith("l") and "-> /etc/shadow" in line


def test_a_hanging_hook_is_ended_by_sigterm_and_the_earlier_archive_kept(box, earlier):
    """docs/plugins.md "No hook has a time limit ... SIGTERM still ends it": exit 143,
    nothing published, the earlier archive untouched, the status file says it."""
    evil(box, mode="sleep", arg="600")
    proc = start(box, "run")
    time.sleep(3)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 143
    assert len(box.published()) == 1
    assert_earlier_intact(box, earlier)
    assert status(box)["last_run_ok"] is False


def test_a_restore_hook_raising_keyboardinterrupt_still_starts_the_application(box, standins):
    """In a restore the finishes run in a ``finally``: a restore hook's KeyboardInterrupt
    (no signal) still has the systemd task start app.service again. Held."""
    standins.set(running=[], active=["app.service"])
    box.add_service(
        "shop",
        "service:\n  name: shop\nsystemd:\n  units: [app.service]\nevil:\n  restore_mode: kbint\n",
    )
    made = box.cli("run", env=standins.env)
    assert made.returncode == 0, made.stderr
    [archive] = box.published()
    before = len(standins.calls())
    restored = box.cli("restore", "--service", "shop", "--from", str(archive), env=standins.env)
    calls = [c["args"] for c in standins.calls()[before:] if c["program"] == "systemctl"]
    assert ["stop", "app.service"] in calls and calls[-1] == ["start", "app.service"], calls
    assert restored.returncode != 0


def test_a_plugin_declaring_a_built_in_key_does_not_take_its_tasks(box):
    """docs/plugins.md: "a built-in's key stays the built-in's, and the other plugin's
    declaration is an error naming both". A plugin claiming ``files`` and ``command``
    (another service's tasks) gets none of their hooks. Held."""
    (box.plugins / "thief.py").write_text(
        "from pullback.plugins import TaskType, hookimpl\n\n"
        "@hookimpl\ndef pullback_task_types():\n"
        "    return [TaskType('files'), TaskType('command')]\n\n"
        "@hookimpl\ndef pullback_dump(task):\n    raise RuntimeError('stolen')\n"
    )
    checked = box.cli("check")
    assert "thief.py: task 'files' is already handled by pullback.plugins.files" in checked.stdout
    made = box.cli("run")
    assert "stolen" not in made.stderr
    assert good_archived(box)


def test_a_commands_flood_of_output_is_bounded_in_the_log(box):
    """docs/plugins.md "Running commands": every line logged up to 2000 lines. Held: a
    command printing 100,000 lines costs about 2,000 lines of log."""
    evil(box, mode="flood")
    made = box.cli("run")
    assert made.returncode == 0, made.stderr
    assert len(made.stderr.splitlines()) < 2100
    assert good_archived(box)


# -- defects -------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["kbint", "genexit"])
def test_a_base_exception_from_a_dump_fails_only_its_service(box, mode):
    evil(box, mode=mode)
    made = box.cli("run")
    assert made.returncode == 1, made.stderr
    assert good_archived(box)
    assert status(box)["services"]["bad"]["ok"] is False


def test_a_base_exception_from_a_finish_still_runs_the_other_finishes(box, standins):
    standins.set(running=[], active=["app.service"])
    box.add_service(
        "shop",
        "service:\n  name: shop\nsystemd:\n  units: [app.service]\nevil:\n  finish_mode: genexit\n",
    )
    made = box.cli("run", env=standins.env)
    calls = [c["args"] for c in standins.calls() if c["program"] == "systemctl"]
    assert ["start", "app.service"] in calls, (calls, made.stderr[-2000:])
    assert made.returncode == 1


def test_sys_exit_while_declaring_task_types_costs_only_that_plugin(box):
    (box.plugins / "exiter.py").write_text(
        "import sys\nfrom pullback.plugins import hookimpl\n\n"
        "@hookimpl\ndef pullback_task_types():\n    sys.exit('no config for me')\n"
    )
    checked = box.cli("check")
    assert "exiter.py" in checked.stdout, checked.stdout + checked.stderr
    made = box.cli("run")
    assert good_archived(box), made.stderr


def test_a_secret_in_an_exception_is_not_in_the_status_file(box):
    evil(box, mode="secret")
    box.cli("run")
    text = (box.archives / ".client-status.json").read_text()
    assert "cannot log in with" in text
    assert SECRET not in text


def test_a_huge_exception_message_is_bounded_in_the_status_file(box):
    evil(box, mode="hugemsg", arg="2000000")
    made = box.cli("run")
    assert made.returncode == 1
    assert len(made.stderr) < 64 << 10  # (held: the log cuts it)
    [archive] = box.published()
    assert archive.with_name(archive.name + ".json").stat().st_size < 64 << 10  # (held)
    assert (box.archives / ".client-status.json").stat().st_size < 64 << 10


def test_a_plugins_environment_change_does_not_fail_another_service(box):
    evil(box, mode="path")
    made = box.cli("run")
    assert good_archived(box), made.stderr


def test_a_plugins_umask_does_not_reach_another_services_archive(box):
    evil(box, mode="umask")
    made = box.cli("run")
    assert made.returncode == 0, made.stderr
    listing = subprocess.run(
        ["tar", "--zstd", "-tvf", str(box.published()[-1])],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    [line] = [x for x in listing.splitlines() if x.endswith("services/zgood/command/cat.txt")]
    assert line.startswith("-rw-r--r--") or line.startswith("-rw-------"), line


def test_a_signal_handler_a_hook_set_does_not_outlive_it(box):
    evil(box, name="a-sig", mode="sigign")
    evil(box, name="b-slow", mode="sleep", arg="5")
    proc = start(box, "run")
    time.sleep(2.5)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 143
    assert box.published() == []


def test_a_forked_child_does_not_hold_the_run(box):
    evil(box, mode="fork", arg="12")
    started = time.monotonic()
    proc = start(box, "run")
    try:
        code = proc.wait(60)
        took = time.monotonic() - started
    finally:
        pid_file = box.root / "child.pid"
        if pid_file.exists():
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid_file.read_text()), signal.SIGKILL)
    assert code == 0
    assert took < 8, f"the run took {took:.1f}s: it waited for the plugin's child"


def test_a_probe_returning_a_list_is_reported_not_a_crash(box):
    (box.plugins / "prober.py").write_text(
        "from pullback.plugins import TaskType, hookimpl\n\n"
        "@hookimpl\ndef pullback_task_types():\n    return [TaskType('prober')]\n\n"
        "@hookimpl\ndef pullback_probe(task):\n    return ['cannot log in']\n"
    )
    box.add_service("aprobe", "service:\n  name: aprobe\nprober: {}\n")
    checked = box.cli("check")
    assert checked.returncode == 2, checked.stderr[-1500:]
    assert "aprobe" in checked.stdout


def test_a_plan_returning_a_string_is_one_line(box):
    (box.plugins / "planner.py").write_text(
        "from pullback.plugins import TaskType, hookimpl\n\n"
        "@hookimpl\ndef pullback_task_types():\n    return [TaskType('planner')]\n\n"
        "@hookimpl\ndef pullback_plan(task):\n    return 'copy the notes'\n"
    )
    box.add_service("aplan", "service:\n  name: aplan\nplanner: {}\n")
    dry = box.cli("run", "--dry-run")
    assert "    copy the notes\n" in dry.stdout, dry.stdout


def test_a_misspelled_hook_is_named_under_plugin_dirs(box):
    (box.plugins / "typo.py").write_text(
        "from pullback.plugins import TaskType, hookimpl\n\n"
        "@hookimpl\ndef pullback_task_types():\n    return [TaskType('typo')]\n\n"
        "@hookimpl\ndef pullback_dumb(task):\n    pass\n"
    )
    checked = box.cli("check")
    [line] = [x for x in checked.stdout.splitlines() if "pullback_dumb" in x]
    assert line.startswith(f"{box.config}: plugin_dirs: "), line
