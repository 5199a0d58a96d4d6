"""An outside attack (helper-92) on the restores of the sqlite, docker, systemd, command
and influxdb tasks: what ``pullback-client restore`` promises in docs/restore.md ("a
restore never destroys what it cannot rebuild", what it stops it starts again "whatever
happened", ``--dry-run`` "prints every step on standard output, marks the destructive
ones").

No Docker engine, no systemd as PID 1 and no InfluxDB here: ``docker`` is the recording
stand-in of tests/standins/standin.py, ``systemctl`` and ``influxd`` are small fakes
written below (they keep the units' state in files). Everything else is real: the CLI,
sqlite3, runuser, signals.

Each defect was ``xfail(strict=True)`` until mended (none is marked now); the others pin
what held.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tests.helpers.client import ClientSandbox

STANDIN = Path(__file__).parent.parent / "standins" / "standin.py"

FAKE_SYSTEMCTL = """\
#!/bin/sh
# units are active while $FAKE_SD/active/<unit> exists; every call is logged
d=$FAKE_SD
echo "systemctl $*" >> "$d/calls"
verb=$1; shift
case "$verb" in
is-active) [ "$1" = "--quiet" ] && shift; [ -e "$d/active/$1" ] && exit 0; exit 3;;
stop) [ -e "$d/fail-stop-$1" ] && { echo "Job for $1 failed." >&2; exit 1; }
      rm -f "$d/active/$1"; exit 0;;
start) [ -e "$d/fail-start-$1" ] && { echo "Job for $1 failed." >&2; exit 1; }
       touch "$d/active/$1"; exit 0;;
esac
exit 0
"""

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (runuser, chown)")


@pytest.fixture
def shared(shared_root):
    """A directory another user (nobody) can reach: pytest's tmp is root's only."""
    return shared_root


@pytest.fixture
def units(tmp_path):
    """A fake systemctl on PATH; ``units.env`` for the CLI, ``units.active()``."""
    bin_dir = tmp_path / "fakebin"
    bin_dir.mkdir()
    (bin_dir / "systemctl").write_text(FAKE_SYSTEMCTL)
    (bin_dir / "systemctl").chmod(0o755)
    state = tmp_path / "sd"
    (state / "active").mkdir(parents=True)

    class Units:
        env = {"PATH": f"{bin_dir}:{os.environ['PATH']}", "FAKE_SD": str(state)}

        @staticmethod
        def activate(*names):
            for name in names:
                (state / "active" / name).touch()

        @staticmethod
        def active():
            return sorted(os.listdir(state / "active"))

        @staticmethod
        def fail(what):
            (state / what).touch()

        @staticmethod
        def calls():
            path = state / "calls"
            return path.read_text().splitlines() if path.exists() else []

    return Units()


@pytest.fixture
def docker(standins):
    """The recording stand-ins on PATH (no Docker engine here: mocked), web running."""
    standins.set(running=["web"])
    return standins


def as_nobody(*argv: str) -> None:
    subprocess.run(["runuser", "-u", "nobody", "--", *argv], check=True)


def rows(path: Path) -> list[str]:
    uri = "file:" + str(path).replace("%", "%25").replace("#", "%23").replace("?", "%3f")
    db = sqlite3.connect(uri + "?mode=ro", uri=True)
    try:
        return [r[0] for r in db.execute("SELECT x FROM t")]
    except sqlite3.OperationalError as exc:
        return [f"<{exc}>"]
    finally:
        db.close()


def sqlite_service(base: Path, live: Path, extra: str = "") -> tuple[ClientSandbox, Path]:
    box = ClientSandbox(base / "client")
    box.add_service("shop", f"service: {{name: shop}}\nsqlite: {{paths: ['{live}']}}\n{extra}")
    result = box.cli("run")
    assert result.returncode == 0, result.stderr
    (archive,) = box.published()
    return box, archive


def restore(box: ClientSandbox, archive: Path, *args: str, service="shop", env=None):
    return box.cli("restore", "--service", service, "--from", str(archive), *args, env=env)


def private_db(live: Path, secret: str, blob: int, count: int) -> Path:
    """A 0600 database holding ``secret``, made large (``count`` blobs of ``blob``
    bytes) so that copying it takes a while."""
    db = sqlite3.connect(live)
    db.execute("CREATE TABLE t(x)")
    db.execute("INSERT INTO t VALUES (?)", (secret,))
    db.execute("CREATE TABLE filler(b)")
    db.executemany(f"INSERT INTO filler VALUES (randomblob({blob}))", [()] * count)
    db.commit()
    db.close()
    live.chmod(0o600)
    return live


def owned_db(path: Path) -> None:
    """A database its application's user (nobody) made, in a directory that user owns."""
    code = (
        f"import sqlite3; db = sqlite3.connect({str(path)!r}); "
        "db.execute('CREATE TABLE t(x)'); db.execute(\"INSERT INTO t VALUES ('backed up')\"); "
        "db.commit()"
    )
    as_nobody("/usr/bin/python3", "-c", code)


