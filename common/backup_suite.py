"""Reading backup-suite's configuration, to write pullback's: pure functions.

backup-suite (the shell project pullback replaces) keeps ``/etc/backup/server_config.yml``,
``/etc/backup/client_config.yml`` and the bash file ``/etc/backup/common_config``. Each
``convert_*`` function takes what was read and returns a :class:`Conversion`: pullback's
settings, one line per key saying where it went, and one line per key that has no
equivalent (and what pullback does instead). Nothing here touches a file; reading and
writing is :mod:`.backup_suite_files`.

Every value is checked for its type before it is used (a list where a word belongs is
refused, so an alias bomb is never expanded): :class:`BadValue` names the key.
"""

from __future__ import annotations

import difflib
import ipaddress
import os
import re
import shlex
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .sandbox import HOMES
from .secrets import mask_url_password

COMMON_LINE = re.compile(r"^\s*(?:readonly\s+|export\s+)?([A-Z_][A-Z0-9_]*)=(.*)$")
DEFAULTED = re.compile(r"^\$\{[A-Za-z_][A-Za-z0-9_]*:?-(.*)\}$")
"""``${MSMTP_CMD:-msmtp}``: bash's "this variable, else the default"."""
HOST_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
SUITE_STAMP = re.compile(r"^\d{8}_\d{6}$")
"""backup-suite's archive time tag, ``YYYYmmdd_HHMMSS``."""
PULLBACK_DIR = "/etc/pullback"
"""Where a file moved out of backup-suite's directory or a home goes."""
DEFAULT_POLICY = "--keep-daily 7 --keep-weekly 4 --keep-monthly 12 --keep-yearly 3"
"""backup-suite's forget policy when none is set."""


class BadValue(ValueError):
    """A value of the old configuration that cannot be converted; ``key`` names it. A URL's
    password in the message is ``***``."""

    def __init__(self, key: str, message: str):
        self.key = key
        super().__init__(mask_url_password(f"{key}: {message}"))


@dataclass
class Conversion:
    """pullback's settings made from backup-suite's, and what became of each key.

    The lines are printed as they are (and pasted into tickets): a repository URL's
    password in them is ``***``, masked here, so that no line of either list shows it
    (``hosts[].repository 'rest:https://boss:S3cretPw99@...' (as before)`` did, an
    outside review).
    """

    settings: dict[str, Any] = field(default_factory=dict)
    mapped: list[str] = field(default_factory=list)
    """``old.key -> new.key`` lines."""
    unmapped: list[str] = field(default_factory=list)
    """``old.key: why it has no equivalent, and what pullback does instead``."""
    secret_files: dict[str, str] = field(default_factory=dict)
    """Files the new settings name that must hold a secret (path: its text), such as a
    repository URL with a password (``hosts[].repository_file``): written (mode 0600) by
    ``--write``, never printed."""

    def map(self, old: str, new: str) -> None:
        """Record that ``old`` became ``new`` (a URL's password masked)."""
        self.mapped.append(mask_url_password(f"{old} -> {new}"))

    def drop(self, old: str, why: str) -> None:
        """Record that ``old`` has no equivalent, and ``why`` (a URL's password masked)."""
        self.unmapped.append(mask_url_password(f"{old}: {why}"))


# -- typed reading ---------------------------------------------------------------------------


def section(data: dict, key: str, where: str = "") -> dict:
    """The mapping at ``key`` ({} when absent). Raises BadValue for anything else."""
    value = data.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise BadValue(f"{where}{key}", f"expected a mapping of keys, got {_kind(value)}")
    return value


def text(value: Any, key: str) -> str | None:
    """A scalar as text (None when absent or empty). Raises BadValue for a list or a
    mapping: a word is expected there."""
    if value is None or value == "":
        return None
    if isinstance(value, bool | int | float | str):
        return str(value)
    raise BadValue(key, f"expected a single value, got {_kind(value)}")


def number(value: Any, key: str) -> int | None:
    """A whole number of at least 0 (None when absent). Raises BadValue."""
    shown = text(value, key)
    if shown is None:
        return None
    if not re.fullmatch(r"\s*[0-9]+\s*", shown):
        raise BadValue(key, f"expected a whole number, got {shown!r}")
    return int(shown)


def words(value: Any, key: str) -> list[str]:
    """A shell-quoted line as its words (never run). Raises BadValue for an unbalanced
    quote."""
    line = text(value, key) or ""
    try:
        return shlex.split(line)
    except ValueError as exc:
        raise BadValue(key, f"cannot split {line!r} into words: {exc}") from None


def switch(value: Any, key: str) -> bool:
    """backup-suite's ``true``/``false`` (a YAML boolean or the word). Raises BadValue."""
    if isinstance(value, bool):
        return value
    word = (text(value, key) or "").strip().lower()
    if word in ("true", "false"):
        return word == "true"
    raise BadValue(key, f"expected true or false, got {word or 'nothing'!r}")


