"""Outside review h129: server-side commands over data a client once sent, after it was
stored (restore, export-recovery, release, the drill, the fleet view, the backup-suite
import). Each test is one of the five defects it found (R1 ... R5), all mended
(helper-130), each asserting the mended behaviour."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pullback.common.archive.manifest import MANIFEST_NAME
from tests.helpers.archives import Entry, build_tar, publish

pytestmark = pytest.mark.integration


def entries_below(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


# -- R1 ----------------------------------------------------------------------------------


def test_a_failed_forced_restore_of_a_service_leaves_nothing_it_wrote(fleet, tmp_path):
    host = fleet.add_host("web1")
    other = host.data.parent / "dbdata"
    other.mkdir()
    (other / "d.txt").write_text("db\n")
    host.client.add_service("db", f"service: {{name: db}}\nfiles: {{paths: [{other}]}}\n")
    host.make_archive({"notes.txt": b"notes\n" * 1000})
    pulled = fleet.server("pull")
    assert pulled.returncode == 0, pulled.stderr
    target = tmp_path / "t"
    first = fleet.server("restore", "web1", "--service", "db", "--target", str(target))
    assert first.returncode == 0, first.stderr
    before = entries_below(target)
    assert "services/db" in before and "services/app" not in before
    # the service restored whole, then the restore fails (nothing at the path): it
    # says so and, as for a SIGTERM, "what the restore wrote goes"
    failed = fleet.server(
        "restore",
        "web1",
        "--service",
        "app",
        "--path",
        "services/app/nosuch",
        "--target",
        str(target),
        "--force",
    )
    assert failed.returncode == 2, failed.stdout + failed.stderr
    assert "has nothing at" in failed.stderr
    left = sorted(entries_below(target) - before)
    assert not left, f"the failed restore left {len(left)} entries in the target: {left[:3]}"


# -- R2 ----------------------------------------------------------------------------------


def test_a_restore_waiting_for_a_borg_lock_says_so(borg_fleet, tmp_path):
    fleet = borg_fleet
    host = fleet.add_host("web1")
    host.make_archive()
    assert fleet.server("pull").returncode == 0
    fleet.write_config(maintenance={"repository_lock_wait": "6s"})
    env = fleet.repo_env("web1")
    holder = subprocess.Popen(["borg", "with-lock", env["BORG_REPO"], "sleep", "60"], env=env)
    try:
        deadline = time.time() + 20
        while time.time() < deadline and not list((fleet.repos / "web1").glob("lock.*")):
            time.sleep(0.1)
        result = fleet.server("restore", "web1", "--target", str(tmp_path / "t"), timeout=120)
    finally:
        holder.kill()
        holder.wait()
    assert result.returncode == 1, result.stdout + result.stderr
    lines = result.stderr.splitlines()
    assert "locked by a live process" in lines[-1], result.stderr
    # restic's path logs "the repository is locked by a live process; waiting" at once
    assert any("lock" in line and "waiting" in line for line in lines[:-1]), result.stderr


# -- R3 ----------------------------------------------------------------------------------

PEAK = """\
import runpy, sys, tracemalloc
tracemalloc.start()
sys.argv = ["pullback-server", *sys.argv[1:]]
try:
    runpy.run_module("pullback.server.cli", run_name="__main__")
except SystemExit as exc:
    code = exc.code
finally:
    print("PEAK", tracemalloc.get_traced_memory()[1], file=sys.stderr)
sys.exit(code)
"""


def test_restore_of_one_path_does_not_hold_the_whole_manifest(fleet, tmp_path):
    fleet.add_host("web1")
    deep = "services/x/" + "/".join(["d" * 250] * 11)  # long names, every limit kept
    entries = [Entry("services/x/one.txt", data=b"the one\n")]
    entries += [Entry(f"{deep}/{i:06d}" + "f" * 200) for i in range(15000)]
    archives = fleet.hosts["web1"].client.archives
    publish(archives, "web1", build_tar(entries))
    pulled = fleet.server("pull", timeout=120)
    assert pulled.returncode == 0, pulled.stderr
    target = tmp_path / "t"
    argv = [
        sys.executable,
        "-c",
        PEAK,
        "--config",
        str(fleet.config),
        "restore",
        "web1",
        "--path",
        "services/x/one.txt",
        "--target",
        str(target),
    ]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "grep -aFx" in result.stdout  # the proof line of that one file
    manifest = (target / MANIFEST_NAME).stat().st_size
    assert manifest > 40 << 20
    peak = int(re.search(r"PEAK (\d+)", result.stderr).group(1))
    assert peak < manifest, (
        f"restore --path of one file peaked at {peak >> 20} MiB of Python memory for a "
        f"{manifest >> 20} MiB manifest"
    )


# -- R4 ----------------------------------------------------------------------------------

OLD_SERVER = """\
global: {admin_email: ops@example.org}
restic:
  repository_root: "rest:https://boss:S3cretPw99@store.example/restic"
  password_file: /etc/backup/restic.pass
hosts:
  - hostname: web1.example.org
    ssh_user: backup
    ssh_key_file: /root/.ssh/k
    remote_tar_dir: /var/tmp/b
"""


def test_import_backup_suite_never_prints_a_repository_password(tmp_path):
    old = tmp_path / "old"
    old.mkdir()
    (old / "server_config.yml").write_text(OLD_SERVER)
    argv = [
        sys.executable,
        "-m",
        "pullback.server.cli",
        "--config",
        str(tmp_path / "s.yaml"),
        "import-backup-suite",
        "--from",
        str(old),
    ]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    said = result.stdout + result.stderr
    assert "hosts[].repository" in said or "repository_root" in said, said
    leaked = [line for line in said.splitlines() if "S3cretPw99" in line]
    assert not leaked, leaked


# -- R5 ----------------------------------------------------------------------------------


def test_a_short_host_name_is_answered_with_the_host_meant(tmp_path):
    import yaml

    (tmp_path / "pw").write_text("x\n")
    (tmp_path / "pw").chmod(0o600)
    config = {
        "state_dir": str(tmp_path / "state"),
        "lock_dir": str(tmp_path / "run"),
        "backend": {
            "type": "restic",
            "repository_root": str(tmp_path / "repos"),
            "password_file": str(tmp_path / "pw"),
        },
        "ssh": {"key_file": str(tmp_path / "key"), "known_hosts": str(tmp_path / "kh")},
        "hosts": [
            {"name": f"web{i}.example.org", "address": "127.0.0.1", "port": 2222}
            for i in range(5000)
        ],
    }
    path = tmp_path / "server.yaml"
    path.write_text(yaml.safe_dump(config))
    path.chmod(0o600)
    argv = [
        sys.executable,
        "-m",
        "pullback.server.cli",
        "--config",
        str(path),
        "restore",
        "web4999",
        "--target",
        str(tmp_path / "t"),
    ]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "no host named 'web4999'" in result.stderr
    assert "web4999.example.org" in result.stderr, result.stderr[-300:]
