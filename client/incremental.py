"""Whether a run makes a full archive or a delta, and the chain it extends
(docs/architecture.md, *Incremental pulls*).

A delta is made only against the newest complete archive of the archive directory, and
only when the file cache describes exactly that archive (name and manifest sha256): then
the server, holding that archive's tree, can apply it. Everything else makes a full.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
from dataclasses import dataclass

from ..common.archive import directory as archives
from ..common.archive.directory import LocalArchive, by_names, full_chain
from ..common.archive.filecache import FileCache
from ..common.archive.sidecar import LEAN_FORMAT, MAX_CHAIN, BaseRef
from ..common.clock import FUTURE_TOLERANCE
from ..common.units import human_duration, human_size
from .config import ClientConfig, IncrementalMode


@dataclass(frozen=True)
class Decision:
    """What this run makes: a delta against ``base``, or a full archive and why."""

    base: BaseRef | None
    reason: str

    @property
    def delta(self) -> bool:
        return self.base is not None


WAITING_FOR_SERVER = (
    "no server has said yet that it applies deltas (incremental.enabled: auto; a pullback "
    "server of 0.2 or later says so when it stores an archive)"
)


def makes_deltas(config: ClientConfig) -> bool:
    """Whether this client makes deltas now: ``enabled: true``, or ``auto`` once a server
    has said that it applies them (its mark in the archive directory)."""
    mode = config.incremental.mode
    if mode is IncrementalMode.AUTO:
        return archives.server_applies_deltas(config.archive_dir)
    return mode is IncrementalMode.ON


def makes_lean_deltas(config: ClientConfig) -> bool:
    """Whether this client's deltas are lean (sidecar format 3): a server has said that
    it applies them (its mark in the archive directory)."""
    return archives.server_applies_lean_deltas(config.archive_dir)


def decide(
    config: ClientConfig, cache: FileCache, now: dt.datetime, forced: str | None = None
) -> Decision:
    """Full or delta for this run; ``forced`` is a reason to make a full anyway. The old
    cache is opened in every case: a full archive uses its rows too (which files had
    chunk lists, the lists of unchanged bytes, hash states)."""
    unusable = cache.load()
    if forced:
        return Decision(None, forced)
    if not makes_deltas(config):
        return Decision(None, WAITING_FOR_SERVER)
    if unusable or cache.base is None:
        return Decision(None, unusable or "there is no file cache")
    current = own_archives(config, now)
    if not current:
        return Decision(None, "there is no archive to build on")
    newest = current[-1]
    assert newest.sidecar is not None
    info = newest.sidecar.archive
    if BaseRef(info.name, info.manifest_sha256) != cache.base:
        return Decision(None, f"the file cache describes {cache.base.name}, not the newest archive")
    chain = full_chain(newest, by_names(current))
    due = full_due(config, chain, now) if chain else f"the chain of {newest.name} is broken"
    if due:
        return Decision(None, due)
    return Decision(cache.base, f"a delta against {newest.name}")


def own_archives(config: ClientConfig, now: dt.datetime) -> list[LocalArchive]:
    """The complete archives this host made (not another host name's, not dated ahead
    of the clock), oldest first."""
    horizon = now + FUTURE_TOLERANCE
    return [
        a
        for a in archives.list_archives(config.archive_dir, include_fetched=False)
        if a.complete and a.host == config.hostname and a.created <= horizon
    ]


def _whole(archive: LocalArchive) -> bool:
    """Whether the archive file still has the size its sidecar announces."""
    try:
        size = archive.path.stat().st_size
    except OSError:
        return False
    return archive.sidecar is not None and size == archive.sidecar.archive.size


def full_due(config: ClientConfig, chain: list[LocalArchive], now: dt.datetime) -> str | None:
    """Why the chain (full archive first) should end with a full archive now, or None."""
    damaged = [a.name for a in chain if not _whole(a)]
    if damaged:
        return f"{damaged[0]} of the chain is damaged (its size differs from its sidecar)"
    full = chain[0]
    assert full.sidecar is not None
    if not makes_lean_deltas(config) and any(
        a.sidecar is not None and a.sidecar.format == LEAN_FORMAT for a in chain
    ):
        # (an older server passes lean deltas over: a format-2 delta on one is a delta
        # on an archive it never stored; helper-166 F3, going back to 0.2)
        return (
            f"the chain since {full.name} holds lean deltas, and no server says now that "
            f"it applies them ({archives.MARKS_DIR}/{archives.APPLIES_LEAN_DELTAS} is gone)"
        )
    age = (now - full.created).total_seconds()
    inc = config.incremental
    if age >= inc.full_every:
        return (
            f"the full archive {full.name} is {human_duration(age)} old "
            f"(full_every {human_duration(inc.full_every)})"
        )
    deltas = sum(a.sidecar.archive.size for a in chain[1:] if a.sidecar)
    if deltas > inc.full_ratio * full.sidecar.archive.size:
        return (
            f"the deltas since {full.name} add up to {human_size(deltas)}, more than "
            f"full_ratio {inc.full_ratio:g} of it"
        )
    if len(chain) >= MAX_CHAIN:
        return f"the chain since {full.name} has {len(chain)} archives (at most {MAX_CHAIN})"
    return None


def forced_full(config: ClientConfig, asked: bool, use_up: bool = True) -> str | None:
    """Why this run must be a full archive whatever the cache says (``asked``: ``--full``;
    the server's request, used up unless ``use_up`` is False, as a dry run wants), or
    None."""
    requested = (
        take_full_request(config)
        if use_up
        else (config.archive_dir / archives.MARKS_DIR / archives.WANT_FULL).exists()
    )
    if asked:
        return "asked for with --full"
    return "the server asked for a full archive" if requested else None


def take_full_request(config: ClientConfig) -> bool:
    """Whether the server asked for a full archive; the request is used up."""
    path = config.archive_dir / archives.MARKS_DIR / archives.WANT_FULL
    try:
        os.unlink(path)
    except FileNotFoundError:
        return False
    except (IsADirectoryError, PermissionError):
        with contextlib.suppress(OSError):
            os.rmdir(path)
    return True
