"""helper-166: a fleet running pullback 0.2.1 upgraded to this version with apt, as
docs/upgrading.md ("Upgrading to 0.3") tells an administrator, in a booted Debian 12 root.

The 0.2.1 packages are built from git (the parent of the commit that made 0.3.0), the
walkthrough of 0.2.1 is followed (one machine, the client's sshd on a port of its own),
days of backups make deltas, then the packages of this tree are installed over them with
``apt install``. One machine holds both sides; "the other side not upgraded yet" is the
0.2.1 programs unpacked beside the packages (``/opt/pb021``) and run from there: the
client's serve endpoint through its authorized_keys line, the server's pull by hand.
The tests run in order and share the root. A test named ``test_f<N>_...`` is a finding
(FINDINGS.md) and fails while its defect exists.

Run: .venv/bin/python -m pytest -q -p no:cacheprovider tests/system/test_upgrade_h166.py
(without -x: the findings' tests fail, and each leaves the root as the next test needs it).
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
from pathlib import Path

import pytest

from tests.system.conftest import dpkg_build, own_sshd_root, walkthrough_server
from tests.system.test_walkthrough import steps

PORT = 2266
"""The client's sshd (the walkthrough's port 22 may be the machine's own)."""

OLD_COMMIT = "63128c3^"
"""The last 0.2.1 source: the parent of the commit that introduced 0.3.0."""

DATA = "/srv/app/data"
PROM = "/var/lib/prometheus/node-exporter/pullback.prom"
ARCHIVES = "/var/lib/pullback/archives"
LEAN_MARK = f"{ARCHIVES}/.fetched-marks/server-applies-lean-deltas"
OLD_PY = "/opt/pb021/usr/lib/python3/dist-packages"
OLD_CLIENT = f"env PYTHONPATH={OLD_PY} /usr/bin/python3 /opt/pb021/usr/bin/pullback-client"
OLD_SERVER = f"env PYTHONPATH={OLD_PY} /usr/bin/python3 /opt/pb021/usr/bin/pullback-server"
NEW_KEY_LINE = 'restrict,command=\\"pullback-client serve\\"'
OLD_KEY_LINE = f'restrict,command=\\"{OLD_CLIENT} serve\\"'

ROOT_DIR = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def built_021(tmp_path_factory) -> list[Path]:
    """The three .debs of pullback 0.2.1, built from ``git archive`` of OLD_COMMIT."""
    known = subprocess.run(
        ["git", "rev-parse", "--verify", "--quiet", f"{OLD_COMMIT}^{{commit}}"],
        cwd=ROOT_DIR,
        capture_output=True,
    )
    if known.returncode != 0:
        pytest.skip(f"{OLD_COMMIT} is not in this checkout (a shallow clone?)")
    work = tmp_path_factory.mktemp("build-021")
    source = work / "pullback"
    source.mkdir()
    archive = subprocess.run(
        ["git", "archive", "--format=tar", OLD_COMMIT],
        cwd=ROOT_DIR,
        capture_output=True,
        check=True,
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(source)], input=archive, check=True)
    debs = [d for d in dpkg_build(source) if d.name.endswith("_0.2.1_all.deb")]
    assert len(debs) == 3, debs
    return debs


class Box:
    """The root, and a shell in it."""

    def __init__(self, root):
        self.root = root
        self.host = ""
        self.expected: dict[str, str] = {}
        """archive name -> the copy of DATA taken right after the run that made it"""

    def sh(self, line: str, check: bool = True):
        result = self.root.run(["bash", "-c", f"cd /root; {line}"], check=False, timeout=900)
        if check:
            assert result.returncode == 0, f"{line}:\n{result.stdout}\n{result.stderr}"
        return result

    def out(self, line: str) -> tuple[int, str]:
        result = self.sh(line, check=False)
        return result.returncode, result.stdout + result.stderr

    def archives(self, client: str = "pullback-client") -> list[dict]:
        """The client's archives not moved aside, each with its sidecar's ``format`` (1 full,
        2 a delta, 3 a lean delta: docs/upgrading.md)."""
        listed = json.loads(self.sh(f"{client} list --json").stdout)
        for a in listed:
            a["format"] = (a.get("sidecar") or {}).get("format")
        return [a for a in listed if not a["fetched"]]

    def run_client(self, change: str, client: str = "pullback-client", unit: bool = False) -> dict:
        """A day: ``change`` (after the 2 seconds a file cache needs to tell a change), a
        client run (by hand, or as the timer runs it), and the newest archive, whose data
        is kept to compare its snapshot with."""
        self.sh(f"sleep 2.1; {change}")
        if unit:
            code, out = self.out("systemctl start pullback-client.service")
        else:
            code, out = self.out(f"{client} run")
        assert code == 0, out
        newest = self.archives(client)[-1]
        name = newest["name"]
        if name not in self.expected:
            self.sh(f"mkdir -p /root/expect && rsync -aHAX {DATA}/ /root/expect/{name}/")
            self.expected[name] = f"/root/expect/{name}"
        return newest

    def pull(self, server: str = "pullback-server") -> str:
        code, out = self.out(f"{server} pull")
        assert code == 0, out
        return out

    def set_key(self, line: str) -> None:
        self.sh(
            f'echo "{line} $(cat /etc/pullback/id_ed25519.pub)"'
            " > /var/lib/pullback/.ssh/authorized_keys"
        )


