"""The Debian packages, as an administrator meets them: built, linted, installed with apt
into a booted Debian 12 root (systemd as PID 1), configured, run by systemd, purged."""

from __future__ import annotations

import json
import shutil
import subprocess
import uuid

import pytest

from tests.helpers.debroot import CLEAN_ENV
from tests.system.conftest import ROOT_DIR, UPGRADE_VERSION, start_a_run_holding

TIMERS = (
    "pullback-client.timer",
    "pullback-server.timer",
    "pullback-maintain.timer",
    "pullback-copy.timer",
)
"""The four timers the packages enable (README, walkthrough.md)."""


def test_lintian_reports_no_errors_and_no_warnings(built):
    result = subprocess.run(
        ["lintian", "--fail-on", "error,warning", str(built["changes"])],
        capture_output=True,
        text=True,
        env=CLEAN_ENV,
    )
    complaints = [line for line in result.stdout.splitlines() if line.startswith(("E:", "W:"))]
    assert complaints == [], "\n".join(complaints)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_build_leaves_nothing_git_would_show(built):
    """Everything dpkg-buildpackage writes into the source tree is in .gitignore."""
    source = built["changes"].parent / "pullback"
    tracked = set(
        subprocess.run(
            ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
            cwd=ROOT_DIR,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.splitlines()
    )
    made = [
        str(p.relative_to(source))
        for p in source.rglob("*")
        if p.is_file() and str(p.relative_to(source)) not in tracked
    ]
    assert made, "the build wrote nothing? (the check would be empty)"
    shown = subprocess.run(
        ["git", "check-ignore", "--no-index", "--verbose", "--non-matching", "--stdin"],
        cwd=ROOT_DIR,
        input="\n".join(made),
        capture_output=True,
        text=True,
    ).stdout.splitlines()
    not_ignored = [line.split("\t")[1] for line in shown if line.startswith("::")]
    assert not_ignored == [], "\n".join(not_ignored[:30])


@pytest.fixture(scope="module")
def installed(root, built):
    debs = root.path / "tmp/debs"
    debs.mkdir(parents=True, exist_ok=True)
    for deb in built["debs"]:
        shutil.copy2(deb, debs / deb.name)
    before = root.run(
        "find / -xdev -path /proc -prune -o -path /sys -prune -o -print | sort"
    ).stdout.splitlines()
    root.run(["apt-get", "update", "-q"])
    result = root.run(
        "DEBIAN_FRONTEND=noninteractive apt-get install -y -q /tmp/debs/pullback-*.deb"
    )
    assert "Setting up pullback-server" in result.stdout
    return {"before": set(before), "apt": result.stdout}


def test_timers_are_enabled_and_services_skip_an_example_config(root, installed):
    timers = root.run(["systemctl", "list-timers", "--all", "--no-legend"]).stdout
    for timer in TIMERS:
        assert timer in timers
        assert root.run(["systemctl", "is-enabled", timer]).stdout.strip() == "enabled"
    # a fresh installation: nothing configured yet, so the services are skipped, not failed
    for service in ("pullback-client.service", "pullback-server.service"):
        root.run(["systemctl", "start", service])
        assert root.run(["systemctl", "is-failed", service], check=False).stdout.strip() != "failed"
    journal = root.run(["journalctl", "-u", "pullback-client.service", "--no-pager"]).stdout
    assert "nothing to back up yet" in journal
    assert root.run(
        "stat -c '%U:%G %a' /var/lib/pullback/archives /var/lib/pullback/archives/.fetched-marks "
        "/etc/pullback/client.yaml /etc/pullback/id_ed25519"
    ).stdout.split("\n")[:4] == [
        "root:pullback 2750",
        "root:pullback 2770",
        "root:pullback 640",
        "root:root 600",
    ]


def test_a_configured_client_and_server_run_under_systemd(root, installed):
    # the administrator's steps of docs/server.md, on one machine
    root.run("mkdir -p /srv/app/data && echo 'precious' > /srv/app/data/a.txt")
    root.write(
        "/etc/pullback/services/app/service.yaml",
        "service: {name: app}\nfiles: {paths: [/srv/app/data]}\n",
        0o600,
    )
    root.write("/etc/pullback/client.yaml", "hostname: node1\n", 0o640)
    root.run("chgrp pullback /etc/pullback/client.yaml")
    port = "2222"
    root.write("/etc/ssh/sshd_config.d/pullback-test.conf", f"Port {port}\n")
    root.run(["systemctl", "restart", "ssh.service"])
    key = (root.path / "etc/pullback/id_ed25519.pub").read_text().strip()
    root.write(
        "/var/lib/pullback/.ssh/authorized_keys",
        f'restrict,command="pullback-client serve" {key}\n',
        0o600,
    )
    root.run("chown -R pullback:pullback /var/lib/pullback/.ssh")
    root.run(
        "head -c 32 /dev/urandom | base64 > /etc/pullback/repository.pass && "
        "chmod 600 /etc/pullback/repository.pass"
    )
    root.write(
        "/etc/pullback/server.yaml",
        f"""\
hosts:
  - {{name: node1, address: 127.0.0.1, port: {port}}}
""",
        0o640,
    )
    trusted = root.run(["pullback-server", "trust", "node1", "--yes"])
    assert "SHA256:" in trusted.stdout

    client = root.run(["systemctl", "start", "pullback-client.service"], check=False)
    assert client.returncode == 0, root.run(
        ["journalctl", "-u", "pullback-client.service", "--no-pager"]
    ).stdout
    server = root.run(["systemctl", "start", "pullback-server.service"], check=False)
    assert server.returncode == 0, root.run(
        ["journalctl", "-u", "pullback-server.service", "--no-pager"]
    ).stdout

    snapshots = root.run(
        "RESTIC_PASSWORD_FILE=/etc/pullback/repository.pass restic -r "
        "/var/lib/pullback/repositories/node1 snapshots --json"
    ).stdout
    assert '"hostname":"node1"' in snapshots.replace(" ", "")
    client_log = root.run(["journalctl", "-u", "pullback-client.service", "--no-pager"]).stdout
    server_log = root.run(["journalctl", "-u", "pullback-server.service", "--no-pager"]).stdout
    assert "published node1-" in client_log
    assert "[node1] stored: stored node1-" in server_log
    # fetched leaves a mark (written by the pullback user); the newest archive stays
    marked = root.run("ls /var/lib/pullback/archives/.fetched-marks").stdout
    assert marked.count(".tar.zst\n") == 1
    # ... and, from this server, that it applies deltas (incremental.enabled: auto)
    assert "server-applies-deltas\n" in marked
    assert root.run("ls /var/lib/pullback/archives").stdout.count(".tar.zst\n") == 1
    # the record of validated documents (postinst): the configuration and the sidecar
    # are known valid, so neither a command nor the serve endpoint (the pullback user)
    # loads the schema validator again
    record = "/var/lib/pullback/validated"
    assert root.run(f"stat -c '%U %G %a' {record}").stdout == "root pullback 750\n"
    assert root.run(f"ls {record} | wc -l").stdout.strip() != "0"
    for command in (
        "python3 -X importtime /usr/bin/pullback-client list",
        "SSH_ORIGINAL_COMMAND=list runuser -u pullback -- "
        "python3 -X importtime /usr/bin/pullback-client serve",
    ):
        imported = root.run(f"{command} 2>&1 >/dev/null").stdout
        assert "import time:" in imported and " jsonschema\n" not in imported, command

    maintain = root.run(["systemctl", "start", "pullback-maintain.service"], check=False)
    maintain_log = root.run(["journalctl", "-u", "pullback-maintain.service", "--no-pager"]).stdout
    assert maintain.returncode == 0, maintain_log
    assert "restic check read part 1/8 of the data: no errors" in maintain_log
    assert "match the manifest" in maintain_log  # the first restore drill ran and passed
    status = root.run(["pullback-server", "status"]).stdout
    assert "node1" in status and "stored" in status

    # incremental archives by default (docs/client.md): the first run kept its file cache
    # (the unit lets it write /var/cache/pullback), and now that the server said it
    # applies deltas the next run makes one; the server keeps its index beside staging
    root.write("/etc/pullback/client.yaml", "hostname: node1\nmin_interval: 1s\n", 0o640)
    root.run("chgrp pullback /etc/pullback/client.yaml")
    assert "incremental" not in root.run(["pullback-client", "check"], check=False).stdout
    root.run("sleep 2.1; echo 'day two' >> /srv/app/data/a.txt")
    started = root.run(["systemctl", "start", "pullback-client.service"], check=False)
    log = root.run(["journalctl", "-u", "pullback-client.service", "--no-pager"]).stdout
    assert started.returncode == 0, log
    assert "full archive: no server has said yet that it applies deltas" in log  # day one
    assert "delta: a delta against" in log
    assert root.run("stat -c %a /var/cache/pullback").stdout.strip() == "700"
    root.write(  # the timer's pull is --if-due: the first snapshot is minutes old
        "/etc/pullback/server.yaml",
        f"min_interval: 1s\nhosts:\n  - {{name: node1, address: 127.0.0.1, port: {port}}}\n",
        0o640,
    )
    server = root.run(["systemctl", "start", "pullback-server.service"], check=False)
    server_log = root.run(["journalctl", "-u", "pullback-server.service", "--no-pager"]).stdout
    assert server.returncode == 0, server_log
    assert "a delta (" in server_log
    assert root.run("ls /var/lib/pullback/server/staging").stdout.count("node1.index.db") == 1

    # a pull killed (the stop timeout, OOM) leaves no silently stale metrics: the unit's
    # ExecStopPost= rewrites them from its journal, inside the unit's own sandbox
    metrics = "/var/lib/pullback/metrics.prom"
    root.write(
        "/etc/pullback/server.yaml",
        f"min_interval: 1s\nmetrics_file: {metrics}\n"
        f"hosts:\n  - {{name: node1, address: 127.0.0.1, port: {port}}}\n",
        0o640,
    )
    root.run(["systemctl", "kill", "-s", "STOP", "ssh.service"])  # the pull waits on it
    try:
        root.run(["systemctl", "start", "--no-block", "pullback-server.service"])
        root.run(
            'for i in $(seq 100); do grep -qs \'"node1": "connecting"\' '
            "/var/lib/pullback/server/pull-in-progress.json && exit 0; sleep 0.2; done; exit 1"
        )
        root.run(["systemctl", "kill", "-s", "KILL", "pullback-server.service"])
        root.run(  # (a oneshot is "activating" while it runs, "deactivating" in ExecStopPost)
            "for i in $(seq 150); do case $(systemctl show -p ActiveState --value "
            "pullback-server.service) in failed|inactive) exit 0;; esac; sleep 0.2; done; exit 1"
        )
    finally:
        root.run(["systemctl", "kill", "-s", "CONT", "ssh.service"])
    exposed = root.run(["cat", metrics], check=False).stdout
    log = root.run(["journalctl", "-u", "pullback-server.service", "--no-pager"]).stdout
    assert 'pullback_pull_cut_short{host="node1"} 1' in exposed, exposed + log
    assert "the pull (pid " in log and ") was killed (systemd: signal, KILL)" in log, log
    root.run(["systemctl", "reset-failed", "pullback-server.service"], check=False)
    root.run(["rm", "-f", metrics])
    root.write(  # as the steps above left it, for the tests that follow
        "/etc/pullback/server.yaml",
        f"hosts:\n  - {{name: node1, address: 127.0.0.1, port: {port}}}\n",
        0o640,
    )


def test_databases_and_special_bits_round_trip_under_systemd(root, installed):
    """docs/client.md's stock-Debian database setup followed literally (PostgreSQL by peer
    authentication with run_as, MariaDB's root by unix_socket), a set-uid file and a file
    capability, pulled by the shipped units; the drill under pullback-maintain.service
    loads both dumps into its own throwaway engines; a restore gives every bit back."""
    root.run(
        "DEBIAN_FRONTEND=noninteractive apt-get install -y -q postgresql mariadb-server "
        "libcap2-bin",
        timeout=1200,
    )
    root.run(
        "runuser -u postgres -- psql -q -c 'CREATE DATABASE shop' && "
        "runuser -u postgres -- psql -q -d shop -c "
        "'CREATE TABLE orders(id int); INSERT INTO orders SELECT generate_series(1, 42)'"
    )
    # a dump user whose password is in root's ~/.my.cnf, as backup-suite kept it: the
    # unit must give mysqldump a $HOME (a system unit has none), or it connects without
    root.run(
        "mariadb -e 'CREATE DATABASE crm; CREATE TABLE crm.c(id INT); "
        "INSERT INTO crm.c VALUES (1), (2), (3); "
        'CREATE USER crmdump@localhost IDENTIFIED BY "dump-pw-42"; '
        "GRANT SELECT, SHOW VIEW, TRIGGER, LOCK TABLES, EVENT ON crm.* TO crmdump@localhost; "
        "GRANT PROCESS ON *.* TO crmdump@localhost'"
    )
    root.write("/root/.my.cnf", "[client]\npassword=dump-pw-42\n", 0o600)
    root.write(
        "/etc/pullback/services/db/service.yaml",
        "service: {name: db}\n"
        "postgresql: {database: shop, run_as: postgres}\n"
        "mariadb: {database: crm, user: crmdump}\n",
        0o600,
    )
    root.run(
        "cp /usr/bin/true /srv/app/data/suid && chmod 4755 /srv/app/data/suid && "
        "cp /usr/bin/true /srv/app/data/capped && setcap cap_net_raw+ep /srv/app/data/capped"
    )
    checked = root.run(["pullback-client", "check"], check=False)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    # the timers' runs are due at once (--if-due), the drill too
    root.write("/etc/pullback/client.yaml", "hostname: node1\nmin_interval: 1s\n", 0o640)
    root.run("chgrp pullback /etc/pullback/client.yaml")
    config = (root.path / "etc/pullback/server.yaml").read_text()
    root.write(
        "/etc/pullback/server.yaml",
        config + "min_interval: 1s\nmaintenance: {verify_every: 1s}\n",
        0o640,
    )
    root.run("sleep 2")  # the next archive needs the next second's stamp
    client = root.run(["systemctl", "start", "pullback-client.service"], check=False)
    client_log = root.run(["journalctl", "-u", "pullback-client.service", "--no-pager"]).stdout
    assert client.returncode == 0, client_log
    stored = "[node1] stored: stored node1-"
    before = root.run(["journalctl", "-u", "pullback-server.service", "--no-pager"]).stdout
    server = root.run(["systemctl", "start", "pullback-server.service"], check=False)
    server_log = root.run(["journalctl", "-u", "pullback-server.service", "--no-pager"]).stdout
    assert server.returncode == 0, server_log
    assert server_log.count(stored) == before.count(stored) + 1, server_log
    root.run("journalctl --rotate --vacuum-time=1s >/dev/null 2>&1 || true")
    maintain = root.run(["systemctl", "start", "pullback-maintain.service"], check=False)
    maintain_log = root.run(["journalctl", "-u", "pullback-maintain.service", "--no-pager"]).stdout
    assert maintain.returncode == 0, maintain_log
    assert (
        "databases proven by loading them: db/shop (postgresql): 1 table, 42 rows; "
        "db/crm (mariadb): 1 table, 3 rows" in maintain_log
    ), maintain_log
    status = root.run(["pullback-server", "status"]).stdout
    assert "DATABASES PROVEN" in status and "never" not in status.splitlines()[1], status
    assert root.run("ls /var/tmp | grep -c pullback-proof || true").stdout.strip() == "0"

    root.run(["pullback-server", "restore", "node1", "--service", "app", "--target", "/var/tmp/r"])
    restored = "/var/tmp/r/services/app/files/srv/app/data"
    assert root.run(f"stat -c %a {restored}/suid").stdout.strip() == "4755"
    assert "cap_net_raw=ep" in root.run(f"getcap {restored}/capped").stdout
    root.run(
        "pullback-client restore --service app --from /var/tmp/r --task files "
        "--target /var/tmp/back"
    )
    back = "/var/tmp/back/srv/app/data"
    assert root.run(f"stat -c %a {back}/suid").stdout.strip() == "4755"
    assert "cap_net_raw=ep" in root.run(f"getcap {back}/capped").stdout


def test_links_between_two_paths_and_a_listed_dir_symlink_as_packaged(root, installed):
    """The packaged client, as an administrator runs it: a file linked into two listed
    paths comes back one file after a restore in place (each path's cp split it), with
    rsync -aHAXn --checksum as the oracle; a listed `dir/` that is a symlink is warned
    of by check and by the run, naming the real path."""
    root.run("DEBIAN_FRONTEND=noninteractive apt-get install -y -q rsync", timeout=1200)
    root.run(
        "mkdir -p /srv/links/a /srv/links/b /srv/disk/data && echo shared > /srv/links/a/f "
        "&& ln /srv/links/a/f /srv/links/b/g && ln -s /srv/disk/data /srv/links/data "
        "&& cp -a /srv/links /var/tmp/links-expected"
    )
    root.write(
        "/etc/pullback/services/links/service.yaml",
        "service: {name: links}\nfiles: {paths: [/srv/links/a, /srv/links/b, /srv/links/data/]}\n",
        0o600,
    )
    warned = "path /srv/links/data/ is a symlink to a directory: only the link is archived"
    checked = root.run(["pullback-client", "check"], check=False)
    assert warned in checked.stdout + checked.stderr
    root.run("sleep 1")  # (a new second: a new archive's stamp)
    made = root.run(["pullback-client", "run", "--service", "links"], check=False)
    assert made.returncode == 0 and warned in made.stderr, made.stderr[-3000:]
    archive = root.run("ls -t /var/lib/pullback/archives/*.tar.zst | head -1").stdout.strip()
    assert archive, "no archive published"
    root.run("rm /srv/links/b/g && echo 'mine now' > /srv/links/b/g")
    done = root.run(
        ["pullback-client", "restore", "--service", "links", "--from", archive], check=False
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "linked 1 name again as in the snapshot" in done.stderr
    oracle = (
        "rsync -aHAXn --checksum --delete --itemize-changes /var/tmp/links-expected/ /srv/links/"
    )
    assert root.run(oracle).stdout == ""
    kept = root.run("cat /var/lib/pullback/before-restore/files-*/srv/links/b/g").stdout
    assert kept == "mine now\n"
    # as the administrator does once done (docs/restore.md): the module's later tests
    # see the machine as before
    root.run(
        "rm -r /etc/pullback/services/links /srv/links /srv/disk /var/tmp/links-expected "
        "/var/lib/pullback/before-restore"
    )


def test_a_user_s_holes_and_links_leave_the_rest_stored_as_packaged(root, installed):
    """A user who may write below a listed path makes 2 TiB of holes and 2 GiB of hard
    links in a second; the server counts both at full size against max_unpacked_size
    and refused the host's whole archive. The packaged client leaves out what passes
    max_holes_and_links (docs/client.md), names it, and the server stores the rest."""
    eve = "/srv/app/data/eve"
    root.run(f"mkdir -p {eve} && chown nobody {eve}")
    root.run(f"runuser -u nobody -- truncate -s 2T {eve}/disk.img")
    root.run(
        "runuser -u nobody -- python3 -c \"import os; os.chdir('" + eve + "'); "
        "open('x', 'wb').write(os.urandom(2 << 20)); "
        "[os.link('x', f'l{i:04d}') for i in range(1000)]\""
    )
    root.write(
        "/etc/pullback/client.yaml",
        "hostname: node1\nmin_interval: 1s\nmax_holes_and_links: 1G\n",
        0o640,
    )
    root.run("chgrp pullback /etc/pullback/client.yaml")
    root.write(
        "/etc/pullback/server.yaml",
        "min_interval: 1s\nhosts:\n  - {name: node1, address: 127.0.0.1, port: 2222}\n",
        0o640,
    )
    try:
        root.run("sleep 1")  # (a new second: a new archive's stamp)
        client = root.run(["systemctl", "start", "pullback-client.service"], check=False)
        log = root.run(["journalctl", "-u", "pullback-client.service", "--no-pager"]).stdout
        assert client.returncode == 0, log[-3000:]
        assert f"{eve}/disk.img: its holes (2.0 TiB) would take" in log, log[-3000:]
        # the first name walked is l0000 (names in byte order); 512 further names of
        # 2 MiB fit in 1 GiB
        assert f"{eve}/l0513: a hard link to " in log and f"{eve}/x: a hard link to " in log
        assert "past max_holes_and_links (1.0 GiB): left out" in log
        server = root.run(["systemctl", "start", "pullback-server.service"], check=False)
        server_log = root.run(["journalctl", "-u", "pullback-server.service", "--no-pager"])
        assert server.returncode == 0, server_log.stdout[-3000:]
        listed = root.run(
            "RESTIC_PASSWORD_FILE=/etc/pullback/repository.pass restic -r "
            "/var/lib/pullback/repositories/node1 ls latest"
        ).stdout
        assert f"{eve}/l0000\n" in listed and f"{eve}/l0512\n" in listed
        assert "disk.img" not in listed and f"{eve}/l0513\n" not in listed
        assert f"{eve}/x\n" not in listed
        assert "/srv/app/data/a.txt\n" in listed
    finally:  # the module's later tests see the machine as before
        root.run(f"rm -r {eve}")
        root.write("/etc/pullback/client.yaml", "hostname: node1\n", 0o640)
        root.run("chgrp pullback /etc/pullback/client.yaml")
        root.write(
            "/etc/pullback/server.yaml",
            "hosts:\n  - {name: node1, address: 127.0.0.1, port: 2222}\n",
            0o640,
        )


def test_security_exposure_of_the_units(root, installed):
    for unit in (
        "pullback-client.service",
        "pullback-client-start-stopped.service",
        "pullback-server.service",
        "pullback-maintain.service",
    ):
        out = root.run(["systemd-analyze", "security", unit, "--no-pager"], check=False).stdout
        last = out.strip().splitlines()[-1]
        print(f"{unit}: {last}")
        exposure = float(last.split("exposure level for")[1].split(":")[1].split()[0])
        assert exposure < 5.0, out


SLOW_SERVICE = (
    "service: {name: slow}\ncommand: {dump: [{run: 'sleep 90; echo done', output: done.txt}]}\n"
)
"""A client service whose run takes 90 s: a backup in progress for as long as a test needs."""

PORT = "2222"
"""The client's sshd port (test_a_configured_client_and_server_run_under_systemd)."""


def _server_yaml(root, extra: str = "") -> None:
    root.write(
        "/etc/pullback/server.yaml",
        f"min_interval: 1s\n{extra}hosts:\n  - {{name: node1, address: 127.0.0.1, port: {PORT}}}\n",
        0o640,
    )


def _state(root, unit: str) -> str:
    return root.run(["systemctl", "show", "-p", "ActiveState", "--value", unit]).stdout.strip()


def _main_pid(root, unit: str) -> int:
    return int(root.run(["systemctl", "show", "-p", "MainPID", "--value", unit]).stdout)


def _start_a_pull_that_waits(root) -> int:
    """pullback-server.service pulling node1 while the client's sshd is stopped (SIGSTOP:
    the connection hangs, within a connect_timeout of 2 minutes); returns its main pid."""
    _server_yaml(root, "ssh: {connect_timeout: 2m}\n")
    root.run(["systemctl", "kill", "-s", "STOP", "ssh.service"])
    root.run(["systemctl", "start", "--no-block", "pullback-server.service"])
    root.run(
        'for i in $(seq 100); do grep -qs \'"node1": "connecting"\' '
        "/var/lib/pullback/server/pull-in-progress.json && exit 0; sleep 0.2; done; exit 1"
    )
    assert _state(root, "pullback-server.service") == "activating"
    return _main_pid(root, "pullback-server.service")


def _copy_upgrade(root, built_upgrade) -> None:
    """The packages of UPGRADE_VERSION into the root's /tmp/debs/upgrade."""
    upgrade = root.path / "tmp/debs/upgrade"
    upgrade.mkdir(parents=True, exist_ok=True)
    for deb in built_upgrade["debs"]:
        shutil.copy2(deb, upgrade / deb.name)


def test_an_upgrade_leaves_a_running_pull_to_finish(root, installed, built_upgrade):
    """docs/upgrading.md: apt upgrade stops no running service (the walkthrough shows it
    for the client's run; this is the server's pull): it finishes with the code it
    started with, and succeeds."""
    _copy_upgrade(root, built_upgrade)
    try:
        pid = _start_a_pull_that_waits(root)
        upgraded = root.run(
            "DEBIAN_FRONTEND=noninteractive apt-get install -y -q /tmp/debs/upgrade/pullback-*.deb"
        )
        assert "Stopping" not in upgraded.stdout + upgraded.stderr, upgraded.stdout
        assert root.run("dpkg-query -W -f '${Version}' pullback-server").stdout == UPGRADE_VERSION
        assert _state(root, "pullback-server.service") == "activating"
        assert _main_pid(root, "pullback-server.service") == pid  # the same run, not a new one
    finally:
        root.run(["systemctl", "kill", "-s", "CONT", "ssh.service"])
    root.run(
        "for i in $(seq 600); do [ $(systemctl show -p ActiveState --value "
        "pullback-server.service) = activating ] || exit 0; sleep 0.2; done; exit 1"
    )
    result = root.run("systemctl show -p Result -p ExecMainStatus pullback-server.service").stdout
    log = root.run(["journalctl", "-u", "pullback-server.service", "--no-pager"]).stdout
    assert "Result=success" in result and "ExecMainStatus=0" in result, result + log
    assert "Traceback" not in log, log


def _remove_while_it_runs(root, package: str, unit: str) -> dict:
    """``apt-get remove`` of ``package`` while its ``unit`` runs; checks that apt
    succeeded and that the run ended, without a traceback, before dpkg deleted a file of
    the package. Returns the unit's journal since and how long the removal waited for
    the run to end."""
    dirs = [
        "/usr/bin",  # its programs
        f"/usr/share/doc/{package}/..",
        "/lib/systemd/system",  # its units
        f"/usr/lib/python3/dist-packages/pullback/{package.removeprefix('pullback-')}/..",
    ]
    pid = _main_pid(root, unit)
    assert pid > 0
    cursor = root.run(["journalctl", "--show-cursor", "-n", "0", "--no-pager"]).stdout
    cursor = cursor.strip().split("cursor: ", 1)[1]
    started = float(root.run(["date", "+%s.%N"]).stdout)
    removed = root.run(
        f"DEBIAN_FRONTEND=noninteractive apt-get remove -y -q {package}", check=False
    )
    assert removed.returncode == 0, removed.stdout + removed.stderr
    assert f"Removing {package} " in removed.stdout
    assert root.run(["kill", "-0", str(pid)], check=False).returncode != 0  # gone
    # when systemd saw the run end ("Stopped ..."), against when dpkg deleted its files
    # (the mtimes of the directories they were in)
    entries = root.run(
        ["journalctl", "-u", unit, "--after-cursor", cursor, "-o", "json", "--no-pager"]
    ).stdout.splitlines()
    ended = [
        int(json.loads(entry)["__REALTIME_TIMESTAMP"]) / 1e6
        for entry in entries
        if str(json.loads(entry).get("MESSAGE", "")).startswith(f"Stopped {unit}")
    ]
    assert len(ended) == 1, entries
    deleted = {
        d: float(root.run(["stat", "-c", "%.9Y", d]).stdout)
        for d in (root.run(["realpath", "-m", d]).stdout.strip() for d in dirs)
    }
    assert all(started < ended[0] < mtime for mtime in deleted.values()), (ended, deleted)
    log = root.run(["journalctl", "-u", unit, "--after-cursor", cursor, "--no-pager"]).stdout
    for failure in ("ModuleNotFoundError", "Traceback"):
        assert failure not in log, log
    failed = root.run(["systemctl", "list-units", "--failed", "--plain", "--no-legend"]).stdout
    assert "pullback" not in failed, failed  # stopped by the removal, not failed
    return {"log": log, "waited": ended[0] - started}


def test_a_client_run_killed_outright_has_its_unit_started_again(root, installed):
    """The shipped unit: a run killed (SIGKILL, as systemd's stop timeout or the OOM
    killer would) while its systemd task holds a unit stopped; the unit's ExecStopPost=
    starts it again at once, from the record the run wrote before the stop."""
    root.write(
        "/etc/systemd/system/pbtest-app.service",
        "[Service]\nExecStart=/bin/sleep infinity\n",
    )
    root.run("systemctl daemon-reload && systemctl start pbtest-app.service")
    root.write(  # (stops nothing: failed with the run all the same)
        "/etc/pullback/services/plain/service.yaml",
        "service: {name: plain}\ncommand: {dump: [{run: 'echo x', output: x.txt}]}\n",
        0o600,
    )
    try:
        start_a_run_holding(root, "killed", "pbtest-app.service", 91)
        record = root.run("cat /var/lib/pullback/stopped.json").stdout
        assert '"pbtest-app.service"' in record
        root.run(["systemctl", "kill", "-s", "KILL", "pullback-client.service"])
        root.run(
            "for i in $(seq 150); do case $(systemctl show -p ActiveState --value "
            "pullback-client.service) in failed|inactive) exit 0;; esac; sleep 0.2; done; exit 1"
        )
        log = root.run(["journalctl", "-u", "pullback-client.service", "--no-pager"]).stdout
        assert _state(root, "pbtest-app.service") == "active", log
        assert "starting again killed: systemd: pbtest-app.service (stopped by a run" in log
        assert root.run("test -e /var/lib/pullback/stopped.json", check=False).returncode == 1
        assert root.run("pgrep -fx 'sleep 91'", check=False).returncode == 1
        # the killed run told no one; its ExecStopPost= did, inside the unit's sandbox
        status = json.loads(root.run("cat /var/lib/pullback/archives/.client-status.json").stdout)
        assert status["last_run_ok"] is False, status
        assert (
            "ended before its finish (killed by SIGKILL); started again what it had stopped: "
            in (status["error"])
        )
        assert status["error"].startswith("the run (pid ") and "started at" in status["error"]
        assert not status["services"]["killed"]["ok"] and not status["services"]["plain"]["ok"]
    finally:
        root.run("rm -rf /etc/pullback/services/killed /etc/pullback/services/plain")
        root.run("rm -f /etc/systemd/system/pbtest-app.service")
        root.run("systemctl stop pbtest-app.service; systemctl daemon-reload", check=False)
        root.run(["systemctl", "reset-failed", "pullback-client.service"], check=False)


def _written_in_another_boot(root) -> None:
    """The record's mark says it began in another boot than the next one (the root's
    restart cannot change the kernel's boot id: a real one would)."""
    path = root.path / "var/lib/pullback/stopped.json"
    record = json.loads(path.read_text())
    assert record["run"]["boot"], record
    record["run"]["boot"] = str(uuid.uuid4())
    path.write_text(json.dumps(record))


def test_a_power_cut_during_a_run_has_its_applications_started_at_boot(root, installed):
    """A power cut while a run holds an application stopped runs no ExecStopPost=: at the
    next boot, pullback-client-start-stopped.service starts it again from the record and
    reports the run as one the restart ended, without holding up the boot: the
    application is ordered after multi-user.target (a unit multi-user.target waited for
    could not start it before the boot's end: a deadlock until the start timeout)."""
    unit = "pullback-client-start-stopped.service"
    assert root.run(["systemctl", "is-enabled", unit]).stdout.strip() == "enabled"
    root.write(  # started by hand, not enabled: after a boot only pullback starts it
        "/etc/systemd/system/pbtest-late.service",
        "[Unit]\nAfter=multi-user.target\n[Service]\nExecStart=/bin/sleep infinity\n",
    )
    root.run("systemctl daemon-reload && systemctl start pbtest-late.service")
    try:
        start_a_run_holding(root, "cut", "pbtest-late.service", 92)
        root.power_cut(while_off=lambda: _written_in_another_boot(root))
        root.run(
            f"for i in $(seq 300); do [ $(systemctl show -p ActiveState --value {unit}) = "
            'inactive ] && [ -n "$(systemctl show -p ExecMainExitTimestamp --value '
            f'{unit})" ] && exit 0; sleep 0.2; done; exit 1'
        )
        log = root.run(["journalctl", "-u", unit, "--no-pager"]).stdout
        assert _state(root, "pbtest-late.service") == "active", log
        assert "starting again cut: systemd: pbtest-late.service (stopped by a run" in log
        assert root.run(["systemctl", "show", "-p", "Result", "--value", unit]).stdout.strip() == (
            "success"
        )
        assert root.run("test -e /var/lib/pullback/stopped.json", check=False).returncode == 1
        status = json.loads(root.run("cat /var/lib/pullback/archives/.client-status.json").stdout)
        assert status["last_run_ok"] is False, status
        assert (
            "ended before its finish (the machine restarted before it ended)" in (status["error"])
        ), status
        assert not status["services"]["cut"]["ok"]
    finally:
        root.run("rm -rf /etc/pullback/services/cut")
        root.run("rm -f /etc/systemd/system/pbtest-late.service")
        root.run("systemctl stop pbtest-late.service; systemctl daemon-reload", check=False)


def test_removal_stops_a_running_backup_and_waits_for_it(root, installed, built_upgrade):
    """apt remove stops the package's running services (SIGTERM) and waits for them to
    end before dpkg deletes their files: the client's run starts again what it stopped
    and ends, the pull's ExecStopPost= says it was cut short; nothing is left running
    the programs that are gone."""
    root.write("/etc/pullback/services/slow/service.yaml", SLOW_SERVICE, 0o600)
    root.write("/etc/pullback/client.yaml", "hostname: node1\nmin_interval: 1s\n", 0o640)
    root.run("chgrp pullback /etc/pullback/client.yaml")
    root.run(["systemctl", "start", "--no-block", "pullback-client.service"])
    root.run(
        "for i in $(seq 150); do pgrep -fx 'sleep 90' >/dev/null && exit 0; sleep 0.2; done; exit 1"
    )
    client = _remove_while_it_runs(root, "pullback-client", "pullback-client.service")
    assert "SIGTERM received; stopping after restoring what was stopped" in client["log"]
    assert "status=143" in client["log"], client["log"]
    assert root.run("pgrep -fx 'sleep 90'", check=False).returncode == 1  # its command too
    assert root.run("dpkg-query -W -f '${Status}' pullback-client").stdout.endswith("config-files")

    try:
        _start_a_pull_that_waits(root)
        server = _remove_while_it_runs(root, "pullback-server", "pullback-server.service")
    finally:
        root.run(["systemctl", "kill", "-s", "CONT", "ssh.service"])
    assert "SIGTERM received; stopping" in server["log"], server["log"]
    # ExecStopPost= ran while pullback-server was still there
    assert "the pull (pid " in server["log"], server["log"]
    assert ") was stopped by SIGTERM (systemd: exit-code, 143)" in server["log"], server["log"]
    print(
        f"\napt-get remove waited {client['waited']:.1f}s for the client's run, "
        f"{server['waited']:.1f}s for the pull"
    )

    # as the tests before left it, for the purge that follows
    root.run("rm -r /etc/pullback/services/slow")
    _copy_upgrade(root, built_upgrade)
    root.run(
        "DEBIAN_FRONTEND=noninteractive apt-get install -y -q /tmp/debs/upgrade/pullback-*.deb"
    )
    _server_yaml(root)


def test_purge_leaves_nothing_of_the_packages(root, installed):
    admin_files = {
        "/etc/pullback/repository.pass",
        "/etc/pullback/services/app/service.yaml",
        "/etc/pullback/services/db/service.yaml",
        "/etc/ssh/sshd_config.d/pullback-test.conf",
    }
    root.run(
        "DEBIAN_FRONTEND=noninteractive apt-get purge -y -q "
        "pullback-client pullback-server pullback-common"
    )
    after = set(
        root.run(
            "find / -xdev -path /proc -prune -o -path /sys -prune -o -print | sort"
        ).stdout.splitlines()
    )
    # the repositories are backups, not package files: purge keeps them
    kept = ("/var/lib/pullback", "/var/lib/pullback/repositories")
    assert root.run("ls /var/lib/pullback").stdout.split() == ["repositories"]
    ours = sorted(
        p
        for p in after - installed["before"]
        if "pullback" in p
        and not p.startswith(("/var/cache/apt", "/tmp/debs", "/srv/", f"{kept[1]}/"))
        and p not in kept
        and p not in admin_files
        and p
        not in (
            "/etc/pullback",
            "/etc/pullback/services",
            "/etc/pullback/services/app",
            "/etc/pullback/services/db",
        )
    )
    leftover = root.run("ls -la /var/lib/pullback 2>&1 || true").stdout
    assert ours == [], "left behind by purge:\n" + "\n".join(ours) + "\n" + leftover
    assert root.run("getent passwd pullback", check=False).returncode == 0  # policy: kept
