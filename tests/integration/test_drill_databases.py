"""Restore drills prove databases by loading every dump into a throwaway engine the drill
starts itself: real PostgreSQL and MariaDB (their dumps made by the real pg_dump and
mariadb-dump), SQLite, hostile dumps, a decompression bomb, and the whole cycle through a
real client, sshd, restic and ``pullback-server verify``."""

from __future__ import annotations

import json
import re
import shutil
import sqlite3
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from pullback.common.log import get_logger
from pullback.server import db_proof
from pullback.server.db_proof import ProofSettings, ProofState, prove_databases
from tests.helpers.databases import PG_BIN, MariaDB, Postgres
from tests.helpers.fleet import Fleet

pytestmark = pytest.mark.skipif(
    PG_BIN is None or shutil.which("mariadbd") is None,
    reason="PostgreSQL and MariaDB are not installed",
)
LOG = get_logger("test")


def settings(shared_root: Path, **changes) -> ProofSettings:
    """The drill's settings, its engines in a directory of this test's own."""
    found = ProofSettings(shared_root / "engines", timeout=600, max_size=1 << 40)
    for key, value in changes.items():
        setattr(found, key, value)
    return found


def pg_dump(pg: Postgres, database: str, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target, "wb") as out:
        argv = [PG_BIN / "pg_dump", "-h", pg.socket, "-p", pg.port, "-U", "postgres", "-Fc"]
        subprocess.run(
            ["runuser", "-u", "postgres", "--", *map(str, argv), database], stdout=out, check=True
        )


def maria_dump(maria: MariaDB, database: str, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target, "wb") as out:
        subprocess.run(
            [
                "mariadb-dump",
                "--no-defaults",
                f"--socket={maria.socket}",
                "-uroot",
                "--single-transaction",
                "--routines",
                "--events",
                "--triggers",
                "--databases",
                database,
            ],
            stdout=out,
            check=True,
        )


def leftovers(shared_root: Path) -> list[str]:
    """What the drill's engines left behind: directories, and processes running there."""
    engines = shared_root / "engines"
    found = sorted(p.name for p in engines.glob("*")) if engines.exists() else []
    ps = subprocess.run(["pgrep", "-af", str(engines)], capture_output=True, text=True)
    return found + ps.stdout.splitlines()


def test_dumps_of_both_engines_and_sqlite_are_loaded_and_counted(pg, maria, shared_root, tmp_path):
    pg.sql("CREATE DATABASE shop")
    pg.sql(
        "CREATE TABLE orders(id int PRIMARY KEY, total int); "
        "INSERT INTO orders SELECT g, g * 10 FROM generate_series(1, 1500) g; "
        'CREATE TABLE "odd ""name"""(a text); INSERT INTO "odd ""name""" VALUES (\'x\'); '
        "CREATE VIEW big AS SELECT * FROM orders WHERE total > 100; "
        "CREATE FUNCTION total() RETURNS bigint LANGUAGE sql AS 'SELECT sum(total) FROM orders';",
        database="shop",
    )
    maria.sql(
        "CREATE DATABASE crm; CREATE TABLE crm.customers(id INT PRIMARY KEY, name TEXT); "
        "INSERT INTO crm.customers VALUES (1, 'ada'), (2, 'bob'), (3, 'cy'); "
        "CREATE TABLE crm.`odd ``name`(a INT); INSERT INTO crm.`odd ``name` VALUES (1); "
        "CREATE VIEW crm.names AS SELECT name FROM crm.customers; "
        "CREATE TRIGGER crm.upper BEFORE INSERT ON crm.customers "
        "FOR EACH ROW SET NEW.name = UPPER(NEW.name);"
    )
    tree = tmp_path / "snapshot"
    pg_dump(pg, "shop", tree / "services/app/postgresql/shop.dump")
    maria_dump(maria, "crm", tree / "services/app/mariadb/crm.sql")
    (tree / "services/notes/sqlite").mkdir(parents=True)
    db = sqlite3.connect(tree / "services/notes/sqlite/notes.db")
    db.executescript("CREATE TABLE n(a); INSERT INTO n VALUES (1), (2);")
    db.commit()
    db.close()

    proofs = {p.database: p for p in prove_databases(tree, LOG, settings(shared_root))}
    assert proofs["shop"].state == ProofState.PROVEN, proofs["shop"].problem
    assert (proofs["shop"].tables, proofs["shop"].rows) == (2, 1501)
    assert proofs["shop"].summary == "app/shop (postgresql): 2 tables, 1,501 rows"
    assert proofs["crm"].state == ProofState.PROVEN, proofs["crm"].problem
    assert (proofs["crm"].tables, proofs["crm"].rows) == (2, 4)
    assert (proofs["notes.db"].tables, proofs["notes.db"].rows) == (1, 2)
    assert leftovers(shared_root) == []  # the engines are stopped, their directories gone