@pytest.fixture(scope="module")
def box(root, built, built_021):
    with socket.socket() as probe:
        if probe.connect_ex(("127.0.0.1", PORT)) == 0:
            pytest.skip(f"port {PORT} is taken on this machine")
    home = root.path / "root"
    (home / "upgrade").mkdir(parents=True, exist_ok=True)
    for deb in built_021:
        shutil.copy2(deb, home / deb.name)
    for deb in built["debs"]:
        shutil.copy2(deb, home / "upgrade" / deb.name)
    own_sshd_root(root, PORT, "h166", "openssh-server rsync attr")
    b = Box(root)
    # 0.2.1's walkthrough.md, 1. Install
    b.sh("apt install -y ./pullback-common_*.deb ./pullback-client_*.deb ./pullback-server_*.deb")
    assert "0.2.1" in b.sh("pullback-client --version").stdout
    # the 0.2.1 programs, kept beside the packages for "the other side not upgraded yet"
    b.sh(
        "mkdir -p /opt/pb021 && "
        "for d in ./pullback-*_0.2.1_all.deb; do dpkg-deb -x $d /opt/pb021; done"
    )
    b.sh(
        f"mkdir -p {DATA}/sub && head -c 3000000 /dev/urandom > {DATA}/big.bin"
        f" && for i in $(seq 30); do echo file $i > {DATA}/sub/f$i.txt; done"
        f" && setfattr -n user.color -v blue {DATA}/sub/f1.txt"
    )
    # 2. what to back up
    b.sh(
        "mkdir -p /etc/pullback/services/app && cat > /etc/pullback/services/app/service.yaml"
        f" <<'EOF'\nservice: {{name: app}}\nfiles: {{paths: [{DATA}]}}\nEOF"
    )
    b.sh("pullback-client check")
    # 3. let the server in
    b.sh("install -d -o pullback -g pullback -m 0700 /var/lib/pullback/.ssh")
    b.set_key(NEW_KEY_LINE)
    b.sh(
        "chown pullback:pullback /var/lib/pullback/.ssh/authorized_keys && "
        "chmod 0600 /var/lib/pullback/.ssh/authorized_keys"
    )
    # 4. the server
    walkthrough_server(b.sh, PORT, PROM)
    b.host = b.sh("hostname -s").stdout.strip()
    return b


# -- 1. 0.2.1 on both sides: days of backups, deltas flowing ----------------------------


def test_021_days_make_deltas_a_021_server_applies(box):
    first = box.run_client("true", unit=True)
    assert first["format"] == 1, first
    box.sh("systemctl start pullback-server.service")
    for day in range(3):
        box.run_client(f"echo day {day} >> {DATA}/sub/f2.txt; echo new {day} > {DATA}/n{day}.txt")
        box.pull()
    formats = [a["format"] for a in box.archives()]
    assert formats[-1] == 2, formats


# -- 2. apt install of this version while a 0.2.1 run and a 0.2.1 pull are under way ----

HELD_UNIT = "h166-app.service"
HOLD_SECONDS = "20.166"
"""The held client run's dump (a number no other test's command uses)."""
SLOW_SERVE = "12.166"
"""The serve endpoint's wait before it answers: the 0.2.1 pull is under way meanwhile."""


