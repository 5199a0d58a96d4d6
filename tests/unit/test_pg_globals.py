"""A globals dump read back without touching the roles a server has."""

from __future__ import annotations

from pullback.plugins.pg_globals import only_new_roles, role_of

DUMP = """\
--
-- PostgreSQL database cluster dump
--

SET default_transaction_read_only = off;

--
-- Roles
--

CREATE ROLE app;
ALTER ROLE app WITH NOSUPERUSER INHERIT LOGIN PASSWORD 'SCRAM-SHA-256$4096:old';
CREATE ROLE "we""ird one";
ALTER ROLE "we""ird one" WITH LOGIN;
CREATE ROLE postgres;
ALTER ROLE postgres WITH SUPERUSER LOGIN PASSWORD 'SCRAM-SHA-256$4096:pg';
COMMENT ON ROLE app IS 'the shop;
still the comment';
ALTER ROLE app SET search_path TO shop, public;
GRANT pg_read_all_data TO "we""ird one" GRANTED BY postgres;
GRANT "we""ird one" TO app GRANTED BY postgres;

--
-- PostgreSQL database cluster dump complete
--
"""


def test_statements_about_existing_roles_are_left_out():
    sql, left_alone = only_new_roles(DUMP, {"app", "postgres"})
    assert left_alone == ["app", "postgres"]
    assert "app" not in sql.replace('"we""ird one"', "")  # nothing about app at all
    assert "still the comment" not in sql  # the whole multi-line statement went
    assert 'CREATE ROLE "we""ird one";' in sql and 'ALTER ROLE "we""ird one" WITH LOGIN;' in sql
    assert 'GRANT pg_read_all_data TO "we""ird one"' in sql
    assert "SET default_transaction_read_only = off;" in sql


def test_a_server_without_any_of_the_roles_gets_them_all():
    sql, left_alone = only_new_roles(DUMP, set())
    assert (sql, left_alone) == (DUMP, [])


def test_the_subject_of_each_statement():
    assert role_of('CREATE ROLE "a ""b";') == 'a "b'
    assert role_of("ALTER ROLE app WITH LOGIN;") == "app"
    assert role_of("GRANT x, y TO member GRANTED BY postgres;") == "member"
    assert role_of("COMMENT ON ROLE app IS 'x';") == "app"
    assert role_of("SET client_encoding = 'UTF8';") is None
