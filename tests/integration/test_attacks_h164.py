"""helper-164's attacks on the free-space looks (fsutil.room's syncfs on btrfs) and on
borg's --list lines (borg.listed). Each test failed on the code it was written against
(3ece733)."""

from __future__ import annotations

import contextlib
import os
import shutil

import pytest

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
