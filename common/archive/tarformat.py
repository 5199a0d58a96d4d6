"""POSIX (PAX) tar headers, built directly: the writer's hot path.

``tarfile.TarInfo.tobuf`` costs about 60 µs per member; this costs a few. Headers hold
what GNU tar writes with ``--format=posix --xattrs --acls``: a ustar header, preceded by
a PAX extended header when a value does not fit it (nanosecond mtimes, long or non-ASCII
names, big sizes or ids, extended attributes, ACLs).
"""

from __future__ import annotations

import os
import zlib
from dataclasses import dataclass, field

BLOCK = 512
REGTYPE = b"0"
LNKTYPE = b"1"
SYMTYPE = b"2"
DIRTYPE = b"5"
PAXTYPE = b"x"

_MAX_OCTAL_7 = 0o7777777
_MAX_OCTAL_11 = 0o77777777777


def _pax_record(key: bytes, value: bytes) -> bytes:
    body = b" " + key + b"=" + value + b"\n"
    length = len(body) + 1
    while len(str(length)) + len(body) != length:
        length = len(str(length)) + len(body)
    return str(length).encode() + body


def _octal(value: int, width: int) -> bytes:
    """``value`` as a ustar numeric field of ``width`` bytes. Raises ValueError when it
    does not fit (a field that spilled into the next would corrupt the header)."""
    field = b"%0*o\0" % (width - 1, value)
    if len(field) != width or value < 0:
        raise ValueError(f"{value} does not fit a tar field of {width} bytes")
    return field


def _field(data: bytes, width: int) -> bytes:
    return data[:width].ljust(width, b"\0")


def _ustar(
    name: bytes,
    kind: bytes,
    *,
    mode: int,
    uid: int,
    gid: int,
    size: int,
    mtime: int,
    linkname: bytes,
    uname: bytes,
    gname: bytes,
) -> bytes:
    """One ustar header block (its checksum filled in)."""
    header = b"".join(
        (
            _field(name, 100),
            _octal(mode & 0o7777, 8),
            _octal(uid, 8),
            _octal(gid, 8),
            _octal(size, 12),
            _octal(mtime, 12),
            b"        ",  # checksum placeholder: eight spaces
            kind,
            _field(linkname, 100),
            b"ustar\x0000",
            _field(uname, 32),
            _field(gname, 32),
            b"0000000\x00" * 2,  # devmajor, devminor
            bytes(155 + 12),
        )
    )
    checksum = b"%06o\0 " % sum(header)
    return header[:148] + checksum + header[156:]


def _is_utf8(raw: bytes) -> bool:
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _text_records(fields: tuple[tuple[bytes, bytes, int], ...]) -> tuple[list[bytes], bool]:
    """PAX records for names that do not fit their ustar field or are not ASCII, and
    whether one of them is not UTF-8 (then the header says ``hdrcharset=BINARY``)."""
    records: list[bytes] = []
    binary = False
    for key, raw, width in fields:
        if len(raw) > width or not raw.isascii():
            records.append(_pax_record(key, raw))
            binary = binary or not _is_utf8(raw)
    return records, binary


def _mtime_record(mtime_ns: int) -> tuple[bytes | None, int]:
    """A PAX ``mtime`` record when the time has nanoseconds or does not fit the ustar
    field (else None), and the value for that field."""
    seconds, nanos = divmod(mtime_ns, 1_000_000_000)
    fits = 0 <= seconds <= _MAX_OCTAL_11
    if not nanos and fits:
        return None, seconds
    whole, part = divmod(abs(mtime_ns), 1_000_000_000)
    text = ("-" if mtime_ns < 0 else "") + f"{whole}.{part:09d}".rstrip("0").rstrip(".")
    return _pax_record(b"mtime", text.encode()), seconds if fits else 0


def _fit_number(value: int, key: bytes, limit: int, records: list[bytes]) -> int:
    """The ustar field of a number: itself, or 0 with a PAX record when it is too big."""
    if value > limit:
        records.append(_pax_record(key, str(value).encode()))
        return 0
    return value


