"""Reading a database's own properties (owner, comment, settings, grants) from
``pg_restore --create`` output, renamed for the database a restore makes; nothing but
whole statements of the carried shapes (an outside attack ran its own SQL as the
restoring superuser through a comment and a setting)."""

from __future__ import annotations

import pytest

from pullback.plugins.pg_database import (
    MAX_STATEMENTS,
    create_options,
    renamed_properties,
    wanted_entries,
)

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

HEAD = """\
--
-- Name: shop; Type: DATABASE; Schema: -; Owner: shop_owner
--

CREATE DATABASE shop WITH TEMPLATE = template0 ENCODING = 'UTF8';


ALTER DATABASE shop OWNER TO shop_owner;

\\unrestrict Qx7
\\connect shop
\\restrict Qx7

SET statement_timeout = 0;
SELECT pg_catalog.set_config('search_path', '', false);

"""

SQL = (
    HEAD
    + """\
COMMENT ON DATABASE shop IS 'the shop''s DATABASE shop; and
-- not a comment line';
ALTER DATABASE shop CONNECTION LIMIT = 50;
ALTER DATABASE shop SET work_mem TO '64MB';
ALTER DATABASE shop SET search_path TO '$user', 'public';
ALTER DATABASE shop IS_TEMPLATE = true;
ALTER ROLE reporter IN DATABASE shop SET statement_timeout TO '5s';
REVOKE CONNECT,TEMPORARY ON DATABASE shop FROM PUBLIC;
GRANT CONNECT ON DATABASE shop TO "DATABASE shop";
"""
)
NEW = '"shop_restored_x"'


def test_the_database_entries_of_a_listing_are_kept():
    assert wanted_entries(LISTING).splitlines() == LISTING.splitlines()[3:7]
    assert wanted_entries(";\n; nothing\n215; 1259 1 TABLE public t o\n") == ""


def test_each_statement_names_the_new_database_once():
    found, odd = renamed_properties(SQL, "shop", "shop_restored_x")
    assert found == [
        f"ALTER DATABASE {NEW} OWNER TO shop_owner;",
        f"COMMENT ON DATABASE {NEW} IS 'the shop''s DATABASE shop; and\n-- not a comment line';",
        f"ALTER DATABASE {NEW} CONNECTION LIMIT = 50;",
        f"ALTER DATABASE {NEW} SET work_mem TO '64MB';",
        f"ALTER DATABASE {NEW} SET search_path TO '$user', 'public';",
        f"ALTER ROLE reporter IN DATABASE {NEW} SET statement_timeout TO '5s';",
        f"REVOKE CONNECT,TEMPORARY ON DATABASE {NEW} FROM PUBLIC;",
        f'GRANT CONNECT ON DATABASE {NEW} TO "DATABASE shop";',
    ]
    assert odd == 1  # IS_TEMPLATE: a restored copy is no template


def test_a_comment_ending_in_a_backslash_line_cannot_hide_sql():
    """The attack: a comment whose last line starts with a backslash, then a setting
    holding SQL; the lines were dropped before the split, and a GRANT ran."""
    payload = (
        HEAD + "COMMENT ON DATABASE shop IS 'x\n\\';\n"
        "ALTER DATABASE shop SET application_name TO '; GRANT pg_execute_server_program "
        "TO shop_owner /* DATABASE shop */; SELECT ';\n"
        "REVOKE CONNECT,TEMPORARY ON DATABASE shop FROM PUBLIC;\n"
    )
    found, odd = renamed_properties(payload, "shop", "shop_restored_x")
    assert found[1] == f"COMMENT ON DATABASE {NEW} IS 'x\n\\';"
    assert found[2].startswith(f"ALTER DATABASE {NEW} SET application_name TO '; GRANT")
    assert found[3] == f"REVOKE CONNECT,TEMPORARY ON DATABASE {NEW} FROM PUBLIC;"
    assert len(found) == 4 and odd == 0
    assert not any(s.startswith("GRANT pg_") for s in found)


def test_only_whole_statements_of_the_carried_shapes_run():
    sneaky = [
        "GRANT pg_read_server_files TO shop_owner /* DATABASE shop */;",
        "ALTER ROLE shop_owner SUPERUSER /* IN DATABASE shop */;",
        "ALTER DATABASE shop OWNER TO x; DROP TABLE t;",
        "COMMENT ON DATABASE shop IS 'a' || (SELECT 1);",
        "ALTER DATABASE other OWNER TO o;",
    ]
    found, odd = renamed_properties("\n".join(sneaky) + "\n", "shop", "x")
    assert found == ['ALTER DATABASE "x" OWNER TO x;']  # the split ends it at its ;
    assert odd == 4


