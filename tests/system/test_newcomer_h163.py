"""helper-163, a newcomer following only the documentation of incremental (delta)
archives, in a booted Debian 12 root.

docs/walkthrough.md steps 1-5 on one machine (the client's sshd on a port of its own,
not 22, given to server.yaml as docs/server.md allows), a files service with a set-uid
file, an extended attribute and an SQLite task, then what README.md, docs/client.md
(*Incremental archives*), docs/server.md (*Delta archives*, *Status*),
docs/configuration.md and docs/restore.md promise for the delta path, each checked as a
user sees it: command output, exit codes, files on disk. The tests run in order and
share the root. A test named ``test_f<N>_...`` is a finding (FINDINGS.md) and fails
while its defect exists; the others pass where the packages hold what the pages say.

Run: .venv/bin/python -m pytest -q -p no:cacheprovider tests/system/test_newcomer_h163.py -x
"""

from __future__ import annotations

import json
import re
import shutil
import socket

import pytest

from tests.system.conftest import own_sshd_root, walkthrough_server

PORT = 2263
"""The client's sshd (the walkthrough's port 22 may be the machine's own)."""

DATA = "/srv/app/data"
PROM = "/var/lib/prometheus/node-exporter/pullback.prom"
STAGING = "/var/lib/pullback/server/staging"
ARCHIVES = "/var/lib/pullback/archives"


class Box:
    """The root after walkthrough.md steps 1-5, and a shell in it."""

    def __init__(self, root):
        self.root = root
        self.host = ""

    def sh(self, line: str, check: bool = True):
        result = self.root.run(["bash", "-c", f"cd /root; {line}"], check=False, timeout=900)
        if check:
            assert result.returncode == 0, f"{line}:\n{result.stdout}\n{result.stderr}"
        return result

    def out(self, line: str) -> tuple[int, str]:
        result = self.sh(line, check=False)
        return result.returncode, result.stdout + result.stderr

    def day(self, change: str, *run_args: str) -> str:
        """A day: ``change`` on the client (after the 2 seconds a file cache needs to tell
        a change), `pullback-client run`, and its output."""
        self.sh(f"sleep 2.1; {change}")
        code, out = self.out("pullback-client run " + " ".join(run_args))
        assert code == 0, out
        return out

    def pull(self) -> str:
        code, out = self.out("pullback-server pull")
        assert code == 0, out
        return out

    def metric(self, name: str) -> str:
        text = self.sh(f"cat {PROM}").stdout
        found = re.search(rf'^{name}{{host="{self.host}"}} (\S+)$', text, re.M)
        assert found, text
        return found.group(1)

    def status_host(self) -> dict:
        return json.loads(self.sh("pullback-server status --json").stdout)["hosts"][self.host]

    def archives(self) -> list[tuple[str, str]]:
        """(name, kind) of the client's archives, as `pullback-client list --json` says."""
        listed = json.loads(self.sh("pullback-client list --json").stdout)
        return [(a["name"], a["kind"]) for a in listed if not a["fetched"]]


@pytest.fixture(scope="module")
def box(root, built):
    with socket.socket() as probe:
        if probe.connect_ex(("127.0.0.1", PORT)) == 0:
            pytest.skip(f"port {PORT} is taken on this machine")
    home = root.path / "root"
    home.mkdir(parents=True, exist_ok=True)
    for deb in built["debs"]:
        shutil.copy2(deb, home / deb.name)
    own_sshd_root(root, PORT, "h163", "openssh-server rsync attr sqlite3")
    b = Box(root)
    # walkthrough.md 1. Install
    b.sh("apt install -y ./pullback-common_*.deb ./pullback-client_*.deb ./pullback-server_*.deb")
    # the data: files (a set-uid program, an extended attribute, a large file) and SQLite
    b.sh(
        f"mkdir -p {DATA}/sub /var/lib/notes && head -c 3000000 /dev/urandom > {DATA}/big.bin"
        f" && for i in $(seq 30); do echo file $i > {DATA}/sub/f$i.txt; done"
        f" && cp /bin/true {DATA}/suid && chmod 4755 {DATA}/suid"
        f" && setfattr -n user.color -v blue {DATA}/sub/f1.txt"
        " && sqlite3 /var/lib/notes/notes.db 'create table t(x); insert into t values (1)'"
    )
    # 2. the client: what to back up (README.md's first snapshot, with files and sqlite)
    b.sh(
        "mkdir -p /etc/pullback/services/app && cat > /etc/pullback/services/app/service.yaml"
        f" <<'EOF'\nservice: {{name: app}}\nfiles: {{paths: [{DATA}]}}\n"
        "sqlite: {paths: [/var/lib/notes/notes.db]}\nEOF"
    )
    code, out = b.out("pullback-client check")
    assert code == 0 and "note: archives are full ones for now" in out, out
    # 3. let the server in
    b.sh(
        "install -d -o pullback -g pullback -m 0700 /var/lib/pullback/.ssh && "
        'echo "restrict,command=\\"pullback-client serve\\" $(cat /etc/pullback/id_ed25519.pub)"'
        " > /var/lib/pullback/.ssh/authorized_keys && "
        "chown pullback:pullback /var/lib/pullback/.ssh/authorized_keys && "
        "chmod 0600 /var/lib/pullback/.ssh/authorized_keys"
    )
    # 4. the server: a password, the host (its port), the outputs
    walkthrough_server(b.sh, PORT, PROM)
    # 5. the first backup, as the timers run it
    b.sh("systemctl start pullback-client.service && systemctl start pullback-server.service")
    b.host = b.sh("hostname -s").stdout.strip()
    status = b.sh("pullback-server status").stdout
    assert re.search(rf"^{re.escape(b.host)}\s+ok\s+stored \(full\)", status, re.M), status
    # (the timers' min_interval would wait 20h: the days below run by hand, as step 6)
    b.sh("echo 'min_interval: 1s' > /etc/pullback/client.yaml")
    return b


