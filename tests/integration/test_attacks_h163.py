"""helper-163, a newcomer following the documentation of incremental (delta) archives.

The findings that need no booted root: a ``cache_dir`` that `check` accepts but that a
run then destroys or uses to break the directories around it (F1), and places where
the documentation of deltas says other than what a run does (F2-F4). Each test fails
while its defect exists; tests/system/test_newcomer_h163.py has the scenarios in a
booted Debian 12 root.

Run: .venv/bin/python -m pytest -q -p no:cacheprovider tests/integration/test_attacks_h163.py
"""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path

import pytest

from tests.helpers.client import ClientSandbox

pytestmark = pytest.mark.integration

ROOT_DIR = Path(__file__).resolve().parents[2]
MIB = 1 << 20


def _box(tmp_path: Path, **incremental) -> ClientSandbox:
    box = ClientSandbox(tmp_path / "client")
    data = tmp_path / "data"
    data.mkdir()
    for i in range(20):
        (data / f"f{i}.txt").write_text(f"file {i}\n" * 50)
    box.data = data  # type: ignore[attr-defined]
    box.add_service("app", f"service: {{name: app}}\nfiles: {{paths: [{data}]}}\n")
    box.write_config(incremental={"enabled": True, **incremental})
    return box


def _run(box: ClientSandbox, *args: str):
    result = box.cli("run", *args)
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def _kind(box: ClientSandbox) -> str:
    return box.sidecar(box.published()[-1])["archive"]["kind"]


def _refused_by_check(box: ClientSandbox) -> bool:
    """Whether `pullback-client check` refuses incremental.cache_dir (exit 2, naming it):
    one of the two fixes of F1."""
    check = box.cli("check")
    if check.returncode == 2 and "incremental.cache_dir" in check.stdout + check.stderr:
        return True
    assert check.returncode == 0, check.stdout + check.stderr
    return False


# -- F1: a cache_dir that is (or holds) one of the client's own directories ---------------


def test_f1a_cache_dir_in_work_dir_makes_every_archive_full_while_check_says_ok(tmp_path):
    """F1a: configuration.md: cache_dir is "the file cache (root's ...). Losing it costs one
    full archive". With cache_dir the work_dir (`/var/lib/pullback/work`, one run's
    dumps), `check` says ok, and every run removes files.db as "leftovers of an
    interrupted run": every archive is a full one, for ever, and nothing says why."""
    box = _box(tmp_path)
    box.write_config(incremental={"enabled": True, "cache_dir": str(box.work)})
    if _refused_by_check(box):
        return
    _run(box)
    (box.data / "f1.txt").write_text("changed\n")
    second = _run(box)
    assert "leftovers of an interrupted run: files.db" not in second.stderr, second.stderr
    assert _kind(box) == "delta", second.stderr


def test_f1b_cache_dir_at_the_archive_dir_leaves_its_mode_for_the_serve_endpoint(tmp_path):
    """F1b: cache_dir: /var/lib/pullback/archives (the archive directory, 2750
    root:pullback when packaged) passes `check`; the run makes it 0700, the set-group-id
    bit gone: the server's pulls fail ("Permission denied: .../.fetched-marks"), and once
    cache_dir is put back the directory stays 0750 without set-group-id, so every new
    archive is root:root 0640 and unreadable by the serve endpoint: backups stop for good
    while `check` says ok."""
    box = _box(tmp_path)
    box.archives.mkdir(parents=True)
    os.chown(box.archives, 0, 65534)
    box.archives.chmod(0o2750)
    box.write_config(incremental={"enabled": True, "cache_dir": str(box.archives)})
    if _refused_by_check(box):
        return
    _run(box)
    mode = box.archives.stat().st_mode
    assert stat.S_IMODE(mode) == 0o2750, oct(stat.S_IMODE(mode))


def test_f1c_cache_dir_at_the_pullback_home_leaves_its_mode(tmp_path):
    """F1c: cache_dir: /var/lib/pullback (the pullback user's home, 0750 root:pullback,
    holding .ssh/authorized_keys and the archive directory) passes `check`; the run
    makes it 0700, so sshd no longer reads the pullback user's authorized_keys: the pull
    fails with "the client refused the server's key for user pullback: add it to that
    user's authorized_keys", a wrong lead, and it stays so after cache_dir is put back."""
    box = _box(tmp_path)
    home = tmp_path / "client"
    os.chown(home, 0, 65534)
    home.chmod(0o750)
    box.write_config(incremental={"enabled": True, "cache_dir": str(home)})
    if _refused_by_check(box):
        return
    _run(box)
    assert stat.S_IMODE(home.stat().st_mode) == 0o750, oct(stat.S_IMODE(home.stat().st_mode))


# -- F5: a file cache on a full disk costs the day ---------------------------------------


def test_f5_a_file_cache_on_a_full_disk_never_costs_a_day(tmp_path, tmpfs):
    """F5: client.md, *How the client knows a file did not change*: "A cache the run
    cannot write (a `cache_dir` outside the unit's writable paths, a full disk) never
    costs a day: the run makes a full archive without it and warns ("cannot write the
    file cache in ...; this archive is a full one, made without it")". Only a cache that
    cannot be opened is handled (``plan_incremental``: OSError from ``cache.start()``);
    a cache whose disk fills while the run writes its rows raises sqlite3's
    OperationalError, and every run fails, nothing published, while `check` says ok:
    inside the archive writer, exit 1, "no archive was published: the archive broke off
    in the middle of <a data file> (OperationalError)" (the booted root), or in
    ``cache.finish``, exit 70, "an internal error ended the run (OperationalError; ...
    please report it)" (here)."""
    box = _box(tmp_path)
    for i in range(2000):
        (box.data / f"m{i}").write_text(f"{i}\n")
    cache = tmpfs(tmp_path / "cache", "size=40k")
    box.write_config(incremental={"enabled": True, "cache_dir": str(cache)})
    check = box.cli("check")
    assert check.returncode == 0, check.stdout + check.stderr
    kinds = []
    for _ in range(2):
        result = box.cli("run")
        assert result.returncode == 0, result.stderr
        assert "cannot write the file cache in" in result.stderr, result.stderr
        kinds.append(_kind(box))
    assert kinds == ["full", "full"]  # (the next run full: the cache that was left is gone)
    assert list(cache.iterdir()) == []


