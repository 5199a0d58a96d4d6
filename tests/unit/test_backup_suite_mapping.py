"""backup-suite's configuration read into pullback's: every key mapped or said why not."""

from __future__ import annotations

import yaml

from pullback.common.backup_suite import (
    convert_client,
    convert_server,
    read_common_config,
    retention_of,
)
from pullback.common.config import load_validated
from pullback.common.schema import load_schema

SERVER = """
global:
  local_temp_base_dir: /var/tmp/backup_server_work
  admin_email: ops@example.org
  msmtp_cmd: /usr/bin/msmtp
  log_level: 2
email_subject_prefix: "[Backup Server]"
restic:
  repository_root: /srv/restic
  password_file: /etc/backup/restic.pass
  backup_options: "--exclude-caches --compression max"
  maintenance:
    forget_policy: "--keep-daily 7 --keep-weekly 4 --keep-monthly 12 --group-by host"
    prune: false
    check: true
    check_options: "--with-cache --retry-lock 5m"
    check_read_data_mode: "10%"
hosts:
  - hostname: web1.example.org
    ssh_user: backup
    ssh_key_file: /root/.ssh/id_web1
    remote_tar_dir: /var/tmp/backups
    admin_email: web-team@example.org
    restic_forget_policy: "--keep-daily 3"
"""

COMMON = """
# backup-suite common_config
YQ_CMD="/usr/local/bin/yq"
MSMTP_CMD=/usr/bin/msmtp
readonly DEFAULT_ADMIN_EMAIL='admin@example.org'
DEFAULT_KEEP_DAYS=7
echo not an assignment
"""


def test_common_config_is_read_never_run():
    assert read_common_config(COMMON) == {
        "YQ_CMD": "/usr/local/bin/yq",
        "MSMTP_CMD": "/usr/bin/msmtp",
        "DEFAULT_ADMIN_EMAIL": "admin@example.org",
        "DEFAULT_KEEP_DAYS": "7",
    }


def test_a_forget_policy_becomes_retention_and_says_what_it_left():
    assert retention_of("--keep-daily 7 --keep-weekly=4 --keep-within 2w --group-by host") == (
        {"keep_daily": 7, "keep_weekly": 4, "keep_within": "2w"},
        ["--group-by", "host"],
    )


def test_the_server_config_becomes_a_valid_server_yaml(tmp_path):
    conv = convert_server(yaml.safe_load(SERVER), read_common_config(COMMON))
    settings = conv.settings
    assert settings["backend"] == {
        "type": "restic",
        "repository_root": "/srv/restic",
        "password_file": "/etc/backup/restic.pass",
        "backup_options": ["--exclude-caches", "--compression", "max"],
    }
    assert settings["retention"] == {"keep_daily": 7, "keep_weekly": 4, "keep_monthly": 12}
    assert settings["maintenance"] == {
        "check_subsets": 10,
        "prune": False,
        "check": True,
        "check_options": ["--with-cache", "--retry-lock", "5m"],
    }
    assert settings["email"]["to"] == ["ops@example.org"]
    assert settings["email"]["sendmail"] == "/usr/bin/msmtp"
    (host,) = settings["hosts"]
    assert host == {
        "name": "web1",
        "address": "web1.example.org",
        "repository": "/srv/restic/web1.example.org",
        "adopt_host": "web1.example.org",
        "ssh_key_file": "/etc/pullback/keys/id_web1",
        "email_to": ["web-team@example.org"],
        "retention": {"keep_daily": 3},
    }
    # every key of the old file is accounted for, one line each
    said = "\n".join(conv.mapped + conv.unmapped)
    for key in (
        "local_temp_base_dir",
        "admin_email",
        "msmtp_cmd",
        "log_level",
        "backup_options",
        "forget_policy",
        "check_read_data_mode",
        "hosts[0].ssh_user",
        "hosts[0].ssh_key_file",
        "hosts[0].remote_tar_dir",
        "hosts[0].restic_forget_policy",
        "not understood: --group-by host",
        "install -D -m 0600 /root/.ssh/id_web1 /etc/pullback/keys/id_web1",
    ):
        assert key in said, key
    path = tmp_path / "server.yaml"
    path.write_text(yaml.safe_dump(settings))
    load_validated(path, load_schema("pullback.common", "server"), allow_empty=False)


def test_the_client_config_becomes_a_valid_client_yaml(tmp_path):
    old = {
        "base_backup_dir": "/var/tmp/backups",
        "backup_user": "backup",
        "admin_email": "ops@example.org",
        "keep_days": 5,
        "hostname": "web1.example.org",
        "min_free_space_mb": 800,
        "tools": {"msmtp_cmd": "/usr/local/bin/msmtp"},
    }
    conv = convert_client(old, read_common_config(COMMON))
    assert conv.settings == {
        "service_dirs": ["/etc/backup"],
        "hostname": "web1.example.org",
        "keep_days": 5,
        "min_free_space": "800M",
        "email": {
            "to": ["ops@example.org"],
            "from": "pullback@localhost",
            "send": "on_problem",
            "sendmail": "/usr/local/bin/msmtp",
        },
    }
    said = "\n".join(conv.unmapped)
    assert "base_backup_dir" in said and "backup_user" in said and "tools" in said
    path = tmp_path / "client.yaml"
    path.write_text(yaml.safe_dump(conv.settings))
    load_validated(path, load_schema("pullback.common", "client"), allow_empty=True)
