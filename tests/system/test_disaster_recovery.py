"""docs/disaster-recovery.md is a test: in a booted Debian 12 root, a working server makes
a second copy (a directory standing in for the off-site store) and a recovery bundle;
then the server is lost (package purged, repositories, passwords, key and state gone), and
every shell block of the page's rebuild runs as written: reinstall, unpack the bundle,
point at the copies, list and restore, the one step on the client, pulls resume."""

from __future__ import annotations

import json
import re
import shutil
import socket
import time

import pytest

from tests.system.conftest import ROOT_DIR

DOC = ROOT_DIR / "docs" / "disaster-recovery.md"
STEP = re.compile(r"<!-- step: (?P<name>[\w-]+) -->\n```sh\n(?P<code>.*?)```", re.S)
PAGE = "<h1>the shop</h1>\n"

SETUP = """
apt install -y ./pullback-common_*.deb ./pullback-client_*.deb ./pullback-server_*.deb
mkdir -p /srv/www /etc/pullback/services/www
printf '%s' "$PAGE" > /srv/www/index.html
head -c 300000 /dev/urandom > /srv/www/blob
printf 'service: {name: www}\\nfiles: {paths: [/srv/www]}\\n' \\
    > /etc/pullback/services/www/service.yaml
printf 'min_interval: 1s\\n' > /etc/pullback/client.yaml
chgrp pullback /etc/pullback/client.yaml
install -d -o pullback -g pullback -m 0700 /var/lib/pullback/.ssh
echo "restrict,command=\\"pullback-client serve\\" $(cat /etc/pullback/id_ed25519.pub)" \\
    > /var/lib/pullback/.ssh/authorized_keys
chown pullback:pullback /var/lib/pullback/.ssh/authorized_keys
chmod 0600 /var/lib/pullback/.ssh/authorized_keys
(umask 077; head -c 32 /dev/urandom | base64 > /etc/pullback/repository.pass)
printf 'hosts:\\n  - {name: %s, address: 127.0.0.1}\\n' "$(hostname -s)" > /etc/pullback/server.yaml
pullback-server trust "$(hostname -s)" --yes
systemctl start pullback-client.service pullback-server.service
"""

LOSS = """
apt purge -y pullback-server
rm -rf /var/lib/pullback/repositories /var/lib/pullback/server
rm -f /etc/pullback/repository.pass /etc/pullback/copy.pass /etc/pullback/known_hosts \\
    /etc/pullback/id_ed25519 /etc/pullback/id_ed25519.pub /etc/pullback/server.yaml
rm /srv/www/index.html
"""


def steps() -> dict[str, str]:
    text = DOC.read_text()
    found = {m["name"]: m["code"] for m in STEP.finditer(text)}
    assert text.count("```sh") == len(found), "a shell block of the page has no step mark"
    return found


def test_every_shell_block_of_the_page_is_a_step():
    assert list(steps()) == [
        "copy-config",
        "first-copy",
        "admin-key",
        "export",
        "reinstall",
        "unpack",
        "point-at-copies",
        "restore",
        "clients",
        "resume",
    ]


@pytest.fixture(scope="module")
def machine(root, built):
    with socket.socket() as probe:
        if probe.connect_ex(("127.0.0.1", 22)) == 0:
            pytest.skip("port 22 is taken on this machine; the root's sshd listens there")
    for deb in built["debs"]:
        shutil.copy2(deb, root.path / "root" / deb.name)
    root.run(["apt-get", "update", "-q"])
    root.run(
        "DEBIAN_FRONTEND=noninteractive apt-get install -y -q openssh-server age", timeout=1200
    )
    return root


def sh(root, code: str, check: bool = True):
    result = root.run(
        ["bash", "-euo", "pipefail", "-c", f"cd /root\nexport PAGE='{PAGE}'\n{code}"],
        check=False,
        timeout=1200,
    )
    if check:
        assert result.returncode == 0, f"{code}\n{result.stdout}\n{result.stderr}"
    return result


def stamps(root, host: str) -> list[str]:
    """The archive stamps of the host's snapshots, oldest first (a copy's snapshots have
    ids of their own, their stamps are their originals')."""
    listed = json.loads(sh(root, f"pullback-server snapshots {host} --json").stdout)
    return [s["stamp"] for s in listed]


def test_the_server_is_rebuilt_from_the_copy_as_the_page_says(machine):
    page = steps()
    timings: dict[str, float] = {}

    def step(name: str):
        started = time.monotonic()
        result = sh(machine, page[name])
        timings[name] = time.monotonic() - started
        return result

    sh(machine, SETUP)
    host = sh(machine, "hostname -s").stdout.strip()
    step("copy-config")
    first = step("first-copy")
    assert "COPY" in first.stdout and "drilled" in first.stdout, first.stdout
    step("admin-key")
    exported = step("export")
    assert "pullback-recovery/secrets.tar.age" in exported.stdout
    before = stamps(machine, host)
    assert before, "the working server stored at least one snapshot"

    started = time.monotonic()
    sh(machine, LOSS)
    assert not (machine.path / "var/lib/pullback/repositories").exists()
    step("reinstall")
    step("unpack")
    listed = step("point-at-copies")
    assert all(stamp in listed.stdout for stamp in before), listed.stdout
    assert stamps(machine, host) == before, "every snapshot is there, from the copy"
    step("restore")
    assert (machine.path / "srv/www/index.html").read_text() == PAGE
    # before the one step on the client the new server is refused: its key is new
    refused = sh(machine, "pullback-server pull", check=False)
    assert refused.returncode == 1, refused.stdout + refused.stderr
    step("clients")
    resumed = step("resume")
    row = next(line for line in resumed.stdout.splitlines() if line.startswith(f"{host} "))
    assert row.split()[1:3] == ["ok", "stored"], resumed.stdout
    # the client's newest archive is a delta, and staging went with the disks: the page
    # says the first pull applies the client's chain from its full archive, and says so
    said = resumed.stdout + resumed.stderr
    assert "fell back to a full transfer" in said and "staging holds no indexed tree" in said, said
    after = stamps(machine, host)
    assert after[: len(before)] == before and len(after) == len(before) + 1, (before, after)
    print(
        f"\ndisaster recovery: loss to resumed pulls {time.monotonic() - started:.1f}s; "
        + ", ".join(f"{k} {v:.1f}s" for k, v in timings.items())
    )