def header(
    name: str,
    kind: bytes,
    *,
    mode: int,
    uid: int = 0,
    gid: int = 0,
    size: int = 0,
    mtime_ns: int = 0,
    linkname: str = "",
    uname: str = "",
    gname: str = "",
    pax: list[tuple[bytes, bytes]] | None = None,
) -> bytes:
    """The header block(s) of one member; ``pax`` adds extra records (xattrs, ACLs).

    Names are str as ``os.fsdecode`` gives them; undecodable bytes survive unchanged.
    """
    raw_name = os.fsencode(name)
    raw_link = os.fsencode(linkname)
    raw_uname = uname.encode("utf-8", "surrogateescape")
    raw_gname = gname.encode("utf-8", "surrogateescape")
    records, binary = _text_records(
        (
            (b"path", raw_name, 100),
            (b"linkpath", raw_link, 100),
            (b"uname", raw_uname, 32),
            (b"gname", raw_gname, 32),
        )
    )
    mtime_record, mtime_field = _mtime_record(mtime_ns)
    if mtime_record is not None:
        records.append(mtime_record)
    main = _ustar(
        raw_name,
        kind,
        mode=mode,
        # evaluated in this order, which is the order of the records (as before)
        size=_fit_number(size, b"size", _MAX_OCTAL_11, records),
        uid=_fit_number(uid, b"uid", _MAX_OCTAL_7, records),
        gid=_fit_number(gid, b"gid", _MAX_OCTAL_7, records),
        mtime=mtime_field,
        linkname=raw_link,
        uname=raw_uname,
        gname=raw_gname,
    )
    records.extend(_pax_record(key, value) for key, value in pax or ())
    if not records:
        return main
    if binary:
        records.insert(0, _pax_record(b"hdrcharset", b"BINARY"))
    data = b"".join(records)
    short = os.fsencode(os.path.basename(name.rstrip("/")))[:80] or b"x"
    pax_header = _ustar(
        b"PaxHeaders/" + short,
        PAXTYPE,
        mode=0o644,
        uid=0,
        gid=0,
        size=len(data),
        mtime=mtime_field,  # (0 where the ustar field cannot hold it: the PAX record can)
        linkname=b"",
        uname=b"",
        gname=b"",
    )
    return pax_header + data + bytes((-len(data)) % BLOCK) + main


_NAME_ONLY: dict[tuple[tuple[bytes, bytes], ...], tuple[bytes, bytes, bytes]] = {}
"""Per list of records: the blocks of :func:`name_only_header` for the name ``x``."""


def name_only_header(name: str, pax: list[tuple[bytes, bytes]]) -> bytes:
    """``header(name, REGTYPE, mode=0, pax=pax)`` (owner, size and time 0: a ``same``
    member), made from a template when the name is ASCII, at most 100 bytes and not a
    directory's: only the two names and checksums change (about a third of the time).
    ``pax`` must fit one block."""
    raw = os.fsencode(name)
    if len(raw) > 100 or not raw.isascii() or raw.endswith(b"/"):
        return header(name, REGTYPE, mode=0, pax=pax)
    key = tuple(pax)
    blocks = _NAME_ONLY.get(key)
    if blocks is None:
        made = header("x", REGTYPE, mode=0, pax=pax)
        if len(made) != 3 * BLOCK:
            return header(name, REGTYPE, mode=0, pax=pax)
        blocks = _NAME_ONLY[key] = (made[:BLOCK], made[BLOCK : 2 * BLOCK], made[2 * BLOCK :])
    pax_block, data, main = blocks
    short = raw.rsplit(b"/", 1)[-1][:80] or b"x"
    return _renamed(pax_block, b"PaxHeaders/" + short) + data + _renamed(main, raw)


def _renamed(block: bytes, name: bytes) -> bytes:
    """A ustar header ``block`` with another name (at most 100 bytes), checksum anew."""
    head = name + bytes(100 - len(name)) + block[100:148] + b"        " + block[156:]
    checksum = b"%06o\0 " % (_byte_sum(head[:256]) + _byte_sum(head[256:]))
    return head[:148] + checksum + head[156:]


