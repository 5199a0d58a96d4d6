"""Storage backends: one small interface (:class:`Backend`), restic and borg behind it.

:class:`~.base.RepositoryBackend` holds what both share; :mod:`.restic` and :mod:`.borg`
build their tools' argv with pure functions, unit-tested for plain equality.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from ...common import secrets
from ...common.archive.sidecar import MORE_FAILED
from ...common.clock import FUTURE_TOLERANCE, utc_now
from ...common.runner import Runner
from ..config import BackendConfig, HostConfig
from .errors import BackendError, IncompleteStore, RepositoryLocked, RepositoryMissing
from .location import Location, Role


@dataclass(frozen=True)
class Snapshot:
    id: str
    time: dt.datetime
    stamp: str | None
    """The archive stamp the snapshot was made from (pullback's own snapshots)."""
    failed: tuple[str, ...] = ()
    """The services that failed on the client in its archive: the snapshot is partial."""
    adopted: bool = False
    """Made by another program (backup-suite) and adopted (``hosts[].adopt_host``): its
    own layout (``<type>/<name>/...``), no manifest; its stamp is backup-suite's
    ``YYYYmmdd_HHMMSS`` tag (the client's local time), never a pullback stamp."""
    tree: str | None = None
    """restic: the snapshot's root tree: a copy's is its original's (same content)."""
    original: str | None = None
    """restic: the id of the snapshot this one was copied from (``restic copy``)."""
    reads_ctime: bool = True
    """restic: made by a store that compared ctime over a clean parent (its CTIME_TAG);
    False for an older pullback's snapshot, which may hold a file's older bytes."""
    fingerprint: str = ""
    """borg: the archive's id, which ``borg recreate`` or ``rename`` change under the
    same name (the ransomware guard compares it); "" where the id is the content, as
    restic's is."""
    full_id: str = ""
    """restic: the snapshot's whole id (64 hex digits, as ``restic snapshots --json``
    prints it), of which ``id`` is the short one; "" for borg."""

    def failed_service(self, service: str) -> bool:
        """Whether ``service`` failed on the client in this snapshot's archive, or may
        have (more services failed than the snapshot names: ``MORE_FAILED``)."""
        return service in self.failed or MORE_FAILED in self.failed


def plausible(snapshots: Sequence[Snapshot]) -> list[Snapshot]:
    """``snapshots`` but those dated over FUTURE_TOLERANCE ahead of now (a wrong clock, a
    forged snapshot): never taken for the newest by a pull, ``restore latest`` or the
    drill (an outside attack saw a snapshot dated two days ahead restored and drilled
    in place of the real newest)."""
    limit = utc_now() + FUTURE_TOLERANCE
    return [s for s in snapshots if s.time <= limit]


def named(snapshots: Sequence[Snapshot], wanted: str) -> list[Snapshot]:
    """The snapshots ``wanted`` names, as ``restore --snapshot`` and ``verify --snapshot``
    take it: those whose id (restic's short or whole one) starts with it, or whose
    archive stamp is it (an empty ``wanted`` names none)."""
    if not wanted:
        return []
    return [s for s in snapshots if (s.full_id or s.id).startswith(wanted) or s.stamp == wanted]


@dataclass(frozen=True)
class SnapshotSpec:
    """What a new snapshot is made of: the archive's stamp and time, and the services that
    failed in it (marked on the snapshot: restic tags, a borg comment)."""

    stamp: str
    when: dt.datetime
    failed: tuple[str, ...] = ()
    read_all: bool = False
    """Read every file of staging again instead of trusting the parent snapshot (restic
    ``--force``): the host's newest snapshot was made by an older pullback, which may
    have kept a file's older bytes (see :func:`.restic.backup_args`)."""


@dataclass(frozen=True)
class Change:
    """What changed from one snapshot of a host to the next, as the tool counts it."""

    files_before: int
    """Entries of the older snapshot (files and directories)."""
    changed: int
    """Entries whose content or metadata changed."""
    removed: int
    """Entries of the older snapshot gone from the newer."""
    bytes_before: int
    bytes_after: int
    bytes_removed: int = 0
    """Bytes of the older snapshot's data that the newer no longer holds as they were
    (rewritten, encrypted, deleted)."""

    @property
    def changed_share(self) -> float:
        """Changed and removed entries over the older snapshot's entries, at most 1 (a
        count of them may hold entries the older's count has not: "102% of 50")."""
        return min(1.0, (self.changed + self.removed) / max(1, self.files_before))

    @property
    def rewritten_share(self) -> float:
        """Bytes of the older snapshot's data no longer there as they were, as a share."""
        if self.bytes_before <= 0:
            return 0.0
        return min(1.0, self.bytes_removed / self.bytes_before)

    @property
    def shrink(self) -> float:
        """How much smaller the newer snapshot's data is, as a share of the older's."""
        if self.bytes_before <= 0:
            return 0.0
        return max(0.0, 1 - self.bytes_after / self.bytes_before)


@dataclass(frozen=True)
class ForgetResult:
    kept: list[str]
    removed: list[str]


@dataclass(frozen=True)
class StoreResult:
    snapshot_id: str
    bytes_added: int
    duration: float
    peak_rss: int = 0
    """Highest resident memory of the restic/borg process that stored it, in bytes."""
    warnings: tuple[str, ...] = ()
    """What the tool warned of while it stored the snapshot (borg's exit 1), in words
    fit for a report."""


class Backend(Protocol):
    """What the pull pipeline needs from a repository of one host."""

    name: str

    def location(self) -> Location:
        """Where the host's repository is for this backend's role, its password masked
        in ``shown``. Raises BackendError for a location file it cannot use."""

    def repository(self) -> str:
        """Where the host's repository is (a path or URL), as words may show it."""

    def prepare(self, create: bool = True) -> None:
        """Make sure the repository exists (creating it when allowed) and opens.

        Raises RepositoryMissing (missing, and ``init: false`` or not ``create``), or
        BackendError (wrong password, unreachable, ...).
        """

    def snapshots(self) -> list[Snapshot]:
        """pullback's snapshots of this host, oldest first."""

    def repository_id(self) -> str | None:
        """The repository's own id (two locations that give the same one are one
        repository), or None where the tool has none that tells two apart. Raises
        BackendError."""

    def strangers(self, claimed: Sequence[tuple[str, str | None]]) -> dict[str, int]:
        """The host names of the repository's snapshots that none of ``claimed`` (the
        name and adopt_host of each host sharing it) owns, and how many each has.
        Raises BackendError."""

    def adopted_services(self, snapshot: Snapshot) -> list[str]:
        """The ``<type>/<name>`` directories of the adopted backup-suite ``snapshot``,
        sorted. Raises BackendError."""

    def store(self, staging: Path, spec: SnapshotSpec, timeout: float) -> StoreResult:
        """Store ``staging`` as one snapshot of ``spec`` (stamp, time, failed services).

        Raises IncompleteStore or BackendError; a failed store leaves no snapshot.
        """

    def unlock(self) -> str:
        """Remove locks of processes that are gone (never a live one); say what was done."""

    def forget(
        self, policy: dict, before_removing: Callable[[ForgetResult], None] | None = None
    ) -> ForgetResult:
        """Apply a retention ``policy`` (keep_last/hourly/daily/weekly/monthly/yearly/within)
        to this host's snapshots; return what was kept and removed. ``before_removing``
        is called with exactly that, once it is known and before anything is removed
        (the ransomware guard records it: a run stopped part way then leaves a record
        the next guard reads right)."""

    def prune(self) -> None:
        """Free the space of forgotten snapshots (restic prune / borg compact)."""

    def check(self, part: int, parts: int, duration: float, extra: Sequence[str] = ()) -> str:
        """Check the repository, reading part ``part`` of ``parts`` of the data (restic) or
        for ``duration`` seconds, resuming (borg); ``extra`` arguments go to the tool as
        they are. Returns a summary; raises BackendError."""

    def size(self) -> int:
        """Bytes the repository occupies."""

    def restore(self, snapshot: Snapshot, target: Path, includes: list[str]) -> None:
        """Restore ``includes`` (paths relative to the snapshot root; all when empty) of
        ``snapshot`` so that ``target`` holds ``services/`` and ``MANIFEST.sha256``."""

    def restore_size(self, snapshot: Snapshot) -> int | None:
        """Bytes of file data a whole restore of ``snapshot`` writes (for its progress),
        or None when the tool cannot say."""

    def copy_from(self, source: Backend, snapshots: Sequence[Snapshot], timeout: float) -> None:
        """Copy ``snapshots`` of ``source`` (the host's primary repository) into this one
        (its second copy); only data this one lacks travels. Raises BackendError."""

    def make_once(self, make: Callable[[], None]) -> bool:
        """Run ``make`` unless the repository opens, under a lock keyed by its location;
        returns whether it ran."""

    def init_copy(self, source: Backend) -> None:
        """Make this repository as a copy of ``source`` (its chunker parameters, so copied
        data deduplicates as it did there). Raises BackendError."""

    def env(self) -> dict[str, str]:
        """The tool's environment for this repository (its location and password by
        file, never the secrets themselves)."""

    def changes(self, older: Snapshot, newer: Snapshot) -> Change:
        """What changed from ``older`` to ``newer`` (the ransomware guard's measure).
        Raises BackendError."""


def make_backend(
    config: BackendConfig,
    host: HostConfig,
    state_dir: Path,
    runner: Runner,
    lock_wait: float = 1800.0,
    role: Role = Role.PULL,
) -> Backend:
    """The backend of ``config.type`` for one host, reaching its repository where
    ``role`` does (:mod:`.location`); a live repository lock is waited for up to
    ``lock_wait`` seconds."""
    if config.type == "restic":
        from .restic import ResticBackend

        return ResticBackend(config, host, state_dir, runner, lock_wait, role)
    from .borg import BorgBackend

    return BorgBackend(config, host, state_dir, runner, lock_wait, role)


def read_password(path: Path) -> str:
    """The repository password (see :func:`pullback.common.secrets.read_secret_file`).

    Raises BackendError.
    """
    try:
        return secrets.read_secret_file(path, "password file")
    except secrets.SecretFileError as exc:
        raise BackendError(str(exc)) from None


__all__ = [
    "Backend",
    "BackendError",
    "Change",
    "ForgetResult",
    "IncompleteStore",
    "RepositoryLocked",
    "RepositoryMissing",
    "Role",
    "Snapshot",
    "SnapshotSpec",
    "StoreResult",
    "make_backend",
    "read_password",
]
