"""A host's own SSH key (``hosts[].ssh_key_file``): used for that host only, and checked
like the server's own key, including the home directories the units hide."""

from __future__ import annotations

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


def test_every_key_in_use_is_checked_and_one_in_a_home_is_refused(tmp_path):
    config = config_with(
        tmp_path,
        f"  - name: web1\n    ssh_key_file: {tmp_path / 'missing'}\n"
        "  - name: db1\n    ssh_key_file: /root/.ssh/id_db1\n",
    )
    said = "\n".join(local_problems(config))
    assert f"hosts[web1].ssh_key_file: cannot read {tmp_path / 'missing'}" in said
    assert "hosts[db1].ssh_key_file: /root/.ssh/id_db1 is in a home directory" in said
    assert "install -D -m 0600 /root/.ssh/id_db1 /etc/pullback/keys/id_db1" in said
    # every host has its own key: the unused global one is not asked for
    assert "ssh.key_file" not in said.replace("ssh_key_file", "")
