"""status.json holds no secret: what reads it (``status``, the page, the metrics) runs in a
process that knows none to mask."""

from __future__ import annotations

from pullback.common import secrets
from pullback.common.outcome import Status
from pullback.server import status_file
from pullback.server.copy import CopyResult


def test_a_secret_in_a_reason_is_masked_and_a_state_never_is(tmp_path):
    """An outside walk: a copy password file holding ``wrong`` masked restic's "wrong
    password" in the log, yet the same line went unmasked to status.json, which
    ``status`` printed. Every string there is masked as the log is, but a state: a
    password that is a state's name must not hide a failure."""
    secrets.register("Hunter2-copy", "failed")
    said = "restic failed on rest:http://u:Hunter2-copy@store/web1/: unreachable"
    result = CopyResult("web1", Status.FAILED, problems=[said], location="ab12")
    status_file.record_copies(tmp_path, [result])
    text = (tmp_path / status_file.STATUS_FILE).read_text()
    assert "Hunter2-copy" not in text
    entry = status_file.load_status(tmp_path)["hosts"]["web1"]["copy"]
    assert entry["result"] == "failed"
    assert entry["reason"] == (
        f"restic {secrets.MASK} on rest:http://u:{secrets.MASK}@store/web1/: unreachable"
    )


def test_identifiers_read_back_are_never_masked(tmp_path):
    """An outside attack: with "2026" or "cafe" registered (a weak password), every time
    and a snapshot id were saved masked, then unreadable; with "123", a copy's own store
    id was taken for another store."""
    from pullback.common.clock import iso, utc_now
    from pullback.server.status_file import other_store

    secrets.register("2026", "cafe", "123")
    now = iso(utc_now())
    result = CopyResult("web1", Status.OK, snapshots=40, newest=now, location="ab123cafe")
    status_file.record_copies(tmp_path, [result])
    entry = status_file.load_status(tmp_path)["hosts"]["web1"]["copy"]
    assert entry["newest"] == now and entry["location"] == "ab123cafe"
    assert not other_store(entry, "ab123cafe")


def test_values_of_the_wrong_shape_are_left_out_once_said(tmp_path, caplog):
    """helper-134 F3: a date without its time in ``last_verified`` (a hand's edit, an
    older or damaged file) made every pull crash after storing, and ``status --check``
    exit 70; a number where a time belongs crashed the metrics. As status.json is read,
    each fact of the wrong shape is left out, said once; the others are kept, and the
    next record writes the file without them."""
    import json
    import logging

    from pullback.common.clock import iso, utc_now

    now = iso(utc_now())
    entry = {
        "last_result": "stored",
        "last_attempt": 5,
        "last_success": now,
        "last_verified": "2026-12-06",
        "newest_snapshot": "not a time",
        "duration": "12",
        "snapshots": 3,
        "history": "x",
        "copy": {"copied": "yesterday", "result": "ok"},
    }
    (tmp_path / status_file.STATUS_FILE).write_text(json.dumps({"hosts": {"web1": entry}}))
    with caplog.at_level(logging.WARNING):
        for _ in range(3):
            read = status_file.read_status(tmp_path)["hosts"]["web1"]
    assert read == {
        "last_result": "stored",
        "last_success": now,
        "snapshots": 3,
        "copy": {"result": "ok"},
    }
    said = [r.message for r in caplog.records if "wrong shape" in r.message]
    assert len(said) == 1 and "web1.last_verified" in said[0] and "web1.copy.copied" in said[0]
    status_file.record_outputs(tmp_path, [])
    kept = json.loads((tmp_path / status_file.STATUS_FILE).read_text())["hosts"]["web1"]
    assert "last_verified" not in kept and kept["snapshots"] == 3


def test_history_runs_of_the_wrong_shape_are_read_as_a_merged_file_s(tmp_path):
    """helper-144 F6: a history run of status.json with ``"result": ["x"]`` ended the
    ``status`` table in a traceback (exit 70), ``"repository_bytes": "12"`` the trend,
    and a NaN, an infinity or 1e400 there printed "nan TiB". Each run is checked as a
    merged file's is; a number that is not finite, anywhere, is never written back (the
    file is standard JSON, which a monitor's ``status --merge`` reads)."""
    import datetime as dt
    import json

    from pullback.common import jsontext
    from pullback.server.fleet_view import host_row

    runs = [
        '{"result": "stored", "repository_bytes": 5, "time": "t"}',
        '{"result": ["x"], "repository_bytes": "12"}',
        '{"result": "failed", "repository_bytes": NaN}',
        '{"result": {"a": 1}, "repository_bytes": Infinity}',
        '{"result": "nonsense", "repository_bytes": 1e400}',
        '{"result": "stored", "repository_bytes": 7}',
    ]
    text = (
        '{"hosts": {"web1": {"last_result": "stored", "guard_seen": {"s1": NaN}, '
        f'"history": [{", ".join(runs)}, 3]}}}}}}'
    )
    (tmp_path / status_file.STATUS_FILE).write_text(text)
    entry = status_file.read_status(tmp_path)["hosts"]["web1"]
    assert [(r["result"], r["repository_bytes"]) for r in entry["history"]] == [
        ("stored", 5),
        ("?", None),
        ("failed", None),
        ("?", None),
        ("?", None),
        ("stored", 7),
    ]
    assert entry["history"][0]["time"] == "t", "what the check does not read is kept"
    row = host_row("web1", entry, 3600, dt.datetime.now(dt.UTC))
    assert row.history_text == "✓?✗??✓"
    assert row.sizes == [5, 7] and "nan" not in row.trend
    status_file.record_outputs(tmp_path, [])
    written = jsontext.loads((tmp_path / status_file.STATUS_FILE).read_text())
    assert written["hosts"]["web1"]["guard_seen"] == {"s1": None}
    assert json.dumps(written, allow_nan=False)
