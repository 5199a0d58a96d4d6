"""What `pullback-server restore` tells the administrator to run next."""

from __future__ import annotations

from pathlib import Path

from pullback.server.restore import copy_command

TO = "root@{}:/var/tmp/pullback-restore/"
RSYNC = "rsync -aHAXS --numeric-ids --delete"
"""Owners by number, holes as holes (helper-159 F2, F4)."""
ASIDE = "--exclude='/.pullback-replaced-*'"
"""What ``--force`` set aside in the target stays on the server."""


def test_the_copy_to_the_client_uses_its_sshd_port():
    target = Path("/var/tmp/shop")
    assert copy_command(target, "web1.example.org", 22) == (
        f"{RSYNC} {ASIDE} /var/tmp/shop/ {TO.format('web1.example.org')}"
    )
    assert copy_command(target, "10.0.0.12", 2222) == (
        f"{RSYNC} -e 'ssh -p 2222' {ASIDE} /var/tmp/shop/ {TO.format('10.0.0.12')}"
    )
    # a target with a space is one word
    assert copy_command(Path("/var/tmp/a shop"), "web1", 22) == (
        f"{RSYNC} {ASIDE} '/var/tmp/a shop/' {TO.format('web1')}"
    )


def test_a_failed_restore_takes_back_what_it_wrote_below_what_was_there(tmp_path):
    """h129's R1: below an earlier restore's ``services/`` only what this one made goes."""
    from pullback.server.restore import Before, _undo

    target = tmp_path / "t"
    (target / "services/db").mkdir(parents=True)
    (target / "services/db/d.txt").write_text("db\n")
    (target / "services/app/files/etc").mkdir(parents=True)  # (there before, kept)
    (target / "services/app/files/etc/old.conf").write_text("old\n")
    before = Before.of(target, ["services/app/files/etc/new", "MANIFEST.sha256"], False)
    (target / "services/app/files/etc/new/deep").mkdir(parents=True)
    (target / "services/app/files/etc/new/deep/half").write_bytes(b"\0" * 10)
    (target / "MANIFEST.sha256").write_text("")
    (target / "stray").write_text("")  # a new top-level name goes as before
    _undo(before, None)
    assert sorted(str(p.relative_to(target)) for p in target.rglob("*")) == [
        "services",
        "services/app",
        "services/app/files",
        "services/app/files/etc",
        "services/app/files/etc/old.conf",
        "services/db",
        "services/db/d.txt",
    ]
