"""What reaches the stores outside the server (server/store_access.py): which stores a
configuration places repositories and copies in, which ssh_config drop-ins and unit
drop-ins reach them and the files those name, and what is said instead of read."""

from __future__ import annotations

from pathlib import Path

import pytest

from pullback.server.config import load_server_config
from pullback.server.store_access import (
    MAX_FILE,
    SystemPaths,
    access_files,
    host_matches,
    problem,
    stores,
)

pytestmark = pytest.mark.unit


def config(tmp_path: Path, text: str):
    password = tmp_path / "pw"
    password.write_text("p\n")
    password.chmod(0o600)
    path = tmp_path / "server.yaml"
    hosts = "" if "hosts:" in text else "hosts:\n  - name: web1\n"
    path.write_text(f"backend:\n  password_file: {password}\n{text}{hosts}")
    return load_server_config(path)


def system(tmp_path: Path) -> SystemPaths:
    paths = SystemPaths(tmp_path / "ssh_config.d", tmp_path / "systemd")
    paths.ssh_config_dir.mkdir()
    paths.systemd_dir.mkdir()
    return paths


def carried(access) -> dict[Path, str]:
    return {secret.path: secret.what for secret in access.files}


def test_the_stores_are_those_outside_the_server_for_every_role(tmp_path):
    url = tmp_path / "db1.repo"
    url.write_text("rest:http://puller:pw@store:8000/db1/\n")
    url.chmod(0o600)
    found = stores(
        config(
            tmp_path,
            "  repository_url: sftp:pullback-store:/srv/sftp-store/{host}\n"
            "copy: {repository_url: 's3:https://s3.example.net/bucket/{host}'}\n"
            "hosts:\n  - name: web1\n"
            "  - {name: web2, maintenance_repository: 'sftp://backup@maint.example:2222//srv/w2'}\n"
            f"  - {{name: db1, repository_file: {url}, copy_repository: /mnt/offsite/db1}}\n",
        )
    )
    by_location = {store.shown: (store.ssh_host, store.environment) for store in found}
    assert by_location == {
        "sftp:pullback-store:/srv/sftp-store/web1": ("pullback-store", False),
        "s3:https://s3.example.net/bucket/web1": (None, True),
        "sftp:pullback-store:/srv/sftp-store/web2": ("pullback-store", False),
        "sftp://backup@maint.example:2222//srv/w2": ("maint.example", False),
        "s3:https://s3.example.net/bucket/web2": (None, True),
    }, "a local copy and a REST store (its URL is in the location file) need nothing"


def test_host_patterns_as_ssh_reads_them():
    assert host_matches(["pullback-store"], "pullback-store")
    assert host_matches(["other", "*.example"], "STORE.example")
    assert host_matches(["store?"], "store1")
    assert not host_matches(["*", "!pullback-store"], "pullback-store")
    assert not host_matches(["!pullback-store"], "web1"), "a negation alone takes nothing"
    assert host_matches(None, "anything")


def test_the_ssh_drop_in_that_takes_the_store_is_carried_with_the_files_it_names(tmp_path):
    paths = system(tmp_path)
    (paths.ssh_config_dir / "pullback-store.conf").write_text(
        "# the sftp store\n"
        "Host pullback-store\n"
        "    HostName store.example\n"
        "    IdentityFile /etc/pullback/keys/store_ed25519\n"
        '    UserKnownHostsFile "/etc/pullback/store_known_hosts" /etc/pullback/more_hosts\n'
        "    CertificateFile=/etc/pullback/keys/store-cert.pub\n"
        "Host other\n"
        "    IdentityFile /root/other_key\n"
    )
    (paths.ssh_config_dir / "unrelated.conf").write_text(
        "SendEnv LANG\nHost *.lan\n    IdentityFile /etc/lan_key\n"
    )
    (paths.ssh_config_dir / "tokens.conf").write_text(
        "Host pullback-*\n    IdentityFile ~/.ssh/store\n    UserKnownHostsFile none\n"
    )
    access = access_files(
        config(tmp_path, "  repository_url: sftp:pullback-store:/srv/sftp-store/{host}\n"),
        paths,
    )
    assert set(carried(access)) == {
        paths.ssh_config_dir / "pullback-store.conf",
        paths.ssh_config_dir / "tokens.conf",
        Path("/etc/pullback/keys/store_ed25519"),
        Path("/etc/pullback/store_known_hosts"),
        Path("/etc/pullback/more_hosts"),
        Path("/etc/pullback/keys/store-cert.pub"),
    }
    assert "pullback-store" in carried(access)[Path("/etc/pullback/keys/store_ed25519")]
    assert len(access.notes) == 1 and "'~/.ssh/store'" in access.notes[0], access.notes


def test_a_store_no_ssh_drop_in_takes_is_said(tmp_path):
    paths = system(tmp_path)
    (paths.ssh_config_dir / "unrelated.conf").write_text("Host other\n    IdentityFile /k\n")
    unit = paths.systemd_dir / "pullback-server.service.d"
    unit.mkdir()
    (unit / "rsh.conf").write_text('[Service]\nEnvironment="BORG_RSH=ssh -i /k"\n')
    access = access_files(
        config(tmp_path, "hosts:\n  - {name: web1, repository: 'sftp:backup@store.example:/r'}\n"),
        paths,
    )
    assert set(carried(access)) == {unit / "rsh.conf", Path("/k")}, "a BORG_RSH is carried"
    assert len(access.notes) == 1, "but restic's sftp does not use it"
    assert "store.example" in access.notes[0] and "bring it" in access.notes[0]


