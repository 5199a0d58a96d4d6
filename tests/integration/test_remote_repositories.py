"""Repositories on a restic REST store (``rclone serve restic``, real, on loopback), with
split roles: pulls write through an append-only endpoint, maintenance deletes through
its own (docs/scaling.md). The cycle pull, status, verify, maintain, restore runs against
it; the pull role's credential cannot erase history; no credential is ever printed."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from tests.helpers.files import secret_file
from tests.helpers.fleet import PASSWORD
from tests.helpers.rest_store import MAINTAIN_SECRET, RestStore

pytestmark = pytest.mark.integration

PULL_SECRET = "pull-Secret-xk27"
WEB1_PASSWORD = "web1-own-Password-55"


def restic_json(url: str, password_file: Path, *args: str) -> object:
    """``restic ARGS --json`` on the repository at ``url``."""
    env = {**os.environ, "RESTIC_REPOSITORY": url, "RESTIC_PASSWORD_FILE": str(password_file)}
    out = subprocess.run(
        ["restic", *args, "--json", "--no-cache"], env=env, capture_output=True, check=True
    ).stdout
    return json.loads(out)


def shows_no_secret(*texts: str) -> None:
    for text in texts:
        for secret in (PULL_SECRET, MAINTAIN_SECRET, WEB1_PASSWORD, PASSWORD):
            assert secret not in text, f"a credential was printed: {text[:2000]}"


@pytest.fixture
def store(tmp_path):
    store = RestStore(tmp_path / "rest").start(pull_user="puller", pull_password=PULL_SECRET)
    yield store
    store.stop()


def test_the_cycle_runs_on_a_rest_store_and_the_pull_role_cannot_erase_history(
    tmp_path, store, fleet
):
    web, db = fleet.add_host("web1"), fleet.add_host("db1")
    own_password = secret_file(tmp_path / "web1.pass", WEB1_PASSWORD)
    for name in ("web1", "db1"):
        extra = {
            "repository_file": str(secret_file(tmp_path / f"{name}.pull", store.pull.url(name)))
        }
        if name == "web1":
            extra["password_file"] = str(own_password)  # one leaked password, one history
        fleet.host_extra[name] = extra
    metrics = tmp_path / "metrics.prom"
    fleet.write_config(retention={"keep_last": 1}, metrics_file=str(metrics))
    outputs: list[str] = []

    def server(*args: str, rc: int = 0) -> subprocess.CompletedProcess:
        result = fleet.server(*args)
        outputs.extend((result.stdout, result.stderr))
        assert result.returncode == rc, result.stdout + result.stderr
        return result

    # two days of pulls through the append-only endpoint
    for day in range(2):
        web.make_archive({"site/index.html": f"<h1>day {day}</h1>".encode()})
        db.make_archive({"dump.sql": b"INSERT INTO t VALUES (%d);\n" % day * 500})
        server("pull")
    pull_urls = {name: store.pull.url(name) for name in ("web1", "db1")}
    passwords = {"web1": own_password, "db1": fleet.password_file}
    for name, url in pull_urls.items():
        assert len(restic_json(url, passwords[name], "snapshots")) == 2
    # web1's repository opens with its own password, not the shared one
    with pytest.raises(subprocess.CalledProcessError):
        restic_json(pull_urls["web1"], fleet.password_file, "snapshots")

    status = json.loads(server("status", "--json").stdout)
    results = {name: h["last_result"] for name, h in status["hosts"].items()}
    assert results == {"web1": "stored", "db1": "stored"}, status
    assert 'pullback_repository_bytes{host="web1"}' in metrics.read_text()

    # the pull role cannot forget: `restic forget` through the append-only endpoint is
    # refused (restic retries for ~45 s first), reported as such, and history survives
    result = server("maintain", "--host", "db1", rc=1)
    assert "refused to delete (403 Forbidden)" in result.stderr, result.stderr
    assert "maintenance_repository" in result.stderr
    for name, url in pull_urls.items():
        assert len(restic_json(url, passwords[name], "snapshots")) == 2
    # the pull server's own maintenance with forget off: checks and drills through the
    # append-only endpoint (reading and locking are allowed there)
    fleet.write_config(maintenance={"forget": False})
    result = server("maintain", "--verify")
    assert "forget: not run: maintenance.forget is false" in result.stderr, result.stderr
    assert "match the manifest" in result.stderr and "no errors" in result.stderr
    for name, url in pull_urls.items():
        assert len(restic_json(url, passwords[name], "snapshots")) == 2
    fleet.write_config(maintenance={"forget": True})

    # maintenance through the full endpoint, with its own credential: forgets and prunes
    for name in ("web1", "db1"):
        fleet.host_extra[name]["maintenance_repository_file"] = str(
            secret_file(tmp_path / f"{name}.maintain", store.maintain.url(name))
        )
    fleet.write_config()
    result = server("maintain", "--verify")
    for name, url in pull_urls.items():
        assert len(restic_json(url, passwords[name], "snapshots")) == 1, result.stderr
    server("verify", "--host", "db1")

    # restore from the remote repository
    target = tmp_path / "restored"
    server("restore", "web1", "--target", str(target))
    check = subprocess.run(
        ["sha256sum", "--check", "--strict", "MANIFEST.sha256"], cwd=target, capture_output=True
    )
    assert check.returncode == 0, check.stdout
    (index,) = target.rglob("index.html")
    assert index.read_bytes() == b"<h1>day 1</h1>"

    # no credential anywhere pullback writes words
    written = [
        p.read_text(errors="replace")
        for p in fleet.state.rglob("*")
        if p.is_file() and p.stat().st_size < 1 << 20
    ]
    shows_no_secret(*outputs, *written, metrics.read_text())
    assert "puller:***@" in "\n".join(outputs), "the pull location is shown, masked"


def test_url_templates_place_every_host_and_split_the_roles(tmp_path, fleet):
    """``backend.repository_url`` and ``maintenance_repository_url`` with ``{host}``:
    an append-only endpoint trusted by network alone, and the full one."""
    open_store = RestStore(tmp_path / "rest-open").start(maintain_auth=False)
    try:
        web = fleet.add_host("web1")
        # a template cannot carry a password: refused, naming file, key and what is wanted
        bad = fleet.write_config(
            backend={"maintenance_repository_url": "rest:http://u:p@127.0.0.1:1/{host}/"}
        )
        result = fleet.server("check")
        assert result.returncode == 2, result.stderr
        assert str(bad) in result.stderr and "maintenance_repository_url" in result.stderr
        assert "no password" in result.stderr
        fleet.write_config(
            retention={"keep_last": 1},
            backend={
                "repository_url": open_store.pull.url("{host}"),
                "maintenance_repository_url": open_store.maintain.url("{host}"),
            },
        )
        for _ in range(2):
            web.make_archive({"a.txt": os.urandom(100)})
            result = fleet.server("pull")
            assert result.returncode == 0, result.stderr
        url = open_store.pull.url("web1")
        assert len(restic_json(url, fleet.password_file, "snapshots")) == 2
        assert (open_store.directory / "web1" / "config").is_file()
        result = fleet.server("maintain")
        assert result.returncode == 0, result.stderr
        assert len(restic_json(url, fleet.password_file, "snapshots")) == 1
    finally:
        open_store.stop()
