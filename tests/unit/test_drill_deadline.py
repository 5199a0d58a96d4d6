"""The drill's hashing stops at the host's time limit (``host_timeout`` sets the host's
cancel event): it was bounded by ``max_unpacked_size`` only (helper-129)."""

from __future__ import annotations

import hashlib
import threading

from pullback.common.archive.manifest import MANIFEST_NAME, format_line
from pullback.server.drill import DrillResult, check_tree


def snapshot_with(root, files: dict[str, bytes]) -> None:
    lines = b""
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
        lines += format_line(name, hashlib.sha256(data).hexdigest())
    (root / MANIFEST_NAME).write_bytes(lines)


def test_a_check_is_whole_without_a_limit_and_stops_once_it_passed(tmp_path):
    snapshot_with(tmp_path, {f"services/app/f{n}": b"x" * n for n in range(5)})
    whole = DrillResult("web1")
    check_tree(tmp_path, whole, threading.Event())
    assert whole.problems == [] and whole.files_checked == 5

    passed = threading.Event()
    passed.set()
    stopped = DrillResult("web1")
    check_tree(tmp_path, stopped, passed)
    assert stopped.files_checked == 0
    assert stopped.problems == ["stopped after 0 files, before all were checked"]
