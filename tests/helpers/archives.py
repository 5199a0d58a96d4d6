"""Hand-made archives (hostile or odd) published into a client's archive directory: full
archives (sidecar format 1) and delta archives (format 2, naming their base; the members
of docs/archive-format.md, *Delta archives*)."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

from pullback.common.archive import tarformat
from pullback.common.archive.deltaops import BASE, BASE_KEY, DATA_KEY, DELTA, REALSIZE_KEY
from pullback.common.archive.manifest import MANIFEST_NAME, format_line
from pullback.common.archive.sidecar import ArchiveInfo, ArchiveKind, BaseRef, Sidecar
from pullback.common.outcome import Status

MTIME = 1_700_000_000 * 1_000_000_000


@dataclass
class Entry:
    name: str
    kind: bytes = tarformat.REGTYPE
    data: bytes = b""
    linkname: str = ""
    mode: int = 0o644
    in_manifest: bool = True
    pax: list[tuple[bytes, bytes]] | None = None
    """Extra PAX records (xattrs, ACLs)."""


def build_tar(entries: list[Entry], manifest: bool = True) -> bytes:
    out = bytearray()
    lines = []
    digests: dict[str, str] = {}
    for entry in entries:
        size = len(entry.data) if entry.kind == tarformat.REGTYPE else 0
        out += tarformat.header(
            entry.name,
            entry.kind,
            mode=entry.mode,
            size=size,
            mtime_ns=MTIME,
            linkname=entry.linkname,
            uname="root",
            gname="root",
            pax=entry.pax,
        )
        if size:
            out += entry.data + bytes((-size) % 512)
        if entry.kind == tarformat.REGTYPE:
            digests[entry.name] = hashlib.sha256(entry.data).hexdigest()
            if entry.in_manifest:
                lines.append(format_line(entry.name, digests[entry.name]))
        elif entry.kind == tarformat.LNKTYPE and entry.linkname in digests:
            lines.append(format_line(entry.name, digests[entry.linkname]))
    if manifest:
        data = b"".join(lines)
        out += tarformat.header(
            MANIFEST_NAME, tarformat.REGTYPE, mode=0o644, size=len(data), mtime_ns=MTIME
        )
        out += data + bytes((-len(data)) % 512)
    out += bytes(1024)
    return bytes(out)


def publish(
    archive_dir: Path,
    host: str,
    tar: bytes,
    when: dt.datetime | None = None,
    *,
    base: BaseRef | None = None,
    manifest_sha256: str | None = None,
) -> Path:
    """Compress ``tar`` with zstd and publish it with a valid sidecar; return the archive.

    With ``base`` the sidecar is a delta's (format 2, ``kind: delta``, naming ``base``);
    its ``manifest_sha256`` is ``manifest_sha256`` if given, else the digest of ``tar``'s
    manifest member (:func:`manifest_digest`; that of no bytes when there is none). A full
    archive's sidecar (format 1) carries ``kind`` and ``manifest_sha256`` only when
    ``manifest_sha256`` is given.
    """
    when = when or dt.datetime.now(dt.UTC).replace(microsecond=0)
    stamp = when.strftime("%Y%m%dT%H%M%SZ")
    name = f"{host}-{stamp}.tar.zst"
    archive_dir.mkdir(parents=True, exist_ok=True)
    path = archive_dir / name
    data = subprocess.run(["zstd", "-q", "-c"], input=tar, capture_output=True, check=True).stdout
    path.write_bytes(data)
    info: dict = {
        "name": name,
        "size": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
        "compression": "zstd",
    }
    if base is not None:
        digest = manifest_sha256 or manifest_digest(tar) or hashlib.sha256(b"").hexdigest()
        info.update(
            kind="delta",
            manifest_sha256=digest,
            base={"name": base.name, "manifest_sha256": base.manifest_sha256},
        )
    elif manifest_sha256 is not None:
        info.update(kind="full", manifest_sha256=manifest_sha256)
    sidecar = {
        "format": 1 if base is None else 2,
        "host": host,
        "stamp": stamp,
        "created": when.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "pullback_version": "test",
        "status": "ok",
        "archive": info,
        "services": [{"name": "x", "status": "ok"}],
    }
    path.with_name(name + ".json").write_text(json.dumps(sidecar))
    return path


# -- delta archives -----------------------------------------------------------------------


def _manifest_at(tar: bytes) -> int | None:
    """Where the header of ``tar``'s manifest member begins when the manifest is its last
    member, a plain ustar header right before the two zero blocks that end the archive
    (as :func:`build_tar` and the hostile corpus write it); None otherwise."""
    block = tarformat.BLOCK
    end = len(tar) - 2 * block
    if end < block or len(tar) % block or tar[end:] != bytes(2 * block):
        return None
    for start in range(end - block, -1, -block):
        head = tar[start : start + block]
        if head[:100].rstrip(b"\0") != MANIFEST_NAME.encode() or head[156:157] != b"0":
            continue
        try:
            size = int(head[124:136].rstrip(b"\0 ") or b"0", 8)
        except ValueError:
            return None
        return start if start + block + size + (-size) % block == end else None
    return None


def manifest_digest(tar: bytes) -> str | None:
    """The sha256 of ``tar``'s manifest member's bytes (what a delta's sidecar names as
    its ``manifest_sha256``), or None when ``tar`` does not end with a manifest."""
    start = _manifest_at(tar)
    if start is None:
        return None
    size = int(tar[start + 124 : start + 136].rstrip(b"\0 ") or b"0", 8)
    data = tar[start + tarformat.BLOCK : start + tarformat.BLOCK + size]
    return hashlib.sha256(data).hexdigest()


def with_first(tar: bytes, first: bytes, line: bytes = b"") -> bytes:
    """``tar`` with the member ``first`` (its header blocks and data) before its first
    member and ``line`` added to its manifest; returns the new archive. A ``tar`` that does
    not end with a manifest (:func:`manifest_digest` is None) only gets ``first``."""
    start = _manifest_at(tar)
    if start is None:
        return first + tar
    size = int(tar[start + 124 : start + 136].rstrip(b"\0 ") or b"0", 8)
    lines = tar[start + tarformat.BLOCK : start + tarformat.BLOCK + size] + line
    manifest = tarformat.header(
        MANIFEST_NAME, tarformat.REGTYPE, mode=0o644, size=len(lines), mtime_ns=MTIME
    )
    padding = bytes((-len(lines)) % tarformat.BLOCK)
    return first + tar[:start] + manifest + lines + padding + bytes(2 * tarformat.BLOCK)


def file_member(
    name: str, data: bytes = b"", pax: list[tuple[bytes, bytes]] | None = None, mode: int = 0o644
) -> bytes:
    """One regular-file member (header, ``data``, padding); returns its bytes."""
    head = tarformat.header(
        name,
        tarformat.REGTYPE,
        mode=mode,
        size=len(data),
        mtime_ns=MTIME,
        uname="root",
        gname="root",
        pax=pax,
    )
    return head + data + bytes((-len(data)) % tarformat.BLOCK)


def base_member(name: str, base_name: str | bytes | None = None) -> bytes:
    """A delta's member whose bytes are its base file's (``PULLBACK.data=base``), that of
    ``base_name`` (``PULLBACK.base``) when given; returns its bytes."""
    pax = [(DATA_KEY, BASE)]
    if base_name is not None:
        raw = base_name if isinstance(base_name, bytes) else os.fsencode(base_name)
        pax.append((BASE_KEY, raw))
    return file_member(name, pax=pax)


def delta_member(
    name: str, stream: bytes, realsize: int | bytes, base_name: str | None = None
) -> bytes:
    """A delta's member made of a PBD1 ``stream`` (``PULLBACK.data=delta``) announcing
    ``realsize`` (a number, or the record's raw bytes); returns its bytes."""
    size = realsize if isinstance(realsize, bytes) else b"%d" % realsize
    pax = [(DATA_KEY, DELTA), (REALSIZE_KEY, size)]
    if base_name is not None:
        pax.append((BASE_KEY, os.fsencode(base_name)))
    return file_member(name, stream, pax=pax)


def listed_sidecar(name: str, stamp: str, base: str = "", ok: bool = True) -> Sidecar:
    """A valid sidecar of ``web1``'s archive ``name`` (10 bytes, its digests made up),
    for tests of what the archive directory's listing and retention decide: a delta on
    the archive ``base`` when given, a failed service unless ``ok``."""
    info = ArchiveInfo(
        name,
        10,
        "0" * 64,
        "zstd",
        kind=ArchiveKind.DELTA if base else ArchiveKind.FULL,
        manifest_sha256="1" * 64,
        base=BaseRef(base, "1" * 64) if base else None,
    )
    status = Status.OK if ok else Status.PARTIAL
    return Sidecar("web1", stamp, "2026-01-01T00:00:00Z", "0.3.0", status, info, [])


def unpacked(archive: Path, staging: Path) -> Path:
    """``staging``, made of ``archive`` by the server's unpacking (which refuses a
    member below a symlink or a file, and a name written as two kinds: HostileArchive,
    raised). The compression is told by the name's suffix."""
    from pullback.common.archive.reader import TarStream
    from pullback.common.archive.unpack import Unpacker

    compression = {".zst": "zstd", ".gz": "gzip", ".tar": "none"}[archive.suffix]
    with Unpacker(staging) as unpacker, open(archive, "rb") as raw:
        with TarStream(raw, compression) as stream:
            for member in stream.members():
                unpacker.add(member, stream.read_data(member))
        unpacker.finish()
    return staging
