"""Every key of backup-suite's files gets a line (with file:line for the ones the import
does not know), files kept below /etc/backup are moved out, and the lines say what to do.

The YAML and common_config texts are backup-suite 0.2's shipped examples (configs/ in
lduesing/backup-suite), comments shortened, plus the changes each test names."""

from __future__ import annotations

import yaml

from pullback.common.backup_suite import (
    convert_client,
    convert_server,
    read_common_config,
    tracked,
    unasked,
)
from pullback.common.config import load_validated
from pullback.common.schema import load_schema
from pullback.common.yamlfile import load
from tests.helpers.backup_suite_files import SHIPPED_CLIENT, SHIPPED_COMMON, SHIPPED_SERVER


def _said(conv) -> str:
    return "\n".join(conv.mapped + conv.unmapped)


def _unknown(tmp_path, text: str, convert) -> tuple[list[tuple], object]:
    """The unasked keys of ``text`` (as a file) after ``convert``, and the conversion."""
    path = tmp_path / "old.yml"
    path.write_text(text)
    doc = load(path)
    asked: set[tuple] = set()
    conv = convert(tracked(doc.data, asked))
    return unasked(doc.lines, asked), conv


def test_the_password_and_keys_below_etc_backup_are_moved_out(tmp_path):
    conv = convert_server(yaml.safe_load(SHIPPED_SERVER), read_common_config(SHIPPED_COMMON))
    assert conv.settings["backend"]["password_file"] == "/etc/pullback/repository.pass"
    keys = [host["ssh_key_file"] for host in conv.settings["hosts"]]
    assert keys == ["/etc/pullback/keys/client-a", "/etc/pullback/keys/client-b"]
    said = _said(conv)
    for command in (
        "install -D -m 0600 /etc/backup/restic.pass /etc/pullback/repository.pass",
        "install -D -m 0600 /etc/backup/client_a_id_ed25519 /etc/pullback/keys/client-a",
        "install -D -m 0600 /etc/backup/client_b_id_ed25519 /etc/pullback/keys/client-b",
    ):
        assert command in said, said
    assert "the repositories' only password is in /etc/backup" in said
    path = tmp_path / "server.yaml"
    path.write_text(yaml.safe_dump(conv.settings))
    load_validated(path, load_schema("pullback.common", "server"), allow_empty=False)


def test_files_elsewhere_or_read_from_another_directory_stay(tmp_path):
    conv = convert_server(yaml.safe_load(SHIPPED_SERVER), {}, source="/srv/old-backup")
    assert conv.settings["backend"]["password_file"] == "/etc/backup/restic.pass"
    assert conv.settings["hosts"][0]["ssh_key_file"] == "/etc/backup/client_a_id_ed25519"
    assert "install" not in _said(conv)
    # /etc/backupX is not below /etc/backup
    data = yaml.safe_load(SHIPPED_SERVER.replace("/etc/backup/restic", "/etc/backupX/restic"))
    conv = convert_server(data, {})
    assert conv.settings["backend"]["password_file"] == "/etc/backupX/restic.pass"


def test_every_unknown_key_is_named_with_its_line_and_the_key_it_misspells(tmp_path):
    server = SHIPPED_SERVER.replace(
        "    check: true\n", "    check: true\n    keep_extra: yes\n"
    ).replace(
        '    admin_email: "admin_b+backup@example.org"\n',
        '    admin_email: "admin_b+backup@example.org"\n'
        '    admin-email: "owner-b@example.org"\n'
        '    restic_forget_polciy: "--keep-last 3"\n',
    )
    found, conv = _unknown(tmp_path, server + "hostnam: x\n", lambda d: convert_server(d, {}))
    assert [(".".join(map(str, path)), line) for path, line, _ in found] == [
        ("restic.maintenance.keep_extra", 12),
        ("hosts.1.restic_forget_polciy", 24),
        ("hostnam", 25),
    ]
    whys = [why for _, _, why in found]
    assert "backup-suite 0.2 reads no such key" in whys[0] and "misspelling" not in whys[0]
    assert "(a misspelling of restic_forget_policy?)" in whys[1]
    assert "(a misspelling of hostname?)" in whys[2]
    # backup_server.sh mails a failed host's `admin-email`: it is mapped, not unknown
    assert conv.settings["hosts"][1]["email_to"] == [
        "admin_b+backup@example.org",
        "owner-b@example.org",
    ]
    assert "hosts[1].admin-email -> hosts[].email_to" in conv.mapped
    client = SHIPPED_CLIENT + 'keep_dayz: 30\nhostnme: "a.example.org"\nmin_free_space_MB: 5\n'
    found, _ = _unknown(tmp_path, client, lambda d: convert_client(d, {}))
    assert [(path, line) for path, line, _ in found] == [
        (("keep_dayz",), 6),
        (("hostnme",), 7),
        (("min_free_space_MB",), 8),
    ]
    assert "(a misspelling of keep_days?)" in found[0][2]
    assert "(a misspelling of min_free_space_mb?)" in found[2][2]


