"""What `pullback-server restore` tells the administrator to run next."""

from __future__ import annotations

from pathlib import Path

from pullback.server.restore import copy_command

TO = "root@{}:/var/tmp/pullback-restore/"
ASIDE = "--exclude='/.pullback-replaced-*'"
"""What ``--force`` set aside in the target stays on the server."""


def test_the_copy_to_the_client_uses_its_sshd_port():
    target = Path("/var/tmp/shop")
    assert copy_command(target, "web1.example.org", 22) == (
        f"rsync -aHAX --delete {ASIDE} /var/tmp/shop/ {TO.format('web1.example.org')}"
    )
    assert copy_command(target, "10.0.0.12", 2222) == (
        f"rsync -aHAX --delete -e 'ssh -p 2222' {ASIDE} /var/tmp/shop/ {TO.format('10.0.0.12')}"
    )
    # a target with a space is one word
    assert copy_command(Path("/var/tmp/a shop"), "web1", 22) == (
        f"rsync -aHAX --delete {ASIDE} '/var/tmp/a shop/' {TO.format('web1')}"
    )
