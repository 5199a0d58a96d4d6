"""Shared fixtures. Tests are marked by tier from their directory (unit, integration, system)."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pullback.common import log as pullback_log
from pullback.common import secrets, validated

TESTS = Path(__file__).parent
TIERS = ("unit", "integration", "system")
TOOL_MODULES = {
    "test_adopted_hosts.py",
    "test_backup_suite_migration.py",
    "test_bench_fidelity.py",
    "test_bench_smoke.py",
    "test_copy.py",
    "test_borg_lock_words.py",
    "test_borg_split_roles.py",
    "test_database_plugins.py",
    "test_database_restore.py",
    "test_database_restore_h95.py",
    "test_drill_databases.py",
    "test_exclude_oracle.py",
    "test_export_recovery.py",
    "test_gone_repository.py",
    "test_hostile_archives.py",
    "test_maintenance.py",
    "test_maintenance_locations.py",
    "test_maintain_stopped.py",
    "test_partial_snapshots.py",
    "test_ransomware_guard.py",
    "test_remote_backends.py",
    "test_remote_repositories.py",
    "test_repository_groups.py",
    "test_restore_fidelity.py",
    "test_store_deadlines.py",
    "test_attacks_h159.py",
    "test_attacks_h160.py",
    "test_attacks_h161.py",
    "test_attacks_h162.py",
    "test_attacks_h163.py",
    "test_attacks_h164.py",
    "test_attacks_h165.py",
    "test_attacks_h167.py",
    "test_attacks_h168.py",
    "test_store_warnings.py",
}
"""Integration modules whose subject is what external tools (restic, borg, rsync, rclone's
REST server, age, the database engines) and the standard library do with pullback's files (the
copies and groups among them: restic's copy, init and deduplication; borg's append-only and
passphrase roles), not a Python library: marked ``tools`` and run once, on the current PyPI
releases (test_remote_backends also needs moto's S3 server, a test dependency the Debian pass
lacks). Among them restic on backup-suite's adopted repositories, on gone ones and at
maintenance locations (with rclone's), and helper-95's attack on the engines' database
restores (2.8 min of the Debian pass together), and rclone's REST stores that stall behind
a proxy (copy and maintenance time limits), helper-159's borg days (restores
compared by rsync and GNU tar, 3 min), helper-161's sparse files against GNU tar and
disks filled by a run, and borg's warnings. The Debian pass (Debian 12's paramiko,
PyYAML, jsonschema, pluggy, Jinja2) runs every other module but ONCE_MODULES."""
ONCE_MODULES = {
    "test_incremental_days.py",
    "test_incremental_pulls.py",
    "test_files_restore_attacks2.py",
    "test_tree_list.py",
    "test_service_restore_attacks.py",
    "test_server_attacks_s19.py",
    "test_attacks_h97.py",
    "test_attacks_h98.py",
    "test_attacks_h99.py",
    "test_attacks_h101.py",
    "test_attacks_h102.py",
    "test_attacks_h103.py",
    "test_attacks_h105.py",
    "test_attacks_h111.py",
    "test_attacks_h106.py",
    "test_attacks_h107.py",
    "test_attacks_h108.py",
    "test_attacks_h109.py",
    "test_attacks_h112.py",
    "test_attacks_h113.py",
    "test_attacks_h114.py",
    "test_attacks_h115.py",
    "test_attacks_h116.py",
    "test_attacks_h118.py",
    "test_attacks_h122.py",
    "test_attacks_h125.py",
    "test_attacks_h126.py",
    "test_attacks_h128.py",
    "test_attacks_h129.py",
    "test_attacks_h133.py",
    "test_attacks_h134.py",
    "test_cut_short_outputs.py",
    "test_deep_trees.py",
    "test_demo.py",
    "test_hostile_serve_attacks.py",
    "test_fleet_merge.py",
    "test_stopped_record.py",
    "test_client_status_entries.py",
    "test_killed_runs.py",
    "test_killed_scratch.py",
    "test_progress_display.py",
    "test_run_free_space.py",
    "test_run_timeout.py",
    "test_signals_by_hand.py",
    "test_files_restore.py",
    "test_files_restore_attacks.py",
    "test_files_restore_room.py",
    "test_restore_attacks_h94.py",
}
"""Integration modules whose subject is pullback's own delta archives (the standard
library's sqlite3 and hashlib, restic): 3.6 min of the Debian pass that meet no library
the other modules do not meet there (paramiko's requests, the full request included, run
in test_pull and test_hostile_clients); TREE.list end to end (0.5 min); and outside
attacks of pullback's own restore and reporting code (races against cp, restic and borg,
about 2.5 min; the restores of the application tasks, helper-92, 0.9 min: pluggy meets
test_app_plugins) and of its gone repositories, copies, signals and drills (helper-97
and helper-98, about 2.5 min) and of processes killed at any moment and of stops during
drills and forget (helper-99 and helper-101, about 2 min), of the record of stopped
applications and of the run under way (helper-102, -103, -105, -106 and -113, 2.2 min),
of TREE.list (helper-112, 0.8 min), of days of real system trees with times past 2242
and 2262 (helper-114, 1.6 min), of the monitoring a newcomer reads (helper-115,
0.8 min: the status page's Jinja2 also meets test_monitoring), of a third-party plugin
and hostile hooks (helper-116 and -118, 0.9 min: pluggy meets test_app_plugins), of the
docker and files tasks (helper-126, 0.3 min), of the sqlite, command and systemd tasks
(helper-128, 0.5 min), of the server's restores and import (helper-129, 0.5 min), of
the database tasks (helper-133, 1.5 min: real PostgreSQL and MariaDB servers), of
the copies (helper-125, 2 min), of a tree 1 100 directories deep (0.6 min: the
standard library's walks and removals), of the reporting surfaces (helper-134, 1.9 min) and
of pulls cut short (the unit's ExecStopPost=, 0.8 min), whose libraries the other
modules meet there; and the README's demo, which runs in .venv whichever pass runs it.
Then (CI 2026-12-07: 6.4 min of the pass's 25 worker-minutes) the modules whose subject
is processes, signals, disks and files, not a library: a serve endpoint's hostile sends
(1.1 min; paramiko's requests run in test_pull and test_hostile_clients), two servers'
status merged (1 min; the page's Jinja2 meets test_monitoring), the records of stopped
applications, runs killed, their scratch directories, time limits and signals by hand
(2 min), the client's status entries (0.5 min; its YAML meets test_client_run), the
progress display on a terminal, a run's and a restore's free space, and the files
restores and their attacks (1.8 min: cp, the standard library's walks). Marked
``once``; their unit tests run on both."""


LONGEST_FIRST = (
    "integration/test_fault_matrix.py",
    "system/test_packages.py",
    "integration/test_incremental_pulls.py",
    "system/test_walkthrough.py",
    "integration/test_maintenance.py",
    "integration/test_hostile_archives.py",
    "system/test_disaster_recovery.py",
    "integration/test_pull.py",
    "integration/test_soak.py",
    "integration/test_borg_split_roles.py",
    "system/test_disaster_recovery_h96.py",
    "integration/test_drill_databases.py",
    "integration/test_copy.py",
    "integration/test_attacks_h97.py",
    "integration/test_hostile_clients.py",
    "integration/test_database_restore.py",
    "integration/test_remote_backends.py",
    "integration/test_remote_repositories.py",
    "integration/test_incremental_days.py",
    "integration/test_monitoring.py",
)
"""The modules that take longest (minutes, CI's --durations), run first: pytest-xdist
(``--dist loadfile``) hands modules to its workers in collection order, and the
longest ones left for the end made CI's tail (one worker busy for ten minutes on the
fault matrix, the other idle). The system tier's modules are one unit of work
(BOOTED_ROOTS), which starts where its first module stands. The rest keep their order,
the many short unit modules last, filling the gaps."""


def _cheap_restic_keys() -> None:
    """Put tests/helpers/bin first on PATH: its ``restic`` runs the real one, and after
    ``restic init`` gives the new repository a cheap key derivation
    (tests/helpers/restic_kdf.py; about a third of the restic-heavy modules' time went to
    scrypt). ``PULLBACK_TEST_STRONG_KDF=1`` keeps restic's own calibrated keys. The
    booted Debian roots of the system tier run the packaged restic untouched."""
    if (
        os.environ.get("PULLBACK_TEST_STRONG_KDF") == "1"
        or "PULLBACK_TEST_REAL_RESTIC" in os.environ
    ):
        return
    real = shutil.which("restic")
    if real is None:
        return
    os.environ["PULLBACK_TEST_REAL_RESTIC"] = real
    os.environ["PULLBACK_TEST_PYTHON"] = sys.executable
    os.environ["PATH"] = f"{TESTS / 'helpers' / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}"


def pytest_configure(config):
    _cheap_restic_keys()
    # pytest-xdist 3.6+ reorders --dist loadfile's modules by their number of tests,
    # largest first, which put the one-test soak and the system tier last (CI 2026-12-03):
    # keep LONGEST_FIRST's order. Debian's 3.1 has no such option and keeps it anyway.
    if hasattr(config.option, "loadscopereorder"):
        config.option.loadscopereorder = False


def _longest_first(items: list) -> None:
    rank = {name: place for place, name in enumerate(LONGEST_FIRST)}

    def key(pair: tuple[int, object]) -> tuple[int, int]:
        place, item = pair
        relative = Path(str(item.fspath)).relative_to(TESTS).as_posix()  # type: ignore[attr-defined]
        return rank.get(relative, len(rank)), place

    items[:] = [item for _, item in sorted(enumerate(items), key=key)]


BOOTED_ROOTS = "tests/system/"
"""The system tier's modules take turns on the booted Debian root (tests/system/conftest.py
``root``): two pytest-xdist workers in two of them made one wait for the other's root
(CI 2026-12-05: a module's set-up waited 112 s). They are one unit of work, run by one
worker one after another while the others run the rest (``pytest_xdist_make_scheduler``)."""


def pytest_xdist_make_scheduler(config, log):
    """``--dist loadfile`` (scripts/test), but the system tier's modules are one unit of
    work: returns the scheduler, or None for pytest-xdist's own (other ``--dist`` modes).
    pytest-xdist's ``loadgroup`` would do it by marks, but here (pytest 9.2, pytest-xdist
    3.8) it did not: a throwaway suite's modules, each marked with a group of its own, ran
    on both workers."""
    if config.getvalue("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadFileScheduling

    class BootedRootsTogether(LoadFileScheduling):
        def _split_scope(self, nodeid: str) -> str:
            module = super()._split_scope(nodeid)
            return BOOTED_ROOTS if module.startswith(BOOTED_ROOTS) else module

    return BootedRootsTogether(config, log)


def pytest_collection_modifyitems(config, items):
    _longest_first(items)
    for item in items:
        relative = Path(str(item.fspath)).relative_to(TESTS)
        tier = relative.parts[0]
        if tier in TIERS:
            item.add_marker(getattr(pytest.mark, tier))
        if tier == "integration" and relative.name in TOOL_MODULES:
            item.add_marker(pytest.mark.tools)
        if tier == "integration" and relative.name in ONCE_MODULES:
            item.add_marker(pytest.mark.once)


@pytest.fixture(autouse=True)
def _no_validation_record(monkeypatch):
    """In this process, no record of validated documents (common/validated.py): a
    machine with /var/lib/pullback/validated (the packages, a bench) would otherwise
    make runs of the suite depend on each other. tests/unit/test_validated.py points
    it at a directory of its own."""
    monkeypatch.setattr(validated, "MEMO_DIR", Path("/nonexistent/pullback-validated"))


@pytest.fixture(autouse=True)
def _clean_global_state():
    """Forget secrets and undo the logging set-up a CLI call made (it binds to stderr),
    and its recent lines (a later test's report quoted them: stop 70's CI)."""
    yield
    secrets.forget_all()
    pullback_log._tail = None
    logger = logging.getLogger("pullback")
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
    logger.propagate = True
    logger.setLevel(logging.NOTSET)


@pytest.fixture
def is_root() -> bool:
    return os.geteuid() == 0


@pytest.fixture
def own_filesystem(tmp_path):
    """A file system of this test's alone (a 512 MiB tmpfs; root's, as the suite runs):
    its free space moves only with what the test writes. On the shared one, another
    worker writing or deleting between a test's statvfs and the unpacker's moved free
    space past the test's margin (CI runs caught it both ways)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    where = tmp_path / "fs"
    where.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=512m", "tmpfs", where], check=True)
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", where], check=False)


@pytest.fixture
def own_btrfs(tmp_path):
    """A 768 MiB btrfs of this test's own, on a loop device (``--mixed``, as a small
    one is made): it shows written data late, unlike a tmpfs (scripts/install-deps
    installs btrfs-progs)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a loop device needs root")
    image, where = tmp_path / "btrfs.img", tmp_path / "btrfs"
    with open(image, "wb") as space:
        space.truncate(768 << 20)
    subprocess.run(["mkfs.btrfs", "-q", "-f", "--mixed", image], check=True)
    where.mkdir()
    subprocess.run(["mount", "-o", "loop", image, where], check=True)
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", where], check=False)
        image.unlink()


@pytest.fixture
def tmpfs():
    """``tmpfs(path, options)``: a tmpfs mounted at ``path`` (made when missing) with
    the mount ``options`` (``size=8m``); returns ``path``, unmounted after the test. A
    file system of the test's own: a small disk, another disk below a path, one that
    keeps large extended attributes."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mounted: list[Path] = []

    def mount(path: Path, options: str) -> Path:
        path.mkdir(parents=True, exist_ok=True)
        subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", path], check=True)
        mounted.append(path)
        return path

    yield mount
    for path in reversed(mounted):
        subprocess.run(["umount", "-l", path], check=False)
