# ruff: noqa: E501, F811 (hostile CREATE DATABASE lines whole; tests take the imported maria)
"""helper-95's attack on the restored database's encoding and locales (PostgreSQL
``pg_database.create_options``) and default character set (MariaDB ``create_options``):
hostile dump bytes, a database owner choosing its own locale and comment, and the
unhappy paths of docs/restore.md. Six defects were found, each first a strict xfail,
and mended the same day (a SQL_ASCII database loaded into UTF8 unreadable; the dump's
words lexed by a server with standard_conforming_strings off; MariaDB lines with a
COMMENT or MySQL 8's ENCRYPTION not read; --replace leaving the live database's
defaults); what held passed from the start. It uses the helpers of
test_database_restore.py."""

from __future__ import annotations

import os
import re
import subprocess
import time
from pathlib import Path

import pytest

from tests.helpers.databases import PG_BIN, MariaDB, Postgres, as_role
from tests.integration.test_database_restore import (
    databases,
    maria,  # noqa: F401 (the fixture: a server holding shop)
    maria_client,
    maria_databases,
    maria_rows,
    restore,
    root_by_socket,
    rows,
    shop_client,
    superuser_client,
)

pytestmark = pytest.mark.skipif(PG_BIN is None, reason="PostgreSQL is not installed")


# -- helpers ------------------------------------------------------------------------------


def standard_conforming_strings(pg: Postgres, value: str) -> None:
    """The server's setting (a legacy application's postgresql.conf says ``off``)."""
    pg.sql(f"ALTER SYSTEM SET standard_conforming_strings = {value}")
    pg.sql("SELECT pg_reload_conf()")
    time.sleep(0.5)
    assert pg.sql("SHOW standard_conforming_strings") == value


def fresh_of(pg: Postgres) -> str:
    (fresh,) = [d for d in databases(pg) if d.startswith("shop_restored_")]
    return fresh


SHAPE = (
    "SELECT pg_encoding_to_char(encoding), datlocprovider, datcollate, datctype, "
    "coalesce(daticulocale, '-') FROM pg_database WHERE datname = '{}'"
)


def snapshot_dir(box, tmp_path: Path) -> tuple[Path, Path]:
    """The fetched snapshot unpacked into a directory, and its shop dump."""
    (archive,) = box.published()
    snap = tmp_path / "snap"
    snap.mkdir()
    subprocess.run(["tar", "-xf", str(archive), "-C", str(snap)], check=True)
    (dump,) = [*snap.rglob("shop.dump"), *snap.rglob("shop.sql")]
    return snap, dump


# -- PostgreSQL: defects --------------------------------------------------------------------


def test_h95_a_server_without_standard_conforming_strings_runs_options_outside_the_list(
    pg, tmp_path
):
    # the application's role (CREATEDB, nothing else) makes its own database; ICU takes
    # the whole text as a locale ("und", private use "a")
    pg.sql("CREATE ROLE shop_owner LOGIN CREATEDB PASSWORD 'Sh0p-pw'")
    as_role(
        pg,
        "shop_owner",
        r"CREATE DATABASE shop WITH TEMPLATE = template0 LOCALE_PROVIDER = icu "
        r"ICU_LOCALE = 'und-x-a\'' IS_TEMPLATE = true CONNECTION LIMIT = 0 --'",
    )
    pg.sql("CREATE TABLE orders(id int, total int); INSERT INTO orders VALUES (1, 10)", "shop")
    box = superuser_client(tmp_path, pg)  # dumped with standard_conforming_strings on
    standard_conforming_strings(pg, "off")  # the server the restore runs against

    result = restore(box)
    assert result.returncode == 0, result.stderr
    fresh = fresh_of(pg)
    assert rows(pg, fresh) == "1=10"
    flags = "SELECT datistemplate, datconnlimit FROM pg_database WHERE datname = '{}'"
    assert pg.sql(flags.format("shop")) == "f|-1"
    # a template any CREATEDB role may copy, and a connection limit of 0 for the app
    assert pg.sql(flags.format(fresh)) == "f|-1"