# -- reading ------------------------------------------------------------------------------

CHRTYPE = b"3"
BLKTYPE = b"4"
FIFOTYPE = b"6"
CONTTYPE = b"7"
GNU_LONGNAME = b"L"
GNU_LONGLINK = b"K"
_REGULAR = (REGTYPE, b"\0", CONTTYPE)
_SPECIAL = (CHRTYPE, BLKTYPE, FIFOTYPE)
MAX_META = 1 << 20  # a PAX or long-name record larger than this is not ours
MAX_SKIPPED = 1 << 20
"""Bytes of data all members but regular files may carry in one archive (pullback's
writer gives them none; data is never used, only skipped): an outside attack gave a
directory member a PAX size of 1 TiB of zeros, 32 MiB on the wire, which no limit
counted and the server decompressed past its host's deadline."""


class TarFormatError(ValueError):
    """The stream is not a tar archive this reader accepts (corrupt, truncated, foreign)."""


@dataclass(slots=True)
class Member:
    """One entry of the stream; ``name``/``linkname`` as ``os.fsdecode`` would give them."""

    name: str
    kind: bytes
    linkname: str = ""
    mode: int = 0
    uid: int = 0
    gid: int = 0
    size: int = 0
    """Bytes of data (0 for anything but a regular file)."""
    mtime_ns: int = 0
    uname: str = ""
    gname: str = ""
    pax: dict[bytes, bytes] = field(default_factory=dict)
    """The PAX records that came with it (xattrs, ACLs, sparse maps...)."""

    @property
    def is_file(self) -> bool:
        return self.kind in _REGULAR

    @property
    def is_dir(self) -> bool:
        return self.kind == DIRTYPE

    @property
    def is_symlink(self) -> bool:
        return self.kind == SYMTYPE

    @property
    def is_hardlink(self) -> bool:
        return self.kind == LNKTYPE

    def __repr__(self) -> str:
        return f"<Member {self.name!r} kind={self.kind!r} size={self.size}>"


def _number(field: bytes) -> int:
    if field[:1] and field[0] & 0x80:  # GNU base-256
        value = int.from_bytes(field[1:], "big")
        return -value if field[0] & 0x40 else value
    text = field.split(b"\0", 1)[0].strip(b" ")
    if not text:
        return 0
    try:
        return int(text, 8)
    except ValueError:
        raise TarFormatError(f"bad number field {field!r}") from None


def _string(field: bytes) -> bytes:
    return field.split(b"\0", 1)[0]


def _parse_pax(data: bytes) -> dict[bytes, bytes]:
    records: dict[bytes, bytes] = {}
    pos = 0
    while pos < len(data):
        space = data.find(b" ", pos)
        if space == -1:
            if not data[pos:].strip(b"\0"):
                break
            raise TarFormatError("bad PAX record")
        try:
            length = int(data[pos:space])
        except ValueError:
            raise TarFormatError("bad PAX record length") from None
        end = pos + length
        if length <= 0 or end > len(data) or data[end - 1 : end] != b"\n":
            raise TarFormatError("bad PAX record")
        key, sep, value = data[space + 1 : end - 1].partition(b"=")
        if not sep:
            raise TarFormatError("bad PAX record")
        records[key] = value
        pos = end
    return records


def _pax_int(pax: dict[bytes, bytes], key: bytes) -> int:
    """A PAX record that must be a non-negative decimal. Raises TarFormatError."""
    text = pax[key]
    if not text.isdigit() or len(text) > 20:
        raise TarFormatError(f"bad PAX {key.decode()} {text[:40]!r}")
    return int(text)


def _pax_mtime(text: bytes) -> int:
    negative = text.startswith(b"-")
    whole, _, part = text.lstrip(b"-").partition(b".")
    try:
        value = int(whole or b"0") * 1_000_000_000 + int((part[:9] or b"0").ljust(9, b"0"))
    except ValueError:
        raise TarFormatError(f"bad PAX mtime {text!r}") from None
    return -value if negative else value


