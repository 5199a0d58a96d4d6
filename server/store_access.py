"""What a rebuilt server needs to reach the stores its repositories and copies are in,
besides the password and location files server.yaml names (docs/disaster-recovery.md).

restic and borg run ``ssh`` themselves for ``sftp:`` and ``ssh://`` stores, and take an
S3 (or B2, Azure, GCS, Swift, rclone) store's credentials from the units' environment
(docs/scaling.md, *sftp, S3 and borg over ssh*). So a server is reached through:

- the drop-ins under ``/etc/ssh/ssh_config.d/`` whose ``Host`` (or ``Match``) blocks the
  stores' hosts match, and the files those blocks name (``IdentityFile``,
  ``CertificateFile``, ``UserKnownHostsFile``, ``GlobalKnownHostsFile``,
  ``RevokedHostKeys``);
- the systemd drop-ins and overrides of pullback's units (``/etc/systemd/system/
  pullback-*.d/*.conf``, ``pullback-*``), and the files they name: ``EnvironmentFile=``,
  ``LoadCredential=``, an ``Environment=`` variable that names a file
  (``AWS_SHARED_CREDENTIALS_FILE`` and every ``*_FILE``, ``GOOGLE_APPLICATION_CREDENTIALS``,
  ``RCLONE_CONFIG``, ``RESTIC_CACERT``, ``RESTIC_TLS_CLIENT_CERT``) and the key, config
  and known hosts files of a ``BORG_RSH``.

Nothing here reads more than ``MAX_FILE`` bytes of one file nor looks at more than
``MAX_FILES`` files; what it cannot name or read is said in words (``Access.notes``), for
the administrator to bring. A file named by a token (``%d``, ``~``) or a relative path
is said, not guessed.
"""

from __future__ import annotations

import fnmatch
import itertools
import re
import shlex
import stat
from dataclasses import dataclass, field
from pathlib import Path

from .backends import Role
from .backends.errors import BackendError
from .backends.location import locate
from .config import ServerConfig

MAX_FILE = 1 << 20
"""Bytes of one file read or carried at most: a larger one is said, never read."""
MAX_FILES = 256
"""Files of the ssh and systemd configuration looked at at most."""

SSH_FILE_KEYWORDS = {
    word.lower(): word
    for word in (
        "IdentityFile",
        "CertificateFile",
        "UserKnownHostsFile",
        "GlobalKnownHostsFile",
        "RevokedHostKeys",
    )
}
"""The ssh_config keywords that name files (lower case: as ssh, any case), as written."""
FILE_VARIABLES = {
    "GOOGLE_APPLICATION_CREDENTIALS",
    "RCLONE_CONFIG",
    "RESTIC_CACERT",
    "RESTIC_TLS_CLIENT_CERT",
    "SSL_CERT_FILE",  # the CA Debian 12's restic 0.14 trusts (it reads no RESTIC_CACERT)
}
ENVIRONMENT_SCHEMES = ("s3:", "b2:", "azure:", "gs:", "swift:", "rclone:")
SSH_URL = re.compile(r"(?:sftp|ssh)://(?:[^@/]*@)?(?P<host>\[[^\]/]+\]|[^:/]+)")
SFTP_SHORT = re.compile(r"sftp:(?:[^@/:]*@)?(?P<host>[^@/:]+):")


@dataclass(frozen=True)
class SystemPaths:
    """Where this server's ssh client and systemd configuration are (tests give others)."""

    ssh_config_dir: Path = Path("/etc/ssh/ssh_config.d")
    systemd_dir: Path = Path("/etc/systemd/system")


@dataclass(frozen=True)
class Secret:
    """A file the bundle's encrypted part carries, and why."""

    path: Path
    what: str
    required: bool = True
    """Named by server.yaml: one that cannot be carried stops the export. The others
    (found in the ssh and systemd configuration) are said and left out."""


@dataclass(frozen=True)
class Store:
    """A place outside this server that repositories or copies are in."""

    shown: str
    """Its location, passwords masked (as locations.txt says it)."""
    ssh_host: str | None
    """The host ``ssh`` is run for (``sftp:``, ``ssh://``)."""
    environment: bool
    """Reached with credentials from the units' environment (``s3:`` …)."""


