"""Database restores that never destroy what they cannot rebuild, against real servers:
a non-superuser owner role, a stock Debian PostgreSQL with peer authentication, a second
server to restore to, a live session, a truncated dump."""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import time
from pathlib import Path

import pytest

from tests.helpers.client import ClientSandbox
from tests.helpers.databases import PG_BIN, MariaDB, Postgres

pytestmark = pytest.mark.skipif(PG_BIN is None, reason="PostgreSQL is not installed")


def owner_setup(pg: Postgres, createdb: bool) -> None:
    """The pattern the client docs suggest: the application's own role owns its database,
    and the backup logs in as it with a password file."""
    pg.sql(f"CREATE ROLE shop_owner LOGIN {'CREATEDB' if createdb else ''} PASSWORD 'Sh0p-pw'")
    pg.sql("CREATE DATABASE shop OWNER shop_owner")
    pg.sql("GRANT ALL ON SCHEMA public TO shop_owner", database="shop")
    pg.sql("SET ROLE shop_owner; CREATE TABLE orders(id int, total int);", database="shop")
    pg.sql("SET ROLE shop_owner; INSERT INTO orders VALUES (1, 10), (2, 20);", database="shop")


def shop_client(tmp_path: Path, pg: Postgres, extra: str = "") -> ClientSandbox:
    box = ClientSandbox(tmp_path / "client")
    password = box.secret("shop.pass", "Sh0p-pw")
    box.add_service(
        "shop",
        f"""\
        service: {{name: shop}}
        postgresql:
          host: 127.0.0.1
          port: {pg.port}
          user: shop_owner
          password_file: {password}
          database: shop
          globals: false
          {extra}
        """,
    )
    result = box.cli("run")
    assert result.returncode == 0, result.stderr
    return box


def superuser_client(tmp_path: Path, pg: Postgres) -> ClientSandbox:
    """A client dumping shop as the superuser ``backup`` (as ``postgres`` does on Debian),
    one run made."""
    box = ClientSandbox(tmp_path / "client")
    password = box.secret("backup.pass", pg.password)
    box.add_service(
        "shop",
        f"""\
        service: {{name: shop}}
        postgresql: {{host: 127.0.0.1, port: {pg.port}, user: backup,
                      password_file: {password}, database: shop, globals: false}}
        """,
    )
    assert box.cli("run").returncode == 0
    return box


def restore(box: ClientSandbox, *args: str):
    (archive,) = box.published()
    return box.cli("restore", "--service", "shop", "--from", str(archive), *args)


def fetched(box: ClientSandbox, snap: Path) -> Path:
    """The client's published archive unpacked into ``snap`` (a snapshot fetched into a
    directory, whose files a test may then change); returns ``snap``."""
    (archive,) = box.published()
    snap.mkdir()
    subprocess.run(["tar", "-xf", str(archive), "-C", str(snap)], check=True)
    return snap


def rows(pg: Postgres, database: str = "shop") -> str:
    return pg.sql("SELECT string_agg(id || '=' || total, ',' ORDER BY id) FROM orders", database)


def databases(pg: Postgres) -> set[str]:
    return set(pg.sql("SELECT datname FROM pg_database").split())


def test_a_role_that_cannot_create_databases_changes_nothing(pg, tmp_path):
    owner_setup(pg, createdb=False)
    box = shop_client(tmp_path, pg)
    before = databases(pg)
    for args in ((), ("--replace",)):
        result = restore(box, *args)
        assert result.returncode == 1
        assert "preflight failed, nothing was changed" in result.stderr
        assert "the role cannot create databases (CREATEDB)" in result.stderr
        assert rows(pg) == "1=10,2=20" and databases(pg) == before  # the live one is there


def test_the_default_restore_puts_the_database_beside_the_live_one(pg, tmp_path):
    owner_setup(pg, createdb=True)
    box = shop_client(tmp_path, pg)
    pg.sql("UPDATE orders SET total = 99", database="shop")  # the day after the backup
    dry = restore(box, "--dry-run")  # what it would say reads as what it would say
    assert dry.returncode == 0, dry.stderr
    said = dry.stdout.splitlines()
    assert said[-1].startswith("then: shop is restored as shop_restored_"), said
    assert all(line.startswith(("would: ", "then: ")) for line in said), said
    assert not databases(pg) - {"postgres", "shop", "template0", "template1"}
    result = restore(box)
    assert result.returncode == 0, result.stderr
    assert "then:" not in result.stdout
    (fresh,) = databases(pg) - {"postgres", "shop", "template0", "template1"}
    assert re.fullmatch(r"shop_restored_\d{8}T\d{6}Z", fresh)
    assert rows(pg, fresh) == "1=10,2=20"  # the backup's rows, beside...
    assert rows(pg) == "1=99,2=99"  # ...the untouched live database
    assert f'ALTER DATABASE "{fresh}" RENAME TO "shop"' in result.stdout  # how to swap


