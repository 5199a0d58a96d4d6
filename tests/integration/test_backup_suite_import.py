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


def test_a_second_write_keeps_the_first_original_and_its_owner(tmp_path):
    old = tmp_path / "etc-backup"
    old.mkdir()
    (old / "server_config.yml").write_text(SERVER_CONFIG)
    target = tmp_path / "server.yaml"
    target.write_text("# the original\n")
    os.chown(target, 0, 65534)
    target.chmod(0o640)
    for _ in range(2):
        written = cli(
            "server", "--config", str(target), "import-backup-suite", "--from", str(old), "--write"
        )
        assert written.returncode == 0, written.stderr
    original = tmp_path / "server.yaml.before-import"
    assert original.read_text() == "# the original\n"
    assert (os.stat(original).st_gid, oct(os.stat(original).st_mode & 0o777)) == (65534, "0o640")
    assert (tmp_path / "server.yaml.before-import.1").read_text().startswith("# made by")


def test_what_cannot_be_converted_or_written_is_refused_with_exit_2(tmp_path):
    old = tmp_path / "etc-backup"
    old.mkdir()
    cases = {
        "hosts: {web1: {}}\n": "server_config.yml: hosts: expected a list of hosts",
        "global: {admin_email: x}\n": "converts to a configuration pullback refuses",
        "global: {admin_email: ops@example.org}  # caf\xe9\n": "is not UTF-8 text",
    }
    for text, said in cases.items():
        (old / "server_config.yml").write_bytes(text.encode("latin-1"))
        result = cli(
            "server",
            "--config",
            str(tmp_path / "s.yaml"),
            "import-backup-suite",
            "--from",
            str(old),
        )
        assert result.returncode == 2 and said in result.stderr, (text, result.stderr)
        assert "Traceback" not in result.stderr
    (old / "server_config.yml").write_text(SERVER_CONFIG)
    (tmp_path / "dir.yaml").mkdir()
    (tmp_path / "link.yaml").symlink_to(tmp_path / "elsewhere.yaml")
    for target in ("dir.yaml", "link.yaml"):
        result = cli(
            "server",
            "--config",
            str(tmp_path / target),
            "import-backup-suite",
            "--from",
            str(old),
            "--write",
        )
        assert result.returncode == 2 and "a directory or a symbolic link" in result.stderr
    assert not (tmp_path / "elsewhere.yaml").exists()


def test_what_pullback_itself_would_refuse_or_cannot_read_is_exit_2(tmp_path):
    old = tmp_path / "etc-backup"
    old.mkdir()
    (old / "server_config.yml").write_text(
        "hosts: [{hostname: web1.a.org}, {hostname: web1.a.org}]\n"
    )
    twice = cli(
        "server", "--config", str(tmp_path / "s.yaml"), "import-backup-suite", "--from", str(old)
    )
    assert twice.returncode == 2 and "is listed twice" in twice.stderr, twice.stderr
    (old / "server_config.yml").write_text("hosts: " + "[" * 50000 + "]" * 50000 + "\n")
    deep = cli(
        "server", "--config", str(tmp_path / "s.yaml"), "import-backup-suite", "--from", str(old)
    )
    assert deep.returncode == 2 and "nested too deeply" in deep.stderr, deep.stderr[-300:]
    (old / "server_config.yml").write_text(SERVER_CONFIG)
    os.mkfifo(old / "common_config")
    fifo = cli(
        "server", "--config", str(tmp_path / "s.yaml"), "import-backup-suite", "--from", str(old)
    )
    assert fifo.returncode == 2 and "is not a regular file" in fifo.stderr
    (old / "common_config").unlink()
    nowhere = tmp_path / "no-such-dir" / "server.yaml"
    result = cli(
        "server", "--config", str(nowhere), "import-backup-suite", "--from", str(old), "--write"
    )
    assert result.returncode == 2 and "cannot write" in result.stderr, result.stderr
