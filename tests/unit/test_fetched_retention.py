"""The client's ``fetched/``: what ``fetched_keep`` keeps, and what retention around it
must never lose or choke on (an outside review of the retention code found each case).

The archives are small files with real sidecars (the parser reads them as a run's)."""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

import pytest

from pullback.common.archive.directory import (
    FETCHED_DIR,
    MARKS_DIR,
    apply_retention,
    keep_fetched,
)
from pullback.common.archive.sidecar import ArchiveInfo, ArchiveKind, BaseRef, Sidecar
from pullback.common.outcome import Status

NOW = dt.datetime(2026, 1, 2, tzinfo=dt.UTC)


@pytest.fixture
def archives(tmp_path) -> Path:
    """An archive directory with its marks directory."""
    root = tmp_path / "archives"
    (root / MARKS_DIR).mkdir(parents=True)
    return root


def put(directory: Path, second: int, base: str = "", ok: bool = True, stamp: str = "") -> str:
    """Publish ``web1-<stamp>.tar.zst`` (2026-01-01, ``second`` seconds past midnight,
    unless ``stamp`` says otherwise) with a valid sidecar: a delta on ``base`` when
    given, a failed service unless ``ok``. Returns its name."""
    stamp = stamp or f"20260101T0000{second:02d}Z"
    name = f"web1-{stamp}.tar.zst"
    info = ArchiveInfo(
        name,
        10,
        "0" * 64,
        "zstd",
        kind=ArchiveKind.DELTA if base else ArchiveKind.FULL,
        manifest_sha256="1" * 64,
        base=BaseRef(base, "1" * 64) if base else None,
    )
    status = Status.OK if ok else Status.PARTIAL
    sidecar = Sidecar("web1", stamp, "2026-01-01T00:00:00Z", "0.3.0", status, info, [])
    directory.mkdir(parents=True, exist_ok=True)
    (directory / name).write_bytes(b"x" * 10)
    (directory / (name + ".json")).write_text(sidecar.to_json())
    return name


def mark(archives: Path, name: str) -> None:
    """What the serve endpoint leaves when the server stored ``name``."""
    (archives / MARKS_DIR / name).touch()


def present(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.glob("*.tar.zst"))


def retention(archives: Path, fetched_keep: int) -> list[str]:
    return apply_retention(archives, keep_last=10, keep_days=30, now=NOW, fetched_keep=fetched_keep)


def test_fetched_keep_never_deletes_the_newest_good_archive(archives):
    """The newest archive in which every service succeeded moved to ``fetched/`` with a
    newer full archive whose service failed: ``fetched_keep: 1`` kept the failed one and
    deleted the good one, which local retention promises to keep."""
    good = put(archives, 1)
    failed = put(archives, 2, ok=False)
    put(archives, 3, ok=False)  # the newest: stays in place
    mark(archives, good)
    mark(archives, failed)
    retention(archives, fetched_keep=1)
    assert present(archives / FETCHED_DIR) == [good, failed]


def test_fetched_keep_0_keeps_only_the_newest_good_archive(archives):
    """``fetched_keep: 0`` deletes every archive of ``fetched/``, a delta whose full
    archive is still in the archive directory too, but the newest archive in which every
    service succeeded (with the chain it needs)."""
    full = put(archives, 1)
    delta = put(archives / FETCHED_DIR, 2, base=full)
    put(archives, 3, ok=False)
    assert keep_fetched(archives, 0, NOW) == []  # the delta is the newest good archive
    put(archives, 4)
    assert keep_fetched(archives, 0, NOW) == [delta]


def test_a_directory_named_like_a_sidecar_fails_no_retention(archives):
    """A directory ``X.json`` beside a gone archive made every retention raise
    IsADirectoryError (and so fail every run); it is left alone now."""
    gone = put(archives, 1)
    put(archives, 2)
    (archives / gone).unlink()
    (archives / (gone + ".json")).unlink()
    (archives / (gone + ".json")).mkdir()
    stray = archives / FETCHED_DIR / "web1-20260101T000009Z.tar.zst.json"
    stray.parent.mkdir()
    stray.symlink_to("/etc/passwd")
    retention(archives, fetched_keep=1)
    retention(archives, fetched_keep=1)
    assert (archives / (gone + ".json")).is_dir() and stray.is_symlink()


def test_fetched_keep_applies_without_a_new_move(archives):
    """``keep_fetched`` ran only when a move happened in the same run: a lowered
    ``fetched_keep``, or a move a crash cut short (finished by the next run), left
    ``fetched/`` over the limit until the next move."""
    fetched = archives / FETCHED_DIR
    old = put(fetched, 1)
    cut = put(fetched, 2)
    os.rename(fetched / (cut + ".json"), archives / (cut + ".json"))  # the crash
    put(archives, 3)
    retention(archives, fetched_keep=2)
    assert present(fetched) == [old, cut]  # the move finished; two kept
    retention(archives, fetched_keep=1)  # lowered, nothing marked
    assert present(fetched) == [cut]


def test_an_archive_dated_ahead_does_not_let_the_real_newest_move(archives):
    """ "Never the newest" took the newest by stamp: a stray archive dated 2099 let a mark
    (a stolen server key) move the real newest archive, and ``fetched_keep: 0`` deleted
    it. The newest archive not dated ahead of the clock stays too."""
    real = put(archives, 1, ok=False)
    stray = put(archives, 0, stamp="20990101T000000Z")
    mark(archives, real)
    mark(archives, stray)
    retention(archives, fetched_keep=0)
    assert present(archives) == [real, stray]
    assert sorted(os.listdir(archives / MARKS_DIR)) == [real, stray]  # still owed a move
