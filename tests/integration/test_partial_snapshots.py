"""A snapshot whose archive had a failed service says so, and restores never take it
silently: real client, sshd, restic and borg."""

from __future__ import annotations

import json
import time

import pytest

from tests.helpers.fleet import Fleet


@pytest.fixture(params=["restic", "borg"])
def fleet(request, tmp_path):
    fleet = Fleet(tmp_path / "fleet", backend=request.param)
    yield fleet
    fleet.stop()


def shop(dump: str) -> str:
    return f"""\
    service: {{name: shop}}
    command:
      dump:
        - run: ["sh", "-c", "{dump}"]
          output: shop.sql
    """


def pull(fleet: Fleet) -> None:
    result = fleet.server("pull")
    assert result.returncode == 0, result.stderr


def test_a_partial_snapshot_is_marked_and_restores_avoid_it(fleet, tmp_path):
    host = fleet.add_host("web1")
    host.client.add_service("shop", shop("echo good rows"))
    host.client.cli("run")
    pull(fleet)
    time.sleep(1.1)  # the next archive needs the next second's stamp
    host.client.add_service("shop", shop("echo half; exit 3"))
    run = host.client.cli("run")
    assert run.returncode == 1  # a service failed; the archive still holds the others
    pull(fleet)

    listed = json.loads(fleet.server("snapshots", "web1", "--json").stdout)
    assert [s["status"] for s in listed] == ["ok", "partial"]
    assert listed[1]["failed_services"] == ["shop"]
    table = fleet.server("snapshots", "web1").stdout
    assert "partial: shop failed" in table.splitlines()[-1]
    good, partial = listed[0]["id"], listed[1]["id"]

    # latest, for the service that failed: the newest snapshot in which it succeeded
    restored = fleet.server(
        "restore", "web1", "--service", "shop", "--target", str(tmp_path / "latest")
    )
    assert restored.returncode == 0, restored.stderr
    assert restored.stdout.startswith(
        f"note: shop failed on the client in the newer snapshot(s) {partial}; "
        f"restoring {good}, the newest in which it succeeded"
    )
    assert (tmp_path / "latest/services/shop/command/shop.sql").read_text() == "good rows\n"
    assert json.loads((tmp_path / "latest/SIDECAR.json").read_text())["status"] == "ok"

    # the partial one, asked for by name: it holds nothing of the service: exit 1
    named = fleet.server(
        "restore",
        "web1",
        "--service",
        "shop",
        "--snapshot",
        partial,
        "--target",
        str(tmp_path / "partial"),
    )
    assert named.returncode == 1
    assert f"shop FAILED on the client in snapshot {partial}" in named.stderr
    assert f"snapshot {partial} of web1 holds no service 'shop' (it holds: app)" in named.stderr
    assert list((tmp_path / "partial").iterdir()) == []  # nothing left to trip a retry


def test_the_client_restore_says_a_task_failed_in_its_snapshot(fleet, tmp_path):
    host = fleet.add_host("web1")
    host.client.add_service(
        "shop",
        f"""\
        service: {{name: shop}}
        files: {{paths: [{host.data}]}}
        command:
          dump:
            - run: ["sh", "-c", "exit 3"]
              output: shop.sql
        """,
    )
    assert host.client.cli("run").returncode == 1
    pull(fleet)
    target = tmp_path / "snap"
    partial = json.loads(fleet.server("snapshots", "web1", "--json").stdout)[-1]["id"]
    restored = fleet.server(
        "restore", "web1", "--service", "shop", "--snapshot", partial, "--target", str(target)
    )
    assert restored.returncode == 0, restored.stderr  # its files are there
    result = host.client.cli(
        "restore", "--service", "shop", "--from", str(target), "--target", str(tmp_path / "t")
    )
    assert result.returncode == 1
    assert "command: nothing to restore: this task failed in the snapshot" in result.stderr
    assert (tmp_path / "t" / str(host.data).lstrip("/") / "hello.txt").exists()
