"""``pullback-server export-recovery``: what a new server needs when this one is lost.

The bundle is a tar file (mode 0600) to keep away from this server:

- ``server.yaml`` as it is (it never holds a password: the schema refuses one);
- ``known_hosts`` (the clients' pinned host keys) and ``server-key.pub`` (this server's
  public key, which the clients' ``authorized_keys`` name), with ``fingerprints.txt``;
- ``locations.txt``: per host, where its repository, its maintenance endpoint and its
  copy are (passwords masked) and which password file opens each;
- ``README.txt``: what to do with it (docs/disaster-recovery.md);
- only with ``--with-secrets --recipient FILE``: ``secrets.tar.age``, the password files,
  the location files (URLs that carry passwords) and the hosts' own SSH keys, and what
  reaches the stores outside this server (store_access: the ssh_config drop-ins the
  stores' hosts match and the keys and known hosts files they name, the drop-ins of
  pullback's units and the credential files they name), under their absolute paths with
  their owners and modes, encrypted with ``age`` to the recipients in FILE (age public
  keys or SSH public keys) before they leave memory. Without it, README.txt names every
  such file, for the administrator to bring.

No file bigger than ``store_access.MAX_FILE`` is read: one named by server.yaml stops the
export, one found in the ssh or systemd configuration is left out and said (on standard
error and in README.txt), as is one that is missing.

The server's own private SSH key never goes in: a rebuilt server makes its own, and each
client is told the new public key in one step.
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import subprocess
import tarfile
import time
from pathlib import Path

from ..common.errors import EXIT_OK, PullbackError, UsageError
from ..common.fsutil import atomic_write
from ..common.log import get_logger
from .backends import Role
from .backends.errors import BackendError
from .backends.location import locate
from .config import HostConfig, ServerConfig
from .store_access import Secret, SystemPaths, access_files, problem, read_bounded

log = get_logger("export-recovery")

PREFIX = "pullback-recovery"
README = """\
pullback recovery bundle of {server}, written {when}

The backup server is gone: docs/disaster-recovery.md ("Rebuilding the server") says how
to use this. In short: install pullback-server on a new machine, put server.yaml and
known_hosts back in /etc/pullback, decrypt secrets.tar.age with the age identity whose
recipient it was made for and unpack it at / with tar -xpf (it holds the password and
location files, and what reaches the stores, under their own paths with their modes),
systemctl daemon-reload, point backend.repository_root (or repository_url) at the
copies, and give every client the new server's public key.

locations.txt says where every host's repositories are.

{secrets}
"""


def secret_files(config: ServerConfig) -> list[Secret]:
    """Every secret file the configuration names (each once): the repositories'
    passwords, location files that may carry passwords, the hosts' own SSH keys."""
    found: dict[Path, str] = {config.backend.password_file: "backend.password_file"}
    if config.backend.copy is not None and config.backend.copy.password_file:
        found.setdefault(config.backend.copy.password_file, "copy.password_file")
    for host in config.hosts:
        for key, path in _host_files(host):
            found.setdefault(path, f"hosts[{host.name}].{key}")
    return [Secret(path, what) for path, what in found.items()]


def _host_files(host: HostConfig) -> list[tuple[str, Path]]:
    files = {
        "password_file": host.password_file,
        "repository_file": host.repository_file,
        "maintenance_repository_file": host.maintenance_repository_file,
        "copy_repository_file": host.copy_repository_file,
        "copy_password_file": host.copy_password_file,
        "ssh_key_file": host.key_file,
    }
    return [(key, path) for key, path in files.items() if path is not None]


def locations(config: ServerConfig) -> str:
    """``locations.txt``: per host, each role's repository (masked) and password file."""
    lines = []
    for host in config.hosts:
        lines.append(f"{host.name}:")
        roles = [Role.PULL, Role.MAINTAIN] + ([Role.COPY] if config.backend.copy else [])
        for role in roles:
            lines.append(f"  {role.value:9} {_shown(config, host, role)}")
        lines.append(f"  password  {host.password_file or config.backend.password_file}")
        if config.backend.copy is not None:
            copy_password = (
                host.copy_password_file
                or config.backend.copy.password_file
                or host.password_file
                or config.backend.password_file
            )
            lines.append(f"  copy password {copy_password}")
    return "\n".join(lines) + "\n"


def _shown(config: ServerConfig, host: HostConfig, role: Role) -> str:
    try:
        found = locate(config.backend, host, role)
    except BackendError as exc:
        return f"(cannot say: {exc})"
    return found.shown + (f"  (from {found.file})" if found.file else "")


def fingerprints(paths: list[Path]) -> str:
    """``ssh-keygen -lf`` of each public key file (host keys, the server's key)."""
    out = []
    for path in paths:
        if path.is_file():
            listed = subprocess.run(
                ["ssh-keygen", "-lf", str(path)], capture_output=True, text=True, check=False
            )
            out.append(f"# {path}\n{listed.stdout or listed.stderr}")
    return "\n".join(out)


def carried(secrets: list[Secret], strict: bool) -> tuple[list[Secret], list[str]]:
    """The secrets that can be carried, and why each other one cannot. Raises
    PullbackError, when ``strict``, for one server.yaml names (its repositories cannot
    be opened without it)."""
    kept, notes = [], []
    for secret in secrets:
        why = problem(secret.path)
        if why is None:
            kept.append(secret)
        elif secret.required and strict:
            raise PullbackError(f"{secret.path} ({secret.what}) cannot be carried: {why}")
        else:
            notes.append(f"{secret.path} ({secret.what}): {why}")
    return kept, notes