def _kind(value: Any) -> str:
    if isinstance(value, dict):
        return "a mapping"
    return "a list" if isinstance(value, list) else type(value).__name__


class Asked(dict):
    """A mapping of the old YAML file that remembers every key the conversion asked for
    (``get``, ``[]``, ``in``; iterating asks for all), as key paths into ``asked``."""

    def __init__(self, data: dict, asked: set[tuple], path: tuple):
        super().__init__(data)
        self._asked, self._path = asked, path

    def _ask(self, key: Any) -> None:
        self._asked.add((*self._path, str(key)))

    def get(self, key: Any, default: Any = None) -> Any:
        self._ask(key)
        return super().get(key, default)

    def __getitem__(self, key: Any) -> Any:
        self._ask(key)
        return super().__getitem__(key)

    def __contains__(self, key: object) -> bool:
        self._ask(key)
        return super().__contains__(key)

    def __iter__(self):
        for key in super().__iter__():
            self._ask(key)
        return super().__iter__()


def tracked(value: Any, asked: set[tuple], path: tuple = ()) -> Any:
    """``value`` with every mapping in it (also inside lists) an :class:`Asked` that
    records into ``asked``; other values as they are."""
    if isinstance(value, dict):
        return Asked(
            {key: tracked(item, asked, (*path, str(key))) for key, item in value.items()},
            asked,
            path,
        )
    if isinstance(value, list):
        return [tracked(item, asked, (*path, index)) for index, item in enumerate(value)]
    return value


def unasked(lines: dict[tuple, int], asked: set[tuple]) -> list[tuple[tuple, int, str]]:
    """The keys of the old file the conversion never asked for, each as ``(key path, line,
    why)``; below such a key nothing more is listed. ``lines`` are the file's key paths
    (list items included) and their lines."""
    found: list[tuple[tuple, int, str]] = []
    for path, line in sorted(lines.items(), key=lambda item: item[1]):
        if not path or isinstance(path[-1], int) or path in asked:
            continue
        above = [path[:n] for n in range(1, len(path)) if not isinstance(path[n - 1], int)]
        if all(parent in asked for parent in above):
            found.append((path, line, _unknown_why(path, asked)))
    return found


def _unknown_why(path: tuple, asked: set[tuple]) -> str:
    """Why an unasked key has no line of its own: backup-suite 0.2 reads no such key, and
    the known key it is closest to, if any (a misspelling)."""
    siblings = sorted({str(p[-1]) for p in asked if len(p) == len(path) and p[:-1] == path[:-1]})
    near = difflib.get_close_matches(str(path[-1]), siblings, n=1, cutoff=0.75)
    hint = f" (a misspelling of {near[0]}?)" if near else ""
    return (
        f"backup-suite 0.2 reads no such key{hint}: it had no effect there and is not "
        "converted; fix or remove it"
    )


def read_common_config(source: str) -> dict[str, str]:
    """The assignments of ``common_config`` (a bash file, read, never run): ``NAME=value``
    with shell quoting undone and ``${NAME:-default}`` taken as its default; lines that
    are not plain assignments, and values still naming a variable, are skipped."""
    found: dict[str, str] = {}
    for line in source.splitlines():
        match = COMMON_LINE.match(line)
        if not match:
            continue
        try:
            parts = shlex.split(match[2], comments=True)
        except ValueError:
            continue
        value = parts[0] if parts else ""
        defaulted = DEFAULTED.match(value)
        value = defaulted[1] if defaulted else value
        if "$" not in value:
            found[match[1]] = value
    return found


def command_path(name: str) -> str:
    """An absolute path for a command backup-suite named bare (``msmtp``): where it is
    installed, else ``/usr/bin/<name>``. Raises BadValue for a relative path or one with
    shell syntax."""
    if re.search(r"[`$;|&<>()~*?]", name) or ("/" in name and not name.startswith("/")):
        raise BadValue("msmtp_cmd", f"{name!r} is not a program pullback can run")
    if name.startswith("/"):
        return name
    return shutil.which(name) or f"/usr/bin/{name}"


def first(*candidates: tuple[str, Any]) -> tuple[str, Any]:
    """The first ``(key, value)`` whose value is set, or ``("", None)``: which old key a
    setting came from, for the mapping line."""
    return next(((key, value) for key, value in candidates if value not in (None, "")), ("", None))


# -- retention -------------------------------------------------------------------------------