class TarReader:
    """Iterate the members of an uncompressed tar stream, strictly and fast.

    After each member is yielded, read its data with :meth:`chunks` (unread data is
    skipped automatically). Raises TarFormatError for anything malformed or truncated.
    """

    def __init__(self, stream, chunk: int = 1 << 20):
        self.stream = stream
        self.chunk = chunk
        self._remaining = 0
        self._padding = 0
        self._skipped = 0

    def _read_exact(self, n: int) -> bytes:
        data = self.stream.read(n)
        if len(data) == n:
            return data
        parts = [data]
        got = len(data)
        while got < n:
            more = self.stream.read(n - got)
            if not more:
                raise TarFormatError("the archive ends in the middle (truncated)")
            parts.append(more)
            got += len(more)
        return b"".join(parts)

    def _skip(self, n: int) -> None:
        while n:
            step = min(n, self.chunk)
            self._read_exact(step)
            n -= step

    def chunks(self):
        """Yield the current member's data in chunks of at most ``chunk`` bytes."""
        while self._remaining:
            step = min(self._remaining, self.chunk)
            data = self._read_exact(step)
            self._remaining -= step
            yield data

    def _finish_member(self) -> None:
        if self._remaining:
            self._skip(self._remaining)
            self._remaining = 0
        if self._padding:
            self._read_exact(self._padding)
            self._padding = 0

    def _read_meta(self, size: int) -> bytes:
        if size > MAX_META:
            raise TarFormatError(f"an extended header of {size} bytes is not plausible")
        data = self._read_exact(size)
        self._read_exact((-size) % BLOCK)
        return data

    def _next_header(self) -> bytes | None:
        """The next header block, or None at the end-of-archive marker."""
        self._finish_member()
        block = self.stream.read(BLOCK)
        if len(block) < BLOCK:
            block += self._read_exact(BLOCK - len(block)) if block else b""
            if not block:
                raise TarFormatError("the archive ends without its end marker (truncated)")
        if block == bytes(BLOCK):
            return None
        _check_checksum(block)
        return block

    def __iter__(self):
        meta = _Meta()
        while (block := self._next_header()) is not None:
            kind = block[156:157]
            size = _number(block[124:136])
            if size < 0:
                raise TarFormatError("negative member size")
            if kind in _META:
                meta.reserve(size)  # before reading: the total is bounded, not just each
                meta.add(kind, self._read_meta(size))
                continue
            if kind == b"g":
                raise TarFormatError("global PAX headers are not accepted")
            if kind not in _MEMBER_TYPES:
                raise TarFormatError(f"member type {kind!r} is not accepted")
            member, size = _member(block, kind, size, meta)
            meta = _Meta()
            if kind not in _REGULAR:  # its data is skipped, never used: bounded
                self._skipped += size
                if self._skipped > MAX_SKIPPED:
                    raise TarFormatError(
                        f"members that are not regular files carry {self._skipped} bytes "
                        f"of data (at most {MAX_SKIPPED}: pullback's carry none)"
                    )
            self._remaining = size
            self._padding = (-size) % BLOCK
            yield member


_META = (PAXTYPE, GNU_LONGNAME, GNU_LONGLINK)
_MEMBER_TYPES = (*_REGULAR, LNKTYPE, SYMTYPE, DIRTYPE, *_SPECIAL)


class _Meta:
    """The extended headers (PAX records, GNU long names) read before a member."""

    def __init__(self):
        self.pax: dict[bytes, bytes] = {}
        self.long_name: bytes | None = None
        self.long_link: bytes | None = None
        self.size = 0

    def reserve(self, size: int) -> None:
        """Count an extended header of ``size`` bytes before it is read. Raises
        TarFormatError past 4 x MAX_META for one member."""
        self.size += size
        if self.size > 4 * MAX_META:
            raise TarFormatError("extended headers of one member are not plausible")

    def add(self, kind: bytes, data: bytes) -> None:
        """Take one extended header (counted with :meth:`reserve` first)."""
        if kind == PAXTYPE:
            self.pax.update(_parse_pax(data))
        elif kind == GNU_LONGNAME:
            self.long_name = _string(data)
        else:
            self.long_link = _string(data)


