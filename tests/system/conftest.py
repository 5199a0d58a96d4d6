"""The system tier's machinery: the packages built once per session (this version and a
newer one, for upgrades), and a booted Debian 12 root per test module."""

from __future__ import annotations

import fcntl
import glob
import os
import shutil
import socket
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.helpers.debroot import CACHE, CLEAN_ENV, BootedRoot, Unavailable, fresh_copy

ROOT_DIR = Path(__file__).resolve().parents[2]
APT_CACHE = CACHE / "apt-archives"
UPGRADE_VERSION = "99.0.0"
"""The version of the packages an upgrade installs (built from the same tree)."""

HERE = Path(__file__).parent


def _unavailable() -> str | None:
    """Why the system tier cannot run here, or None."""
    if os.geteuid() != 0:
        return "the system tier needs root (debootstrap, namespaces, systemd)"
    for tool in ("dpkg-buildpackage", "lintian", "debootstrap", "unshare", "nsenter"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (scripts/install-deps installs it)"
    return None


def pytest_collection_modifyitems(config, items):
    reason = _unavailable()
    if reason is None:
        return
    for item in items:
        if Path(str(item.fspath)).is_relative_to(HERE):
            item.add_marker(pytest.mark.skip(reason=reason))


def _copy_tracked(source: Path) -> None:
    files = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT_DIR,
        capture_output=True,
        check=True,
    ).stdout.split(b"\0")
    for name in filter(None, files):
        path = ROOT_DIR / os.fsdecode(name)
        if path.is_file():
            target = source / os.fsdecode(name)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, target)


def build(work: Path, version: str | None = None) -> dict:
    """The three .debs of a clean copy of the tracked files, as ``version`` (a changelog
    entry on top) when given; returns their paths and the .changes file."""
    source = work / "pullback"
    _copy_tracked(source)
    if version is not None:
        changelog = source / "debian/changelog"
        entry = (
            f"pullback ({version}) unstable; urgency=medium\n\n"
            "  * A newer build, for the upgrade tests.\n\n"
            " -- pullback developers <pullback@example.org>  Mon, 30 Nov 2026 05:00:00 +0000\n\n"
        )
        changelog.write_text(entry + changelog.read_text())
    debs = dpkg_build(source)
    assert [d.name.split("_")[0] for d in debs] == [
        "pullback-client",
        "pullback-common",
        "pullback-server",
    ]
    return {"debs": debs, "changes": next(work.glob("*.changes"))}


