"""Words made fit to print: counts."""

from __future__ import annotations

from pullback.common.text import counted


def test_counted_says_one_and_many():
    assert (counted(1, "file"), counted(0, "file"), counted(2, "file")) == (
        "1 file",
        "0 files",
        "2 files",
    )
    assert counted(3, "entry", "entries") == "3 entries"
