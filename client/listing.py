"""``pullback-client list``: the archives in the archive directory."""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path

from ..common.archive.directory import (
    LocalArchive,
    base_of,
    broken_chains,
    by_names,
    list_archives,
    newest_stored,
)
from ..common.archive.sidecar import LEFT_OUT, Sidecar
from ..common.errors import EXIT_OK
from ..common.outcome import Status
from ..common.text import few, printable
from ..common.units import human_size
from .config import ClientConfig


def archive_record(archive: LocalArchive, stored: _Stored) -> dict:
    """The JSON form of one archive: its sidecar plus where it lies (``where``: the
    table's WHERE, see :func:`_where`)."""
    record = {
        "name": archive.name,
        "path": str(archive.path),
        "stamp": archive.stamp,
        "size": _size(archive),
        "fetched": archive.fetched,
        "stored_by_server": archive.fetched or archive.marked,
        "complete": archive.complete,
        "kind": _kind(archive),
        "where": _where(archive, stored),
        "chain_broken": archive.name in stored.broken,
    }
    if _other_host(archive, stored):
        record["made_as"] = archive.host
    if archive.sidecar is not None:
        record["sidecar"] = json.loads(archive.sidecar.to_json())
    if archive.problem:
        record["problem"] = archive.problem
    return record


def _size(archive: LocalArchive) -> int | None:
    """The archive's size; None when it went between the listing and now (a run that
    holds the directory lock moved or deleted it: ``list`` takes no lock)."""
    try:
        return archive.path.stat().st_size
    except FileNotFoundError:
        return None


def _kind(archive: LocalArchive) -> str:
    """``full``, ``delta``, or ``-`` (no valid sidecar says)."""
    if archive.sidecar is None:
        return "-"
    return "delta" if archive.sidecar.archive.is_delta else "full"


def _other_host(archive: LocalArchive, stored: _Stored) -> bool:
    """Made under another host name than this client's (``hostname:`` changed): the
    serve endpoint does not offer it."""
    return bool(stored.hostname) and archive.host != stored.hostname


def _where_shown(archive: LocalArchive, stored: _Stored) -> str:
    """The table's WHERE: :func:`_where`, with why an archive of another host name is
    not offered, and a delta whose chain is broken said (an outside test saw a delta
    whose full archive was gone listed as any other)."""
    where = _where(archive, stored)
    if _other_host(archive, stored) and where == "not offered":
        where += f" (made as {archive.host})"
    if archive.name in stored.broken:
        where += "; chain broken"
    return where


def _where(archive: LocalArchive, stored: _Stored) -> str:
    """``fetched`` (moved aside), ``stored, kept`` (the server said so; it stays offered
    while retention keeps it), ``superseded`` (never stored, an archive newer than it
    was, and no archive present is built on it: no pull takes it; retention removes it
    in its turn, past ``keep_last`` and ``keep_days`` or with deltas once a newer full
    archive is here, unless it is the newest archive in which every service
    succeeded), ``base, kept`` (never stored itself, older than the newest stored, and a
    newer archive is built on it: a pull from its full archive applies it; an outside test
    read "ready" as "will be stored"), ``not offered``
    (no valid sidecar, or made under another host name: no pull takes it) or ``ready``
    (not stored yet)."""
    if archive.fetched:
        return "fetched"
    if archive.marked:
        return "stored, kept"
    if archive.sidecar is None or _other_host(archive, stored):
        return "not offered"
    if archive.stamp < stored.newest:  # never stored itself: no pull takes it alone
        return "base, kept" if archive.name in stored.bases else "superseded"
    return "ready"


@dataclass(frozen=True)
class _Stored:
    """What tells a superseded archive: the newest stored stamp, and the archives a
    newer one is built on (a pull from its full archive takes them)."""

    newest: str = ""
    bases: frozenset[str] = frozenset()
    broken: frozenset[str] = frozenset()
    """Deltas whose chain here does not reach a full archive."""
    hostname: str = ""
    """This client's host name ("": not known)."""


def _stored(found: list[LocalArchive], archive_dir: Path, hostname: str = "") -> _Stored:
    complete = [a for a in found if a.complete]
    by_name = by_names(complete)
    # an archive in another's chain is the direct, older base of one archive in it
    bases = {base.name for a in complete if (base := base_of(a, by_name)) is not None}
    broken = broken_chains(complete, by_name)
    return _Stored(newest_stored(archive_dir), frozenset(bases), frozenset(broken), hostname)


def render_table(found: list[LocalArchive], stored: _Stored) -> str:
    if not found:
        return "no archives"
    rows = [("ARCHIVE", "KIND", "SIZE", "STATUS", "SERVICES", "WHERE")]
    for archive in found:
        found_size = _size(archive)
        size = "gone" if found_size is None else human_size(found_size)
        if archive.sidecar is None:
            status, services = "incomplete", archive.problem
        else:
            status = archive.sidecar.status
            services = _services(archive.sidecar)
        where = _where_shown(archive, stored)
        rows.append((archive.name, _kind(archive), size, status, services, where))
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    return "\n".join(
        "  ".join(col.ljust(widths[i]) for i, col in enumerate(row[:5])) + "  " + row[5]
        for row in rows
    )


def _services(sidecar: Sidecar) -> str:
    """``2/3 ok (failed: db)``; services a ``run --service`` left out are said so."""
    reports = sidecar.services
    failed = [
        printable(s.name, 64) for s in reports if s.status != Status.OK and s.error != LEFT_OUT
    ]
    left = [printable(s.name, 64) for s in reports if s.status != Status.OK and s.error == LEFT_OUT]
    said = f"{len(reports) - len(failed) - len(left)}/{len(reports)} ok"
    why = [f"failed: {few(failed)}"] * bool(failed) + [f"left out: {few(left)}"] * bool(left)
    return said + (f" ({'; '.join(why)})" if why else "")


def command(config: ClientConfig, args: argparse.Namespace) -> int:
    print(listing(config, args.json))
    return EXIT_OK


def listing(config: ClientConfig, as_json: bool) -> str:
    found = list_archives(config.archive_dir)
    stored = _stored(found, config.archive_dir, config.hostname)
    if as_json:
        return json.dumps([archive_record(a, stored) for a in found], indent=2)
    return render_table(found, stored)