def test_a_name_that_needs_quotes_is_told_from_another_database():
    sql = 'ALTER DATABASE "Shop-1" OWNER TO o;\nALTER DATABASE "other" OWNER TO o;\n'
    assert renamed_properties(sql, "Shop-1", "x") == (['ALTER DATABASE "x" OWNER TO o;'], 1)


def test_a_dump_cannot_make_a_restore_run_thousands_of_statements():
    sql = "GRANT CONNECT ON DATABASE shop TO r;\n" * (MAX_STATEMENTS * 3)
    assert len(renamed_properties(sql, "shop", "x")[0]) == MAX_STATEMENTS


@pytest.mark.parametrize(
    "create, options",
    [
        # PostgreSQL 15 and 16
        (
            "CREATE DATABASE shop WITH TEMPLATE = template0 ENCODING = 'LATIN1' "
            "LOCALE_PROVIDER = libc LOCALE = 'C';",
            " ENCODING = 'LATIN1' LOCALE_PROVIDER = libc LOCALE = 'C'",
        ),
        (
            "CREATE DATABASE shop WITH TEMPLATE = template0 ENCODING = 'UTF8' "
            "LOCALE_PROVIDER = icu LOCALE = 'C.UTF-8' ICU_LOCALE = 'de-DE';",
            " ENCODING = 'UTF8' LOCALE_PROVIDER = icu LOCALE = 'C.UTF-8' ICU_LOCALE = 'de-DE'",
        ),
        # PostgreSQL 13 and 14: collation and character classes apart
        (
            "CREATE DATABASE shop WITH TEMPLATE = template0 ENCODING = 'UTF8' "
            "LC_COLLATE = 'de_DE.UTF-8' LC_CTYPE = 'C.UTF-8';",
            " ENCODING = 'UTF8' LC_COLLATE = 'de_DE.UTF-8' LC_CTYPE = 'C.UTF-8'",
        ),
        ("CREATE DATABASE shop WITH TEMPLATE = template0;", ""),
        # another database's, another shape, words that are not options: nothing
        ("CREATE DATABASE other WITH TEMPLATE = template0 ENCODING = 'LATIN1';", ""),
        ("CREATE DATABASE shop WITH TEMPLATE = template1 ENCODING = 'LATIN1';", ""),
        ("CREATE DATABASE shop WITH TEMPLATE = template0 OWNER = postgres;", ""),
        (
            "CREATE DATABASE shop WITH TEMPLATE = template0 ENCODING = 'UTF8'; DROP ROLE x;",
            " ENCODING = 'UTF8'",  # two statements: the second is never part of it
        ),
        ("CREATE DATABASE shop WITH TEMPLATE = template0 LOCALE = 'C\nDROP';", ""),
        ("CREATE DATABASE shop WITH TEMPLATE = template0 LOCALE = '" + "x" * 1200 + "';", ""),
    ],
)
def test_the_encoding_and_locales_of_the_create_statement_are_carried(create, options):
    assert create_options(f"--\n-- Name: shop\n--\n\n{create}\n", "shop") == options


def test_a_quoted_name_is_matched_unquoted():
    sql = 'CREATE DATABASE "Shop ""A""" WITH TEMPLATE = template0 ENCODING = \'SQL_ASCII\';'
    assert create_options(sql, 'Shop "A"') == " ENCODING = 'SQL_ASCII'"
    assert create_options(sql, "shop") == ""


def test_a_literal_with_a_backslash_is_read_the_same_by_any_server():
    """pg_dump writes literals for standard_conforming_strings on; a server set off read
    ``\\'`` as the end of the literal and the rest as more options (helper-95)."""
    sql = (
        "CREATE DATABASE shop WITH TEMPLATE = template0 LOCALE_PROVIDER = icu "
        "ICU_LOCALE = 'und-x-a\\'' IS_TEMPLATE = true --';"
    )
    assert create_options(sql, "shop") == (
        " LOCALE_PROVIDER = icu ICU_LOCALE = E'und-x-a\\\\\\' IS_TEMPLATE = true --'"
    )