def dpkg_build(source: Path) -> list[Path]:
    """``dpkg-buildpackage -b`` of the tree ``source``, in a clean environment; returns
    the .debs it wrote beside it, sorted."""
    result = subprocess.run(
        ["dpkg-buildpackage", "-us", "-uc", "-b"],
        cwd=source,
        capture_output=True,
        text=True,
        env=CLEAN_ENV,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return sorted(Path(p) for p in glob.glob(str(source.parent / "*.deb")))


def own_sshd_root(root: BootedRoot, port: int, name: str, packages: str) -> None:
    """Prepare ``root`` for a newcomer's module: its sshd listens on ``port`` from its
    first start (the roots share the machine's network, whose port 22 may be taken), an
    /etc/hosts names localhost as a Debian 12 installation's does, and ``packages`` are
    installed with apt (``name``: the module's, for sshd's drop-in)."""
    root.write(f"/etc/ssh/sshd_config.d/{name}.conf", f"Port {port}\n")
    root.write("/etc/hosts", "127.0.0.1 localhost\n::1 localhost ip6-localhost\n")
    root.run(["apt-get", "update", "-q"])
    root.run(f"DEBIAN_FRONTEND=noninteractive apt-get install -y -q {packages}", timeout=1200)


def walkthrough_server(sh: Callable[[str], object], port: int, metrics_file: str) -> None:
    """walkthrough.md's server step, as a newcomer's modules run it in a booted root:
    a repository password, a server.yaml naming this machine (sshd on ``port``) with a
    metrics file and the status page, then ``trust`` and ``check``."""
    sh(
        "[ -e /etc/pullback/repository.pass ] || "
        "(umask 077; head -c 32 /dev/urandom | base64 > /etc/pullback/repository.pass)"
    )
    sh(
        "mkdir -p /var/lib/prometheus/node-exporter /var/www/html/pullback && "
        "cat > /etc/pullback/server.yaml <<EOF\nhosts:\n"
        f"  - {{name: $(hostname -s), address: localhost, port: {port}}}\n"
        f"metrics_file: {metrics_file}\nstatus_page: /var/www/html/pullback/index.html\nEOF"
    )
    sh('pullback-server trust "$(hostname -s)" --yes && pullback-server check')


@pytest.fixture(scope="session")
def built(tmp_path_factory) -> dict:
    """The packages of this tree."""
    return build(tmp_path_factory.mktemp("build"))


@pytest.fixture(scope="session")
def built_upgrade(tmp_path_factory) -> dict:
    """The same packages as a newer version (UPGRADE_VERSION)."""
    return build(tmp_path_factory.mktemp("build-upgrade"), UPGRADE_VERSION)


@pytest.fixture(scope="module")
def root(built, tmp_path_factory):
    """A fresh booted Debian 12 root for the test module (packages apt fetched before are
    kept in a cache between runs). One at a time on this machine: the roots share its
    network (their sshds listen on port 22), so a module whose root boots while another
    module's root runs (two pytest-xdist workers) waits for it."""
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / ".booted.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield from _booted_root(tmp_path_factory)


def _booted_root(tmp_path_factory):
    try:
        path = fresh_copy(tmp_path_factory.mktemp("debroot") / "root")
    except Unavailable as exc:
        pytest.skip(f"no Debian root: {exc}")
    if APT_CACHE.is_dir():
        for deb in APT_CACHE.glob("*.deb"):
            shutil.copy2(deb, path / "var/cache/apt/archives" / deb.name)
    booted = BootedRoot.boot(path)
    try:
        yield booted
    finally:
        APT_CACHE.mkdir(parents=True, exist_ok=True)
        for deb in (path / "var/cache/apt/archives").glob("*.deb"):
            if not (APT_CACHE / deb.name).exists():
                # whole or not at all: another module's root may be reading the cache
                partial = APT_CACHE / f".{deb.name}.{os.getpid()}"
                shutil.copy2(deb, partial)
                partial.rename(APT_CACHE / deb.name)
        booted.poweroff()
        subprocess.run(["umount", "-R", str(path)], capture_output=True)
        shutil.rmtree(path, ignore_errors=True)


def admin_machine(root: BootedRoot, built: dict, built_upgrade: dict, packages: str) -> None:
    """The administrator's machine before docs/walkthrough.md: ``packages`` installed
    with apt (openssh-server among them: the page's sshd listens on port 22, so this
    skips when port 22 is taken here), and the packages in root's home (the newer ones
    in ``upgrade/``)."""
    with socket.socket() as probe:
        if probe.connect_ex(("127.0.0.1", 22)) == 0:
            pytest.skip("port 22 is taken on this machine; the walkthrough's sshd listens there")
    home = root.path / "root"
    (home / "upgrade").mkdir(parents=True, exist_ok=True)
    for deb in built["debs"]:
        shutil.copy2(deb, home / deb.name)
    for deb in built_upgrade["debs"]:
        shutil.copy2(deb, home / "upgrade" / deb.name)
    root.run(["apt-get", "update", "-q"])
    root.run(f"DEBIAN_FRONTEND=noninteractive apt-get install -y -q {packages}", timeout=1200)


def start_a_run_holding(root: BootedRoot, service: str, unit: str, seconds: int) -> None:
    """Start ``pullback-client.service`` with the service ``service``, whose systemd task
    stops ``unit`` and whose dump sleeps ``seconds`` (a number no other test's command
    uses: its process is how the run is found); returns once the run holds ``unit``
    stopped (raises AssertionError when it does not within a minute)."""
    root.write(
        f"/etc/pullback/services/{service}/service.yaml",
        f"service: {{name: {service}}}\nsystemd: {{units: [{unit}]}}\n"
        f"command: {{dump: [{{run: 'sleep {seconds}; echo done', output: done.txt}}]}}\n",
        0o600,
    )
    root.write("/etc/pullback/client.yaml", "hostname: node1\nmin_interval: 1s\n", 0o640)
    root.run("chgrp pullback /etc/pullback/client.yaml")
    root.run(["systemctl", "start", "--no-block", "pullback-client.service"])
    root.run(
        f"for i in $(seq 300); do pgrep -fx 'sleep {seconds}' >/dev/null && exit 0; "
        "sleep 0.2; done; exit 1"
    )
    state = root.run(["systemctl", "show", "-p", "ActiveState", "--value", unit]).stdout
    assert state.strip() == "inactive", state
