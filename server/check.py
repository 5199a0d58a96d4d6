"""``pullback-server check``: validate the configuration and reach every host."""

from __future__ import annotations

import argparse
import os
import shutil
from pathlib import Path

from ..common import signals
from ..common.cli import print_json
from ..common.clock import utc_now
from ..common.config import load_validated, secret_file_problems
from ..common.errors import EXIT_FAILED, EXIT_OK, ArchiveError, Interrupted, PullbackError
from ..common.log import get_logger
from ..common.protocol import Listing
from ..common.sandbox import (
    CLIENT_CONFIG,
    HOMES,
    output_problem,
    repository_problem,
    shared_metrics_file,
    unit_writable_paths,
)
from ..common.schema import load_schema
from ..common.text import counted, few, printable
from . import status_file
from .backends import RepositoryMissing, Role, read_password
from .backends.base import local_path
from .backends.location import locate, maintenance_setting
from .config import HostConfig, ServerConfig
from .copy import gone
from .host import HostContext
from .host_pull import newest_usable, refused_of
from .missing import gone_words, maintenance_apart, missing_failure
from .remote import Remote

log = get_logger("check")


def command(config: ServerConfig, args: argparse.Namespace) -> int:
    """``pullback-server check``: what is fine, one ``warning:`` line per warning, then one
    ``problem:`` line per problem. Returns the exit code (1 for a problem)."""
    good, problems = check(config, args.host)
    warnings = suite_dir_warnings(config)  # (they change no exit code)
    if args.json:
        print_json({"ok": good, "warnings": warnings, "problems": problems})
        return EXIT_FAILED if problems else EXIT_OK
    for line in good:
        print(line)
    for line in warnings:
        print(f"warning: {line}")
    for line in problems:
        print(f"problem: {line}")
    return EXIT_FAILED if problems else EXIT_OK


UNITS = ("pullback-server.service", "pullback-maintain.service")
COPY_UNITS = ("pullback-copy.service", "pullback-maintain.service")
"""The units that write a second copy: the copy, and the maintenance (its retention,
check and drill; an outside walk saw it fail on a copy only pullback-copy.service's
drop-in named)."""
"""The server's units that write repositories and outputs."""


def key_problems(config: ServerConfig) -> list[str]:
    """What is wrong with the SSH keys in use: each host's own, and the server's when a
    host has none of its own. A key in a home directory is hidden from the units."""
    keys = {
        h.key_file: (f"hosts[{h.name}].ssh_key_file", h.name) for h in config.hosts if h.key_file
    }
    if any(h.key_file is None for h in config.hosts) or not config.hosts:
        keys[config.ssh.key_file] = ("ssh.key_file", config.ssh.key_file.name)
    problems = []
    for key, (setting, moved) in keys.items():
        if key.exists() and not key.is_file():
            problems.append(f"{config.path}: {setting}: {key} is not a file (name the key)")
        elif not os.access(key, os.R_OK):
            problems.append(
                f"{config.path}: {setting}: {key} cannot be read{_key_fix(config, key)}"
            )
        elif str(key).startswith(HOMES):
            problems.append(
                f"{config.path}: {setting}: {key} is in a home directory, which the units "
                f"hide (ProtectHome=yes): move it, e.g. install -D -m 0600 {key} "
                f"/etc/pullback/keys/{moved}"  # the name import-backup-suite gives it
            )
    return problems


def _key_fix(config: ServerConfig, key: Path) -> str:
    """What to do about an SSH key that cannot be read: copy the old one when a host
    adopts backup-suite's history (its clients trust that key; a new one is refused by
    every client until its public half is in their authorized_keys); else make one.
    Returns the words, starting with `` (``."""
    adopting = [h.name for h in config.hosts if h.adopt_host]
    if adopting:
        return (
            f" (host {adopting[0]} adopts backup-suite's history: copy backup-suite's "
            f"server key here, as import-backup-suite's `install -D -m 0600 ... {key}` "
            "line says; its clients trust that key. A new key (ssh-keygen -t ed25519 "
            f"-N '' -f {key}) works only once its .pub is in each client's authorized_keys)"
        )
    return f" (create it: ssh-keygen -t ed25519 -N '' -f {key})"