def test_h95_a_comment_makes_the_owner_superuser_on_a_server_without_conforming_strings(
    pg, tmp_path
):
    pg.sql("CREATE ROLE shop_owner LOGIN CREATEDB PASSWORD 'Sh0p-pw'")
    as_role(pg, "shop_owner", "CREATE DATABASE shop")
    as_role(
        pg,
        "shop_owner",
        r"COMMENT ON DATABASE shop IS 'a\''; ALTER ROLE shop_owner SUPERUSER; --'",
        "shop",
    )
    pg.sql("CREATE TABLE orders(id int, total int); INSERT INTO orders VALUES (1, 10)", "shop")
    box = superuser_client(tmp_path, pg)
    standard_conforming_strings(pg, "off")
    assert pg.sql("SELECT rolsuper FROM pg_roles WHERE rolname = 'shop_owner'") == "f"

    result = restore(box)
    assert result.returncode == 0, result.stderr
    assert rows(pg, fresh_of(pg)) == "1=10"
    assert pg.sql("SELECT rolsuper FROM pg_roles WHERE rolname = 'shop_owner'") == "f"


def test_h95_a_createdb_role_restores_a_sql_ascii_database_holding_latin1(pg, tmp_path):
    pg.sql("CREATE ROLE shop_owner LOGIN CREATEDB PASSWORD 'Sh0p-pw'")
    # made long ago by postgres (createdb -E SQL_ASCII -T template0 on a C.UTF-8 server)
    pg.sql(
        "CREATE DATABASE shop OWNER shop_owner TEMPLATE template0 ENCODING 'SQL_ASCII' "
        "LOCALE 'C.UTF-8'"
    )
    pg.sql("GRANT ALL ON SCHEMA public TO shop_owner", database="shop")
    as_role(pg, "shop_owner", "CREATE TABLE orders(id int, total int, note text)", "shop")
    as_role(pg, "shop_owner", r"INSERT INTO orders VALUES (1, 10, E'caf\351')", "shop")
    digest = "SELECT md5(convert_to(note, 'SQL_ASCII')) FROM orders"
    live = pg.sql(digest, database="shop")
    box = shop_client(tmp_path, pg)  # dumps and restores as shop_owner, as docs suggest

    result = restore(box)
    assert result.returncode == 0, result.stderr + result.stdout
    fresh = fresh_of(pg)
    # (actual: UTF8|c|C.UTF-8|C.UTF-8 holding 0xE9; reading it raises CalledProcessError)
    assert pg.sql(SHAPE.format(fresh)).startswith("SQL_ASCII|"), pg.sql(SHAPE.format(fresh))
    assert pg.sql(digest, database=fresh) == live


# -- PostgreSQL: what held --------------------------------------------------------------------

LINE = "CREATE DATABASE shop WITH TEMPLATE = template0 ENCODING = 'LATIN1' LOCALE_PROVIDER = libc LOCALE = 'C';"


def _same_length(text: str) -> bytes:
    """``text`` padded inside its last literal to the length of :data:`LINE` in bytes."""
    data = text.encode()
    pad = len(LINE.encode()) - len(data)
    assert pad >= 0, (text, pad)
    head, tail = data.rsplit(b"'", 1)
    return head + b"x" * pad + b"'" + tail


HOSTILE = {
    "sql in a literal": "CREATE DATABASE shop WITH TEMPLATE = template0 LOCALE = 'C'';DROP DATABASE victim;--';",
    "another template": "CREATE DATABASE shop WITH TEMPLATE = victim ENCODING = 'LATIN1' LOCALE = 'C';",
    "escape string": "CREATE DATABASE shop WITH TEMPLATE = template0 LOCALE = E'\\';DROP DATABASE victim;--';",
    "psql meta": "CREATE DATABASE shop WITH TEMPLATE = template0 LOCALE = '\\! touch /tmp/h95-pwned #';",
    "forged line": "CREATE DATABASE shop WITH TEMPLATE = template0 LOCALE = 'C\u2028would: DROP \u009b2J';",
    "option outside the list": "CREATE DATABASE shop WITH TEMPLATE = template0 IS_TEMPLATE = true LOCALE = 'C';",
    "second statement": "CREATE DATABASE shop WITH TEMPLATE = template0 ENCODING = 'UTF8'; DROP DATABASE victim;",
    "word as a value": "CREATE DATABASE shop WITH TEMPLATE = template0 ENCODING = default LOCALE = 'C';",
}