MAX_NAMED = 256
"""Files the configuration files may name (keys, known hosts, credentials): past it, the
rest are said, not carried (an outside attack: 130 000 names on one line took minutes)."""


SYSTEM_FILES = frozenset(
    Path(p) for p in ("/etc/passwd", "/etc/group", "/etc/shadow", "/etc/gshadow", "/etc/sudoers")
)


def _system_file(path: Path) -> bool:
    """A file of the machine itself (its accounts, its SSH host keys): an outside review
    had a unit's ``EnvironmentFile=/etc/shadow`` carried, to be unpacked over the new
    server's."""
    return path in SYSTEM_FILES or (
        path.parent == Path("/etc/ssh") and path.name.startswith("ssh_host_")
    )


@dataclass
class Access:
    """The files that reach the stores, and what cannot be carried, in words."""

    files: list[Secret] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    never: frozenset[Path] = frozenset()
    """Files never carried: the server's own SSH key (clients trust it)."""
    _seen: set[Path] = field(default_factory=set)
    _full: bool = False
    _named: int = 0

    def add(self, path: Path, what: str, *, named: bool = True) -> None:
        """Carry ``path`` once. A file a configuration file names (``named``) counts
        against :data:`MAX_NAMED`; a configuration file itself (bounded by MAX_FILES)
        does not."""
        if path in self._seen:
            return
        self._seen.add(path)
        if _system_file(path):
            self.notes.append(
                f"{what}: {path} is a system file, never carried (unpacked on a new server it "
                "would replace that server's own)"
            )
        elif path in self.never:
            self.notes.append(
                f"{what}: {path} is this server's own SSH key, never carried: a new server "
                "makes its own (disaster-recovery.md), and the store must be told its key"
            )
        elif not named or self._named < MAX_NAMED:
            self._named += named
            self.files.append(Secret(path, what, required=False))
        elif not self._full:  # said once
            self._full = True
            self.notes.append(f"more than {MAX_NAMED} files named: the rest is not carried")


def problem(path: Path) -> str | None:
    """Why ``path`` cannot be carried (missing, not a regular file, over MAX_FILE
    bytes, unreadable), or None."""
    try:
        found = path.stat()
    except FileNotFoundError:
        return "missing"
    except OSError as exc:
        return f"cannot be read: {exc.strerror}"
    if not stat.S_ISREG(found.st_mode):
        return "not a regular file"
    if found.st_size > MAX_FILE:
        return f"{found.st_size} bytes, over the bound of {MAX_FILE}"
    return None


def read_bounded(path: Path) -> bytes:
    """The bytes of ``path`` (never more than MAX_FILE: a file that grew past it since
    it was looked at raises OSError)."""
    with path.open("rb") as stream:
        data = stream.read(MAX_FILE + 1)
    if len(data) > MAX_FILE:
        raise OSError(0, f"over the bound of {MAX_FILE} bytes")
    return data


def _store(shown: str) -> Store | None:
    """The store ``shown`` is in, or None (a local path; a REST server, whose
    credentials are in its location file)."""
    match = SSH_URL.match(shown) or SFTP_SHORT.match(shown)
    if match is not None:
        return Store(shown, match["host"].strip("[]"), environment=False)
    if shown.startswith(ENVIRONMENT_SCHEMES):
        return Store(shown, None, environment=True)
    return None


def stores(config: ServerConfig) -> list[Store]:
    """Every store outside this server that a host's repository or copy is in, for
    every role (a location that cannot be read is said by locations.txt)."""
    found: dict[str, Store] = {}
    roles = [Role.PULL, Role.MAINTAIN] + ([Role.COPY] if config.backend.copy else [])
    for host in config.hosts:
        for role in roles:
            try:
                shown = locate(config.backend, host, role).shown
            except BackendError:
                continue
            store = _store(shown)
            if store is not None:
                found.setdefault(shown, store)
    return list(found.values())


def _text(path: Path, access: Access) -> str | None:
    """The text of a configuration file looked at, or None (said in ``access``)."""
    why = problem(path)
    if why is None:
        try:
            return read_bounded(path).decode(errors="replace")
        except OSError as exc:
            why = f"cannot be read: {exc.strerror}"
    access.notes.append(f"{path} was not looked at ({why})")
    return None


