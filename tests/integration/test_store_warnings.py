"""``borg create`` ends with exit 1 when it stored the archive but warned (a staged file
it could not read, one that changed as it read it, a name it did not find). That was
taken as success and said nowhere but the log. The archive is kept, and the pull's
report says the warning: the snapshot may lack what it names.

restic's like case (``restic backup`` exit 3: a staged file it could not read) fails the
store, and the incomplete snapshot it made is removed: it stayed, the newest, for
restores and as the next backup's parent."""

from __future__ import annotations

import datetime as dt
import os
import subprocess

import pytest

from pullback.common.archive.stored import BESIDE_SERVICES
from pullback.server.backends import IncompleteStore, SnapshotSpec
from tests.helpers.status_servers import one_host_backend

pytestmark = pytest.mark.integration


@pytest.fixture
def borg(tmp_path):
    backend = one_host_backend(tmp_path, "borg")
    return backend


def staging_of(tmp_path, beside: tuple[str, ...]):
    staging = tmp_path / "staging"
    (staging / "services" / "app").mkdir(parents=True)
    (staging / "services" / "app" / "data").write_bytes(b"rows\n")
    for name in beside:
        (staging / name).write_text("x\n")
    return staging


UNREADABLE = "/sys/bus/pci/rescan"
"""A write-only sysfs file: opening it for reading fails, for root too."""


SPEC = SnapshotSpec("20261207T120000Z", dt.datetime(2026, 12, 7, 12, tzinfo=dt.UTC))


def test_a_store_borg_warned_of_is_kept_and_its_warning_said(borg, tmp_path):
    missing = BESIDE_SERVICES[-1]
    staging = staging_of(tmp_path, BESIDE_SERVICES[:-1])
    stored = borg.store(staging, SPEC, timeout=600)
    assert [s.id for s in borg.snapshots()] == [stored.snapshot_id]  # kept
    (said,) = stored.warnings
    assert said.startswith("borg create ended with warnings (exit 1): the snapshot was stored")
    assert missing in said and "No such file or directory" in said, said


@pytest.mark.skipif(
    os.geteuid() != 0 or not os.path.exists(UNREADABLE), reason="bind mounts need root"
)
def test_a_warning_is_said_when_backup_options_list_every_file(tmp_path):
    """An administrator's ``backup_options: [--list]`` prints a line per file: the 30
    files borg stored after the one it could not read pushed its warning out of the last
    lines, and the report named three stored files instead."""
    after = [f"{number:02}-after" for number in range(30)]
    said = store_with_unreadable(tmp_path, ", backup_options: [--list]", after)
    assert "0-unreadable" in said and "-after" not in said, said


def store_with_unreadable(tmp_path, options: str, after: list[str]) -> str:
    """borg store (``options`` added to its server.yaml) a staging tree whose
    services/app/0-unreadable cannot be read, the files ``after`` (names under
    services/app, which the client chose) beside it; returns its one warning."""
    borg = one_host_backend(tmp_path, "borg", options)
    staging = staging_of(tmp_path, BESIDE_SERVICES)
    bad = staging / "services/app/0-unreadable"
    bad.touch()
    for name in after:
        (staging / "services/app" / name).write_text("x\n")
    subprocess.run(["mount", "--bind", UNREADABLE, bad], check=True)
    try:
        stored = borg.store(staging, SPEC, timeout=600)
    finally:
        subprocess.run(["umount", bad], check=False)
    (said,) = stored.warnings
    return said


def test_a_store_without_warnings_says_none(borg, tmp_path):
    stored = borg.store(staging_of(tmp_path, BESIDE_SERVICES), SPEC, timeout=600)
    assert stored.warnings == ()
    assert os.path.basename(stored.snapshot_id).startswith("web1-")


@pytest.mark.skipif(
    os.geteuid() != 0 or not os.path.exists(UNREADABLE), reason="bind mounts need root"
)
def test_an_incomplete_restic_snapshot_is_removed_and_the_store_fails(tmp_path):
    restic = one_host_backend(tmp_path, "restic")
    staging = staging_of(tmp_path, BESIDE_SERVICES)
    bad = staging / "services/app/bad"
    bad.touch()
    subprocess.run(["mount", "--bind", UNREADABLE, bad], check=True)
    try:
        with pytest.raises(IncompleteStore) as raised:
            restic.store(staging, SPEC, timeout=600)
    finally:
        subprocess.run(["umount", bad], check=False)
    said = str(raised.value)
    assert said.startswith("restic stored an incomplete snapshot"), said
    assert said.endswith("it made was removed"), said
    assert restic.snapshots() == []
