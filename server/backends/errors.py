"""The errors a repository backend raises, each said in plain words."""

from __future__ import annotations

from ...common.errors import PullbackError


class BackendError(PullbackError):
    """The repository could not be used; the message says why in plain words."""


class RepositoryMissing(BackendError):
    """The repository does not exist (and was not to be created)."""


class IncompleteStore(BackendError):
    """The tool stored a snapshot but says it is incomplete (restic exit 3)."""


class RepositoryLocked(BackendError):
    """A live process holds the repository's lock beyond the configured wait."""