RETENTION_FLAGS = {
    "--keep-last": "keep_last",
    "-l": "keep_last",
    "--keep-hourly": "keep_hourly",
    "-H": "keep_hourly",
    "--keep-daily": "keep_daily",
    "-d": "keep_daily",
    "--keep-weekly": "keep_weekly",
    "-w": "keep_weekly",
    "--keep-monthly": "keep_monthly",
    "-m": "keep_monthly",
    "--keep-yearly": "keep_yearly",
    "-y": "keep_yearly",
    "--keep-within": "keep_within",
}
WITHIN = re.compile(r"^\s*\d+[hdwmy]\s*$")


_TLS_OPTIONS = ("--insecure-tls", "--cacert", "--tls-client-cert")
"""restic's TLS options; all but the first take a value (``--cacert=F`` or ``--cacert F``)."""


def _without_tls(conv: Conversion, options: list[str]) -> list[str]:
    """``options`` without restic's TLS options (and their values), each dropped with the
    reason: in ``backup_options`` they would hold for the backup alone (pullback refuses
    them there)."""
    kept: list[str] = []
    items = iter(options)
    for word in items:
        name = word.split("=", 1)[0]
        if name not in _TLS_OPTIONS:
            kept.append(word)
            continue
        if name != "--insecure-tls" and "=" not in word:
            word = f"{word} {next(items, '')}".rstrip()
        conv.drop(
            f"restic.backup_options {word}",
            "it would hold for the backup alone, not for the checks and restores of the "
            "store; a private CA goes in SSL_CERT_FILE (docs/scaling.md)",
        )
    return kept


def retention_of(policy: str, key: str = "forget_policy") -> tuple[dict[str, Any], list[str]]:
    """backup-suite's ``forget_policy`` (``--keep-daily 7 --keep-weekly 4``, restic's short
    flags too) as pullback's retention keys, and the words it could not use. Raises
    BadValue for a count that is not a whole number."""
    tokens = words(policy, key)
    retention: dict[str, Any] = {}
    left: list[str] = []
    index = 0
    while index < len(tokens):
        flag, _, inline = tokens[index].partition("=")
        if flag not in RETENTION_FLAGS:
            left.append(tokens[index])
            index += 1
            continue
        given = "=" in tokens[index]
        value = inline if given else (tokens[index + 1] if index + 1 < len(tokens) else "")
        index += 1 if given else 2
        if not value or value.startswith("-"):
            raise BadValue(key, f"{flag} has no value")
        name = RETENTION_FLAGS[flag]
        if name == "keep_within":
            if not WITHIN.match(value):
                raise BadValue(key, f"{flag} {value!r}: expected a duration like 2d or 1w")
            retention[name] = value.strip()
        else:
            retention[name] = number(value, f"{key} {flag}")
    return retention, left


# -- mail ------------------------------------------------------------------------------------


def recipients(value: Any, key: str) -> list[str]:
    """Addresses from a list or a comma/semicolon separated line. Raises BadValue."""
    items = value if isinstance(value, list) else [value]
    found: list[str] = []
    for item in items:
        line = text(item, key) or ""
        found += [part.strip() for part in line.replace(";", ",").split(",") if part.strip()]
    return found


@dataclass(frozen=True)
class MailSources:
    """Where the mail settings came from: ``(old key, value)`` each."""

    admin: tuple[str, Any]
    prefix: tuple[str, Any]
    msmtp: tuple[str, Any]


def convert_email(conv: Conversion, sources: MailSources) -> None:
    """``email`` from the administrator's address, the subject prefix and msmtp."""
    to = recipients(sources.admin[1], sources.admin[0]) if sources.admin[0] else []
    if not to:
        for key, value in (sources.prefix, sources.msmtp):
            if key and value:
                conv.drop(key, "no admin_email was set: pullback sends no mail until email.to is")
        return
    email: dict[str, Any] = {"to": to, "from": "pullback@localhost", "send": "on_problem"}
    conv.map(sources.admin[0], "email.to")
    conv.drop(
        "(sender)",
        "backup-suite sent without a From header; email.from is set to pullback@localhost: "
        "change it to an address your mail server accepts",
    )
    prefix = text(sources.prefix[1], sources.prefix[0] or "email_subject_prefix")
    if prefix:
        email["subject_prefix"] = prefix
        conv.map(sources.prefix[0], "email.subject_prefix")
    said = sources.msmtp[0] or "(msmtp, backup-suite's mailer)"
    program, *arguments = words(sources.msmtp[1], said) or ["msmtp"]
    email["sendmail"] = command_path(program)
    conv.map(said, "email.sendmail")
    if arguments:
        conv.drop(
            said,
            f"pullback runs {email['sendmail']} -t -oi: move {' '.join(arguments)!r} into "
            "msmtp's configuration (e.g. its default account)",
        )
    if not Path(email["sendmail"]).is_file():
        conv.drop(said, f"{email['sendmail']} is not installed here")
    conv.settings["email"] = email


