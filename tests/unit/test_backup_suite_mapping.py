"""backup-suite's configuration read into pullback's: every key mapped or said why not."""

from __future__ import annotations

import pytest
import yaml

from pullback.common.backup_suite import (
    BadValue,
    convert_client,
    convert_server,
    host_names,
    read_common_config,
    read_data_subsets,
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
        "password_file": "/etc/pullback/repository.pass",
        "init": False,
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
        "ssh_key_file": "/etc/pullback/keys/web1",
        "email_to": ["web-team@example.org"],
        # the host's own policy replaced the global one in backup-suite
        "retention": {
            "keep_daily": 3,
            "keep_hourly": 0,
            "keep_last": 0,
            "keep_monthly": 0,
            "keep_weekly": 0,
            "keep_yearly": 0,
        },
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
        "install -D -m 0600 /root/.ssh/id_web1 /etc/pullback/keys/web1",
        "install -D -m 0600 /etc/backup/restic.pass /etc/pullback/repository.pass",
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
        "hostname": "web1",  # the name the server's import gives it
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


# -- what a fresh-eyes attack found (issue 17 review) ----------------------------------------


def test_backup_suite_s_shipped_common_config_gives_a_usable_mailer():
    common = read_common_config('MSMTP_CMD="${MSMTP_CMD:-msmtp}"\nTAR_CMD="$TAR"\n')
    assert common == {"MSMTP_CMD": "msmtp"}  # the default taken; a bare variable skipped
    conv = convert_server({"global": {"admin_email": "ops@example.org"}}, common)
    assert conv.settings["email"]["sendmail"].startswith("/")
    assert "common_config MSMTP_CMD -> email.sendmail" in conv.mapped


@pytest.mark.parametrize(
    ("hosts", "names"),
    [
        (["web1.a.org", "db1.a.org"], ["web1", "db1"]),
        (["web1.a.org", "web1.b.org"], ["web1.a.org", "web1.b.org"]),  # would collide
        (["web1", "web1.example.org"], ["web1", "web1.example.org"]),
        (["10.0.0.5", "10.0.0.6"], ["10.0.0.5", "10.0.0.6"]),  # addresses stay whole
    ],
)
def test_host_names_are_short_unless_they_would_collide_or_are_addresses(hosts, names):
    assert host_names(hosts) == names


@pytest.mark.parametrize(
    ("old", "key"),
    [
        ({"hosts": {"web1": {}}}, "hosts"),
        ({"hosts": ["web1"]}, "hosts"),
        ({"global": ["a"]}, "global"),
        ({"restic": "x"}, "restic"),
        ({"restic": {"maintenance": "x"}}, "restic.maintenance"),
        ({"hosts": [{"hostname": None}]}, "hosts[0].hostname"),
        ({"hosts": [{"hostname": ["a", "b"]}]}, "hosts[0].hostname"),
        ({"hosts": [{"hostname": "web 1.example.org"}]}, "hosts[0].hostname"),
        ({"hosts": [{"hostname": "web1.x/../../etc"}]}, "hosts[0].hostname"),
        ({"hosts": [{"hostname": "w", "ssh_key_file": [1]}]}, "hosts[0].ssh_key_file"),
        ({"restic": {"maintenance": {"forget_policy": "--keep-daily seven"}}}, "forget_policy"),
        ({"restic": {"maintenance": {"forget_policy": "--keep-daily -1"}}}, "forget_policy"),
        ({"restic": {"backup_options": "--exclude 'unbalanced"}}, "restic.backup_options"),
        ({"restic": {"maintenance": {"prune": "off"}}}, "restic.maintenance.prune"),
        ({"restic": {"maintenance": {"check": None}}}, "restic.maintenance.check"),
    ],
)
def test_a_value_of_the_wrong_shape_is_refused_naming_its_key(old, key):
    with pytest.raises(BadValue) as caught:
        convert_server(old)
    assert key in str(caught.value)


def test_an_alias_bomb_is_refused_without_being_expanded():
    bomb = "a: &a [x, x, x, x, x, x, x, x, x]\n"
    for level in range(1, 9):
        bomb += f"{chr(97 + level)}: &{chr(97 + level)} [*{chr(96 + level)}] \n".replace(
            f"[*{chr(96 + level)}]", ", ".join([f"*{chr(96 + level)}"] * 9).join("[]")
        )
    data = yaml.safe_load(bomb + "global: {admin_email: *i}\n")
    with pytest.raises(BadValue, match=r"global\.admin_email: expected a single value"):
        convert_server(data)


@pytest.mark.parametrize(
    ("mode", "subsets"),
    [
        ("true", 1),
        ("10%", 10),
        ("25 %", 4),
        ("2/5", 5),
        ("100%", 1),
        ("10.5%", 10),
        ("false", None),
        ("0%", None),
        ("150%", None),
        ("abc", None),
    ],
)
def test_read_data_modes(mode, subsets):
    assert read_data_subsets(mode) == subsets


def test_read_data_in_check_options_becomes_check_subsets():
    maintenance = {"check_options": "--read-data --with-cache", "check_read_data_mode": "abc"}
    conv = convert_server({"restic": {"maintenance": maintenance}})
    assert conv.settings["maintenance"] == {"check_subsets": 1, "check_options": ["--with-cache"]}
    assert any("'abc' not understood" in line for line in conv.unmapped)


def test_short_retention_flags_and_a_policy_pullback_cannot_use():
    assert retention_of("-d 7 -w 4 -m 12 -y 3")[0] == {
        "keep_daily": 7,
        "keep_weekly": 4,
        "keep_monthly": 12,
        "keep_yearly": 3,
    }
    conv = convert_server({"restic": {"maintenance": {"forget_policy": "--keep-tag x"}}})
    assert "retention" not in conv.settings
    assert any("pullback's default retention applies" in line for line in conv.unmapped)


def test_every_common_config_key_and_tool_gets_a_line():
    common = read_common_config("UNIVENTION_BACKUP_CMD=/usr/sbin/ucs-backup\nDOCKER_CMD=docker\n")
    conv = convert_client({"tools": {"tar_cmd": "/bin/tar"}}, common)
    said = "\n".join(conv.unmapped)
    assert "common_config UNIVENTION_BACKUP_CMD: set univention.command" in said
    assert "common_config DOCKER_CMD: pullback runs the tools on the PATH" in said
    assert "tools.tar_cmd: pullback runs the tools on the PATH" in said


def test_mail_settings_without_a_recipient_are_said_not_silently_dropped():
    conv = convert_client({"email_subject_prefix": "[B]", "tools": {"msmtp_cmd": "msmtp"}})
    assert "email" not in conv.settings
    assert sum("no admin_email was set" in line for line in conv.unmapped) == 2


# -- the second look at the fixes --------------------------------------------------------------


def test_msmtp_with_arguments_keeps_the_program_and_says_where_the_rest_goes():
    conv = convert_server(
        {"global": {"admin_email": "ops@example.org"}}, {"MSMTP_CMD": "msmtp -a backup"}
    )
    assert conv.settings["email"]["sendmail"].endswith("/msmtp")
    assert any("move '-a backup' into msmtp's configuration" in line for line in conv.unmapped)
    for bad in ("`which msmtp`", "bin/msmtp", "msmtp;reboot", "~/bin/msmtp"):
        with pytest.raises(BadValue):
            convert_server({"global": {"admin_email": "o@x.org"}}, {"MSMTP_CMD": bad})


@pytest.mark.parametrize(
    ("old", "said"),
    [
        ({"keep_days": "\u00b2"}, "keep_days: expected a whole number"),
        (
            {"restic": {"maintenance": {"forget_policy": "--keep-daily"}}},
            "--keep-daily has no value",
        ),
        ({"restic": {"maintenance": {"forget_policy": "--keep-daily= -w 2"}}}, "has no value"),
        ({"restic": {"maintenance": {"forget_policy": "--keep-daily 0"}}}, "keeps nothing"),
    ],
)
def test_numbers_and_policies_that_mean_nothing_are_refused(old, said):
    with pytest.raises(BadValue, match=said):
        (convert_client if "keep_days" in old else convert_server)(old)


def test_a_global_keep_within_that_a_host_cannot_drop_is_said():
    old = {
        "restic": {"maintenance": {"forget_policy": "--keep-within 30d --keep-daily 7"}},
        "hosts": [{"hostname": "web1.example.org", "restic_forget_policy": "--keep-last 3"}],
    }
    conv = convert_server(old)
    assert any("global --keep-within still applies" in line for line in conv.unmapped)


def test_tls_backup_options_are_dropped_with_their_values_and_the_reason():
    server = yaml.safe_load(SERVER)
    server["restic"]["backup_options"] = (
        "--insecure-tls --exclude-caches --cacert /etc/ca.pem --tls-client-cert=/c.pem -x"
    )
    conv = convert_server(server, read_common_config(COMMON))
    assert conv.settings["backend"]["backup_options"] == ["--exclude-caches", "-x"]
    dropped = [u for u in conv.unmapped if u.startswith("restic.backup_options --")]
    assert [d.split(":")[0].split(" (")[0] for d in dropped] == [
        "restic.backup_options --insecure-tls",
        "restic.backup_options --cacert /etc/ca.pem",
        "restic.backup_options --tls-client-cert=/c.pem",
    ], dropped
    assert all("SSL_CERT_FILE" in d for d in dropped)


def test_backup_options_that_hide_rewritten_files_are_dropped_with_the_reason():
    server = yaml.safe_load(SERVER)
    server["restic"]["backup_options"] = "--exclude-caches --ignore-inode --ignore-ctime"
    conv = convert_server(server, read_common_config(COMMON))
    assert conv.settings["backend"]["backup_options"] == ["--exclude-caches"]
    dropped = [u for u in conv.unmapped if u.startswith("restic.backup_options --ignore")]
    assert len(dropped) == 2 and "keeps a file's older bytes" in dropped[0]


@pytest.mark.parametrize(
    ("root", "kind"),
    [
        ("sftp:backup@store.example:/srv/restic/", "repository"),
        ("rest:https://store.example:8000", "repository"),
        ("rest:https://boss:pw-9q@store.example:8000/", "repository_file"),
    ],
)
def test_a_repository_url_root_becomes_each_host_s_repository(root, kind):
    """A URL is no directory (backend.repository_root); each host's repository below it
    keeps its full name, and one with a password goes to a file that --write writes."""
    old = {
        "restic": {"repository_root": root},
        "hosts": [{"hostname": "web1.example.org"}, {"hostname": "10.0.0.7"}],
    }
    conv = convert_server(old, config_dir="/etc/pb")
    assert "repository_root" not in conv.settings["backend"]
    urls = [f"{root.rstrip('/')}/web1.example.org", f"{root.rstrip('/')}/10.0.0.7"]
    web1, ip = conv.settings["hosts"]
    if kind == "repository":
        assert [web1["repository"], ip["repository"]] == urls
        assert conv.secret_files == {}
    else:
        files = ["/etc/pb/repositories/web1.repo", "/etc/pb/repositories/10.0.0.7.repo"]
        assert [web1["repository_file"], ip["repository_file"]] == files
        assert conv.secret_files == {f: u + "\n" for f, u in zip(files, urls, strict=True)}
        assert "pw-9q" not in "\n".join(conv.mapped + conv.unmapped)
