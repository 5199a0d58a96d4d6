"""helper-109's attacks on c24dee6 (helper-108's mends): the client status file read
bounded and its odd values dropped; a mark that says its run's status file was not
written; common.fsutil.read_regular shared with the fleet merge.

The defects it found were strict xfails until mended; every test now asserts its
promise. Real runs of the client as a
subprocess where a run is needed; nothing patched.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import threading

import pytest

from pullback.client.stopped import Recovery, read_record
from pullback.server.merged_status import read_merged
from tests.helpers.client import ClientSandbox
from tests.helpers.killed_run_box import QUICK

pytestmark = pytest.mark.integration


def _box(tmp_path, *names: str) -> ClientSandbox:
    """A client with quick services ``names``, metrics in client.prom, one good run made."""
    box = ClientSandbox(tmp_path / "client")
    box.write_config(metrics_file=str(box.root / "client.prom"))
    for name in names:
        box.add_service(name, QUICK.format(name=name))
    made = box.cli("run")
    assert made.returncode == 0, made.stderr
    return box


def _status_path(box: ClientSandbox):
    return box.archives / ".client-status.json"


def _prom_values(box: ClientSandbox) -> dict[str, float]:
    """Each sample line of the metrics file, parsed (a line that is no number fails)."""
    found = {}
    for line in (box.root / "client.prom").read_text().splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            found[name] = float(value)
    return found


# -- the status file's values --------------------------------------------------------------


def test_a_huge_integer_in_the_status_file_is_dropped_not_a_crash(tmp_path):
    box = _box(tmp_path, "files")
    doc = json.loads(_status_path(box).read_text())
    # (json.dumps cannot write it; a hand's edit or a damaged disk can)
    text = json.dumps(doc).replace('"duration": ', '"duration": 1' + "0" * 400 + ', "x": ', 1)
    _status_path(box).write_text(text)
    made = box.cli("run")
    assert made.returncode == 0, (made.returncode, made.stderr[-800:])
    assert "OverflowError" not in made.stderr
    assert isinstance(json.loads(_status_path(box).read_text())["duration"], float)


def test_odd_values_outside_the_number_keys_leave_the_metrics_numbers(tmp_path):
    box = _box(tmp_path, "files", "db")
    doc = json.loads(_status_path(box).read_text())
    doc["error"] = {"a": [1, {"b": None}]}
    doc["archive"] = ["x", {"y": 1}]
    doc["last_run_ok"] = "yes"
    doc["services"]["db"].update(ok="true", error=["deep", {"k": [1]}], bytes=float("nan"))
    doc["services"]["db"]["last_success"] = [1]
    _status_path(box).write_text(json.dumps(doc))  # (NaN written as NaN: JSON of Python's)
    made = box.cli("run", "--service", "files")  # (db's entry stays as it was read)
    assert made.returncode == 0, made.stderr[-800:]
    assert "held values of another type: dropped" in made.stderr
    values = _prom_values(box)
    assert all(math.isfinite(v) for v in values.values())
    assert 'pullback_client_service_ok{service="db"}' not in values
    assert 'pullback_client_service_bytes{service="db"}' not in values
    assert values['pullback_client_service_ok{service="files"}'] == 1.0
    kept = json.loads(_status_path(box).read_text())
    assert kept["services"]["db"]["error"] == ["deep", {"k": [1]}]  # (not a number key: kept)
    assert "ok" not in kept["services"]["db"]


def test_a_fifo_or_directory_as_the_status_file_is_refused_without_waiting(tmp_path):
    box = _box(tmp_path, "files")
    _status_path(box).unlink()
    os.mkfifo(_status_path(box))
    made = box.cli("run", timeout=30)
    assert "not a regular file" in made.stderr and made.returncode == 0, made.stderr[-600:]
    assert json.loads(_status_path(box).read_text())["last_run_ok"] is True


# -- a run whose status file could not be written ------------------------------------------


def test_a_mark_whose_status_file_was_not_written_is_said_next_time(tmp_path):
    box = _box(tmp_path, "files")
    _status_path(box).unlink()
    _status_path(box).mkdir()  # (the rename onto it fails: EISDIR)
    (_status_path(box) / "keep").write_text("")
    made = box.cli("run")
    assert made.returncode == 1, made.stderr[-600:]
    mark = json.loads((box.work.parent / "stopped.json").read_text())["run"]
    assert mark["ended"] == "its status file could not be written"
    shutil.rmtree(_status_path(box))
    again = box.cli("run")
    assert again.returncode == 1
    said = json.loads(_status_path(box).read_text())["error"]
    assert "ended before its finish (its status file could not be written)" in said


def test_a_status_file_not_written_leaves_the_metrics_saying_the_failed_run(tmp_path):
    box = _box(tmp_path, "files")
    _status_path(box).unlink()
    _status_path(box).mkdir()
    (_status_path(box) / "keep").write_text("")
    made = box.cli("run")
    assert made.returncode == 1
    values = _prom_values(box)
    assert values.get("pullback_client_last_run_ok") == 0.0, (box.root / "client.prom").read_text()


def test_a_hand_written_mark_s_ended_is_bounded_and_one_line(tmp_path):
    path = tmp_path / "stopped.json"
    ended = "\x1b[2J" + "forged\nline " * 50_000
    path.write_text(
        json.dumps({"stopped": [], "run": {"pid": 1, "at": "x", "services": ["a"], "ended": ended}})
    )
    path.chmod(0o600)
    (line,) = Recovery(run=read_record(path).run).report_lines()
    assert "\n" not in line and "\x1b" not in line
    assert len(line) < 300, len(line)


# -- the fleet merge, through read_regular -------------------------------------------------


def test_the_fleet_merge_refuses_a_fifo_a_directory_and_a_huge_file_in_its_words(tmp_path):
    fifo = tmp_path / "fifo.json"
    os.mkfifo(fifo)
    result: list = []
    reader = threading.Thread(target=lambda: result.append(read_merged(fifo)), daemon=True)
    reader.start()
    reader.join(5)
    assert result, "the merge waits on a FIFO"
    assert result[0].error == "not a regular file"
    assert read_merged(tmp_path).error == "not a regular file"
    huge = tmp_path / "huge.json"
    with huge.open("wb") as handle:
        handle.truncate((32 << 20) + 1)  # (sparse)
    assert read_merged(huge).error == "larger than 32 MiB"
    good = tmp_path / "good.json"
    good.write_text(json.dumps({"server": "b", "hosts": {}}))
    link = tmp_path / "link.json"
    link.symlink_to(good)  # (a file of this test: followed, as before the mend)
    assert read_merged(link).error is None
    dangling = tmp_path / "dangling.json"
    dangling.symlink_to(tmp_path / "absent")
    assert read_merged(dangling).error == "No such file or directory"
