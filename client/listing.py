"""``pullback-client list``: the archives in the archive directory."""

from __future__ import annotations

import argparse
import json

from ..common.archive.directory import LocalArchive, list_archives
from ..common.errors import EXIT_OK
from ..common.units import human_size
from .config import ClientConfig


def archive_record(archive: LocalArchive) -> dict:
    """The JSON form of one archive: its sidecar plus where it lies."""
    record = {
        "name": archive.name,
        "path": str(archive.path),
        "stamp": archive.stamp,
        "size": archive.path.stat().st_size,
        "fetched": archive.fetched,
        "stored_by_server": archive.fetched or archive.marked,
        "complete": archive.complete,
    }
    if archive.sidecar is not None:
        record["sidecar"] = json.loads(archive.sidecar.to_json())
    if archive.problem:
        record["problem"] = archive.problem
    return record


def _where(archive: LocalArchive) -> str:
    """``fetched`` (moved aside), ``stored`` (the server said so; it stays offered until a
    newer archive exists) or ``ready`` (not stored yet)."""
    if archive.fetched:
        return "fetched"
    return "stored, kept" if archive.marked else "ready"


def render_table(found: list[LocalArchive]) -> str:
    if not found:
        return "no archives"
    rows = [("ARCHIVE", "SIZE", "STATUS", "SERVICES", "WHERE")]
    for archive in found:
        size = human_size(archive.path.stat().st_size)
        if archive.sidecar is None:
            status, services = "incomplete", archive.problem
        else:
            status = archive.sidecar.status
            failed = archive.sidecar.failed_services
            total = len(archive.sidecar.services)
            services = f"{total - len(failed)}/{total} ok"
            if failed:
                services += f" (failed: {', '.join(failed)})"
        rows.append((archive.name, size, status, services, _where(archive)))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    return "\n".join(
        "  ".join(col.ljust(widths[i]) for i, col in enumerate(row[:4])) + "  " + row[4]
        for row in rows
    )


def command(config: ClientConfig, args: argparse.Namespace) -> int:
    print(listing(config, args.json))
    return EXIT_OK


def listing(config: ClientConfig, as_json: bool) -> str:
    found = list_archives(config.archive_dir)
    if as_json:
        return json.dumps([archive_record(a) for a in found], indent=2)
    return render_table(found)
