"""Outside review (h113) of two changes:

* 039ecef: the client's status file names the run it reports (``reported_run``: pid and
  start, and since this review a random token of the run's); a mark in ``stopped.json``
  equal to it is removed silently, not reported as a killed run.
* 7b1a786: ``tree_list.read_beside`` (NotAList, OtherManifests), used by ``restore --from
  DIR`` and the drill, and ``stored.BESIDE_SERVICES``: no change of behaviour meant.

A promise that did not hold was ``xfail(strict=True)`` until mended (none is marked now);
every test asserts the correct behaviour. Real client runs, real files (tests/helpers); the
only hand-made state is a mark or a status file written as a power cut or a hand would
leave it.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import pytest

from pullback.common.archive import stored, tree_list
from pullback.common.archive.manifest import MANIFEST_NAME
from pullback.common.archive.sidecar import SIDECAR_NAME
from pullback.common.archive.tree_list import TREE_NAME
from pullback.common.archive.unpack import _KEPT
from pullback.server.backends import SnapshotSpec, borg
from pullback.server.drill import DrillResult, check_tree
from pullback.server.restore import RestoreRequest
from tests.helpers.killed_run_box import KILLED, QUICK, SLOW, mailed_client
from tests.helpers.killed_run_box import mails as _mails
from tests.helpers.killed_run_box import status as _status
from tests.integration.test_files_restore import Restore, live_state
from tests.integration.test_files_restore_attacks2 import write_manifest

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="the client runs and restores as root"),
]

FETCH_AGAIN = (
    "Fetch the snapshot into an empty directory (or rsync with --delete) and restore "
    "again; nothing was changed"
)


# ---- helpers ---------------------------------------------------------------------------


def _record(box) -> Path:
    return box.root / "stopped.json"


def _mark(box) -> dict:
    return json.loads(_record(box).read_text())["run"]


def _identity(run: dict) -> dict:
    return {"pid": run["pid"], "at": run["at"], "token": run.get("token")}


def _pid_and_second(run: dict) -> tuple:
    return run["pid"], run["at"]


def _write_mark(box, run: dict) -> None:
    """stopped.json holding the mark ``run`` (no entries), root's 0600."""
    _record(box).write_text(json.dumps({"version": 1, "stopped": [], "run": run}))
    _record(box).chmod(0o600)


@pytest.fixture
def box(tmp_path):
    """``files`` quick (its restore a no-op) and ``slow`` whose dump waits (its marker
    said): a run of it can be killed once its mark is written."""
    box = mailed_client(tmp_path)
    box.add_service(
        "files",
        'service: {name: files}\ncommand:\n  dump: [{run: "echo data", output: out.txt}]\n'
        '  restore: ["true"]\n',
    )
    box.marker = tmp_path / "dumping"
    box.add_service("slow", SLOW.format(name="slow", marker=box.marker))
    return box


def _quick_slow(box) -> None:
    box.add_service("slow", QUICK.format(name="slow"))


def _slow_slow(box) -> None:
    box.add_service("slow", SLOW.format(name="slow", marker=box.marker))


def _good_run(box) -> dict:
    """One good run; returns the status file."""
    _quick_slow(box)
    made = box.cli("run")
    assert made.returncode == 0, made.stderr
    _slow_slow(box)
    assert not _record(box).exists()
    return _status(box)


def _killed_run(box) -> dict:
    """A run SIGKILLed once its mark is written and its slow dump runs; returns the mark."""
    proc = box.popen("run", env=dict(os.environ))
    deadline = time.monotonic() + 60
    while not box.marker.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline
        time.sleep(0.05)
    mark = _mark(box)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=30)
    box.marker.unlink()
    assert _identity(mark) == _identity(_mark(box))
    return mark


# ---- 039ecef: defects found, mended (the mark's random token) --------------------------


GATE = """\
service: {{name: gate}}
command:
  dump:
    - run: "echo data; if [ -e {hold} ]; then touch {marker};
        while [ -e {hold} ]; do sleep 0.05; done; fi"
      output: out.txt
"""


