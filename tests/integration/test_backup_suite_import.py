"""`import-backup-suite` as an administrator runs it, on backup-suite's files."""

from __future__ import annotations

import os
import subprocess
import sys

import yaml

from pullback.server.config import load_server_config

SERVER_CONFIG = """\
global: {admin_email: ops@example.org, msmtp_cmd: /usr/bin/msmtp}
restic:
  repository_root: /srv/restic
  password_file: /etc/backup/restic.pass
  maintenance: {forget_policy: "--keep-daily 7 --keep-weekly 4"}
hosts:
  - hostname: web1.example.org
    ssh_user: backup
    ssh_key_file: /root/.ssh/k
    remote_tar_dir: /var/tmp/b
"""


def cli(program: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", f"pullback.{program}.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_the_server_config_is_written_and_the_old_file_kept(tmp_path):
    old = tmp_path / "etc-backup"
    old.mkdir()
    (old / "server_config.yml").write_text(SERVER_CONFIG)
    (old / "common_config").write_text("DEFAULT_ADMIN_EMAIL=admin@example.org\n")
    target = tmp_path / "server.yaml"
    target.write_text("# the packaged example\n")
    target.chmod(0o640)
    printed = cli("server", "--config", str(target), "import-backup-suite", "--from", str(old))
    assert printed.returncode == 0, printed.stderr
    assert yaml.safe_load(printed.stdout)["hosts"][0]["name"] == "web1"
    assert "mapped: hosts[0].ssh_key_file -> hosts[].ssh_key_file" in printed.stderr
    assert target.read_text() == "# the packaged example\n"  # only printed
    written = cli(
        "server", "--config", str(target), "import-backup-suite", "--from", str(old), "--write"
    )
    assert written.returncode == 0, written.stderr
    config = load_server_config(target)
    assert [h.name for h in config.hosts] == ["web1"]
    assert config.hosts[0].retention["keep_daily"] == 7
    assert config.email is not None and config.email.sendmail is not None
    assert (tmp_path / "server.yaml.before-import").read_text() == "# the packaged example\n"
    assert oct(os.stat(target).st_mode & 0o777) == "0o640"


def test_a_missing_old_file_is_a_usage_error(tmp_path):
    result = cli(
        "client",
        "--config",
        str(tmp_path / "c.yaml"),
        "import-backup-suite",
        "--from",
        str(tmp_path),
    )
    assert result.returncode == 2
    assert f"cannot read {tmp_path}/client_config.yml" in result.stderr