# -- sqlite ---------------------------------------------------------------------------------


@needs_root
def test_sqlite_replace_never_writes_through_a_symlink_the_directory_s_owner_planted(shared):
    app = shared / "app"
    app.mkdir()
    shutil.chown(app, "nobody", "nogroup")
    live = app / "app.db"
    owned_db(live)
    roots_dir = shared / "etc" / "profile.d"  # stands for /etc/profile.d, root's
    roots_dir.mkdir(parents=True)
    box, archive = sqlite_service(shared, live)
    planted = roots_dir / "zz-evil.sh"
    as_nobody("ln", "-s", str(planted), str(app / ".app.db.pullback-restore"))

    result = restore(box, archive, "--replace")

    assert not planted.exists(), (
        f"exit {result.returncode}; root made {planted}, owned by uid "
        f"{planted.stat().st_uid} (nobody: {planted.stat().st_uid == 65534}), mode "
        f"{oct(planted.stat().st_mode)}; {live} is now a symlink: {live.is_symlink()}; "
        f"the restore said: {result.stdout.strip()}"
    )
    assert not live.is_symlink()


@needs_root
def test_sqlite_beside_restore_never_writes_through_symlinks_planted_for_its_stamp(shared):
    app = shared / "app"
    app.mkdir()
    shutil.chown(app, "nobody", "nogroup")
    live = app / "app.db"
    owned_db(live)
    roots_dir = shared / "etc" / "cron.d"
    roots_dir.mkdir(parents=True)
    box, archive = sqlite_service(shared, live)
    now = datetime.now(UTC)
    for second in range(120):  # the next two minutes
        stamp = (now + timedelta(seconds=second)).strftime("%Y%m%dT%H%M%SZ")
        target = roots_dir / f"evil-{stamp}"
        as_nobody("ln", "-s", str(target), str(app / f".app.db.restored-{stamp}.pullback-restore"))

    result = restore(box, archive)

    made = sorted(p.name for p in roots_dir.iterdir())
    assert not made, f"exit {result.returncode}; root made {made} in {roots_dir}"


def test_sqlite_a_database_named_with_a_hash_survives_backup_and_replace(tmp_path):
    app = tmp_path / "app"
    app.mkdir()
    live = app / "notes#2.db"
    db = sqlite3.connect(live)
    db.execute("CREATE TABLE t(x)")
    db.execute("INSERT INTO t VALUES ('precious')")
    db.commit()
    db.close()
    box, archive = sqlite_service(tmp_path, live)
    strays = sorted(p.name for p in app.iterdir() if p.name != live.name)

    result = restore(box, archive, "--replace")

    (kept,) = app.glob("notes#2.db.before-restore-*")
    assert rows(live) == ["precious"] or rows(kept) == ["precious"], (
        f"exit {result.returncode}, said {result.stdout.strip()!r}; the backup left "
        f"{strays} beside the database; live now has tables: "
        f"{sqlite3.connect(live).execute('select name from sqlite_master').fetchall()}"
    )


