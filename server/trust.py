"""``pullback-server trust HOST``: show a client's host key and record it when confirmed."""

from __future__ import annotations

import argparse
import socket
import sys

import paramiko

from ..common.errors import PullbackError
from . import known_hosts
from .config import HostConfig, ServerConfig, SshConfig


def fetch_key(host: HostConfig, timeout: float) -> paramiko.PKey:
    """The host key the client offers (no login is attempted)."""
    try:
        sock = socket.create_connection((host.address, host.port), timeout=timeout)
    except OSError as exc:
        raise PullbackError(
            f"{host.name}: cannot connect to {host.address} port {host.port}: {exc.strerror or exc}"
        ) from None
    transport = paramiko.Transport(sock)
    try:
        transport.start_client(timeout=timeout)
        return transport.get_remote_server_key()
    except (paramiko.SSHException, EOFError, OSError) as exc:
        raise PullbackError(f"{host.name}: no SSH server answered: {exc}") from None
    finally:
        transport.close()


def command(config: ServerConfig, args: argparse.Namespace) -> int:
    return trust(config.host(args.hostname), config.ssh, args.yes, args.replace)


def trust(host: HostConfig, ssh: SshConfig, yes: bool, replace: bool) -> int:
    """Show the key, compare it with the pinned one, record it if confirmed. Exit code."""
    key = fetch_key(host, ssh.connect_timeout)
    name = known_hosts.entry_name(host.address, host.port)
    print(f"{host.name} ({name}) offers {key.get_name()} {known_hosts.fingerprint(key)}")
    pinned = known_hosts.load(ssh.known_hosts).lookup(name)
    if pinned is not None and pinned.get(key.get_name()) == key:
        print(f"already trusted in {ssh.known_hosts}")
        return 0
    if pinned is not None and not replace:
        print(
            f"{ssh.known_hosts} pins a DIFFERENT key for {name}. If the host was "
            "reinstalled, check the fingerprint above and run again with --replace.",
            file=sys.stderr,
        )
        return 1
    if not yes:
        if not sys.stdin.isatty():
            print(
                "Compare the fingerprint with `ssh-keygen -lf /etc/ssh/ssh_host_"
                f"{key.get_name().split('-')[-1]}_key.pub` on {host.name}, then run again "
                "with --yes.",
                file=sys.stderr,
            )
            return 1
        answer = input(f"Trust this key for {host.name}? Type yes: ").strip().lower()
        if answer != "yes":
            print("not recorded")
            return 1
    known_hosts.record(ssh.known_hosts, host.address, host.port, key, replace=replace)
    print(f"recorded in {ssh.known_hosts}")
    return 0
