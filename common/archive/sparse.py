"""Sparse files in the PAX 1.0 sparse format of GNU tar (``--sparse-version=1.0``).

A sparse member is a regular member whose PAX header says ``GNU.sparse.major=1``,
``GNU.sparse.minor=0``, ``GNU.sparse.name=<the real name>`` and
``GNU.sparse.realsize=<the file's size>``; its ustar name is a placeholder
(``<dir>/GNUSparseFile.0/<name>``). Its data starts with the map, in decimal text: the
number of regions, then each region's offset and length, one number a line, padded with
NULs to a 512-byte block; the regions' bytes follow, back to back. What the map leaves out
reads as zeros. GNU tar writes and extracts this form; pullback writes it for every file
with holes, so a 2 GiB file with 1 MiB of data costs 1 MiB in the archive, on the wire and
in the server's staging tree.

The writer finds the data with ``SEEK_DATA``/``SEEK_HOLE``. Readers get the map checked
against hostile input: at most :data:`MAX_REGIONS` regions, each within the real size, in
order, not overlapping, and adding up to the member's data.
"""

from __future__ import annotations

import errno
import hashlib
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass

from ..errors import ArchiveError

BLOCK = 512
MAX_REGIONS = 1 << 16
"""Regions a map may list: a file with more is archived with its smallest holes taken as
data (:func:`data_map`), and a map that lists more is refused. This bounds what a hostile
map costs to about 10 MB."""
_ZEROS = bytes(1 << 20)

MAJOR, MINOR, NAME, REALSIZE = (
    b"GNU.sparse.major",
    b"GNU.sparse.minor",
    b"GNU.sparse.name",
    b"GNU.sparse.realsize",
)


class SparseMapError(ValueError):
    """A sparse map that is malformed or does not fit its member."""


@dataclass(frozen=True)
class Region:
    offset: int
    length: int


def data_regions(fd: int, size: int) -> list[Region] | None:
    """The regions of ``fd`` that hold data, or None when the file has no hole (or the
    file system cannot tell). A trailing hole is marked GNU tar's way: an empty region at
    the end."""
    return data_map(fd, size)[0]


def data_map(fd: int, size: int, most: int | None = None) -> tuple[list[Region] | None, int]:
    """The regions of ``fd`` that hold data (as :func:`data_regions` gives them, the end
    mark included) and the bytes of its holes. Past ``most`` regions the smallest holes
    between them are taken as data (zeros; the earliest of equal ones first), as few as
    make ``most`` regions (and the end mark): a file with a hole in every page (InnoDB's
    page compression makes them) or a VM image of 100,000 extents costs its ``lseek``
    calls and a list of at most twice ``most``, never one of millions, and still
    travels without its other holes (helper-157 F3: such a file travelled whole, and the
    server wrote every hole as zeros). ``most=0`` keeps none: the regions are None, the
    holes counted. Holes are 0 when the file system cannot tell; counted exactly either
    way."""
    regions: list[Region] = []
    data = offset = 0
    try:
        while offset < size:
            start = os.lseek(fd, offset, os.SEEK_DATA)
            if start >= size:
                break
            end = min(os.lseek(fd, start, os.SEEK_HOLE), size)
            data += end - start
            if most != 0:
                regions.append(Region(start, end - start))
                if most is not None and len(regions) >= 2 * most:
                    regions = _fewer(regions, most)
            offset = end
    except OSError as exc:
        if exc.errno == errno.ENXIO:  # no data after offset: the rest is a hole
            pass
        elif exc.errno in (errno.EINVAL, errno.EOPNOTSUPP):
            return None, 0
        else:
            raise
    finally:
        os.lseek(fd, 0, os.SEEK_SET)
    if data >= size:
        return None, 0  # no hole at all
    if most == 0:
        return None, size - data
    if most is not None:
        regions = _fewer(regions, most)
    if not regions or regions[-1].offset + regions[-1].length < size:
        regions.append(Region(size, 0))
    return regions, size - data


def _fewer(regions: list[Region], most: int) -> list[Region]:
    """``regions`` made ``most`` (when more) by taking the smallest holes between them
    as data, each joining the two regions around it; of equal holes the earliest."""
    excess = len(regions) - most
    if excess <= 0:
        return regions
    ends = [r.offset + r.length for r in regions]
    gaps = sorted(range(1, len(regions)), key=lambda i: (regions[i].offset - ends[i - 1], i))
    joined = set(gaps[:excess])  # (region i joins the one before it)
    fewer = [regions[0]]
    for index in range(1, len(regions)):
        region = regions[index]
        if index in joined:
            last = fewer[-1]
            fewer[-1] = Region(last.offset, region.offset + region.length - last.offset)
        else:
            fewer.append(region)
    return fewer


