"""Reading one file for the archive, when the file may change while it is read.

A live system writes while the backup runs. A file is judged by its ``fstat`` before and
after it is read: size, mtime and ctime. A file up to :data:`REREAD_LIMIT` is read whole
before anything of it goes into the archive, so when it changed it is simply read again,
once; what is archived is what was read (never a header promising bytes that were not
there). A larger file is streamed; if it changed while streamed, the archive keeps what
was read and the warning says so. Either way the warning names the file and reaches the
sidecar, the server's summary and ``status``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from ..fsutil import pread_span
from . import sparse
from .sparse import Region

REREAD_LIMIT = 16 << 20
"""Files up to this size are read whole first, and read again once if they changed."""


def changed(before: os.stat_result, after: os.stat_result) -> bool:
    """Whether a file changed between two ``fstat`` calls (size, mtime or ctime)."""
    return (before.st_size, before.st_mtime_ns, before.st_ctime_ns) != (
        after.st_size,
        after.st_mtime_ns,
        after.st_ctime_ns,
    )


def _pread_all(fd: int, length: int, offset: int) -> bytes:
    """``length`` bytes of ``fd`` at ``offset`` (fewer only at the end of the file)."""
    return b"".join(pread_span(fd, offset, offset + length))


@dataclass
class Content:
    """What to archive of one regular file: its metadata and, read ahead, its bytes.

    ``data`` holds a dense file's bytes and ``pieces`` a sparse file's regions, each when
    the file was small enough to read ahead (and read again if it changed); otherwise the
    writer streams the file and checks ``stat`` against the file afterwards.
    """

    stat: os.stat_result
    regions: list[Region] | None = None
    """The data regions of a file with holes (None: a dense file)."""
    data: bytes | None = None
    pieces: list[bytes] | None = None
    note: str | None = None
    """Why the file is worth a warning (it changed while read)."""
    holes: int = 0
    """Bytes of the file's holes (counted also where its regions take small holes as
    data: :func:`.sparse.data_map`)."""

    @property
    def merged_holes(self) -> bool:
        """Whether its map takes some of its holes as data (it has more regions than a
        map may list: :func:`.sparse.data_map`)."""
        if self.regions is None:
            return False
        return self.holes > self.stat.st_size - sum(r.length for r in self.regions)

    @property
    def size(self) -> int:
        """The size the archive gives the file."""
        return len(self.data) if self.data is not None else self.stat.st_size


def _read_once(fd: int) -> tuple[Content, os.stat_result]:
    before = os.fstat(fd)
    maybe_sparse = before.st_blocks * 512 < before.st_size
    # (one region less than a map may list: the end mark may follow)
    most = sparse.MAX_REGIONS - 1
    regions, holes = sparse.data_map(fd, before.st_size, most) if maybe_sparse else (None, 0)
    if regions is None:
        if before.st_size > REREAD_LIMIT:
            return Content(before, holes=holes), before
        data = _pread_all(fd, before.st_size + 1, 0)  # one byte more tells a file that grew
        return Content(before, data=data, holes=holes), os.fstat(fd)
    if sum(r.length for r in regions) > REREAD_LIMIT:
        return Content(before, regions, holes=holes), before
    pieces = [_pread_all(fd, r.length, r.offset) for r in regions]
    return Content(before, regions, pieces=pieces, holes=holes), os.fstat(fd)


def _held_still(content: Content, after: os.stat_result) -> bool:
    if changed(content.stat, after):
        return False
    if content.data is not None:
        return len(content.data) == after.st_size
    if content.pieces is not None and content.regions is not None:
        return [len(p) for p in content.pieces] == [r.length for r in content.regions]
    return True


def read_content(fd: int) -> Content:
    """Read a regular file for the archive: whole when small (again once if it changed
    while read), as a map of its regions when it has holes, or not at all (to be
    streamed) when large."""
    content, after = _read_once(fd)
    if _held_still(content, after):
        return content
    content, after = _read_once(fd)
    if _held_still(content, after):
        content.note = "changed while being read; read again"
        return content
    content.stat = after
    if content.data is not None:
        content.data = content.data[: after.st_size]
    content.note = "changed while being read, twice; archived as read the second time"
    return content


def streamed_note(before: os.stat_result, fd: int) -> str | None:
    """The warning for a streamed file that changed while it was read, or None."""
    if not changed(before, os.fstat(fd)):
        return None
    limit = REREAD_LIMIT >> 20
    return (
        f"changed while being read; archived as read (a file over {limit} MiB is "
        "streamed, not read again): it may be inconsistent"
    )
