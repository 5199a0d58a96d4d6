"""helper-164's attacks on the free-space looks (fsutil.room's syncfs on btrfs) and on
borg's --list lines (borg.listed). Each test failed on the code it was written against
(3ece733)."""

from __future__ import annotations

import contextlib
import os
import shutil

import pytest

from tests.integration.test_store_warnings import UNREADABLE, store_with_unreadable

pytestmark = pytest.mark.integration

MIB = 1 << 20


def _xattr_member_entries(count: int, per_member: int, value_size: int):
    from tests.helpers.archives import Entry

    value = b"v" * value_size
    return [
        Entry(
            f"services/a/{n:05}",
            pax=[(f"SCHILY.xattr.user.k{i:04}".encode(), value) for i in range(per_member)],
        )
        for n in range(count)
    ]


def test_extended_attributes_of_empty_files_cannot_fill_a_btrfs_staging(own_btrfs):
    """Each member may carry 1 MiB of PAX records (MAX_META), applied as extended
    attributes that btrfs stores in its metadata; none of it counts as data for the
    unpacker's looks (every 64 MiB of data or 10,000 members), so a few hundred empty
    files, a few MiB on the wire once compressed, wrote past min_free_space with no
    look in between. 250 members here (225 MiB of attributes, well under 1 MiB with zstd)
    took 301 MiB off a 762 MiB btrfs whose min_free allowed 96; 900 such members
    (205 KiB with zstd) left it 11 MiB and failed with ENOSPC."""
    from pullback.common.archive.unpack import ArchiveTooLarge, UnpackLimits
    from tests.unit.test_unpack import unpack

    os.sync()
    free = shutil.disk_usage(own_btrfs).free
    limits = UnpackLimits(min_free=free - 96 * MIB)
    # 250 empty files of 300 attributes of 3,000 bytes (a 4 KiB btrfs node holds one)
    entries = _xattr_member_entries(250, 300, 3000)
    with pytest.raises(ArchiveTooLarge, match=r"would leave less than .* free under"):
        unpack(own_btrfs / "s", entries, limits)
    os.sync()
    assert shutil.disk_usage(own_btrfs).free > free - 160 * MIB


needs_bind = pytest.mark.skipif(
    os.geteuid() != 0 or not os.path.exists(UNREADABLE), reason="bind mounts need root"
)


@needs_bind
def test_a_clients_file_names_cannot_hide_or_forge_borgs_warnings(tmp_path):
    """A staged name may hold a newline (the unpacker keeps it): borg --list prints it
    raw, so the rest of the name is a line of its own, not a list line: three such
    names pushed the real warning out of the report and put the client's words in."""
    forged = "MANIFEST.sha256: file changed while we backed it up"
    after = [f"{n}-after\n{forged} {n}" for n in range(3)]
    said = store_with_unreadable(tmp_path, ", backup_options: [--list]", after)
    assert "0-unreadable" in said and "MANIFEST" not in said, said


@needs_bind
def test_a_warning_is_said_when_backup_options_list_with_progress(tmp_path):
    """``backup_options: [--list, --progress]``: borg ends its progress lines with a
    carriage return, so its cache messages and progress stick to the next line, and a
    list line so prefixed is not told from a warning ("A services/app/data", stored
    whole, was quoted as what the snapshot may lack); the last line it writes (no
    newline: "Saving files cache...") is quoted as a warning too."""
    after = [f"{n:02}-after" for n in range(30)]
    said = store_with_unreadable(tmp_path, ", backup_options: [--list, --progress]", after)
    assert "0-unreadable" in said, said
    assert "services/app/data" not in said and "-after" not in said and "cache" not in said, said


def test_symlinks_between_the_looks_count_against_the_64_mib_they_may_err_by(own_btrfs):
    """The looks come every 64 MiB of data or 10,000 members, "so it errs by less than
    64 MiB" (unpack._check_free, the man page): a symlink's target counts as no data,
    so 9,980 symlinks of 3,500-byte targets and 63 MiB of files, all between two looks,
    took 104 MiB where 20 were above min_free: 84 MiB past it, not less than 64."""
    from pullback.common.archive import tarformat
    from pullback.common.archive.unpack import ArchiveTooLarge, UnpackLimits
    from tests.helpers.archives import Entry
    from tests.unit.test_unpack import unpack

    os.sync()
    free = shutil.disk_usage(own_btrfs).free
    min_free = free - 20 * MIB
    entries = [
        Entry(f"services/a/{n:05}", kind=tarformat.SYMTYPE, linkname="t" * 3500)
        for n in range(9980)
    ]
    entries += [Entry(f"services/b/{n}", data=os.urandom(7 * MIB)) for n in range(9)]
    with contextlib.suppress(ArchiveTooLarge):  # (refused late is as bad as not)
        unpack(own_btrfs / "s", entries, UnpackLimits(min_free=min_free))
    os.sync()
    left = shutil.disk_usage(own_btrfs).free
    assert left > min_free - 64 * MIB, f"{(free - left) // MIB} MiB written, {min_free=}"
