"""docs/walkthrough.md is a test: every shell block of it runs, as written and in order, in
a booted Debian 12 root with a real PostgreSQL, openssh-server and the packages' shipped
units. Between the steps this test checks what the page says happened, and tries the
unhappy paths an administrator meets: a failing host, a stale one, an upgrade while a
backup runs.

The page's blocks are marked ``<!-- step: NAME -->``; a shell block without a mark is an
error, so nothing on the page goes untested.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

from tests.system.conftest import ROOT_DIR, UPGRADE_VERSION, admin_machine

DOC = ROOT_DIR / "docs" / "walkthrough.md"
STEP = re.compile(r"<!-- step: (?P<name>[\w-]+) -->\n```sh\n(?P<code>.*?)```", re.S)
ROWS = 42

TIMERS = (
    "pullback-client.timer",
    "pullback-server.timer",
    "pullback-maintain.timer",
    "pullback-copy.timer",
)
"""The four timers the packages enable (README, walkthrough.md)."""


def steps() -> dict[str, str]:
    """The page's steps, in order: name -> shell code."""
    text = DOC.read_text()
    found = {m["name"]: m["code"] for m in STEP.finditer(text)}
    assert text.count("```sh") == len(found), "a shell block of walkthrough.md has no step mark"
    return found


def test_every_shell_block_of_the_walkthrough_is_a_step():
    assert list(steps()) == [
        "install",
        "service",
        "authorize",
        "password",
        "server-config",
        "trust",
        "first-backup",
        "next-day",
        "monitoring",
        "restore",
        "upgrade",
        "purge",
    ]


@pytest.fixture(scope="module")
def machine(root, built, built_upgrade):
    """The administrator's machine before the page: PostgreSQL with a ``shop`` database,
    openssh-server, and the packages in root's home (the newer ones in ``upgrade/``)."""
    admin_machine(root, built, built_upgrade, "postgresql openssh-server")
    root.run(
        "runuser -u postgres -- psql -q -c 'CREATE DATABASE shop' && "
        "runuser -u postgres -- psql -q -d shop -c "
        f"'CREATE TABLE orders(id int); INSERT INTO orders SELECT generate_series(1, {ROWS})'"
    )
    return root


class Walk:
    """Runs the page's steps in the root, as root in its home directory."""

    def __init__(self, root):
        self.root = root
        self.steps = steps()
        self.ran: list[str] = []
        self.timings: dict[str, float] = {}

    def step(self, name: str, check: bool = True):
        started = time.monotonic()
        code = self.steps[name]
        result = self.root.run(
            ["bash", "-euo", "pipefail", "-c", f"cd /root\n{code}"], check=False, timeout=1200
        )
        self.timings[name] = time.monotonic() - started
        self.ran.append(name)
        if check:
            assert result.returncode == 0, f"step {name}:\n{code}\n{result.stdout}\n{result.stderr}"
        return result

    def sh(self, line: str, check: bool = True):
        return self.root.run(line, check=check)

    def journal(self, unit: str) -> str:
        return self.sh(f"journalctl -u {unit} --no-pager").stdout


def test_the_walkthrough_runs_as_written(machine):
    walk = Walk(machine)
    started = time.monotonic()
    installed = walk.step("install")
    assert "Stopping" not in installed.stdout + installed.stderr
    for timer in TIMERS:
        assert timer in installed.stdout
    # the units' Documentation= links lead to files the packages installed
    units = "pullback-client.service pullback-server.service pullback-maintain.service"
    links = walk.sh(f"systemctl show -p Documentation --value {units}").stdout.split()
    files = [link.removeprefix("file://") for link in links if link.startswith("file://")]
    assert len(files) == 3
    for doc in [*files, "/usr/share/doc/pullback-common/monitoring.md"]:
        assert (machine.path / doc.lstrip("/")).is_file(), doc

    checked = walk.step("service")
    assert "/etc/pullback/client.yaml: ok" in checked.stdout
    walk.step("authorize")
    walk.step("password")
    assert walk.sh("stat -c %a /etc/pullback/repository.pass").stdout.strip() == "600"
    walk.step("server-config")
    trusted = walk.step("trust")
    host = walk.sh("hostname -s").stdout.strip()
    assert "SHA256:" in trusted.stdout
    assert f"{host}: reachable, 0 archive(s) ready" in trusted.stdout
    assert "problem:" not in trusted.stdout

    first = walk.step("first-backup")
    to_first_snapshot = time.monotonic() - started
    lines = first.stdout.splitlines()
    header = next(line for line in lines if line.startswith("HOST "))
    row = next(line for line in lines if line.startswith(f"{host} "))

    def cell(title: str) -> str:
        return row[header.index(title) :].split("  ")[0].strip()

    assert (cell("STATE"), cell("LAST RESULT")) == ("ok", "stored (full)"), first.stdout
    assert cell("DATABASES PROVEN") == "never", first.stdout  # it has a dump
    assert f"[{host}] stored: stored {host}-" in walk.journal("pullback-server.service")
    # the monitoring outputs were written by the unit's run, not by hand
    metrics = walk.sh("cat /var/lib/prometheus/node-exporter/pullback.prom").stdout
    assert f'pullback_stale{{host="{host}"}} 0' in metrics
    page = walk.sh("cat /var/www/html/pullback/index.html").stdout
    assert f'data-host="{host}"' in page
    assert "Read-only file system" not in walk.journal("pullback-server.service")

    next_day = walk.step("next-day")  # a delta, applied and proved, as the page says
    assert f"[{host}] stored: stored {host}-" in next_day.stdout + next_day.stderr
    assert "a delta (" in next_day.stdout + next_day.stderr, next_day.stdout
    metrics = next_day.stdout
    assert f'pullback_last_archive_delta{{host="{host}"}} 1' in metrics, metrics
    assert f'pullback_fell_back_to_full{{host="{host}"}} 0' in metrics, metrics
    fetched = re.search(rf'pullback_fetched_bytes{{host="{host}"}} (\d+)', metrics)
    assert fetched is not None and int(fetched[1]) > 0, metrics

    monitored = walk.step("monitoring")
    assert monitored.stdout.splitlines()[-1].startswith("PULLBACK OK - 1 of 1 hosts ok |")
    exit_codes = _unhappy_monitoring(walk, host)

    restored = walk.step("restore")
    name = restored.stdout.strip().splitlines()[-1]
    assert name.startswith("shop_restored_"), restored.stdout
    rows = walk.sh(f"runuser -u postgres -- psql -Atc 'SELECT count(*) FROM orders' -d {name}")
    assert rows.stdout.strip() == str(ROWS + 1)  # the next day's row: stored from a delta
    live = walk.sh("runuser -u postgres -- psql -Atc 'SELECT count(*) FROM orders' -d shop")
    assert live.stdout.strip() == str(ROWS + 1)  # the live database untouched

    _upgrade_while_a_backup_runs(walk)

    purged = walk.step("purge")
    # kept: the repositories, their password, the service files; gone: key, configs
    for kept in ("repositories", "repository.pass", "services"):
        assert kept in purged.stdout.split(), purged.stdout
    for gone in ("id_ed25519", "server.yaml", "client.yaml", "known_hosts", "archives"):
        assert gone not in purged.stdout, purged.stdout
    assert walk.ran == list(walk.steps)  # every block of the page ran
    print(
        f"\nwalkthrough: apt install to the first stored snapshot {to_first_snapshot:.1f}s; "
        f"status exit codes {exit_codes}; steps "
        + ", ".join(f"{k} {v:.1f}s" for k, v in walk.timings.items())
    )