def encode_map(regions: list[Region]) -> bytes:
    """The map as it opens the member's data, padded to a block."""
    text = f"{len(regions)}\n" + "".join(f"{r.offset}\n{r.length}\n" for r in regions)
    raw = text.encode()
    return raw + bytes((-len(raw)) % BLOCK)


def pax_records(name: str, realsize: int) -> list[tuple[bytes, bytes]]:
    """The PAX records that make a member sparse."""
    return [
        (MAJOR, b"1"),
        (MINOR, b"0"),
        (NAME, os.fsencode(name)),
        (REALSIZE, str(realsize).encode()),
    ]


def placeholder(name: str) -> str:
    """The ustar name of a sparse member: a reader without sparse support extracts it
    there, not over the real file."""
    directory, _, base = name.rpartition("/")
    return f"{directory + '/' if directory else ''}GNUSparseFile.0/{base}"


def is_sparse(pax: dict[bytes, bytes]) -> bool:
    """True for a PAX 1.0 sparse member."""
    return pax.get(MAJOR) == b"1" and pax.get(MINOR) == b"0"


def hash_zeros(digest, count: int, cancel: threading.Event | None = None) -> None:
    """Feed ``count`` zero bytes to ``digest`` (a hole reads as zeros). A hole of a TiB
    takes minutes: ``cancel`` (when set) stops it. Raises ArchiveError when cancelled."""
    while count > 0:
        if cancel is not None and cancel.is_set():
            raise ArchiveError("unpacking stopped: the host's time is up")
        step = min(count, len(_ZEROS))
        digest.update(_ZEROS[:step] if step < len(_ZEROS) else _ZEROS)
        count -= step


class SparseData:
    """Reads a sparse member's data: first its map, then its regions.

    ``chunks`` yields the member's data; ``size`` is its length in the stream and
    ``realsize`` the file's. :meth:`pieces` yields ``(offset, bytes)`` in file order.
    Raises SparseMapError for a map that is malformed, too big, out of order or does not
    add up.
    """

    def __init__(self, chunks: Iterator[bytes], size: int, realsize: int):
        self._chunks = iter(chunks)
        self.size = size
        self.realsize = realsize
        self._pending = b""
        self.regions = self._read_map()

    def _more(self) -> bytes:
        data = next(self._chunks, b"")
        if not data:
            raise SparseMapError("the sparse map is cut short")
        return data

    def _read_map(self) -> list[Region]:
        buffer = b""
        values: list[int] = []
        taken = 0  # bytes of map text read so far
        count: int | None = None
        while count is None or len(values) < 2 * count:
            newline = buffer.find(b"\n")
            if newline < 0:
                if len(buffer) > 21:
                    raise SparseMapError("the sparse map is not a list of numbers")
                buffer += self._more()
                continue
            line, buffer = buffer[:newline], buffer[newline + 1 :]
            taken += newline + 1
            if not line.isdigit() or len(line) > 20:
                raise SparseMapError("the sparse map is not a list of numbers")
            if count is None:
                count = int(line)
                if count > MAX_REGIONS:
                    raise SparseMapError(f"a sparse map of {count} regions is not plausible")
            else:
                values.append(int(line))
        padded = taken + (-taken) % BLOCK
        regions = [Region(values[i], values[i + 1]) for i in range(0, len(values), 2)]
        self._check(regions, padded)
        while len(buffer) < padded - taken:
            buffer += self._more()
        self._pending = buffer[padded - taken :]
        return regions

    def _check(self, regions: list[Region], map_size: int) -> None:
        end = 0
        for region in regions:
            if region.offset < end or region.offset + region.length > self.realsize:
                raise SparseMapError("the sparse map's regions overlap or lie past the file")
            end = region.offset + region.length
        if map_size + sum(r.length for r in regions) != self.size:
            raise SparseMapError("the sparse map does not add up to the member's data")

    def pieces(self) -> Iterator[tuple[int, bytes]]:
        """``(offset in the file, bytes)`` for every piece of data, in order."""
        for region in self.regions:
            position, remaining = region.offset, region.length
            while remaining:
                if not self._pending:
                    self._pending = self._more()
                piece, self._pending = self._pending[:remaining], self._pending[remaining:]
                yield position, piece
                position += len(piece)
                remaining -= len(piece)

    def logical_digest(self, digest=None):
        """Consume the data and return the sha256 of the whole file, holes as zeros."""
        digest = digest or hashlib.sha256()
        position = 0
        for offset, piece in self.pieces():
            hash_zeros(digest, offset - position)
            digest.update(piece)
            position = offset + len(piece)
        hash_zeros(digest, self.realsize - position)
        return digest
