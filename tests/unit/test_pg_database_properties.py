"""Reading a database's own properties (owner, comment, settings, grants) from
``pg_restore --create`` output, renamed for the database a restore makes."""

from __future__ import annotations

from pullback.plugins.pg_database import MAX_STATEMENTS, renamed_properties, wanted_entries

LISTING = """\
;
; Selected TOC Entries:
;
3339; 1262 16387 DATABASE - shop shop_owner
3340; 0 0 COMMENT - DATABASE shop shop_owner
3341; 0 0 ACL - DATABASE shop shop_owner
3342; 0 0 DATABASE PROPERTIES - shop shop_owner
215; 1259 16390 TABLE public orders shop_owner
"""

SQL = """\
--
-- Name: shop; Type: DATABASE; Schema: -; Owner: shop_owner
--

CREATE DATABASE shop WITH TEMPLATE = template0 ENCODING = 'UTF8';


ALTER DATABASE shop OWNER TO shop_owner;

\\connect shop
SET statement_timeout = 0;
SELECT pg_catalog.set_config('search_path', '', false);

COMMENT ON DATABASE shop IS 'the shop''s DATABASE shop; and
-- not a comment line';
ALTER DATABASE shop SET work_mem TO '64MB';
ALTER ROLE reporter IN DATABASE shop SET statement_timeout TO '5s';
REVOKE CONNECT,TEMPORARY ON DATABASE shop FROM PUBLIC;
GRANT CONNECT ON DATABASE shop TO "DATABASE shop";
"""


def test_the_database_entries_of_a_listing_are_kept():
    assert wanted_entries(LISTING).splitlines() == LISTING.splitlines()[3:7]
    assert wanted_entries(";\n; nothing\n215; 1259 1 TABLE public t o\n") == ""


def test_each_statement_names_the_new_database_once_and_nothing_else_is_kept():
    found = renamed_properties(SQL, "shop", "shop_restored_x")
    new = '"shop_restored_x"'
    assert found == [
        f"ALTER DATABASE {new} OWNER TO shop_owner;",
        f"COMMENT ON DATABASE {new} IS 'the shop''s DATABASE shop; and\n-- not a comment line';",
        f"ALTER DATABASE {new} SET work_mem TO '64MB';",
        f"ALTER ROLE reporter IN DATABASE {new} SET statement_timeout TO '5s';",
        f"REVOKE CONNECT,TEMPORARY ON DATABASE {new} FROM PUBLIC;",
        f'GRANT CONNECT ON DATABASE {new} TO "DATABASE shop";',
    ]


def test_a_name_that_needs_quotes_and_another_database_are_told_apart():
    sql = 'ALTER DATABASE "Shop-1" OWNER TO o;\nALTER DATABASE other OWNER TO o;\n'
    assert renamed_properties(sql, "Shop-1", "x") == ['ALTER DATABASE "x" OWNER TO o;']


def test_a_dump_cannot_make_a_restore_run_thousands_of_statements():
    sql = "GRANT CONNECT ON DATABASE shop TO r;\n" * (MAX_STATEMENTS * 3)
    assert len(renamed_properties(sql, "shop", "x")) == MAX_STATEMENTS