COMMON_KEYS = {
    "DEFAULT_ADMIN_EMAIL": "",
    "MSMTP_CMD": "",
    "DEFAULT_KEEP_DAYS": "",
    "DEFAULT_MIN_FREE_SPACE_MB": "",
    "UNIVENTION_BACKUP_CMD": "set univention.command in the univention service file",
    "DEFAULT_PLUGIN_DIR": "pullback's plugins are Python packages (plugin_dirs for your own)",
    "LOG_LEVEL_COMMON": "use -v or -q; the journal keeps every level",
}
"""common_config keys with a meaning of their own; every other one names a tool, which
pullback runs from the PATH."""


STANDARD_DIRS = ("/usr/bin", "/bin", "/usr/sbin", "/sbin", "/usr/local/bin")
"""Where the units' PATH finds a tool anyway."""
WRAPPERS = {"nice", "ionice", "chrt", "taskset", "nocache", "trickle"}
"""Programs that run another one at a lower priority or with a limit."""


def tool_advice(value: str, server: bool) -> str:
    """What pullback does instead of backup-suite's path to a tool (``value``, e.g.
    ``/usr/lib/postgresql/16/bin/pg_dump`` or ``nice -n 19 ionice -c3 restic``): the
    PATH, and how to keep the path's purpose in a unit drop-in. ``server`` picks the
    units named."""
    units = (
        "pullback-server.service pullback-maintain.service"
        if server
        else ("pullback-client.service")
    )
    try:
        parts = shlex.split(value)
    except ValueError:
        parts = value.split()
    wrappers = [word for word in parts if os.path.basename(word) in WRAPPERS]
    if wrappers:
        return (
            f"pullback runs the tool on the PATH, without {' '.join(parts[:-1])!r}; the units "
            "run at Nice=10, IOSchedulingClass=best-effort: for a lower priority set e.g. "
            f"Nice=19 and IOSchedulingClass=idle in a drop-in (systemctl edit {units})"
        )
    folder = os.path.dirname(parts[0]) if len(parts) == 1 and parts[0].startswith("/") else ""
    if folder and folder not in STANDARD_DIRS:
        return (
            f"pullback runs {os.path.basename(parts[0])} from the PATH, not {parts[0]} (for "
            "pg_dump, Debian's pg_wrapper picks the newest installed version): to keep this "
            f"one, set Environment=PATH={folder}:/usr/sbin:/usr/bin:/sbin:/bin in a drop-in "
            f"(systemctl edit {units})"
        )
    return "pullback runs the tools on the PATH"


def account_common(conv: Conversion, common: dict[str, str], used: set[str], server: bool) -> None:
    """One line for each common_config key the conversion did not use (``server``: for
    the server's units)."""
    for key in sorted(set(common) - used):
        why = COMMON_KEYS.get(key) or (
            tool_advice(common[key], server)
            if key.endswith("_CMD")
            else "not used by this side (client or server)"
        )
        conv.drop(f"common_config {key}", why)


def overridden(conv: Conversion, common: dict[str, str], chosen: dict[str, str]) -> None:
    """A line for each common_config key (``chosen``'s keys) whose setting came from
    another key (``chosen``'s values: the old key used, "" for none)."""
    for name, key in chosen.items():
        if name not in common or key == f"common_config {name}":
            continue
        conv.drop(
            f"common_config {name}",
            f"overridden by {key}, as in backup-suite" if key else "empty: nothing to convert",
        )


# -- the server ------------------------------------------------------------------------------


def convert_server(
    data: dict,
    common: dict[str, str] | None = None,
    source: str = "/etc/backup",
    config_dir: str = PULLBACK_DIR,
) -> Conversion:
    """``server_config.yml`` (and ``common_config``) read from ``source`` as server.yaml
    settings, for a server.yaml in ``config_dir``; a file below ``source`` is moved out
    (see :func:`move_out`). Raises BadValue."""
    common = common or {}
    conv = Conversion()
    glob = section(data, "global")
    restic = section(data, "restic")
    conv.settings["backend"] = _backend(conv, restic, source)
    _maintenance(conv, section(restic, "maintenance", "restic."))
    mail = MailSources(
        first(
            ("global.admin_email", glob.get("admin_email")),
            ("common_config DEFAULT_ADMIN_EMAIL", common.get("DEFAULT_ADMIN_EMAIL")),
        ),
        first(("email_subject_prefix", data.get("email_subject_prefix"))),
        first(
            ("global.msmtp_cmd", glob.get("msmtp_cmd")),
            ("common_config MSMTP_CMD", common.get("MSMTP_CMD")),
        ),
    )
    convert_email(conv, mail)
    overridden(conv, common, {"DEFAULT_ADMIN_EMAIL": mail.admin[0], "MSMTP_CMD": mail.msmtp[0]})
    account_common(conv, common, {"DEFAULT_ADMIN_EMAIL", "MSMTP_CMD"}, server=True)
    for key, why in (
        ("local_temp_base_dir", "pullback unpacks into state_dir/staging/<host>"),
        ("yq_cmd", "not needed"),
        ("jq_cmd", "not needed"),
        ("log_level", "use -v or -q; the journal keeps every level"),
    ):
        if key in glob:
            conv.drop(f"global.{key}", why)
    if "hostname" in data:
        conv.drop("hostname", "the summary names the server by its host name")
    hosts = data.get("hosts") or []
    if not isinstance(hosts, list) or not all(isinstance(h, dict) for h in hosts):
        raise BadValue("hosts", "expected a list of hosts, each a mapping of keys")
    names = host_names(
        [text(h.get("hostname"), f"hosts[{n}].hostname") for n, h in enumerate(hosts)]
    )
    context = HostContext(
        text(restic.get("repository_root"), "restic.repository_root"), conv, source, config_dir
    )
    conv.settings["hosts"] = [_host(context, n, host, names[n]) for n, host in enumerate(hosts)]
    return conv