@pytest.mark.parametrize("kind", sorted(HOSTILE))
def test_h95_hostile_create_database_bytes_run_nothing_and_forge_nothing(pg, tmp_path, kind):
    pg.sql("CREATE DATABASE victim")
    pg.sql("CREATE DATABASE shop WITH TEMPLATE = template0 ENCODING = 'LATIN1' LOCALE = 'C'")
    pg.sql("CREATE TABLE orders(id int, total int); INSERT INTO orders VALUES (1, 10)", "shop")
    box = superuser_client(tmp_path, pg)
    snap, dump = snapshot_dir(box, tmp_path)
    data = dump.read_bytes()
    assert data.count(LINE.encode()) == 1
    dump.write_bytes(data.replace(LINE.encode(), _same_length(HOSTILE[kind])))
    Path("/tmp/h95-pwned").unlink(missing_ok=True)

    for args in (("--dry-run",), ()):
        result = box.cli("restore", "--service", "shop", "--from", str(snap), *args)
        assert result.returncode == 0, result.stderr
        lines = result.stdout.splitlines()
        assert not any(line.startswith("would: DROP") for line in lines), lines
        assert "\u2028" not in result.stdout and "\u009b" not in result.stdout
        assert "\u2028" not in result.stderr and "\u009b" not in result.stderr
    assert "victim" in databases(pg)
    assert not Path("/tmp/h95-pwned").exists()
    fresh = fresh_of(pg)
    assert rows(pg, fresh) == "1=10"
    assert pg.sql(f"SELECT datistemplate FROM pg_database WHERE datname = '{fresh}'") == "f"


@pytest.mark.parametrize(
    "create",
    [
        "ENCODING 'UTF8' LOCALE_PROVIDER icu ICU_LOCALE 'de-u-ks-level2' LOCALE 'C.UTF-8'",
        "ENCODING 'UTF8' LC_COLLATE 'C' LC_CTYPE 'C.UTF-8'",
        "ENCODING 'SQL_ASCII' LOCALE 'C'",
        "ENCODING 'LATIN1' LOCALE 'C'",
    ],
)
def test_h95_the_copy_sorts_as_the_live_one_beside_replaced_and_recreated(pg, tmp_path, create):
    pg.sql(f"CREATE DATABASE shop WITH TEMPLATE = template0 {create}")
    pg.sql("CREATE TABLE orders(id int, total int, note text)", "shop")
    pg.sql(
        "INSERT INTO orders VALUES (1, 10, 'b'), (2, 20, 'B'), (3, 30, 'a'), (4, 40, 'A'), "
        "(5, 50, '_a'), (6, 60, 'a1'), (7, 70, 'a10'), (8, 80, 'a9')",
        "shop",
    )
    pg.sql("CREATE INDEX ON orders(note)", "shop")
    order = "SELECT string_agg(note, ',' ORDER BY note) FROM orders"
    equal = "SELECT count(*) FROM orders WHERE note = 'A'"
    live_shape, live_order = pg.sql(SHAPE.format("shop")), pg.sql(order, "shop")
    live_equal = pg.sql(equal, "shop")
    box = superuser_client(tmp_path, pg)

    result = restore(box)
    assert result.returncode == 0, result.stderr
    fresh = fresh_of(pg)
    assert pg.sql(SHAPE.format(fresh)) == live_shape
    assert pg.sql(order, fresh) == live_order and pg.sql(equal, fresh) == live_equal
    pg.sql(f'DROP DATABASE "{fresh}"')

    time.sleep(1.1)
    result = restore(box, "--replace")  # over the live one
    assert result.returncode == 0, result.stderr
    assert pg.sql(SHAPE.format("shop")) == live_shape
    assert pg.sql(order, "shop") == live_order
    before = [d for d in databases(pg) if d.startswith("shop_before_restore_")]
    for name in before:
        pg.sql(f'DROP DATABASE "{name}"')
    pg.sql("DROP DATABASE shop")  # lost

    time.sleep(1.1)
    result = restore(box, "--replace")
    assert result.returncode == 0, result.stderr
    assert pg.sql(SHAPE.format("shop")) == live_shape
    assert pg.sql(order, "shop") == live_order


