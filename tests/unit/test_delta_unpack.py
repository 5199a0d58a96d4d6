"""A delta archive applied onto a staging tree and its base index: what a good delta
makes, and every way a hostile or damaged one is refused without writing outside staging
or leaving an index that lies."""

from __future__ import annotations

import hashlib
import io
import os
import stat
import threading

import pytest

from pullback.common.archive import baseindex, deltaops, removed, sha256state, tarformat
from pullback.common.archive.baseindex import IndexedTree, IndexWriter
from pullback.common.archive.deltaops import (
    BASE,
    BASE_KEY,
    DATA_KEY,
    DELTA,
    REALSIZE_KEY,
    SAME,
    Copy,
    Data,
    Hole,
)
from pullback.common.archive.manifest import (
    MANIFEST_KEY,
    MANIFEST_NAME,
    NOTICE_LINE,
    PARTIAL,
    format_line,
    order,
    parse,
)
from pullback.common.archive.tarformat import TarReader
from pullback.common.archive.unpack import (
    ArchiveTooLarge,
    BaseMismatch,
    HostileArchive,
    Unpacker,
    UnpackLimits,
)
from pullback.common.errors import ArchiveError
from tests.helpers.archives import MTIME

BIG = bytes(range(256)) * 4096  # 1 MiB
FILES = {"services/app/a.txt": b"alpha\n", "services/app/big.bin": BIG, "services/app/d/x": b"x"}


def member(name: str, data: bytes = b"", kind=tarformat.REGTYPE, pax=None, linkname=""):
    size = len(data) if kind == tarformat.REGTYPE else 0
    head = tarformat.header(
        name, kind, mode=0o644, size=size, mtime_ns=MTIME, pax=pax, linkname=linkname
    )
    return head + data + bytes((-size) % 512)


def tar(
    members: list[bytes], manifest: dict[str, bytes | str], left_out: set[str] | None = None
) -> tuple[bytes, str]:
    """The archive of ``members`` with a manifest of ``manifest`` (name: the file's
    bytes, or their sha256), or (``left_out``: the client's delta with ``base`` and
    ``same`` members) a partial one without those names; returns it and the sha256 of
    the complete manifest."""
    lines = [
        (n, format_line(n, d if isinstance(d, str) else hashlib.sha256(d).hexdigest()))
        for n, d in sorted(manifest.items(), key=lambda item: order(item[0]))
    ]
    complete = b"".join(line for _, line in lines)
    if left_out is None:
        last = member(MANIFEST_NAME, complete)
    else:
        listed = NOTICE_LINE + b"".join(line for n, line in lines if n not in left_out)
        last = member(MANIFEST_NAME, listed, pax=[(MANIFEST_KEY, PARTIAL)])
    body = b"".join(members) + last + bytes(1024)
    return body, hashlib.sha256(complete).hexdigest()


def apply(
    staging,
    data: bytes,
    delta: bool,
    limits: UnpackLimits | None = None,
    announced: str = "",
    lean: bool | None = False,
) -> str:
    """Unpack ``data`` as the pull does (``lean``: a format-3 sidecar's); commit the new
    index. Returns the manifest sha."""
    base = baseindex.take(staging)
    index = IndexWriter(staging)
    reader = TarReader(io.BytesIO(data))
    try:
        with Unpacker(
            staging, limits, base if delta else None, index, announced=announced, lean=lean
        ) as unpacker:
            if delta and base is not None and base.linked:  # the server's first pass
                first = TarReader(io.BytesIO(data))
                for each in first:
                    unpacker.check_base(each)
            for each in reader:
                unpacker.add(each, reader.chunks())
            unpacker.finish()
            index.commit(IndexedTree("web1-20261130T030000Z.tar", unpacker.manifest_sha256))
            return unpacker.manifest_sha256
    except BaseException:
        index.abort()
        raise
    finally:
        if base is not None:
            base.close()


@pytest.fixture
def staging(tmp_path):
    staging = tmp_path / "staging" / "web1"
    members = [member(n, d) for n, d in FILES.items()]
    apply(staging, tar(members, FILES)[0], delta=False)
    return staging


def base_member(name: str) -> bytes:
    return member(name, pax=[(DATA_KEY, BASE)])


def delta_member(name: str, ops: list, realsize: int) -> bytes:
    out = io.BytesIO()
    deltaops.encode(ops, out)
    return member(name, out.getvalue(), pax=[(DATA_KEY, DELTA), (REALSIZE_KEY, b"%d" % realsize)])


def test_base_members_keep_files_unread_and_a_delta_member_rebuilds_its_file(staging):
    before = os.stat(staging / "services/app/a.txt")
    grown = BIG + b"appended rows\n"
    ops = [Copy(0, len(BIG)), Data(b"appended rows\n")]
    files = {**FILES, "services/app/big.bin": grown}
    members = [
        base_member("services/app/a.txt"),
        delta_member("services/app/big.bin", ops, len(grown)),
        base_member("services/app/d/x"),
    ]
    big_before = os.stat(staging / "services/app/big.bin").st_ino
    apply(staging, tar(members, files)[0], delta=True)
    assert (staging / "services/app/big.bin").read_bytes() == grown
    # an append is written in place: only the new bytes, the same inode
    assert os.stat(staging / "services/app/big.bin").st_ino == big_before
    after = os.stat(staging / "services/app/a.txt")
    assert (after.st_ino, after.st_ctime_ns) == (before.st_ino, before.st_ctime_ns)
    # and the new index vouches for the new file: a delta on top of it applies too
    ops = [Copy(0, 100), Data(b"!")]
    again = {**files, "services/app/big.bin": grown[:100] + b"!"}
    members[1] = delta_member("services/app/big.bin", ops, 101)
    apply(staging, tar(members, again)[0], delta=True)
    assert (staging / "services/app/big.bin").read_bytes() == grown[:100] + b"!"
    # copies that move bytes make the file anew beside the base
    moved = grown[50:100] + grown[:100] + b"?"
    ops = [Copy(50, 50), Copy(0, 100), Data(b"?")]
    members[1] = delta_member("services/app/big.bin", ops, len(moved))
    apply(staging, tar(members, {**again, "services/app/big.bin": moved})[0], delta=True)
    assert (staging / "services/app/big.bin").read_bytes() == moved
    assert os.stat(staging / "services/app/big.bin").st_ino != big_before
    assert not list((staging / "services/app").glob(".pullback-*"))


