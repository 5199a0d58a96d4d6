"""Where a host's repository is for one role, and how that is shown without its secrets.

A host's repository can be reached two ways (docs/scaling.md, *Split roles*):

- the **pull** role (``pull``, ``snapshots``, ``restore``) writes new snapshots, and can
  go through an append-only endpoint (``rclone serve restic --append-only``, rest-server
  ``--append-only``, ``borg serve --append-only``) that refuses every deletion;
- the **maintain** role (``maintain``: forget, prune, check, drills) needs the endpoint
  that may delete. Its location is the host's ``maintenance_repository`` (or ``_file``),
  else (for a host without a repository of its own) ``backend.maintenance_repository_url``,
  else the pull location.

A location given in a file (``repository_file``: a URL whose user information may carry
a password, as restic's REST backend wants it) is passed to the tool by file
(``RESTIC_REPOSITORY_FILE``; borg: ``BORG_REPO``) and shown with its password masked.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from pathlib import Path

from ...common import secrets
from ..config import BackendConfig, HostConfig
from .errors import BackendError


class Role(enum.Enum):
    """Which of a host's repository endpoints a command uses."""

    PULL = "pull"
    MAINTAIN = "maintain"
    COPY = "copy"
    """The host's second copy (``copy:``, ``hosts[].copy_repository``)."""


@dataclass(frozen=True)
class Location:
    """One endpoint of a host's repository."""

    shown: str
    """The location as it is written in words: a password it carries is ``***``."""
    value: str | None
    """The location itself, when the configuration gives it (never carries a password)."""
    file: Path | None = None
    """The file whose first line is the location (it may carry a password)."""


masked = secrets.mask_url_password


def _template(url: str, name: str) -> str:
    """A URL template with ``{host}`` replaced by the repository's name (the host's, or
    its group's)."""
    return url.replace("{host}", name)


def locate(backend: BackendConfig, host: HostConfig, role: Role) -> Location:
    """The location of ``host``'s repository for ``role`` (see the module's words).

    Raises BackendError when a location file cannot be read or is exposed, or a copy
    is asked of a configuration without one.
    """
    if role is Role.COPY:
        return _copy(backend, host)
    if role is Role.MAINTAIN:
        own = host.repository is not None or host.repository_file is not None
        found = _first(
            host.maintenance_repository_file,
            host.maintenance_repository,
            # a host with a repository of its own is not where the global template says
            None if own else backend.maintenance_repository_url,
            host.repository_key,
        )
        if found is not None:
            return found
    found = _first(
        host.repository_file, host.repository, backend.repository_url, host.repository_key
    )
    if found is not None:
        return found
    path = str(backend.repository_root / host.repository_key)
    return Location(path, path)


def maintenance_setting(backend: BackendConfig, host: HostConfig) -> str | None:
    """The setting that names ``host``'s maintenance location in words (``the URL in
    FILE``, ``hosts[web1].maintenance_repository``, ``backend.maintenance_repository_url``),
    or None when it falls back to the pull location."""
    own = host.repository is not None or host.repository_file is not None
    if host.maintenance_repository_file is not None:
        return f"the URL in {host.maintenance_repository_file}"
    if host.maintenance_repository is not None:
        return f"hosts[{host.name}].maintenance_repository"
    if backend.maintenance_repository_url is not None and not own:
        return "backend.maintenance_repository_url"
    return None


def _copy(backend: BackendConfig, host: HostConfig) -> Location:
    """Where ``host``'s second copy is: its own, else the copy's template or root."""
    copy = backend.copy
    if copy is None:
        raise BackendError("no copy: section in the configuration")
    url = copy.repository_url
    found = _first(host.copy_repository_file, host.copy_repository, url, host.repository_key)
    if found is not None:
        return found
    if copy.repository_root is None:
        raise BackendError("copy: gives neither repository_root nor repository_url")
    path = str(copy.repository_root / host.repository_key)
    return Location(path, path)


def _first(
    file: Path | None, inline: str | None, template: str | None, name: str
) -> Location | None:
    """The location one role's settings give, in their order: the file, the host's own
    location, the template; None when none is set."""
    if file is not None:
        return _from_file(file)
    if inline is not None:
        return Location(inline, inline)
    if template is not None:
        url = _template(template, name)
        return Location(url, url)
    return None


def _from_file(path: Path) -> Location:
    """A location kept in a file: read (its password registered as a secret, masked
    wherever it could be printed; the rest of the line is not a secret: an outside walk
    saw restic's "created restic repository ... at /mnt/offsite/web1" print as "at ***")
    to be shown masked. Raises BackendError."""
    line = read_location_file(path)
    # masked alone too, and its pieces (restic may print the URL its own way)
    secrets.register(*secrets.url_secrets(line))
    problem = secrets.password_problem(line, str(path))
    if problem:
        raise BackendError(f"{problem}; nothing was run")
    return Location(masked(line.strip()), None, path)


def read_location_file(path: Path) -> str:
    """The first line of a location file (not registered as a secret: its reader
    registers the URL's password). Raises BackendError when it is missing, empty,
    unreadable or readable by others, or its first line is a comment."""
    try:
        line = secrets.read_secret_file(path, "repository file", register_line=False).strip()
    except secrets.SecretFileError as exc:
        raise BackendError(str(exc)) from None
    if line.startswith("#"):  # (not shown: a comment can hold anything)
        raise BackendError(
            f"the first line of {path} is a comment: the location is read from the first "
            "line alone; put the repository URL there"
        )
    return line