def _named(value: str, what: str, access: Access) -> None:
    """Carry the file a configuration setting names, or say why it cannot be said."""
    if value.lower() == "none":
        return
    if value.startswith("~") or "%" in value or not value.startswith("/"):
        access.notes.append(
            f"{what}: {value!r} is no absolute path (it depends on who runs the command): "
            "bring that file"
        )
        return
    access.add(Path(value), what)


# ssh client configuration ------------------------------------------------------------


def _ssh_blocks(text: str) -> list[tuple[list[str] | None, list[tuple[str, str]]]]:
    """The blocks of an ssh_config file: their host patterns (None: before any Host,
    ``["*"]``: a Match block, which may apply to any host) and their settings."""
    blocks: list[tuple[list[str] | None, list[tuple[str, str]]]] = [(None, [])]
    for line in text.splitlines():
        match = re.match(r"\s*([A-Za-z]+)\s*(?:=\s*|\s+)(.*?)\s*$", line)
        if match is None or line.lstrip().startswith("#"):
            continue
        keyword, value = match[1].lower(), match[2]
        if keyword in ("host", "match"):
            blocks.append((value.split() if keyword == "host" else ["*"], []))
        else:
            blocks[-1][1].append((keyword, value))
    return blocks


def host_matches(patterns: list[str] | None, host: str) -> bool:
    """Whether a ``Host`` line's patterns take ``host`` (a negated pattern that matches
    excludes it; None, the settings before any Host, take every host)."""
    if patterns is None:
        return True
    taken = False
    for pattern in patterns:
        if fnmatch.fnmatchcase(host.lower(), pattern.lstrip("!").lower()):
            if pattern.startswith("!"):
                return False
            taken = True
    return taken


def _ssh_words(value: str) -> list[str]:
    try:
        return shlex.split(value)
    except ValueError:
        return value.split()


def _ssh_config(path: Path, hosts: set[str], access: Access, reached: dict[str, set[str]]) -> None:
    """Carry ``path`` (an ssh_config drop-in) when a Host block of it takes a store's
    host, with the files the blocks that take one name; ``reached`` gains those hosts,
    each with the file keywords set for it."""
    text = _text(path, access)
    if text is None:
        return
    carried = False
    for patterns, settings in _ssh_blocks(text):
        taken = {host for host in hosts if host_matches(patterns, host)}
        if patterns is None and all(k not in SSH_FILE_KEYWORDS for k, _ in settings):
            continue  # settings for every host, but none that reaches a store
        if not taken:
            continue
        carried = True
        for host in taken:
            reached.setdefault(host, set()).update(k for k, _ in settings)
        _block_files(path, taken, settings, access)
    if carried:
        stores = ", ".join(sorted(hosts & set(reached)))
        access.add(path, f"ssh configuration of the store {stores}", named=False)


def _block_files(
    path: Path, taken: set[str], settings: list[tuple[str, str]], access: Access
) -> None:
    """Carry the files one Host block of ``path`` that takes the stores ``taken`` names;
    an Include is said, not followed."""
    for keyword, value in settings:
        if keyword in SSH_FILE_KEYWORDS:
            what = f"{SSH_FILE_KEYWORDS[keyword]} in {path}, for {', '.join(sorted(taken))}"
            for word in _ssh_words(value):
                _named(word, what, access)
        elif keyword == "include":
            access.notes.append(f"{path} includes {value!r}, which is not followed: bring it")


# systemd units ----------------------------------------------------------------------


def unit_files(systemd_dir: Path) -> list[Path]:
    """pullback's units' drop-ins and local overrides below ``systemd_dir`` (links,
    such as a unit masked to /dev/null, are not files of the administrator's)."""
    found = sorted(systemd_dir.glob("pullback-*.d/*.conf"))
    found += sorted(p for p in systemd_dir.glob("pullback-*") if not p.is_dir())
    return [p for p in found if not p.is_symlink()]


def _borg_rsh(value: str, what: str, access: Access) -> None:
    """Carry the key, config and known hosts files a ``BORG_RSH`` command names."""
    words = _ssh_words(value)
    for flag, word in itertools.pairwise(words):
        if flag in ("-i", "-F"):
            _named(word, what, access)
        elif flag == "-o" and "=" in word:
            keyword, _, setting = word.partition("=")
            if keyword.strip().lower() in SSH_FILE_KEYWORDS:
                for path in setting.split():
                    _named(path, what, access)


