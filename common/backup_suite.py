"""Reading backup-suite's configuration, to write pullback's: pure functions.

backup-suite (the shell project pullback replaces) keeps ``/etc/backup/server_config.yml``,
``/etc/backup/client_config.yml`` and the bash file ``/etc/backup/common_config``. Each
``convert_*`` function takes what was read and returns a :class:`Conversion`: pullback's
settings, one line per key saying where it went, and one line per key that has no
equivalent (and what pullback does instead). Nothing here touches a file.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import stat
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .errors import EXIT_OK, UsageError
from .fsutil import atomic_write
from .sandbox import HOMES

COMMON_LINE = re.compile(r"^\s*(?:readonly\s+|export\s+)?([A-Z_][A-Z0-9_]*)=(.*)$")


@dataclass
class Conversion:
    """pullback's settings made from backup-suite's, and what became of each key."""

    settings: dict[str, Any] = field(default_factory=dict)
    mapped: list[str] = field(default_factory=list)
    """``old.key -> new.key`` lines."""
    unmapped: list[str] = field(default_factory=list)
    """``old.key: why it has no equivalent, and what pullback does instead``."""

    def map(self, old: str, new: str) -> None:
        self.mapped.append(f"{old} -> {new}")

    def drop(self, old: str, why: str) -> None:
        self.unmapped.append(f"{old}: {why}")


def read_common_config(text: str) -> dict[str, str]:
    """The assignments of ``common_config`` (a bash file, read, never run): ``NAME=value``
    with shell quoting undone; lines that are not plain assignments are skipped."""
    found: dict[str, str] = {}
    for line in text.splitlines():
        match = COMMON_LINE.match(line)
        if not match:
            continue
        try:
            words = shlex.split(match[2], comments=True)
        except ValueError:
            continue
        found[match[1]] = words[0] if words else ""
    return found


RETENTION_FLAGS = {
    "--keep-last": "keep_last",
    "--keep-hourly": "keep_hourly",
    "--keep-daily": "keep_daily",
    "--keep-weekly": "keep_weekly",
    "--keep-monthly": "keep_monthly",
    "--keep-yearly": "keep_yearly",
    "--keep-within": "keep_within",
}


def retention_of(policy: str) -> tuple[dict[str, Any], list[str]]:
    """backup-suite's ``forget_policy`` (``--keep-daily 7 --keep-weekly 4``) as pullback's
    retention keys, and the words it could not use."""
    words = shlex.split(policy)
    retention: dict[str, Any] = {}
    left: list[str] = []
    index = 0
    while index < len(words):
        word = words[index]
        flag, _, inline = word.partition("=")
        if flag in RETENTION_FLAGS:
            value = inline or (words[index + 1] if index + 1 < len(words) else "")
            index += 1 if inline else 2
            key = RETENTION_FLAGS[flag]
            retention[key] = value if key == "keep_within" else int(value)
            continue
        left.append(word)
        index += 1
    return retention, left


def _recipients(value: Any) -> list[str]:
    if isinstance(value, list):
        return [str(v) for v in value if v]
    return [part.strip() for part in str(value or "").replace(";", ",").split(",") if part.strip()]


def _email(conv: Conversion, admin: Any, prefix: Any, msmtp: Any, source: str) -> None:
    to = _recipients(admin)
    if not to:
        return
    email: dict[str, Any] = {"to": to, "from": "pullback@localhost", "send": "on_problem"}
    conv.map(f"{source}admin_email", "email.to")
    conv.drop(
        "(sender)",
        "backup-suite sent without a From header; email.from is set to pullback@localhost: "
        "change it to an address your mail server accepts",
    )
    if prefix:
        email["subject_prefix"] = str(prefix)
        conv.map(f"{source}email_subject_prefix", "email.subject_prefix")
    email["sendmail"] = str(msmtp or "/usr/bin/msmtp")
    conv.map(f"{source}msmtp_cmd", "email.sendmail (msmtp, as before)")
    conv.settings["email"] = email


def convert_server(data: dict, common: dict[str, str] | None = None) -> Conversion:
    """``server_config.yml`` (and ``common_config``) as server.yaml settings."""
    common = common or {}
    conv = Conversion()
    glob = data.get("global") or {}
    restic = data.get("restic") or {}
    conv.settings["backend"] = _backend(conv, restic)
    _maintenance(conv, restic.get("maintenance") or {})

    _email(
        conv,
        glob.get("admin_email") or common.get("DEFAULT_ADMIN_EMAIL"),
        data.get("email_subject_prefix"),
        glob.get("msmtp_cmd") or common.get("MSMTP_CMD"),
        "global.",
    )
    for key, why in (
        (
            "local_temp_base_dir",
            "pullback unpacks into state_dir/staging/<host>, kept between pulls",
        ),
        ("yq_cmd", "not needed"),
        ("jq_cmd", "not needed"),
        ("log_level", "use -v or -q; the journal keeps every level"),
    ):
        if key in glob:
            conv.drop(f"global.{key}", why)
    if "hostname" in data:
        conv.drop("hostname", "the summary names the server by its host name")
    root = restic.get("repository_root")
    conv.settings["hosts"] = [
        _host(conv, n, host, str(root) if root else None)
        for n, host in enumerate(data.get("hosts") or [])
    ]
    return conv


def _backend(conv: Conversion, restic: dict) -> dict[str, Any]:
    backend: dict[str, Any] = {"type": "restic"}
    if restic.get("repository_root"):
        backend["repository_root"] = str(restic["repository_root"])
        conv.map("restic.repository_root", "backend.repository_root")
    if restic.get("password_file"):
        backend["password_file"] = str(restic["password_file"])
        conv.map("restic.password_file", "backend.password_file")
    if restic.get("backup_options"):
        backend["backup_options"] = shlex.split(str(restic["backup_options"]))
        conv.map("restic.backup_options", "backend.backup_options (a list, never a shell line)")
    if restic.get("restic_cmd"):
        conv.drop("restic.restic_cmd", "pullback runs the restic on the PATH (/usr/bin/restic)")
    return backend


def _maintenance(conv: Conversion, maintenance: dict) -> None:
    policy = maintenance.get("forget_policy")
    retention, left = retention_of(
        str(policy or "--keep-daily 7 --keep-weekly 4 --keep-monthly 12 --keep-yearly 3")
    )
    conv.settings["retention"] = retention
    conv.map(
        "restic.maintenance.forget_policy" if policy else "(backup-suite's default policy)",
        "retention",
    )
    if left:
        conv.drop("restic.maintenance.forget_policy", f"not understood: {' '.join(left)}")
    mode = str(maintenance.get("check_read_data_mode", "")).strip()
    if mode.endswith("%") and mode[:-1].isdigit() and int(mode[:-1]) > 0:
        conv.settings["maintenance"] = {"check_subsets": max(1, round(100 / int(mode[:-1])))}
        conv.map("restic.maintenance.check_read_data_mode", "maintenance.check_subsets")
    elif mode.lower() == "true":
        conv.settings["maintenance"] = {"check_subsets": 1}
        conv.map("restic.maintenance.check_read_data_mode", "maintenance.check_subsets: 1")
    settings = conv.settings.setdefault("maintenance", {})
    for key in ("prune", "check"):
        if key in maintenance:
            settings[key] = str(maintenance[key]).strip().lower() not in ("false", "no", "0")
            conv.map(f"restic.maintenance.{key}", f"maintenance.{key}")
    if maintenance.get("check_options"):
        settings["check_options"] = shlex.split(str(maintenance["check_options"]))
        conv.map(
            "restic.maintenance.check_options",
            "maintenance.check_options (a list; pullback adds its --read-data-subset)",
        )
    if not settings:
        del conv.settings["maintenance"]
    for key, why in (
        ("show_stats", "the repository size is in status.json and the metrics"),
        ("log_level", "use -v or -q"),
    ):
        if key in maintenance:
            conv.drop(f"restic.maintenance.{key}", why)


def _host(conv: Conversion, number: int, host: dict, root: str | None) -> dict[str, Any]:
    where = f"hosts[{number}]."
    name = str(host.get("hostname", f"host{number}"))
    out: dict[str, Any] = {"name": name.split(".")[0], "address": name}
    conv.map(f"{where}hostname", f"hosts[].name {out['name']!r} and address {name!r}")
    if root and out["name"] != name:  # backup-suite's repository is named by the full name
        out["repository"] = f"{root.rstrip('/')}/{name}"
        conv.map(f"{where}hostname", f"hosts[].repository {out['repository']!r} (as before)")
    out["adopt_host"] = name
    conv.map(
        f"{where}hostname",
        f"hosts[].adopt_host {name!r}: backup-suite's snapshots stay this host's "
        "(listed, restorable, under the same retention)",
    )
    if host.get("ssh_user"):
        conv.drop(
            f"{where}ssh_user",
            "pullback logs in as the client's `pullback` user (forced command `pullback-client "
            "serve`); add the server's key there (docs/server.md)",
        )
    if host.get("ssh_key_file"):
        _key(conv, where, str(host["ssh_key_file"]), out)
    if host.get("remote_tar_dir"):
        conv.drop(f"{where}remote_tar_dir", "the client's serve endpoint offers its archives")
    if host.get("admin_email"):
        out["email_to"] = _recipients(host["admin_email"])
        conv.map(f"{where}admin_email", "hosts[].email_to")
    if host.get("restic_forget_policy"):
        retention, left = retention_of(str(host["restic_forget_policy"]))
        out["retention"] = retention
        conv.map(f"{where}restic_forget_policy", "hosts[].retention")
        if left:
            conv.drop(f"{where}restic_forget_policy", f"not understood: {' '.join(left)}")
    return out


def _key(conv: Conversion, where: str, key: str, out: dict[str, Any]) -> None:
    """A host's own key; one in a home directory is moved to /etc/pullback/keys, where
    the server's units (``ProtectHome=yes``) can read it."""
    if not key.startswith(HOMES):
        out["ssh_key_file"] = key
        conv.map(f"{where}ssh_key_file", "hosts[].ssh_key_file")
        return
    moved = f"/etc/pullback/keys/{Path(key).name}"
    out["ssh_key_file"] = moved
    conv.map(f"{where}ssh_key_file", f"hosts[].ssh_key_file {moved!r}")
    conv.drop(
        f"{where}ssh_key_file",
        f"the server's units cannot read {key} (ProtectHome=yes): copy it with "
        f"`install -D -m 0600 {key} {moved}`",
    )


