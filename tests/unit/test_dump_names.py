"""Database names and the dump files named after them: every name maps to one file name
and back, whatever its characters."""

from __future__ import annotations

from pathlib import Path

import pytest

from pullback.common.archive.dumps import database_of, file_name

NAMES = [
    "shop",
    "plain_name-1.x",
    "price€",
    "price AC",  # what 'price€' used to be confused with
    "émoji😀",
    "x\u3000y",
    "x000y",
    "we\"ird 'name",
    "a%b",
    "100%",
    "%41",
    "../etc",
    "a/b",
    ".hidden",
    "..",
    "tab\there\nnewline",
    "д" * 64,  # MariaDB's longest name, 3-byte characters
    "€" * 64,
    "%" * 64,
    "x" * 63,  # PostgreSQL's longest
    "\x01" * 63,
]


@pytest.mark.parametrize("name", NAMES)
def test_a_name_comes_back_from_its_file_name(name):
    stored = file_name(name, ".dump")
    assert "/" not in stored and not stored.startswith(".")
    assert len(stored.encode()) <= 255
    assert database_of(Path(stored), ".dump") == name


def test_different_names_never_share_a_file_name():
    assert len({file_name(n, ".sql") for n in NAMES}) == len(NAMES)


def test_file_names_of_older_archives_are_still_read():
    # older archives escaped a character up to U+00FF by its code point; é was kept
    assert database_of(Path("sp%A7.sql"), ".sql") == "sp§"
    assert database_of(Path("café.sql"), ".sql") == "café"
    assert database_of(Path("a%20b.sql"), ".sql") == "a b"


def test_copies_of_long_names_fit_and_never_collide():
    from pullback.plugins._common import renamed

    stamp = "20261130T060410Z"
    a = "customer_orders_archive_for_year_2023_part_a"
    b = "customer_orders_archive_for_year_2023_part_b"
    assert renamed("shop", "restored", stamp) == f"shop_restored_{stamp}"
    copies = {renamed(n, w, stamp, 64) for n in (a, b) for w in ("restored", "before_restore")}
    assert len(copies) == 4
    assert all(len(c.encode()) <= 64 for c in copies)
    assert len(renamed("ä" * 40, "before_restore", stamp).encode()) <= 63
