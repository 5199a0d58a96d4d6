"""A globals dump read back without touching the roles and tablespaces a server has."""

from __future__ import annotations

from pullback.plugins.pg_globals import only_new, statements, subjects

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
CREATE ROLE "o'brien";
ALTER ROLE "o'brien" WITH LOGIN;
CREATE ROLE "we""ird one";
ALTER ROLE "we""ird one" WITH LOGIN;
CREATE ROLE postgres;
ALTER ROLE postgres WITH SUPERUSER LOGIN PASSWORD 'SCRAM-SHA-256$4096:pg';
COMMENT ON ROLE "o'brien" IS 'irish; and -- not a comment';
COMMENT ON ROLE app IS 'the shop;
still the comment';
ALTER ROLE app SET search_path TO shop, public;
ALTER ROLE app IN DATABASE shop SET work_mem TO '1MB';
GRANT pg_read_all_data TO "we""ird one" GRANTED BY postgres;
GRANT "we""ird one" TO app GRANTED BY postgres;
CREATE TABLESPACE ts OWNER postgres LOCATION '/srv/ts';
ALTER TABLESPACE ts SET (random_page_cost=7);
GRANT CREATE ON TABLESPACE ts TO "o'brien";
GRANT ALL ON TABLESPACE ts TO app;

--
-- PostgreSQL database cluster dump complete
--
"""


def test_statements_split_only_outside_quotes_and_comments():
    found = list(statements(DUMP))
    assert "".join(found) == DUMP
    comment = next(s for s in found if "irish" in s)
    assert comment.strip().endswith("'irish; and -- not a comment';")
    assert next(s for s in found if "still the comment" in s).count(";") == 2


def test_statements_about_existing_roles_and_tablespaces_are_left_out():
    sql, left_alone = only_new(DUMP, {"app", "postgres"}, {"ts"})
    assert left_alone == ["app", "postgres"]
    assert "SCRAM" not in sql and "search_path" not in sql and "work_mem" not in sql
    assert "still the comment" not in sql and "TABLESPACE" not in sql
    assert 'CREATE ROLE "o\'brien";' in sql and "'irish; and -- not a comment'" in sql
    assert 'GRANT pg_read_all_data TO "we""ird one"' in sql
    assert 'GRANT "we""ird one" TO app' not in sql  # app exists: its groups stay
    assert "SET default_transaction_read_only = off;" in sql


def test_a_server_without_any_of_them_gets_everything():
    assert only_new(DUMP, set(), set()) == (DUMP, [])


def test_the_subjects_of_each_statement():
    assert subjects('CREATE ROLE "a ""b";').roles == {'a "b'}
    assert subjects("ALTER ROLE app IN DATABASE x SET a TO 'b';").roles == {"app"}
    assert subjects("GRANT x, y TO m1, m2 WITH ADMIN OPTION GRANTED BY postgres;").roles == {
        "m1",
        "m2",
    }
    assert subjects('GRANT CREATE ON TABLESPACE ts TO "o\'b";').roles == {"o'b"}
    assert subjects("COMMENT ON TABLESPACE ts IS 'x';").tablespace == "ts"
    assert subjects("DROP ROLE IF EXISTS gone;").roles == {"gone"}
    assert subjects("SET client_encoding = 'UTF8';") == subjects("")