def test_what_a_delta_no_longer_names_is_swept(staging):
    files = {"services/app/a.txt": b"alpha\n"}
    apply(staging, tar([base_member("services/app/a.txt")], files)[0], delta=True)
    assert sorted(p.name for p in (staging / "services/app").iterdir()) == ["a.txt"]


A = "services/app/a.txt"
HOSTILE = [
    # a base member naming a file the base does not hold
    ([base_member("services/app/new")], {"services/app/new": b""}, BaseMismatch, "not a file of"),
    # a base member claiming other bytes than the base's: the manifest disagrees
    ([base_member(A)], {A: b"other"}, ArchiveError, "does not match"),
    # copies outside the base file
    ([delta_member(A, [Copy(0, 7)], 7)], {A: b"alpha\n\n"}, ArchiveError, "past the base"),
    # a delta making more than it announced
    ([delta_member(A, [Data(b"12345")], 4)], {A: b"1234"}, ArchiveError, "more than the 4"),
    # a realsize that is not a number
    ([member(A, b"PBD1E", pax=[(DATA_KEY, DELTA), (REALSIZE_KEY, b"-1")])], {}, HostileArchive,
     "not a number"),
    # an unknown source of bytes
    ([member(A, pax=[(DATA_KEY, b"elsewhere")])], {}, HostileArchive, "unknown PULLBACK.data"),
    # a base member that is the manifest, or outside services/
    ([base_member(MANIFEST_NAME)], {}, HostileArchive, "manifest cannot come from"),
    ([base_member("etc/passwd")], {}, HostileArchive, "outside services/"),
]  # fmt: skip


@pytest.mark.parametrize(("members", "manifest", "error", "words"), HOSTILE)
def test_a_hostile_delta_is_refused(staging, members, manifest, error, words):
    with pytest.raises(error, match=words):
        apply(staging, tar(members, manifest)[0], delta=True)
    assert baseindex.read_tree(staging) is None  # no index: the next delta is refused