def _byte_sum(data: bytes) -> int:
    """The sum of ``data``'s bytes (at most 256 of them), in C: adler32's low half is 1
    plus that sum modulo 65521, and 256 bytes add up to 65280 at most."""
    assert len(data) <= 256
    return (zlib.adler32(data) & 0xFFFF) - 1


def _check_checksum(block: bytes) -> None:
    """Raises TarFormatError unless the header's checksum (unsigned or signed) is right."""
    stored = _number(block[148:156])
    unsigned = _byte_sum(block[:148]) + 256 + _byte_sum(block[156:412]) + _byte_sum(block[412:])
    if stored == unsigned:
        return
    high = sum(b for b in block[:148] if b > 127) + sum(b for b in block[156:] if b > 127)
    if stored != unsigned - 2 * high:
        raise TarFormatError("bad header checksum (corrupt archive)")


def _member_name(block: bytes, meta: _Meta) -> bytes:
    """A member's name: a sparse file's real one, the PAX path, the GNU long name, or the
    ustar name with its prefix."""
    pax = meta.pax
    if pax.get(b"GNU.sparse.major") == b"1" and b"GNU.sparse.name" in pax:
        return pax[b"GNU.sparse.name"]  # a sparse file: the ustar name is a placeholder
    if pax.get(b"path") or meta.long_name:
        return pax.get(b"path") or meta.long_name or b""
    name = _string(block[0:100])
    prefix = _string(block[345:500]) if block[257:262] == b"ustar" else b""
    return prefix + b"/" + name if prefix else name


def _member(block: bytes, kind: bytes, size: int, meta: _Meta) -> tuple[Member, int]:
    """The member a header block describes, the extended headers before it applied, and
    the size of the data that follows it in the stream."""
    pax = meta.pax
    if b"size" in pax:
        size = _pax_int(pax, b"size")
    mtime = pax.get(b"mtime")
    member = Member(
        name=os.fsdecode(_member_name(block, meta)),
        kind=kind,
        linkname=os.fsdecode(pax.get(b"linkpath") or meta.long_link or _string(block[157:257])),
        mode=_number(block[100:108]) & 0o7777,
        uid=_pax_int(pax, b"uid") if b"uid" in pax else _number(block[108:116]),
        gid=_pax_int(pax, b"gid") if b"gid" in pax else _number(block[116:124]),
        size=size if kind in _REGULAR else 0,
        mtime_ns=(
            _pax_mtime(mtime) if mtime is not None else _number(block[136:148]) * 1_000_000_000
        ),
        uname=(pax.get(b"uname") or _string(block[265:297])).decode("utf-8", "surrogateescape"),
        gname=(pax.get(b"gname") or _string(block[297:329])).decode("utf-8", "surrogateescape"),
        pax=pax,
    )
    _check_ranges(member)
    return member, size


MAX_ID = (1 << 32) - 2
"""The largest user or group id Linux has (``(uid_t) -1`` means "unchanged")."""
MAX_MTIME_NS = (1 << 63) * 1_000_000_000 - 1
"""Nanoseconds since the epoch a file time can be set to (``time_t``'s 2**63 seconds;
a file system holds less, ext4 to the year 2446, and its kernel driver clamps a time
past that; a time past 2262 no longer fits 64-bit nanoseconds: the tables that keep it
use :func:`.ordered.stat_number`)."""


def _check_ranges(member: Member) -> None:
    """Refuse owners and times no file can have (they would fail chown and utime
    deep inside the unpacker). Raises TarFormatError."""
    if not (0 <= member.uid <= MAX_ID and 0 <= member.gid <= MAX_ID):
        raise TarFormatError(
            f"{member.name!r}: an owner no file can have (uid or gid out of range)"
        )
    if not -MAX_MTIME_NS <= member.mtime_ns <= MAX_MTIME_NS:
        raise TarFormatError(f"{member.name!r}: a modification time no file can have")