def _assignment(text: str, what: str, access: Access) -> bool:
    """Carry the file an ``Environment=`` assignment names; True for a BORG_RSH."""
    name, _, value = text.partition("=")
    if name == "BORG_RSH":
        _borg_rsh(value, f"BORG_RSH in {what}", access)
        return True
    if value.startswith("/") and (name in FILE_VARIABLES or name.endswith("_FILE")):
        _named(value, f"{name} in {what}", access)
    return False


def _unit_file(path: Path, access: Access) -> tuple[bool, bool]:
    """Carry a unit drop-in and the files it names; whether it sets any environment,
    and whether it sets a BORG_RSH."""
    text = _text(path, access)
    if text is None:
        return False, False
    access.add(path, "a drop-in of pullback's units", named=False)
    environment = borg_rsh = False
    for line in text.splitlines():
        key, _, value = line.strip().partition("=")
        key, value = key.strip(), value.strip()
        if key == "Environment":
            environment = True
            for assignment in _ssh_words(value):
                borg_rsh |= _assignment(assignment, str(path), access)
        elif key == "EnvironmentFile" and value:
            environment = True
            _named(value.lstrip("-"), f"EnvironmentFile in {path}", access)
        elif key in ("LoadCredential", "LoadCredentialEncrypted") and ":" in value:
            _named(value.partition(":")[2], f"{key} in {path}", access)
    return environment, borg_rsh


# what the stores need ---------------------------------------------------------------


def access_files(config: ServerConfig, system: SystemPaths) -> Access:
    """The files that reach the stores ``config`` places repositories and copies in
    (the units' drop-ins always: they also hold ``ReadWritePaths=``), and what a new
    server needs that they do not give, in words."""
    access = Access(never=frozenset({config.ssh.key_file}))
    units = unit_files(system.systemd_dir)
    drop_ins = sorted(system.ssh_config_dir.glob("*.conf"))
    if len(units) + len(drop_ins) > MAX_FILES:
        access.notes.append(
            f"more than {MAX_FILES} ssh and systemd configuration files: none was looked at"
        )
        return access
    environment = borg_rsh = False
    for path in units:
        sets, rsh = _unit_file(path, access)
        environment, borg_rsh = environment or sets, borg_rsh or rsh
    found = stores(config)
    hosts = {store.ssh_host for store in found if store.ssh_host is not None}
    reached: dict[str, set[str]] = {}
    for path in drop_ins if hosts else []:
        _ssh_config(path, hosts, access, reached)
    borg = config.backend.type == "borg"
    access.notes += _unreached(found, set(reached), environment, borg and borg_rsh, system)
    access.notes += _defaults_used(reached)
    return access


def _defaults_used(reached: dict[str, set[str]]) -> list[str]:
    """What a store's host takes from ssh's defaults, not from a drop-in (the key and the
    known hosts in the home of the user the command runs as): not carried, so said (an
    outside review: a drop-in naming only User and Port gave no word of them)."""
    notes = []
    for host, keywords in sorted(reached.items()):
        missing = [
            word for word in ("IdentityFile", "UserKnownHostsFile") if word.lower() not in keywords
        ]
        if missing:
            notes.append(
                f"the ssh configuration of {host} names no {' and no '.join(missing)}: ssh "
                "uses the ones in the home of the user it runs as (~/.ssh), which are not in "
                "this bundle: bring them"
            )
    return notes


def _unreached(
    found: list[Store], reached: set[str], environment: bool, rsh: bool, system: SystemPaths
) -> list[str]:
    """What a new server needs for a store that neither an ssh_config drop-in (nor for
    borg a BORG_RSH: ``rsh``) reaches, or (S3 …) no unit's environment gives credentials."""
    notes = []
    for store in found:
        if store.ssh_host is not None and store.ssh_host not in reached:
            if not rsh:
                notes.append(
                    f"no drop-in in {system.ssh_config_dir} takes {store.ssh_host}, the host "
                    f"of {store.shown}: the ssh configuration that reaches it (its key, "
                    f"its pinned host key) is not in this bundle: bring it"
                )
        elif store.environment and not environment:
            notes.append(
                f"{store.shown} takes its credentials from the units' environment, and no "
                f"drop-in of pullback's units in {system.systemd_dir} sets one: bring them"
            )
    return notes
