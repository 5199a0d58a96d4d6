"""A backup-suite fleet of one moved to pullback by the steps of
docs/migrating-from-backup-suite.md, on real parts: backup-suite's own files (service.yml,
client_config.yml, server_config.yml, common_config), a restic repository whose snapshots
were made the way ``backup_server.sh`` makes them (``cd unpacked_content && restic backup
--host <fqdn> --ignore-inode --tag <fqdn> --tag <YYYYmmdd_HHMMSS> .``), a real sshd that
accepts only the host's own key (``ssh_key_file``), and real restic as the oracle.

It ends as the issue asks: pullback pulls, lists the old and the new snapshots, restores an
old one, and applies the retention policy to both as one series.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time

import pytest
import yaml

from tests.helpers.client import ClientSandbox
from tests.helpers.fleet import Fleet
from tests.helpers.rest_store import RestEndpoint, rclone_missing
from tests.helpers.sshd import Sshd, make_key, serve_command

FQDN = "web1.example.test"
URL_SECRET = "S3cret-in-the-URL-71"


def suite_snapshot(fleet: Fleet, work, stamp: str, files: dict[str, str]) -> None:
    """One snapshot as backup_server.sh stores it: the client's tar unpacked into
    ``<work>/<fqdn>/unpacked_content`` (``<type>/<name>/data/<basename>/...``), backed up
    from there with the host name as host and tag, and the archive's time as a tag."""
    content = work / FQDN / "unpacked_content"
    shutil.rmtree(content, ignore_errors=True)
    for rel, text in files.items():
        path = content / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    env = {**fleet.repo_env(FQDN), "RESTIC_REPOSITORY": str(fleet.repos / FQDN)}
    subprocess.run(
        [
            "restic",
            "backup",
            "--host",
            FQDN,
            "--ignore-inode",
            "--tag",
            FQDN,
            "--tag",
            stamp,
            "-q",
            ".",
        ],
        cwd=content,
        env=env,
        check=True,
        capture_output=True,
    )


def repository_snapshots(fleet: Fleet) -> list[dict]:
    env = {**fleet.repo_env(FQDN), "RESTIC_REPOSITORY": str(fleet.repos / FQDN)}
    out = subprocess.run(
        ["restic", "snapshots", "--json"], env=env, capture_output=True, check=True
    ).stdout
    return sorted(json.loads(out), key=lambda s: s["time"])


def complete(server: dict, fleet: Fleet, sshd: Sshd, tmp_path) -> None:
    """Add to the imported ``server`` settings what a real server has by its packaged
    defaults and DNS (state, known_hosts, the sshd's loopback port), and write them."""
    (host,) = server["hosts"]
    host.update(address=sshd.address, port=sshd.port, user=sshd.user)
    with open(fleet.known_hosts, "a") as handle:
        handle.write(sshd.known_hosts_line())  # pullback-server trust web1 does this
    server.update(
        state_dir=str(fleet.state),
        lock_dir=str(tmp_path / "run"),
        min_free_space="100M",
        ssh={"key_file": str(fleet.key), "known_hosts": str(fleet.known_hosts)},
    )
    server.pop("email")
    fleet.config.write_text(yaml.safe_dump(server))


@pytest.fixture
def migration(tmp_path):
    """backup-suite's files on the client and the server, and its repository with two
    snapshots; the client already runs pullback's sshd endpoint (the package does that)."""
    fleet = Fleet(tmp_path / "fleet")
    client = ClientSandbox(tmp_path / "client", hostname="web1")
    etc_backup = client.services  # plays /etc/backup on the client
    data = tmp_path / "srv" / "app"
    (data / "media").mkdir(parents=True)
    (data / "config.ini").write_text("[app]\nname = web1\n")
    (data / "media" / "large_video.mp4").write_text("big\n")
    (data / "media" / "logo.png").write_text("logo\n")
    (etc_backup / "files" / "app").mkdir(parents=True)
    (etc_backup / "files" / "app" / "service.yml").write_text(
        "service:\n  name: app\n  type: files\n"
        f"files:\n  paths:\n    - {data}\n  exclude:\n    - media/large_video.mp4\n"
    )
    (etc_backup / "client_config.yml").write_text(
        "admin_email: ops@example.test\nkeep_days: 5\nmin_free_space_mb: 1\n"
    )
    (etc_backup / "common_config").write_text('DEFAULT_ADMIN_EMAIL="ops@example.test"\n')

    host_key = make_key(tmp_path / "keys" / "id_web1")  # only this client accepts it
    sshd = Sshd(
        tmp_path / "sshd", host_key.with_suffix(".pub"), serve_command(client.config)
    ).start()
    server_etc = tmp_path / "server-etc-backup"
    server_etc.mkdir()
    (server_etc / "server_config.yml").write_text(
        yaml.safe_dump(
            {
                "global": {
                    "local_temp_base_dir": str(tmp_path / "work"),
                    "admin_email": "ops@example.test",
                },
                "restic": {
                    "repository_root": str(fleet.repos),
                    "password_file": str(fleet.password_file),
                    "maintenance": {"forget_policy": "--keep-last 2", "prune": True},
                },
                "hosts": [
                    {
                        "hostname": FQDN,
                        "ssh_user": "backup",
                        "ssh_key_file": str(host_key),
                        "remote_tar_dir": "/var/tmp/backups",
                    }
                ],
            }
        )
    )
    env = {**fleet.repo_env(FQDN), "RESTIC_REPOSITORY": str(fleet.repos / FQDN)}
    subprocess.run(["restic", "init", "--quiet"], env=env, check=True, capture_output=True)
    suite_snapshot(
        fleet,
        tmp_path / "work",
        "20261120_030000",
        {"files/app/data/app/config.ini": "[app]\nname = old\n"},
    )
    time.sleep(1)  # restic's times, and so the order, are the stores' times
    suite_snapshot(
        fleet,
        tmp_path / "work",
        "20261121_030000",
        {"files/app/data/app/config.ini": "[app]\nname = web1\n"},
    )
    yield fleet, client, sshd, server_etc, tmp_path
    sshd.stop()


