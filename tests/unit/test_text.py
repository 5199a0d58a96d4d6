"""Words made fit to print: counts."""

from __future__ import annotations

from pullback.common.text import counted, escaped, printable


def test_counted_says_one_and_many():
    assert (counted(1, "file"), counted(0, "file"), counted(2, "file")) == (
        "1 file",
        "0 files",
        "2 files",
    )
    assert counted(3, "entry", "entries") == "3 entries"


def test_printable_escapes_only_what_it_keeps_and_cuts_the_same_as_escaping_all():
    """printable() escapes the first ``limit`` characters only (a merged status file's
    string of millions unprintable characters cost 650 MB, helper-115); what it returns is
    what escaping the whole and cutting it gives."""
    samples = ["", "plain", "a\nb", "\x1b[2J" * 50, "\u0085" * 1000, "x" * 300, "x" * 301]
    samples += ["é\udcff\u2028" * 40, "\U0001f600" * 299 + "\n", "\t" * 30]
    for text in samples:
        for limit in (1, 5, 29, 30, 31, 300):
            whole = escaped(text)
            expected = whole if len(whole) <= limit else whole[: limit - 1] + "…"
            assert printable(text, limit) == expected, (text[:20], limit)
    assert printable(1234, 3) == "12…"
