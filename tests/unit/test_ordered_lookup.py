"""OrderedLookup answers exactly what one query per name would, in any order of asking."""

from __future__ import annotations

import sqlite3

from hypothesis import given, settings
from hypothesis import strategies as st

from pullback.common.archive.ordered import BATCH, OrderedLookup

NAMES = st.binary(min_size=1, max_size=6)


def table(rows: dict[bytes, int]) -> sqlite3.Connection:
    db = sqlite3.connect(":memory:")
    db.execute("CREATE TABLE files (name BLOB PRIMARY KEY, value INTEGER) WITHOUT ROWID")
    db.executemany("INSERT INTO files VALUES (?, ?)", rows.items())
    return db


@settings(max_examples=200, deadline=None)
@given(
    rows=st.dictionaries(NAMES, st.integers(0, 9), max_size=40),
    asked=st.lists(NAMES, max_size=60),
    walk=st.booleans(),
)
def test_every_answer_is_the_tables(rows, asked, walk):
    """Names asked in table order (with names the table lacks among them), or in any
    order, twice with a rewind between: each answer is the row or None."""
    if walk:
        asked = sorted(set(asked) | set(rows))
    lookup = OrderedLookup(table(rows), "value")
    for _ in range(2):
        for name in asked:
            expected = (rows[name],) if name in rows else None
            assert lookup.get(name) == expected, name
        lookup.rewind()


def test_a_walk_in_order_reads_the_table_once():
    """Asked in order, no name needs a query of its own (the fallback is never taken)."""
    rows = {b"%06d" % i: i for i in range(3 * BATCH + 7)}
    db = table(rows)
    statements: list[str] = []
    db.set_trace_callback(statements.append)
    lookup = OrderedLookup(db, "value")
    assert [lookup.get(name) for name in rows] == [(value,) for value in rows.values()]
    assert not any("WHERE name" in sql for sql in statements), statements
    assert lookup.get(b"000001") == (1,)  # behind the cursor now: asked by a query
    assert any("WHERE name" in sql for sql in statements)
