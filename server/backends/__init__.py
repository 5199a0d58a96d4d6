"""Storage backends: one small interface, restic and borg behind it."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from ...common.errors import PullbackError
from ..config import BackendConfig, HostConfig


class BackendError(PullbackError):
    """The repository could not be used; the message says why in plain words."""


class RepositoryMissing(BackendError):
    """The repository does not exist (and was not to be created)."""


class IncompleteStore(BackendError):
    """The tool stored a snapshot but says it is incomplete (restic exit 3)."""


@dataclass(frozen=True)
class Snapshot:
    id: str
    time: dt.datetime
    stamp: str | None
    """The archive stamp the snapshot was made from (pullback's own snapshots)."""


@dataclass(frozen=True)
class StoreResult:
    snapshot_id: str
    bytes_added: int
    files_new: int
    files_changed: int
    duration: float


class Backend(Protocol):
    """What the pull pipeline needs from a repository of one host."""

    name: str

    def repository(self) -> str:
        """Where the host's repository is (a path or URL)."""

    def prepare(self, create: bool = True) -> None:
        """Make sure the repository exists (creating it when allowed) and opens.

        Raises RepositoryMissing (missing, and ``init: false`` or not ``create``), or
        BackendError (wrong password, unreachable, ...).
        """

    def snapshots(self) -> list[Snapshot]:
        """pullback's snapshots of this host, oldest first."""

    def store(self, staging: Path, stamp: str, when: dt.datetime, timeout: float) -> StoreResult:
        """Store ``staging`` as one snapshot tagged with ``stamp`` taken at ``when``.

        Raises IncompleteStore or BackendError; a failed store leaves no snapshot.
        """


def make_backend(config: BackendConfig, host: HostConfig, state_dir: Path, runner) -> Backend:
    """The backend of ``config.type`` for one host."""
    if config.type == "restic":
        from .restic import ResticBackend

        return ResticBackend(config, host, state_dir, runner)
    from .borg import BorgBackend

    return BorgBackend(config, host, state_dir, runner)


def read_password(path: Path) -> str:
    """The first line of a password file; refuses one that others may read."""
    try:
        st = path.stat()
        if st.st_mode & 0o007:
            raise BackendError(
                f"the password file {path} is readable by others; run: chmod 600 {path}"
            )
        text = path.read_text().splitlines()
    except FileNotFoundError:
        raise BackendError(f"the password file {path} does not exist") from None
    except PermissionError:
        raise BackendError(f"cannot read the password file {path}") from None
    if not text or not text[0]:
        raise BackendError(f"the password file {path} is empty")
    return text[0]
