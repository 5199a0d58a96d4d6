"""Hand-made archives (hostile or odd) published into a client's archive directory."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import subprocess
from dataclasses import dataclass
from pathlib import Path

from pullback.common.archive import tarformat
from pullback.common.archive.manifest import MANIFEST_NAME, format_line

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


def publish(archive_dir: Path, host: str, tar: bytes, when: dt.datetime | None = None) -> Path:
    """Compress ``tar`` with zstd and publish it with a valid sidecar; return the archive."""
    when = when or dt.datetime.now(dt.UTC).replace(microsecond=0)
    stamp = when.strftime("%Y%m%dT%H%M%SZ")
    name = f"{host}-{stamp}.tar.zst"
    archive_dir.mkdir(parents=True, exist_ok=True)
    path = archive_dir / name
    data = subprocess.run(["zstd", "-q", "-c"], input=tar, capture_output=True, check=True).stdout
    path.write_bytes(data)
    sidecar = {
        "format": 1,
        "host": host,
        "stamp": stamp,
        "created": when.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "pullback_version": "test",
        "status": "ok",
        "archive": {
            "name": name,
            "size": len(data),
            "sha256": hashlib.sha256(data).hexdigest(),
            "compression": "zstd",
        },
        "services": [{"name": "x", "status": "ok"}],
    }
    path.with_name(name + ".json").write_text(json.dumps(sidecar))
    return path