def _password_fix(config: ServerConfig) -> str:
    """What to do about a missing ``backend.password_file``: restore it when a
    repository it opens exists, or a host adopts backup-suite's (a new password cannot
    open them); else make one. Returns the words, starting with ``; ``."""
    path = config.backend.password_file
    existing = _existing_repositories(config)
    adopting = [h.name for h in config.hosts if h.adopt_host]
    if existing or adopting:
        why = (
            f"the repository {existing[0]} exists"
            if existing
            else f"host {adopting[0]} adopts backup-suite's repository (adopt_host)"
        )
        return (
            f"; {why}, and a new password cannot open an existing repository: restore the "
            "file from where it was kept (a backup, the old server); only for a genuinely "
            "new setup generate one"
        )
    return (
        f"; create it (and keep a copy somewhere safe: without it no backup can "
        f"be read): [ -e {path} ] || (umask 077; head -c 32 /dev/urandom | base64 > {path})"
    )


def _existing_repositories(config: ServerConfig) -> list[str]:
    """The local repositories of hosts that use ``backend.password_file`` and exist
    (their ``config`` file is there), as words."""
    found = []
    for host in config.hosts:
        if host.password_file is not None:
            continue
        try:
            where = local_path(locate(config.backend, host, Role.PULL).shown)
        except PullbackError:
            continue
        if where is not None and (where / "config").is_file():
            found.append(str(where))
    return found


SUITE_DIR = Path("/etc/backup")
"""backup-suite's directory: step 8 of docs/migrating-from-backup-suite.md removes it."""


def suite_dir_warnings(config: ServerConfig) -> list[str]:
    """The secrets server.yaml names below :data:`SUITE_DIR` (the repository password,
    SSH keys, as import-backup-suite carried them over), each with how to move it."""
    named: list[tuple[str, Path | None]] = [("backend.password_file", config.backend.password_file)]
    named += [(f"hosts[{h.name}].password_file", h.password_file) for h in config.hosts]
    named += [(f"hosts[{h.name}].ssh_key_file", h.key_file) for h in config.hosts]
    named.append(("ssh.key_file", config.ssh.key_file))
    warnings = []
    for setting, path in named:
        if path is not None and path.is_relative_to(SUITE_DIR):
            warnings.append(
                f"{config.path}: {setting}: {path} lies in {SUITE_DIR}, which step 8 of the "
                f"migration removes: move it first (install -D -m 0600 {path} NEW, then "
                "point server.yaml at NEW)"
            )
    return list(dict.fromkeys(warnings))


def units_writable_paths() -> dict[str, list[str] | None]:
    """Each server unit's ``ReadWritePaths=`` (None where systemd cannot say): asked of
    systemd once per check."""
    return {unit: unit_writable_paths(unit) for unit in UNITS}


def output_problems(
    config: ServerConfig, allowed: dict[str, list[str] | None] | None = None
) -> list[str]:
    """The metrics file and the status page that the units cannot write (each once),
    and a metrics file the client's configuration on this machine names too."""
    problems: list[str] = []
    outputs = (("metrics_file", config.metrics_file), ("status_page", config.status_page))
    for unit, paths in (allowed if allowed is not None else units_writable_paths()).items():
        for setting, output in outputs:
            found = output_problem(setting, output, unit, paths) if output else None
            if found and f"{config.path}: {found}" not in problems:
                problems.append(f"{config.path}: {found}")
    shared = config.metrics_file and shared_metrics_file(config.metrics_file, CLIENT_CONFIG)
    return problems + ([f"{config.path}: {shared}"] if shared else [])


