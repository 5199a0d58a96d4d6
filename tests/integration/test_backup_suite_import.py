"""`import-backup-suite` as an administrator runs it, on backup-suite's files."""

from __future__ import annotations

import os
import subprocess
import sys

import yaml

from pullback.server.config import load_server_config
from tests.helpers.backup_suite_files import SHIPPED_CLIENT

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
    """A write of what the file holds already keeps no copy of it (every rerun of the
    import piled up another identical .before-import.N); a changed source does."""
    old = tmp_path / "etc-backup"
    old.mkdir()
    (old / "server_config.yml").write_text(SERVER_CONFIG)
    target = tmp_path / "server.yaml"
    target.write_text("# the original\n")
    os.chown(target, 0, 65534)
    target.chmod(0o640)
    argv = ("server", "--config", str(target), "import-backup-suite", "--from", str(old))
    runs = [cli(*argv, "--write") for _ in range(2)]
    assert [r.returncode for r in runs] == [0, 0], runs[-1].stderr
    assert f"{target} holds that already; not written" in runs[1].stderr
    assert "wrote" not in runs[1].stderr
    original = tmp_path / "server.yaml.before-import"
    assert original.read_text() == "# the original\n"
    assert (os.stat(original).st_gid, oct(os.stat(original).st_mode & 0o777)) == (65534, "0o640")
    assert not (tmp_path / "server.yaml.before-import.1").exists()
    (old / "server_config.yml").write_text(SERVER_CONFIG.replace("daily 7", "daily 8"))
    assert target.read_text() != cli(*argv).stdout, "the changed source converts the same"
    assert cli(*argv, "--write").returncode == 0
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
    assert deep.returncode == 2 and "nested more than 64 levels deep" in deep.stderr, deep.stderr[
        -300:
    ]
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


def test_an_unknown_key_is_named_with_file_and_line(tmp_path):
    old = tmp_path / "etc-backup"
    old.mkdir()
    (old / "client_config.yml").write_text(SHIPPED_CLIENT + "keep_dayz: 30\n")
    result = cli(
        "client", "-c", str(tmp_path / "c.yaml"), "import-backup-suite", "--from", str(old)
    )
    assert result.returncode == 0, result.stderr
    assert (
        f"no equivalent: {old}/client_config.yml:6: keep_dayz: backup-suite 0.2 reads no such "
        "key (a misspelling of keep_days?)" in result.stderr
    ), result.stderr
    server = SERVER_CONFIG.replace("remote_tar_dir: /var/tmp/b\n", "remote_tar_dir: /b\n    x: 1\n")
    (old / "server_config.yml").write_text(server)
    result = cli(
        "server", "-c", str(tmp_path / "s.yaml"), "import-backup-suite", "--from", str(old)
    )
    assert result.returncode == 0, result.stderr
    assert f"{old}/server_config.yml:11: hosts[0].x: backup-suite 0.2 reads" in result.stderr


def test_a_yaml_error_is_one_line_with_file_and_line(tmp_path):
    old = tmp_path / "etc-backup"
    old.mkdir()
    (old / "client_config.yml").write_text(SHIPPED_CLIENT.replace("14", "[14"))
    result = cli(
        "client", "-c", str(tmp_path / "c.yaml"), "import-backup-suite", "--from", str(old)
    )
    assert result.returncode == 2
    (said,) = result.stderr.splitlines()
    assert f"{old}/client_config.yml:6: YAML syntax error: " in said, said
    assert "\\n" not in said and "<unicode string>" not in said


def test_writing_into_a_missing_directory_names_it(tmp_path):
    old = tmp_path / "etc-backup"
    old.mkdir()
    (old / "client_config.yml").write_text(SHIPPED_CLIENT)
    target = tmp_path / "nodir" / "client.yaml"
    result = cli("client", "-c", str(target), "import-backup-suite", "--from", str(old), "--write")
    assert result.returncode == 2
    assert f"cannot write {target}: its directory {target.parent} does not exist" in result.stderr
    assert ".tmp" not in result.stderr


def test_a_second_write_over_an_edited_import_warns(tmp_path):
    old = tmp_path / "etc-backup"
    old.mkdir()
    (old / "client_config.yml").write_text(SHIPPED_CLIENT)
    target = tmp_path / "client.yaml"
    args = ("client", "-c", str(target), "import-backup-suite", "--from", str(old), "--write")
    assert cli(*args).returncode == 0
    again = cli(*args)  # unchanged: left as it is, no copy, no warning
    assert again.returncode == 0 and "warning" not in again.stderr, again.stderr
    assert not (tmp_path / "client.yaml.before-import").exists()
    target.write_text(target.read_text() + "hostname: client-a\n")
    edited = cli(*args)
    assert edited.returncode == 0, edited.stderr
    assert (
        f"warning: {target} was made by import-backup-suite and was changed since (or its "
        f"source was): kept as {target}.before-import;" in edited.stderr
    ), edited.stderr
    assert "hostname: client-a" in (tmp_path / "client.yaml.before-import").read_text()


