"""The unpacker: safe names, exact mirror of the archive, unchanged files left alone."""

from __future__ import annotations

import hashlib
import io
import os
import threading

import pytest

from pullback.common.archive import sparse as sparse_module
from pullback.common.archive import tarformat
from pullback.common.archive import unpack as unpack_module
from pullback.common.archive.manifest import format_line
from pullback.common.archive.tarformat import TarFormatError, TarReader
from pullback.common.archive.unpack import (
    ArchiveTooLarge,
    HostileArchive,
    Unpacker,
    UnpackLimits,
    safe_parts,
)
from pullback.common.errors import ArchiveError
from pullback.common.text import escaped
from tests.helpers.archives import MTIME, Entry, build_tar


def unpack(staging, entries, limits: UnpackLimits | None = None):
    return unpack_tar(staging, build_tar(entries), limits)


def unpack_tar(staging, tar: bytes, limits: UnpackLimits | None = None):
    """Unpack the tar bytes into ``staging``; return the statistics."""
    reader = TarReader(io.BytesIO(tar))
    with Unpacker(staging, limits) as unpacker:
        for member in reader:
            unpacker.add(member, reader.chunks())
        return unpacker.finish()


def file_member(
    name: str, data: bytes, pax: list[tuple[bytes, bytes]] | None = None, mode: int = 0o644
) -> bytes:
    """A regular member with extra PAX records, data and padding."""
    head = tarformat.header(
        name, tarformat.REGTYPE, mode=mode, size=len(data), mtime_ns=MTIME, pax=pax
    )
    return head + data + bytes((-len(data)) % 512)


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


def test_symlinks_and_fifos_already_there_are_kept_and_others_replaced(tmp_path):
    staging = tmp_path / "s"
    entries = [
        Entry("services/a/f", data=b"x"),
        Entry("services/a/l", tarformat.SYMTYPE, linkname="f"),
        Entry("services/a/p", tarformat.FIFOTYPE),
    ]
    unpack(staging, entries)
    fifo = os.stat(staging / "services/a/p").st_ino
    link = os.lstat(staging / "services/a/l").st_ino
    stats = unpack(staging, entries)
    assert (stats.files, stats.written, stats.unchanged) == (1, 0, 1)  # counts of files
    assert os.stat(staging / "services/a/p").st_ino == fifo
    assert os.lstat(staging / "services/a/l").st_ino == link
    moved = [entries[0], Entry("services/a/l", tarformat.SYMTYPE, linkname="p"), entries[2]]
    stats = unpack(staging, moved)
    assert stats.unchanged == 1 and os.stat(staging / "services/a/p").st_ino == fifo
    assert os.readlink(staging / "services/a/l") == "p"


def test_the_counts_of_files_add_up_with_hard_links(tmp_path):
    """rewritten + unchanged == files, hard links counted as files (an outside tester saw
    3 rewritten and 209 unchanged of 211 files: symlinks were counted as unchanged)."""
    staging = tmp_path / "s"
    entries = [
        Entry("services/a/f", data=b"x"),
        Entry("services/a/h", tarformat.LNKTYPE, linkname="services/a/f"),
        Entry("services/a/l", tarformat.SYMTYPE, linkname="f"),
    ]
    stats = unpack(staging, entries)
    assert (stats.files, stats.written, stats.unchanged) == (2, 2, 0)
    # a full archive keeps an unchanged file shared by a hard link, and its link
    stats = unpack(staging, entries)
    assert (stats.files, stats.written, stats.unchanged) == (2, 0, 2)
    stats = unpack(staging, [*entries, Entry("services/a/g", data=b"y")])
    assert (stats.files, stats.written, stats.unchanged) == (3, 1, 2)


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
    unpack(staging, [Entry("services/a/f", data=b"x"), Entry("services/a/g", data=b"y")])
    assert (staging / "services/a/f").read_bytes() == b"x"  # g became a file of its own
    assert os.stat(staging / "services/a/f").st_ino != os.stat(staging / "services/a/g").st_ino


def test_each_hard_link_target_is_hashed_once(tmp_path, monkeypatch):
    hashed = []
    real = unpack_module._hash_file
    monkeypatch.setattr(
        unpack_module, "_hash_file", lambda name, fd: hashed.append(name) or real(name, fd)
    )
    big = Entry("services/a/big", data=os.urandom(1 << 20))
    links = [Entry(f"services/a/l{i}", tarformat.LNKTYPE, linkname=big.name) for i in range(300)]
    stats = unpack(tmp_path / "s", [big, *links])
    assert hashed == ["big"]  # not 300 times: work stays linear in what arrived
    assert stats.files == 301


