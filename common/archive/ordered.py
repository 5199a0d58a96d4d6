"""Lookups by name in an SQLite table of files, cheap when asked in (nearly) name order.

The client's file cache and the server's staging index are both tables whose key is a
file's member name (bytes, ``WITHOUT ROWID``: stored in name order). Both are asked about
every file of a tree, in the order a tree is walked, which is nearly the same order. One
query per file costs about as much as the rest of the work on an unchanged file; reading
the table once, alongside, costs almost nothing. :class:`OrderedLookup` does that and
falls back to one query whenever the order differs (a new file, a name the walk and the
table order differently), so every answer is the table's.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator

BATCH = 512
"""Rows read at a time: memory stays a few hundred rows, whatever the table's size."""

_INT64 = 1 << 64


def stat_number(value: int) -> int:
    """``value``, a number of a file's stat, as both tables keep it in SQLite's signed
    64-bit INTEGER: itself below 2**63 (every size, times before the year 2262), else
    taken modulo 2**64 into that range: an inode or device number of 2**63 or more
    (lossless) or a time after 2262 (a file can have one: ext4 holds times to 2446,
    btrfs further; lossy only for times 584 years apart). A row is compared with a
    file's stat through this function on both sides, so equal numbers stay equal."""
    return value if -(1 << 63) <= value < 1 << 63 else (value + (1 << 63)) % _INT64 - (1 << 63)


def stat_numbers(*values: int) -> tuple[int, ...]:
    """Each of ``values`` as :func:`stat_number` gives it: a row's numbers as written."""
    return tuple(map(stat_number, values))


def same_stat_numbers(row: tuple, stat: tuple) -> bool:
    """Whether a row's stat numbers are a file's ``stat`` numbers (the same fields, in
    the same order), the row's as a table holds them (:func:`stat_number`). A row
    without numbers (None: not yet taken) is no file's."""
    if row == stat:
        return True
    if None in row or None in stat:
        return False
    return stat_numbers(*row) == stat_numbers(*stat)


class OrderedLookup:
    """``get(name)``: the row of ``name`` (its other columns), or None.

    ``columns`` are the columns returned after the name; ``table`` must have a ``name``
    key column. The connection must stay open and unchanged while this is used.
    """

    def __init__(self, db: sqlite3.Connection, columns: str, table: str = "files"):
        self._db = db
        # columns and table are the caller's constants, never data
        self._order = f"SELECT name, {columns} FROM {table} ORDER BY name"  # noqa: S608
        self._point = f"SELECT {columns} FROM {table} WHERE name = ?"  # noqa: S608
        self._rows: Iterator[tuple] | None = None
        self._next: tuple | None = None

    def rewind(self) -> None:
        """Start again from the first name (a second pass over the same tree)."""
        self._rows = None

    def _start(self) -> Iterator[tuple]:
        """The table read in name order, from its first row (read when first asked, so
        that opening costs nothing and a damaged table fails where a query would)."""
        rows = self._batches(self._db.execute(self._order))
        self._next = next(rows, None)
        return rows

    @staticmethod
    def _batches(cursor: sqlite3.Cursor) -> Iterator[tuple]:
        while batch := cursor.fetchmany(BATCH):
            yield from batch

    def get(self, name: bytes) -> tuple | None:
        """The row of ``name`` without the name, or None when the table has none."""
        if self._rows is None:
            self._rows = self._start()
        rows = self._rows
        while self._next is not None and self._next[0] < name:
            self._next = next(rows, None)
        found = self._next
        if found is not None and found[0] == name:
            self._next = next(rows, None)
            return found[1:]
        return self._db.execute(self._point, (name,)).fetchone()
