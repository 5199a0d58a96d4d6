"""TREE.list lines: written and read back whatever a name holds, only below a prefix."""

from __future__ import annotations

import os
import stat

import pytest

from pullback.common.archive import tree_list


def test_names_with_newlines_backslashes_and_non_utf8_round_trip():
    names = ["services/app/new\nline", "services/app/back\\slash", "services/app/cr\rhere"]
    names.append(os.fsdecode(b"services/app/bad-\xff"))
    lines = b"".join(tree_list.format_entry(b"l", name) for name in names)
    assert lines.count(b"\n") == len(names)  # one line each: the newline is escaped
    read = tree_list.read_below(lines.splitlines(keepends=True), "services/app")
    assert read == {os.fsencode(name): b"l" for name in names}


def test_only_names_below_the_prefix_are_kept():
    lines = [
        tree_list.format_entry(b"d", "services"),
        tree_list.format_entry(b"d", "services/app"),
        tree_list.format_entry(b"p", "services/app/files/pipe"),
        tree_list.format_entry(b"d", "services/app2/files"),
    ]
    assert tree_list.read_below(lines, "services/app") == {b"services/app/files/pipe": b"p"}


@pytest.mark.parametrize("line", [b"d services/app/x\n", b"f  services/app/x\n", b"nothing\n"])
def test_a_line_that_does_not_parse_is_named_by_number(line):
    good = tree_list.format_entry(b"d", "services/app")
    with pytest.raises(ValueError, match=r"TREE\.list line 2 is malformed"):
        tree_list.read_below([good, line], "services")


def test_only_directories_symlinks_and_fifos_have_a_kind():
    assert tree_list.kind_of(stat.S_IFDIR | 0o755) == b"d"
    assert tree_list.kind_of(stat.S_IFLNK | 0o777) == b"l"
    assert tree_list.kind_of(stat.S_IFIFO | 0o600) == b"p"
    for other in (stat.S_IFREG, stat.S_IFSOCK, stat.S_IFCHR, stat.S_IFBLK):
        assert tree_list.kind_of(other | 0o600) is None
