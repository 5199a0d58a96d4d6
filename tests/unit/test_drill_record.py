"""What status.json keeps of a restore drill."""

from __future__ import annotations

from pullback.server import status_file
from pullback.server.db_proof import DatabaseProof
from pullback.server.drill import DrillResult


def test_dumps_that_loaded_are_proven_even_when_a_file_of_the_snapshot_failed(tmp_path):
    drill = DrillResult(
        "web1",
        ok=False,
        snapshot_id="83ac9c9e",
        problems=["changed: services/app/files/srv/app/f12.txt"],
        databases=[DatabaseProof("shop", "postgresql", "shop", tables=3, rows=12)],
    )
    entry = status_file.record_drills(tmp_path, [drill])["hosts"]["web1"]
    assert entry["verify_result"] == "failed"
    assert "last_verified" not in entry  # the snapshot as a whole was not proven
    assert entry["databases_proven"] == entry["last_verified_attempt"]


def test_a_dump_that_failed_to_load_proves_nothing(tmp_path):
    bad = DatabaseProof("shop", "postgresql", "shop")
    bad.fail("ERROR: syntax error at line 3")
    drill = DrillResult("web1", ok=False, snapshot_id="83ac9c9e", databases=[bad])
    entry = status_file.record_drills(tmp_path, [drill])["hosts"]["web1"]
    assert "databases_proven" not in entry


def test_a_status_file_locked_past_its_wait_fails_the_run_not_exit_75(tmp_path, monkeypatch):
    import pytest

    from pullback.common.errors import EXIT_FAILED, LockBusy, PullbackError
    from pullback.common.locks import FileLock

    monkeypatch.setattr(status_file, "STATUS_LOCK_WAIT", 0.3)
    drill = DrillResult("web1", ok=True, snapshot_id="83ac9c9e")
    held = FileLock(tmp_path / status_file.STATUS_LOCK, "another writer")
    with held.acquire(), pytest.raises(PullbackError) as info:
        status_file.record_drills(tmp_path, [drill])
    assert not isinstance(info.value, LockBusy) and info.value.exit_code == EXIT_FAILED
    assert str(info.value).startswith("status.json could not be written: ")


def test_a_snapshots_failed_drill_stands_until_a_drill_of_it_passes_or_it_is_gone(tmp_path):
    """An outside test: one ``verify --random`` of an intact older snapshot, passing, set
    a host whose newest snapshot had failed its drill back to ok. A failure now stays
    until a drill of that very snapshot passes, or the snapshot is no longer listed."""
    failed = DrillResult("web1", ok=False, snapshot_id="3826e3e3", snapshot_time="T2")
    failed.problems.append("changed: services/app/files/big.bin")
    entry = status_file.record_drills(tmp_path, [failed])["hosts"]["web1"]
    assert entry["verify_failed_snapshot"]["id"] == "3826e3e3"
    other = DrillResult("web1", ok=True, snapshot_id="6a8e2a65", failed_before="3826e3e3")
    entry = status_file.record_drills(tmp_path, [other])["hosts"]["web1"]
    assert entry["verify_result"] == "ok"
    assert entry["verify_failed_snapshot"]["id"] == "3826e3e3", "another snapshot proves nothing"
    again = DrillResult("web1", ok=True, snapshot_id="3826e3e3", failed_before="3826e3e3")
    entry = status_file.record_drills(tmp_path, [again])["hosts"]["web1"]
    assert "verify_failed_snapshot" not in entry
    status_file.record_drills(tmp_path, [failed])
    gone = DrillResult("web1", ok=True, snapshot_id="9f00aa11", failed_before_gone=True)
    entry = status_file.record_drills(tmp_path, [gone])["hosts"]["web1"]
    assert "verify_failed_snapshot" not in entry


def test_a_named_snapshots_failed_drill_is_kept_beside_the_first_one(tmp_path):
    """``verify --snapshot`` of another snapshot that fails, while one failure stands:
    both are kept (the first is what the next drill tries), and each ends only by a
    passing drill of it; the next one takes the first's place."""

    def drilled(snapshot: str, ok: bool, **more) -> dict:
        result = DrillResult("web1", ok=ok, snapshot_id=snapshot, **more)
        if not ok:
            result.problems.append(f"changed: services/app/files/{snapshot}")
        return status_file.record_drills(tmp_path, [result])["hosts"]["web1"]

    drilled("newest", False)
    entry = drilled("repaired", False)
    assert entry["verify_failed_snapshot"]["id"] == "newest"
    assert [o["id"] for o in entry["verify_failed_others"]] == ["repaired"]
    entry = drilled("repaired", False)  # again: kept once
    assert [o["id"] for o in entry["verify_failed_others"]] == ["repaired"]
    entry = drilled("intact", True)
    assert (entry["verify_failed_snapshot"]["id"], len(entry["verify_failed_others"])) == (
        "newest",
        1,
    )
    entry = drilled("newest", True, failed_before="newest")
    assert entry["verify_failed_snapshot"]["id"] == "repaired", "the next takes its place"
    assert "verify_failed_others" not in entry
    drilled("third", False)
    entry = drilled("fourth", True, failed_before_gone=True)  # "repaired" is forgotten
    assert entry["verify_failed_snapshot"]["id"] == "third"
    entry = drilled("third", True)
    assert "verify_failed_snapshot" not in entry and "verify_failed_others" not in entry


def test_further_failed_snapshots_are_bounded(tmp_path):
    for number in range(status_file.MORE_FAILED + 5):
        bad = DrillResult("web1", ok=False, snapshot_id=f"s{number}", problems=["changed: a"])
        entry = status_file.record_drills(tmp_path, [bad])["hosts"]["web1"]
    assert entry["verify_failed_snapshot"]["id"] == "s0"
    others = [o["id"] for o in entry["verify_failed_others"]]
    assert len(others) == status_file.MORE_FAILED and others[-1] == f"s{number}"


def test_a_passing_drill_ends_the_failures_of_snapshots_no_longer_listed(tmp_path):
    """An outside review: the next failure took the first's place without a look at
    whether it was still listed, and kept the host in attention one drill per entry."""
    for snapshot in ("s1", "s2", "s3"):
        bad = DrillResult("web1", ok=False, snapshot_id=snapshot, problems=["changed: a"])
        status_file.record_drills(tmp_path, [bad])
    good = DrillResult("web1", ok=True, snapshot_id="s9", listed=frozenset({"s3", "s9"}))
    entry = status_file.record_drills(tmp_path, [good])["hosts"]["web1"]
    assert entry["verify_failed_snapshot"]["id"] == "s3" and "verify_failed_others" not in entry
    gone = DrillResult("web1", ok=True, snapshot_id="s9", listed=frozenset({"s9"}))
    entry = status_file.record_drills(tmp_path, [gone])["hosts"]["web1"]
    assert "verify_failed_snapshot" not in entry
