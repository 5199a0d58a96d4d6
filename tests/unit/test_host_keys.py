"""A host's own SSH key (``hosts[].ssh_key_file``): used for that host only, and checked
like the server's own key, including the home directories the units hide."""

from __future__ import annotations

from pathlib import Path

from pullback.server.check import local_problems
from pullback.server.config import load_server_config
from pullback.server.remote import Remote


def config_with(tmp_path, hosts: str):
    path = tmp_path / "server.yaml"
    path.write_text(
        f"state_dir: {tmp_path / 'state'}\n"
        f"ssh: {{key_file: {tmp_path / 'id_ed25519'}}}\n"
        f"hosts:\n{hosts}"
    )
    return load_server_config(path)


def test_a_host_s_own_key_is_used_for_it_alone(tmp_path):
    config = config_with(
        tmp_path, f"  - name: web1\n    ssh_key_file: {tmp_path / 'id_web1'}\n  - name: db1\n"
    )
    web1, db1 = config.hosts
    assert Remote(web1, config.ssh).key_file == tmp_path / "id_web1"
    assert Remote(db1, config.ssh).key_file == tmp_path / "id_ed25519"


def test_every_key_in_use_is_checked_and_one_in_a_home_is_refused(tmp_path, monkeypatch):
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    (home / ".ssh" / "id_db1").write_text("a key\n")
    (tmp_path / "a-directory").mkdir()
    monkeypatch.setattr("pullback.server.check.HOMES", (f"{home}/",))  # plays /root
    config = config_with(
        tmp_path,
        f"  - name: web1\n    ssh_key_file: {tmp_path / 'missing'}\n"
        f"  - name: db1\n    ssh_key_file: {home / '.ssh/id_db1'}\n"
        f"  - name: mail1\n    ssh_key_file: {tmp_path / 'a-directory'}\n",
    )
    said = "\n".join(local_problems(config))
    assert f"hosts[web1].ssh_key_file: {tmp_path / 'missing'} cannot be read" in said
    assert f"hosts[mail1].ssh_key_file: {tmp_path / 'a-directory'} is not a file (name" in said
    assert f"hosts[db1].ssh_key_file: {home}/.ssh/id_db1 is in a home directory" in said
    assert f"install -D -m 0600 {home}/.ssh/id_db1 /etc/pullback/keys/db1" in said
    # every host has its own key: the unused global one is not asked for
    assert "ssh.key_file" not in said.replace("ssh_key_file", "")


def test_a_repository_the_units_cannot_write_is_a_problem(tmp_path):
    """systemd does not run here: the units' ReadWritePaths= are given as systemd would
    report them (the system tier runs the real units)."""
    from pullback.common.sandbox import repository_problem

    allowed = {
        "pullback-server.service": ["/var/lib/pullback", "-/srv/pullback"],
        "pullback-maintain.service": ["/var/lib/pullback", "-/srv/pullback"],
    }
    assert repository_problem(Path("/srv/pullback/web1"), allowed) is None
    said = repository_problem(Path("/media/backup/restic/web1.example.org"), allowed)
    assert said is not None
    assert "outside the ReadWritePaths= of pullback-server.service and pullback-maintain" in said
    assert "ReadWritePaths=/media/backup/restic" in said
    assert "home directory" in (repository_problem(Path("/root/repos/web1"), allowed) or "")
    assert repository_problem(Path("/media/x"), dict.fromkeys(allowed)) is None  # no systemd
