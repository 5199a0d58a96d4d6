"""postgresql, mariadb and sqlite tasks against real servers and files, dumped while
being written to, restored into fresh servers, compared row by row."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers.client import ClientSandbox
from tests.helpers.databases import PG_BIN, MariaDB, Postgres

pytestmark = pytest.mark.skipif(PG_BIN is None, reason="PostgreSQL is not installed")


def password_file(box: ClientSandbox, value: str) -> Path:
    path = box.root / f"pw-{abs(hash(value))}"
    path.write_text(value + "\n")
    path.chmod(0o600)
    return path


def archive_of(box: ClientSandbox) -> Path:
    (archive,) = box.published()
    return archive


# -- PostgreSQL -----------------------------------------------------------------------

PG_WRITER = """
import subprocess, sys, time
psql = sys.argv[1:]
script = []
proc = subprocess.Popen(psql, stdin=subprocess.PIPE, text=True)
i = 0
while True:
    i += 1
    proc.stdin.write(
        "BEGIN; INSERT INTO items(body) VALUES (md5(random()::text)); "
        "UPDATE counter SET n = n + 1; COMMIT;\\n")
    proc.stdin.flush()
    time.sleep(0.002)
"""


def test_postgresql_dump_under_writes_restores_consistently(shared_root, tmp_path):
    source = Postgres(shared_root / "source").start()
    writer = None
    try:
        source.sql("CREATE DATABASE appdb")
        source.sql(
            "CREATE TABLE items(id serial PRIMARY KEY, body text NOT NULL); "
            "CREATE TABLE counter(n int NOT NULL); INSERT INTO counter VALUES (0); "
            "CREATE ROLE appuser LOGIN PASSWORD 'app-pw-9'",
            database="appdb",
        )
        writer = subprocess.Popen([sys.executable, "-c", PG_WRITER, *source.psql_argv("appdb")])
        time.sleep(1.0)  # rows are flowing
        box = ClientSandbox(tmp_path / "client")
        pw = password_file(box, source.password)
        box.add_service(
            "app",
            f"""\
            service: {{name: app}}
            postgresql:
              host: 127.0.0.1
              port: {source.port}
              user: backup
              password_file: {pw}
              database: appdb
            """,
        )
        result = box.cli("run")
        assert result.returncode == 0, result.stderr
        assert source.password not in result.stderr
    finally:
        if writer:
            writer.kill()
            writer.wait()
    source_rows = source.sql(
        "SELECT md5(id || ':' || body) FROM items ORDER BY id", "appdb"
    ).splitlines()
    source.stop()

    # a fresh server on the same port, restored from the archive
    fresh = Postgres(shared_root / "fresh", port=source.port).start()
    try:
        result = box.cli("restore", "--service", "app", "--from", str(archive_of(box)), "--replace")
        assert result.returncode == 0, result.stderr
        rows = int(fresh.sql("SELECT count(*) FROM items", "appdb"))
        counter = int(fresh.sql("SELECT n FROM counter", "appdb"))
        assert rows == counter > 0  # one consistent snapshot of a moving database
        restored_rows = fresh.sql(
            "SELECT md5(id || ':' || body) FROM items ORDER BY id", "appdb"
        ).splitlines()
        assert restored_rows == source_rows[:rows]  # every row byte for byte
        assert fresh.sql("SELECT rolname FROM pg_roles WHERE rolname = 'appuser'") == "appuser"
    finally:
        fresh.stop()


def test_postgresql_with_a_pgpass_line_for_its_own_database_only(pg, tmp_path):
    """backup-suite's README gives ~/.pgpass lines that name the database
    (``localhost:5432:webapp_db:webapp_user:pw``): check and pg_dumpall --globals-only
    connected to the postgres database, which such a line does not match ("fe_sendauth:
    no password supplied"), and the whole service failed. They connect to the task's
    database now; a non-superuser's roles are dumped without their passwords."""
    pg.sql("CREATE ROLE webapp_user LOGIN PASSWORD 'webapp-pw-7'")
    pg.sql("CREATE DATABASE webapp_db OWNER webapp_user")
    pg.sql("CREATE TABLE t(x int); INSERT INTO t VALUES (42)", database="webapp_db")
    pg.sql("ALTER TABLE t OWNER TO webapp_user", database="webapp_db")
    home = tmp_path / "home"
    home.mkdir()
    (home / ".pgpass").write_text(f"127.0.0.1:{pg.port}:webapp_db:webapp_user:webapp-pw-7\n")
    (home / ".pgpass").chmod(0o600)
    box = ClientSandbox(tmp_path / "client")
    box.add_service(
        "webapp",
        f"""\
        service: {{name: webapp}}
        postgresql:
          host: 127.0.0.1
          port: {pg.port}
          user: webapp_user
          database: webapp_db
        """,
    )
    env = {"HOME": str(home)}
    checked = box.cli("check", env=env)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    ran = box.cli("run", env=env)
    assert ran.returncode == 0, ran.stderr
    assert "roles are dumped without their passwords" in ran.stderr, ran.stderr
    assert "webapp-pw-7" not in ran.stdout + ran.stderr + checked.stdout + checked.stderr
    (archive,) = box.published()
    services = {s["name"]: s["status"] for s in box.sidecar(archive)["services"]}
    assert services == {"webapp": "ok"}


def test_postgresql_bad_sections_fail_alone(shared_root, tmp_path):
    server = Postgres(shared_root / "pg").start()
    try:
        box = ClientSandbox(tmp_path / "client")
        good = password_file(box, server.password)
        wrong = password_file(box, "not-the-password")
        (tmp_path / "files").mkdir()
        (tmp_path / "files" / "keep.txt").write_text("kept")
        box.add_service(
            "files-ok", f"service: {{name: files-ok}}\nfiles: {{paths: [{tmp_path / 'files'}]}}\n"
        )
        cases = {
            "missing-db": (
                f"port: {server.port}\n  password_file: {good}\n  database: nope",
                'database "nope" does not exist',
            ),
            "wrong-port": (
                f"port: 1\n  password_file: {good}\n  database: postgres",
                "cannot reach the server",
            ),
            "wrong-password": (
                f"port: {server.port}\n  password_file: {wrong}\n  database: postgres",
                "the server refused the password",
            ),
        }
        for name, (section, _) in cases.items():
            box.add_service(
                name,
                f"service: {{name: {name}}}\npostgresql:\n"
                f"  host: 127.0.0.1\n  user: backup\n  connect_timeout: 3\n"
                f"  {section}\n",
            )
        result = box.cli("run")
        assert result.returncode == 1
        sidecar = box.sidecar(archive_of(box))
        by_name = {s["name"]: s for s in sidecar["services"]}
        assert by_name["files-ok"]["status"] == "ok"
        for name, (_, message) in cases.items():
            assert by_name[name]["status"] == "failed"
            assert message in by_name[name]["error"], by_name[name]["error"]
        assert "not-the-password" not in result.stderr + str(sidecar)
    finally:
        server.stop()


# -- MariaDB --------------------------------------------------------------------------

MY_WRITER = """
import subprocess, sys, time
proc = subprocess.Popen(sys.argv[1:], stdin=subprocess.PIPE, text=True)
while True:
    proc.stdin.write("START TRANSACTION; INSERT INTO items(body) VALUES (MD5(RAND())); "
                     "UPDATE counter SET n = n + 1; COMMIT;\\n")
    proc.stdin.flush()
    time.sleep(0.002)
"""


def test_mariadb_dump_under_writes_restores_consistently(shared_root, tmp_path):
    source = MariaDB(shared_root / "source").start()
    writer = None
    try:
        source.sql(
            "CREATE DATABASE appdb; USE appdb; "
            "CREATE TABLE items(id INT AUTO_INCREMENT PRIMARY KEY, body TEXT) ENGINE=InnoDB; "
            "CREATE TABLE counter(n INT) ENGINE=InnoDB; INSERT INTO counter VALUES (0); "
            "CREATE TRIGGER items_touch BEFORE INSERT ON items FOR EACH ROW "
            "SET NEW.body = CONCAT('t:', NEW.body);"
        )
        writer = subprocess.Popen([sys.executable, "-c", MY_WRITER, *source.client_argv("appdb")])
        time.sleep(1.0)
        box = ClientSandbox(tmp_path / "client")
        pw = password_file(box, source.password)
        box.add_service(
            "app",
            f"""\
            service: {{name: app}}
            mysql:
              host: 127.0.0.1
              port: {source.port}
              username: backup
              password_file: {pw}
              database: appdb
            """,
        )
        result = box.cli("run")
        assert result.returncode == 0, result.stderr
        assert source.password not in result.stderr
    finally:
        if writer:
            writer.kill()
            writer.wait()
    source_rows = source.sql(
        "SELECT MD5(CONCAT(id, ':', body)) FROM items ORDER BY id", "appdb"
    ).splitlines()
    source.stop()

    fresh = MariaDB(shared_root / "fresh", port=source.port).start()
    try:
        result = box.cli("restore", "--service", "app", "--from", str(archive_of(box)), "--replace")
        assert result.returncode == 0, result.stderr
        rows = int(fresh.sql("SELECT COUNT(*) FROM items", "appdb"))
        counter = int(fresh.sql("SELECT n FROM counter", "appdb"))
        assert rows == counter > 0
        restored_rows = fresh.sql(
            "SELECT MD5(CONCAT(id, ':', body)) FROM items ORDER BY id", "appdb"
        ).splitlines()
        assert restored_rows == source_rows[:rows]
        assert fresh.sql("SHOW TRIGGERS", "appdb").startswith("items_touch")
        assert fresh.sql("SELECT COUNT(*) FROM items WHERE body NOT LIKE 't:%'", "appdb") == "0"
    finally:
        fresh.stop()


def test_mariadb_wrong_password_is_a_clear_error(shared_root, tmp_path):
    server = MariaDB(shared_root / "my").start()
    try:
        box = ClientSandbox(tmp_path / "client")
        wrong = password_file(box, "wrong-pw-123")
        box.add_service(
            "db",
            f"service: {{name: db}}\nmariadb:\n  host: 127.0.0.1\n"
            f"  port: {server.port}\n  user: backup\n  password_file: {wrong}\n"
            "  all: true\n",
        )
        box.add_service("other", "service: {name: other}\ncommand: {dump: ['echo ok > ok']}\n")
        result = box.cli("run")
        assert result.returncode == 1
        by_name = {s["name"]: s for s in box.sidecar(archive_of(box))["services"]}
        assert "the server refused the credentials" in by_name["db"]["error"]
        assert by_name["other"]["status"] == "ok"
        assert "wrong-pw-123" not in result.stderr
    finally:
        server.stop()


def test_mariadb_check_names_routines_the_user_may_not_read(maria, tmp_path):
    """An outside walk: a user granted ALL on its database passed ``check``, and its next
    dump failed on a procedure root had defined ("insufficient privileges to SHOW CREATE
    PROCEDURE")."""
    maria.sql(
        "CREATE DATABASE inv; CREATE TABLE inv.items(id INT); "
        "CREATE USER 'inv_owner'@'127.0.0.1' IDENTIFIED BY 'Inv-pw-4'; "
        "GRANT ALL ON inv.* TO 'inv_owner'@'127.0.0.1';"
    )
    maria.sql("CREATE PROCEDURE inv.p1() SELECT COUNT(*) FROM items", "inv")
    box = ClientSandbox(tmp_path / "client")
    password = password_file(box, "Inv-pw-4")
    box.add_service(
        "inv",
        f"service: {{name: inv}}\nmariadb:\n  host: 127.0.0.1\n  port: {maria.port}\n"
        f"  user: inv_owner\n  password_file: {password}\n  database: inv\n",
    )
    checked = box.cli("check")
    said = checked.stdout + checked.stderr
    assert checked.returncode == 2, said  # check's exit for a problem
    assert "the user may not read the routines inv.p1 (root@localhost)" in said
    assert box.cli("run").returncode == 1  # what check foretold
    maria.sql("GRANT SELECT ON mysql.proc TO 'inv_owner'@'127.0.0.1'")  # the advice
    checked = box.cli("check")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert box.cli("run").returncode == 0


# -- SQLite ---------------------------------------------------------------------------

SQLITE_WRITER = """
import sqlite3, sys, time
db = sqlite3.connect(sys.argv[1], timeout=30, isolation_level=None)
while True:
    db.execute("BEGIN IMMEDIATE")
    db.execute("INSERT INTO items(body) VALUES (hex(randomblob(64)))")
    db.execute("UPDATE counter SET n = n + 1")
    db.execute("COMMIT")
"""


@pytest.mark.parametrize("journal", ["wal", "delete"])
def test_sqlite_copy_under_writes_is_consistent(tmp_path, journal):
    path = tmp_path / "app.db"
    db = sqlite3.connect(path)
    db.execute(f"PRAGMA journal_mode={journal}")
    db.executescript(
        "CREATE TABLE items(id INTEGER PRIMARY KEY, body TEXT); "
        "CREATE TABLE counter(n INTEGER); INSERT INTO counter VALUES (0);"
    )
    db.commit()
    db.close()
    os.chmod(path, 0o640)
    writer = subprocess.Popen([sys.executable, "-c", SQLITE_WRITER, str(path)])
    try:
        time.sleep(0.5)
        box = ClientSandbox(tmp_path / "client")
        box.add_service("app", f"service: {{name: app}}\nsqlite: {{paths: [{path}]}}\n")
        result = box.cli("run")
        assert result.returncode == 0, result.stderr
        assert "integrity ok" in result.stderr
    finally:
        writer.kill()
        writer.wait()
    target = tmp_path / "restored"
    result = box.cli(
        "restore", "--service", "app", "--from", str(archive_of(box)), "--target", str(target)
    )
    assert result.returncode == 0, result.stderr
    copy = target / str(path).lstrip("/")
    assert oct(copy.stat().st_mode & 0o777) == "0o640"
    restored = sqlite3.connect(copy)
    rows = restored.execute("SELECT count(*) FROM items").fetchone()[0]
    counter = restored.execute("SELECT n FROM counter").fetchone()[0]
    assert rows == counter > 0
    assert restored.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