def test_each_hard_link_counts_its_target_against_max_unpacked_size(tmp_path):
    """restic reads every name of an inode: a 1.7 KiB archive of a 2 GiB sparse file and
    100 links made it read 200 GiB while max_unpacked_size counted 2 GiB."""
    big = Entry("services/a/big", data=bytes(1 << 20))
    links = [Entry(f"services/a/l{i}", tarformat.LNKTYPE, linkname=big.name) for i in range(9)]
    limits = UnpackLimits(max_size=5 << 20)
    assert unpack(tmp_path / "ok", [big, *links[:3]], limits).files == 4
    with pytest.raises(ArchiveTooLarge, match=r"more than 5\.0 MiB \(max_unpacked_size in"):
        unpack(tmp_path / "s", [big, *links], limits)
    assert not (tmp_path / "s/services/a/l4").exists()  # refused before the fifth name


def test_a_repeated_directory_keeps_one_record(tmp_path):
    xattr = [(b"SCHILY.xattr.user.big", b"x" * 3000)]
    entries = [Entry("services/a", tarformat.DIRTYPE, mode=0o755, pax=xattr)] * 2000
    tar = build_tar([*entries, Entry("services/a/f", data=b"x")])
    reader = TarReader(io.BytesIO(tar))
    with Unpacker(tmp_path / "s") as unpacker:
        for member in reader:
            unpacker.add(member, reader.chunks())
        assert len(unpacker._dir_meta) == 1
        assert unpacker._dir_meta_bytes < 3700  # one record and its overhead, not 2000
        unpacker.finish()
    assert os.getxattr(tmp_path / "s/services/a", "user.big") == b"x" * 3000


def test_directory_metadata_kept_for_the_end_is_bounded(tmp_path, monkeypatch):
    monkeypatch.setattr(unpack_module, "MAX_DIR_META", 1 << 20)
    xattr = [(b"SCHILY.xattr.user.big", b"x" * 60_000)]
    dirs = [Entry(f"services/d{i}", tarformat.DIRTYPE, pax=xattr) for i in range(40)]
    with pytest.raises(ArchiveTooLarge, match=r"more than 1\.0 MiB of extended attributes"):
        unpack(tmp_path / "s", dirs)
    too_big = [(b"SCHILY.xattr.user.huge", b"x" * 70_000), (b"comment", b"y" * 500_000)]
    stats = unpack(tmp_path / "t", [Entry("services/d", tarformat.DIRTYPE, pax=too_big)])
    assert stats.warnings == [
        "services/d: SCHILY.xattr.user.huge of 70000 bytes dropped (Linux holds at most 64 KiB)"
    ]


def test_a_directory_keeps_no_more_attribute_names_than_an_inode_holds(tmp_path):
    """34,000 empty attributes per directory were counted as their bytes (a few MiB) but
    took 6.7 times that in memory; now each record costs its overhead too, and names past
    Linux's 64 KiB per inode are dropped."""
    many = [(b"SCHILY.xattr.user.%06d" % i, b"") for i in range(10_000)]
    reader = TarReader(io.BytesIO(build_tar([Entry("services/d", tarformat.DIRTYPE, pax=many)])))
    with Unpacker(tmp_path / "s") as unpacker:
        for member in reader:
            unpacker.add(member, reader.chunks())
        ((_, kept),) = unpacker._dir_meta.values()
        assert len(kept.pax) == 65536 // len(b"user.000000\0")  # 5461 names fit
        assert unpacker._dir_meta_bytes > len(kept.pax) * unpack_module.RECORD_COST
        warnings = unpacker.stats.warnings
    assert warnings == [
        "services/d: extended attributes past the first 64 KiB of names dropped (Linux "
        "holds no more on one inode)"
    ]


def test_warnings_are_counted_past_the_first_hundred(tmp_path):
    nodes = [Entry(f"services/a/dev{i}", tarformat.CHRTYPE) for i in range(300)]
    stats = unpack(tmp_path / "s", nodes)
    assert (len(stats.warnings), stats.warnings.total) == (100, 300)
    assert stats.warnings.lines(2) == [
        "services/a/dev0: device node dropped",
        "services/a/dev1: device node dropped",
        "... and 298 more warnings like these",
    ]


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


FOUR_FILES = [Entry(f"services/a/{n}", data=b"x" * 1000) for n in "abcd"]


def test_max_entries_counts_every_member(tmp_path):
    # four files and the manifest: five members
    assert unpack(tmp_path / "ok", FOUR_FILES, UnpackLimits(max_entries=5)).members == 5
    with pytest.raises(
        ArchiveTooLarge, match=r"more than 4 entries \(max_entries in server.yaml\)"
    ):
        unpack(tmp_path / "s", FOUR_FILES, UnpackLimits(max_entries=4))