def test_replace_swaps_the_database_in_and_keeps_the_one_it_replaced(pg, tmp_path):
    owner_setup(pg, createdb=True)
    box = shop_client(tmp_path, pg)
    pg.sql("UPDATE orders SET total = 99", database="shop")
    dry = restore(box, "--replace", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "would: preflight: ok" in dry.stderr
    assert re.search(r"would: DESTRUCTIVE: swap: shop -> shop_before_restore_\S+", dry.stderr)
    planned = dry.stdout.splitlines()  # the plan on standard output, for -q and for scripts
    assert planned[0] == "would: preflight: ok"
    assert re.match(r"would: DESTRUCTIVE: swap: shop -> shop_before_restore_\d", planned[-1])
    assert rows(pg) == "1=99,2=99" and "shop_restored" not in " ".join(databases(pg))

    result = restore(box, "--replace")
    assert result.returncode == 0, result.stderr
    assert rows(pg) == "1=10,2=20"
    (kept,) = [d for d in databases(pg) if d.startswith("shop_before_restore_")]
    assert rows(pg, kept) == "1=99,2=99"
    assert f"the database it replaced is kept as {kept}" in result.stdout


def test_the_database_comes_back_with_its_owner_settings_and_grants(pg, tmp_path):
    """An outside walk: restored by a superuser, shop came back owned by postgres, open to
    every role again and without its settings; after ``--replace`` the application's
    role could not create a table in its own database."""
    owner_setup(pg, createdb=True)
    pg.sql("CREATE ROLE reporter LOGIN")
    pg.sql(
        "REVOKE CONNECT, TEMPORARY ON DATABASE shop FROM PUBLIC; "
        "GRANT CONNECT ON DATABASE shop TO reporter; "
        "COMMENT ON DATABASE shop IS 'the shop''s orders'; "
        "ALTER DATABASE shop SET work_mem TO '64MB'"
    )
    box = superuser_client(tmp_path, pg)
    properties = (
        "SELECT pg_get_userbyid(datdba), datacl::text, shobj_description(oid, 'pg_database'), "
        "(SELECT setconfig::text FROM pg_db_role_setting WHERE setdatabase = d.oid "
        "AND setrole = 0) FROM pg_database d WHERE datname = '{}'"
    )
    live = pg.sql(properties.format("shop"))
    assert "shop_owner|" in live and "reporter=c/shop_owner" in live and "64MB" in live

    result = restore(box)  # beside: the copy is closed to PUBLIC as the live one is
    assert result.returncode == 0, result.stderr
    (fresh,) = [d for d in databases(pg) if d.startswith("shop_restored_")]
    assert pg.sql(properties.format(fresh)) == live

    result = restore(box, "--replace")
    assert result.returncode == 0, result.stderr
    assert pg.sql(properties.format("shop")) == live
    # the application's role owns its database again: it may create tables in it
    pg.sql("SET ROLE shop_owner; CREATE TABLE t_new(x int);", database="shop")


def test_the_database_comes_back_with_its_encoding_and_locale(pg, tmp_path):
    """A LATIN1 database sorting by C: the copy was made with the server's defaults
    (UTF8, its locale), so its text sorted and compared otherwise than the live one's."""
    pg.sql("CREATE DATABASE shop WITH TEMPLATE = template0 ENCODING = 'LATIN1' LOCALE = 'C'")
    pg.sql("CREATE TABLE orders(id int, total int, note text)", database="shop")
    pg.sql("INSERT INTO orders VALUES (1, 10, 'b'), (2, 20, 'B'), (3, 30, 'a')", database="shop")
    box = superuser_client(tmp_path, pg)
    shape = (
        "SELECT pg_encoding_to_char(encoding), datcollate, datctype FROM pg_database "
        "WHERE datname = '{}'"
    )
    live = pg.sql(shape.format("shop"))
    assert live == "LATIN1|C|C", live
    order = "SELECT string_agg(note, '' ORDER BY note) FROM orders"
    assert pg.sql(order, database="shop") == "Bab"  # C: upper case first

    dry = restore(box, "--dry-run")
    assert "create the database shop_restored_" in dry.stdout
    assert "with ENCODING = 'LATIN1' LOCALE_PROVIDER = libc LOCALE = 'C'" in dry.stdout
    result = restore(box)
    assert result.returncode == 0, result.stderr
    (fresh,) = [d for d in databases(pg) if d.startswith("shop_restored_")]
    assert pg.sql(shape.format(fresh)) == live
    assert pg.sql(order, database=fresh) == "Bab"

    result = restore(box, "--replace")
    assert result.returncode == 0, result.stderr
    assert pg.sql(shape.format("shop")) == live


def test_a_locale_this_server_lacks_makes_the_copy_in_c_and_says_so(pg, tmp_path):
    """The dump names a locale the server does not have (a dump of another server: here
    the dump's own bytes say ``LOCALE = 'X'``, of the same length, and the fetched
    snapshot is restored from a directory). The copy keeps the dump's encoding in the C
    locale, which takes every encoding (the server's defaults would have made a LATIN1
    database UTF8); a note says what was refused and that its text may sort otherwise."""
    pg.sql("CREATE DATABASE shop WITH TEMPLATE = template0 ENCODING = 'LATIN1' LOCALE = 'C'")
    pg.sql("CREATE TABLE orders(id int, total int)", database="shop")
    pg.sql("INSERT INTO orders VALUES (1, 10)", database="shop")
    box = superuser_client(tmp_path, pg)
    snap = fetched(box, tmp_path / "snap")
    (dump,) = snap.rglob("shop.dump")
    data = dump.read_bytes()
    assert data.count(b"LOCALE = 'C';") == 1
    dump.write_bytes(data.replace(b"LOCALE = 'C';", b"LOCALE = 'X';"))

    result = box.cli("restore", "--service", "shop", "--from", str(snap))
    assert result.returncode == 0, result.stderr
    (fresh,) = [d for d in databases(pg) if d.startswith("shop_restored_")]
    assert rows(pg, fresh) == "1=10"
    shape = "SELECT pg_encoding_to_char(encoding), datcollate FROM pg_database WHERE datname"
    assert pg.sql(f"{shape} = '{fresh}'") == "LATIN1|C"
    assert re.search(
        rf"{fresh} is made with ENCODING = 'LATIN1' LOCALE_PROVIDER = libc LOCALE = 'C', not "
        r"with those of shop.dump \(ENCODING = 'LATIN1' LOCALE_PROVIDER = libc LOCALE = 'X'\), "
        r"which it refused: .*invalid locale name.*; its text may sort and compare otherwise",
        result.stdout,
    ), result.stdout


def test_the_database_owner_cannot_make_a_superuser_s_restore_run_its_sql(pg, tmp_path):
    """An outside attack: as the database's owner (no other right), a comment whose last
    line starts with a backslash and a setting holding SQL made the superuser's restore
    grant the owner pg_execute_server_program (the text was cut before it was split).
    A setting's value (a secret, as PostgREST's jwt_secret) never reaches the log."""
    owner_setup(pg, createdb=True)
    pg.sql(
        "SET ROLE shop_owner; COMMENT ON DATABASE shop IS E'x\\n\\\\'; "
        "ALTER DATABASE shop SET application_name TO '; GRANT pg_execute_server_program "
        "TO shop_owner /* DATABASE shop */; SELECT ';"
    )
    pg.sql("ALTER DATABASE shop SET app.jwt_secret TO 'S3cr3t-JWT-key-XYZ'")
    box = superuser_client(tmp_path, pg)
    memberships = (
        "SELECT count(*) FROM pg_auth_members m JOIN pg_roles r ON r.oid = m.member "
        "WHERE r.rolname = 'shop_owner'"
    )
    for args in ((), ("--replace",)):
        result = restore(box, *args)
        assert result.returncode == 0, result.stderr
        assert pg.sql(memberships) == "0"
        assert pg.sql("SELECT rolsuper FROM pg_roles WHERE rolname = 'shop_owner'") == "f"
        assert "S3cr3t-JWT-key-XYZ" not in result.stdout + result.stderr
    comment = pg.sql(
        "SELECT shobj_description(oid, 'pg_database') FROM pg_database WHERE datname = 'shop'"
    )
    assert comment == "x\n\\"


def test_replace_refuses_while_the_application_is_connected(pg, tmp_path):
    owner_setup(pg, createdb=True)
    box = shop_client(tmp_path, pg)
    over_tcp = ["-h", "127.0.0.1", "-p", str(pg.port), "-U", "shop_owner", "-d", "shop"]
    sessions = [  # an application still holding connections: one as the restoring role...
        subprocess.Popen(
            [PG_BIN / "psql", "-X", "-q", *over_tcp],
            stdin=subprocess.PIPE,
            text=True,
            env={**app_env("shop-api"), "PGPASSWORD": "Sh0p-pw"},
        ),
        subprocess.Popen(  # ...and one as another role, with a long name
            pg.psql_argv("shop"), stdin=subprocess.PIPE, text=True, env=app_env("shop-api" * 9)
        ),
    ]
    for session in sessions:
        session.stdin.write("SELECT 1;\n")
        session.stdin.flush()
    # both connected before the restore looks (a fixed half second was too short for
    # the second on a loaded CI machine: the restore saw one session)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        connected = pg.sql(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = 'shop' "
            "AND application_name LIKE 'shop-api%'"
        )
        if connected.strip() == "2":
            break
        time.sleep(0.1)
    try:
        result = restore(box, "--replace")
    finally:
        for session in sessions:
            session.stdin.close()
            session.wait(timeout=30)
    assert result.returncode == 1
    # named by what they said they are (cut short: their clients chose it), who, where
    # and what, as far as the restoring role may see
    cut = ("shop-api" * 5)[:39] + "…"
    said = re.search(
        r"2 session\(s\) are connected to shop \((.*)\): stop the application", result.stderr
    )
    assert said, result.stderr
    assert sorted(said.group(1).split("; ")) == [  # in the engine's order, which varies
        "shop-api as shop_owner from 127.0.0.1 (client backend)",
        f"{cut} as postgres (this role may not see more of it)",
    ], said.group(1)
    assert rows(pg) == "1=10,2=20"
    assert not [d for d in databases(pg) if "restored" in d or "before" in d]


