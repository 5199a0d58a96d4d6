"""The hand-built PAX headers read back identically with Python's tarfile and GNU tar."""

from __future__ import annotations

import io
import os
import subprocess
import tarfile

import pytest

from pullback.common.archive import tarformat

CASES = [
    dict(name="short.txt", size=5),
    dict(name="d/" * 60 + "long-name.txt", size=5),
    dict(name="ünïcödé/名前.txt", size=5),
    dict(name=os.fsdecode(b"bad-\xff-utf8.txt"), size=5),
    dict(name="big-ids", size=5, uid=3_000_000, gid=4_000_000),
    dict(name="old", size=5, mtime_ns=-86_400_500_000_000),
    dict(name="precise", size=5, mtime_ns=1_700_000_000_123_456_789),
    dict(name="named", size=5, uname="a-very-long-user-name-beyond-32-chars", gname="ĝrôup"),
    dict(name="xattr", size=5, pax=[(b"SCHILY.xattr.user.bin", b"\x00\xff\x01binary")]),
]


def archive_of(case: dict) -> bytes:
    fields = dict(
        mode=0o640,
        uid=1000,
        gid=1000,
        mtime_ns=1_700_000_000_000_000_000,
        uname="user",
        gname="group",
    )
    fields.update({k: v for k, v in case.items() if k != "name"})
    data = b"hello"
    return (
        tarformat.header(case["name"], tarformat.REGTYPE, **fields)
        + data
        + bytes(512 - len(data))
        + bytes(1024)
    )


@pytest.mark.parametrize("case", CASES, ids=[c["name"][:20] for c in CASES])
def test_tarfile_reads_what_we_write(case):
    with tarfile.open(fileobj=io.BytesIO(archive_of(case)), mode="r:") as tar:
        (member,) = tar.getmembers()
        assert member.name == case["name"]
        assert member.size == 5 and member.mode == 0o640
        assert member.uid == case.get("uid", 1000) and member.gid == case.get("gid", 1000)
        assert member.uname == case.get("uname", "user")
        assert member.gname == case.get("gname", "group")
        mtime_ns = case.get("mtime_ns", 1_700_000_000_000_000_000)
        assert abs(member.mtime - mtime_ns / 1e9) < 1e-6
        assert tar.extractfile(member).read() == b"hello"
        for key, value in case.get("pax", []):
            assert member.pax_headers[key.decode()].encode("utf-8", "surrogateescape") == value


@pytest.mark.parametrize("case", CASES, ids=[c["name"][:20] for c in CASES])
def test_gnu_tar_lists_what_we_write(case, tmp_path):
    path = tmp_path / "t.tar"
    path.write_bytes(archive_of(case))
    listing = subprocess.run(
        ["tar", "--list", "--quoting-style=literal", "--file", str(path)],
        capture_output=True,
        check=True,
    )
    assert listing.stdout.rstrip(b"\n") == os.fsencode(case["name"])


def test_sizes_beyond_the_ustar_field_use_pax():
    block = tarformat.header("huge", tarformat.REGTYPE, mode=0o644, size=20 << 30)
    assert b" size=21474836480\n" in block


def _pax_member(records: dict[bytes, bytes], name: str = "services/x/files/f") -> bytes:
    """A PAX header carrying ``records``, then an empty regular member."""
    data = b"".join(tarformat._pax_record(k, v) for k, v in records.items())
    pax = tarformat._ustar(
        b"pax",
        tarformat.PAXTYPE,
        mode=0o644,
        uid=0,
        gid=0,
        size=len(data),
        mtime=0,
        linkname=b"",
        uname=b"",
        gname=b"",
    )
    return pax + data + bytes((-len(data)) % 512)


@pytest.mark.parametrize("key", [b"size", b"uid", b"gid"])
@pytest.mark.parametrize("value", [b"12abc", b"-5", b"", b"1" * 40])
def test_a_pax_number_that_is_not_one_is_a_format_error(key, value):
    stream = _pax_member({key: value}) + tarformat.header(
        "services/x/files/f", tarformat.REGTYPE, mode=0o644, size=0, mtime_ns=0
    )
    with pytest.raises(tarformat.TarFormatError, match=f"bad PAX {key.decode()}"):
        list(tarformat.TarReader(io.BytesIO(stream + bytes(1024))))