def test_upgrade_while_a_021_run_and_a_021_pull_are_under_way(box):
    """docs/upgrading.md: "apt upgrade leaves a running pullback-client.service,
    pullback-server.service ... to finish with the code it started with". The admin's
    client.yaml is edited (min_interval, so that the timer's unit runs now), as 0.2.1's
    docs have admins edit it; walkthrough.md step 8's command, stdin not a terminal."""
    box.run_client(f"echo before the upgrade >> {DATA}/sub/f2.txt")
    box.sh("sed -i 's/^# min_interval: 20h.*/min_interval: 1s/' /etc/pullback/client.yaml")
    # the failure mail through a local sendmail (here: one that hands it to the journal)
    box.root.write("/usr/local/bin/h166-sendmail", "#!/bin/sh\nlogger -t h166-mail\n", 0o755)
    box.sh(
        "printf 'email:\\n  sendmail: /usr/local/bin/h166-sendmail\\n  from: pb@vm\\n"
        "  to: [admin@vm]\\n' >> /etc/pullback/client.yaml"
    )
    code, out = box.out(f"{OLD_CLIENT} check")
    assert code == 0, out
    box.sh("echo 'min_interval: 1s' >> /etc/pullback/server.yaml")
    box.root.write(
        f"/etc/systemd/system/{HELD_UNIT}",
        "[Service]\nExecStart=/bin/sleep infinity\n",
    )
    box.sh(f"systemctl daemon-reload && systemctl start {HELD_UNIT}")
    box.root.write(
        "/etc/pullback/services/hold/service.yaml",
        f"service: {{name: hold}}\nsystemd: {{units: [{HELD_UNIT}]}}\n"
        f"command: {{dump: [{{run: 'sleep {HOLD_SECONDS}; echo done', output: done.txt}}]}}\n",
        0o600,
    )
    # and a service that fails today: the run's end mails the administrator
    box.root.write(
        "/etc/pullback/services/broken/service.yaml",
        "service: {name: broken}\ncommand: {dump: [{run: 'exit 3', output: x.txt}]}\n",
        0o600,
    )
    box.set_key(f'restrict,command=\\"sleep {SLOW_SERVE}; pullback-client serve\\"')
    box.sh("journalctl --rotate >/dev/null 2>&1; true")
    box.since = box.sh("date '+%Y-%m-%d %H:%M:%S'").stdout.strip()
    box.sh("systemctl start --no-block pullback-server.service pullback-client.service")
    for seconds in (SLOW_SERVE, HOLD_SECONDS):
        box.sh(
            f"for i in $(seq 300); do pgrep -fx 'sleep {seconds}' >/dev/null && exit 0; "
            "sleep 0.2; done; exit 1"
        )
    assert box.sh(f"systemctl is-active {HELD_UNIT}", check=False).stdout.strip() == "inactive"
    # walkthrough.md, "Upgrade": its command as the page writes it, without a terminal
    install = next(line for line in steps()["upgrade"].splitlines() if "apt install" in line)
    box.upgrade = box.out(f"{install} </dev/null")
    # the prompt's answer (N: keep yours, its default), had it been asked on a terminal
    box.sh("dpkg --force-confold --configure -a </dev/null")
    assert "0.3" in box.sh("pullback-server --version").stdout
    # (a oneshot service is "activating" while it runs)
    box.sh(
        "for i in $(seq 600); do systemctl show -p ActiveState --value pullback-server.service"
        " pullback-client.service | grep -qx -e active -e activating -e deactivating"
        " || exit 0; sleep 0.3; done; exit 1"
    )
    box.results = {
        unit: box.sh(f"systemctl show -p Result --value {unit}").stdout.strip()
        for unit in ("pullback-client.service", "pullback-server.service")
    }
    box.held_after = box.sh(f"systemctl is-active {HELD_UNIT}", check=False).stdout.strip()
    box.server_log = box.sh(
        f"journalctl -u pullback-server.service --since '{box.since}' --no-pager"
    ).stdout
    box.status_text = box.out("pullback-server status")[1]
    # what the held run archived is the data of the day before
    newest = box.archives()[-1]["name"]
    box.sh(f"rsync -aHAX {DATA}/ /root/expect/{newest}/")
    box.expected[newest] = f"/root/expect/{newest}"
    # the rest of the module: no held service, the 0.2.1 client's serve endpoint (its
    # machine not upgraded yet), and nothing failed left over
    box.mail = box.sh(f"journalctl -t h166-mail --since '{box.since}' --no-pager").stdout
    box.client_log = box.sh(
        f"journalctl -u pullback-client.service --since '{box.since}' --no-pager"
    ).stdout
    box.sh("rm -rf /etc/pullback/services/hold /etc/pullback/services/broken")
    box.set_key(OLD_KEY_LINE)
    box.sh("systemctl reset-failed")


def test_f4_walkthrough_upgrade_command_completes_over_an_edited_client_yaml(box):
    """0.3 changed the shipped /etc/pullback/client.yaml by one comment line, so every
    administrator who edited it (hostname:, min_interval:, cache_dir: ...) meets dpkg's
    conffile prompt; walkthrough.md step 8's `apt install -y` stops there without a
    terminal (unattended-upgrades, Ansible's apt module), pullback-client left
    half-configured."""
    code, out = box.upgrade
    assert code == 0, out[-1500:]