def test_a_delta_cannot_claim_more_than_max_unpacked_size(staging):
    huge = 1 << 40
    ops = [Copy(0, len(BIG))] * (huge // len(BIG))
    data = member(
        "services/app/big.bin",
        b"",
        pax=[(DATA_KEY, DELTA), (REALSIZE_KEY, b"%d" % huge)],
    )
    assert ops  # the stream itself is never read: the header's size is refused first
    limits = UnpackLimits(max_size=10 << 20)
    with pytest.raises(ArchiveTooLarge, match=r"more than 10\.0 MiB"):
        apply(staging, tar([data], {})[0], delta=True, limits=limits)


def test_base_files_count_against_max_unpacked_size(staging):
    limits = UnpackLimits(max_size=len(BIG) - 1)
    files = {"services/app/big.bin": BIG}
    with pytest.raises(ArchiveTooLarge):
        apply(staging, tar([base_member("services/app/big.bin")], files)[0], True, limits)


def test_a_base_file_changed_in_staging_is_a_mismatch(staging):
    (staging / "services/app/a.txt").write_bytes(b"alphA\n")
    with pytest.raises(BaseMismatch, match="changed in staging"):
        apply(staging, tar([base_member("services/app/a.txt")], FILES)[0], delta=True)


def test_without_an_index_no_base_member_is_taken(staging):
    baseindex.drop(staging)
    with pytest.raises(BaseMismatch, match="staging has none"):
        apply(staging, tar([base_member("services/app/a.txt")], FILES)[0], delta=True)


def test_a_full_archive_may_not_use_the_base(staging):
    with pytest.raises(BaseMismatch):
        apply(staging, tar([base_member("services/app/a.txt")], FILES)[0], delta=False)


def test_a_base_symlink_is_never_followed(staging, tmp_path):
    outside = tmp_path / "outside"
    outside.write_bytes(b"secret")
    target = staging / "services/app/a.txt"
    target.unlink()
    target.symlink_to(outside)
    with pytest.raises(BaseMismatch):
        apply(staging, tar([base_member("services/app/a.txt")], FILES)[0], delta=True)
    assert outside.read_bytes() == b"secret"


def test_hard_links_made_and_broken_across_a_delta(staging):
    files = linked_base(staging)  # day 2: x becomes a hard link of a.txt
    a, x = staging / "services/app/a.txt", staging / "services/app/d/x"
    assert os.stat(a).st_ino == os.stat(x).st_ino
    # day 3: both stay with the same bytes, as two files: the link is broken
    members = [base_member(n) for n in ("services/app/a.txt", "services/app/big.bin")]
    members.append(base_member("services/app/d/x"))
    apply(staging, tar(members, files)[0], delta=True)
    assert os.stat(a).st_ino != os.stat(x).st_ino
    assert x.read_bytes() == a.read_bytes() == b"alpha\n"


def test_names_that_are_not_utf8_are_indexed_and_taken_from_the_base(staging):
    """A name is bytes: the index keeps it as bytes (it once failed every pull of a host
    with one such file, full pulls too)."""
    odd = "services/app/caf\udce9.txt"
    files = {**FILES, odd: b"latin-1 name\n"}
    apply(staging, tar([member(n, d) for n, d in files.items()], files)[0], delta=False)
    members = [base_member(n) for n in files]
    apply(staging, tar(members, files)[0], delta=True)
    assert (staging / "services/app/caf\udce9.txt").read_bytes() == b"latin-1 name\n"


def test_a_delta_is_checked_against_min_free_space_by_what_it_writes(staging):
    """A 1.7 MB stream that makes a file of 100 GiB (copies of its base) is refused
    before a byte of the file is written, by what it would write (its records' lengths),
    not by its own size."""
    free = os.statvfs(staging).f_bavail * os.statvfs(staging).f_frsize
    huge = 100 << 30
    ops = [Copy(0, len(BIG))] * (huge // len(BIG))
    pax = [(DATA_KEY, DELTA), (REALSIZE_KEY, b"%d" % huge)]
    stream = io.BytesIO()
    deltaops.encode(ops, stream)
    limits = UnpackLimits(min_free=max(0, free - huge // 2))
    data = member("services/app/big.bin", stream.getvalue(), pax=pax)
    before = (staging / "services/app/big.bin").stat()
    with pytest.raises(ArchiveTooLarge, match="would leave less than"):
        apply(staging, tar([data], {})[0], delta=True, limits=limits)
    assert not [p for p in staging.rglob("*") if p.name.startswith(".pullback-delta")]
    assert (staging / "services/app/big.bin").stat().st_mtime_ns == before.st_mtime_ns


def test_a_realsize_only_counts_on_a_delta_member(staging):
    data = member("services/app/x", b"y" * 4096, pax=[(REALSIZE_KEY, b"1")])
    with pytest.raises(HostileArchive, match=r"PULLBACK\.realsize but no delta"):
        apply(staging, tar([data], {"services/app/x": b"y" * 4096})[0], delta=False)


def test_a_stream_of_a_million_records_stops_at_the_deadline(staging):
    """Reading a PBD1 stream's record headers looks at the deadline too (the deadline
    comes while they are read: the first looks at it pass)."""

    class Later(threading.Event):
        looks = 0

        def is_set(self) -> bool:
            self.looks += 1
            return self.looks > 40

    stream = io.BytesIO()
    deltaops.encode([Copy(0, 1), Data(b"x")] * 150_000, stream)
    pax = [(DATA_KEY, DELTA), (REALSIZE_KEY, b"300000")]
    data = member("services/app/big.bin", stream.getvalue(), pax=pax)
    cancel = Later()
    with pytest.raises(ArchiveError, match="time is up"):
        apply(staging, tar([data], {})[0], delta=True, limits=UnpackLimits(cancel=cancel))
    assert cancel.looks > 40


def test_a_manifest_mismatch_is_named_without_reading_staging_again(staging, monkeypatch):
    """With an index, the files that differ are named from the digests this archive
    recorded: a delta of base members with one wrong digest costs no re-read of staging
    (it once read the whole tree after the deadline)."""
    import pullback.common.archive.unpack as unpack_module

    def never(path):
        raise AssertionError(f"{path} read again")

    monkeypatch.setattr(unpack_module, "_hash_path", never)
    files = {**FILES, "services/app/a.txt": b"not what the base holds"}
    with pytest.raises(ArchiveError, match=r"a\.txt has changed"):
        apply(staging, tar([base_member(n) for n in FILES], files)[0], delta=True)


def moved_member(name: str, base: str) -> bytes:
    return member(name, pax=[(DATA_KEY, BASE), (BASE_KEY, base.encode())])


def test_a_renamed_file_is_taken_from_its_old_name(staging):
    """A file (or a directory of files) renamed since the base travels as its old name;
    the old name, no longer in the archive, is swept."""
    files = {
        "services/app/b.txt": b"alpha\n",
        "services/app/moved/x": b"x",
        "services/app/big.bin": BIG,
    }
    members = [
        moved_member("services/app/b.txt", "services/app/a.txt"),
        base_member("services/app/big.bin"),
        moved_member("services/app/moved/x", "services/app/d/x"),
    ]
    apply(staging, tar(members, files)[0], delta=True)
    assert (staging / "services/app/b.txt").read_bytes() == b"alpha\n"
    assert (staging / "services/app/moved/x").read_bytes() == b"x"
    assert not (staging / "services/app/a.txt").exists()
    assert not (staging / "services/app/d").exists()


def test_two_files_that_swapped_names(staging):
    files = {
        "services/app/a.txt": b"x",
        "services/app/d/x": b"alpha\n",
        "services/app/big.bin": BIG,
    }
    members = [
        moved_member("services/app/a.txt", "services/app/d/x"),
        base_member("services/app/big.bin"),
        moved_member("services/app/d/x", "services/app/a.txt"),
    ]
    # the second one's base was overwritten by the first: refused, never mixed up
    with pytest.raises(BaseMismatch):
        apply(staging, tar(members, files)[0], delta=True)


@pytest.mark.parametrize(
    ("base", "error"),
    [
        (MANIFEST_NAME, HostileArchive),
        ("etc/passwd", HostileArchive),
        ("services/../../x", HostileArchive),
        ("services/app/nothing", BaseMismatch),
        ("services/app/d", BaseMismatch),  # a directory
    ],
)
def test_a_base_name_must_be_a_file_of_the_base(staging, base, error):
    with pytest.raises(error):
        apply(staging, tar([moved_member("services/app/n", base)], {})[0], delta=True)


def test_a_base_name_through_a_symlink_is_not_followed_nor_replaced(staging, tmp_path):
    (staging / "services/app/link").symlink_to(staging / "services/app/d")
    with pytest.raises(BaseMismatch):
        apply(staging, tar([moved_member("services/app/n", "services/app/link/x")], {})[0], True)


def linked_base(staging) -> dict[str, bytes]:
    """Staging made a base whose a.txt and d/x are one hard-linked file; returns its files."""
    files = {**FILES, "services/app/d/x": b"alpha\n"}
    members = [
        base_member("services/app/a.txt"),
        base_member("services/app/big.bin"),
        member("services/app/d/x", kind=tarformat.LNKTYPE, linkname="services/app/a.txt"),
    ]
    apply(staging, tar(members, files)[0], delta=True)
    return files


def sparse_member(name: str, data: bytes, realsize: int | None = None) -> bytes:
    """A PAX 1.0 sparse file of one data region, ``data`` at offset 0, and a hole up
    to ``realsize`` (none by default)."""
    size = len(data) if realsize is None else realsize
    regions = f"1\n0\n{len(data)}\n" if realsize is None else f"2\n0\n{len(data)}\n{size}\n0\n"
    body = regions.encode().ljust(512, b"\0") + data
    directory, base = name.rsplit("/", 1)
    return member(
        f"{directory}/GNUSparseFile.0/{base}",
        body,
        pax=[
            (b"GNU.sparse.major", b"1"),
            (b"GNU.sparse.minor", b"0"),
            (b"GNU.sparse.name", name.encode()),
            (b"GNU.sparse.realsize", b"%d" % size),
        ],
    )


IMAGE = 256 << 20
"""A VM image's apparent size: more than the free space the tests below leave."""
SPARE = 64 << 20
"""What the tests leave above ``min_free``."""


def image_digest(start: bytes) -> str:
    """The sha256 of an image that holds ``start`` and then zeros."""
    digest = hashlib.sha256(start)
    zeros = bytes(1 << 20)
    left = IMAGE - len(start)
    while left:
        digest.update(zeros[: min(left, len(zeros))])
        left -= min(left, len(zeros))
    return digest.hexdigest()


@pytest.fixture
def image_staging(own_filesystem):
    """Staging holding a sparse image of 256 MiB with 64 KiB of data, on a file system of
    its own (the tests measure its free space)."""
    staging = own_filesystem / "web1"
    data = os.urandom(64 << 10)
    files: dict[str, bytes | str] = {"services/app/vm.img": image_digest(data)}
    apply(staging, tar([sparse_member("services/app/vm.img", data, IMAGE)], files)[0], False)
    assert (staging / "services/app/vm.img").stat().st_blocks * 512 < 1 << 20
    return staging, data


def image_day(staging, name: str, ops: list, made: bytes) -> None:
    """Apply a delta of the image (``made``: its first bytes; the rest zeros), or the
    image renamed (no ``ops``), with only SPARE bytes above ``min_free``."""
    free = os.statvfs(staging).f_bavail * os.statvfs(staging).f_frsize
    manifest: dict[str, bytes | str] = {name: image_digest(made)}
    members = [delta_member(name, ops, IMAGE) if ops else moved_member(name, "services/app/vm.img")]
    apply(staging, tar(members, manifest)[0], True, UnpackLimits(min_free=free - SPARE))


@pytest.mark.parametrize("how", ["in place", "made anew", "renamed"])
def test_a_sparse_image_counts_against_min_free_by_what_it_allocates(image_staging, how):
    """A delta of a 256 MiB image holding 64 KiB, or the image renamed, on a disk with
    64 MiB above min_free: checked by the bytes it writes, not by its apparent size, and
    its holes stay holes (a rename's copy too)."""
    staging, data = image_staging
    block = os.urandom(4096)
    name, ops, made = {
        "in place": (
            "services/app/vm.img",
            [Data(block), Copy(4096, len(data) - 4096), Hole(IMAGE - len(data))],
            block + data[4096:],
        ),
        "made anew": (
            "services/app/vm.img",
            [Copy(4096, len(data) - 4096), Data(block), Hole(IMAGE - len(data))],
            data[4096:] + block,
        ),
        "renamed": ("services/app/disk.img", [], data),
    }[how]
    inode = (staging / "services/app/vm.img").stat().st_ino
    image_day(staging, name, ops, made)
    st = (staging / name).stat()
    assert st.st_size == IMAGE and st.st_blocks * 512 < 1 << 20
    assert (st.st_ino == inode) == (how == "in place")
    with open(staging / name, "rb") as handle:
        assert handle.read(len(made)) == made


@pytest.mark.parametrize("how", ["rewritten in place", "made anew at its name"])
def test_a_hard_linked_base_file_the_delta_wrote_is_not_taken_by_inode_and_size(
    staging, monkeypatch, how
):
    """On a hard-linked base, a delta frees d/x of its other name (a.txt becomes a
    symlink), writes other bytes of the same size at d/x (in place, or as a new file,
    which may get the freed inode's number back), then takes d/x under a new name
    claiming the base's bytes: a mismatch, not the base's digest vouching for new bytes.

    ext4 here does not reuse the number at once, so the new file's lstat is made to
    show the old number and size (what a filesystem that reuses it would show; a PAX
    sparse member is at least its stored size, 518 bytes)."""
    files = linked_base(staging)
    import pullback.common.archive.unpack as unpack_module

    old_ino = os.lstat(staging / "services/app/d/x").st_ino
    real_lstat = os.lstat

    def reused(path, *args, **kwargs):
        st = real_lstat(path, *args, **kwargs)
        if path == "x" and st.st_size == 518:  # the sparse member's file
            fields = list(st)
            fields[1], fields[6] = old_ino, 6  # st_ino, st_size
            return os.stat_result(fields)
        return st

    monkeypatch.setattr(unpack_module.os, "lstat", reused)
    evil = b"evil!\n"
    assert len(evil) == len(files["services/app/d/x"])
    written = (
        member("services/app/d/x", evil)
        if how == "rewritten in place"
        else sparse_member("services/app/d/x", evil)
    )
    members = [
        member("services/app/a.txt", kind=tarformat.SYMTYPE, linkname="elsewhere"),
        base_member("services/app/big.bin"),
        written,
        moved_member("services/app/e.txt", "services/app/d/x"),
    ]
    manifest = {"services/app/big.bin": BIG, "services/app/d/x": evil}
    manifest["services/app/e.txt"] = b"alpha\n"  # what the base's digest would vouch for
    with pytest.raises(BaseMismatch, match="changed in staging since its index"):
        apply(staging, tar(members, manifest)[0], delta=True)


def test_a_size_past_what_a_file_can_have_is_refused(staging):
    """19 digits pass as a number, but no file holds 2**63 bytes or more (an
    ``OverflowError`` in ``ftruncate`` otherwise)."""
    stream = io.BytesIO()
    deltaops.encode([Hole(1)], stream)
    pax = [(DATA_KEY, DELTA), (REALSIZE_KEY, b"9" * 19)]
    data = member("services/app/big.bin", stream.getvalue(), pax=pax)
    limits = UnpackLimits(max_size=None)
    with pytest.raises(HostileArchive, match="a size no file can have"):
        apply(staging, tar([data], {})[0], delta=True, limits=limits)


@pytest.mark.parametrize("how", ["in place", "made anew"])
def test_a_byte_every_block_counts_a_block_against_min_free(image_staging, how):
    """A hostile delta of the image: a byte, then a hole to the next 4 KiB, 65536 times
    (1.2 MB of stream) would allocate the whole 256 MiB with 64 MiB above min_free: it
    is refused before a byte of the file is written (counted by the blocks it touches,
    not by its 64 KiB of data)."""
    staging, _ = image_staging
    ops: list = [Copy(4096, 1), Hole(4095)] if how == "made anew" else []
    for _ in range(len(ops) // 2, IMAGE // 4096):
        ops += [Data(b"x"), Hole(4095)]
    path = staging / "services/app/vm.img"
    before = path.stat()
    with pytest.raises(ArchiveTooLarge, match="would leave less than"):
        image_day(staging, "services/app/vm.img", ops, b"")
    after = path.stat()
    assert (after.st_ino, after.st_blocks, after.st_mtime_ns) == (
        before.st_ino,
        before.st_blocks,
        before.st_mtime_ns,
    )


def same_member(name: str, pax=None) -> bytes:
    """A ``same`` member as the client writes one: the name only, the rest left empty."""
    head = tarformat.header(name, tarformat.REGTYPE, mode=0, pax=[(DATA_KEY, SAME), *(pax or [])])
    return head


def test_same_members_keep_files_and_their_metadata_untouched(staging):
    """A ``same`` member (bytes and metadata as in the base; its header's mode 0, owner
    0, time 0) leaves the file as it is: nothing opened or changed, not even its ctime;
    the file keeps the base's mode, time and extended attributes. Beside it a ``base``
    member, whose header's metadata is applied."""
    a, x = staging / "services/app/a.txt", staging / "services/app/d/x"
    kept = [(b"SCHILY.xattr.user.kept", b"yes")]
    odd = tarformat.header("services/app/d/x", tarformat.REGTYPE, mode=0o600, size=1, mtime_ns=1)
    full = [
        member("services/app/a.txt", FILES["services/app/a.txt"], pax=kept),
        member("services/app/big.bin", BIG),
        odd + b"x" + bytes(511),
    ]
    apply(staging, tar(full, FILES)[0], delta=False)  # the base: a's xattr, x's mode 0600
    before = os.stat(a)
    members = [
        same_member("services/app/a.txt"),
        same_member("services/app/big.bin"),
        member("services/app/d/x", pax=[(DATA_KEY, BASE)]),  # mode 0644 in its header
    ]
    apply(staging, tar(members, FILES)[0], delta=True)
    after = os.stat(a)
    assert (after.st_ino, after.st_ctime_ns, after.st_mtime_ns) == (
        before.st_ino,
        before.st_ctime_ns,
        before.st_mtime_ns,
    )
    assert stat.S_IMODE(after.st_mode) == 0o644 and after.st_mtime_ns == MTIME
    assert os.getxattr(a, "user.kept") == b"yes"
    assert stat.S_IMODE(os.stat(x).st_mode) == 0o644  # the base member's header applied
    assert os.stat(x).st_mtime_ns == MTIME
    # and the index still vouches for both: the next day's same members apply
    apply(staging, tar([same_member(n) for n in FILES], FILES)[0], delta=True)
    assert os.stat(a).st_ctime_ns == before.st_ctime_ns


def test_a_same_member_needs_its_file_untouched_in_staging(staging):
    """staging's file changed behind the index (a chmod: its ctime): its metadata may no
    longer be the base's, so a ``same`` member is a mismatch (the pull falls back)."""
    os.chmod(staging / "services/app/a.txt", 0o600)
    with pytest.raises(BaseMismatch, match="changed in staging since its index"):
        apply(staging, tar([same_member(n) for n in FILES], FILES)[0], delta=True)


def test_a_same_member_under_another_name_is_refused(staging):
    files = {**FILES, "services/app/b.txt": FILES["services/app/a.txt"]}
    files.pop("services/app/a.txt")
    members = [
        same_member("services/app/b.txt", pax=[(BASE_KEY, b"services/app/a.txt")]),
        same_member("services/app/big.bin"),
        same_member("services/app/d/x"),
    ]
    with pytest.raises(HostileArchive, match="'same' under another name"):
        apply(staging, tar(members, files)[0], delta=True)


# -- a partial manifest: the files whose bytes travel, the rest proved by the sidecar ------


def partial_day(staging):
    """The next day as the client sends it: a.txt unchanged (``same``), d/x's metadata
    changed (``base``), big.bin grown (``delta``), a new file; the manifest lists only
    big.bin and the new file. Returns the archive, its complete manifest's sha256 and
    the day's files."""
    grown = BIG + b"rows\n"
    files = {**FILES, "services/app/big.bin": grown, "services/app/new": b"new\n"}
    members = [
        same_member("services/app/a.txt"),
        delta_member("services/app/big.bin", [Copy(0, len(BIG)), Data(b"rows\n")], len(grown)),
        member("services/app/d/x", pax=[(DATA_KEY, BASE)]),
        member("services/app/new", b"new\n"),
    ]
    left_out = {"services/app/a.txt", "services/app/d/x"}
    data, complete = tar(members, files, left_out)
    return data, complete, files


def test_a_partial_manifest_is_completed_from_the_index_and_proved_by_the_sidecar(staging):
    """Staging ends with the day's complete manifest, byte for byte the client's (the
    one whose sha256 the sidecar names), and ``sha256sum -c`` of it holds; the index
    vouches for every file, so the next partial delta applies on top."""
    data, complete, files = partial_day(staging)
    manifest_member = next(m for m in TarReader(io.BytesIO(data)) if m.name == MANIFEST_NAME)
    assert manifest_member.pax[MANIFEST_KEY] == PARTIAL
    assert apply(staging, data, delta=True, announced=complete) == complete
    written = (staging / MANIFEST_NAME).read_bytes()
    assert hashlib.sha256(written).hexdigest() == complete
    assert parse(written) == {n: hashlib.sha256(d).hexdigest() for n, d in files.items()}
    for name, content in files.items():
        assert (staging / name).read_bytes() == content
    again = [same_member(n) for n in files]
    data, complete = tar(again, files, left_out=set(files))  # nothing changed: all left out
    assert apply(staging, data, delta=True, announced=complete) == complete


def test_a_file_the_base_supplies_that_differs_from_the_day_is_a_base_mismatch(staging):
    """The client's cache says a.txt holds other bytes than staging's index: the files
    that travelled match, but the rebuilt manifest is not the sidecar's: a base mismatch
    (the pull falls back to a full archive), never a snapshot."""
    data, _, files = partial_day(staging)
    wrong = {**files, "services/app/a.txt": b"what the client has\n"}
    _, announced = tar([], wrong, left_out=set())
    with pytest.raises(BaseMismatch, match="differ from the day's manifest"):
        apply(staging, data, delta=True, announced=announced)
    assert baseindex.read_tree(staging) is None  # the failed apply left no index


@pytest.mark.parametrize(
    "case, error, words",
    [
        ("no sha256 of the complete manifest", HostileArchive, "needs a base"),
        ("a full archive", HostileArchive, "needs a base"),
        ("an unknown form", HostileArchive, "unknown PULLBACK.manifest"),
        ("a travelling file left out", ArchiveError, "does not match"),
        ("a base file listed", ArchiveError, "does not match"),
    ],
)
def test_a_partial_manifest_that_cannot_be_proved_is_refused(staging, case, error, words):
    data, complete, files = partial_day(staging)
    delta, announced = True, complete
    if case == "no sha256 of the complete manifest":
        announced = ""
    elif case == "a full archive":
        members = [member(n, d) for n, d in files.items()]
        data, announced = tar(members, files, left_out={"services/app/a.txt"})
        delta = False
    elif case == "an unknown form":
        data = data.replace(b"PULLBACK.manifest=partial", b"PULLBACK.manifest=complet")
    elif case == "a travelling file left out":
        data, announced = tar(
            [
                same_member("services/app/a.txt"),
                member("services/app/big.bin", files["services/app/big.bin"]),
                member("services/app/d/x", pax=[(DATA_KEY, BASE)]),
                member("services/app/new", b"new\n"),
            ],
            files,
            left_out={"services/app/a.txt", "services/app/d/x", "services/app/new"},
        )
    elif case == "a base file listed":
        data, announced = tar(
            [same_member("services/app/a.txt"), *[member(n, d) for n, d in files.items()][1:]],
            files,
            left_out=set(),
        )
    with pytest.raises(error, match=words):
        apply(staging, data, delta=delta, announced=announced)


def test_the_lines_a_partial_manifest_leaves_out_count_against_max_unpacked_size(staging):
    """The server writes the complete manifest itself: every left-out line counts as it
    arrives. Names of 3,000 backslashes (6,000 bytes a line, escaped) taken from one base
    file: a few bytes of archive each, refused before the manifest could fill the disk."""
    deep = "/".join(["\\" * 250] * 12)
    names = [f"services/app/{i:03d}/{deep}" for i in range(400)]
    members = [member(n, pax=[(DATA_KEY, BASE), (BASE_KEY, b"services/app/a.txt")]) for n in names]
    files = {n: FILES["services/app/a.txt"] for n in names}
    data, complete = tar(members, files, left_out=set(names))
    assert len(data) < 2 << 20  # (uncompressed; a few KB with zstd)
    limits = UnpackLimits(max_size=2 << 20)
    with pytest.raises(ArchiveTooLarge, match=r"more than 2\.0 MiB"):
        apply(staging, data, delta=True, limits=limits, announced=complete)


@pytest.mark.parametrize("first", ["a file", "a FIFO", "a symlink"])
@pytest.mark.parametrize("second", ["a directory", "a file below it"])
def test_a_file_cannot_also_be_a_directory(staging, first, second):
    """The file's name would stay in the index and the manifest while staging holds a
    directory there (a FIFO or a symlink would silently become one)."""
    files = {"services/app/a.txt": b"alpha\n"} if first == "a file" else {}
    earlier = {
        "a file": member("services/app/a.txt", b"alpha\n"),
        "a FIFO": member("services/app/a.txt", kind=tarformat.FIFOTYPE),
        "a symlink": member("services/app/a.txt", kind=tarformat.SYMTYPE, linkname="x"),
    }[first]
    later = (
        member("services/app/a.txt", kind=tarformat.DIRTYPE)
        if second == "a directory"
        else member("services/app/a.txt/inner", b"i")
    )
    files |= {} if second == "a directory" else {"services/app/a.txt/inner": b"i"}
    data, _ = tar([earlier, later], files)
    with pytest.raises(
        HostileArchive, match=r"a file and a directory|is below the file|through the symlink"
    ):
        apply(staging, data, delta=False)


# -- lean deltas: unchanged files not named, the removed ones listed ----------------------


def removed_member(*names: str, data: bytes | None = None, pax=None) -> bytes:
    """``REMOVED.list`` naming ``names`` (or holding ``data``)."""
    raw = removed.pack(n.encode() for n in names) if data is None else data
    return member(removed.REMOVED_NAME, raw, pax=pax)


def lean_day(staging, *extra: bytes, listed: tuple[str, ...] = ("services/app/d/x",)):
    """The next day as a lean delta: a.txt rewritten (whole), big.bin unchanged (left
    out), d/x removed (listed); ``extra`` members go before REMOVED.list. Returns the
    archive, its complete manifest's sha256 and the day's files."""
    files = {"services/app/a.txt": b"alpha 2\n", "services/app/big.bin": BIG}
    members = [member("services/app/a.txt", b"alpha 2\n"), *extra, removed_member(*listed)]
    data, complete = tar(members, files, left_out={"services/app/big.bin"})
    return data, complete, files


def test_a_lean_delta_keeps_what_it_does_not_name_and_removes_what_it_lists(staging):
    """A left-out file is kept untouched (same inode and ctime), a listed one removed
    (and its emptied directory, which the archive no longer names), a named one
    rewritten; staging's rebuilt manifest is the day's, and the new index vouches for
    the kept file: a lean delta on top of this one keeps it again."""
    big = os.stat(staging / "services/app/big.bin")
    data, complete, files = lean_day(staging)
    assert apply(staging, data, delta=True, announced=complete, lean=True) == complete
    after = os.stat(staging / "services/app/big.bin")
    assert (after.st_ino, after.st_ctime_ns) == (big.st_ino, big.st_ctime_ns)
    assert not (staging / "services/app/d").exists()
    assert (staging / "services/app/a.txt").read_bytes() == b"alpha 2\n"
    assert parse((staging / MANIFEST_NAME).read_bytes()) == {
        n: hashlib.sha256(d).hexdigest() for n, d in files.items()
    }
    # nothing changed, nothing removed: the directories (a client restates them all)
    # and the list
    members = [member("services/app", kind=tarformat.DIRTYPE), removed_member()]
    data, complete = tar(members, files, left_out=set(files))
    assert apply(staging, data, delta=True, announced=complete, lean=True) == complete
    assert os.stat(staging / "services/app/big.bin").st_ino == big.st_ino


def test_a_lean_delta_that_keeps_a_file_the_client_removed_fails_its_proof(staging):
    """A client that forgot to list a removed file: staging would keep it, and the
    rebuilt manifest is not the sidecar's: a base mismatch (a fallback), no snapshot."""
    data, complete, _ = lean_day(
        staging, member("services/app/d", kind=tarformat.DIRTYPE), listed=()
    )
    with pytest.raises(BaseMismatch, match="differ from the day's manifest"):
        apply(staging, data, delta=True, announced=complete, lean=True)


def _touched(staging):
    os.utime(staging / "services/app/big.bin", ns=(MTIME, MTIME))  # a new ctime
    return lean_day(staging)[0]


def _outside(staging):
    return lean_day(staging, listed=("etc/passwd",))[0]


LEAN_REFUSED = [
    ("the list in a delta of format 2", lambda s: lean_day(s)[0], False, HostileArchive,
     "not a lean delta"),
    ("no list", lambda s: tar([member("services/app/a.txt", b"alpha 2\n")],
                             {"services/app/a.txt": b"alpha 2\n"})[0], True, HostileArchive,
     "without REMOVED.list"),
    ("the list twice", lambda s: lean_day(s, removed_member())[0], True, HostileArchive,
     "comes twice"),
    ("out of order", lambda s: lean_day(s, listed=("services/app/d/x", "services/app/a.txt"))[0],
     True, HostileArchive, "strictly increasing"),
    ("no final NUL", lambda s: lean_day(s, removed_member(data=b"services/app/d/x"))[0], True,
     HostileArchive, "NUL"),
    ("too large", lambda s: lean_day(s, removed_member(data=b"x" * 5 * 4097))[0], True,
     HostileArchive, "larger than"),
    ("a PULLBACK record", lambda s: lean_day(
        s, removed_member(pax=[(DATA_KEY, BASE)]))[0], True, HostileArchive, "plain file"),
    ("a name outside services/", _outside, True, HostileArchive, "outside services/"),
    ("a name with ..", lambda s: lean_day(s, listed=("services/../x",))[0], True,
     HostileArchive, "'..' component"),
    ("a name the base lacks", lambda s: lean_day(s, listed=("services/app/zz",))[0], True,
     BaseMismatch, "not a file of the base"),
    ("a kept file changed in staging", _touched, True, BaseMismatch, "changed in staging"),
    ("a kept file below a symlink", lambda s: lean_day(
        s, member("services/app/d", kind=tarformat.SYMTYPE, linkname="/etc"), listed=())[0],
     True, BaseMismatch, "directory is not in the archive"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("case", "make", "lean", "error", "words"), LEAN_REFUSED, ids=[c[0] for c in LEAN_REFUSED]
)
def test_a_lean_delta_that_breaks_its_form_is_refused(staging, case, make, lean, error, words):
    """Every bound of REMOVED.list (docs/architecture.md, *Lean deltas: unchanged files
    not named at all*) and every check of a kept file; nothing is stored and staging
    keeps no index (the next pull falls back to the chain's full)."""
    data = make(staging)
    _, complete, _ = lean_day(staging)
    with pytest.raises(error, match=words):
        apply(staging, data, delta=True, announced=complete, lean=lean)
    assert baseindex.read_tree(staging) is None


def test_a_lean_delta_whose_manifest_claims_every_file_is_refused(staging):
    """Files left out while the manifest member says it lists every file (not partial):
    refused, or the kept file would be in staging but not in the manifest."""
    files = {"services/app/a.txt": b"alpha 2\n", "services/app/big.bin": BIG}
    members = [member("services/app/a.txt", b"alpha 2\n"), removed_member("services/app/d/x")]
    data, complete = tar(members, files)
    with pytest.raises(HostileArchive, match="claims to list them all"):
        apply(staging, data, delta=True, announced=complete, lean=True)


def test_the_files_a_lean_delta_keeps_count_against_max_entries(staging):
    """Kept files are entries of staging (restic and borg hold them, the sweep keys
    them): a lean delta naming few members cannot grow staging past ``max_entries``
    (found by an outside review: staging grew by 4 files a day past a limit of 6)."""
    data, complete, _ = lean_day(staging)
    # a.txt and the manifest are members, big.bin is kept: 3 entries, as a full archive
    # of the same tree has (REMOVED.list is no entry of the tree)
    with pytest.raises(ArchiveTooLarge, match="the files it keeps from the base"):
        apply(staging, data, delta=True, announced=complete, lean=True,
              limits=UnpackLimits(max_entries=2))  # fmt: skip
    assert baseindex.read_tree(staging) is None
    fresh = staging.parent / "again"
    full = [member(n, d) for n, d in FILES.items()]
    apply(fresh, tar(full, FILES)[0], delta=False)
    apply(fresh, data, delta=True, announced=complete, lean=True,
          limits=UnpackLimits(max_entries=3))  # fmt: skip
    files = {"services/app/a.txt": b"alpha 2\n", "services/app/big.bin": BIG}
    apply(fresh, tar([member(n, d) for n, d in files.items()], files)[0], delta=False,
          limits=UnpackLimits(max_entries=3))  # fmt: skip


def test_a_lean_delta_without_a_base_asks_for_one(tmp_path):
    """A lean delta unpacked alone, its kind not known (restored by hand without its
    sidecar, which names its chain): a base mismatch, which restore turns into "put the
    sidecar back". A full archive (its sidecar known) carrying the list is hostile, and
    refused as such (a second review saw it taken for a base mismatch)."""
    data, complete, _ = lean_day(None)
    with pytest.raises(BaseMismatch, match="needs a base"):
        apply(tmp_path / "alone", data, delta=False, announced=complete, lean=None)
    with pytest.raises(HostileArchive, match="not a lean delta"):
        apply(tmp_path / "full", data, delta=False, announced=complete, lean=False)


def test_a_device_node_below_a_removed_file_leaves_no_stale_file(staging):
    """A dropped device node named below a base file (``a.txt/tty``, a.txt listed as
    removed): its parents are made the directories its name says, so nothing of the
    base file stays in staging beside the manifest (an outside review found a.txt kept,
    unlisted, because the node's parents were marked seen but never made)."""
    node = member("services/app/a.txt/tty", kind=tarformat.CHRTYPE)
    files = {"services/app/big.bin": BIG}
    members = [node, removed_member("services/app/a.txt", "services/app/d/x")]
    data, complete = tar(members, files, left_out=set(files))
    apply(staging, data, delta=True, announced=complete, lean=True)
    assert (staging / "services/app/a.txt").is_dir()
    assert not list((staging / "services/app/a.txt").iterdir())


@pytest.mark.parametrize("kind", [tarformat.REGTYPE, tarformat.SYMTYPE])
def test_a_member_ending_with_a_slash_must_be_a_directory(staging, kind):
    """Refused with words (an outside review saw a bare NotADirectoryError later)."""
    bad = member("services/app/new/", b"", kind=kind, linkname="x")
    with pytest.raises(HostileArchive, match="ends with '/'"):
        apply(staging, tar([bad], {})[0], delta=False)


def _linked(staging) -> bool:
    base = baseindex.take(staging)
    assert base is not None
    try:
        return base.linked
    finally:
        base.close()
        baseindex.put_back(staging)


def test_the_index_says_whether_staging_has_hard_links_with_kept_files_too(tmp_path):
    """``linked`` (a delta's base files then get a first pass) follows the files this
    archive wrote: kept files (one link, checked) never set it, a hard link does, and
    a lean delta that keeps every other file leaves it as its members say."""
    staging = tmp_path / "staging"
    link = member("services/app/l", kind=tarformat.LNKTYPE, linkname="services/app/a.txt")
    full = [member(n, d) for n, d in FILES.items()]
    apply(staging, tar([*full, link], {**FILES, "services/app/l": FILES[A]})[0], delta=False)
    assert _linked(staging)
    # the next day: the pair unchanged (a ``same`` member and its link), the rest kept
    files = {**FILES, "services/app/l": FILES[A]}
    members = [same_member(A), link, removed_member()]
    dirs = [member("services/app/d", kind=tarformat.DIRTYPE)]
    data, complete = tar([*dirs, *members], files, left_out=set(FILES))
    apply(staging, data, delta=True, announced=complete, lean=True)
    assert _linked(staging)
    # the link gone: only kept files and a rewritten one, none of them linked
    files = {**FILES, A: b"alpha 3\n"}
    members = [*dirs, member(A, b"alpha 3\n"), removed_member("services/app/l")]
    data, complete = tar(members, files, left_out={"services/app/big.bin", "services/app/d/x"})
    apply(staging, data, delta=True, announced=complete, lean=True)
    assert not _linked(staging)


def _state_of(staging, name: str) -> bytes | None:
    import sqlite3

    with sqlite3.connect(baseindex.index_path(staging)) as db:
        row = db.execute("SELECT state FROM states WHERE name = ?", (name.encode(),)).fetchone()
    return row[0] if row else None


@pytest.fixture
def hashed_from(monkeypatch):
    """Where each file the unpack hashes after patching it is read from (0: whole)."""
    from pullback.common.archive import unpack

    starts: list[int] = []
    real = unpack._hash_fd

    def spy(fd, cancel, digest, start=0):
        starts.append(start)
        return real(fd, cancel, digest, start)

    monkeypatch.setattr(unpack, "_hash_fd", spy)
    return starts


def test_a_grown_file_is_hashed_by_its_new_bytes_from_its_saved_state(staging, hashed_from):
    """The index keeps the hash state of a large file; a delta that only appends to it
    is hashed from there (its new bytes read, not the 1 MiB before them), a day that
    leaves the file alone carries the state over, and the manifest is proved all the
    same; a delta that writes before the old end reads the file whole."""
    big = "services/app/big.bin"
    assert _state_of(staging, big) is not None  # the full archive's file
    assert _state_of(staging, "services/app/a.txt") is None  # small: no state
    grown = BIG + b"appended rows\n"
    files = {**FILES, big: grown}
    members = [
        base_member("services/app/a.txt"),
        delta_member(big, [Copy(0, len(BIG)), Data(b"appended rows\n")], len(grown)),
        base_member("services/app/d/x"),
    ]
    data, complete = tar(members, files)
    assert apply(staging, data, delta=True) == complete
    assert hashed_from == [len(BIG)]
    # a day that does not touch it: the state comes along into the new index
    members[1] = base_member(big)
    data, complete = tar(members, files)
    assert apply(staging, data, delta=True) == complete
    again = grown + b"more rows\n"
    members[1] = delta_member(big, [Copy(0, len(grown)), Data(b"more rows\n")], len(again))
    data, complete = tar(members, {**files, big: again})
    assert apply(staging, data, delta=True) == complete
    assert hashed_from == [len(BIG), len(grown)]
    assert (staging / big).read_bytes() == again
    # a row rewritten before the end: the whole file is read
    edited = again[:100] + b"!" + again[101:]
    ops = [Copy(0, 100), Data(b"!"), Copy(101, len(again) - 101)]
    members[1] = delta_member(big, ops, len(edited))
    data, complete = tar(members, {**files, big: edited})
    assert apply(staging, data, delta=True) == complete
    assert hashed_from[-1] == 0
    assert (staging / big).read_bytes() == edited


def _append_a_tail(staging) -> None:
    """A day that appends a line to big.bin (a delta applied in place), proved."""
    big = "services/app/big.bin"
    grown = BIG + b"tail\n"
    members = [
        base_member("services/app/a.txt"),
        delta_member(big, [Copy(0, len(BIG)), Data(b"tail\n")], len(grown)),
        base_member("services/app/d/x"),
    ]
    data, complete = tar(members, {**FILES, big: grown})
    assert apply(staging, data, delta=True) == complete


def test_a_state_that_does_not_hash_to_its_row_is_not_used(staging, hashed_from):
    """A state of other bytes of the same size (a damaged or forged index) would prove a
    file the server does not hold: it is checked against the row's digest and passed
    over, the file read whole and proved against the manifest."""
    import sqlite3

    big = "services/app/big.bin"
    other = sha256state.new()
    assert other is not None
    other.update(b"\xff" * len(BIG))
    with sqlite3.connect(baseindex.index_path(staging)) as db:
        db.execute("UPDATE states SET state = ? WHERE name = ?", (other.state(), big.encode()))
    _append_a_tail(staging)
    assert hashed_from == [0]


@pytest.mark.parametrize("damage", ["text", 7, b"PBS1" + bytes(112)])
def test_a_damaged_state_in_the_index_only_costs_a_whole_read(staging, hashed_from, damage):
    """Found by an outside review: a state of another type raised (TypeError) and one
    whose context was off crashed the process; the pull then failed for every host of
    the process. A state that is not one costs reading the file whole."""
    import sqlite3

    big = "services/app/big.bin"
    with sqlite3.connect(baseindex.index_path(staging)) as db:
        db.execute("DROP TABLE states")  # (a damaged one: any type, no constraint)
        db.execute("CREATE TABLE states (name BLOB PRIMARY KEY, state)")
        db.execute("INSERT INTO states VALUES (?, ?)", (big.encode(), damage))
    _append_a_tail(staging)
    assert hashed_from == [0]