def below(path: str, directory: str) -> bool:
    """Whether ``path`` lies in ``directory`` (compared as written, ``..`` resolved)."""
    path, directory = os.path.normpath(path), os.path.normpath(directory)
    return path.startswith(directory.rstrip("/") + "/")


def move_out(conv: Conversion, old: str, path: str, moved: str, why: str) -> None:
    """Say that the file ``path`` (of the old key ``old``) must be copied to ``moved``,
    which the new configuration names, and how."""
    conv.drop(old, f"{why}: copy it first with `install -D -m 0600 {path} {moved}`")


def host_names(full: list[str | None]) -> list[str]:
    """pullback's name for each old ``hostname``: its first label (``web1`` for
    ``web1.example.org``, as the client names itself), but the whole name for an IP
    address or when two hosts would share a first label. Raises BadValue."""
    for number, name in enumerate(full):
        if name is None or not HOST_NAME.match(name) or ".." in name:
            raise BadValue(
                f"hosts[{number}].hostname",
                f"expected a host name (letters, digits, '.', '_', '-'), got {name!r}",
            )
    short = [_short(name) for name in full if name]
    return [
        short_name if short.count(short_name) == 1 else name
        for name, short_name in zip(full, short, strict=True)
        if name
    ]


def _short(name: str) -> str:
    try:
        ipaddress.ip_address(name)
        return name
    except ValueError:
        return name.split(".")[0]


def _first_label(name: str) -> str:
    """The host name a client gives itself when ``name`` is its address: the first
    label, also of an IP address (which a client never names itself by)."""
    return name.split(".")[0]


_SCHEME = r"[A-Za-z][A-Za-z0-9+.-]*:"
_URL_PASSWORD = re.compile(
    rf"\A(?P<head>{_SCHEME}(?:{_SCHEME})?(?://)?)(?P<user>[^:@/]*):(?P<password>[^@]*)@"
)
"""A restic URL's ``user:password@``: ``rest:https://user:pw@...``, ``s3:https://...``
and restic's own ``rest:user:pw@host`` too; a password may hold anything but ``@``
(white space as well: the masking of printed lines stops there, so a line that shows
such a URL masks it with this rule first)."""


def remote(root: str | None) -> bool:
    """Whether backup-suite's ``repository_root`` is a restic repository URL
    (``rest:https://...``, ``sftp:host:/path``, ``s3:...``: a scheme first), not a
    directory (a relative one is no URL: pullback refuses it, as before)."""
    return bool(root) and re.match(_SCHEME, str(root)) is not None


def masked_password(url: str) -> str:
    """``url`` with the password :data:`_URL_PASSWORD` finds in it as ``***``."""
    return _URL_PASSWORD.sub(lambda m: f"{m['head']}{m['user']}:***@", url, count=1)