def local_problems(
    config: ServerConfig, allowed: dict[str, list[str] | None] | None = None
) -> list[str]:
    """What is wrong on this machine: missing tools, the SSH keys, known_hosts, the
    repository password, outputs the units cannot write (``allowed``: the units'
    :func:`units_writable_paths`, asked when not given)."""
    problems: list[str] = []
    tool = {"restic": "restic", "borg": "borg"}[config.backend.type]
    for program, package in (
        (tool, "restic" if tool == "restic" else "borgbackup"),
        ("ssh", "openssh-client"),
    ):
        if not shutil.which(program):
            problems.append(f"{program} is not installed (apt install {package})")
    problems += key_problems(config)
    if not config.ssh.known_hosts.exists():
        problems.append(
            f"{config.path}: ssh.known_hosts: {config.ssh.known_hosts} does not "
            "exist yet: run pullback-server trust HOST for every host"
        )
    try:
        read_password(config.backend.password_file)
    except PullbackError as exc:
        fix = ""
        if not config.backend.password_file.exists():
            fix = _password_fix(config)
        problems.append(f"{config.path}: backend.password_file: {exc}{fix}")
    problems += output_problems(config, allowed)
    schema = load_schema("pullback.common", "server")
    data = load_validated(config.path, schema, allow_empty=False).data
    problems += [
        p
        for p in secret_file_problems(config.path, schema, data)
        if ": backend.password_file: " not in p  # said above, with how to create it
    ]
    return problems


def _of_host(name: str, exc: Exception) -> str:
    """The problem ``exc`` of host ``name``, the name said once (errors of the
    connection already begin with it)."""
    text = str(exc)
    return text if text.startswith(f"{name}: ") else f"{name}: {text}"


def check_host(ctx: HostContext, good: list[str], problems: list[str]) -> None:
    """Reach the client, and open the repository of one host (and its maintenance
    location where that is apart), changing nothing: the repositories are opened
    whether or not the client answers (the maintenance-only machine reaches none)."""
    check_client(ctx, good, problems)
    check_repository(ctx, good, problems)
    config, host = ctx.config, ctx.host
    if maintenance_apart(config, host):
        check_maintenance(HostContext.open(config, host, role=Role.MAINTAIN), good, problems)


def check_client(ctx: HostContext, good: list[str], problems: list[str]) -> None:
    """Reach the client over SSH and list its archives, changing nothing."""
    name = ctx.name
    try:
        with Remote(ctx.host, ctx.config.ssh, ctx.runner) as remote:
            listing = remote.list_archives()
    except Interrupted:
        raise
    except PullbackError as exc:
        problems.append(_of_host(name, exc))
        return
    if listing.host != name:
        problems.append(
            f"{name}: the client names itself and its archives "
            f"'{printable(listing.host, 100)}', not '{name}': every pull would fail; set "
            f"hostname: {name} in its /etc/pullback/client.yaml, or name the host "
            f"'{printable(listing.host, 100)}' in {ctx.config.path}"
        )
        return
    _say_ready(ctx, listing, good, problems)


def _say_ready(ctx: HostContext, listing: Listing, good: list[str], problems: list[str]) -> None:
    """Say which of ``listing``'s archives a pull would take (as :func:`.host_pull.
    newest_usable` judges them: a sidecar that parses, its size, its stamp, its
    checksum's record), the newest of them, and those the client does not offer."""
    name = ctx.name
    refused = _refused(ctx.config.state_dir, name, good)
    try:
        usable = newest_usable(listing, name, utc_now(), refused)
    except ArchiveError as exc:  # (a sidecar that names another host)
        problems.append(_of_host(name, exc))
        return
    newest = usable.best.archive.name if usable.best is not None else None
    good.append(
        f"{name}: reachable, {usable.ready} archive(s) ready"
        + (f", newest {printable(newest, 120)}" if newest else "")
    )
    if len(listing.unusable):
        shown = "; ".join(
            f"{printable(u.get('name'), 120)}: {printable(u.get('problem'), 200)}"
            for u in listing.unusable[:3]
        )
        good.append(f"{name}: {len(listing.unusable)} archive(s) not offered: {shown}")
    passed = len(listing.archives) - usable.ready
    if passed:
        said = "; ".join(usable.warnings[len(listing.unusable) :][:3])
        good.append(f"{name}: {passed} listed archive(s) a pull would pass over: {said}")


def _refused(state_dir: Path, host: str, good: list[str]) -> frozenset[str]:
    """The archives of ``host`` a pull passes over for their checksum (status.json's
    record), read without moving a damaged file aside: a diagnostic changes nothing
    (the next pull does that, under the status lock). A file that cannot be read
    (damaged, a state directory this user may not read) is said once in ``good``, as no
    refused archive known."""
    try:
        status = status_file.read_status(state_dir)
    except (OSError, ValueError) as exc:
        _say_unreadable(state_dir, exc, good)
        return frozenset()
    return refused_of(status_file.recorded_failures(status, host))


