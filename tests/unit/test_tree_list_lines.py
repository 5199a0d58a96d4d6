"""TREE.list lines: written and read back whatever a name holds, only below a prefix,
tied to one manifest, each line bounded."""

from __future__ import annotations

import io
import os
import stat

import pytest

from pullback.common.archive import tree_list

HEADER = tree_list.format_header("ab" * 32)


def read(lines: list[bytes], prefix: str) -> tree_list.TreeList:
    return tree_list.read_below(io.BytesIO(b"".join(lines)), prefix)


def test_names_with_newlines_backslashes_and_non_utf8_round_trip():
    names = ["services/app/new\nline", "services/app/back\\slash", "services/app/cr\rhere"]
    names.append(os.fsdecode(b"services/app/bad-\xff"))
    lines = [tree_list.format_entry(b"l", name) for name in names]
    assert b"".join(lines).count(b"\n") == len(names)  # one line each: newlines escaped
    read_back = read([HEADER, *lines], "services/app")
    assert read_back.manifest_sha256 == "ab" * 32
    assert read_back.entries == {os.fsencode(name): b"l" for name in names}


def test_only_names_below_the_prefix_are_kept():
    lines = [
        HEADER,
        tree_list.format_entry(b"d", "services"),
        tree_list.format_entry(b"d", "services/app"),
        tree_list.format_entry(b"p", "services/app/files/pipe"),
        tree_list.format_entry(b"d", "services/app2/files"),
    ]
    assert read(lines, "services/app").entries == {b"services/app/files/pipe": b"p"}


@pytest.mark.parametrize("line", [b"d services/app/x\n", b"f  services/app/x\n", b"nothing\n"])
def test_a_line_that_does_not_parse_is_named_by_number(line):
    good = tree_list.format_entry(b"d", "services/app")
    with pytest.raises(ValueError, match=r"TREE\.list line 3 is malformed"):
        read([HEADER, good, line], "services")


@pytest.mark.parametrize("first", [b"", b"d  services\n", b"m  abc\n", b"m  " + b"AB" * 32 + b"\n"])
def test_a_list_without_its_manifests_sha256_first_is_refused(first):
    with pytest.raises(ValueError, match=r"TREE\.list line 1 is malformed"):
        read([first, tree_list.format_entry(b"d", "services/app")], "services")


def test_a_line_longer_than_any_entry_is_refused_unread():
    longest = tree_list.format_entry(b"l", "services/" + "\n" * 4086)  # every byte escaped
    assert len(longest) <= tree_list.MAX_LINE
    assert read([HEADER, longest], "services").entries
    with pytest.raises(ValueError, match=r"line 2 is longer than any entry's"):
        read([HEADER, b"d  services/" + b"x" * tree_list.MAX_LINE + b"\n"], "services")


def test_only_directories_symlinks_and_fifos_have_a_kind():
    assert tree_list.kind_of(stat.S_IFDIR | 0o755) == b"d"
    assert tree_list.kind_of(stat.S_IFLNK | 0o777) == b"l"
    assert tree_list.kind_of(stat.S_IFIFO | 0o600) == b"p"
    for other in (stat.S_IFREG, stat.S_IFSOCK, stat.S_IFCHR, stat.S_IFBLK):
        assert tree_list.kind_of(other | 0o600) is None
