"""Hosts that share one repository (a ``group``): where it is, what the configuration
refuses, and how maintenance walks a group (each host forgets its own snapshots, the
last one prunes and checks the shared repository once)."""

from __future__ import annotations

from pathlib import Path

import pytest

from pullback.common.errors import ConfigError
from pullback.server.backends import Role
from pullback.server.backends.location import locate
from pullback.server.config import load_server_config
from pullback.server.maintain import _units


def write(tmp_path: Path, hosts: str, backend: str = "") -> Path:
    pw = tmp_path / "pw"
    pw.write_text("shared\n")
    pw.chmod(0o600)
    path = tmp_path / "server.yaml"
    path.write_text(
        f"backend:\n  repository_root: /srv/repos\n  password_file: {pw}\n{backend}hosts:\n{hosts}"
    )
    return path


def problems(path: Path) -> str:
    with pytest.raises(ConfigError) as caught:
        load_server_config(path)
    return "\n".join(str(p) for p in caught.value.problems)


def test_the_hosts_of_a_group_share_the_repository_named_after_it(tmp_path):
    hosts = "  - {name: web1, group: web}\n  - {name: web2, group: web}\n  - name: db1\n"
    config = load_server_config(write(tmp_path, hosts))
    web1, web2, db1 = config.hosts
    for host in (web1, web2):
        for role in (Role.PULL, Role.MAINTAIN):
            assert locate(config.backend, host, role).value == "/srv/repos/web"
    assert locate(config.backend, db1, Role.PULL).value == "/srv/repos/db1"
    templated = load_server_config(
        write(tmp_path, hosts, "  repository_url: rest:http://store:8000/{host}/\n")
    )
    assert locate(templated.backend, templated.hosts[1], Role.PULL).value == (
        "rest:http://store:8000/web/"
    )


def test_a_group_that_cannot_share_one_repository_is_refused_by_key(tmp_path):
    own = tmp_path / "own"
    own.write_text("other\n")
    own.chmod(0o600)
    hosts = (
        "  - {name: web1, group: web}\n"
        f"  - {{name: web2, group: web, password_file: {own}}}\n"
        "  - {name: web3, group: web, repository: /elsewhere}\n"
        "  - {name: db1, group: web1}\n"
    )
    path = write(tmp_path, hosts)
    said = problems(path)
    assert str(path) in said
    assert "hosts[1].password_file" in said and "same password_file as hosts[0]" in said
    assert "hosts[2].repository" in said and "drop repository" in said
    assert "hosts[3].group" in said and "'web1' is also a host outside the group" in said
    borg = write(tmp_path, "  - {name: web1, group: web}\n", "  type: borg\n")
    assert "hosts[0].group" in problems(borg) and "restic only" in problems(borg)


def test_maintenance_takes_a_group_as_one_unit_and_other_hosts_alone(tmp_path):
    hosts = (
        "  - {name: web1, group: web}\n  - name: db1\n"
        "  - {name: web2, group: web}\n  - {name: app1, group: apps}\n"
    )
    config = load_server_config(write(tmp_path, hosts))
    units = [[h.name for h in unit] for unit in _units(config.hosts)]
    assert units == [["web1", "web2"], ["db1"], ["app1"]]
    assert [h.repository_key for h in config.hosts] == ["web", "db1", "web", "apps"]


def test_two_hosts_outside_one_group_on_one_repository_are_refused(tmp_path):
    hosts = (
        "  - {name: a, repository: /srv/repos/shared}\n"
        "  - {name: b, repository: /srv/repos//shared/}\n"
        "  - {name: web1, group: web}\n"
        "  - {name: solo, repository: /srv/repos/web}\n"
        "  - {name: c, adopt_host: old, group: web}\n"
    )
    said = problems(write(tmp_path, hosts))
    assert "hosts[1].repository" in said and "of hosts[0]" in said
    assert "hosts[3].repository" in said and "/srv/repos/web is also" in said
    assert "hosts[4].adopt_host" in said


def test_a_host_with_its_own_repository_is_maintained_there_not_by_the_template(tmp_path):
    hosts = "  - {name: web1, repository: /elsewhere/web1}\n  - name: db1\n"
    backend = "  maintenance_repository_url: rest:http://store:8001/{host}/\n"
    config = load_server_config(write(tmp_path, hosts, backend))
    web1, db1 = config.hosts
    assert locate(config.backend, web1, Role.MAINTAIN).value == "/elsewhere/web1"
    assert locate(config.backend, db1, Role.MAINTAIN).value == "rest:http://store:8001/db1/"