def _say_unreadable(state_dir: Path, exc: OSError | ValueError, good: list[str]) -> None:
    """Say once in ``good`` that status.json cannot be read (``exc``), and what ``check``
    then takes it to record: nothing (it was "internal error ... PermissionError" for
    every host, from each of its readers; helper-138 R5, helper-141 F2)."""
    why = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
    said = (
        f"{state_dir / status_file.STATUS_FILE} cannot be read ({printable(why, 200)}): "
        "checked as if it recorded nothing (no pull of a host, no archive that failed "
        "its checksum)"
    )
    if said not in good:
        good.append(said)


def check_repository(ctx: HostContext, good: list[str], problems: list[str]) -> None:
    """Open the host's repository (where pulls store), changing nothing. A missing one
    "will be created by the first pull", unless it is also the maintenance location of
    a machine that must find it (:func:`.missing.why_it_should_exist`)."""
    name, backend = ctx.name, ctx.backend
    try:
        backend.prepare(create=False)
        snapshots = backend.snapshots()
        adopted = sum(s.adopted for s in snapshots)
        good.append(
            f"{name}: repository {backend.repository()} has {len(snapshots)} snapshot(s)"
            + (f", {adopted} of them adopted ({ctx.host.adopt_host})" if adopted else "")
        )
        unseen = _strangers(ctx)
        if unseen:
            problems.append(unseen)
    except RepositoryMissing as exc:
        config = ctx.config
        failure = _missing_words(ctx, good)
        if failure is not None:
            problems.append(f"{name}: {failure}")
        elif config.backend.init:
            good.append(
                f"{name}: repository {backend.repository()} will be created by the first pull"
            )
        else:
            problems.append(_of_host(name, exc))
    except Interrupted:
        raise
    except PullbackError as exc:
        problems.append(_of_host(name, exc))


def _missing_words(ctx: HostContext, good: list[str], maintenance: bool = False) -> str | None:
    """Why the host's missing repository (``maintenance``: its maintenance location)
    must exist, or None when its absence can mean a host not pulled yet. status.json,
    which tells, cannot be read: said once in ``good``, as if it recorded nothing."""
    config, host, where = ctx.config, ctx.host, ctx.backend.repository()
    try:
        if maintenance:
            return missing_failure(config, host, where, ctx.cancel)
        if maintenance_setting(config.backend, host) and not maintenance_apart(config, host):
            failure = missing_failure(config, host, where, ctx.cancel)
            if failure is not None:
                return failure
        return gone_words(config, host, where)
    except OSError as exc:
        _say_unreadable(config.state_dir, exc, good)
        return None


def check_maintenance(ctx: HostContext, good: list[str], problems: list[str]) -> None:
    """Open the host's maintenance location (``ctx``: its maintenance role), with its
    own password, changing nothing: a missing one is a problem unless the pull location
    has no repository yet either (a new host: its first pull makes the one both reach)."""
    name, backend = ctx.name, ctx.backend
    try:
        backend.prepare(create=False)
        good.append(
            f"{name}: maintenance repository {backend.repository()} has "
            f"{len(backend.snapshots())} snapshot(s)"
        )
    except RepositoryMissing:
        failure = _missing_words(ctx, good, maintenance=True)
        if failure is None:
            good.append(
                f"{name}: maintenance repository {backend.repository()} does not exist yet "
                "and neither does the pull location's: the first pull makes it"
            )
        else:
            problems.append(f"{name}: {failure}")
    except Interrupted:
        raise
    except PullbackError as exc:
        problems.append(f"{name}: maintenance location: {exc}")


