"""A store that answers and then stalls holds a copy no longer than ``host_timeout`` and a
repository's maintenance no longer than ``maintenance.timeout``; the other hosts go on
(helper-125's outside attack: restic waited its own 4 h / 24 h per step, and with
``parallel: 1`` every other host waited behind it). Real ``rclone serve restic`` stores
behind a real HTTP proxy that stops answering chosen requests."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time

import pytest

from tests.helpers.files import secret_file
from tests.helpers.fleet import Fleet
from tests.helpers.rest_store import RestEndpoint, rclone_missing
from tests.helpers.stalling_proxy import StallingProxy

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(rclone_missing() is not None, reason=str(rclone_missing())),
]

COP_SECRET = "CopSecret42xq"
BOSS_SECRET = "BossSecret31zk"


def run_bounded(fleet: Fleet, *args: str, limit: float) -> tuple[int | None, str, float]:
    """``pullback-server ARGS`` in a session of its own, killed past ``limit`` seconds.
    Returns (exit code, or None when killed; stdout and stderr; seconds taken)."""
    argv = [sys.executable, "-m", "pullback.server.cli", "--config", str(fleet.config), *args]
    started = time.monotonic()
    proc = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )
    try:
        out, _ = proc.communicate(timeout=limit)
        return proc.returncode, out, time.monotonic() - started
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        return None, out, time.monotonic() - started


def ok(fleet: Fleet, *args: str) -> None:
    result = fleet.server(*args)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.fixture
def store(tmp_path):
    """A full REST endpoint and a proxy in front of it."""
    (tmp_path / "store").mkdir()
    endpoint = RestEndpoint(tmp_path / "store", False, "boss", BOSS_SECRET).start()
    proxy = StallingProxy(endpoint.port)
    yield proxy
    proxy.close()
    endpoint.stop()


def two_hosts_through(fleet: Fleet, proxy: StallingProxy, tmp_path, key: str) -> None:
    """web1 and web2, whose ``key`` (repository_file or copy_repository_file) is a
    repository of theirs behind ``proxy``."""
    for name in ("web1", "web2"):
        fleet.add_host(name)
        url = proxy.url(f"{key[:4]}-{name}", "boss", BOSS_SECRET)
        fleet.host_extra[name] = {key: str(secret_file(tmp_path / f"{name}.{key}", url))}


def test_a_copy_store_that_stalls_mid_upload_ends_at_host_timeout(tmp_path, fleet, store):
    two_hosts_through(fleet, store, tmp_path, "copy_repository_file")
    fleet.write_config(
        copy={"repository_root": str(tmp_path / "unused")}, host_timeout="10s", parallel=1
    )
    for day in range(2):
        for host in fleet.hosts.values():
            host.make_archive({f"d{day}.txt": os.urandom(4000)})
        ok(fleet, "pull")
        if day == 0:
            ok(fleet, "copy")
    store.stall = r"^POST /copy-web1/data/"  # the store's disk hangs on web1's uploads

    code, out, took = run_bounded(fleet, "copy", limit=150)

    assert store.stalled, "the proxy held nothing: the test did not stall the copy"
    assert code == 1, f"copy still running after {took:.0f} s (host_timeout 10s): {out}"
    assert "web1: failed: the copy was stopped at host_timeout (10s)" in out, out
    assert "web2: ok: copied 1" in out, out
    assert COP_SECRET not in out and BOSS_SECRET not in out


def test_maintenance_of_a_stalled_store_ends_at_its_timeout(tmp_path, fleet, store):
    two_hosts_through(fleet, store, tmp_path, "repository_file")
    fleet.write_config(
        retention={"keep_last": 1}, maintenance={"timeout": "40s"}, parallel=1, host_timeout="1h"
    )
    for day in range(2):
        for host in fleet.hosts.values():
            host.make_archive({"a.txt": f"{day}".encode() * 3000})
        ok(fleet, "pull")
    store.stall = r"^GET /repo-web1/data/"  # the store hangs reading web1's packs

    code, out, took = run_bounded(fleet, "maintain", limit=240)

    assert store.stalled, "the proxy held nothing: the test did not stall maintenance"
    assert code == 1, f"maintain still running after {took:.0f} s (timeout 40s): {out}"
    web1 = next(line for line in out.splitlines() if "web1" in line and "stopped at" in line)
    assert "the maintenance was stopped at maintenance.timeout (40s)" in web1, out
    assert re.search(r"ok +web2: ok", out), out
    assert took < 200, took
