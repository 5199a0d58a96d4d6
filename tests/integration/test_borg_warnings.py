"""``borg create`` ends with exit 1 when it stored the archive but warned (a staged file
it could not read, one that changed as it read it, a name it did not find). That was
taken as success and said nowhere but the log; restic's like case (exit 3) fails the
store. The archive is kept, and the pull's report says the warning: the snapshot may
lack what it names."""

from __future__ import annotations

import datetime as dt
import os

import pytest

from pullback.common.archive.stored import BESIDE_SERVICES
from pullback.server.backends import SnapshotSpec
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


SPEC = SnapshotSpec("20261207T120000Z", dt.datetime(2026, 12, 7, 12, tzinfo=dt.UTC))


def test_a_store_borg_warned_of_is_kept_and_its_warning_said(borg, tmp_path):
    missing = BESIDE_SERVICES[-1]
    staging = staging_of(tmp_path, BESIDE_SERVICES[:-1])
    stored = borg.store(staging, SPEC, timeout=600)
    assert [s.id for s in borg.snapshots()] == [stored.snapshot_id]  # kept
    (said,) = stored.warnings
    assert said.startswith("borg create ended with warnings (exit 1): the snapshot was stored")
    assert missing in said and "No such file or directory" in said, said


def test_a_store_without_warnings_says_none(borg, tmp_path):
    stored = borg.store(staging_of(tmp_path, BESIDE_SERVICES), SPEC, timeout=600)
    assert stored.warnings == ()
    assert os.path.basename(stored.snapshot_id).startswith("web1-")