def test_h95_a_createdb_role_restores_latin1_and_icu_databases(pg, tmp_path):
    """The docs' non-superuser owner with CREATEDB: LATIN1/C and ICU come back as they were."""
    pg.sql("CREATE ROLE shop_owner LOGIN CREATEDB PASSWORD 'Sh0p-pw'")
    as_role(
        pg,
        "shop_owner",
        "CREATE DATABASE shop WITH TEMPLATE = template0 ENCODING 'LATIN1' LOCALE 'C'",
    )
    as_role(pg, "shop_owner", "CREATE TABLE orders(id int, total int)", "shop")
    as_role(pg, "shop_owner", "INSERT INTO orders VALUES (1, 10)", "shop")
    live = pg.sql(SHAPE.format("shop"))
    box = shop_client(tmp_path, pg)
    result = restore(box)
    assert result.returncode == 0, result.stderr
    fresh = fresh_of(pg)
    assert pg.sql(SHAPE.format(fresh)) == live and rows(pg, fresh) == "1=10"


def test_h95_a_refused_locale_falls_back_and_names_what_was_refused(pg, tmp_path):
    """A LATIN1 database of a server with a de_DE.ISO-8859-1 locale, restored on one without
    it (the dump's bytes say so, same length): the copy keeps LATIN1 in the C locale
    (since h95-3; it was UTF8 with the server's locale), the text as it was, and the note
    says what was refused."""
    pg.sql("CREATE DATABASE shop WITH TEMPLATE = template0 ENCODING = 'LATIN1' LOCALE = 'C'")
    pg.sql(r"CREATE TABLE orders(id int, total int, note text)", "shop")
    pg.sql(r"INSERT INTO orders VALUES (1, 10, 'caf' || chr(233))", "shop")
    box = superuser_client(tmp_path, pg)
    snap, dump = snapshot_dir(box, tmp_path)
    data = dump.read_bytes()
    old = b"ENCODING = 'LATIN1' LOCALE_PROVIDER = libc LOCALE = 'C';"
    new = b"ENCODING = 'LATIN1' LOCALE_PROVIDER = libc LOCALE = 'X';"
    dump.write_bytes(data.replace(old, new))
    result = box.cli("restore", "--service", "shop", "--from", str(snap))
    assert result.returncode == 0, result.stderr
    fresh = fresh_of(pg)
    assert pg.sql(SHAPE.format(fresh)) == "LATIN1|c|C|C|-"
    assert pg.sql("SELECT note = 'caf' || chr(233) FROM orders", fresh) == "t"
    assert "which it refused" in result.stdout and "LOCALE = 'X'" in result.stdout


