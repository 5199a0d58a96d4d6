"""Whether a repository that does not exist is a host not pulled yet ("none yet") or a
mistake in where it is looked for: an outside walk of docs/scaling.md saw a typo in the
maintenance-only machine's location reported as "ok, skipped: none yet" for ever."""

from __future__ import annotations

import threading

from ..common.errors import PullbackError
from . import status_file
from .backends import Backend, RepositoryMissing
from .backends.location import Role, locate, maintenance_setting
from .config import HostConfig, ServerConfig
from .host import HostContext

PULL_RECORDS = ("newest_snapshot", "last_success", "snapshot_id")
"""What status.json keeps of a host's pulls: a host with one was pulled here before."""
STORE_RECORDS = ("newest_snapshot", "snapshot_id")
"""Those of :data:`PULL_RECORDS` only a stored snapshot leaves (a pull that skipped a
busy client records ``last_success`` before any store)."""
DRILL_RECORDS = ("last_verified_snapshot",)
"""What status.json keeps of a drill that proved a snapshot of the host: its repository
held one (a maintenance-only machine records no pull, only its drills)."""


def pulled_before(
    config: ServerConfig, host: HostConfig, records: tuple[str, ...] = STORE_RECORDS
) -> str | None:
    """Words saying why ``host``'s repository must already hold snapshots: status.json
    records a pull of the host ("this host was pulled before, status.json has its
    newest_snapshot ..."), or of another host of its group (they share the repository:
    a member new to the group must not make it anew), or the host adopts another
    program's snapshots (``adopt_host``); None when nothing says so. ``records``: which
    of status.json's entries count (a pull's refusal: :data:`STORE_RECORDS` only)."""
    hosts = status_file.recorded_hosts(config.state_dir)
    sharing = [host] + [
        h for h in config.hosts if h.name != host.name and h.repository_key == host.repository_key
    ]
    for member in sharing:
        entry = hosts.get(member.name, {})
        recorded = next((k for k in records if isinstance(entry.get(k), str)), None)
        if recorded is None:
            continue
        who = "this host" if member is host else f"{member.name} of its group"
        what = "had a snapshot proven here" if recorded in DRILL_RECORDS else "was pulled before"
        return f"{who} {what}, status.json has its {recorded} {entry[recorded]}"
    if host.adopt_host:
        return f"it adopts the snapshots of {host.adopt_host} (adopt_host), which must be in it"
    return None


class RepositoryGone(RepositoryMissing):
    """A host's repository does not exist, though status.json records a pull of the
    host (:func:`gone_words`)."""


def gone_words(config: ServerConfig, host: HostConfig, where: str) -> str | None:
    """The failure of ``host``'s repository ``where`` that does not exist, though
    status.json records a pull of the host; None when it records none, or when
    ``backend.init`` is false (the missing repository's own words say what to do then).
    A pull never makes a new, empty repository in such a place (a disk not mounted, a
    server.yaml put back from an old bundle: the history would go on there, out of
    sight); ``pullback-server pull --host NAME --new`` does on purpose."""
    before = pulled_before(config, host) if config.backend.init else None
    if before is None:
        return None
    return (
        f"the repository {where} does not exist, yet {before}: is its disk "
        f"mounted, is {_pull_setting(config, host)} right? A pull makes no new, empty "
        "repository in its place; to start a new history there on purpose: "
        f"pullback-server pull --host {host.name} --new"
    )


def open_pulled(config: ServerConfig, host: HostConfig, backend: Backend) -> None:
    """Open ``host``'s pull repository ``backend``, changing nothing. Raises
    RepositoryGone (missing, though status.json records a pull of the host),
    RepositoryMissing (missing: a host not pulled yet), PullbackError."""
    try:
        backend.prepare(create=False)
    except RepositoryMissing:
        said = gone_words(config, host, backend.repository())
        if said is None:
            raise
        raise RepositoryGone(said) from None


def maintenance_apart(config: ServerConfig, host: HostConfig) -> bool:
    """Whether ``host``'s maintenance location is not its pull location (one that cannot
    be read counts as apart)."""
    try:
        return locate(config.backend, host, Role.MAINTAIN) != locate(
            config.backend, host, Role.PULL
        )
    except PullbackError:
        return True


def why_it_should_exist(
    config: ServerConfig, host: HostConfig, cancel: threading.Event | None = None
) -> str | None:
    """Why ``host``'s maintenance repository must exist, in words, or None when its
    absence can mean a host not pulled yet. It must when status.json records a pull of
    the host or a drill that proved one of its snapshots, when its maintenance location
    is apart from its pull location and the pull location has a repository or cannot be
    opened (:func:`pull_side`), or when this machine has no pull recorded at all and the
    location, also the pull location, is set for maintenance (the maintenance-only
    machine of docs/scaling.md, *Split roles*). ``cancel``: the host's deadline, which
    stops opening the pull location."""
    hosts = status_file.recorded_hosts(config.state_dir)
    before = pulled_before(config, host, PULL_RECORDS + DRILL_RECORDS)
    if before:
        return before
    if maintenance_apart(config, host):
        return pull_side(config, host, cancel)
    pulled = any(
        isinstance(e, dict) and any(e.get(k) for k in PULL_RECORDS) for e in hosts.values()
    )
    if not pulled and maintenance_setting(config.backend, host) is not None:
        return "no pull is recorded on this machine, which only maintains"
    return None


def pull_side(
    config: ServerConfig, host: HostConfig, cancel: threading.Event | None = None
) -> str | None:
    """Why a missing maintenance repository apart from ``host``'s pull location is a
    mistake, in words, or None when the pull location has no repository yet either (a
    pull server before the host's first pull, which makes the one both reach). Opens
    the pull location, changing nothing, until ``cancel`` is set (the host's deadline)."""
    try:
        HostContext.open(config, host, cancel).backend.prepare(create=False)
    except RepositoryMissing:
        return None
    except PullbackError:
        return "its maintenance location is not where pulls store"
    return "the pull location has a repository: the two reach different ones"


def missing_failure(
    config: ServerConfig, host: HostConfig, where: str, cancel: threading.Event | None = None
) -> str | None:
    """The failure of ``host``'s maintenance repository ``where`` that does not exist,
    saying which setting to check and why it should exist (:func:`why_it_should_exist`,
    ``cancel`` as there); None when its absence can mean a host not pulled yet."""
    why = why_it_should_exist(config, host, cancel)
    if why is None:
        return None
    named = maintenance_setting(config.backend, host) or _pull_setting(config, host)
    return (
        f"the maintenance repository {where} does not exist: is {named} right? (it "
        f"cannot be a host not pulled yet: {why})"
    )


def _pull_setting(config: ServerConfig, host: HostConfig) -> str:
    """The setting that names ``host``'s pull location, in words."""
    if host.repository_file is not None:
        return f"the URL in {host.repository_file}"
    if host.repository is not None:
        return f"hosts[{host.name}].repository"
    if config.backend.repository_url is not None:
        return "backend.repository_url"
    return f"backend.repository_root ({config.backend.repository_root})"