def _unhappy_monitoring(walk: Walk, host: str) -> dict[str, tuple[int, int]]:
    """A failing host, then a stale one: ``status`` and ``status --check`` say so. Returns
    the exit codes (status, --check) seen for ok, failing and stale."""
    codes = {"ok": (walk.sh("pullback-server status", check=False).returncode, 0)}
    walk.sh("systemctl stop ssh.service ssh.socket")
    failed = walk.sh("pullback-server pull", check=False)
    assert failed.returncode == 1
    status = walk.sh("pullback-server status", check=False)
    check = walk.sh("pullback-server status --check", check=False)
    assert (status.returncode, check.returncode) == (1, 1)
    assert check.stdout.startswith(f"PULLBACK WARNING - last pull failed: {host};")
    codes["failing"] = (status.returncode, check.returncode)
    walk.sh("systemctl start ssh.service")
    config = walk.sh("cat /etc/pullback/server.yaml").stdout
    walk.root.write(
        "/etc/pullback/server.yaml",
        config.replace("hosts:\n", "hosts:\n  - {name: ghost, address: 192.0.2.1}\n"),
        0o640,
    )
    stale = walk.sh("pullback-server status --check", check=False)
    assert stale.returncode == 2 and stale.stdout.startswith("PULLBACK CRITICAL - stale: ghost;")
    codes["stale"] = (walk.sh("pullback-server status", check=False).returncode, stale.returncode)
    walk.root.write("/etc/pullback/server.yaml", config, 0o640)
    walk.sh("pullback-server pull")  # the host is reachable again: its last pull is fine
    return codes


SLOW_SERVICE = (
    "service: {name: slow}\ncommand: {dump: [{run: 'sleep 25; echo done', output: done.txt}]}\n"
)


def _upgrade_while_a_backup_runs(walk: Walk) -> None:
    """The page's upgrade step while the client's unit is in the middle of a backup: the
    backup finishes and publishes, nothing is stopped, the new version is installed."""
    walk.root.write("/etc/pullback/services/slow/service.yaml", SLOW_SERVICE, 0o600)
    walk.root.write("/etc/pullback/client.yaml", "min_interval: 1s\n", 0o640)
    walk.sh("chgrp pullback /etc/pullback/client.yaml")
    walk.sh("systemctl start --no-block pullback-client.service")
    deadline = time.monotonic() + 30
    while "sleep 25" not in walk.sh("ps -eo args").stdout:
        assert time.monotonic() < deadline, "the backup did not start"
        time.sleep(0.5)
    upgraded = walk.step("upgrade")
    assert "Stopping" not in upgraded.stdout + upgraded.stderr, upgraded.stdout
    assert walk.sh("systemctl is-active pullback-client.service", check=False).stdout.strip() in (
        "active",
        "activating",
    )
    deadline = time.monotonic() + 120
    while walk.sh("systemctl is-active pullback-client.service", check=False).stdout.strip() in (
        "active",
        "activating",
    ):
        assert time.monotonic() < deadline, "the backup did not finish"
        time.sleep(1)
    result = walk.sh("systemctl show -p Result -p ExecMainStatus pullback-client.service").stdout
    assert "Result=success" in result and "ExecMainStatus=0" in result, result
    assert walk.journal("pullback-client.service").count("published ") == 2  # this one too
    version = walk.sh("dpkg-query -W -f '${Version}' pullback-client").stdout
    assert version == UPGRADE_VERSION
    walk.sh("rm -r /etc/pullback/services/slow")


def test_the_walkthrough_is_linked_from_the_readme():
    assert "docs/walkthrough.md" in Path(ROOT_DIR / "README.md").read_text()