def test_an_upgrade_leaves_a_held_021_client_run_to_finish(box):
    assert f"starting {HELD_UNIT} again" in box.client_log, box.client_log[-3000:]
    assert box.held_after == "active"


def test_f1_a_021_client_run_failing_across_the_upgrade_mails_its_failure(box):
    """The 0.2.1 run renders the failure mail's template of 0.3 as it ends (it reads it
    then; the template gained ``more``, which 0.2.1 does not give: StrictUndefined), so
    the mail of a run that failed during the upgrade never goes out."""
    print(box.client_log)  # (shown when it fails)
    before = box.client_log.split("Traceback")[0][-2500:]
    assert "broken" in box.client_log, box.client_log[-3000:]
    assert "Traceback" not in box.client_log, (before, box.client_log[-600:])
    assert "broken" in box.mail, (box.mail, box.client_log[-3000:])


def test_f2_an_upgrade_leaves_a_021_pull_to_finish(box):
    """The 0.2.1 pull under way loads the status page's template of 0.3 as it ends,
    fails on it (traceback in the journal), and the unit is failed."""
    assert "stored" in box.server_log, box.server_log[-3000:]
    print(box.server_log)  # (shown when it fails)
    before = box.server_log.split("Traceback")[0][-1500:]
    assert "Traceback" not in box.server_log, (before, box.server_log[-600:])
    assert box.results["pullback-server.service"] == "success", box.server_log[-3000:]
    assert "not written by the last run" not in box.status_text, box.status_text


# -- 3. server upgraded, client still 0.2.1 ----------------------------------------------


def test_a_021_client_is_pulled_by_the_upgraded_server_with_format_2(box):
    made = box.run_client(f"echo old client >> {DATA}/sub/f3.txt", client=OLD_CLIENT)
    assert made["format"] == 2, made
    out = box.pull()
    assert "stored" in out, out
    assert box.sh(f"test -e {LEAN_MARK}", check=False).returncode == 1
    host = json.loads(box.sh("pullback-server status --json").stdout)["hosts"][box.host]
    assert host.get("client_protocol") == 4, host


def test_a_021_client_s_short_tail_hole_is_stored_by_the_upgraded_server(box):
    """upgrading.md: "A 0.3 server unpacks them right, whichever client made the archive"."""
    box.run_client(
        f"head -c 4096 /dev/urandom > {DATA}/tail.bin && truncate -s +100 {DATA}/tail.bin",
        client=OLD_CLIENT,
    )
    out = box.pull()
    assert "stored" in out, out


# -- 4. the client upgraded too ----------------------------------------------------------


def test_the_upgraded_client_s_first_run_is_full_then_lean_deltas(box):
    box.set_key(NEW_KEY_LINE)
    # (the file a 0.2 server cannot unpack goes: the 0.2 server pulls again below)
    first = box.run_client(f"echo new client >> {DATA}/sub/f4.txt; rm {DATA}/tail.bin", unit=True)
    assert first["format"] == 1, first
    log = box.sh("journalctl -u pullback-client.service -n 30 --no-pager").stdout
    assert "the file cache was made by another version" in log, log
    assert box.sh(f"test -e {LEAN_MARK}", check=False).returncode == 1
    box.pull()
    assert box.sh(f"test -e {LEAN_MARK}", check=False).returncode == 0
    lean = box.run_client(f"echo lean >> {DATA}/sub/f5.txt; rm {DATA}/sub/f6.txt")
    assert lean["format"] == 3, lean
    out = box.pull()
    assert "a delta" in out, out
    code, out = box.out("pullback-client check")
    assert code == 0 and "/etc/pullback/client.yaml: ok" in out, out
    code, out = box.out("pullback-server check")
    assert code == 0, out
    host = json.loads(box.sh("pullback-server status --json").stdout)["hosts"][box.host]
    assert host.get("client_protocol") == 5, host
    prom = box.sh(f"cat {PROM}").stdout
    assert f'pullback_last_result{{result="stored",host="{box.host}"}} 1' in prom, prom
    assert f'pullback_last_archive_delta{{host="{box.host}"}} 1' in prom, prom
    page = box.sh("cat /var/www/html/pullback/index.html").stdout
    assert box.host in page


# -- 5. going back to 0.2 on the server --------------------------------------------------


def test_a_021_server_passes_a_lean_delta_over_with_the_documented_warning(box):
    lean = box.run_client(f"echo passed over >> {DATA}/sub/f7.txt")
    assert lean["format"] == 3, lean
    code, out = box.out(f"{OLD_SERVER} pull")
    assert code == 0, out
    assert "sidecar format 3 is not one this pullback reads" in out, out


