"""Which archives a pull applies to reach the newest one: a pure function of the client's
listing and what staging holds (docs/architecture.md, *Incremental pulls*).

A full archive is applied alone. A delta needs its base: if staging holds it (by its
index), only the archives after it are applied; else the chain is followed back through
the listing to its full archive, which is applied first.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..common.archive import sidecar as sidecars
from ..common.archive.baseindex import IndexedTree
from ..common.archive.sidecar import MAX_CHAIN, BaseRef, Sidecar
from ..common.errors import ArchiveError
from ..common.protocol import Listing
from ..common.text import printable


@dataclass(frozen=True)
class Plan:
    """The archives to apply, oldest first; the last is the one stored."""

    archives: list[Sidecar] = field(default_factory=list)
    from_full: bool = True
    """The plan starts with a full archive (else with a delta onto staging's tree)."""
    store_only: bool = False
    """Staging already holds the newest archive (its store failed last time)."""
    problem: str = ""
    """Why the newest archive cannot be reached (then ``archives`` is empty)."""


def held_ref(held: IndexedTree | None) -> BaseRef | None:
    """What staging holds, as a delta names its base."""
    return BaseRef(held.archive, held.manifest_sha256) if held else None


def _sidecar(listing: Listing, name: str, host: str) -> Sidecar | None:
    """The validated sidecar of the listed archive ``name`` of ``host``, or None."""
    for entry in listing.archives:
        if isinstance(entry, dict) and entry.get("name") == name:
            try:
                side = sidecars.from_data(entry.get("sidecar"), expected_name=name)
            except (ArchiveError, TypeError, KeyError):
                return None
            if side.host != host or entry.get("size") != side.archive.size:
                return None
            return side
    return None


def plan(
    newest: Sidecar,
    listing: Listing,
    host: str,
    held: IndexedTree | None,
    refused: frozenset[str] = frozenset(),
) -> Plan:
    """How to reach ``newest`` when staging holds ``held`` (None: nothing usable).
    ``refused``: archives that failed their checksum too often: a chain through one of
    them cannot be applied."""
    info = newest.archive
    newest_name = printable(info.name, 120)
    if held_ref(held) == BaseRef(info.name, info.manifest_sha256) and info.manifest_sha256:
        return Plan([newest], from_full=False, store_only=True)
    chain = [newest]
    while chain[-1].archive.is_delta:
        base = chain[-1].archive.base
        assert base is not None  # the schema requires it of a delta
        if base == held_ref(held):
            return Plan(chain[::-1], from_full=False)
        if len(chain) >= MAX_CHAIN:
            return Plan(problem=f"the chain of {newest_name} is longer than {MAX_CHAIN} archives")
        previous = _sidecar(listing, base.name, host)
        name = printable(base.name, 120)
        if previous is None:
            return Plan(
                problem=f"{newest_name} is a delta, and its base {name} is not on the client "
                "(or its sidecar is not usable)"
            )
        if previous.archive.manifest_sha256 != base.manifest_sha256:
            return Plan(problem=f"the base {name} on the client is not the one a delta names")
        if previous.stamp >= chain[-1].stamp:
            return Plan(problem=f"the base {name} is not older than the delta built on it")
        if base.name in refused:
            return Plan(problem=f"the base {name} did not match its checksum in several pulls")
        chain.append(previous)
    return Plan(chain[::-1], from_full=True)