def convert_client(
    data: dict, common: dict[str, str] | None = None, service_dir: str = "/etc/backup"
) -> Conversion:
    """``client_config.yml`` (and ``common_config``) as client.yaml settings; the service
    files stay where they are (``service_dirs: [<service_dir>]``)."""
    common = common or {}
    conv = Conversion()
    settings = conv.settings
    settings["service_dirs"] = [service_dir]
    conv.map(f"(service files in {service_dir}/<type>/<name>/)", f"service_dirs: [{service_dir}]")
    if data.get("hostname"):
        settings["hostname"] = str(data["hostname"])
        conv.map("hostname", "hostname")
    keep = data.get("keep_days") or common.get("DEFAULT_KEEP_DAYS")
    if keep:
        settings["keep_days"] = int(keep)
        conv.map("keep_days", "keep_days")
    free = data.get("min_free_space_mb") or common.get("DEFAULT_MIN_FREE_SPACE_MB")
    if free:
        settings["min_free_space"] = f"{int(free)}M"
        conv.map("min_free_space_mb", "min_free_space")
    _email(
        conv,
        data.get("admin_email") or common.get("DEFAULT_ADMIN_EMAIL"),
        data.get("email_subject_prefix"),
        (data.get("tools") or {}).get("msmtp_cmd") or common.get("MSMTP_CMD"),
        "",
    )
    for key, why in (
        (
            "base_backup_dir",
            "archives go to archive_dir (/var/lib/pullback/archives), served to the server",
        ),
        ("backup_user", "the archives belong to root:pullback, read by the serve endpoint"),
        ("backup_group", "the archives belong to root:pullback, read by the serve endpoint"),
        ("plugin_dir", "pullback's plugins are Python packages (plugin_dirs for your own)"),
        ("log_level", "use -v or -q; the journal keeps every level"),
        ("tools", "pullback runs the tools on the PATH"),
    ):
        if key in data:
            conv.drop(key, why)
    return conv


