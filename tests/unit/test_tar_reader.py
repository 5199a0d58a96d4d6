"""The strict tar reader: our own archives, and refusals for what is not."""

from __future__ import annotations

import io
import os
import subprocess

import pytest

from pullback.common.archive import tarformat
from pullback.common.archive.tarformat import TarFormatError, TarReader
from tests.helpers.archives import Entry, build_tar


def members(data: bytes):
    reader = TarReader(io.BytesIO(data))
    return [(m, b"".join(reader.chunks())) for m in reader]


def test_reads_what_the_writer_writes():
    data = build_tar(
        [
            Entry("services/a/x", data=b"hello"),
            Entry("services/a/l", tarformat.SYMTYPE, linkname="x"),
        ]
    )
    found = members(data)
    assert [(m.name, body) for m, body in found] == [
        ("services/a/x", b"hello"),
        ("services/a/l", b""),
        ("MANIFEST.sha256", found[2][1]),
    ]
    assert found[1][0].is_symlink and found[1][0].linkname == "x"


def test_reads_gnu_tar_long_names(tmp_path):
    deep = tmp_path / ("d" * 120)
    deep.mkdir()
    (deep / "file").write_text("x")
    data = subprocess.run(
        ["tar", "--format=gnu", "-cf", "-", "-C", str(tmp_path), "d" * 120],
        capture_output=True,
        check=True,
    ).stdout
    names = [m.name for m, _ in members(data)]
    assert names == ["d" * 120 + "/", "d" * 120 + "/file"]


def test_truncation_is_detected():
    data = build_tar([Entry("services/a/x", data=b"x" * 5000)])
    with pytest.raises(TarFormatError, match="truncated"):
        members(data[:1500])
    with pytest.raises(TarFormatError, match="truncated"):
        members(data[: len(data) - 1024])


def test_bad_checksum_is_detected():
    data = bytearray(build_tar([Entry("services/a/x", data=b"x")]))
    data[10] ^= 0x20
    with pytest.raises(TarFormatError, match="checksum"):
        members(bytes(data))


def test_global_headers_and_unknown_types_are_refused():
    glob = tarformat.header("g", b"g", mode=0o644, size=0)
    with pytest.raises(TarFormatError, match="global"):
        members(glob + bytes(1024))
    odd = tarformat.header("services/a/x", b"S", mode=0o644)
    with pytest.raises(TarFormatError, match="not accepted"):
        members(odd + bytes(1024))


def test_an_absurd_extended_header_is_refused():
    block = tarformat.header("h", tarformat.PAXTYPE, mode=0o644, size=tarformat.MAX_META + 1)
    with pytest.raises(TarFormatError, match="not plausible"):
        members(block + bytes(1024))


def test_header_checksums_with_every_byte_high_are_summed_exactly(tmp_path):
    """The checksum sums a header's bytes in three parts of at most 256 (adler32 in C):
    GNU tar's headers whose name, link name and ustar prefix are 0xff bytes read back,
    and one bit flipped in the prefix, the last part, is still caught."""
    assert tarformat._byte_sum(b"\xff" * 256) == 256 * 255
    high = "\udcff" * 99  # 99 bytes of 0xff as a file name
    (tmp_path / high).mkdir()
    (tmp_path / high / high).write_bytes(b"y")  # its prefix field: 99 bytes of 0xff
    (tmp_path / "link").symlink_to(high)
    names = [os.fsencode(high), b"link"]  # (the directory brings its file)
    data = subprocess.run(
        ["tar", "--format=ustar", "--owner=0", "--group=0", "-cf", "-", "-C", tmp_path, *names],
        capture_output=True,
        check=True,
    ).stdout
    found = [m.name for m, _ in members(data)]
    assert found == [f"{high}/", f"{high}/{high}", "link"]
    flipped = bytearray(data)
    flipped[512 + 400] ^= 0x01  # in the file header's prefix field (bytes 345-499)
    with pytest.raises(TarFormatError, match="checksum"):
        members(bytes(flipped))


@pytest.mark.parametrize("seed", range(3))
def test_a_name_only_header_is_the_general_header_byte_for_byte(seed):
    """The ``same`` member's template path gives exactly what :func:`tarformat.header`
    gives, for short ASCII names, and falls back for the rest (long, non-ASCII, a
    trailing slash); GNU tar's reader (ours) reads the name back."""
    import random

    rng = random.Random(seed)
    alphabet = "abcXYZ019._-/ %:\\\\"
    names = ["a", "x" * 100, "d/" + "y" * 97, "é/non-ascii", "z" * 101, "dir/", "\\udcff"]
    names += ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 120))) for _ in range(300)]
    pax = [(b"PULLBACK.data", b"same")]
    for name in names:
        fast = tarformat.name_only_header(name, pax)
        assert fast == tarformat.header(name, tarformat.REGTYPE, mode=0, pax=pax), name
    assert tuple(pax) in tarformat._NAME_ONLY  # (the template was used, not only the fallback)
    ((member, _),) = members(fast + bytes(1024))
    assert member.name == names[-1] and member.pax[b"PULLBACK.data"] == b"same"