def test_max_size_refuses_before_the_excess_is_written(tmp_path):
    exact = 4000 + 4 * len(format_line("services/a/a", "0" * 64))  # the manifest counts too
    assert unpack(tmp_path / "ok", FOUR_FILES, UnpackLimits(max_size=exact)).files == 4
    with pytest.raises(ArchiveTooLarge, match=r"more than 2.9 KiB \(max_unpacked_size in"):
        unpack(tmp_path / "s", FOUR_FILES, UnpackLimits(max_size=3000))
    written = sorted(p.name for p in (tmp_path / "s/services/a").iterdir())
    assert written == ["a", "b", "c"]  # "d" would be past 3000 bytes


@pytest.mark.parametrize("key", [b"GNU.sparse.realsize", b"GNU.sparse.size"])
def test_an_old_gnu_sparse_file_counts_its_apparent_size_and_is_refused(tmp_path, key):
    sparse = file_member("services/a/hole", b"x", [(key, str(1 << 50).encode())])
    tar = sparse + bytes(1024)
    with pytest.raises(ArchiveTooLarge, match=r"more than 1\.0 GiB"):
        unpack_tar(tmp_path / "s", tar, UnpackLimits(max_size=1 << 30))
    with pytest.raises(HostileArchive, match="'services/a/hole' is a sparse file in an old GNU"):
        unpack_tar(tmp_path / "s", tar)
    assert not (tmp_path / "s/services/a/hole").exists()


def test_a_negative_size_is_refused(tmp_path):
    tar = file_member("services/a/f", b"", [(b"size", b"-1000000")]) + bytes(1024)
    # the tar reader refuses it first; the unpacker would too
    with pytest.raises((HostileArchive, TarFormatError), match=r"negative size|bad PAX size"):
        unpack_tar(tmp_path / "s", tar, UnpackLimits(max_size=1 << 20))


@pytest.mark.skipif(os.geteuid() != 0, reason="setting security.* attributes needs root")
def test_set_id_bits_and_file_capabilities_are_kept_in_a_root_only_staging(tmp_path):
    capability = bytes.fromhex("01000002" + "c0000000" * 4)  # cap_setuid... as setcap writes
    script = b"#!/bin/sh\n"
    xattr = [(b"SCHILY.xattr.security.capability", capability)]
    manifest = format_line("services/a/tool", hashlib.sha256(script).hexdigest())
    manifest += format_line("services/a/su", hashlib.sha256(script).hexdigest())
    tar = (
        file_member("services/a/tool", script, xattr)
        + file_member("services/a/su", script, mode=0o4755)
        + file_member("MANIFEST.sha256", manifest)
        + bytes(1024)
    )
    stats = unpack_tar(tmp_path / "s", tar)
    assert stats.warnings == []
    assert os.getxattr(tmp_path / "s/services/a/tool", "security.capability") == capability
    assert os.stat(tmp_path / "s/services/a/su").st_mode & 0o7777 == 0o4755
    # nobody but root can reach them: the staging directory is root's alone
    assert os.stat(tmp_path / "s").st_mode & 0o777 == 0o700


def test_names_in_warnings_cannot_forge_lines():
    assert escaped("services/a/x\n[web2] stored") == "services/a/x\\n[web2] stored"
    assert escaped(os.fsdecode(b"services/a/\xff\x1b[31m")) == "services/a/\\xff\\x1b[31m"
    assert escaped("services/a/caf\u00e9") == "services/a/caf\u00e9"


def test_unpacking_keeps_min_free_space(own_filesystem):
    fs = os.statvfs(own_filesystem)
    free = fs.f_bavail * fs.f_frsize
    limits = UnpackLimits(min_free=free - (32 << 20))  # room for 32 MiB more, not 64
    big = Entry("services/a/big", data=bytes(64 << 20))
    with pytest.raises(ArchiveTooLarge, match=r"would leave less than .* free under the staging"):
        unpack(own_filesystem / "s", [Entry("services/a/small", data=b"x"), big], limits)
    assert not (own_filesystem / "s/services/a/big").exists()  # refused before a byte of it


def test_a_manifest_line_without_an_end_is_refused_early(tmp_path):
    from pullback.common.errors import ArchiveError

    endless = tarformat.header(
        "MANIFEST.sha256", tarformat.REGTYPE, mode=0o644, size=1 << 20, mtime_ns=MTIME
    ) + b"x" * (1 << 20)
    with pytest.raises(ArchiveError, match="a line longer than 32,768 bytes"):
        unpack_tar(tmp_path / "s", endless + bytes(1024))