def run_import(
    source: Path, target: Path, write: bool, convert: Callable[..., Conversion], old_name: str
) -> int:
    """``import-backup-suite``: read ``source/old_name`` (and ``source/common_config``),
    print what became of each key on standard error, and the new settings on standard
    output, or with ``write`` into ``target`` (the file there is kept beside it as
    ``<name>.before-import``). Returns the exit code; raises UsageError when the old file
    cannot be read."""
    old = source / old_name
    try:
        data = yaml.safe_load(old.read_text()) or {}
    except OSError as exc:
        raise UsageError(f"cannot read {old}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise UsageError(f"{old} is not YAML: {exc}") from None
    if not isinstance(data, dict):
        raise UsageError(f"{old}: expected a mapping of keys")
    common_file = source / "common_config"
    common = read_common_config(common_file.read_text()) if common_file.is_file() else {}
    conv = convert(data, common)
    for line in conv.mapped:
        print(f"mapped: {line}", file=sys.stderr)
    for line in conv.unmapped:
        print(f"no equivalent: {line}", file=sys.stderr)
    text = f"# made by import-backup-suite from {old}\n" + yaml.safe_dump(
        conv.settings, sort_keys=False
    )
    if not write:
        print(text, end="")
        return EXIT_OK
    if target.exists():
        kept = target.with_name(target.name + ".before-import")
        shutil.copy2(target, kept)
        print(f"kept the old {target} as {kept}", file=sys.stderr)
    before = target.stat() if target.exists() else None
    atomic_write(target, text, mode=stat.S_IMODE(before.st_mode) if before else 0o640)
    if before is not None:  # client.yaml is read by the serve endpoint's group
        os.chown(target, before.st_uid, before.st_gid)
    print(f"wrote {target}; now run the check command", file=sys.stderr)
    return EXIT_OK