def _backend(conv: Conversion, restic: dict, source: str) -> dict[str, Any]:
    backend: dict[str, Any] = {"type": "restic"}
    root = text(restic.get("repository_root"), "restic.repository_root")
    if remote(root):
        conv.map(
            "restic.repository_root",
            "hosts[].repository or hosts[].repository_file (a URL: each host's repository "
            "below it, named by its full host name as before)",
        )
    elif root:
        backend["repository_root"] = root
        conv.map("restic.repository_root", "backend.repository_root")
        if below(root, source) or os.path.normpath(root) == os.path.normpath(source):
            conv.drop(
                "restic.repository_root",
                f"the repositories are in {source}: never remove {source} (or move them and "
                "change backend.repository_root first)",
            )
    password = text(restic.get("password_file"), "restic.password_file")
    if password and below(password, source):
        backend["password_file"] = f"{PULLBACK_DIR}/repository.pass"
        conv.map("restic.password_file", f"backend.password_file {backend['password_file']!r}")
        move_out(
            conv,
            "restic.password_file",
            password,
            backend["password_file"],
            f"the repositories' only password is in {source}, which the migration's last "
            "step removes; server.yaml names the copy",
        )
    elif password:
        backend["password_file"] = password
        conv.map("restic.password_file", "backend.password_file")
    backend["init"] = False
    conv.map(
        "(backup-suite's repositories exist)",
        "backend.init: false (a pull never makes a new one where an old one is missing)",
    )
    options = words(restic.get("backup_options"), "restic.backup_options")
    for blind in ("--ignore-inode", "--ignore-ctime"):
        if blind in options:
            options = [o for o in options if o != blind]
            conv.drop(
                f"restic.backup_options {blind}",
                "with it restic 0.14 compares no ctime and keeps a file's older bytes when "
                "it was rewritten with its old size and mtime (pullback refuses it)",
            )
    options = _without_tls(conv, options)
    if options:
        backend["backup_options"] = options
        conv.map("restic.backup_options", "backend.backup_options (a list, never a shell line)")
    restic_cmd = text(restic.get("restic_cmd"), "restic.restic_cmd")
    if restic_cmd:
        conv.drop("restic.restic_cmd", tool_advice(restic_cmd, server=True))
    return backend


def _maintenance(conv: Conversion, maintenance: dict) -> None:
    where = "restic.maintenance."
    policy = text(maintenance.get("forget_policy"), f"{where}forget_policy")
    retention, left = retention_of(policy or DEFAULT_POLICY, f"{where}forget_policy")
    said = f"{where}forget_policy" if policy else "(backup-suite's default policy)"
    if retention and not any(retention.values()):
        raise BadValue(f"{where}forget_policy", "keeps nothing (every count is 0)")
    if retention:
        conv.settings["retention"] = retention
        conv.map(said, "retention")
    else:
        conv.drop(said, "keeps nothing pullback understands: pullback's default retention applies")
    if left:
        conv.drop(f"{where}forget_policy", f"not understood: {' '.join(left)}")
    settings: dict[str, Any] = {}
    _read_data(
        conv,
        text(maintenance.get("check_read_data_mode"), f"{where}check_read_data_mode"),
        settings,
    )
    for key in ("prune", "check"):
        if key in maintenance:
            settings[key] = switch(maintenance[key], f"{where}{key}")
            conv.map(f"{where}{key}", f"maintenance.{key}")
    options = words(maintenance.get("check_options"), f"{where}check_options")
    options = _check_options(conv, options, settings)
    if options:
        settings["check_options"] = options
        conv.map(f"{where}check_options", "maintenance.check_options (a list)")
    if settings:
        conv.settings["maintenance"] = settings
    for key, why in (
        ("show_stats", "the repository size is in status.json and the metrics"),
        ("log_level", "use -v or -q"),
    ):
        if key in maintenance:
            conv.drop(f"{where}{key}", why)


def _read_data(
    conv: Conversion,
    mode: str | None,
    settings: dict[str, Any],
    key: str = "restic.maintenance.check_read_data_mode",
) -> None:
    """``check_read_data_mode`` (``true``, ``10%``, ``1/5``) as ``check_subsets``: each
    maintenance reads 1/N of the data, so all of it over N runs."""
    if mode is None:
        return
    subsets = read_data_subsets(mode)
    if subsets is None:
        conv.drop(
            key,
            f"{mode!r} not understood: pullback reads 1/8 of the data each run "
            "(maintenance.check_subsets)",
        )
        return
    settings["check_subsets"] = subsets
    conv.map(key, f"maintenance.check_subsets: {subsets}")


def read_data_subsets(mode: str) -> int | None:
    """How many runs read all the data for a restic read-data mode: ``true`` 1, ``10%``
    10, ``2/5`` 5; None for what is not understood (``false``, ``0%``, ``abc``)."""
    mode = mode.strip().lower().replace(" ", "")
    if mode == "true":
        return 1
    percent = re.fullmatch(r"(\d+(?:\.\d+)?)%", mode)
    if percent and 0 < float(percent[1]) <= 100:
        return max(1, round(100 / float(percent[1])))
    part = re.fullmatch(r"(\d+)/(\d+)", mode)
    if part and 0 < int(part[1]) <= int(part[2]):
        return int(part[2])
    return None


def _check_options(conv: Conversion, options: list[str], settings: dict[str, Any]) -> list[str]:
    """``check_options`` without the read-data ones, which become ``check_subsets``
    (pullback adds its own ``--read-data-subset``; restic refuses both at once)."""
    key = "restic.maintenance.check_options"
    kept: list[str] = []
    index = 0
    while index < len(options):
        option, _, inline = options[index].partition("=")
        index += 1
        if option == "--read-data":
            settings["check_subsets"] = 1
            conv.map(f"{key} --read-data", "maintenance.check_subsets: 1")
        elif option == "--read-data-subset":
            value = inline or (options[index] if index < len(options) else "")
            index += 0 if inline else 1
            _read_data(conv, value, settings, f"{key} --read-data-subset")
        else:
            kept.append(options[index - 1])
    return kept


