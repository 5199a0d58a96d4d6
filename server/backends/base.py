"""What restic and borg share: where a host's repository is, how its tool is run, how its
failures are put into words, and how a local repository is found and measured.

A subclass names its tool, gives the phrases by which the tool says "wrong password",
"locked" and "no repository", and implements the operations with argv from its own pure
builder functions (see :mod:`.restic` and :mod:`.borg`).
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from pathlib import Path

from ...common.errors import CommandError
from ...common.fsutil import directory_size
from ...common.locks import FileLock
from ...common.runner import CommandResult, Runner
from ...common.text import printable
from ..config import BackendConfig, HostConfig
from .errors import BackendError, RepositoryLocked, RepositoryMissing
from .location import Location, Role, locate

DELETE_BATCH = 50
"""Snapshots removed by one ``restic forget`` or ``borg delete`` (argv stays short)."""


def local_path(repository: str) -> Path | None:
    """The directory of a repository on this machine, or None for a URL (sftp:, s3: ...)."""
    if repository.startswith("/") and "://" not in repository:
        return Path(repository)
    return None


def repository_kind(path: Path) -> str | None:
    """Which tool's repository the directory ``path`` holds, by its layout: ``"restic"``
    (``keys/``, ``snapshots/`` and a ``config``), ``"borg"`` (its ``README`` says so), or
    None (neither, or unreadable)."""
    try:
        if (path / "keys").is_dir() and (path / "snapshots").is_dir():
            return "restic" if (path / "config").is_file() else None
        with open(path / "README", "rb") as handle:
            said = handle.read(64)
    except OSError:
        return None
    return "borg" if said.startswith(b"This is a Borg Backup repository") else None


def last_line(exc: CommandError) -> str:
    """The last non-blank line a failed command printed (or why it failed)."""
    lines = [line for line in exc.tail if line.strip()]
    return lines[-1] if lines else exc.reason


SSH_PREFIXES = ("subprocess ssh: ", "Remote: ")
"""How restic (sftp:) and borg (ssh://) pass on what ssh, or the far side, said."""
SSH_SHOWN = 2
"""Lines of it a failure names: the last ones (a changed host key's banner comes before
ssh's "Host key ... has changed" and "Host key verification failed.")."""


def ssh_words(exc: CommandError, besides: str = "") -> str:
    """What ssh said on the way to a repository, as words to append to a failure ("" when
    nothing; a line ``besides`` holds is not said again): an outside walk saw a changed
    store host key as restic's bare "unable to start the sftp session, error: EOF". Each
    line escaped and cut (a store's banner is its words)."""
    said = [
        line[len(prefix) :].strip()
        for line in exc.tail
        for prefix in SSH_PREFIXES
        if line.startswith(prefix)
    ]
    said = [line for line in said if line.strip("@ ") and line not in besides]
    if not said:
        return ""
    return " (over ssh: " + "; ".join(printable(line, 200) for line in said[-SSH_SHOWN:]) + ")"


PROBE_TIMEOUT = 120.0
"""Seconds the first contact with a host's repository (``restic cat config``, ``borg
info``: one small read and a key derivation) may take before it counts as unreachable.
An outside attack with a stalled store saw ``check``, ``maintain``, ``verify`` and
``snapshots`` wait ten minutes per host, one host after another, before this bound."""


class RepositoryBackend(ABC):
    """One host's repository, reached through one tool (``restic`` or ``borg``)."""

    name: str
    """The tool, as it is run and shown."""
    WRONG_PASSWORD: tuple[str, ...] = ()
    """Phrases of the tool's output that mean the password is wrong."""
    LOCKED: tuple[str, ...] = ()
    """Phrases that mean a live process holds the repository's lock."""
    MISSING: tuple[str, ...] = ()
    """Phrases that mean there is no repository there."""

    def __init__(
        self,
        config: BackendConfig,
        host: HostConfig,
        state_dir: Path,
        runner: Runner,
        lock_wait: float = 1800.0,
        role: Role = Role.PULL,
    ):
        self.config = config
        self.host = host
        self.state_dir = state_dir
        self.runner = runner
        self.lock_wait = lock_wait
        self.role = role
        self._location: Location | None = None

    @property
    def password_file(self) -> Path:
        """The repository's password file: the host's own, or ``backend.password_file``;
        for a copy, the copy's own (the host's, ``copy.password_file``) before those."""
        primary = self.host.password_file or self.config.password_file
        if self.role is Role.COPY and self.config.copy is not None:
            return self.host.copy_password_file or self.config.copy.password_file or primary
        return primary

    def location(self) -> Location:
        """Where the host's repository is for this backend's role (read once; a location
        file is read then). Raises BackendError for a location file it cannot use."""
        if self._location is None:
            self._location = locate(self.config, self.host, self.role)
        return self._location

    def repository(self) -> str:
        """Where the host's repository is, as words may show it (a password masked)."""
        try:
            return self.location().shown
        except BackendError:
            files = {
                Role.MAINTAIN: self.host.maintenance_repository_file,
                Role.COPY: self.host.copy_repository_file,
            }
            return f"the repository named in {files.get(self.role) or self.host.repository_file}"

    @abstractmethod
    def env(self) -> dict[str, str]:
        """The tool's environment: the repository, the password by file, the cache."""

    # -- running the tool ---------------------------------------------------------------

    def _said(self, exc: CommandError, phrases: tuple[str, ...]) -> bool:
        text = "\n".join(exc.tail)
        return any(p in text for p in phrases)

    def wrong_password(self, exc: CommandError) -> bool:
        """The tool failed because the password does not open the repository."""
        return self._said(exc, self.WRONG_PASSWORD)

    def locked(self, exc: CommandError) -> bool:
        """The tool failed because a live process holds the repository's lock."""
        return self._said(exc, self.LOCKED)

    def explain(self, exc: CommandError) -> BackendError:
        """The plain-words error for a failed run of the tool."""
        local = local_path(self.repository())
        kind = repository_kind(local) if local is not None else None
        if kind is not None and kind != self.name:  # borg: UnicodeDecodeError; restic:
            return BackendError(  # "wrong password" (an outside test was misled by both)
                f"{self.repository()} holds a {kind} repository, not a {self.name} one: "
                f"is backend.type (or the host's backend) right? {self.name} said: "
                f"{self.said(exc)}"
            )
        if self.wrong_password(exc):
            return BackendError(self.password_words())
        if self.locked(exc):
            holder = self.lock_holder(exc)
            return RepositoryLocked(
                f"the {self.name} repository {self.repository()} is locked by a live "
                f"process{f' ({holder})' if holder else ''}; waited {self.lock_wait:g}s"
            )
        said = self.said(exc)
        return BackendError(
            f"{self.name} failed on {self.repository()}: {said}{ssh_words(exc, said)}"
        )

    def password_words(self) -> str:
        """What a refused password says."""
        return (
            f"wrong password for the {self.name} repository {self.repository()} "
            f"(password_file {self.password_file})"
        )

    def said(self, exc: CommandError) -> str:
        """The line of the tool's output that says why it failed: its last line."""
        return last_line(exc)

    def lock_holder(self, exc: CommandError) -> str:
        """Who holds the lock, if the tool says (restic does)."""
        return ""

    def run_tool(
        self, args: list[str], extra_env: dict[str, str] | None = None, **kwargs
    ) -> CommandResult:
        """Run the tool with ``args`` once (``extra_env`` added to :meth:`env`); raises
        CommandError as it failed."""
        return self.runner.run(
            [self.name, *args], env={**self.env(), **(extra_env or {})}, **kwargs
        )

    def run(self, args: list[str], **kwargs) -> CommandResult:
        """Run the tool; raises BackendError in plain words."""
        try:
            return self.run_tool(args, **kwargs)
        except CommandError as exc:
            raise self.explain(exc) from None

    # -- what both implement alike ------------------------------------------------------

    def prepare(self, create: bool = True) -> None:
        """Make sure the repository exists (creating it when allowed) and opens.

        Raises RepositoryMissing (missing, and ``init: false`` or not ``create``), or
        BackendError (wrong password, unreachable, ...).
        """
        if self._opens():
            return
        if not self.config.init:
            # init: false keeps a pull from making a new, empty repository where the old
            # one is missing (an unmounted disk): advising init would undo that
            raise RepositoryMissing(
                f"the {self.name} repository {self.repository()} does not exist: is its "
                f"disk mounted? (backend.init is false, so pullback does not create it; "
                f"`{self.name} init` only for a new repository)"
            )
        if not create:
            raise RepositoryMissing(
                f"the {self.name} repository {self.repository()} does not exist yet "
                "(no pull has stored to it)"
            )
        self.make_once(self.init)

    def make_once(self, make: Callable[[], None]) -> bool:
        """Run ``make`` (which creates the repository) unless the repository opens, under
        a lock keyed by where it is: the hosts of a group share it and pull (or copy) at
        once; two inits at once could each write a key and a config, the last config
        winning over a key that no longer opens it. Returns whether ``make`` ran. Raises
        BackendError."""
        where = hashlib.sha256(self.repository().encode()).hexdigest()[:16]
        lock = FileLock(self.state_dir / f"init-{where}.lock", f"{self.name} init")
        with lock.acquire(wait=600):
            if self._opens():
                return False
            make()
            return True

    def _opens(self) -> bool:
        """True when the repository exists and opens, False when it is missing. Raises
        BackendError (wrong password, unreachable, ...)."""
        local = local_path(self.repository())
        if local is not None and (local / "config").is_file():
            return True  # no tool process (and key derivation) needed to know it exists
        try:
            self.run_tool(self.probe_args(), level=10, stdout="/dev/null", timeout=PROBE_TIMEOUT)
            return True
        except CommandError as exc:
            if not self._said(exc, self.MISSING) or self.wrong_password(exc):
                raise self.explain(exc) from None
        return False

    def strangers(self, claimed: Sequence[tuple[str, str | None]]) -> dict[str, int]:
        """The host names of snapshots in the repository that none of ``claimed`` (name,
        adopt_host) owns, and how many each has: none here (a borg repository is one
        host's, and only restic ones are adopted; restic's says)."""
        return {}

    def adopted_services(self, snapshot) -> list[str]:
        """The ``<type>/<name>`` directories of an adopted backup-suite snapshot: none
        here (only restic repositories are adopted; restic's lists them)."""
        return []

    def repository_id(self) -> str | None:
        """The repository's own id (two locations that give the same one are one
        repository), or None where the tool has none that tells two apart (a borg copy
        is its primary's mirror, id and all). Raises BackendError."""
        return None

    @abstractmethod
    def probe_args(self) -> list[str]:
        """Arguments of a cheap command that fails with a MISSING phrase when there is no
        repository."""

    @abstractmethod
    def init(self) -> None:
        """Create the repository."""

    def size(self) -> int:
        """Bytes the repository occupies."""
        local = local_path(self.repository())
        if local is not None:
            return directory_size(local)
        return self.remote_size()

    @abstractmethod
    def remote_size(self) -> int:
        """Bytes a repository that is not a local directory occupies, as the tool says."""
