"""server.yaml: the settings of pullback-server."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ..common.config import load_validated
from ..common.errors import ConfigError, UsageError
from ..common.locks import FileLock
from ..common.mail import EmailConfig, email_config
from ..common.notify import NotifyConfig, notify_config
from ..common.schema import load_schema
from ..common.text import few, printable
from ..common.units import parse_duration, parse_size
from .guard import GuardLimits
from .journal import INSTANCE_LOCK

DEFAULT_PATH = Path("/etc/pullback/server.yaml")
BORG_LOCATIONS = "borg repositories are paths or ssh:// URLs"


@dataclass(frozen=True)
class HostConfig:
    name: str
    address: str
    port: int
    user: str
    repository: str | None
    enabled: bool
    retention: dict
    """The effective policy: the global one with this host's keys over it."""
    verify_every: float
    max_age: float
    min_interval: float
    notify: NotifyConfig | None
    max_unpacked_size: int
    """Bytes one archive may unpack to (regular files, sparse ones at apparent size)."""
    max_entries: int
    """Members one archive may hold (files, directories, links, device nodes)."""
    max_archive_size: int
    """Bytes an archive may announce; a larger one is not fetched."""
    email_to: tuple[str, ...] = ()
    """The host's own recipients (a mail of its result alone after each pull)."""
    key_file: Path | None = None
    """This host's own SSH key (None: ``ssh.key_file``)."""
    adopt_host: str | None = None
    """restic: the host name of another program's snapshots adopted as this host's."""
    repository_file: Path | None = None
    """A file whose first line is this host's repository (a URL that may carry a
    password): instead of ``repository``."""
    maintenance_repository: str | None = None
    """Where ``maintain`` reaches this host's repository (the endpoint that may delete);
    None: ``backend.maintenance_repository_url``, else where pulls reach it."""
    maintenance_repository_file: Path | None = None
    """``maintenance_repository`` kept in a file (it may carry a password)."""
    password_file: Path | None = None
    """This host's own repository password (None: ``backend.password_file``)."""
    copy_repository: str | None = None
    """This host's copy instead of ``copy``'s root or template."""
    copy_repository_file: Path | None = None
    """``copy_repository`` kept in a file (it may carry a password)."""
    copy_password_file: Path | None = None
    """This host's copy's own password (None: ``copy.password_file``)."""
    group: str | None = None
    """restic: the group whose repository this host shares (cross-host deduplication)."""

    @property
    def repository_key(self) -> str:
        """The name its repository goes by: its group's, else its own."""
        return self.group or self.name


@dataclass(frozen=True)
class MaintenanceConfig:
    check_subsets: int
    prune: bool
    forget: bool
    """False on a pull server whose repositories another machine forgets and prunes
    (split roles): maintain then only checks, measures and drills."""
    guard: GuardLimits
    check: bool
    check_options: tuple[str, ...]
    borg_check_duration: float
    verify_every: float
    verify_max_age: float
    repository_lock_wait: float
    wait_for_pull: float
    scratch_dir: Path | None
    prove_databases: bool
    database_proof_dir: Path
    database_proof_timeout: float
    timeout: float
    """Longest time one repository's maintenance may take (a host, or a group's hosts)."""


@dataclass(frozen=True)
class SshConfig:
    key_file: Path
    known_hosts: Path
    user: str
    port: int
    connect_timeout: float
    idle_timeout: float
    keepalive: float


@dataclass(frozen=True)
class CopyConfig:
    """The second copy of every host's repository (``copy:``; docs/disaster-recovery.md)."""

    repository_root: Path | None
    """One copy per host below this directory (or ``repository_url``)."""
    repository_url: str | None
    """Every host's copy, ``{host}`` replaced by its name."""
    password_file: Path | None
    """The copies' password (None: the primary's)."""
    max_age: float
    """Seconds the newest copied snapshot may be old before the copy is a problem."""
    verify_every: float
    """Seconds between restore drills of each host's copy."""
    retention: dict | None = None
    """The copies' own retention policy, applied by ``maintain`` (None: keep all)."""


@dataclass(frozen=True)
class BackendConfig:
    type: str
    repository_root: Path
    password_file: Path
    init: bool
    timeout: float
    backup_options: tuple[str, ...] = ()
    """Extra arguments of every restic backup / borg create, as given."""
    repository_url: str | None = None
    """Every host's repository, ``{host}`` replaced by its name, instead of a directory
    below ``repository_root``."""
    maintenance_repository_url: str | None = None
    """The same for ``maintain`` (the endpoint that may delete)."""
    copy: CopyConfig | None = None
    """Where the second copies are (None: no copy is made)."""