# -- a repository_root that is a URL (helper-141's attacks) --------------------------------


def suite_source(tmp_path, root: str, hosts=("web1.example.org",)):
    """backup-suite's server_config.yml with ``root``, and where server.yaml goes."""
    source = tmp_path / "etc-backup"
    source.mkdir()
    (source / "server_config.yml").write_text(
        yaml.safe_dump(
            {
                "global": {"admin_email": "ops@example.test"},
                "restic": {"repository_root": root},
                "hosts": [{"hostname": h} for h in hosts],
            }
        )
    )
    target = tmp_path / "pb"
    target.mkdir()
    return source, target / "server.yaml"


def import_(config, source, *more: str, cwd=None) -> subprocess.CompletedProcess:
    argv = [sys.executable, "-m", "pullback.server.cli", "--config", str(config)]
    argv += ["import-backup-suite", "--from", str(source), *more]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, cwd=cwd, env=env)


def test_restic_s_own_rest_user_password_form_is_a_password_too(tmp_path):
    """``rest:user:pw@host`` (restic's form without https://) holds a password: it was
    printed whole and written into server.yaml (the masking took it for one)."""
    source, config = suite_source(tmp_path, "rest:boss:Pw9-secret@store.example:8000/")
    printed = import_(config, source)
    assert printed.returncode == 0, printed.stderr
    assert "Pw9-secret" not in printed.stdout + printed.stderr
    assert "repository_file:" in printed.stdout and "rest:boss:***@" in printed.stderr
    written = import_(config, source, "--write")
    assert written.returncode == 0, written.stderr
    assert "Pw9-secret" not in config.read_text() + written.stderr
    repo = config.parent / "repositories" / "web1.repo"
    assert repo.read_text() == "rest:boss:Pw9-secret@store.example:8000/web1.example.org\n"


def test_a_relative_repository_root_is_refused_as_before(tmp_path):
    """Only a scheme makes a URL: ``backups/restic`` or ``~/restic`` is refused, exit 2,
    naming the key (it became each host's relative repository, "a URL")."""
    for root in ("backups/restic", "~/restic"):
        place = tmp_path / root.replace("/", "_").replace("~", "home")
        place.mkdir()
        source, config = suite_source(place, root)
        printed = import_(config, source)
        assert printed.returncode == 2, printed.stdout + printed.stderr
        assert "backend.repository_root" in printed.stderr and "(a URL" not in printed.stderr


def test_a_password_with_a_space_is_masked_in_every_line(tmp_path):
    source, config = suite_source(tmp_path, "rest:https://boss:open sesame-77@store:8000/")
    printed = import_(config, source)
    assert printed.returncode == 0, printed.stderr
    assert "sesame" not in printed.stdout + printed.stderr, printed.stderr


def test_write_makes_the_repository_files_and_their_directory_private(tmp_path):
    """A file that held the URL already is narrowed to 0600, a wide ``repositories``
    directory to 0700 (check refuses a file others may read); a symbolic link in the way
    is refused before anything is written."""
    root = "rest:https://boss:Pw9@store.example:8000/"
    source, config = suite_source(tmp_path, root, hosts=("web1.example.org", "db1.example.org"))
    folder = config.parent / "repositories"
    folder.mkdir(mode=0o755)
    folder.chmod(0o755)
    web1 = folder / "web1.repo"
    web1.write_text(f"{root}web1.example.org\n")
    web1.chmod(0o644)
    (folder / "db1.repo").symlink_to(tmp_path / "elsewhere")
    refused = import_(config, source, "--write")
    assert refused.returncode == 2 and "symbolic link" in refused.stderr, refused.stderr
    assert web1.stat().st_mode & 0o777 == 0o644 and not config.exists()  # nothing written
    (folder / "db1.repo").unlink()
    written = import_(config, source, "--write")
    assert written.returncode == 0, written.stderr
    assert folder.stat().st_mode & 0o777 == 0o700
    assert web1.stat().st_mode & 0o777 == 0o600 and (folder / "db1.repo").is_file()
    assert (folder / "db1.repo").stat().st_mode & 0o777 == 0o600
    assert "Pw9" not in written.stderr + config.read_text()


def test_a_config_path_with_dot_dot_still_imports_a_url_with_a_password(tmp_path):
    source, config = suite_source(tmp_path, "rest:https://boss:Pw9@store.example:8000/")
    (tmp_path / "sub").mkdir()
    printed = import_("../pb/server.yaml", source, cwd=tmp_path / "sub")
    assert printed.returncode == 0, printed.stderr
    assert f"repository_file: {config.parent}/repositories/web1.repo" in printed.stdout
