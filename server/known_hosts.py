"""Pinned host keys: the server's known_hosts file, in OpenSSH format.

An unknown or changed key is refused with its fingerprint and the command that fixes it;
``pullback-server trust HOST`` shows a host's key and records it.
"""

from __future__ import annotations

import base64
import hashlib
import os
from pathlib import Path

import paramiko

from ..common.errors import PullbackError


class HostKeyError(PullbackError):
    """A client's host key is unknown or differs from the pinned one."""


def fingerprint(key: paramiko.PKey) -> str:
    """``SHA256:...`` as ``ssh-keygen -l`` prints it."""
    digest = hashlib.sha256(key.asbytes()).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


def entry_name(address: str, port: int) -> str:
    """How known_hosts names a host: ``address``, or ``[address]:port`` off port 22."""
    return address if port == 22 else f"[{address}]:{port}"


def load(path: Path) -> paramiko.HostKeys:
    """The keys in ``path`` (an empty set when the file does not exist yet)."""
    keys = paramiko.HostKeys()
    if path.exists():
        try:
            keys.load(str(path))
        except (OSError, paramiko.SSHException) as exc:
            raise HostKeyError(f"cannot read {path}: {exc}") from None
    return keys


class RefuseUnknown(paramiko.MissingHostKeyPolicy):
    """paramiko policy: refuse a host that known_hosts does not list, saying how to fix it."""

    def __init__(self, host_name: str, known_hosts: Path):
        self.host_name = host_name
        self.known_hosts = known_hosts

    def missing_host_key(self, client, hostname, key):
        raise HostKeyError(
            f"{self.host_name}: unknown host key {key.get_name()} {fingerprint(key)} for "
            f"{hostname}, not in {self.known_hosts}; if that is the host's key, run: "
            f"pullback-server trust {self.host_name}"
        )


def changed_key_message(
    host_name: str, address: str, got: paramiko.PKey, expected: paramiko.PKey, known_hosts: Path
) -> str:
    return (
        f"{host_name}: HOST KEY CHANGED for {address}: it offers {got.get_name()} "
        f"{fingerprint(got)} but {known_hosts} pins {expected.get_name()} "
        f"{fingerprint(expected)}. Someone may be impersonating the host, or it was "
        f"reinstalled. If you know why, run: pullback-server trust --replace {host_name}"
    )


def record(path: Path, address: str, port: int, key: paramiko.PKey, replace: bool) -> None:
    """Add (or with ``replace``, substitute) the key of ``address:port`` in ``path``."""
    name = entry_name(address, port)
    lines = path.read_text().splitlines() if path.exists() else []
    keys = load(path)
    known = keys.lookup(name)
    if known is not None and not replace:
        existing = known.get(key.get_name())
        if existing is not None and existing == key:
            return
        raise HostKeyError(f"{name} already has a different key in {path}; use --replace")
    if known is not None:
        lines = [
            line
            for line in lines
            if not line.strip() or line.lstrip().startswith("#") or not _line_matches(line, name)
        ]
    lines.append(f"{name} {key.get_name()} {key.get_base64()}")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("\n".join(lines) + "\n")
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def _line_matches(line: str, name: str) -> bool:
    entry = paramiko.hostkeys.HostKeyEntry.from_line(line)
    if entry is None:
        return False
    keys = paramiko.HostKeys()
    for host in entry.hostnames:
        keys.add(host, entry.key.get_name(), entry.key)
    return keys.lookup(name) is not None