KNOWN_SHOWN = 20
"""Configured host names an unknown host's error lists (the rest are counted)."""


def near_hosts(name: str, configured: list[str]) -> list[str]:
    """The ``configured`` host names that ``name`` probably means: one whose first label
    is ``name`` (``web1`` typed, ``web1.example.org`` configured, as import-backup-suite
    derives short names), whose name is ``name``'s first label (the other way round), or
    that differs from it in case only. In the order of ``configured``."""
    typed = name.casefold()
    short = typed.split(".")[0]
    return [
        c
        for c in configured
        if c != name
        and (typed in (c.casefold(), c.split(".")[0].casefold()) or short == c.casefold())
    ]


@dataclass(frozen=True)
class ServerConfig:
    """Validated server settings. Every default lives in ``schemas/server.yaml``."""

    path: Path
    state_dir: Path
    lock_dir: Path
    parallel: int
    host_timeout: float
    pull_memory_limit: int
    """Bytes of address space for each host's pull process (0: no cap)."""
    min_free_space: int
    """Bytes a download must leave free on the filesystem of ``state_dir``."""
    partial_max_age: float
    """Seconds a partial download is kept for resuming."""
    lock_retries: int
    lock_wait: float
    backend: BackendConfig
    ssh: SshConfig
    hosts: tuple[HostConfig, ...]
    retention: dict
    email: EmailConfig | None
    maintenance: MaintenanceConfig
    notify: NotifyConfig | None
    min_interval: float
    metrics_file: Path | None
    status_page: Path | None

    def host(self, name: str) -> HostConfig:
        """The host called ``name``. Raises UsageError naming the host probably meant and
        the known hosts (:meth:`unknown`)."""
        for host in self.hosts:
            if host.name == name:
                return host
        raise self.unknown([name])

    @property
    def disabled(self) -> list[str]:
        """The names of the hosts disabled here (``enabled: false``)."""
        return [h.name for h in self.hosts if not h.enabled]

    def select_hosts(self, names: list[str] | None) -> list[HostConfig]:
        """The hosts named on the command line, or every enabled host.

        Raises UsageError for a name that is not configured.
        """
        if not names:
            return [h for h in self.hosts if h.enabled]
        known = {h.name: h for h in self.hosts}
        unknown = [n for n in dict.fromkeys(names) if n not in known]
        if unknown:
            raise self.unknown(unknown)
        return [known[n] for n in dict.fromkeys(names)]

    def unknown(self, names: list[str]) -> UsageError:
        """The error for host ``names`` that are not configured: each with the hosts it
        probably means (:func:`near_hosts`: ``web1`` for ``web1.example.org``), then the
        first :data:`KNOWN_SHOWN` known hosts and how many more. Bounded: the whole sorted
        list of a fleet of 5,000 was cut by the log before the host meant (an outside
        test)."""
        configured = sorted(h.name for h in self.hosts)
        said = []
        for name in names[:10]:  # (few() shows 10: the rest are only counted)
            shown = repr(printable(name, 100))
            near = near_hosts(name, configured)
            said.append(f"{shown} (did you mean {few(near, 3, ' or ')}?)" if near else shown)
        more = f" and {len(names) - 10} more" if len(names) > 10 else ""
        return UsageError(
            f"no host named {few(said, 10)}{more} in {self.path}; known hosts: "
            f"{few(configured, KNOWN_SHOWN) or 'none'}"
        )

    def instance_lock(self, purpose: str) -> FileLock:
        """The server's lock (journal.INSTANCE_LOCK), not yet taken; ``purpose`` is what
        its owner record says the holder is (``pullback-server maintain``)."""
        return FileLock(self.lock_dir / INSTANCE_LOCK, purpose=purpose)

    def staging_dir(self, host: str) -> Path:
        return self.state_dir / "staging" / host

    def partials_dir(self) -> Path:
        """Where every host's partial downloads are, each host's in a directory of its
        own (:meth:`partial_dir`)."""
        return self.state_dir / "partial"

    def partial_dir(self, host: str) -> Path:
        return self.partials_dir() / host

    def scratch_dir(self) -> Path:
        return self.maintenance.scratch_dir or self.state_dir / "drill"


def _double_locations(doc, data: dict) -> list:
    """A host that names its repository both in the file and inline (one would win
    silently)."""
    problems = []
    for index, host in enumerate(data["hosts"]):
        for key in ("repository", "maintenance_repository"):
            if key in host and f"{key}_file" in host:
                message = f"give either {key} or {key}_file, not both"
                problems.append(doc.problem(("hosts", index, f"{key}_file"), message))
    return problems