def test_piled_up_extended_headers_are_refused():
    one = _pax_member({b"comment": b"x" * 1_000_000})
    stream = one * 5 + tarformat.header(
        "services/x/files/f", tarformat.REGTYPE, mode=0o644, size=0, mtime_ns=0
    )
    with pytest.raises(tarformat.TarFormatError, match="not plausible"):
        list(tarformat.TarReader(io.BytesIO(stream + bytes(1024))))


@pytest.mark.parametrize(
    ("record", "message"),
    [
        ((b"uid", b"%d" % (1 << 50)), "an owner no file can have"),
        ((b"gid", b"4294967295"), "an owner no file can have"),
        ((b"mtime", b"%d" % (1 << 95)), "a modification time no file can have"),
    ],
)
def test_owners_and_times_no_file_can_have_are_format_errors(record, message):
    """Found by an attack: they failed deep in chown/utime as "internal error"."""
    block = tarformat.header("f", tarformat.REGTYPE, mode=0o644, pax=[record])
    with pytest.raises(tarformat.TarFormatError, match=message):
        list(tarformat.TarReader(io.BytesIO(block + bytes(1024))))
    pre_1970 = tarformat.header("old", tarformat.REGTYPE, mode=0o644, mtime_ns=-(10**18))
    (member,) = tarformat.TarReader(io.BytesIO(pre_1970 + bytes(1024)))
    assert member.mtime_ns == -(10**18)


class _Zeros(io.RawIOBase):
    """``size`` zero bytes, made as they are read (never held whole)."""

    def __init__(self, size: int):
        self.left = size

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        n = min(len(buffer), self.left)
        buffer[:n] = bytes(n)
        self.left -= n
        return n


def test_data_of_members_that_are_not_regular_files_is_bounded():
    """An outside attack (h91): a directory member with a PAX size of 1 TiB of zeros,
    32 MiB compressed, which no limit counted (its data is skipped, never used). Now
    MAX_SKIPPED bytes in all are read past; the next is a format error, read at once."""
    big = tarformat.MAX_SKIPPED + 1
    head = _pax_member({b"size": b"%d" % big}) + tarformat.header(
        "services/x/d/", tarformat.DIRTYPE, mode=0o755, size=0, mtime_ns=0
    )
    stream = io.BufferedReader(_Zeros(1 << 40))
    reader = tarformat.TarReader(io.BufferedReader(_Chain(head, stream)))
    with pytest.raises(tarformat.TarFormatError, match="not regular files carry"):
        list(reader)
    assert stream.raw.left > (1 << 40) - (8 << 20)  # refused before its data was read


class _Chain(io.RawIOBase):
    def __init__(self, first: bytes, then):
        self.first, self.then = io.BytesIO(first), then

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        data = self.first.read(len(buffer)) or self.then.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)


def test_what_follows_the_end_of_archive_marker_is_bounded(tmp_path):
    """An outside attack (h91): 1 TiB of zeros after the end-of-archive marker, drained
    so the decompressor could finish. Now MAX_TAIL bytes are; more is an error."""
    from pullback.common.archive.reader import MAX_TAIL, TarStream
    from pullback.common.errors import ArchiveError

    member = tarformat.header("services/x/f", tarformat.REGTYPE, mode=0o644, size=0, mtime_ns=0)
    for tail, refused in ((10240, False), (4 * MAX_TAIL, True)):
        raw = member + bytes(1024) + bytes(tail)
        packed = subprocess.run(["zstd", "-q", "-c"], input=raw, capture_output=True).stdout
        path = tmp_path / f"a{tail}.tar.zst"
        path.write_bytes(packed)
        with open(path, "rb") as source:
            stream = TarStream(source, "zstd")
            if not refused:
                with stream:
                    assert [m.name for m in stream.reader] == ["services/x/f"]
                continue
            with (
                pytest.raises(ArchiveError, match="follow the end-of-archive marker"),
                stream,
            ):
                list(stream.reader)