@dataclass(frozen=True)
class HostContext:
    """What every host's conversion shares."""

    repository_root: str | None
    conv: Conversion
    source: str
    """The directory backup-suite's files were read from."""
    config_dir: str = PULLBACK_DIR
    """The directory of the new server.yaml (a repository URL's file goes below it)."""


def _host(context: HostContext, number: int, host: dict, name: str) -> dict[str, Any]:
    conv, where = context.conv, f"hosts[{number}]."
    full = str(host["hostname"])
    out: dict[str, Any] = {"name": name, "address": full}
    conv.map(f"{where}hostname", f"hosts[].name {name!r} and address {full!r}")
    if name == full and name != _first_label(full):
        conv.drop(
            f"{where}hostname",
            f"the name stays {full!r} (an IP address, or another host has the same first "
            f"label), but the client names itself by its short host name: set `hostname: "
            f"{full}` in that client's client.yaml",
        )
    if remote(context.repository_root):
        _remote_repository(context, where, full, name, out)
    elif context.repository_root and name != full:  # the old one is named by the full name
        out["repository"] = f"{context.repository_root.rstrip('/')}/{full}"
        conv.map(f"{where}hostname", f"hosts[].repository {out['repository']!r} (as before)")
    out["adopt_host"] = full
    conv.map(
        f"{where}hostname",
        f"hosts[].adopt_host {full!r}: backup-suite's snapshots stay this host's "
        "(listed, restorable, under the same retention)",
    )
    if host.get("ssh_user"):
        conv.drop(
            f"{where}ssh_user",
            "pullback logs in as the client's `pullback` user (forced command `pullback-client "
            "serve`); add the server's key there (docs/server.md)",
        )
    key = text(host.get("ssh_key_file"), f"{where}ssh_key_file")
    if key:
        _key(context, where, key, name, out)
    if host.get("remote_tar_dir"):
        conv.drop(f"{where}remote_tar_dir", "the client's serve endpoint offers its archives")
    _host_mail(conv, where, host, out)
    policy = text(host.get("restic_forget_policy"), f"{where}restic_forget_policy")
    if policy:
        _host_retention(conv, where, policy, out)
    return out


def _host_mail(conv: Conversion, where: str, host: dict, out: dict[str, Any]) -> None:
    """A host's ``admin_email`` (its warnings) and ``admin-email`` (backup_server.sh mailed
    it when the host's backup failed) as the host's ``email_to``."""
    to: list[str] = []
    for key in ("admin_email", "admin-email"):
        if host.get(key):
            to += [a for a in recipients(host[key], f"{where}{key}") if a not in to]
            conv.map(f"{where}{key}", "hosts[].email_to")
    if host.get("admin-email"):
        conv.drop(
            f"{where}admin-email",
            "backup-suite mailed it only when this host's backup failed; pullback mails "
            "email_to about every problem of this host",
        )
    if to:
        out["email_to"] = to


def _host_retention(conv: Conversion, where: str, policy: str, out: dict[str, Any]) -> None:
    """A host's own policy replaces the global one in backup-suite: every count it does
    not set is written as 0, so that pullback does not add the global ones."""
    retention, left = retention_of(policy, f"{where}restic_forget_policy")
    if not retention:
        conv.drop(f"{where}restic_forget_policy", "keeps nothing pullback understands: ignored")
        return
    counts = {name for name in RETENTION_FLAGS.values() if name != "keep_within"}
    out["retention"] = {**dict.fromkeys(sorted(counts), 0), **retention}
    conv.map(f"{where}restic_forget_policy", "hosts[].retention (the global counts set to 0)")
    if "keep_within" not in retention and "keep_within" in context_retention(conv):
        conv.drop(
            f"{where}restic_forget_policy",
            "the global --keep-within still applies to this host (pullback cannot unset it "
            "per host): give the host its own keep_within or remove the global one",
        )
    if left:
        conv.drop(f"{where}restic_forget_policy", f"not understood: {' '.join(left)}")


def context_retention(conv: Conversion) -> dict[str, Any]:
    """The global retention converted so far."""
    return conv.settings.get("retention") or {}