def test_the_shipped_files_have_no_unknown_key(tmp_path):
    common = read_common_config(SHIPPED_COMMON)
    assert _unknown(tmp_path, SHIPPED_SERVER, lambda d: convert_server(d, common))[0] == []
    assert _unknown(tmp_path, SHIPPED_CLIENT, lambda d: convert_client(d, common))[0] == []


def test_a_host_name_kept_whole_tells_to_set_the_clients_hostname():
    data = yaml.safe_load(
        SHIPPED_SERVER.replace("client-b.example.org", "client-a.other.org")
        + '  - hostname: "192.168.1.20"\n'
    )
    conv = convert_server(data, {})
    assert [h["name"] for h in conv.settings["hosts"]] == [
        "client-a.example.org",
        "client-a.other.org",
        "192.168.1.20",
    ]
    said = _said(conv)
    for name in ("client-a.example.org", "client-a.other.org", "192.168.1.20"):
        assert f"set `hostname: {name}` in that client's client.yaml" in said, said
    plain = convert_server(yaml.safe_load(SHIPPED_SERVER), {})
    assert "set `hostname:" not in _said(plain)


def test_common_config_keys_the_yaml_overrides_say_so():
    common = read_common_config(SHIPPED_COMMON)
    client = yaml.safe_load(SHIPPED_CLIENT + "min_free_space_mb: 800\n")
    said = convert_client(client, common).unmapped
    for line in (
        "common_config DEFAULT_ADMIN_EMAIL: overridden by admin_email, as in backup-suite",
        "common_config DEFAULT_KEEP_DAYS: overridden by keep_days, as in backup-suite",
        "common_config DEFAULT_MIN_FREE_SPACE_MB: overridden by min_free_space_mb, as in "
        "backup-suite",
    ):
        assert line in said, said
    server = yaml.safe_load(
        SHIPPED_SERVER.replace("global:\n", 'global:\n  msmtp_cmd: "/usr/bin/msmtp"\n')
    )
    said = convert_server(server, common).unmapped
    assert "common_config MSMTP_CMD: overridden by global.msmtp_cmd, as in backup-suite" in said
    assert (
        "common_config DEFAULT_ADMIN_EMAIL: overridden by global.admin_email, as in backup-suite"
        in said
    )


def test_a_tool_path_with_a_purpose_gets_advice():
    client = yaml.safe_load(
        SHIPPED_CLIENT + "tools:\n  pg_dump_cmd: /usr/lib/postgresql/16/bin/pg_dump\n"
        "  tar_cmd: /bin/tar\n"
    )
    said = "\n".join(convert_client(client, {}).unmapped)
    assert (
        "tools.pg_dump_cmd: pullback runs pg_dump from the PATH, not "
        "/usr/lib/postgresql/16/bin/pg_dump" in said
    )
    assert (
        "Environment=PATH=/usr/lib/postgresql/16/bin:/usr/sbin:/usr/bin:/sbin:/bin in a drop-in "
        "(systemctl edit pullback-client.service)" in said
    )
    assert "tools.tar_cmd: pullback runs the tools on the PATH" in said
    common = read_common_config(
        SHIPPED_COMMON.replace(
            'RESTIC_CMD="${RESTIC_CMD:-restic}"', 'RESTIC_CMD="nice -n 19 ionice -c3 restic"'
        )
    )
    said = "\n".join(convert_server(yaml.safe_load(SHIPPED_SERVER), common).unmapped)
    assert "common_config RESTIC_CMD: pullback runs the tool on the PATH, without " in said
    assert "Nice=19 and IOSchedulingClass=idle in a drop-in (systemctl edit " in said
    assert "pullback-server.service pullback-maintain.service)" in said


def test_repositories_below_etc_backup_are_named_never_to_remove():
    data = yaml.safe_load(SHIPPED_SERVER.replace("/media/backup/restic", "/etc/backup/restic"))
    conv = convert_server(data, {})
    assert conv.settings["backend"]["repository_root"] == "/etc/backup/restic"
    assert (
        "restic.repository_root: the repositories are in /etc/backup: never remove /etc/backup"
        in "\n".join(conv.unmapped)
    )
