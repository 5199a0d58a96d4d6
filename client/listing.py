"""``pullback-client list``: the archives in the archive directory."""

from __future__ import annotations

import argparse
import json

from ..common.archive.directory import LocalArchive, list_archives
from ..common.errors import EXIT_OK
from ..common.units import human_size
from .config import ClientConfig


def archive_record(archive: LocalArchive, newest_stored: str = "") -> dict:
    """The JSON form of one archive: its sidecar plus where it lies (``where``: the
    table's WHERE, see :func:`_where`)."""
    record = {
        "name": archive.name,
        "path": str(archive.path),
        "stamp": archive.stamp,
        "size": archive.path.stat().st_size,
        "fetched": archive.fetched,
        "stored_by_server": archive.fetched or archive.marked,
        "complete": archive.complete,
        "where": _where(archive, newest_stored),
    }
    if archive.sidecar is not None:
        record["sidecar"] = json.loads(archive.sidecar.to_json())
    if archive.problem:
        record["problem"] = archive.problem
    return record


def _where(archive: LocalArchive, newest_stored: str) -> str:
    """``fetched`` (moved aside), ``stored, kept`` (the server said so; it stays offered
    until a newer archive exists), ``superseded`` (never stored, and an archive newer
    than it was, stamped ``newest_stored``: no pull takes it now; retention removes it)
    or ``ready`` (not stored yet)."""
    if archive.fetched:
        return "fetched"
    if archive.marked:
        return "stored, kept"
    return "superseded" if archive.stamp < newest_stored else "ready"


def _newest_stored(found: list[LocalArchive]) -> str:
    """The stamp of the newest archive the server stored ("" when none)."""
    return max((a.stamp for a in found if a.fetched or a.marked), default="")


def render_table(found: list[LocalArchive]) -> str:
    if not found:
        return "no archives"
    rows = [("ARCHIVE", "SIZE", "STATUS", "SERVICES", "WHERE")]
    newest_stored = _newest_stored(found)
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
        rows.append((archive.name, size, status, services, _where(archive, newest_stored)))
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
        newest_stored = _newest_stored(found)
        return json.dumps([archive_record(a, newest_stored) for a in found], indent=2)
    return render_table(found)
