"""Scratch directories that a killed ``pullback-client`` leaves in the temporary
directory (a pgpass with the database password, a restore's unpacked archive) are
removed by the next command that makes one, and nothing else is (common/scratch.py);
a ``run_as:`` user still reads its pgpass."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from pullback.plugins import postgresql
from pullback.plugins._common import forget_private
from tests.helpers.client import ClientSandbox
from tests.helpers.databases import PG_BIN, Postgres
from tests.helpers.tasks import task_for


def _wait(predicate, what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def killed(proc: subprocess.Popen) -> None:
    """SIGKILL for the client and what it started (its own session)."""
    os.killpg(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=30)


@pytest.fixture
def tmpdir_env(shared_root: Path) -> tuple[Path, dict]:
    """A temporary directory as /tmp is (1777, reachable by postgres) and the
    environment that makes the client use it."""
    where = shared_root / "tmp"
    where.mkdir()
    where.chmod(0o1777)
    return where, {**os.environ, "TMPDIR": str(where)}


def secret(box: ClientSandbox, value: str) -> Path:
    path = box.root / "db.pass"
    path.write_text(value + "\n")
    path.chmod(0o600)
    return path


def shop(pg: Postgres, box: ClientSandbox, extra: str = "") -> None:
    pg.sql("CREATE DATABASE shop")
    pg.sql("CREATE TABLE orders(id int); INSERT INTO orders VALUES (1)", "shop")
    box.add_service(
        "shop",
        f"""\
        service: {{name: shop}}
        postgresql: {{host: 127.0.0.1, port: {pg.port}, user: backup, database: shop,
                      password_file: {secret(box, pg.password)}, globals: false{extra}}}
        """,
    )


@pytest.mark.skipif(PG_BIN is None, reason="PostgreSQL is not installed")
def test_a_killed_run_leaves_its_pgpass_and_the_next_command_removes_it(pg, tmpdir_env, tmp_path):
    where, env = tmpdir_env
    box = ClientSandbox(tmp_path / "client")
    shop(pg, box)
    holder = subprocess.Popen(pg.psql_argv("shop"), stdin=subprocess.PIPE, text=True)
    try:
        assert holder.stdin is not None
        holder.stdin.write("BEGIN; LOCK TABLE orders IN ACCESS EXCLUSIVE MODE;\n")
        holder.stdin.flush()  # pg_dump waits for it, its pgpass written
        locked = "SELECT count(*) FROM pg_locks WHERE mode = 'AccessExclusiveLock' AND granted"
        _wait(lambda: pg.sql(f"{locked} AND relation = 'orders'::regclass", "shop") == "1", "lock")
        run = box.popen("run", env=env, start_new_session=True)
        waiting = "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
        _wait(lambda: pg.sql(waiting) != "0", "pg_dump waiting for the lock")
        killed(run)
    finally:
        assert holder.stdin is not None
        holder.stdin.close()
        holder.wait(timeout=30)
    (left,) = where.glob(f"pullback-cred-{run.pid}-*")  # named for its process
    assert pg.password in (left / "pgpass").read_text()  # what was found in /tmp
    checked = box.cli("check", env=env)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert not left.exists()
    said = f"removed 1 stale scratch directory of killed pullback commands from {where}"
    assert said in checked.stderr
    assert list(where.iterdir()) == []  # and check's own are gone as well


RESTORE_WAITS = """\
service: {{name: app}}
command:
  dump: [{{run: "echo data", output: out.txt}}]
  restore: ["touch {marker}; exec sleep 60"]
"""


def others_named_alike(where: Path, tmp_path: Path, live: int) -> list[Path]:
    """What a sweep must leave: a directory of a running process, another user's, a
    link and a file named like a killed command's."""
    gone = subprocess.Popen(["true"])
    gone.wait()
    running = where / f"pullback-restore-{live}-abcd1234"
    theirs = where / f"pullback-cred-{gone.pid}-abcd1234"
    for made in (running, theirs):
        made.mkdir(mode=0o700)
        (made / "kept").write_text("kept")
    os.chown(theirs, 65534, 65534)
    target = tmp_path / "elsewhere"
    target.mkdir()
    (target / "precious").write_text("kept")
    link = where / f"pullback-check-{gone.pid}-abcd1234"
    link.symlink_to(target, target_is_directory=True)
    a_file = where / f"pullback-sqlite-{gone.pid}-abcd1234"
    a_file.write_text("kept")
    return [running, theirs, link, a_file]