def test_a_backup_suite_host_moves_to_pullback_with_its_history(migration):
    fleet, client, sshd, server_etc, tmp_path = migration
    etc_backup = client.services

    # step: convert the client's configuration (printed; the sandbox keeps its own paths,
    # as a real client keeps the packaged defaults)
    imported = client.cli("import-backup-suite", "--from", str(etc_backup))
    assert imported.returncode == 0, imported.stderr
    settings = yaml.safe_load(imported.stdout)
    assert settings["service_dirs"] == [str(etc_backup.absolute())]
    client.write_config(
        **{k: v for k, v in settings.items() if k not in ("email", "min_free_space")}
    )
    checked = client.cli("check")
    assert checked.returncode == 0, checked.stdout + checked.stderr

    # step: convert the server's configuration; the test adds what a real server has by
    # its packaged defaults and DNS (state, known_hosts, the sshd's loopback port)
    imported = fleet.server("import-backup-suite", "--from", str(server_etc))
    assert imported.returncode == 0, imported.stderr
    assert "hosts[0].ssh_key_file -> hosts[].ssh_key_file" in imported.stderr
    server = yaml.safe_load(imported.stdout)
    (host,) = server["hosts"]
    assert host["adopt_host"] == FQDN and host["repository"] == str(fleet.repos / FQDN)
    complete(server, fleet, sshd, tmp_path)

    # step: pullback-server check sees the old snapshots before the first pull
    checked = fleet.server("check")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"has 2 snapshot(s), 2 of them adopted ({FQDN})" in checked.stdout

    # step: the first pull, by hand (the client makes its first archive first)
    run = client.cli("run")
    assert run.returncode == 0, run.stderr
    pulled = fleet.server("pull")
    assert pulled.returncode == 0, pulled.stdout + pulled.stderr

    # step: the old and the new snapshots, listed together
    listed = fleet.server("snapshots", "web1", "--json")
    assert listed.returncode == 0, listed.stderr
    snapshots = json.loads(listed.stdout)
    assert [s["adopted"] for s in snapshots] == [True, True, False]
    table = fleet.server("snapshots", "web1").stdout
    assert table.count("adopted (backup-suite)") == 2

    # the new snapshot holds what backup-suite held, with the same exclude
    new = fleet.restore(FQDN, tmp_path / "new")
    archived = sorted(p.name for p in (new / "services" / "app").rglob("*") if p.is_file())
    assert "config.ini" in archived and "logo.png" in archived
    assert "large_video.mp4" not in archived

    # step: restore an old snapshot, whole and as one service
    oldest = snapshots[0]["id"]
    restored = fleet.server(
        "restore", "web1", "--snapshot", oldest, "--target", str(tmp_path / "r")
    )
    assert restored.returncode == 0, restored.stderr
    assert (tmp_path / "r/files/app/data/app/config.ini").read_text() == "[app]\nname = old\n"
    assert "made by backup-suite" in restored.stdout
    one = fleet.server(
        "restore", "web1", "--snapshot", oldest, "--service", "app", "--target", str(tmp_path / "s")
    )
    assert one.returncode == 0, one.stderr
    assert (tmp_path / "s/files/app/data/app/config.ini").is_file()
    missing = fleet.server(
        "restore",
        "web1",
        "--snapshot",
        oldest,
        "--service",
        "nope",
        "--target",
        str(tmp_path / "m"),
    )
    assert missing.returncode == 1 and "holds no service 'nope'" in missing.stderr
    # a name is matched literally, never as a pattern; <type>/<name> and the old stamp work
    pattern = fleet.server(
        "restore", "web1", "--snapshot", oldest, "--service", "a*", "--target", str(tmp_path / "p")
    )
    assert pattern.returncode == 1 and "holds no service 'a*'" in pattern.stderr
    typed = fleet.server(
        "restore",
        "web1",
        "--snapshot",
        "20261120_030000",
        "--service",
        "files/app",
        "--target",
        str(tmp_path / "t"),
    )
    assert typed.returncode == 0, typed.stderr
    assert (tmp_path / "t/files/app/data/app/config.ini").read_text() == "[app]\nname = old\n"

    # step: retention over both, as one series (forget_policy --keep-last 2): the oldest
    # backup-suite snapshot goes, the newest old one and pullback's stay; restic says so
    before = repository_snapshots(fleet)
    maintained = fleet.server("maintain", "--no-verify")
    assert maintained.returncode == 0, maintained.stdout + maintained.stderr
    after = repository_snapshots(fleet)
    assert [s["short_id"] for s in after] == [s["short_id"] for s in before[1:]]
    assert "pullback" not in (after[0]["tags"] or []) and "pullback" in after[1]["tags"]

    # a second pull stores nothing new and leaves the old snapshot alone
    again = fleet.server("pull")
    assert again.returncode == 0, again.stdout + again.stderr
    assert len(repository_snapshots(fleet)) == 2