# -- 1. day two is a delta, and it says so where the pages say ----------------------------


def test_day_two_is_a_delta_in_every_place_the_docs_name(box):
    checked = json.loads(box.sh("pullback-client check --json").stdout)
    assert checked["deltas"] == "on" and checked["notes"] == [], checked
    dry = box.sh("pullback-client run --dry-run").stdout.strip().splitlines()[-1]
    assert dry.startswith("archive: a delta (a delta against "), dry
    out = box.day(
        f"echo changed >> {DATA}/sub/f2.txt; "
        "sqlite3 /var/lib/notes/notes.db 'insert into t values (2)'"
    )
    assert "delta: a delta against" in out, out
    assert box.archives()[-1][1] == "delta"
    pulled = box.pull()
    assert re.search(r"stored: stored .* a delta \(\S+ \S+ fetched\)", pulled), pulled
    assert box.metric("pullback_last_archive_delta") == "1"
    assert box.metric("pullback_fell_back_to_full") == "0"
    assert int(box.metric("pullback_fetched_bytes")) < 100_000
    status = box.sh("pullback-server status").stdout
    assert re.search(rf"^{re.escape(box.host)}\s+ok\s+stored \(delta\)", status, re.M), status
    host = box.status_host()
    assert host["delta"] is True and host["fell_back"] is False and host["archives_applied"] == 1


# -- 2. a full archive on demand ----------------------------------------------------------


def test_run_full_makes_a_full_archive_and_ends_the_chain(box):
    dry = box.sh("pullback-client run --full --dry-run").stdout.strip().splitlines()[-1]
    assert dry == "archive: full (asked for with --full)", dry
    out = box.day("true", "--full")
    assert "full archive: asked for with --full" in out, out
    assert [kind for _, kind in box.archives()] == ["full"]  # the chain before it is gone
    pulled = box.pull()
    assert "(a full archive," in pulled and "a delta (" not in pulled, pulled
    assert box.metric("pullback_last_archive_delta") == "0"
    assert "stored (full)" in box.sh("pullback-server status").stdout


# -- 3. the server's staging lost, the client's file cache lost ----------------------------


@pytest.mark.parametrize("lose", ["tree", "index", "a file changed"])
def test_lost_staging_falls_back_to_the_full_archive_and_says_so(box, lose):
    box.day(f"echo {lose} >> {DATA}/sub/f3.txt")
    if lose == "tree":
        box.sh(f"rm -rf {STAGING}/{box.host}")
    elif lose == "index":
        box.sh(f"rm -f {STAGING}/{box.host}.index.db")
    else:
        box.sh(f"echo behind >> {STAGING}/{box.host}/services/app/files{DATA}/sub/f9.txt")
    pulled = box.pull()
    assert "fell back to the chain's full archive" in pulled, pulled
    assert "fell back to a full transfer: " in pulled, pulled
    assert box.metric("pullback_fell_back_to_full") == "1"
    assert "stored (delta, fell back)" in box.sh("pullback-server status").stdout
    assert any(
        w.startswith("fell back to a full transfer: ") for w in box.status_host()["warnings"]
    )
    page = box.sh("cat /var/www/html/pullback/index.html").stdout
    assert "fell back to a full transfer: " in page


def test_lost_file_cache_costs_one_full_archive_and_is_said(box):
    box.sh("rm -rf /var/cache/pullback")
    out = box.day(f"echo nocache >> {DATA}/sub/f4.txt")
    assert re.search(r"full archive: there is no file cache", out), out
    box.pull()
    out = box.day(f"echo again >> {DATA}/sub/f4.txt")
    assert "delta: a delta against" in out, out  # one full archive, then deltas again
    box.pull()


