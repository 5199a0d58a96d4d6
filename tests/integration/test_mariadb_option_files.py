"""Which credentials the MariaDB tools really use, asked of the tools themselves
(``--print-defaults``): root's ``~/.my.cnf`` must never replace a task's own credentials,
and must be used when the task has none (the client unit sets ``HOME=/root``)."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from pullback.plugins import mariadb
from pullback.plugins._common import forget_private
from pullback.plugins.task import Task
from tests.helpers.tasks import task_for

TOOL = next((t for t in ("mariadb-dump", "mysqldump") if shutil.which(t)), None)
pytestmark = pytest.mark.skipif(TOOL is None, reason="no mariadb-dump here")


def make_task(config: dict, tmp_path) -> Task:
    return task_for("mariadb", config, tmp_path)


def printed_defaults(options: list[str], home) -> str:
    files = [o for o in options if o.startswith("--defaults")]  # first, as the tools demand
    rest = [o for o in options if o not in files]
    return subprocess.run(
        [TOOL, *files, "--print-defaults", *rest],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "HOME": str(home)},
    ).stdout


def test_roots_my_cnf_never_replaces_a_task_s_password(tmp_path):
    home = tmp_path / "root"
    home.mkdir()
    (home / ".my.cnf").write_text(
        "[client]\npassword=root-pw\nhost=db.other\n[mysqldump]\nno-data\n"
    )
    secret = tmp_path / "task.pass"
    secret.write_text("task-pw\n")
    secret.chmod(0o600)
    task = make_task({"database": "crm", "user": "backup", "password_file": str(secret)}, tmp_path)
    try:
        shown = printed_defaults(mariadb._options(task), home)
    finally:
        forget_private(task)  # its option file holds the password
    assert "--password=task-pw" in shown
    assert "root-pw" not in shown and "db.other" not in shown and "no-data" not in shown
    # the system-wide files still count (Debian's socket path lives there)
    if os.path.isfile("/etc/mysql/my.cnf"):
        assert "--socket=" in shown


def test_without_credentials_of_its_own_a_task_uses_roots_my_cnf(tmp_path):
    home = tmp_path / "root"
    home.mkdir()
    (home / ".my.cnf").write_text("[client]\npassword=root-pw\n")
    task = make_task({"database": "crm", "user": "backup"}, tmp_path)
    assert "--password=root-pw" in printed_defaults(mariadb._options(task), home)