def test_the_old_snapshots_stay_out_of_the_restore_drill(migration):
    fleet, _client, _sshd, _server_etc, tmp_path = migration
    server = {
        "state_dir": str(fleet.state),
        "lock_dir": str(tmp_path / "run"),
        "backend": {
            "type": "restic",
            "repository_root": str(fleet.repos),
            "password_file": str(fleet.password_file),
        },
        "ssh": {"key_file": str(fleet.key), "known_hosts": str(fleet.known_hosts)},
        "hosts": [{"name": "web1", "repository": str(fleet.repos / FQDN), "adopt_host": FQDN}],
    }
    fleet.config.write_text(yaml.safe_dump(server))
    drilled = fleet.server("verify", "--host", "web1")
    assert drilled.returncode == 0, drilled.stdout + drilled.stderr
    assert (
        "web1: nothing to drill yet: no pullback snapshot "
        "(2 adopted from backup-suite hold no manifest)"
    ) in drilled.stdout
    # without adopt_host pullback sees none of them, as before
    server["hosts"][0].pop("adopt_host")
    fleet.config.write_text(yaml.safe_dump(server))
    assert fleet.server("snapshots", "web1").stdout.strip() == "no snapshots"


@pytest.mark.skipif(rclone_missing() is not None, reason=str(rclone_missing()))
def test_repositories_behind_a_url_with_a_password_move_without_it_in_server_yaml(migration):
    """backup-suite's ``repository_root`` a REST URL with a password (a real ``rclone serve
    restic`` holding its repository): the import writes each host's URL into a file of its
    own (mode 0600; server.yaml refuses a password), prints it masked, and pullback reaches
    the old snapshots through that file and stores a pull beside them. (It was refused,
    exit 2: a URL is no directory for backend.repository_root.)"""
    fleet, client, sshd, server_etc, tmp_path = migration
    store = RestEndpoint(fleet.repos, append_only=False, user="boss", password=URL_SECRET)
    store.start()
    try:
        old = yaml.safe_load((server_etc / "server_config.yml").read_text())
        old["restic"]["repository_root"] = store.url("").rstrip("/")
        (server_etc / "server_config.yml").write_text(yaml.safe_dump(old))

        printed = fleet.server("import-backup-suite", "--from", str(server_etc))
        assert printed.returncode == 0, printed.stderr
        repo_file = fleet.config.parent / "repositories" / "web1.repo"
        assert f"not written: {repo_file}" in printed.stderr
        assert not repo_file.exists()

        written = fleet.server("import-backup-suite", "--from", str(server_etc), "--write")
        assert written.returncode == 0, written.stderr
        said = printed.stdout + printed.stderr + written.stdout + written.stderr
        assert URL_SECRET not in said and URL_SECRET not in fleet.config.read_text()
        assert "boss:***@" in said
        assert repo_file.read_text() == store.url(FQDN).rstrip("/") + "\n"
        assert repo_file.stat().st_mode & 0o777 == 0o600
        assert repo_file.parent.stat().st_mode & 0o777 == 0o700

        server = yaml.safe_load(fleet.config.read_text())
        (host,) = server["hosts"]
        assert host["repository_file"] == str(repo_file) and "repository" not in host
        assert "repository_root" not in server["backend"]
        complete(server, fleet, sshd, tmp_path)

        checked = fleet.server("check")
        assert checked.returncode == 0, checked.stdout + checked.stderr
        assert f"has 2 snapshot(s), 2 of them adopted ({FQDN})" in checked.stdout
        assert client.cli("run").returncode == 0
        pulled = fleet.server("pull")
        assert pulled.returncode == 0, pulled.stdout + pulled.stderr
        assert len(repository_snapshots(fleet)) == 3  # stored through the REST store
        outputs = checked.stdout + checked.stderr + pulled.stdout + pulled.stderr
        assert URL_SECRET not in outputs
    finally:
        store.stop()
