"""What `pullback-server restore` tells the administrator to run next."""

from __future__ import annotations

from pathlib import Path

from pullback.server.restore import copy_command


def test_the_copy_to_the_client_uses_its_sshd_port():
    target = Path("/var/tmp/shop")
    assert copy_command(target, "web1.example.org", 22) == (
        "rsync -aHAX /var/tmp/shop/ root@web1.example.org:/var/tmp/pullback-restore/"
    )
    assert copy_command(target, "10.0.0.12", 2222) == (
        "rsync -aHAX -e 'ssh -p 2222' /var/tmp/shop/ root@10.0.0.12:/var/tmp/pullback-restore/"
    )
    # a target with a space is one word
    assert copy_command(Path("/var/tmp/a shop"), "web1", 22) == (
        "rsync -aHAX '/var/tmp/a shop/' root@web1:/var/tmp/pullback-restore/"
    )
