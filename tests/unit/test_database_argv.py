"""The command lines the database tasks build: a database name is never an option nor
a connection string (helper-133, F10)."""

from __future__ import annotations

from pullback.plugins import mariadb, postgresql


def test_a_mariadb_name_follows_the_end_of_the_options():
    argv = mariadb.dump_argv("mariadb-dump", ["--user=root"], ["--skip-lock-tables"], "--x=/y")
    assert argv[argv.index("--databases") :] == ["--databases", "--", "--x=/y"]
    # the task's options first, then no DROP DATABASE whatever they said (F14)
    assert argv.index("--skip-lock-tables") < argv.index("--skip-add-drop-database")


def test_a_postgresql_name_is_passed_as_a_quoted_dbname():
    assert postgresql.dbname("shop") == "dbname='shop'"
    assert postgresql.dbname("host=evil o'b\\x") == "dbname='host=evil o\\'b\\\\x'"
    assert postgresql.dump_argv([], "-x") == ["pg_dump", "-Fc", "--", "dbname='-x'"]


def test_a_dump_naming_another_database_is_found(tmp_path):
    dump = tmp_path / "live1.sql"
    lines = [
        b"-- MariaDB dump\n",
        b"/*!40000 DROP DATABASE IF EXISTS `live1`*/;\n",
        b"CREATE DATABASE /*!32312 IF NOT EXISTS*/ `live1` /*!40100 DEFAULT CHARACTER SET x */;\n",
        b"USE `live1`;\n",
        b"DELIMITER ;;\n",
        b"CREATE DATABASE other;;\n",  # a routine's body: not the dump's own statement
        b"DELIMITER ;\n",
    ]
    dump.write_bytes(b"".join(lines))
    assert mariadb.other_database(dump, "live1") is None
    renamed = b"".join(mariadb.renaming(lines, "live1", "live1_restored_x"))
    assert b"DROP DATABASE IF EXISTS `live1_restored_x`" in renamed
    assert b"`live1`" not in renamed
    dump.write_bytes(b"".join([*lines, b"USE `mysql`;\n"]))
    assert mariadb.other_database(dump, "live1") == 8