def _remote_repository(
    context: HostContext, where: str, full: str, name: str, out: dict[str, Any]
) -> None:
    """The host's repository below backup-suite's URL ``repository_root`` (named by its
    full host name): in ``repository``, or, a URL with a password, in a file of its own
    that ``repository_file`` names (the schema refuses the password in server.yaml)."""
    url = f"{str(context.repository_root).rstrip('/')}/{full}"
    if not _URL_PASSWORD.match(url):
        out["repository"] = url
        context.conv.map(f"{where}hostname", f"hosts[].repository {url!r} (as before)")
        return
    path = os.path.join(os.path.normpath(context.config_dir), "repositories", f"{name}.repo")
    out["repository_file"] = path
    context.conv.secret_files[path] = url + "\n"
    context.conv.map(
        f"{where}hostname",
        f"hosts[].repository_file {path!r}, holding {masked_password(url)!r} (as before; "
        "the URL has a "
        "password, which server.yaml never holds: --write writes the file, mode 0600)",
    )


def _key(context: HostContext, where: str, key: str, name: str, out: dict[str, Any]) -> None:
    """A host's own key; one in a home directory (which the server's units,
    ``ProtectHome=yes``, cannot read) or below backup-suite's directory (which the
    migration's last step removes) is moved to /etc/pullback/keys/<name>."""
    conv = context.conv
    if key.startswith(HOMES):
        why = f"the server's units cannot read {key} (ProtectHome=yes)"
    elif below(key, context.source):
        why = f"{key} is in {context.source}, which the migration's last step removes"
    else:
        out["ssh_key_file"] = key
        conv.map(f"{where}ssh_key_file", "hosts[].ssh_key_file")
        return
    moved = f"{PULLBACK_DIR}/keys/{name}"
    out["ssh_key_file"] = moved
    conv.map(f"{where}ssh_key_file", f"hosts[].ssh_key_file {moved!r}")
    move_out(conv, f"{where}ssh_key_file", key, moved, why)


# -- the client ------------------------------------------------------------------------------


def convert_client(
    data: dict, common: dict[str, str] | None = None, service_dir: str = "/etc/backup"
) -> Conversion:
    """``client_config.yml`` (and ``common_config``) as client.yaml settings; the service
    files stay where they are (``service_dirs: [<service_dir>]``). Raises BadValue."""
    common = common or {}
    conv = Conversion()
    settings = conv.settings
    settings["service_dirs"] = [service_dir]
    conv.map(f"(service files in {service_dir}/<type>/<name>/)", f"service_dirs: [{service_dir}]")
    hostname = text(data.get("hostname"), "hostname")
    if hostname:
        (settings["hostname"],) = host_names([hostname])
        conv.map(
            "hostname",
            f"hostname {settings['hostname']!r} (the name pullback-server import-backup-suite "
            "gives this host; archives are named by it)",
        )
    key, keep = first(
        ("keep_days", data.get("keep_days")),
        ("common_config DEFAULT_KEEP_DAYS", common.get("DEFAULT_KEEP_DAYS")),
    )
    chosen = {"DEFAULT_KEEP_DAYS": key}
    if keep is not None:
        settings["keep_days"] = number(keep, key)
        conv.map(key, "keep_days")
    key, free = first(
        ("min_free_space_mb", data.get("min_free_space_mb")),
        ("common_config DEFAULT_MIN_FREE_SPACE_MB", common.get("DEFAULT_MIN_FREE_SPACE_MB")),
    )
    chosen["DEFAULT_MIN_FREE_SPACE_MB"] = key
    if free is not None:
        settings["min_free_space"] = f"{number(free, key)}M"
        conv.map(key, "min_free_space")
    tools = section(data, "tools")
    mail = MailSources(
        first(
            ("admin_email", data.get("admin_email")),
            ("common_config DEFAULT_ADMIN_EMAIL", common.get("DEFAULT_ADMIN_EMAIL")),
        ),
        first(("email_subject_prefix", data.get("email_subject_prefix"))),
        first(
            ("tools.msmtp_cmd", tools.get("msmtp_cmd")),
            ("common_config MSMTP_CMD", common.get("MSMTP_CMD")),
        ),
    )
    convert_email(conv, mail)
    chosen["DEFAULT_ADMIN_EMAIL"], chosen["MSMTP_CMD"] = mail.admin[0], mail.msmtp[0]
    overridden(conv, common, chosen)
    account_common(conv, common, set(chosen), server=False)
    for key, why in (
        (
            "base_backup_dir",
            "archives go to archive_dir (/var/lib/pullback/archives), served to the server",
        ),
        ("backup_user", "the archives belong to root:pullback, read by the serve endpoint"),
        ("backup_group", "the archives belong to root:pullback, read by the serve endpoint"),
        ("plugin_dir", "pullback's plugins are Python packages (plugin_dirs for your own)"),
        ("log_level", "use -v or -q; the journal keeps every level"),
    ):
        if key in data:
            conv.drop(key, why)
    for tool in sorted(set(tools) - {"msmtp_cmd"}):
        conv.drop(f"tools.{tool}", tool_advice(text(tools[tool], f"tools.{tool}") or "", False))
    return conv