def test_the_units_drop_ins_are_carried_with_the_credential_files_they_name(tmp_path):
    paths = system(tmp_path)
    server = paths.systemd_dir / "pullback-server.service.d"
    server.mkdir()
    (server / "override.conf").write_text(
        "[Service]\n"
        "Environment=AWS_SHARED_CREDENTIALS_FILE=/etc/pullback/aws-credentials\n"
        'Environment="AWS_DEFAULT_REGION=eu-central-1" RESTIC_CACERT=/etc/pullback/ca.pem\n'
        "EnvironmentFile=-/etc/pullback/s3.env\n"
        "LoadCredential=store:/etc/pullback/store.cred\n"
        "ReadWritePaths=/mnt/offsite\n"
    )
    copy = paths.systemd_dir / "pullback-copy.service.d"
    copy.mkdir()
    (copy / "borg.conf").write_text(
        "[Service]\n"
        'Environment="BORG_RSH=ssh -i /etc/pullback/keys/store_ed25519 -o IdentitiesOnly=yes '
        '-o UserKnownHostsFile=/etc/pullback/store_known_hosts -o StrictHostKeyChecking=yes"\n'
    )
    (paths.systemd_dir / "pullback-maintain.timer").write_text("[Timer]\nOnCalendar=Sun\n")
    (paths.systemd_dir / "pullback-client.service").symlink_to("/dev/null")  # masked
    (paths.systemd_dir / "other.service.d").mkdir()
    (paths.systemd_dir / "other.service.d" / "x.conf").write_text("[Service]\n")
    access = access_files(
        config(
            tmp_path,
            "  type: borg\n  repository_url: ssh://backup@store.example/srv/borg/{host}\n"
            "copy: {repository_url: 'ssh://backup@copy.example/srv/borg-copy/{host}'}\n",
        ),
        paths,
    )
    assert set(carried(access)) == {
        server / "override.conf",
        copy / "borg.conf",
        paths.systemd_dir / "pullback-maintain.timer",
        Path("/etc/pullback/aws-credentials"),
        Path("/etc/pullback/ca.pem"),
        Path("/etc/pullback/s3.env"),
        Path("/etc/pullback/store.cred"),
        Path("/etc/pullback/keys/store_ed25519"),
        Path("/etc/pullback/store_known_hosts"),
    }
    assert "AWS_SHARED_CREDENTIALS_FILE" in carried(access)[Path("/etc/pullback/aws-credentials")]
    assert access.notes == [], "borg reaches its ssh:// store through BORG_RSH"


def test_an_s3_store_without_credentials_in_the_units_is_said(tmp_path):
    paths = system(tmp_path)
    access = access_files(
        config(tmp_path, "  repository_url: 's3:https://s3.example.net/bucket/{host}'\n"),
        paths,
    )
    assert access.files == []
    assert len(access.notes) == 1 and "units' environment" in access.notes[0]


def test_files_over_the_bound_are_not_read(tmp_path):
    paths = system(tmp_path)
    big = paths.ssh_config_dir / "big.conf"
    with big.open("wb") as stream:
        stream.truncate(MAX_FILE + 1)
    access = access_files(
        config(tmp_path, "  repository_url: sftp:pullback-store:/srv/{host}\n"), paths
    )
    assert any(
        f"{big} was not looked at" in note and "over the bound" in note for note in access.notes
    )
    assert problem(big).startswith(f"{MAX_FILE + 1} bytes, over the bound")
    assert problem(tmp_path / "absent") == "missing"
    assert problem(tmp_path) == "not a regular file"
    small = tmp_path / "small"
    small.write_bytes(b"x" * MAX_FILE)
    assert problem(small) is None


def test_the_servers_own_key_defaults_and_many_names_are_said_not_carried(tmp_path):
    """An outside attack: a drop-in naming the server's own key (ssh.key_file) had it
    carried; 130 000 names on one line took minutes (a quadratic check) and every file
    would be held in memory; a drop-in naming no key or known hosts gave no word that
    ssh uses the ones in ~/.ssh."""
    from pullback.server.store_access import MAX_NAMED

    paths = system(tmp_path)
    names = " ".join(f"/k/{i}" for i in range(20_000))
    (paths.ssh_config_dir / "store.conf").write_text(
        "Host pullback-store\n"
        "    IdentityFile /etc/pullback/id_ed25519\n"
        f"    UserKnownHostsFile {names}\n"
        "Host plain-store\n    User backup\n    Port 23\n"
        "    IdentityFile /etc/ssh/ssh_host_ed25519_key\n"
    )
    access = access_files(
        config(
            tmp_path,
            "hosts:\n  - {name: web1, repository: 'sftp:pullback-store:/r'}\n"
            "  - {name: web2, repository: 'sftp:plain-store:/r'}\n",
        ),
        paths,
    )
    assert Path("/etc/pullback/id_ed25519") not in carried(access)
    assert paths.ssh_config_dir / "store.conf" in carried(access), "the drop-in itself"
    assert len(access.files) == MAX_NAMED + 1
    said = "\n".join(access.notes)
    assert "/etc/pullback/id_ed25519 is this server's own SSH key, never carried" in said
    assert f"more than {MAX_NAMED} files named: the rest is not carried" in said
    assert said.count("files named") == 1
    assert "plain-store names no UserKnownHostsFile" in said
    assert "/etc/ssh/ssh_host_ed25519_key is a system file, never carried" in said
    assert Path("/etc/ssh/ssh_host_ed25519_key") not in carried(access)
    assert "pullback-store names no" not in said