GROUP_LOCATION_KEYS = (
    "repository",
    "repository_file",
    "maintenance_repository",
    "maintenance_repository_file",
)


def _group_problems(doc, data: dict) -> list:
    """Groups that cannot share one repository: a grouped host that names a repository
    of its own, hosts of one group with different passwords, a group named like a host
    outside it (both would be ``<repository_root>/<name>``), a borg backend."""
    problems = []
    passwords: dict[str, tuple[int, str | None]] = {}
    names = {host["name"]: host.get("group") for host in data["hosts"]}
    for index, host in enumerate(data["hosts"]):
        group = host.get("group")
        if group is None:
            continue
        where = ("hosts", index, "group")
        if data["backend"]["type"] != "restic":
            problems.append(doc.problem(where, "restic only (backend.type: restic)"))
        if "adopt_host" in host:  # it would take another member's snapshots as its own
            message = f"a host of group '{group}' adopts no snapshots: its group shares them"
            problems.append(doc.problem(("hosts", index, "adopt_host"), message))
        for key in GROUP_LOCATION_KEYS:
            if key in host:
                message = f"a host of group '{group}' uses the group's repository: drop {key}"
                problems.append(doc.problem(("hosts", index, key), message))
        if group in names and names[group] != group:
            message = f"'{group}' is also a host outside the group (they would share a repository)"
            problems.append(doc.problem(where, message))
        first = passwords.setdefault(group, (index, host.get("password_file")))
        if first[1] != host.get("password_file"):
            message = (
                f"the hosts of group '{group}' share one repository and so one password: "
                f"give the same password_file as hosts[{first[0]}]"
            )
            problems.append(doc.problem(("hosts", index, "password_file"), message))
    return problems


def _borg_problems(doc, data: dict) -> list:
    """What borg cannot do of what the configuration asks: adopting another program's
    snapshots, repositories that are neither paths nor ``ssh://`` URLs."""
    problems = []
    for index, host in enumerate(data["hosts"]):
        if "adopt_host" in host:
            where = ("hosts", index, "adopt_host")
            problems.append(doc.problem(where, "restic only (backend.type: restic)"))
        for key in ("repository", "maintenance_repository"):
            if ":" in host.get(key, "") and not host[key].startswith("ssh://"):
                problems.append(doc.problem(("hosts", index, key), BORG_LOCATIONS))
    for key in ("repository_url", "maintenance_repository_url"):
        if key in data["backend"] and not data["backend"][key].startswith(("ssh://", "/")):
            problems.append(doc.problem(("backend", key), BORG_LOCATIONS))
    return problems


def _where(host: dict, root: str | None, template: str | None, own: str) -> str | None:
    """Where a host's repository (``own``: the key of its own location) is, as the
    configuration says it without reading files, normalised; None when a file says."""
    if f"{own}_file" in host:
        return None
    key = host.get("group") or host["name"]
    found = host.get(own) or (template.replace("{host}", key) if template else None)
    if found is None and root is not None:
        found = str(Path(root) / key)
    if found is None:
        return None
    return os.path.normpath(found) if found.startswith("/") else found.rstrip("/")


def _shared_locations(doc, data: dict) -> list:
    """Two hosts outside one group whose repositories (or copies) are one: their first
    pulls would each make it (restic: two keys, one config; the repository is lost)."""
    backend, copy = data["backend"], data.get("copy")
    roles = [("repository", backend.get("repository_root"), backend.get("repository_url"))]
    if copy is not None:
        roles.append(("copy_repository", copy.get("repository_root"), copy.get("repository_url")))
    problems = []
    for own, root, template in roles:
        seen: dict[str, tuple[str, int]] = {}
        for index, host in enumerate(data["hosts"]):
            where = _where(host, root, template, own)
            if where is None:
                continue
            key = host.get("group") or host["name"]
            first = seen.setdefault(where, (key, index))
            if first[0] != key:
                message = (
                    f"{where} is also the {own.replace('_', ' ')} of hosts[{first[1]}]: hosts "
                    "share one only as a group (hosts[].group)"
                )
                problems.append(
                    doc.problem(("hosts", index, own if own in host else "name"), message)
                )
    if copy is not None:
        problems += _copies_on_primaries(doc, data, roles)
    return problems


def _overlap(one: str, other: str) -> bool:
    """The same location, or (local paths) one inside the other."""
    if one == other:
        return True
    if one.startswith("/") and other.startswith("/"):
        return Path(one).is_relative_to(other) or Path(other).is_relative_to(one)
    return False