# -- F2: upgrading.md's bound on the archive directory leaves out the newest delta -------


def test_f2_upgrading_md_bound_on_the_chain_counts_its_newest_delta(tmp_path):
    """F2: client.md (*Disk on the client*) and configuration.md bound the chain at
    (1 + full_ratio) times a full archive *plus its newest delta*; upgrading.md says the
    directory holds "at most (1 + full_ratio) times a full archive". Measured here: the
    chain passes (1 + full_ratio) x full by its newest delta, as client.md says, so
    upgrading.md's bound is wrong."""
    box = _box(tmp_path)
    big = box.data / "big.bin"
    big.write_bytes(os.urandom(2 * MIB))
    _run(box)
    full = box.published()[0].stat().st_size
    most = 0
    for _ in range(6):
        with big.open("ab") as f:
            f.write(os.urandom(400 * 1024))
        _run(box)
        if _kind(box) == "full":
            break
        most = max(most, sum(p.stat().st_size for p in box.published()))
    assert most > 1.5 * full  # the newest delta takes the chain past (1 + 0.5) x full
    text = " ".join((ROOT_DIR / "docs/upgrading.md").read_text().split())
    said = re.search(
        r"the directory holds at most \(1 \+ `full_ratio`\) times a full archive[^.]*", text
    )
    assert said is not None
    assert "delta" in said.group(0), said.group(0)


# -- F3: the chain-length limit is not among the documented reasons for a full -----------


def test_f3_the_hundredth_archive_full_reason_is_documented(tmp_path):
    """F3: client.md's *When a full archive is made* lists the first run, full_every,
    full_ratio, the file cache, the server's request and --full. A chain of 100 archives
    also ends in a full archive ("the chain since ... has 100 archives (at most 100)"),
    which client.md and configuration.md do not name: an administrator with a short
    min_interval (hourly runs: 168 a week) sees full archives long before full_every.
    (Helper-163 ran the client 101 times, 105 s in CI; here two runs make a full archive
    and a delta, and the client's rule is asked of a chain of that delta 98 and 99 times
    over.)"""
    import datetime as dt

    from pullback.client.config import load_client_config
    from pullback.client.incremental import full_due, own_archives
    from pullback.common.archive.sidecar import MAX_CHAIN

    box = _box(tmp_path)
    (box.data / "big.bin").write_bytes(os.urandom(MIB))  # 100 small deltas stay in full_ratio
    _run(box)
    (box.data / "f1.txt").write_text("day 1\n")
    _run(box)
    config = load_client_config(box.config)
    now = dt.datetime.now(dt.UTC)
    full, delta = own_archives(config, now)
    assert _kind(box) == "delta" and MAX_CHAIN == 100
    assert full_due(config, [full] + [delta] * (MAX_CHAIN - 2), now) is None
    reason = full_due(config, [full] + [delta] * (MAX_CHAIN - 1), now) or ""
    assert "has 100 archives (at most 100)" in reason, reason
    client_md = " ".join((ROOT_DIR / "docs/client.md").read_text().split())
    when = client_md.split("**When a full archive is made:**", 1)[1].split("**", 1)[0]
    assert re.search(r"\b100\b", when), when


# -- F4: an incompressible file written just before a run is cut before its first change -


def test_f4_a_photo_read_again_is_cut_before_its_first_change_as_the_docs_say(tmp_path):
    """F4: client.md (*What a delta is*), architecture.md (*Which files are cut*) and
    upgrading.md said a 1-16 MiB file whose bytes do not compress (a photo) and that has
    no chunk list yet is cut at its first change, "which travels whole once". A photo
    written within 2 seconds before the run that first archives it is read again by the
    next run, and that unchanged re-read cuts it: its first change then travels as
    45 KiB of a 4 MiB file. Cheaper, and now what the pages say. (Its mtime is set
    ahead here, which the cache never trusts either: the test does not hang on how soon
    the run starts.)"""
    import time

    box = _box(tmp_path)
    _run(box)
    (box.data / "f1.txt").write_text("day two\n")
    _run(box)
    assert _kind(box) == "delta"
    photo = box.data / "photo.jpg"
    photo.write_bytes(os.urandom(4 * MIB))
    ahead = time.time() + 3600
    os.utime(photo, (ahead, ahead))
    _run(box, "--full")  # (a full: the photo alone would pass full_ratio of this small tree)
    _run(box)  # a day on which the photo did not change: it is read again, and cut
    with photo.open("r+b") as f:
        f.seek(2 * MIB)
        f.write(b"X")
    _run(box)
    assert _kind(box) == "delta"
    assert box.published()[-1].stat().st_size < MIB  # its chunk, not the whole photo
    for page in ("docs/client.md", "docs/architecture.md", "docs/upgrading.md"):
        text = " ".join((ROOT_DIR / page).read_text().split())
        assert re.search(r"written (just|in the 2 seconds|within 2 s)", text), page
