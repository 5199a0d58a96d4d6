"""Every reader of a stored manifest holds to ``manifest.MAX_LINE`` per line: a line
without an end (a manifest a restore, a drill or ``restore --from`` reads back) costs at
most that much memory, and is refused by name, not read whole (helper-132: a 45 MB line
of ``restore --path`` was held whole)."""

from __future__ import annotations

import hashlib
import io
import tracemalloc

import pytest

from pullback.common.archive import listed
from pullback.common.archive.manifest import (
    MANIFEST_NAME,
    MAX_LINE,
    format_line,
    raw_entries,
    read_lines,
)
from pullback.server.restore import listed_at, path_proof

DIGEST = hashlib.sha256(b"x").hexdigest()


def test_lines_up_to_the_bound_are_read_as_they_are():
    name = "services/app/" + "n" * 4000 + "\n\\"  # escaped: the longest kind of line
    data = format_line("services/app/a", DIGEST) + format_line(name, DIGEST) + b"tail"
    got = list(read_lines(io.BytesIO(data)))
    assert b"".join(got) == data and len(got) == 3
    assert [n for n, _ in raw_entries(got[:2])][1].decode() == name


def test_a_line_past_the_bound_is_refused_by_its_number():
    data = format_line("services/a", DIGEST) + b"f" * (MAX_LINE + 10)
    with pytest.raises(ValueError, match=f"{MANIFEST_NAME} line 2 is longer than 32,768"):
        list(read_lines(io.BytesIO(data)))


def test_a_line_without_an_end_costs_the_bound_not_its_length(tmp_path):
    manifest = tmp_path / MANIFEST_NAME
    with manifest.open("wb") as handle:
        handle.write(format_line("services/app/a", DIGEST))
        handle.write(b"0" * 64 + b"  services/app/" + b"y" * (40 << 20))  # 40 MB, no newline
    tracemalloc.start()
    try:
        with pytest.raises(ValueError, match="longer than"):
            listed_at(manifest, "services/app/a")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 4 * MAX_LINE + (1 << 20), peak
    # restore --path then says no proof line rather than failing or holding it
    assert path_proof(tmp_path, "services/app/a") is None


def test_the_drill_s_listing_refuses_it_too(tmp_path):
    manifest = tmp_path / MANIFEST_NAME
    manifest.write_bytes(b"0" * 64 + b"  services/app/" + b"z" * (MAX_LINE * 2) + b"\n")
    with pytest.raises(ValueError, match="longer than"):
        list(listed.outside(manifest, "services/app"))