def test_a_killed_run_sharing_pid_and_start_second_with_the_last_report_is_reported(tmp_path):
    """Real runs, each the first process of its own PID namespace (pid 1), back to back:
    the second is SIGKILLed while its dump waits. Whenever it began in the same second as
    the first (about every other try: a run takes ~0.7 s), start-stopped must still say
    it was killed."""
    if shutil.which("unshare") is None:
        pytest.skip("no unshare")
    probe = subprocess.run(["unshare", "--pid", "--fork", "true"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip(f"no PID namespaces here: {probe.stderr!r}")
    box = mailed_client(tmp_path, "files")
    hold, marker = tmp_path / "hold", tmp_path / "dumping"
    box.add_service("gate", GATE.format(hold=hold, marker=marker))
    argv = ["unshare", "--pid", "--fork", "--kill-child", sys.executable, "-m"]
    argv += ["pullback.client.cli", "--config", str(box.config), "run"]
    first = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert first.returncode == 0, first.stderr
    for _ in range(30):
        reported = _status(box)["reported_run"]
        assert reported["pid"] == 1
        hold.touch()
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        while not marker.exists():
            assert proc.poll() is None, proc.communicate()
            time.sleep(0.02)
        marker.unlink()
        if _pid_and_second(_mark(box)) == _pid_and_second(reported):
            break
        hold.unlink()  # (another second: this run ends well, and is the next one's "first")
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
    else:
        pytest.skip("no two runs began in one second in 30 tries")
    proc.send_signal(signal.SIGKILL)  # (--kill-child: the run, pid 1 of its namespace, dies)
    proc.communicate(timeout=30)
    hold.unlink()
    before = len(_mails(box))
    result = box.cli("start-stopped")
    assert result.returncode == 0, result.stderr
    status = _status(box)
    assert status["last_run_ok"] is False, result.stderr
    assert status["error"].startswith("the run (pid 1, started at ") and KILLED in status["error"]
    assert len(_mails(box)) == before + 1
    assert not _record(box).exists()


def test_a_mark_of_another_boot_with_the_reported_runs_pid_and_start_is_reported(box):
    """The status file names a run of this boot; the mark left behind names another boot
    (and another unit run), and has its own token: it cannot be that run's mark. It was
    dropped unsaid while a run was its pid and start second alone."""
    reported = _good_run(box)["reported_run"]
    mails = len(_mails(box))
    _write_mark(
        box,
        {
            **reported,
            "token": os.urandom(8).hex(),  # (another run's: its own token)
            "services": ["files", "slow"],
            "earlier": [],
            "boot": str(uuid.uuid4()),
            "invocation": "b" * 32,
        },
    )
    result = box.cli("start-stopped")
    assert result.returncode == 0, result.stderr
    status = _status(box)
    assert status["last_run_ok"] is False, result.stderr
    assert status["error"].endswith("(the machine restarted before it ended)")
    assert len(_mails(box)) == mails + 1
    assert not _record(box).exists()


# ---- 039ecef: what held ----------------------------------------------------------------


def test_start_stopped_reports_a_killed_run_once_and_a_later_kill_again(box):
    """start-stopped's own report names the killed run; that mark back (a power cut
    between its status file and the mark's removal) is not said again; the next run
    killed is (another start second)."""
    _good_run(box)
    mark = _killed_run(box)
    left = _record(box).read_text()
    result = box.cli("start-stopped")
    assert result.returncode == 0, result.stderr
    status = _status(box)
    assert status["reported_run"] == _identity(mark) and status["error"].endswith(KILLED)
    assert len(_mails(box)) == 1 and not _record(box).exists()

    _record(box).write_text(left)
    _record(box).chmod(0o600)
    again = box.cli("start-stopped")
    assert again.returncode == 0, again.stderr
    assert _status(box) == status and len(_mails(box)) == 1
    assert not _record(box).exists()

    time.sleep(1.1)  # (the next run begins in another second)
    second = _killed_run(box)
    assert _identity(second) != _identity(mark)
    assert box.cli("start-stopped").returncode == 0
    assert _status(box)["reported_run"] == _identity(second)
    assert f"pid {second['pid']}" in _status(box)["error"] and len(_mails(box)) == 2


def test_a_restore_reports_a_killed_run_once_and_its_mark_back_is_not_said_again(box):
    _good_run(box)
    (archive,) = box.published()
    mark = _killed_run(box)
    left = _record(box).read_text()
    args = ("restore", "--service", "files", "--from", str(archive))
    result = box.cli(*args)
    assert result.returncode == 0, result.stdout + result.stderr
    status = _status(box)
    assert status["reported_run"] == _identity(mark) and status["error"].endswith(KILLED)
    assert len(_mails(box)) == 1 and not _record(box).exists()
    _record(box).write_text(left)
    _record(box).chmod(0o600)
    again = box.cli(*args)
    assert again.returncode == 0, again.stdout + again.stderr
    assert _status(box) == status and len(_mails(box)) == 1
    assert not _record(box).exists()


def test_a_dry_run_leaves_a_killed_runs_mark_for_the_next_report(box):
    _good_run(box)
    mark = _killed_run(box)
    dry = box.cli("run", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert _identity(_mark(box)) == _identity(mark)
    _quick_slow(box)
    result = box.cli("run")
    assert result.returncode == 1, result.stderr  # the killed run is this run's to report
    status = _status(box)
    assert f"the run (pid {mark['pid']}, started at {mark['at']}) {KILLED}" in status["error"]
    assert status["reported_run"] != _identity(mark)  # (this run's own: the mark carried)
    assert not _record(box).exists() and len(_mails(box)) == 1


def test_run_service_and_a_run_that_publishes_nothing_name_their_own_mark(box):
    _good_run(box)
    _quick_slow(box)
    proc = box.popen("run", "--service", "slow", env=dict(os.environ))
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert _status(box)["reported_run"]["pid"] == proc.pid
    text = box.config.read_text().replace("min_free_space: 1M", "min_free_space: 1P")
    box.config.write_text(text)
    proc = box.popen("run", env=dict(os.environ))
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 1, err
    status = _status(box)
    assert status["error"].startswith("not enough free space")
    assert status["reported_run"]["pid"] == proc.pid and not _record(box).exists()


def test_an_unwritable_status_file_keeps_the_mark_until_its_report_is_written(box):
    """A run whose status file cannot be written keeps its mark (saying so); start-stopped
    cannot write it either and keeps it; once it can, the run is reported, once."""
    _good_run(box)
    path = box.archives / ".client-status.json"
    path.unlink()
    path.mkdir()  # (os.replace onto it fails: EISDIR)
    _quick_slow(box)
    proc = box.popen("run", env=dict(os.environ))
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 1, err
    mark = _mark(box)
    assert mark["pid"] == proc.pid and mark["ended"] == "its status file could not be written"
    stuck = box.cli("start-stopped")
    assert stuck.returncode == 1, stuck.stderr
    assert _identity(_mark(box)) == _identity(mark)
    path.rmdir()
    done = box.cli("start-stopped")
    assert done.returncode == 0, done.stderr
    status = _status(box)
    unwritten = "ended before its finish (its status file could not be written)"
    assert status["error"].endswith(unwritten)
    assert status["reported_run"] == _identity(mark) and not _record(box).exists()


ODD = [
    str(4242),
    [4242, "2026-12-05T01:00:00Z"],
    None,
    {"pid": 4242},
    {"pid": "4242", "at": "2026-12-05T01:00:00Z"},
    {"pid": 4242, "at": "2026-12-05T01:00:00Z ", "x": 1},
    {"pid": 10**4000, "at": "2026-12-05T01:00:00Z"},
    {"pid": 4242, "at": "A" * (1 << 20)},
    {"pid": [[[[[[[[4242]]]]]]]], "at": "2026-12-05T01:00:00Z"},
]


@pytest.mark.parametrize("odd", ODD, ids=[f"odd{i}" for i in range(len(ODD))])
def test_a_hand_edited_reported_run_never_hides_a_killed_run_nor_floods_the_log(box, odd):
    _good_run(box)
    status = _status(box)
    status["reported_run"] = odd
    (box.archives / ".client-status.json").write_text(json.dumps(status))
    run = {"pid": 4242, "at": "2026-12-05T01:00:00Z", "services": ["files"], "earlier": []}
    _write_mark(box, run)
    result = box.cli("start-stopped")
    assert result.returncode == 0, result.stderr[:2000]
    assert len(result.stderr) < 4000
    said = _status(box)
    assert said["last_run_ok"] is False and said["error"].endswith(KILLED)
    assert said["reported_run"] == _identity(run) and len(_mails(box)) == 1


# ---- 7b1a786: read_beside, the restore's and the drill's words unchanged ------------------


def _restore(tmp_path) -> Restore:
    r = Restore(tmp_path)
    write_manifest(r.snapshot)
    return r


def _dangling(listing: Path) -> None:
    listing.unlink()
    os.symlink("/nonexistent/TREE.list", listing)


def _to_a_good_list(listing: Path) -> None:
    os.replace(listing, listing.with_name("real.list"))
    os.symlink("real.list", listing)


def _directory(listing: Path) -> None:
    listing.unlink()
    listing.mkdir()


def _fifo(listing: Path) -> None:
    listing.unlink()
    os.mkfifo(listing)


def _socket(listing: Path) -> None:
    listing.unlink()
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(os.fspath(listing))


NOT_A_LIST = {
    "dangling": _dangling,
    "symlink to a good list": _to_a_good_list,
    "directory": _directory,
    "fifo": _fifo,
    "socket": _socket,
}


@pytest.mark.parametrize("form", list(NOT_A_LIST))
def test_restore_from_refuses_a_tree_list_that_is_no_regular_file_as_before(tmp_path, form):
    """Exit 2 (UsageError) with the parent commit's words; nothing followed or opened (a
    FIFO: no hang); the live tree untouched."""
    r = _restore(tmp_path)
    NOT_A_LIST[form](r.snapshot / TREE_NAME)
    os.symlink("/etc/shadow", r.copy / "data/stray-link")
    before = live_state(r.live)
    result = r.run(timeout=60)
    said = result.stdout + result.stderr
    assert result.returncode == 2, said
    assert f"{r.snapshot}: its TREE.list is not a regular file. {FETCH_AGAIN}" in said, said
    assert live_state(r.live) == before and not os.path.lexists(r.live / "data/stray-link")


def test_restore_from_words_and_exit_codes_for_a_list_of_another_or_malformed(tmp_path):
    r = _restore(tmp_path)
    listing = r.snapshot / TREE_NAME
    good = listing.read_bytes()
    next_line = good.count(b"\n") + 1
    before = live_state(r.live)
    cases = [
        (
            b"m  " + b"0" * 64 + b"\n" + good.split(b"\n", 1)[1],
            2,
            f"{r.snapshot}: its TREE.list is another snapshot's than its MANIFEST.sha256 "
            f"(two snapshots fetched into it?). {FETCH_AGAIN}",
        ),
        (good + b"q  x\n", 1, f"{listing}: TREE.list line {next_line} is malformed"),
        (
            good + b"d  " + b"x" * 9000 + b"\n",
            1,
            f"{listing}: TREE.list line {next_line} is longer than any entry's",
        ),
        (b"", 1, f"{listing}: TREE.list line 1 is malformed (no m  <manifest's sha256>)"),
        (
            good.replace(b"\n", b"\r\n"),
            1,
            f"{listing}: TREE.list line 1 is malformed (no m  <manifest's sha256>)",
        ),
    ]
    for data, code, words in cases:  # (line numbers: the good list's lines, then this)
        listing.write_bytes(data)
        result = r.run("--dry-run", timeout=60)
        said = result.stdout + result.stderr
        assert result.returncode == code, said
        assert words in said, said
    assert live_state(r.live) == before


def test_a_symlink_at_the_manifest_is_read_through_as_before(tmp_path):
    """Unchanged by 7b1a786 (the parent followed it too, in the check and in
    ``belongs_to``): only TREE.list itself is never followed."""
    snap = tmp_path / "snap"
    base = snap / "services/app/files/srv"
    base.mkdir(parents=True)
    (base / "f").write_bytes(b"x")
    os.symlink("f", base / "l")
    write_manifest(snap)
    os.replace(snap / MANIFEST_NAME, tmp_path / "outside.sha256")
    os.symlink(tmp_path / "outside.sha256", snap / MANIFEST_NAME)
    read = tree_list.read_beside(snap, "services/app")
    assert read is not None and read.entries[b"services/app/files/srv/l"] == b"l"
    result = DrillResult("web1")
    check_tree(snap, result)
    assert result.problems == []


def test_read_beside_types_and_no_fifo_opened(tmp_path):
    """None without a list; NotAList and OtherManifests are ValueErrors (the restore's
    and the drill's handlers of the parent still catch them); a FIFO at TREE.list or at
    MANIFEST.sha256 beside a list of another kind is never waited on."""
    assert issubclass(tree_list.NotAList, ValueError)
    assert issubclass(tree_list.OtherManifests, ValueError)
    snap = tmp_path / "snap"
    (snap / "services/app").mkdir(parents=True)
    (snap / "services/app/f").write_bytes(b"x")
    write_manifest(snap)
    assert tree_list.read_beside(snap, "services/app") is not None
    (snap / TREE_NAME).write_bytes(b"m  " + b"1" * 64 + b"\n")
    with pytest.raises(tree_list.OtherManifests, match="written beside another MANIFEST"):
        tree_list.read_beside(snap, "services/app")
    (snap / TREE_NAME).unlink()
    assert tree_list.read_beside(snap, "services/app") is None
    os.mkfifo(snap / TREE_NAME)
    probe = textwrap.dedent(
        f"""
        from pathlib import Path
        from pullback.common.archive import tree_list
        try:
            tree_list.read_beside(Path({str(snap)!r}), "services/app")
        except tree_list.NotAList as exc:
            print("refused:", exc)
        """
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=30)
    assert out.stdout.strip() == "refused: TREE.list is not a regular file", out.stderr


def test_the_drills_words_for_each_odd_list_are_the_parents(tmp_path):
    expected = {
        "dangling": ["TREE.list is not a regular file"],
        "directory": ["TREE.list is not a regular file"],
        "fifo": ["TREE.list is not a regular file"],
        "other": ["TREE.list was written beside another MANIFEST.sha256"],
        "malformed": ["TREE.list line 3 is malformed"],
        "huge": ["TREE.list line 3 is longer than any entry's"],
    }
    for name, words in expected.items():
        snap = tmp_path / name
        base = snap / "services/app"
        base.mkdir(parents=True)
        (base / "f").write_bytes(b"x")
        os.symlink("f", base / "l")
        write_manifest(snap)  # (m header, d services/app, l services/app/l)
        listing = snap / TREE_NAME
        if name in ("dangling", "directory", "fifo"):
            NOT_A_LIST[name](listing)
        elif name == "other":
            listing.write_bytes(b"m  " + b"2" * 64 + b"\n")
        else:
            lines = listing.read_bytes().splitlines(keepends=True)
            bad = b"q  x\n" if name == "malformed" else b"d  " + b"y" * 9000 + b"\n"
            listing.write_bytes(lines[0] + lines[1] + bad)
        result = DrillResult("web1")
        check_tree(snap, result)
        assert result.problems == words, (name, result.problems)


def test_the_names_beside_services_keep_their_order_everywhere():
    beside = (MANIFEST_NAME, SIDECAR_NAME, TREE_NAME)
    assert beside == stored.BESIDE_SERVICES
    assert _KEPT == ((MANIFEST_NAME,), (SIDECAR_NAME,), (TREE_NAME,), (".TREE.list.tmp",))
    import datetime as dt

    spec = SnapshotSpec("20261206T000000Z", dt.datetime(2026, 12, 6, tzinfo=dt.UTC))
    assert borg.create_args("web1", spec)[-4:] == ["services", *beside]
    request = RestoreRequest("web1", Path("/nonexistent"), service="app")
    assert request.includes() == ["services/app", *beside]
    request = RestoreRequest("web1", Path("/nonexistent"), path="/srv/x")
    assert request.includes()[1:] == list(beside)


def test_a_walk_error_below_the_list_is_still_an_archive_error(tmp_path):
    """The one change of words: a ValueError of the walk itself (reachable only in a race:
    check_listed's manifest walk meets it first) now names the walked directory, where the
    parent named TREE.list; the type (ArchiveError, exit 1) is the parent's."""
    from pullback.client.restore import _strays
    from pullback.common.errors import ArchiveError

    snap = tmp_path / "snap"
    (snap / "services").mkdir(parents=True)
    (snap / "services/app").write_bytes(b"")  # no directory
    write_manifest(snap)
    with pytest.raises(ArchiveError) as caught:
        _strays(snap, "services/app")
    assert str(caught.value) == f"{snap}/services/app: '{snap}/services/app' is not a directory"