def test_a_sql_ascii_database_holding_latin1_bytes_is_proven(pg, shared_root, tmp_path):
    """Legacy installs have SQL_ASCII databases holding Latin-1 bytes; the drill's engine
    is UTF8. Held (2026-12-05): pg_restore loads them and the proof counts them."""
    pg.sql("CREATE DATABASE legacy TEMPLATE template0 ENCODING 'SQL_ASCII' LOCALE 'C'")
    pg.sql(r"CREATE TABLE t(a text); INSERT INTO t VALUES (E'caf\xe9'), ('x')", database="legacy")
    stored = pg.sql("SELECT convert_to(a, pg_client_encoding()) FROM t LIMIT 1", database="legacy")
    assert stored == "\\x636166e9"  # the byte é has in Latin-1, not valid UTF-8
    tree = tmp_path / "snapshot"
    pg_dump(pg, "legacy", tree / "services/app/postgresql/legacy.dump")

    (proof,) = prove_databases(tree, LOG, settings(shared_root))
    assert proof.state == ProofState.PROVEN, proof.problem
    assert (proof.tables, proof.rows) == (1, 2)


def test_a_damaged_dump_fails_the_proof_with_the_tools_own_words(pg, maria, shared_root, tmp_path):
    pg.sql("CREATE DATABASE shop")
    pg.sql("CREATE TABLE t AS SELECT g FROM generate_series(1, 50000) g", database="shop")
    tree = tmp_path / "snapshot"
    dump = tree / "services/app/postgresql/shop.dump"
    pg_dump(pg, "shop", dump)
    data = dump.read_bytes()
    dump.write_bytes(data[: len(data) // 2])  # cut short
    sql = tree / "services/app/mariadb/crm.sql"
    sql.parent.mkdir(parents=True)
    sql.write_text("CREATE DATABASE crm; USE crm; CREATE TABLE t (a INT; INSERT INTO t VALUES (1);")
    sqlite = tree / "services/app/sqlite/broken.db"
    sqlite.parent.mkdir(parents=True)
    sqlite.write_bytes(b"SQLite format 3\0" + b"\xff" * 4000)

    proofs = {p.database: p for p in prove_databases(tree, LOG, settings(shared_root))}
    assert proofs["shop"].state == ProofState.FAILED
    assert proofs["shop"].problem.startswith("does not load: pg_restore: error:")
    assert proofs["crm"].state == ProofState.FAILED
    assert "ERROR 1064" in proofs["crm"].problem  # MariaDB's own words
    assert proofs["broken.db"].state == ProofState.FAILED


def test_a_hostile_dump_runs_no_program_and_touches_no_file(pg, maria, shared_root, tmp_path):
    marker = Path(tempfile.mkdtemp(prefix="pullback-marker-", dir="/tmp"))
    marker.chmod(0o777)
    # PostgreSQL: a CHECK constraint whose function runs a program for each row loaded,
    # which it does only in the drill's load (it does nothing in the client's database)
    pg.sql("CREATE DATABASE evil")
    pg.sql(
        "CREATE TABLE pwn(line text); "
        "CREATE FUNCTION f(int) RETURNS int LANGUAGE plpgsql AS $$ BEGIN "
        "IF current_database() LIKE 'proof%' THEN "
        f"EXECUTE 'COPY public.pwn FROM PROGRAM ''touch {marker}/pg''';"
        "END IF; RETURN $1; END $$; "
        "CREATE TABLE t(a int CHECK (f(a) = a)); INSERT INTO t VALUES (1);",
        database="evil",
    )
    tree = tmp_path / "snapshot"
    pg_dump(pg, "evil", tree / "services/app/postgresql/evil.dump")
    # MariaDB: a file written by the server, the client's shell escape, files read by
    # the server and by the client; each in a service of its own (a load stops at an error)
    attacks = {
        "outfile": f"SELECT 'x' INTO OUTFILE '{marker}/outfile';",
        "shell": f"\\! touch {marker}/shell",
        "infile": "LOAD DATA INFILE '/etc/shadow' INTO TABLE t;",
        "local": "LOAD DATA LOCAL INFILE '/etc/shadow' INTO TABLE t;",
    }
    # a routine that would run as root, and the same with its definer hidden from a filter
    for service, definer in (
        ("root", "DEFINER=`root`@`localhost`"),
        ("hidden", "DEFINER/**/=root"),
    ):
        attacks[service] = (
            f"DELIMITER ;;\nCREATE {definer} PROCEDURE p() SQL SECURITY DEFINER BEGIN "
            f"SET GLOBAL general_log_file = '{marker}/{service}.log'; "
            "SET GLOBAL general_log = 1; END ;;\nDELIMITER ;\nCALL p();"
        )
    for service, attack in attacks.items():
        sql = tree / f"services/{service}/mariadb/evil.sql"
        sql.parent.mkdir(parents=True)
        sql.write_text(f"CREATE DATABASE evil; USE evil; CREATE TABLE t (a TEXT);\n{attack}\n")

    # a table asked to live outside the engine's directory (ignored, so it may prove)
    placed = tree / "services/placed/mariadb/placed.sql"
    placed.parent.mkdir(parents=True)
    placed.write_text(
        "CREATE DATABASE placed; USE placed; CREATE TABLE t (a INT) ENGINE=InnoDB "
        f"DATA DIRECTORY='{marker}'; INSERT INTO t VALUES (1);\n"
    )

    proofs = prove_databases(tree, LOG, settings(shared_root))
    assert sorted(p.name for p in marker.iterdir()) == []  # nothing ran, nothing written
    assert [p.summary for p in proofs if p.service == "placed"] == [
        "placed/placed (mariadb): 1 table, 1 row"
    ]
    proofs = [p for p in proofs if p.service != "placed"]
    assert all(p.state != ProofState.PROVEN for p in proofs), [p.summary for p in proofs]
    said = {p.service: p.problem for p in proofs}
    print(said)
    assert "not proven: it needs rights" in said["app"]
    assert "sandbox" in said["shell"].lower()
    for service in ("outfile", "infile", "local", "root", "hidden"):
        assert "denied" in said[service].lower() or "not allowed" in said[service].lower()

    # the oracle: the same dumps loaded the naive way (superuser, no sandbox) do run
    pg.sql("CREATE DATABASE proof_naive")
    with open(tree / "services/app/postgresql/evil.dump", "rb") as dump:
        argv = [PG_BIN / "pg_restore", "-h", pg.socket, "-p", pg.port, "-U", "postgres"]
        subprocess.run(
            ["runuser", "-u", "postgres", "--", *map(str, argv), "-d", "proof_naive"],
            stdin=dump,
            check=False,
        )
    with open(tree / "services/shell/mariadb/evil.sql", "rb") as dump:
        subprocess.run(maria.client_argv(), stdin=dump, check=False)
    assert sorted(p.name for p in marker.iterdir()) == ["pg", "shell"]
    shutil.rmtree(marker)


def test_a_dump_that_grows_past_the_limit_is_stopped(pg, monkeypatch, shared_root, tmp_path):
    pg.sql("CREATE DATABASE bomb")
    # a few MiB of dump that loads as ~100 MiB of rows and index
    pg.sql(
        "CREATE TABLE t AS SELECT g, repeat('x', 40) AS pad FROM generate_series(1, 1200000) g; "
        "CREATE INDEX ON t (g, pad)",
        database="bomb",
    )
    tree = tmp_path / "snapshot"
    pg_dump(pg, "bomb", tree / "services/app/postgresql/bomb.dump")
    monkeypatch.setattr(db_proof, "_WATCH_EVERY", 0.2)
    baseline = 60 << 20  # an empty cluster takes about 40 MiB
    (proof,) = prove_databases(tree, LOG, settings(shared_root, max_size=baseline))
    assert proof.state == ProofState.FAILED
    assert proof.problem == "stopped: the loaded data grew past max_unpacked_size (60.0 MiB)"
    assert leftovers(shared_root) == []


def test_a_dump_that_never_finishes_loading_is_stopped(pg, shared_root, tmp_path):
    pg.sql("CREATE DATABASE slow")
    pg.sql(  # each row loaded waits a minute, in the drill's database only
        "CREATE FUNCTION wait(int) RETURNS int LANGUAGE plpgsql AS $$ BEGIN "
        "IF current_database() LIKE 'proof%' THEN PERFORM pg_sleep(60); END IF; "
        "RETURN $1; END $$; CREATE TABLE t(a int CHECK (wait(a) = a)); "
        "INSERT INTO t SELECT generate_series(1, 10);",
        database="slow",
    )
    tree = tmp_path / "snapshot"
    pg_dump(pg, "slow", tree / "services/app/postgresql/slow.dump")
    started = time.monotonic()
    (slow,) = prove_databases(tree, LOG, settings(shared_root, timeout=3.0))
    assert slow.state == ProofState.FAILED
    assert slow.problem == "stopped: it took longer than database_proof_timeout (3s)"
    assert time.monotonic() - started < 60
    assert leftovers(shared_root) == []


def test_an_engine_that_is_not_installed_is_a_warning(maria, monkeypatch, shared_root, tmp_path):
    maria.sql("CREATE DATABASE crm; CREATE TABLE crm.t(a INT); INSERT INTO crm.t VALUES (1);")
    tree = tmp_path / "snapshot"
    maria_dump(maria, "crm", tree / "services/app/mariadb/crm.sql")
    # cannot uninstall MariaDB for one test: the server looks for its programs on PATH
    monkeypatch.setattr(db_proof.shutil, "which", lambda name: None)
    (proof,) = prove_databases(tree, LOG, settings(shared_root))
    assert proof.state == ProofState.UNPROVEN
    assert proof.problem == "dump not proven: install mariadb-server on the server"


def test_verify_proves_the_databases_of_a_pulled_snapshot(pg, maria, tmp_path):
    pg.sql("CREATE DATABASE shop")
    pg.sql(
        "CREATE TABLE orders(id int); INSERT INTO orders SELECT generate_series(1, 250)",
        database="shop",
    )
    maria.sql("CREATE DATABASE crm; CREATE TABLE crm.c(id INT); INSERT INTO crm.c VALUES (1),(2);")
    fleet = Fleet(tmp_path / "fleet", backend="restic")
    try:
        host = fleet.add_host("web1")
        host.client.add_service(
            "shop",
            f"""\
            service: {{name: shop}}
            postgresql:
              host: {pg.socket}
              port: {pg.port}
              user: postgres
              database: shop
              globals: false
            mariadb:
              socket: {maria.socket}
              database: crm
            """,
        )
        run = host.client.cli("run")
        assert run.returncode == 0, run.stderr
        assert fleet.server("pull").returncode == 0
        verified = fleet.server("verify", "--host", "web1")
        print(verified.stdout)
        assert verified.returncode == 0, verified.stdout + verified.stderr
        assert (
            "databases proven by loading them: shop/shop (postgresql): 1 table, 250 rows; "
            "shop/crm (mariadb): 1 table, 2 rows" in verified.stdout
        )
        header, line = fleet.server("status").stdout.splitlines()[:2]
        column = header.index("DATABASES PROVEN")
        assert re.fullmatch(r"\d+s ago", line[column:].split("  ")[0]), line
        recorded = json.loads(fleet.server("status", "--json").stdout)["hosts"]["web1"]
        assert recorded["databases_proven"] == recorded["last_verified"]
        assert len(recorded["database_proofs"]) == 2
    finally:
        fleet.stop()


def test_a_dump_cannot_spoil_the_proof_of_the_next(maria, shared_root, tmp_path):
    tree = tmp_path / "snapshot"
    for service, sql in (
        ("a-lockout", "CREATE DATABASE a; SET PASSWORD = PASSWORD('locked-out');"),
        ("b-broken", "CREATE DATABASE b; USE b; CREATE TABLE t (a INT;"),
    ):
        dump = tree / f"services/{service}/mariadb/{service[0]}.sql"
        dump.parent.mkdir(parents=True)
        dump.write_text(sql + "\n")
    first, second = prove_databases(tree, LOG, settings(shared_root))
    assert first.state == ProofState.PROVEN, first.summary
    assert second.state == ProofState.FAILED, second.summary  # a failure, not a warning
    assert "ERROR 1064" in second.problem


def test_a_dump_cannot_take_the_servers_memory(monkeypatch, shared_root, tmp_path):
    monkeypatch.setattr(db_proof, "MEMORY_LIMIT", 3 << 30)
    dump = tmp_path / "snapshot/services/m/mariadb/m.sql"
    dump.parent.mkdir(parents=True)
    dump.write_text(  # a table in memory, doubled until it would hold 4 GB
        "CREATE DATABASE m; USE m; SET SESSION max_heap_table_size = 8 * 1024 * 1024 * 1024;\n"
        "CREATE TABLE t (a CHAR(255)) ENGINE=MEMORY;\n"
        "INSERT INTO t SELECT REPEAT('x', 255) FROM seq_1_to_1000000;\n"
        + "INSERT INTO t SELECT * FROM t;\n"
        * 4
    )
    (proof,) = prove_databases(tmp_path / "snapshot", LOG, settings(shared_root))
    assert proof.state == ProofState.FAILED
    assert "Out of memory" in proof.problem
    assert leftovers(shared_root) == []