def test_hashing_a_hole_of_a_tib_stops_when_the_host_is_cancelled():
    """A sparse member's holes are hashed as zeros: a TiB takes ten minutes, so the
    host's cancel (its deadline) stops it, as it stops every data chunk."""
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(ArchiveError, match="the host's time is up"):
        sparse_module.hash_zeros(hashlib.sha256(), 1 << 40, cancel)
    digest = hashlib.sha256()
    sparse_module.hash_zeros(digest, 3 << 20, threading.Event())
    assert digest.hexdigest() == hashlib.sha256(bytes(3 << 20)).hexdigest()


@pytest.mark.parametrize("kind", [tarformat.SYMTYPE, tarformat.REGTYPE])
def test_a_services_member_that_is_no_directory_is_refused(tmp_path, kind):
    """An outside attack: an archive whose ``services`` was a symlink to /etc was
    unpacked, and the drill's walk of the restored tree then named the server's files."""
    staging = tmp_path / "staging"
    entry = Entry("services", kind, linkname="/etc" if kind == tarformat.SYMTYPE else "")
    with pytest.raises(HostileArchive, match="'services' is no directory"):
        unpack(staging, [entry])
    assert not (staging / "services").is_symlink()


def test_plain_directories_never_count_against_the_attributes_bound(tmp_path, monkeypatch):
    """A tree of many directories without extended attributes or ACLs (a maildir store,
    node_modules) had every directory count 400 bytes and its name against MAX_DIR_META:
    150,000 of them refused the host's whole archive (helper-156 F1). They are bounded by
    max_entries with every member; only records count, as security.md says."""
    monkeypatch.setattr(unpack_module, "MAX_DIR_META", 1 << 20)
    dirs = [Entry(f"services/d{i:05d}", tarformat.DIRTYPE) for i in range(5_000)]
    stats = unpack(tmp_path / "s", dirs)
    assert stats.warnings == [] and len(list((tmp_path / "s/services").iterdir())) == 5_000
    acl = [(b"SCHILY.acl.default", b"user::rwx,group::r-x,other::r-x")]
    with pytest.raises(ArchiveTooLarge, match=r"more than 1\.0 MiB of extended attributes"):
        unpack(tmp_path / "t", [Entry(d.name, tarformat.DIRTYPE, pax=acl) for d in dirs])


def _symlink_archive(tmp_path, src, number: int) -> bytes:
    """A full archive of ``src`` as the files task writes it (extended attributes on)."""
    from pullback.common.archive.writer import ArchiveWriter

    out = tmp_path / f"day{number}.tar"
    with ArchiveWriter(out, "none") as archive:
        archive.add_tree(src, "services/app/files/src", xattrs=True)
        archive.finish()
    return out.read_bytes()


def test_a_symlinks_own_extended_attributes_go_in_and_come_back(tmp_path):
    """A symlink's own attributes (trusted.*, security.selinux: user.* cannot be set on
    one) are archived and given back in staging, changed and removed as the client's
    were (helper-159 F3: dropped, both backends)."""
    src = tmp_path / "src"
    src.mkdir()
    link = src / "current"
    link.symlink_to("release-1")
    try:
        os.setxattr(link, "trusted.onlink", b"on a symlink", follow_symlinks=False)
    except OSError as exc:  # pragma: no cover - not root, or a file system without them
        pytest.skip(f"no trusted.* attribute on a symlink here: {exc.strerror}")
    staged = tmp_path / "s" / "services/app/files/src/current"

    def attrs() -> dict[str, bytes]:
        return {
            n: os.getxattr(staged, n, follow_symlinks=False)
            for n in os.listxattr(staged, follow_symlinks=False)
            if n.startswith("trusted.")
        }

    assert unpack_tar(tmp_path / "s", _symlink_archive(tmp_path, src, 1)).warnings == []
    assert attrs() == {"trusted.onlink": b"on a symlink"}
    # the same link, its attribute changed: staging keeps the link and takes the value
    os.setxattr(link, "trusted.onlink", b"changed", follow_symlinks=False)
    unpack_tar(tmp_path / "s", _symlink_archive(tmp_path, src, 2))
    assert attrs() == {"trusted.onlink": b"changed"}
    os.removexattr(link, "trusted.onlink", follow_symlinks=False)
    unpack_tar(tmp_path / "s", _symlink_archive(tmp_path, src, 3))
    assert attrs() == {}
    assert os.readlink(staged) == "release-1"
