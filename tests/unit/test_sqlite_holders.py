"""plugins.sqlite._holders: who has each database open, from one pass over /proc."""

from __future__ import annotations

import subprocess
import sys
import time

from pullback.plugins import sqlite


def test_each_database_names_the_processes_that_hold_it_or_its_wal(tmp_path):
    a, b, c = (tmp_path / name for name in ("a.db", "b.db", "c.db"))
    for path in (a, b, c, tmp_path / "b.db-wal"):
        path.write_bytes(b"")
    hold = (
        "import sys, time; files = [open(p) for p in sys.argv[1:]]; "
        "print('ready', flush=True); time.sleep(60)"
    )
    one = subprocess.Popen([sys.executable, "-c", hold, str(a), f"{b}-wal"], stdout=subprocess.PIPE)
    two = subprocess.Popen([sys.executable, "-c", hold, str(a)], stdout=subprocess.PIPE)
    try:
        for child in (one, two):
            assert child.stdout is not None and child.stdout.readline() == b"ready\n"
        started = time.monotonic()
        found = sqlite._holders([a, b, c])
        took = time.monotonic() - started
    finally:
        for child in (one, two):
            child.kill()
            child.wait()
    pids = {name.split("[")[1].rstrip("]") for name in found[a]}
    assert pids == {str(one.pid), str(two.pid)} and len(found[a]) == 2, found
    assert [name.split("[")[1] for name in found[b]] == [f"{one.pid}]"], found  # by its -wal
    assert found[c] == []
    print(f"one pass over /proc: {took * 1000:.1f} ms")


def test_no_database_there_reads_no_proc(tmp_path, monkeypatch):
    monkeypatch.setattr(sqlite, "_listdir", lambda path: (_ for _ in ()).throw(AssertionError))
    assert sqlite._holders([tmp_path / "missing.db"]) == {tmp_path / "missing.db": []}