def _copies_on_primaries(doc, data: dict, roles: list) -> list:
    """A copy that is, holds or sits in a primary repository: no second copy at all (and
    the copy's retention would forget the primary's history, a borg mirror overwrite it)."""
    (_, root, template), (_, copy_root, copy_template) = roles
    primaries = [
        (index, where)
        for index, host in enumerate(data["hosts"])
        if (where := _where(host, root, template, "repository")) is not None
    ]
    problems = []
    for index, host in enumerate(data["hosts"]):
        copy = _where(host, copy_root, copy_template, "copy_repository")
        clash = next((i for i, where in primaries if copy and _overlap(copy, where)), None)
        if clash is not None:
            message = (
                f"the copy {copy} is (or overlaps) the repository of hosts[{clash}]: a second "
                "copy must be somewhere else"
            )
            key = "copy_repository" if "copy_repository" in host else "name"
            problems.append(doc.problem(("hosts", index, key), message))
    return problems


def _copy_problems(doc, data: dict) -> list:
    """A copy section that says nowhere to copy to, a host's copy without a section, or
    what a borg copy cannot have."""
    copy = data.get("copy")
    hosts_copy = [
        i
        for i, h in enumerate(data["hosts"])
        if "copy_repository" in h or "copy_repository_file" in h
    ]
    problems = []
    if copy is None:
        for index in hosts_copy:
            problems.append(
                doc.problem(("hosts", index), "a copy repository without a copy: section")
            )
        return problems
    if data["backend"]["type"] == "borg":
        problems += _borg_copy_problems(doc, data)
    if "repository_root" not in copy and "repository_url" not in copy:
        problems.append(
            doc.problem(("copy",), "give repository_root or repository_url (where the copies go)")
        )
    for index, host in enumerate(data["hosts"]):
        if "copy_repository" in host and "copy_repository_file" in host:
            message = "give either copy_repository or copy_repository_file, not both"
            problems.append(doc.problem(("hosts", index, "copy_repository_file"), message))
    return problems


def _borg_copy_problems(doc, data: dict) -> list:
    """What a borg copy (a mirror of the primary's directory) cannot have: a password or
    a retention of its own."""
    problems = []
    copy = data["copy"]
    for key in ("password_file", "retention"):
        if key in copy:
            message = f"a borg copy mirrors its primary (same key and archives): drop {key}"
            problems.append(doc.problem(("copy", key), message))
    for index, host in enumerate(data["hosts"]):
        if "copy_password_file" in host:
            message = "a borg copy mirrors its primary (same key): drop copy_password_file"
            problems.append(doc.problem(("hosts", index, "copy_password_file"), message))
        if not host.get("copy_repository", "/").startswith(("/", "ssh://")):
            problems.append(doc.problem(("hosts", index, "copy_repository"), BORG_LOCATIONS))
    if not copy.get("repository_url", "/").startswith(("/", "ssh://")):
        problems.append(doc.problem(("copy", "repository_url"), BORG_LOCATIONS))
    return problems


def _copy_config(copy: dict | None) -> CopyConfig | None:
    if copy is None:
        return None
    return CopyConfig(
        repository_root=_path(copy.get("repository_root")),
        repository_url=copy.get("repository_url"),
        password_file=_path(copy.get("password_file")),
        max_age=parse_duration(copy["max_age"]),
        verify_every=parse_duration(copy["verify_every"]),
        retention=dict(copy["retention"]) if "retention" in copy else None,
    )


def _path(value: str | None) -> Path | None:
    return Path(value) if value else None