# -- 4. disk bounds ----------------------------------------------------------------------


def test_the_chain_stays_within_client_md_bound_and_ends_in_a_full(box):
    """client.md, *Disk on the client*: the archive directory keeps the newest full
    archive and the deltas since; at most (1 + full_ratio) x full plus the newest delta;
    the next run after the deltas pass full_ratio makes a full one."""
    box.day("true", "--full")
    box.pull()
    sizes = []
    reasons = []
    for _ in range(7):
        out = box.day(f"head -c 400000 /dev/urandom >> {DATA}/big.bin")
        reasons += re.findall(r"full archive: (.*)", out)
        box.pull()
        listed = json.loads(box.sh("pullback-client list --json").stdout)
        assert not any(a["fetched"] for a in listed)  # nothing moves to fetched/
        kinds = [a["kind"] for a in listed]
        assert kinds[0] == "full" and set(kinds[1:]) <= {"delta"}, kinds
        full = listed[0]["size"]
        deltas = [a["size"] for a in listed[1:]]
        sizes.append(sum(a["size"] for a in listed))
        if deltas:
            assert sum(deltas[:-1]) <= 0.5 * full
            assert sizes[-1] <= 1.5 * full + deltas[-1]
        if reasons:
            break
    assert reasons and "more than full_ratio 0.5 of it" in reasons[0], reasons
    # the server keeps one tree per host, and nothing in partial/ once a pull is done
    assert box.sh(f"ls {STAGING}").stdout.split() == [box.host, f"{box.host}.index.db"]
    assert box.sh("find /var/lib/pullback/server/partial -type f").stdout == ""


# -- 5. restore the newest day, a delta, every bit --------------------------------------


def test_newest_delta_snapshot_restores_every_bit(box):
    box.day(
        f"setfattr -n user.color -v red {DATA}/sub/f1.txt; chmod 6755 {DATA}/suid; "
        f"chown 1234:4321 {DATA}/sub/f5.txt; rm {DATA}/sub/f6.txt; "
        f"mv {DATA}/sub/f7.txt {DATA}/sub/f7-renamed.txt; ln -s sub/f8.txt {DATA}/link8; "
        f"ln {DATA}/sub/f10.txt {DATA}/hard10; touch -d 2001-01-01 {DATA}/sub/f11.txt"
    )
    assert box.archives()[-1][1] == "delta"
    assert "a delta (" in box.pull()
    # docs/restore.md, 1. Get the snapshot, then 2. Put it back (below --target, to compare)
    out = box.sh(
        f"pullback-server restore {box.host} --service app --target /var/tmp/h163-app"
    ).stdout
    assert "restored snapshot" in out, out
    box.sh(
        "cd /var/tmp/h163-app && LC_ALL=C grep -aF -- '  services/app/' MANIFEST.sha256 | "
        "LC_ALL=C sha256sum --check --strict"
    )
    box.sh(
        "rsync -aHAXS --numeric-ids --delete --exclude='/.pullback-replaced-*' "
        "/var/tmp/h163-app/ /var/tmp/pullback-restore/"
    )
    box.sh(
        "pullback-client restore --service app --from /var/tmp/pullback-restore "
        "--task files --target /var/tmp/h163-check"
    )
    diff = box.sh(f"rsync -aHAXn --checksum --delete -i {DATA}/ /var/tmp/h163-check{DATA}/").stdout
    assert diff == "", diff
    assert box.sh(f"stat -c %a /var/tmp/h163-check{DATA}/suid").stdout.strip() == "6755"
    # and from the client's own delta archive (its chain unpacked)
    newest = box.archives()[-1][0]
    box.sh(
        f"pullback-client restore --service app --from {ARCHIVES}/{newest} "
        "--task files --target /var/tmp/h163-check2"
    )
    diff = box.sh(f"rsync -aHAXn --checksum --delete -i {DATA}/ /var/tmp/h163-check2{DATA}/").stdout
    assert diff == "", diff
    box.sh("rm -rf /var/tmp/h163-app /var/tmp/pullback-restore /var/tmp/h163-check*")


# -- 6. unhappy paths --------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, expected",
    [
        ("  full_evry: 7d\n", "incremental.full_evry: unknown key (did you mean 'full_every'?)"),
        ("  full_every: 7\n", "incremental.full_every: expected a whole number"),
        ("  full_ratio: 20\n", "incremental.full_ratio: 20 is greater than the maximum of 10"),
        ("  enabled: maybe\n", "incremental.enabled: 'maybe' is not one of true, false, auto"),
        ("  cache_dir: var/cache\n", "incremental.cache_dir: expected an absolute path"),
    ],
)
def test_a_typo_in_an_incremental_key_names_file_line_key_and_exits_2(box, text, expected):
    box.sh("cp /etc/pullback/client.yaml /root/client.yaml.good")
    try:
        box.root.write("/etc/pullback/client.yaml", "min_interval: 1s\nincremental:\n" + text)
        for command in (
            "pullback-client check",
            "pullback-client run",
            "pullback-client run --full",
        ):
            code, out = box.out(command)
            assert code == 2 and f"/etc/pullback/client.yaml:3: {expected}" in out, (command, out)
    finally:
        box.sh("cp /root/client.yaml.good /etc/pullback/client.yaml")


