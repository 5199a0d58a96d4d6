"""The unpacker: safe names, exact mirror of the archive, unchanged files left alone."""

from __future__ import annotations

import io
import os

import pytest

from pullback.common import tarformat
from pullback.common.tarformat import TarReader
from pullback.common.unpack import HostileArchive, Unpacker, safe_parts
from tests.helpers.archives import Entry, build_tar


def unpack(staging, entries):
    reader = TarReader(io.BytesIO(build_tar(entries)))
    with Unpacker(staging) as unpacker:
        for member in reader:
            unpacker.add(member, reader.chunks())
        return unpacker.finish()


@pytest.mark.parametrize(
    "name",
    [
        "",
        "/etc/x",
        "services/../x",
        "services//x",
        "services/./x",
        "etc/passwd",
        "MANIFEST.sha256/x",
        "services/" + "a" * 256,
        "services/a\0b",
    ],
)
def test_unsafe_names(name):
    with pytest.raises(HostileArchive):
        safe_parts(name)


def test_second_unpack_touches_only_what_changed(tmp_path):
    staging = tmp_path / "staging"
    first = [
        Entry("services/a/same.txt", data=b"same" * 1000),
        Entry("services/a/changes.txt", data=b"old"),
        Entry("services/a/gone.txt", data=b"bye"),
        Entry("services/a/dir/deep.txt", data=b"deep"),
    ]
    stats = unpack(staging, first)
    assert (stats.files, stats.written, stats.unchanged) == (4, 4, 0)
    same = staging / "services/a/same.txt"
    before = os.stat(same)
    second = [
        Entry("services/a/same.txt", data=b"same" * 1000),
        Entry("services/a/changes.txt", data=b"new content"),
        Entry("services/a/dir", tarformat.SYMTYPE, linkname="/elsewhere"),
    ]
    stats = unpack(staging, second)
    assert (stats.written, stats.unchanged) == (1, 1)
    after = os.stat(same)
    assert (after.st_ctime_ns, after.st_ino) == (before.st_ctime_ns, before.st_ino)
    assert (staging / "services/a/changes.txt").read_bytes() == b"new content"
    assert not (staging / "services/a/gone.txt").exists()
    assert os.readlink(staging / "services/a/dir") == "/elsewhere"  # dir became a link
    assert stats.removed == 1


def test_hard_links_are_links_inside_staging(tmp_path):
    staging = tmp_path / "s"
    unpack(
        staging,
        [
            Entry("services/a/f", data=b"x"),
            Entry("services/a/g", tarformat.LNKTYPE, linkname="services/a/f"),
        ],
    )
    assert os.stat(staging / "services/a/f").st_ino == os.stat(staging / "services/a/g").st_ino


def test_manifest_mismatch_is_an_error(tmp_path):
    from pullback.common.errors import ArchiveError

    entries = [
        Entry("services/a/f", data=b"x"),
        Entry("services/a/unlisted", data=b"y", in_manifest=False),
    ]
    with pytest.raises(ArchiveError, match="services/a/unlisted is not listed"):
        unpack(tmp_path / "s", entries)


def test_a_symlink_left_in_staging_is_never_followed(tmp_path):
    staging = tmp_path / "s"
    outside = tmp_path / "outside"
    outside.mkdir()
    (staging / "services").mkdir(parents=True)
    os.symlink(outside, staging / "services" / "a")  # planted by an earlier snapshot
    unpack(staging, [Entry("services/a/f", data=b"x")])
    assert list(outside.iterdir()) == []
    assert (staging / "services/a/f").read_bytes() == b"x"