def load_server_config(path: str | os.PathLike = DEFAULT_PATH) -> ServerConfig:
    """Read and validate server.yaml. Raises ConfigError naming file, line and key."""
    doc = load_validated(path, load_schema("pullback.common", "server"), allow_empty=False)
    data = doc.data
    ssh = data["ssh"]
    backend = data["backend"]
    maintenance = data["maintenance"]
    default_verify = parse_duration(maintenance["verify_every"])
    default_max_age = parse_duration(data["max_age"])
    problems = []
    seen: dict[str, int] = {}
    hosts = []
    for index, host in enumerate(data["hosts"]):
        name = host["name"]
        if name in seen:
            problems.append(
                doc.problem(
                    ("hosts", index, "name"),
                    f"host '{name}' is listed twice (see hosts[{seen[name]}])",
                )
            )
            continue
        seen[name] = index
        hosts.append(
            HostConfig(
                name=name,
                address=host.get("address", name),
                port=host.get("port", ssh["port"]),
                user=host.get("user", ssh["user"]),
                repository=host.get("repository"),
                enabled=host["enabled"],
                retention={**data["retention"], **host.get("retention", {})},
                verify_every=parse_duration(host.get("verify_every", default_verify)),
                max_age=parse_duration(host.get("max_age", default_max_age)),
                min_interval=parse_duration(host.get("min_interval", data["min_interval"])),
                notify=notify_config(host.get("notify")),
                email_to=tuple(host.get("email_to", ())),
                key_file=Path(host["ssh_key_file"]) if host.get("ssh_key_file") else None,
                adopt_host=host.get("adopt_host"),
                repository_file=_path(host.get("repository_file")),
                maintenance_repository=host.get("maintenance_repository"),
                maintenance_repository_file=_path(host.get("maintenance_repository_file")),
                password_file=_path(host.get("password_file")),
                group=host.get("group"),
                copy_repository=host.get("copy_repository"),
                copy_repository_file=_path(host.get("copy_repository_file")),
                copy_password_file=_path(host.get("copy_password_file")),
                max_unpacked_size=parse_size(
                    host.get("max_unpacked_size", data["max_unpacked_size"])
                ),
                max_entries=host.get("max_entries", data["max_entries"]),
                max_archive_size=parse_size(host.get("max_archive_size", data["max_archive_size"])),
            )
        )
    problems += _double_locations(doc, data) + _group_problems(doc, data)
    problems += _copy_problems(doc, data) + _shared_locations(doc, data)
    if backend["type"] == "borg":
        problems += _borg_problems(doc, data)
    if problems:
        raise ConfigError(problems)
    return ServerConfig(
        path=Path(path),
        state_dir=Path(data["state_dir"]),
        lock_dir=Path(data["lock_dir"]),
        parallel=data["parallel"],
        host_timeout=parse_duration(data["host_timeout"]),
        pull_memory_limit=parse_size(data["pull_memory_limit"]),
        min_free_space=parse_size(data["min_free_space"]),
        partial_max_age=parse_duration(data["partial_max_age"]),
        lock_retries=data["lock_retries"],
        lock_wait=parse_duration(data["lock_wait"]),
        backend=BackendConfig(
            type=backend["type"],
            repository_root=Path(backend["repository_root"]),
            password_file=Path(backend["password_file"]),
            init=backend["init"],
            timeout=parse_duration(backend["timeout"]),
            backup_options=tuple(backend.get("backup_options", ())),
            repository_url=backend.get("repository_url"),
            maintenance_repository_url=backend.get("maintenance_repository_url"),
            copy=_copy_config(data.get("copy")),
        ),
        ssh=SshConfig(
            key_file=Path(ssh["key_file"]),
            known_hosts=Path(ssh["known_hosts"]),
            user=ssh["user"],
            port=ssh["port"],
            connect_timeout=parse_duration(ssh["connect_timeout"]),
            idle_timeout=parse_duration(ssh["idle_timeout"]),
            keepalive=parse_duration(ssh["keepalive"]),
        ),
        hosts=tuple(hosts),
        retention=dict(data["retention"]),
        email=email_config(data.get("email")),
        notify=notify_config(data.get("notify")),
        min_interval=parse_duration(data["min_interval"]),
        metrics_file=Path(data["metrics_file"]) if data.get("metrics_file") else None,
        status_page=Path(data["status_page"]) if data.get("status_page") else None,
        maintenance=MaintenanceConfig(
            check_subsets=maintenance["check_subsets"],
            prune=maintenance["prune"],
            forget=maintenance["forget"],
            guard=GuardLimits(
                **{
                    **maintenance["guard"],
                    "min_bytes": parse_size(maintenance["guard"]["min_bytes"]),
                }
            ),
            check=maintenance["check"],
            check_options=tuple(maintenance["check_options"]),
            borg_check_duration=parse_duration(maintenance["borg_check_duration"]),
            verify_every=default_verify,
            verify_max_age=parse_duration(maintenance["verify_max_age"]),
            repository_lock_wait=parse_duration(maintenance["repository_lock_wait"]),
            wait_for_pull=parse_duration(maintenance["wait_for_pull"]),
            scratch_dir=Path(maintenance["scratch_dir"])
            if maintenance.get("scratch_dir")
            else None,
            prove_databases=maintenance["prove_databases"],
            database_proof_dir=Path(maintenance["database_proof_dir"]),
            database_proof_timeout=parse_duration(maintenance["database_proof_timeout"]),
            timeout=parse_duration(maintenance["timeout"]),
        ),
    )