def test_f3_going_back_to_021_after_removing_the_mark_pulls_the_next_delta(box):
    """upgrading.md "Going back to 0.2 on the server: remove
    .fetched-marks/server-applies-lean-deltas on its clients". The next delta was format
    2, but made against the lean delta the 0.2 server passed over, and the pull failed
    ("its base ... is not on the client"). Now the client's chain, which holds lean
    deltas, ends in a full archive, as the page says; the deltas after it are format 2,
    and the 0.2 server stores both."""
    box.sh(f"rm {LEAN_MARK}")
    made = box.run_client(f"echo format two >> {DATA}/sub/f8.txt")
    assert made["format"] == 1, made
    code, out = box.out(f"{OLD_SERVER} pull")
    assert code == 0 and "stored" in out, out
    then = box.run_client(f"echo format two again >> {DATA}/sub/f9.txt")
    assert then["format"] == 2, then
    code, out = box.out(f"{OLD_SERVER} pull")
    assert code == 0 and "stored" in out, out


# -- 6. every snapshot, before the upgrade and after, byte for byte ----------------------


def test_every_snapshot_restores_byte_exactly(box):
    snapshots = json.loads(box.sh(f"pullback-server snapshots {box.host} --json").stdout)
    checked, differences = [], {}
    for snap in snapshots:
        name = f"{box.host}-{snap['stamp']}.tar.zst"
        if name not in box.expected:
            continue
        box.sh(
            "rm -rf /var/tmp/h166-r /var/tmp/pullback-restore /var/tmp/h166-c && "
            f"pullback-server restore {box.host} --snapshot {snap['id']} --service app"
            " --target /var/tmp/h166-r >/dev/null && "
            "rsync -aHAXS --numeric-ids --delete --exclude='/.pullback-replaced-*' "
            "/var/tmp/h166-r/ /var/tmp/pullback-restore/ && "
            "pullback-client restore --service app --from /var/tmp/pullback-restore "
            "--task files --target /var/tmp/h166-c >/dev/null"
        )
        diff = box.sh(
            f"rsync -aHAXn --numeric-ids --checksum --delete -i {box.expected[name]}/ "
            f"/var/tmp/h166-c{DATA}/"
        ).stdout
        checked.append(name)
        if diff:
            differences[name] = diff
    box.sh("rm -rf /var/tmp/h166-r /var/tmp/pullback-restore /var/tmp/h166-c")
    assert len(checked) >= 8, (checked, sorted(box.expected))
    assert not differences, differences


# -- 7. what 0.3 refuses that 0.2.1 took ---------------------------------------------------


def test_a_cache_dir_in_the_archive_dir_is_refused_naming_the_line(box):
    box.sh("cp /etc/pullback/client.yaml /root/client.yaml.kept")
    box.sh(
        "printf 'incremental:\\n  cache_dir: /var/lib/pullback/archives/cache\\n'"
        " >> /etc/pullback/client.yaml"
    )
    line = box.sh("grep -n '^  cache_dir:' /etc/pullback/client.yaml | cut -d: -f1").stdout.strip()
    try:
        code, out = box.out(f"{OLD_CLIENT} check")
        assert code == 0, out  # 0.2.1 took it
        for command in ("pullback-client run", "pullback-client check"):
            code, out = box.out(command)
            assert code == 2, (command, out)
            assert f"/etc/pullback/client.yaml:{line}: incremental.cache_dir" in out, out
            assert "/var/cache/pullback" in out, out
    finally:
        box.sh("cp /root/client.yaml.kept /etc/pullback/client.yaml")


def test_insecure_tls_in_backup_options_is_refused_naming_file_and_line(box):
    box.sh("cp /etc/pullback/server.yaml /root/server.yaml.kept")
    box.sh("printf 'backend:\\n  backup_options: [--insecure-tls]\\n' >> /etc/pullback/server.yaml")
    line = box.sh("grep -n 'backup_options' /etc/pullback/server.yaml | cut -d: -f1").stdout.strip()
    try:
        code, out = box.out(f"{OLD_SERVER} check")
        assert code == 0, out  # 0.2.1 took it
        for command in ("pullback-server pull", "pullback-server check"):
            code, out = box.out(command)
            assert code == 2, (command, out)
            assert f"/etc/pullback/server.yaml:{line}:" in out, out
            assert "--insecure-tls" in out, out
    finally:
        box.sh("cp /root/server.yaml.kept /etc/pullback/server.yaml")