def _strangers(ctx: HostContext) -> str | None:
    """The snapshots in the host's repository that are neither its own nor its
    adopt_host's, nor another member's of its group, in words (their host names, at
    most five, and counts), or None when there are none: a wrong
    adopt_host (the short name where backup-suite used the whole one) leaves the old
    history unlisted, unrestorable and out of the retention. Raises BackendError."""
    host, config = ctx.host, ctx.config
    sharing = [h for h in config.hosts if h is host or (host.group and h.group == host.group)]
    counts = ctx.backend.strangers([(h.name, h.adopt_host) for h in sharing])
    if not counts:
        return None
    ranked = sorted(counts, key=lambda name: (-counts[name], name))
    hosts = "host" if len(ranked) == 1 else "hosts"
    words = [printable(name, 100) for name in ranked]
    if len(ranked) > 1:
        words = [f"{word} ({counts[name]})" for word, name in zip(words, ranked, strict=True)]
    named = few(words)
    total = counted(sum(counts.values()), "snapshot")
    if host.adopt_host:
        adopt = printable(host.adopt_host, 100)
        fix = f"neither this host's nor adopt_host's ({adopt}): is adopt_host right?"
    else:
        fix = "not this host's: if they are its backup-suite history, set adopt_host"
    return f"{host.name}: {total} of {hosts} {named} in {ctx.backend.repository()} are {fix}"


def check(config: ServerConfig, names: list[str] | None = None) -> tuple[list[str], list[str]]:
    """Return (lines of what is fine, problems); reaching hosts but changing nothing."""
    good: list[str] = []
    allowed = units_writable_paths()
    problems = local_problems(config, allowed)
    units = allowed[UNITS[0]] is not None
    for setting, output in (
        ("metrics_file", config.metrics_file),
        ("status_page", config.status_page),
    ):
        if output is not None and not any(f": {setting}: " in p for p in problems):
            by = ", also by the units' timer runs" if units else " (systemd is not running here)"
            good.append(f"{setting} {output}: writable{by}")
    # every host is tried whatever is wrong locally: all problems at once, one round
    for host in config.select_hosts(names):
        signals.refuse_if_stopping()  # stopped by hand: no next host (paramiko runs no tool)
        try:
            _check_one(config, host, allowed, good, problems)
        except PullbackError:  # (each part says its own; one that escapes is the run's)
            raise
        except Exception as exc:  # a bug's: the host's problem, the next hosts still checked
            log.error("checking %s: internal error, please report it", host.name, exc_info=True)
            problems.append(f"{host.name}: internal error while checking it: {type(exc).__name__}")
    return good, problems


def _check_one(
    config: ServerConfig,
    host: HostConfig,
    allowed: dict[str, list[str] | None],
    good: list[str],
    problems: list[str],
) -> None:
    """Check one host: where its repository lies, the host (:func:`check_host`) and its
    second copy, if one is configured."""
    ctx = HostContext.open(config, host)
    local = local_path(os.path.normpath(ctx.backend.repository()))
    said = repository_problem(local, allowed) if local is not None else None
    if said:
        problems.append(f"{host.name}: repository {said}")
    check_host(ctx, good, problems)
    if config.backend.copy is not None:
        check_copy(HostContext.open(config, host, role=Role.COPY), allowed, good, problems)


def check_copy(
    ctx: HostContext,
    allowed: dict[str, list[str] | None],
    good: list[str],
    problems: list[str],
) -> None:
    """The host's second copy: whether the units that write it may (a local one), and
    what it holds, changing nothing. ``allowed`` holds the units' ``ReadWritePaths=``
    (those of :data:`COPY_UNITS` are asked here when missing)."""
    for unit in COPY_UNITS:
        if unit not in allowed:
            allowed[unit] = unit_writable_paths(unit)
    backend = ctx.backend
    local = local_path(os.path.normpath(backend.repository()))
    if local is not None:
        said = repository_problem(local, {unit: allowed[unit] for unit in COPY_UNITS})
        if said:
            problems.append(f"{ctx.name}: copy {said}")
    try:
        backend.prepare(create=False)
        good.append(
            f"{ctx.name}: copy {backend.repository()} has {len(backend.snapshots())} snapshot(s)"
        )
    except RepositoryMissing:
        said = gone(ctx.config, ctx.name, backend)
        if said:
            problems.append(f"{ctx.name}: {said}")
        else:
            good.append(f"{ctx.name}: copy {backend.repository()} will be made by the next copy")
    except PullbackError as exc:
        problems.append(f"{ctx.name}: copy: {exc}")