def test_sqlite_replace_under_a_live_writer_loses_no_committed_row(tmp_path):
    live = tmp_path / "app" / "app.db"
    live.parent.mkdir()
    db = sqlite3.connect(live)
    db.execute("PRAGMA journal_mode=wal")
    db.execute("CREATE TABLE t(x)")
    db.execute("CREATE TABLE filler(b)")
    db.executemany("INSERT INTO filler VALUES (randomblob(100000))", [()] * 200)
    db.execute("INSERT INTO t VALUES ('backed up')")
    db.commit()
    db.close()
    box, archive = sqlite_service(tmp_path, live)
    writer = subprocess.Popen(
        [
            sys.executable,
            "-c",
            f"""
import sqlite3, time
db = sqlite3.connect({str(live)!r}, timeout=60)
i, end = 0, time.time() + 5
while time.time() < end:
    i += 1
    db.execute("INSERT INTO t VALUES (?)", (f"app-{{i}}",)); db.commit()
    print(i, flush=True)
    time.sleep(0.01)
""",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    time.sleep(1)
    result = restore(box, archive, "--replace")
    out, _ = writer.communicate(timeout=30)
    committed = int(out.split()[-1])
    # refused while the application has it open, as PostgreSQL's and MariaDB's are
    assert result.returncode == 1, result.stderr
    assert re.search(r"app.db is open in 1 process \(python3?\[\d+\]\)", result.stderr)
    assert "stop the application" in result.stderr
    assert not list(live.parent.glob("app.db.before-restore-*"))
    lost = [i for i in range(1, committed + 1) if f"app-{i}" not in set(rows(live))]
    assert not lost, f"{len(lost)} of {committed} committed rows are not in {live.name}"


def test_sqlite_target_root_never_replaces_the_live_database_unkept(tmp_path):
    live = tmp_path / "app" / "app.db"
    live.parent.mkdir()
    with sqlite3.connect(live) as db:
        db.execute("CREATE TABLE t(x)")
        db.execute("INSERT INTO t VALUES ('backed up')")
    db.close()
    box, archive = sqlite_service(tmp_path, live)
    db = sqlite3.connect(live)
    db.execute("INSERT INTO t VALUES ('written since')")
    db.commit()
    db.close()

    dry = restore(box, archive, "--target", "/", "--dry-run")
    result = restore(box, archive, "--target", "/")

    kept = [p for p in live.parent.iterdir() if "written since" in rows(p)]
    assert kept, (
        f"dry run said {dry.stdout!r}; exit {result.returncode}; "
        f"{live} now holds {rows(live)}; nothing holds 'written since'"
    )


def test_sqlite_a_copy_failing_integrity_check_changes_nothing(tmp_path):
    """Held: one of two copies corrupt in a fetched snapshot: both refused before
    either database is touched, dry run and real alike."""
    app = tmp_path / "app"
    app.mkdir()
    paths = [app / "a.db", app / "b.db"]
    for path in paths:
        db = sqlite3.connect(path)
        db.execute("CREATE TABLE t(x)")
        db.executemany("INSERT INTO t VALUES (randomblob(500))", [()] * 200)
        db.execute("CREATE INDEX i ON t(x)")
        db.commit()
        db.close()
    box = ClientSandbox(tmp_path / "client")
    box.add_service(
        "shop", f"service: {{name: shop}}\nsqlite: {{paths: [{paths[0]}, {paths[1]}]}}\n"
    )
    assert box.cli("run").returncode == 0
    (archive,) = box.published()
    snap = tmp_path / "snap"
    snap.mkdir()
    subprocess.run(["tar", "-xf", str(archive), "-C", str(snap)], check=True)
    copy = snap / "services/shop/sqlite" / str(paths[1]).lstrip("/")
    data = bytearray(copy.read_bytes())
    for i in range(4096 * 5 + 100, 4096 * 5 + 400):
        data[i] ^= 0xFF
    copy.write_bytes(bytes(data))
    before = {p.name: p.stat().st_mtime_ns for p in app.iterdir()}
    for args in (["--replace", "--dry-run"], ["--replace"]):
        result = restore(box, snap, *args)
        assert result.returncode == 1 and "fails integrity_check" in result.stderr
    assert {p.name: p.stat().st_mtime_ns for p in app.iterdir()} == before


# -- docker (mocked engine) -----------------------------------------------------------------


def compose_app(base: Path, owner: str | None = None) -> Path:
    app = base / "app"
    app.mkdir()
    compose = app / "docker-compose.yml"
    compose.write_text("services:\n  web: {image: nginx:1.25}\n")
    (app / ".env").write_text("DB_PASSWORD=old-one\n")
    if owner:
        for path in (app, compose, app / ".env"):
            shutil.chown(path, owner, "nogroup")
    return compose


def docker_service(base: Path, compose: Path, docker, extra: str = "") -> tuple:
    box = ClientSandbox(base / "client")
    box.add_service(
        "shop", f"service: {{name: shop}}\ndocker: {{compose_file: {compose}}}\n{extra}"
    )
    result = box.cli("run", env=docker.env)
    assert result.returncode == 0, result.stderr
    (archive,) = box.published()
    return box, archive


def test_docker_restore_keeps_the_env_file_it_replaces(tmp_path, docker):
    compose = compose_app(tmp_path)
    box, archive = docker_service(tmp_path, compose, docker)
    env_file = compose.parent / ".env"
    env_file.write_text("DB_PASSWORD=rotated-since\n")

    dry = restore(box, archive, "--dry-run", env=docker.env)
    result = restore(box, archive, env=docker.env)

    assert result.returncode == 0, result.stderr
    found = subprocess.run(
        ["grep", "-rl", "rotated-since", str(tmp_path)], capture_output=True, text=True
    ).stdout.split()
    assert found, (
        f".env now says {env_file.read_text().strip()!r}; no copy of the replaced one "
        f"anywhere; the dry run printed {dry.stdout!r} on standard output"
    )


def test_docker_the_pinned_images_the_restore_names_are_there_afterwards(tmp_path, docker):
    """The note named docker-compose.pinned.yml inside the archive's unpacked copy, which
    the restore removes as it ends; it is moved below the safety directory first."""
    compose = compose_app(tmp_path)
    box = ClientSandbox(tmp_path / "client")
    box.add_service(
        "shop", f"service: {{name: shop}}\ndocker: {{compose_file: {compose}, pin_images: true}}\n"
    )
    assert box.cli("run", env=docker.env).returncode == 0
    (archive,) = box.published()
    result = restore(box, archive, env=docker.env)
    assert result.returncode == 0, result.stderr
    named = result.stdout.split("the images in use at backup time are in ", 1)[1].split()[0]
    assert "/before-restore/docker-" in named and os.path.isfile(named), result.stdout
    assert Path(named).read_text().startswith("services:")  # (the standin pins nothing)


@needs_root
def test_docker_restore_never_writes_through_a_symlink_the_directory_s_owner_planted(
    shared, docker
):
    compose = compose_app(shared, owner="nobody")
    box, archive = docker_service(shared, compose, docker)
    roots_dir = shared / "etc" / "sudoers.d"
    roots_dir.mkdir(parents=True)
    (compose.parent / ".env").unlink()
    as_nobody("ln", "-s", str(roots_dir / "zz"), str(compose.parent / ".env"))

    result = restore(box, archive, env=docker.env)

    written = roots_dir / "zz"
    assert not written.exists(), (
        f"exit {result.returncode}; root wrote {written}: {written.read_text()!r}"
    )


def test_dry_run_lists_every_step_of_docker_and_command_on_standard_output(tmp_path, docker):
    compose = compose_app(tmp_path)
    box, archive = docker_service(
        tmp_path, compose, docker, extra="command: {dump: ['echo x > x'], restore: ['true']}\n"
    )
    dry = restore(box, archive, "--dry-run", env=docker.env)
    assert dry.returncode == 0, dry.stderr
    assert ".env" in dry.stdout and "true" in dry.stdout and "stop" in dry.stdout, (
        f"standard output of the dry run: {dry.stdout!r}"
    )


def test_a_docker_task_that_stops_nothing_is_not_said_to_stop_it(tmp_path, docker):
    compose = compose_app(tmp_path)
    box, archive = docker_service(tmp_path, compose, docker, extra="")
    box.add_service(
        "shop",
        f"service: {{name: shop}}\ndocker: {{compose_file: {compose}, stop_services: false}}\n",
    )
    dry = restore(box, archive, "--dry-run", env=docker.env)
    before = len(docker.calls())
    real = restore(box, archive, env=docker.env)
    stops = [c for c in docker.calls()[before:] if "stop" in c["args"]]
    assert real.returncode == 0 and not stops
    assert "stop the application first" not in dry.stderr, dry.stderr


def test_docker_starts_again_only_services_the_restored_compose_file_defines(tmp_path, docker):
    compose = compose_app(tmp_path)
    box, archive = docker_service(tmp_path, compose, docker)
    compose.write_text("services:\n  web: {image: nginx:1.25}\n  worker: {image: busybox}\n")
    docker.set(running=["web", "worker"])
    result = restore(box, archive, env=docker.env)
    assert result.returncode == 0, result.stderr
    (start,) = [c["args"] for c in docker.calls() if "start" in c["args"]][-1:]
    named = start[start.index("start") + 1 :]
    assert "worker" not in compose.read_text() and "worker" not in named, (
        f"restored compose file:\n{compose.read_text()}then: docker {' '.join(start)}"
    )


# -- systemd and command (fake systemctl) -----------------------------------------------------


def app_service(base: Path, units, restore_command: str, timeout: str = "1h"):
    box = ClientSandbox(base / "client")
    box.add_service(
        "app",
        f"service: {{name: app}}\nsystemd: {{units: [a.service, b.service]}}\n"
        f"command: {{dump: ['echo x > data'], restore: [{restore_command!r}], "
        f"timeout: {timeout}}}\n",
    )
    units.activate("a.service", "b.service")
    assert box.cli("run", env=units.env).returncode == 0
    (archive,) = box.published()
    units.activate("a.service", "b.service")
    return box, archive


@pytest.mark.parametrize(
    "command, timeout, words",
    [
        ("echo restoring; echo 'ERROR: cannot load' >&2; exit 4", "1h", "exited with code 4"),
        ("sleep 600", "2s", "timed out after 2s"),
    ],
)
def test_a_failing_or_hanging_restore_command_still_starts_the_units(
    tmp_path, units, command, timeout, words
):
    """Held: the command's failure or time-out is said, exit 1, both units started again."""
    box, archive = app_service(tmp_path, units, command, timeout)
    result = restore(box, archive, service="app", env=units.env)
    assert result.returncode == 1 and words in result.stderr, result.stderr
    assert units.active() == ["a.service", "b.service"]


def test_sigterm_during_a_restore_command_starts_the_units_again(tmp_path, units):
    """Held: SIGTERM while the restore command runs: it is killed, both units started."""
    box, archive = app_service(tmp_path, units, "sleep 600")
    proc = box.popen(
        "restore", "--service", "app", "--from", str(archive), env={**os.environ, **units.env}
    )
    time.sleep(3)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    assert units.active() == ["a.service", "b.service"], err


def _runs_on(pid: int, seconds: float = 10) -> bool:
    """Whether process ``pid`` still runs ``seconds`` from now: a killed one is gone, or a
    zombie its new parent has not reaped yet (under load that took a moment: the test
    once failed on it)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (FileNotFoundError, ProcessLookupError, IndexError):
            return False
        if state in ("Z", "X"):
            return False
        time.sleep(0.1)
    return True


def test_sighup_during_a_restore_still_starts_the_units_again(tmp_path, units):
    pidfile = tmp_path / "restore-command.pid"
    box, archive = app_service(tmp_path, units, f"echo $$ > {pidfile}; exec sleep 600")
    proc = box.popen(
        "restore", "--service", "app", "--from", str(archive), env={**os.environ, **units.env}
    )
    try:
        time.sleep(3)
        proc.send_signal(signal.SIGHUP)
        _, _err = proc.communicate(timeout=60)
        assert units.active() == ["a.service", "b.service"], (
            f"exit {proc.returncode}; active after: {units.active()}; calls: {units.calls()}"
        )
        assert proc.returncode == 129, _err
        assert "SIGHUP received" in _err, _err
        command = int(pidfile.read_text())
        assert not _runs_on(command), "the restore command runs on"
    finally:
        if pidfile.exists():  # the restore command, left running
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pidfile.read_text()), signal.SIGKILL)


def test_a_unit_that_fails_to_stop_or_start_is_said_and_the_others_are_started(tmp_path, units):
    """Held: b fails to stop: nothing restored, a and b started again; a fails to start:
    said, exit 1, b started anyway."""
    box, archive = app_service(tmp_path, units, "true")
    units.fail("fail-stop-b.service")
    units.fail("fail-start-a.service")
    result = restore(box, archive, service="app", env=units.env)
    assert result.returncode == 1
    assert "could not stop the application" in result.stderr
    assert "could not start the application again" in result.stderr
    assert units.calls()[-2:] == ["systemctl start b.service", "systemctl start a.service"]


def test_a_failed_stop_is_said_without_an_escaped_line_break(tmp_path, units):
    box, archive = app_service(tmp_path, units, "true")
    units.fail("fail-stop-b.service")
    result = restore(box, archive, service="app", env=units.env)
    assert "\\n" not in result.stderr, result.stderr


def test_a_restore_command_s_secret_is_masked_and_its_flood_bounded(tmp_path):
    """Held: the environment's value is masked in the log and in the failure's tail; a
    flood of 50 000 lines and a line of 100 000 characters cost about 2 000 lines."""
    box = ClientSandbox(tmp_path / "client")
    box.add_service(
        "app",
        "service: {name: app}\ncommand:\n  environment: {DB_PASSWORD: S3cr3t-Pw-42}\n"
        "  dump: ['echo x > data']\n  restore:\n"
        '    - \'echo "pw $DB_PASSWORD"; seq 1 50000; printf %0100000d 0; echo; '
        'echo "failed for $DB_PASSWORD" >&2; exit 3\'\n',
    )
    assert box.cli("run").returncode == 0
    (archive,) = box.published()
    result = restore(box, archive, service="app")
    assert result.returncode == 1
    assert "S3cr3t" not in result.stderr + result.stdout
    assert len(result.stderr.splitlines()) < 2100


# -- influxdb 1.x (fake influxd) ------------------------------------------------------------


def test_influxdb_1_a_backup_of_every_database_needs_replace(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "influxd-calls"
    (bin_dir / "influxd").write_text(
        f'#!/bin/sh\necho "influxd $*" >> {calls}\n'
        '[ "$1" = backup ] && for last; do :; done && mkdir -p "$last" && echo x > "$last/meta"\n'
        "exit 0\n"
    )
    (bin_dir / "influxd").chmod(0o755)
    env = {"PATH": f"{bin_dir}:{os.environ['PATH']}"}
    box = ClientSandbox(tmp_path / "client")
    box.add_service("d", "service: {name: d}\ninfluxdb: {version: 1}\n")
    assert box.cli("run", env=env).returncode == 0
    (archive,) = box.published()
    calls.write_text("")
    result = restore(box, archive, service="d", env=env)
    assert result.returncode == 1 and "--replace" in result.stderr, (
        f"exit {result.returncode}, said {result.stdout!r}; ran: {calls.read_text()!r}"
    )


# -- univention (fake UCS backup program) ---------------------------------------------------


def test_univention_the_system_archive_the_restore_names_is_there_afterwards(tmp_path):
    backup_dir = tmp_path / "ucs-backup"
    backup_dir.mkdir()
    program = tmp_path / "univention-backup"
    program.write_text(f"#!/bin/sh\necho data > {backup_dir}/ucs-$(date +%s).tar.gz\n")
    program.chmod(0o755)
    custom = tmp_path / "cfg"
    custom.mkdir()
    (custom / "a.conf").write_text("x")
    box = ClientSandbox(tmp_path / "client")
    box.add_service(
        "ucs",
        f"service: {{name: ucs}}\nunivention: {{command: {program}, backup_dir: {backup_dir}, "
        f"custom_paths: [{custom}]}}\n",
    )
    assert box.cli("run").returncode == 0
    (archive,) = box.published()
    result = restore(box, archive, service="ucs")
    assert result.returncode == 0, result.stderr
    named = result.stdout.split("UCS's system backup is ", 1)[1].split(": restore it", 1)[0]
    assert os.path.exists(named), f"the restore said: {result.stdout.strip()}"
    # moved out of the unpacked archive below the sandbox's safety directory, whole
    assert named.startswith(f"{box.root}/") and "/before-restore/univention-" in named, named
    assert Path(named).read_text() == "data\n"


def test_a_command_task_without_restore_commands_is_not_said_restored(tmp_path):
    box = ClientSandbox(tmp_path / "client")
    box.add_service(
        "app", "service: {name: app}\ncommand: {dump: [{run: 'echo precious', output: all.sql}]}\n"
    )
    assert box.cli("run").returncode == 0
    (archive,) = box.published()
    result = restore(box, archive, service="app")
    assert result.returncode == 1, result.stderr
    assert "not restored: the section has no restore commands (restore:)" in result.stderr
    assert "Traceback" not in result.stderr
    # the directory it names outlives the restore (the archive's unpacked copy does not)
    named = Path(re.search(r"its data is in (\S+)", result.stderr)[1])
    assert (named / "all.sql").read_text() == "precious\n"


@needs_root
def test_sqlite_copies_of_a_private_database_are_never_readable_by_others(shared):
    app = shared / "app"
    app.mkdir()
    live = private_db(app / "secrets.db", "TOP-SECRET-TOKEN", blob=100000, count=300)
    box, archive = sqlite_service(shared, live)
    done = app / "done"
    spy = subprocess.Popen(
        [
            "runuser",
            "-u",
            "nobody",
            "--",
            "/usr/bin/python3",
            "-c",
            f"""
import os, time
d, fds, end = {str(app)!r}, {{}}, time.time() + 60
while time.time() < end and not os.path.exists({str(done)!r}):
    for n in os.listdir(d):
        if n not in ('secrets.db', 'done') and n not in fds:
            try:
                fds[n] = os.open(os.path.join(d, n), os.O_RDONLY)
            except OSError:
                pass
for n, fd in fds.items():
    data = b''
    while chunk := os.read(fd, 1 << 20):
        data += chunk
    if b'TOP-SECRET-TOKEN' in data:
        print(n)
""",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    time.sleep(0.5)
    for args in ([], ["--replace"]):
        assert restore(box, archive, *args).returncode == 0
        time.sleep(1.1)
    done.touch()
    read = spy.communicate(timeout=90)[0].split()
    assert not read, f"nobody read the secret from: {read}"


STRICT_DOCKER = """\
#!/bin/sh
# docker compose refuses a compose file that is not there, before any verb:
# "open /srv/app/docker-compose.yml: no such file or directory" (exit 1); else the
# recording stand-in answers
prev=""
for arg; do
    if [ "$prev" = "-f" ] && [ ! -e "$arg" ]; then
        echo "open $arg: no such file or directory" >&2; exit 1
    fi
    prev=$arg
done
exec {standin} "$@"
"""


def test_a_lost_compose_file_can_be_restored(tmp_path, docker):
    compose = compose_app(tmp_path)
    box, archive = docker_service(tmp_path, compose, docker)
    strict = tmp_path / "strictbin"
    strict.mkdir()
    (strict / "docker").write_text(STRICT_DOCKER.format(standin=STANDIN))
    (strict / "docker").chmod(0o755)
    env = {**docker.env, "PATH": f"{strict}:{docker.env['PATH']}"}
    shutil.rmtree(compose.parent)  # the application's directory is lost

    result = restore(box, archive, "--task", "docker", env=env)

    assert compose.exists(), f"exit {result.returncode}:\n{result.stderr}"


@pytest.mark.skipif(
    not Path("/usr/lib/postgresql/15/bin/postgres").exists(), reason="PostgreSQL missing"
)
def test_replace_dry_run_predicts_the_real_restore_with_a_docker_task_that_stops_nothing(
    pg, tmp_path, docker
):

    pg.sql("CREATE DATABASE shop")
    pg.sql("CREATE TABLE t(x int); INSERT INTO t VALUES (1);", database="shop")
    compose = compose_app(tmp_path)
    password = tmp_path / "pg.pass"
    password.write_text(pg.password + "\n")
    password.chmod(0o600)
    box = ClientSandbox(tmp_path / "client")
    box.add_service(
        "shop",
        f"service: {{name: shop}}\n"
        f"docker: {{compose_file: {compose}, stop_services: false}}\n"
        f"postgresql: {{host: 127.0.0.1, port: {pg.port}, user: backup, "
        f"password_file: {password}, database: shop, globals: false}}\n",
    )
    assert box.cli("run", env=docker.env).returncode == 0
    (archive,) = box.published()
    session = subprocess.Popen(
        pg.psql_argv("shop"),
        stdin=subprocess.PIPE,
        text=True,
    )
    session.stdin.write("SELECT 1;\n")
    session.stdin.flush()
    deadline = time.monotonic() + 30
    while pg.sql("SELECT count(*) FROM pg_stat_activity WHERE datname = 'shop'") == "0":
        assert time.monotonic() < deadline
        time.sleep(0.1)
    try:
        dry = restore(box, archive, "--replace", "--dry-run", env=docker.env)
        real = restore(box, archive, "--replace", env=docker.env)
    finally:
        session.stdin.close()
        session.wait(timeout=30)
    assert dry.returncode == real.returncode, (
        f"dry run: exit {dry.returncode}, {dry.stdout!r}\nreal: exit {real.returncode}, "
        f"{[line for line in real.stderr.splitlines() if 'ERROR' in line]}"
    )


ERRING_SYSTEMCTL = """\
#!/bin/sh
# is-active answering an error (exit 1), as systemd 252 does for a name it cannot take
# (seen in a booted Debian 12 root: "Unit name tpl@.service is neither a valid
# invocation ID nor unit name.")
echo "systemctl $*" >> "$FAKE_SD/calls"
case "$1 $3" in
"is-active odd.service")
    echo "Failed to retrieve unit state: Unit name odd.service is neither a valid" \
         "invocation ID nor unit name." >&2; exit 1;;
esac
exit 0
"""


def test_a_template_unit_is_refused_and_a_unit_systemctl_cannot_judge_stops_the_restore(
    tmp_path, units
):
    """A template name is a config error; a unit whose ``is-active`` fails (exit 1, not
    3) is not taken for inactive: nothing is restored under a possibly running app."""
    data = tmp_path / "data"
    data.mkdir()
    (data / "f").write_text("backed up")
    box = ClientSandbox(tmp_path / "client")
    box.add_service(
        "app",
        f"service: {{name: app}}\nsystemd: {{units: [tpl@.service]}}\nfiles: {{paths: [{data}]}}\n",
    )
    refused = box.cli("run", env=units.env)
    assert refused.returncode == 1, refused.stderr  # the broken service skipped, said
    assert "not app@.service" in refused.stderr, refused.stderr

    box.add_service(
        "app",
        f"service: {{name: app}}\nsystemd: {{units: [odd.service]}}\nfiles: {{paths: [{data}]}}\n",
    )
    assert box.cli("run", env=units.env).returncode == 0
    (archive,) = box.published()
    (Path(units.env["PATH"].split(":")[0]) / "systemctl").write_text(ERRING_SYSTEMCTL)
    (data / "f").write_text("edited")
    result = restore(box, archive, service="app", env=units.env)
    assert result.returncode == 1, result.stderr
    assert "could not stop the application" in result.stderr, result.stderr
    assert (data / "f").read_text() == "edited"  # nothing restored under it


def test_sigterm_during_a_sqlite_copy_leaves_no_readable_copy_of_a_private_database(tmp_path):
    app = tmp_path / "app"
    app.mkdir()
    live = private_db(app / "secrets.db", "TOP-SECRET", blob=1000000, count=250)
    box, archive = sqlite_service(tmp_path, live)
    proc = box.popen("restore", "--service", "shop", "--from", str(archive), "--replace")
    said = ""
    while "keep the database at" not in said:
        line = proc.stderr.readline()
        assert line, said
        said += line
    time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=120)
    assert proc.returncode == 143
    readable = [p.name for p in app.iterdir() if p.stat().st_mode & 0o044]
    assert not readable, f"left readable by others: {readable}"


def test_sqlite_a_database_listed_twice_keeps_what_it_replaced(tmp_path):
    live = tmp_path / "app" / "app.db"
    live.parent.mkdir()
    db = sqlite3.connect(live)
    db.execute("CREATE TABLE t(x)")
    db.execute("INSERT INTO t VALUES ('backed up')")
    db.commit()
    db.close()
    box = ClientSandbox(tmp_path / "client")
    box.add_service(
        "shop",
        f"service: {{name: shop}}\nsqlite: {{paths: ['{live}', '{tmp_path}/app//app.db']}}\n",
    )
    assert box.cli("run").returncode == 0
    (archive,) = box.published()
    db = sqlite3.connect(live)
    db.execute("UPDATE t SET x = 'written since'")
    db.commit()
    db.close()
    result = restore(box, archive, "--replace")
    held = {p.name: rows(p) for p in live.parent.iterdir()}
    assert any(r == ["written since"] for r in held.values()), (
        f"exit {result.returncode}, said {result.stdout!r}; files: {held}"
    )


def test_a_restore_command_s_scratch_files_do_not_spoil_the_snapshot(tmp_path):
    box = ClientSandbox(tmp_path / "client")
    box.add_service(
        "app",
        "service: {name: app}\ncommand: {dump: [{run: 'echo data | gzip', output: dump.sql.gz}], "
        "restore: ['gunzip -k dump.sql.gz && mkdir -p work/deep && cat dump.sql > work/deep/x']}\n",
    )
    assert box.cli("run").returncode == 0
    (archive,) = box.published()
    snap = tmp_path / "snap"
    snap.mkdir()
    subprocess.run(["tar", "-xf", str(archive), "-C", str(snap)], check=True)
    first = restore(box, snap, service="app")
    assert first.returncode == 0, first.stderr
    assert re.search(
        r"removed what the restore commands wrote in \S+: dump.sql, work\n", first.stderr
    )
    again = restore(box, snap, service="app")
    assert again.returncode == 0, again.stderr
    (task_dir,) = (p for p in snap.rglob("dump.sql.gz"))
    assert sorted(p.name for p in task_dir.parent.iterdir()) == ["dump.sql.gz"]
