"""The command lines the database tasks build: a database name is never an option nor
a connection string (helper-133, F10)."""

from __future__ import annotations

from pullback.plugins import mariadb, postgresql


def test_a_mariadb_name_follows_the_end_of_the_options():
    argv = mariadb.dump_argv("mariadb-dump", ["--user=root"], ["--skip-lock-tables"], "--x=/y")
    assert argv[argv.index("--databases") :] == ["--databases", "--", "--x=/y"]
    assert argv.index("--skip-lock-tables") < argv.index("--databases")


def test_a_postgresql_name_is_passed_as_a_quoted_dbname():
    assert postgresql.dbname("shop") == "dbname='shop'"
    assert postgresql.dbname("host=evil o'b\\x") == "dbname='host=evil o\\'b\\\\x'"
    assert postgresql.dump_argv([], "-x") == ["pg_dump", "-Fc", "--", "dbname='-x'"]