def test_run_full_while_the_server_fetches_the_chain_is_listed_again(box):
    """server.md, *The client's own run during a pull*: a full run deletes the chain the
    server is fetching; the pull warns "... is no longer on the client: its own run
    replaced it during this pull; listed again" and stores the new full archive."""
    box.day(f"head -c 60000000 /dev/urandom > {DATA}/huge.bin", "--full")
    box.pull()
    box.day(f"echo mid >> {DATA}/sub/f12.txt")
    full = box.archives()[0][0]
    box.sh(f"rm -rf {STAGING}/{box.host}")  # the pull starts from the chain's full archive
    box.sh(
        "(pullback-server pull > /root/pull.out 2>&1; echo rc=$? >> /root/pull.out) & "
        f"for i in $(seq 6000); do p=$(pgrep -f 'send {full} 0$'); [ -n \"$p\" ] && break; "
        "sleep 0.01; done; kill -STOP $p; pullback-client run --full > /root/run.out 2>&1; "
        "kill -CONT $p; wait"
    )
    pulled = box.sh("cat /root/pull.out").stdout
    assert "rc=0" in pulled, pulled
    assert (
        "is no longer on the client: its own run replaced it during this pull; listed again"
        in pulled
    ), pulled
    newest = box.archives()[-1][0]
    assert f"stored {newest}" in pulled, pulled
    box.sh(f"rm -f {DATA}/huge.bin")
    box.day("true", "--full")
    box.pull()


# -- findings ----------------------------------------------------------------------------


def test_f5_a_file_cache_on_a_full_disk_fails_every_timer_run(box):
    """F5: client.md says a cache the run cannot write ("a full disk") never costs a day:
    a full archive, made without it, and a warning. /var/cache/pullback on a small file
    system of its own (a disk that filled): the unit's runs fail, nothing published."""
    box.sh(f"for i in $(seq 2000); do echo $i > {DATA}/sub/m$i; done")
    box.sh("mount -t tmpfs -o size=40k,mode=0700 tmpfs /var/cache/pullback")
    try:
        code, out = box.out("pullback-client check")
        assert code == 0, out
        box.sh(f"sleep 2.1; echo full disk >> {DATA}/sub/f14.txt")
        before = box.archives()[-1][0]
        started = box.sh("systemctl start pullback-client.service", check=False)
        log = box.sh("journalctl -u pullback-client.service --no-pager -n 8").stdout
        assert started.returncode == 0, log
        assert "cannot write the file cache in /var/cache/pullback" in log, log
        newest = box.archives()[-1]
        assert newest[0] != before and newest[1] == "full", (before, newest)
    finally:
        box.sh("systemctl reset-failed pullback-client.service", check=False)
        box.sh("umount /var/cache/pullback", check=False)
        box.sh(f"rm -f {DATA}/sub/m*")


def test_f1_a_cache_dir_check_accepts_stops_the_pulls_for_good(box):
    """F1: `cache_dir: /var/lib/pullback/archives` passes `pullback-client check`; the run
    turns the archive directory from 2750 root:pullback into 0700, so the pull fails
    ("Permission denied: '/var/lib/pullback/archives/.fetched-marks'"), and once the
    administrator puts cache_dir back it stays 0750 without its set-group-id bit: every
    new archive is root:root and the pull still fails, while `check` says ok."""
    box.root.write(
        "/etc/pullback/client.yaml",
        f"min_interval: 1s\nincremental: {{cache_dir: {ARCHIVES}}}\n",
    )
    try:
        code, out = box.out("pullback-client check")
        if code == 2 and "incremental.cache_dir" in out:
            return  # refused: fixed
        box.day(f"echo f1 >> {DATA}/sub/f13.txt")
        box.out("pullback-server pull")
    finally:
        box.sh("echo 'min_interval: 1s' > /etc/pullback/client.yaml")
        box.sh(f"rm -f {ARCHIVES}/files.db")
    box.day(f"echo f1 again >> {DATA}/sub/f13.txt")
    assert box.sh(f"stat -c %a {ARCHIVES}").stdout.strip() == "2750"
    code, out = box.out("pullback-server pull")
    assert code == 0 and "stored: stored" in out, out