def encrypted(secrets: list[Secret], recipients: Path) -> bytes:
    """A tar of ``secrets`` (absolute paths, owners and modes kept) encrypted with
    ``age -R recipients``; the plain tar exists only in memory. Raises PullbackError
    when age is missing, a secret file cannot be read, or age refuses the recipients."""
    if shutil.which("age") is None:
        raise PullbackError("--with-secrets needs age to encrypt them: apt install age")
    plain = io.BytesIO()
    with tarfile.open(fileobj=plain, mode="w", format=tarfile.PAX_FORMAT, dereference=True) as tar:
        for secret in secrets:
            try:
                data = read_bounded(secret.path)
                info = tar.gettarinfo(str(secret.path), arcname=str(secret.path).lstrip("/"))
                if not info.isfile():  # the file's bytes, never a link or a dir
                    raise PullbackError(f"{secret.path} ({secret.what}) is not a regular file")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
            except OSError as exc:
                raise PullbackError(
                    f"cannot read {secret.path} ({secret.what}): {exc.strerror}"
                ) from None
    result = subprocess.run(
        ["age", "--encrypt", "-R", str(recipients)],
        input=plain.getvalue(),
        capture_output=True,
        check=False,
    )
    if result.returncode != 0:
        lines = result.stderr.decode(errors="replace").strip().splitlines()
        said = [line for line in lines if "filippo.io/age/report" not in line][-1:]
        raise PullbackError(f"age could not encrypt to {recipients}: {' '.join(said)}")
    return result.stdout


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(f"{PREFIX}/{name}")
    info.size, info.mode, info.mtime = len(data), 0o600, int(time.time())
    tar.addfile(info, io.BytesIO(data))


def _listed(secrets: list[Secret]) -> str:
    return "".join(f"  {s.path} ({s.what})\n" for s in secrets)


def _said(secrets: list[Secret], notes: list[str], sealed: bool) -> str:
    """What README.txt says of the secrets: what the encrypted part holds, or every file
    to bring; then what is not carried."""
    if sealed:
        text = "secrets.tar.age holds, encrypted, under their own paths:\n" + _listed(secrets)
    else:
        text = (
            "No secrets are in this bundle: keep the repository passwords elsewhere too.\n"
            "A new server needs these files, which are not in this bundle (bring them, with\n"
            "their owners and modes; --with-secrets carries them, encrypted):\n" + _listed(secrets)
        )
    if notes:
        text += "\nNot in this bundle, bring it yourself:\n" + "".join(f"  {n}\n" for n in notes)
    return text


def bundle(
    config: ServerConfig, recipients: Path | None, system: SystemPaths | None = None
) -> tuple[bytes, list[str]]:
    """The recovery bundle (a tar) of ``config``, and what it lacks in words; with
    ``recipients``, its secrets (and what reaches the stores, found in ``system``'s
    ssh and systemd configuration) encrypted to them. Raises PullbackError."""
    access = access_files(config, system or SystemPaths())
    wanted = secret_files(config) + access.files
    secrets, notes = carried(wanted, strict=recipients is not None)
    notes += access.notes
    part = encrypted(secrets, recipients) if recipients is not None else None
    public = Path(f"{config.ssh.key_file}.pub")
    files = {
        "server.yaml": config.path.read_bytes(),
        "locations.txt": locations(config).encode(),
        "fingerprints.txt": fingerprints([config.ssh.known_hosts, public]).encode(),
    }
    for name, path in (("known_hosts", config.ssh.known_hosts), ("server-key.pub", public)):
        if path.is_file():
            files[name] = path.read_bytes()
    files["README.txt"] = README.format(
        server=os.uname().nodename,
        when=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        secrets=_said(secrets if part is not None else wanted, notes, part is not None),
    ).encode()
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in files.items():
            _add(tar, name, data)
        if part is not None:
            _add(tar, "secrets.tar.age", part)
    return out.getvalue(), notes


def command(config: ServerConfig, args: argparse.Namespace) -> int:
    """Write the bundle to ``--output`` (mode 0600) and say what is in it. Raises
    UsageError (``--with-secrets`` without ``--recipient``), PullbackError."""
    if args.with_secrets and args.recipient is None:
        raise UsageError("--with-secrets needs --recipient FILE (age or SSH public keys)")
    if args.recipient is not None and not args.with_secrets:
        raise UsageError("--recipient is for --with-secrets")
    if args.output.exists() or args.output.is_symlink():
        raise UsageError(f"{args.output} exists: remove it or give another --output")
    data, notes = bundle(config, args.recipient if args.with_secrets else None)
    for note in notes:
        log.warning("%s", note)
    try:
        atomic_write(args.output, data, mode=0o600)
    except OSError as exc:
        raise PullbackError(f"cannot write {args.output}: {exc.strerror}") from None
    what = "with its secrets encrypted" if args.with_secrets else "without secrets"
    print(f"wrote {args.output} ({len(data)} bytes, {what}); keep it away from this server")
    if notes:
        print(f"{len(notes)} thing(s) a new server needs are not in it: see its README.txt")
    return EXIT_OK