def app_env(name: str) -> dict[str, str]:
    return {**os.environ, "PGAPPNAME": name}


def autovacuum_on(pg: Postgres, database: str) -> None:
    """An autovacuum worker on ``database`` that stays for minutes (one page a tenth of a
    second), as one does after a big table was loaded."""
    pg.sql("ALTER SYSTEM SET autovacuum_naptime = 1")
    pg.sql("SELECT pg_reload_conf()")
    pg.sql(
        "CREATE TABLE big WITH (autovacuum_vacuum_threshold = 0, "
        "autovacuum_vacuum_scale_factor = 0, autovacuum_vacuum_cost_delay = 100, "
        "autovacuum_vacuum_cost_limit = 1) AS SELECT g FROM generate_series(1, 200000) g; "
        "DELETE FROM big WHERE g % 2 = 0;",
        database,
    )
    deadline = time.monotonic() + 90
    while autovacuum_workers(pg, database) == 0:
        assert time.monotonic() < deadline, "no autovacuum worker came"
        time.sleep(0.2)


def autovacuum_workers(pg: Postgres, database: str) -> int:
    return int(
        pg.sql(
            "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'autovacuum worker' "
            f"AND datname = '{database}'"
        )
    )


def test_replace_goes_ahead_while_autovacuum_works_on_the_live_database(pg, tmp_path):
    """An autovacuum worker is no application: the preflight passes, and the rename ends
    the worker (PostgreSQL does, and it restarts later)."""
    owner_setup(pg, createdb=True)
    box = shop_client(tmp_path, pg)
    pg.sql("UPDATE orders SET total = 99", database="shop")
    autovacuum_on(pg, "shop")
    dry = restore(box, "--replace", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "would: preflight: ok" in dry.stderr
    assert autovacuum_workers(pg, "shop") == 1  # still at work as the swap begins
    result = restore(box, "--replace")
    assert result.returncode == 0, result.stderr
    assert rows(pg) == "1=10,2=20"
    (kept,) = [d for d in databases(pg) if d.startswith("shop_before_restore_")]
    assert rows(pg, kept) == "1=99,2=99"


def test_a_swap_refused_after_the_preflight_says_what_it_left_and_how_to_finish(pg, tmp_path):
    """A session connects while pg_restore runs (after the preflight passed): the swap is
    refused, the live database is untouched, and the message names the copy it keeps, the
    two renames that finish the restore, and how to drop the copy instead."""
    owner_setup(pg, createdb=True)
    pg.sql(  # an index whose build takes a second a row: pg_restore lasts two seconds
        "SET ROLE shop_owner; CREATE FUNCTION slow(n int) RETURNS int IMMUTABLE "
        "LANGUAGE plpgsql AS $$BEGIN PERFORM pg_sleep(1); RETURN n; END$$; "
        "CREATE INDEX ON orders (slow(id));",
        database="shop",
    )
    box = shop_client(tmp_path, pg)
    pg.sql("UPDATE orders SET total = 99", database="shop")
    (archive,) = box.published()
    running = box.popen("restore", "--service", "shop", "--from", str(archive), "--replace")
    deadline = time.monotonic() + 60
    while not [d for d in databases(pg) if d.startswith("shop_restored_")]:
        assert time.monotonic() < deadline and running.poll() is None, running.communicate()
        time.sleep(0.05)
    session = subprocess.Popen(pg.psql_argv("shop"), stdin=subprocess.PIPE, text=True)
    try:
        session.stdin.write("SELECT 1;\n")
        session.stdin.flush()
        _, stderr = running.communicate(timeout=120)
    finally:
        session.stdin.close()
        session.wait(timeout=30)
    assert running.returncode == 1, stderr
    (fresh,) = [d for d in databases(pg) if d.startswith("shop_restored_")]
    before = fresh.replace("_restored_", "_before_restore_")
    assert rows(pg) == "1=99,2=99" and rows(pg, fresh) == "1=10,2=20"
    assert before not in databases(pg)
    said = " ".join(stderr.split())  # the log wraps no words, but be sure
    assert (
        f'swapping {fresh} in failed: ERROR: database "shop" is being accessed by other '
        f"users. The live shop is untouched; the restored copy is kept as {fresh}. "
        "To finish, stop the application "
        "(connected now: psql as postgres (this role may not see more of it)) and run: "
        f'ALTER DATABASE "shop" RENAME TO "{before}"; '
        f'ALTER DATABASE "{fresh}" RENAME TO "shop"; '
        f'or drop the copy (DROP DATABASE "{fresh}") and restore again'
    ) in said


@pytest.mark.parametrize("kept", [0.5, 0.8])
def test_a_truncated_dump_fails_the_preflight_with_the_tools_words(pg, tmp_path, kept):
    owner_setup(pg, createdb=True)
    pg.sql(  # enough data that a cut at 80 % leaves the table of contents whole
        "SET ROLE shop_owner; CREATE TABLE filler AS "
        "SELECT g, md5(g::text) AS pad FROM generate_series(1, 60000) g;",
        database="shop",
    )
    box = shop_client(tmp_path, pg)
    (archive,) = box.published()
    subprocess.run(["tar", "--zstd", "-xf", str(archive), "-C", str(tmp_path)], check=True)
    (dump,) = (tmp_path / "services/shop/postgresql").glob("*.dump")
    dump.write_bytes(dump.read_bytes()[: int(dump.stat().st_size * kept)])
    dry = box.cli("restore", "--service", "shop", "--from", str(tmp_path), "--replace", "-n")
    assert dry.stdout.startswith("would: preflight: FAILED: shop.dump cannot be read to its end")
    before = databases(pg)
    result = box.cli("restore", "--service", "shop", "--from", str(tmp_path), "--replace")
    assert result.returncode == 1
    assert "shop.dump cannot be read to its end (pg_restore:" in result.stderr
    assert rows(pg) == "1=10,2=20" and databases(pg) == before


def test_the_roles_a_server_has_are_never_changed_by_a_restore(pg, tmp_path):
    """globals.sql holds yesterday's passwords: a restore only adds missing roles."""
    pg.sql("CREATE ROLE app LOGIN PASSWORD 'old-pw' CONNECTION LIMIT 5")
    pg.sql("CREATE ROLE gone LOGIN")
    pg.sql("CREATE ROLE \"o'brien\"; COMMENT ON ROLE \"o'brien\" IS 'irish; -- really'")
    pg.sql("ALTER ROLE postgres PASSWORD 'pg-old'")
    pg.sql("CREATE DATABASE shop OWNER app")
    box = ClientSandbox(tmp_path / "client")
    password = box.secret("backup.pass", pg.password)
    box.add_service(
        "shop",
        f"""        service: {{name: shop}}
        postgresql:
          host: 127.0.0.1
          port: {pg.port}
          user: backup
          password_file: {password}
          database: shop
        """,
    )
    assert box.cli("run").returncode == 0
    pg.sql("ALTER ROLE app PASSWORD 'new-pw' CONNECTION LIMIT -1")
    pg.sql("ALTER ROLE backup PASSWORD 'rotated-Pa55'")  # the restoring role's, too
    pg.sql("DROP ROLE gone; DROP ROLE \"o'brien\"; ALTER ROLE postgres PASSWORD 'pg-new'")
    password.write_text("rotated-Pa55\n")
    attributes = (
        "SELECT string_agg(rolname || rolpassword || rolconnlimit, ',' ORDER BY rolname) "
        "FROM pg_authid WHERE rolpassword IS NOT NULL"
    )
    before = pg.sql(attributes)
    result = restore(box)
    assert result.returncode == 0, result.stderr
    assert pg.sql(attributes) == before  # password and limit as they were set today
    assert pg.sql("SELECT count(*) FROM pg_roles WHERE rolname IN ('gone', 'o''brien')") == "2"
    assert "the existing roles stay as they are (app, backup, postgres)" in result.stderr


def test_restoring_twice_keeps_both_and_never_overwrites_what_was_kept(pg, tmp_path):
    owner_setup(pg, createdb=True)
    box = shop_client(tmp_path, pg)
    assert restore(box).returncode == 0
    time.sleep(1.1)  # the copies are named by the time of the restore
    assert restore(box).returncode == 0
    assert len([d for d in databases(pg) if d.startswith("shop_restored_")]) == 2
    pg.sql("UPDATE orders SET total = 99", database="shop")
    time.sleep(1.1)  # a restore in the same second as the one before is refused (its name)
    assert restore(box, "--replace").returncode == 0
    pg.sql("UPDATE orders SET total = 77", database="shop")
    time.sleep(1.1)
    assert restore(box, "--replace").returncode == 0
    kept = sorted(d for d in databases(pg) if d.startswith("shop_before_restore_"))
    assert [rows(pg, d) for d in kept] == ["1=99,2=99", "1=77,2=77"]


def test_restore_to_another_server(pg, shared_root, tmp_path):
    owner_setup(pg, createdb=True)
    box = shop_client(tmp_path, pg)
    other = Postgres(shared_root / "other").start()
    try:
        password = box.secret("backup.pass", other.password)
        result = restore(
            box,
            "--replace",
            "--hostname",
            "127.0.0.1",
            "--port",
            str(other.port),
            "--username",
            "backup",
            "--password-file",
            str(password),
        )
        assert result.returncode == 0, result.stderr
        assert rows(other) == "1=10,2=20"  # there is no live shop there: it just arrives
        assert other.password not in result.stderr + result.stdout
    finally:
        other.stop()


def test_a_stock_debian_postgresql_with_peer_authentication(shared_root, tmp_path):
    """pullback runs as root; the socket uses peer authentication, as Debian ships it."""
    pg = Postgres(shared_root / "peer", auth_local="peer").start()
    try:
        pg.sql("CREATE DATABASE shop")
        pg.sql("CREATE TABLE orders(id int, total int); INSERT INTO orders VALUES (1, 10)", "shop")
        box = ClientSandbox(tmp_path / "client")

        def service(extra: str) -> None:
            box.add_service(
                "shop",
                f"""\
                service: {{name: shop}}
                postgresql:
                  host: {pg.socket}
                  port: {pg.port}
                  database: shop
                  {extra}
                """,
            )

        service("")
        failed = box.cli("run")
        assert failed.returncode == 1
        assert 'role "root" does not exist (set user:, or run_as: postgres' in failed.stderr
        checked = box.cli("check")
        assert checked.returncode == 2 and "cannot log in" in checked.stdout

        service("run_as: postgres")
        assert box.cli("check").returncode == 0
        home = tmp_path / "root-home"  # started from root's home, closed to postgres
        home.mkdir(mode=0o700)
        ran = box.cli("run", cwd=home)
        assert ran.returncode == 0, ran.stderr
        pg.sql("UPDATE orders SET total = 99", "shop")
        (archive,) = box.published()
        result = box.cli(
            "restore", "--service", "shop", "--from", str(archive), "--replace", cwd=home
        )
        assert result.returncode == 0, result.stderr
        assert rows(pg) == "1=10"
        # the tools run as postgres from /, not from a directory it cannot enter
        assert "could not change directory" not in ran.stderr + result.stderr
    finally:
        pg.stop()


def test_check_connects_and_warns_what_a_restore_would_lack(pg, tmp_path):
    owner_setup(pg, createdb=False)
    box = shop_client(tmp_path, pg)
    checked = box.cli("check")
    assert checked.returncode == 0, checked.stdout
    assert "warning: " in checked.stdout and "cannot create databases (CREATEDB)" in checked.stdout
    box.secret("shop.pass", "wrong")
    checked = box.cli("check")
    assert checked.returncode == 2
    assert "cannot log in: the server refused the password" in checked.stdout


# -- MariaDB ------------------------------------------------------------------------------


@pytest.fixture
def maria(shared_root):
    server = MariaDB(shared_root / "maria").start()
    server.sql(
        "CREATE DATABASE shop; CREATE TABLE shop.orders(id INT PRIMARY KEY, total INT); "
        "INSERT INTO shop.orders VALUES (1, 10), (2, 20);"
    )
    yield server
    server.stop()


def maria_rows(maria: MariaDB, database: str = "shop") -> str:
    return maria.sql(
        f"SELECT GROUP_CONCAT(CONCAT(id, '=', total) ORDER BY id) FROM `{database}`.orders"
    )


def maria_databases(maria: MariaDB) -> set[str]:
    return set(maria.sql("SHOW DATABASES").split())


def maria_client(tmp_path: Path, maria: MariaDB, credentials: str) -> ClientSandbox:
    box = ClientSandbox(tmp_path / "client")
    box.add_service(
        "shop",
        f"""\
        service: {{name: shop}}
        mariadb:
          database: shop
          {credentials}
        """,
    )
    result = box.cli("run")
    assert result.returncode == 0, result.stderr
    return box


def root_by_socket(maria: MariaDB) -> str:
    """Debian's root@localhost: unix_socket authentication, pullback running as root."""
    return f"socket: {maria.socket}"


def test_mariadb_a_trigger_naming_its_database_is_not_loaded_beside_the_live_one(maria, tmp_path):
    """An outside walk: a trigger written ``ON inv.items`` was created on the live table
    by a restore "beside", which said the live database was untouched."""
    maria.sql(
        "CREATE TABLE shop.audit(n INT); CREATE TRIGGER shop.audit_orders AFTER INSERT ON "
        "shop.orders FOR EACH ROW INSERT INTO shop.audit VALUES (NEW.id)"
    )
    live_triggers = "SELECT COUNT(*) FROM information_schema.triggers WHERE trigger_schema='shop'"
    try:
        box = maria_client(tmp_path, maria, root_by_socket(maria))
        maria.sql("DROP TRIGGER shop.audit_orders")  # the live database has none now
        before = maria_databases(maria)
        for extra in ((), ("--replace",)):
            result = restore(box, *extra)
            assert result.returncode == 1, result.stderr
            assert (
                "a trigger, routine, event or view names the database shop itself" in result.stderr
            )
            assert "nothing was changed" in result.stderr
            assert maria_databases(maria) == before
            assert maria.sql(live_triggers) == "0"
    finally:
        maria.sql("DROP TRIGGER IF EXISTS shop.audit_orders; DROP TABLE IF EXISTS shop.audit")


def test_mariadb_a_user_without_create_changes_nothing(maria, tmp_path):
    maria.sql(
        "CREATE USER 'shopuser'@'127.0.0.1' IDENTIFIED BY 'Sh0p-pw'; "
        "GRANT ALL ON shop.* TO 'shopuser'@'127.0.0.1';"
    )
    box = ClientSandbox(tmp_path / "pw")
    password = box.secret("shop.pass", "Sh0p-pw")
    box = maria_client(
        tmp_path,
        maria,
        f"host: 127.0.0.1\n          port: {maria.port}\n          user: shopuser\n"
        f"          password_file: {password}",
    )
    checked = box.cli("check")
    assert checked.returncode == 0 and "may not create databases (CREATE on *.*)" in checked.stdout
    before = maria_databases(maria)
    for args in ((), ("--replace",)):
        result = restore(box, *args)
        assert result.returncode == 1
        assert "preflight failed, nothing was changed" in result.stderr
        assert maria_rows(maria) == "1=10,2=20" and maria_databases(maria) == before


def test_mariadb_default_restore_is_beside_the_live_database(maria, tmp_path):
    box = maria_client(tmp_path, maria, root_by_socket(maria))
    maria.sql("UPDATE shop.orders SET total = 99")
    result = restore(box)
    assert result.returncode == 0, result.stderr
    (fresh,) = [d for d in maria_databases(maria) if d.startswith("shop_restored_")]
    assert maria_rows(maria, fresh) == "1=10,2=20" and maria_rows(maria) == "1=99,2=99"


def test_mariadb_the_database_keeps_its_default_character_set(maria, tmp_path):
    """The copy was made with the server's default character set (the dump's own
    ``CREATE DATABASE`` was skipped by its ``IF NOT EXISTS``): tables the application
    creates later in a restored latin1 database came out utf8mb4."""
    maria.sql("ALTER DATABASE shop DEFAULT CHARACTER SET latin1 COLLATE latin1_german1_ci")
    box = maria_client(tmp_path, maria, root_by_socket(maria))
    charset = (
        "SELECT CONCAT(default_character_set_name, ' ', default_collation_name) "
        "FROM information_schema.schemata WHERE schema_name = '{}'"
    )
    dry = restore(box, "--dry-run")
    assert "with DEFAULT CHARACTER SET latin1 COLLATE latin1_german1_ci and load" in dry.stdout
    result = restore(box)
    assert result.returncode == 0, result.stderr
    (fresh,) = [d for d in maria_databases(maria) if d.startswith("shop_restored_")]
    assert maria.sql(charset.format(fresh)) == "latin1 latin1_german1_ci"
    maria.sql("DROP DATABASE shop")  # lost: --replace makes it again, as it was
    time.sleep(1.1)  # (the copies are named by the second)
    result = restore(box, "--replace")
    assert result.returncode == 0, result.stderr
    assert maria.sql(charset.format("shop")) == "latin1 latin1_german1_ci"
    assert maria_rows(maria) == "1=10,2=20"


def test_mariadb_a_character_set_the_server_lacks_fails_in_words_and_changes_nothing(
    maria, tmp_path
):
    """A dump of MySQL 8 names ``utf8mb4_0900_ai_ci``, which MariaDB lacks (here the
    fetched dump's own line says so): the dump's own ``CREATE DATABASE`` could not load
    either; the restore says so before it creates anything."""
    box = maria_client(tmp_path, maria, root_by_socket(maria))
    snap = fetched(box, tmp_path / "snap")
    (dump,) = snap.rglob("shop.sql")
    text = dump.read_text()
    line = re.search(r"^CREATE DATABASE .*shop.*$", text, re.M)[0]
    mysql8 = "/*!40100 DEFAULT CHARACTER SET utf8mb4 COLLATE utf8mb4_0900_ai_ci */"
    dump.write_text(text.replace(line, re.sub(r"/\*!40100 .* \*/", mysql8, line)))
    before = maria_databases(maria)
    result = box.cli("restore", "--service", "shop", "--from", str(snap))
    assert result.returncode == 1, result.stderr
    assert re.search(r"creating shop_restored_\S+ failed: .*Unknown collation", result.stderr)
    assert maria_databases(maria) == before and maria_rows(maria) == "1=10,2=20"


def test_mariadb_replace_swaps_tables_atomically_and_keeps_the_old_ones(maria, tmp_path):
    box = maria_client(tmp_path, maria, root_by_socket(maria))
    maria.sql("UPDATE shop.orders SET total = 99")
    result = restore(box, "--replace")
    assert result.returncode == 0, result.stderr
    assert maria_rows(maria) == "1=10,2=20"
    (kept,) = [d for d in maria_databases(maria) if d.startswith("shop_before_restore_")]
    assert maria_rows(maria, kept) == "1=99,2=99"
    assert not [d for d in maria_databases(maria) if "restored" in d]


def test_mariadb_replace_with_a_view_and_a_trigger_copies_the_live_database_aside(maria, tmp_path):
    maria.sql(
        "CREATE VIEW big AS SELECT * FROM orders WHERE total > 15; "
        "CREATE TABLE audit(n INT); "
        "CREATE TRIGGER count_orders AFTER INSERT ON orders "
        "FOR EACH ROW INSERT INTO audit VALUES (NEW.id);",
        database="shop",
    )
    box = maria_client(tmp_path, maria, root_by_socket(maria))
    maria.sql("INSERT INTO shop.orders VALUES (3, 30)")
    result = restore(box, "--replace")
    assert result.returncode == 0, result.stderr
    assert maria_rows(maria) == "1=10,2=20"
    assert maria.sql("SELECT COUNT(*) FROM shop.big") == "1"  # the view is back
    (copy,) = (box.root / "before-restore").glob("shop_before_restore_*.sql")
    held = copy.read_bytes()  # what the live database held: the row added after the backup
    assert b"CREATE TABLE `orders`" in held and b"(3,30)" in held
    assert f"what it held is kept in {copy}" in result.stdout
    assert oct(copy.stat().st_mode & 0o777) == "0o600"


def test_mariadb_a_truncated_dump_fails_the_preflight(maria, tmp_path):
    box = maria_client(tmp_path, maria, root_by_socket(maria))
    (archive,) = box.published()
    subprocess.run(["tar", "--zstd", "-xf", str(archive), "-C", str(tmp_path)], check=True)
    (dump,) = (tmp_path / "services/shop/mariadb").glob("*.sql")
    dump.write_bytes(dump.read_bytes()[: dump.stat().st_size // 2])
    result = box.cli("restore", "--service", "shop", "--from", str(tmp_path), "--replace")
    assert result.returncode == 1
    assert "shop.sql does not end as a complete mariadb-dump does" in result.stderr
    assert maria_rows(maria) == "1=10,2=20"


def test_mariadb_replace_refuses_while_the_application_is_connected(maria, tmp_path):
    maria.sql("CREATE VIEW shop.big AS SELECT * FROM shop.orders WHERE total > 15")
    box = maria_client(tmp_path, maria, root_by_socket(maria))
    app = subprocess.Popen(  # an open transaction holds a metadata lock on shop.orders
        [*maria.client_argv("shop")],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
    )
    try:
        app.stdin.write("BEGIN; SELECT COUNT(*) FROM orders;\n")
        app.stdin.flush()
        time.sleep(0.5)
        before = maria_databases(maria)
        result = restore(box, "--replace")
        assert result.returncode == 1
        assert "session(s) are using shop: stop the application" in result.stderr
        assert maria_databases(maria) == before and maria_rows(maria) == "1=10,2=20"
    finally:
        app.stdin.close()
        app.wait(timeout=30)


def test_mariadb_a_user_who_cannot_set_definers_is_stopped_by_the_preflight(maria, tmp_path):
    maria.sql(
        "CREATE VIEW shop.big AS SELECT * FROM shop.orders WHERE total > 15; "
        "CREATE USER 'restorer'@'127.0.0.1' IDENTIFIED BY 'R3st-pw'; "
        "GRANT ALL ON `shop%`.* TO 'restorer'@'127.0.0.1'; "
        "GRANT CREATE, SELECT ON *.* TO 'restorer'@'127.0.0.1';"
    )
    box = maria_client(tmp_path, maria, root_by_socket(maria))
    password = box.secret("restorer.pass", "R3st-pw")
    before = maria_databases(maria)
    result = restore(
        box,
        "--hostname",
        "127.0.0.1",
        "--port",
        str(maria.port),
        "--username",
        "restorer",
        "--password-file",
        str(password),
    )
    assert result.returncode == 1
    assert "defines views, triggers or routines for root@localhost" in result.stderr
    assert "SET USER" in result.stderr and maria_databases(maria) == before


# -- SQLite -------------------------------------------------------------------------------


def test_sqlite_restores_beside_or_keeps_the_file_it_replaces(tmp_path):
    import sqlite3

    live = tmp_path / "app.db"
    with contextlib.closing(sqlite3.connect(live)) as db, db:
        db.execute("CREATE TABLE notes(body TEXT)")
        db.execute("INSERT INTO notes VALUES ('backed up')")
    box = ClientSandbox(tmp_path / "client")
    box.add_service("shop", f"service: {{name: shop}}\nsqlite: {{paths: [{live}]}}\n")
    assert box.cli("run").returncode == 0
    with contextlib.closing(sqlite3.connect(live)) as db, db:
        db.execute("UPDATE notes SET body = 'changed since'")

    def body(path: Path) -> str:  # closed after (an open database stops a --replace)
        with contextlib.closing(sqlite3.connect(path)) as db:
            return db.execute("SELECT body FROM notes").fetchone()[0]

    result = restore(box)
    assert result.returncode == 0, result.stderr
    (beside,) = tmp_path.glob("app.db.restored-*")
    assert body(beside) == "backed up" and body(live) == "changed since"

    result = restore(box, "--replace")
    assert result.returncode == 0, result.stderr
    (kept,) = tmp_path.glob("app.db.before-restore-*")
    assert body(live) == "backed up" and body(kept) == "changed since"

    # a second --replace keeps what the first one kept
    with contextlib.closing(sqlite3.connect(live)) as db, db:
        db.execute("UPDATE notes SET body = 'changed again'")
    time.sleep(1.1)
    assert restore(box, "--replace").returncode == 0
    kept = sorted(tmp_path.glob("app.db.before-restore-*"))
    assert [body(k) for k in kept] == ["changed since", "changed again"]


def test_a_sqlite_replace_onto_a_directory_fails_its_task_and_the_others_run(tmp_path):
    """An outside walk: with a directory where the database was, ``--replace`` ended the
    whole restore with a traceback (a sqlite3 error, exit 70) after the files task had
    run. Now the preflight refuses that task, nothing of it changed, the service's other
    tasks are restored, and the failure is said once, then named in the last line."""
    import sqlite3

    live = tmp_path / "app.db"
    with sqlite3.connect(live) as db:
        db.execute("CREATE TABLE notes(body TEXT)")
    data = tmp_path / "data"
    data.mkdir()
    (data / "a.txt").write_text("backed up")
    box = ClientSandbox(tmp_path / "client")
    box.add_service(
        "shop",
        f"service: {{name: shop}}\nsqlite: {{paths: [{live}]}}\nfiles: {{paths: [{data}]}}\n",
    )
    assert box.cli("run").returncode == 0
    live.unlink()
    live.mkdir()
    (live / "inside").write_text("not a database")
    (data / "a.txt").write_text("edited")
    result = restore(box, "--replace")
    said = result.stderr
    assert result.returncode == 1, said
    assert "Traceback" not in said and "internal error" not in said, said
    assert said.count("is not a database file") == 1, said
    assert "restore of shop incomplete: sqlite failed (above)" in said, said
    assert (live / "inside").read_text() == "not a database"
    assert not list(tmp_path.glob("app.db.before-restore-*"))
    assert (data / "a.txt").read_text() == "backed up", "the files task still ran"