def test_a_killed_restore_leaves_its_archive_and_the_next_restore_removes_only_that(
    tmpdir_env, tmp_path
):
    where, env = tmpdir_env
    box = ClientSandbox(tmp_path / "client")
    marker = tmp_path / "restoring"
    box.add_service("app", RESTORE_WAITS.format(marker=marker))
    assert box.cli("run", env=env).returncode == 0
    (archive,) = box.published()
    argv = ("restore", "--service", "app", "--from", str(archive))
    restoring = box.popen(*argv, env=env, start_new_session=True)
    _wait(marker.exists, "the restore command")
    killed(restoring)
    (left,) = where.glob(f"pullback-restore-{restoring.pid}-*")
    assert (left / "archive").is_dir()  # the unpacked archive, for ever
    live = subprocess.Popen(["sleep", "60"])
    try:
        kept = others_named_alike(where, tmp_path, live.pid)
        again = box.cli(*argv, "--dry-run", env=env)
        assert again.returncode == 0, again.stderr
        assert not left.exists()
        assert "removed 1 stale scratch directory" in again.stderr
        assert sorted(where.iterdir()) == sorted(kept)
        assert all((p / "kept").read_text() == "kept" for p in kept[:2])
        assert (tmp_path / "elsewhere" / "precious").read_text() == "kept"
    finally:
        live.kill()
        live.wait()


@pytest.mark.skipif(PG_BIN is None, reason="PostgreSQL is not installed")
def test_run_as_reads_its_pgpass_in_a_directory_of_its_own(pg, tmpdir_env, tmp_path, monkeypatch):
    where, env = tmpdir_env
    box = ClientSandbox(tmp_path / "client")
    shop(pg, box, ", run_as: postgres")
    checked = box.cli("check", env=env)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    ran = box.cli("run", env=env)
    assert ran.returncode == 0, ran.stderr
    assert list(where.iterdir()) == []
    # how it is laid out: only root and postgres reach the password
    monkeypatch.setenv("TMPDIR", str(where))
    monkeypatch.setattr("tempfile.tempdir", None)
    config = {
        "port": pg.port,
        "connect_timeout": 5,
        "password_file": str(box.root / "db.pass"),
        "run_as": "postgres",
    }
    task = task_for("postgresql", config, tmp_path, service="shop")
    passfile = Path(postgresql._env(task)["PGPASSFILE"])
    try:
        outer = passfile.parent.parent
        assert outer.name.startswith(f"pullback-cred-{os.getpid()}-")
        assert (outer.stat().st_uid, outer.stat().st_mode & 0o7777) == (0, 0o711)
        for own in (passfile.parent, passfile):
            assert own.stat().st_uid == postgresql._uid("postgres")
            assert own.stat().st_mode & 0o077 == 0
        read = ["runuser", "-u", "postgres", "--", "cat", str(passfile)]
        assert pg.password in subprocess.run(read, capture_output=True, text=True).stdout
        for argv in (["cat", str(passfile)], ["ls", str(outer)]):
            refused = subprocess.run(["runuser", "-u", "nobody", "--", *argv])
            assert refused.returncode != 0
        # the reader's directory is the reader's: a link it leaves in the name of the
        # file is replaced, never written through (the next probe of the same task)
        victim = tmp_path / "victim"
        victim.write_text("root's")
        for make in (os.symlink, os.link):
            passfile.unlink()
            make(victim, passfile)
            assert Path(postgresql._env(task)["PGPASSFILE"]) == passfile
            assert pg.password in passfile.read_text() and not passfile.is_symlink()
            assert victim.read_text() == "root's" and victim.stat().st_uid == 0
    finally:
        forget_private(task)
    assert not outer.exists()