def test_h95_a_custom_dump_made_without_create_still_carries_its_encoding(pg, tmp_path):
    """pg_dump -Fc writes the DATABASE entry with or without --create: the options are
    read back from a dump made without it too (pg_dump ignores --create for its archive
    formats: the properties come back as well)."""
    pg.sql("CREATE DATABASE shop WITH TEMPLATE = template0 ENCODING = 'LATIN1' LOCALE = 'C'")
    pg.sql("CREATE TABLE orders(id int, total int); INSERT INTO orders VALUES (1, 10)", "shop")
    box = superuser_client(tmp_path, pg)
    snap, dump = snapshot_dir(box, tmp_path)
    argv = [str(PG_BIN / "pg_dump"), "-Fc", "-h", str(pg.socket), "-p", str(pg.port),
            "-U", "postgres", "shop"]  # fmt: skip
    if os.geteuid() == 0:
        argv = ["runuser", "-u", "postgres", "--", *argv]
    dump.write_bytes(subprocess.run(argv, check=True, capture_output=True).stdout)
    dry = box.cli("restore", "--service", "shop", "--from", str(snap), "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "with ENCODING = 'LATIN1' LOCALE_PROVIDER = libc LOCALE = 'C'" in dry.stdout
    result = box.cli("restore", "--service", "shop", "--from", str(snap))
    assert result.returncode == 0, result.stderr
    fresh = fresh_of(pg)
    assert rows(pg, fresh) == "1=10"
    assert pg.sql(SHAPE.format(fresh)) == pg.sql(SHAPE.format("shop"))


def test_h95_restore_to_another_server_carries_the_icu_locale(pg, shared_root, tmp_path):
    pg.sql(
        "CREATE DATABASE shop WITH TEMPLATE = template0 LOCALE_PROVIDER icu "
        "ICU_LOCALE 'de-u-ks-level2'"
    )
    pg.sql("CREATE TABLE orders(id int, total int, note text)", "shop")
    pg.sql("INSERT INTO orders VALUES (1, 10, 'b'), (2, 20, 'A'), (3, 30, 'a')", "shop")
    box = superuser_client(tmp_path, pg)
    other = Postgres(shared_root / "other").start()
    try:
        password = box.root / "other.pass"
        password.write_text(other.password + "\n")
        password.chmod(0o600)
        result = restore(
            box, "--replace", "--hostname", "127.0.0.1", "--port", str(other.port),
            "--username", "backup", "--password-file", str(password),
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        assert other.sql(SHAPE.format("shop")) == pg.sql(SHAPE.format("shop"))
        order = "SELECT string_agg(note, ',' ORDER BY note, id) FROM orders"
        assert other.sql(order, "shop") == pg.sql(order, "shop")
        equal = "SELECT count(*) FROM orders WHERE note = 'A'"
        assert other.sql(equal, "shop") == pg.sql(equal, "shop")
    finally:
        other.stop()


# -- MariaDB --------------------------------------------------------------------------------


CHARSET = (
    "SELECT CONCAT(default_character_set_name, ' ', default_collation_name) "
    "FROM information_schema.schemata WHERE schema_name = '{}'"
)


def maria_fresh(maria: MariaDB) -> str:
    (fresh,) = [d for d in maria_databases(maria) if d.startswith("shop_restored_")]
    return fresh


def test_h95_mariadb_a_commented_database_keeps_its_character_set(maria, tmp_path):
    maria.sql(
        "ALTER DATABASE shop DEFAULT CHARACTER SET latin1 COLLATE latin1_german1_ci "
        "COMMENT 'the shop'"
    )
    box = maria_client(tmp_path, maria, root_by_socket(maria))
    result = restore(box)
    assert result.returncode == 0, result.stderr
    assert maria.sql(CHARSET.format(maria_fresh(maria))) == "latin1 latin1_german1_ci"


def test_h95_mariadb_a_mysql8_dump_line_keeps_its_character_set(maria, tmp_path):
    maria.sql("ALTER DATABASE shop DEFAULT CHARACTER SET latin1 COLLATE latin1_german1_ci")
    box = maria_client(tmp_path, maria, root_by_socket(maria))
    snap, dump = snapshot_dir(box, tmp_path)
    text = dump.read_text()
    line = re.search(r"^CREATE DATABASE .*shop.*$", text, re.M)[0]
    mysql8 = line[:-1] + " /*!80016 DEFAULT ENCRYPTION='N' */;"
    dump.write_text(text.replace(line, mysql8))
    result = box.cli("restore", "--service", "shop", "--from", str(snap))
    assert result.returncode == 0, result.stderr
    assert maria.sql(CHARSET.format(maria_fresh(maria))) == "latin1 latin1_german1_ci"


def test_h95_mariadb_replace_over_a_live_database_gives_it_the_dumps_character_set(maria, tmp_path):
    maria.sql("ALTER DATABASE shop DEFAULT CHARACTER SET latin1 COLLATE latin1_german1_ci")
    box = maria_client(tmp_path, maria, root_by_socket(maria))
    # after the backup the database was re-made by hand (or by a careless migration)
    maria.sql("ALTER DATABASE shop DEFAULT CHARACTER SET utf8mb4 COLLATE utf8mb4_general_ci")
    result = restore(box, "--replace")
    assert result.returncode == 0, result.stderr
    assert maria_rows(maria) == "1=10,2=20"
    assert maria.sql(CHARSET.format("shop")) == "latin1 latin1_german1_ci"


@pytest.mark.parametrize(
    "hostile",
    [
        "/*!40100 DEFAULT CHARACTER SET latin1; DROP DATABASE victim; */",
        "/*!40100 DEFAULT CHARACTER SET latin1 COLLATE latin1_bin,victim */",
    ],
)
def test_h95_mariadb_hostile_create_lines_carry_nothing(maria, tmp_path, hostile):
    maria.sql("CREATE DATABASE victim")
    box = maria_client(tmp_path, maria, root_by_socket(maria))
    snap, dump = snapshot_dir(box, tmp_path)
    text = dump.read_text()
    line = re.search(r"^CREATE DATABASE .*shop.*$", text, re.M)[0]
    dump.write_text(text.replace(line, re.sub(r"/\*!40100 .* \*/;", hostile + ";", line)))
    dry = box.cli("restore", "--service", "shop", "--from", str(snap), "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "victim" not in dry.stdout
    result = box.cli("restore", "--service", "shop", "--from", str(snap))
    assert "victim" in maria_databases(maria)
    if result.returncode == 0:
        assert maria_rows(maria, maria_fresh(maria)) == "1=10,2=20"
