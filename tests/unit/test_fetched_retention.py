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
    NEWEST_STORED,
    apply_chain_retention,
    apply_retention,
    keep_fetched,
    newest_stored,
)
from tests.helpers.archives import listed_sidecar

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
    sidecar = listed_sidecar(name, stamp, base, ok)
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


@pytest.mark.parametrize("how", ["fetched", "chain"])
def test_a_good_delta_whose_chain_is_broken_never_takes_the_good_full_archives_place(archives, how):
    """Two rules for "the newest good archive": ``keep_fetched`` skipped a delta whose
    base is gone (it restores nothing), local and chain retention did not, so they kept
    that delta and deleted the good full archive before it, the only one that restores
    with every service. One rule now (``newest_good_chain``), in every retention."""
    good = put(archives, 0, stamp="20251201T000000Z")
    broken = put(archives, 0, stamp="20251215T000000Z", base="web1-20251210T000000Z.tar.zst")
    put(archives, 0, stamp="20260101T120000Z", ok=False)  # the newest: a service failed
    if how == "fetched":
        mark(archives, good)
        mark(archives, broken)
        apply_retention(archives, keep_last=1, keep_days=1, now=NOW, fetched_keep=1)
        assert good in present(archives / FETCHED_DIR)
    else:
        apply_chain_retention(archives, "web1", now=NOW)
        assert good in present(archives)


def test_an_entry_retention_cannot_delete_is_a_warning_not_a_failed_run(archives, caplog):
    """A directory named like a fetched archive's sidecar made ``keep_fetched`` (which
    runs every run) raise IsADirectoryError, so every run failed: the archive is left
    in place with a warning, and the rest of retention goes on."""
    old = put(archives / FETCHED_DIR, 1)
    (archives / FETCHED_DIR / (old + ".json")).unlink()
    (archives / FETCHED_DIR / (old + ".json")).mkdir()
    put(archives / FETCHED_DIR, 2)
    put(archives, 3)
    retention(archives, fetched_keep=1)
    assert old in present(archives / FETCHED_DIR)
    assert f"cannot delete {archives / FETCHED_DIR / old}.json" in caplog.text


def test_an_archive_dated_ahead_in_fetched_takes_no_fetched_keep_slot(archives):
    """A stray full archive dated 2030 in ``fetched/`` counted as the newest kept one,
    so with ``fetched_keep: 1`` every archive the server stored went as it moved."""
    put(archives / FETCHED_DIR, 0, stamp="20300101T000000Z", ok=False)
    stored = put(archives, 1, ok=False)
    put(archives, 2)  # the newest, good
    mark(archives, stored)
    retention(archives, fetched_keep=1)
    assert stored in present(archives / FETCHED_DIR)


def test_an_archive_that_cannot_move_stays_marked_and_moves_next_run(archives, caplog):
    """A directory of the archive's name in ``fetched/`` (or ``fetched/`` on another file
    system) made the move raise and the run fail: it is a warning now, the archive stays
    in place with its mark, and a later run moves it."""
    stored = put(archives, 1)
    put(archives, 2)
    mark(archives, stored)
    (archives / FETCHED_DIR / stored).mkdir(parents=True)
    retention(archives, fetched_keep=1)
    assert stored in present(archives) and f"cannot move {stored}" in caplog.text
    assert os.listdir(archives / MARKS_DIR) == [stored]
    (archives / FETCHED_DIR / stored).rmdir()
    retention(archives, fetched_keep=1)
    assert present(archives / FETCHED_DIR) == [stored]
    assert os.listdir(archives / MARKS_DIR) == []


def test_an_archive_dated_ahead_takes_no_keep_last_place(archives):
    """With ``keep_last: 1``, a stray archive dated ahead of the clock took the one place,
    so a run deleted the partial archive it had just published (its good services never
    reached the server). ``keep_days`` keeps the stray; the newest real archive stays."""
    put(archives, 1)
    stray = put(archives, 0, stamp="20260105T000000Z")
    partial = put(archives, 2, ok=False)
    assert apply_retention(archives, keep_last=1, keep_days=0, now=NOW) == []
    assert present(archives) == sorted(["web1-20260101T000001Z.tar.zst", partial, stray])


def test_superseded_deltas_take_no_keep_last_place(archives):
    """After deltas were switched off, the old chain's deltas (deleted as superseded)
    filled ``keep_last: 3`` and pushed the full archive before them out."""
    old = put(archives, 1)
    first = put(archives, 2, base=old)
    put(archives, 3, base=first)
    new = put(archives, 4)
    apply_retention(archives, keep_last=3, keep_days=0, now=NOW)
    assert present(archives) == [old, new]


def test_the_newest_stored_archive_is_remembered_past_retention(archives):
    """``pullback-client list`` told a superseded archive by the marks and ``fetched/``,
    which retention empties: after ``fetched_keep: 0`` deleted the stored archive, an
    older one no pull takes showed "ready" again. The newest stored name is kept."""
    good = put(archives, 1)
    stored = put(archives, 2, ok=False)
    mark(archives, stored)
    put(archives, 3, ok=False)
    retention(archives, fetched_keep=0)
    assert present(archives / FETCHED_DIR) == [] and good in present(archives)
    assert newest_stored(archives) == "20260101T000002Z"
    (archives / NEWEST_STORED).write_text("../../etc/passwd\n")  # not a name: ignored
    assert newest_stored(archives) == ""


def unreadable(directory: Path, second: int) -> str:
    """An archive whose sidecar is damaged (cut in half): it may be full or a delta."""
    name = put(directory, second)
    side = directory / (name + ".json")
    side.write_bytes(side.read_bytes()[:40])
    return name


@pytest.mark.parametrize("mode", ["chain", "classic"])
def test_an_archive_whose_sidecar_cannot_be_read_goes_once_everything_as_old_has(
    archives, mode, caplog
):
    """Kept for ever before (an outside review), against the archive directory's bound:
    once every complete archive as old has gone, it goes too, said in the log."""
    damaged = unreadable(archives, 1)
    full = put(archives, 2)
    delta = put(archives, 3, base=full)
    newest_full = put(archives, 4)
    if mode == "chain":
        removed = apply_chain_retention(archives, "web1", NOW)
    else:
        removed = apply_retention(archives, keep_last=1, keep_days=0, now=NOW)
    assert damaged in removed and full in removed and delta in removed
    assert present(archives) == [newest_full]
    assert f"{damaged}'s sidecar cannot be read" in caplog.text


@pytest.mark.parametrize("mode", ["chain", "classic"])
def test_an_archive_whose_sidecar_cannot_be_read_stays_while_it_may_be_needed(archives, mode):
    """Newer than an archive that stays, or the base a kept delta names, or with no
    complete archive left to judge by: it stays (it may be the chain's full archive)."""
    older = put(archives, 1)
    damaged = unreadable(archives, 2)
    delta = put(archives, 3, base=damaged)
    if mode == "chain":
        apply_chain_retention(archives, "web1", NOW)
    else:
        apply_retention(archives, keep_last=5, keep_days=0, now=NOW)
    assert damaged in present(archives) and delta in present(archives)
    if mode == "classic":
        assert older in present(archives)  # keep_last 5: everything stays

    alone = archives.parent / "alone"
    (alone / MARKS_DIR).mkdir(parents=True)
    only = unreadable(alone, 1)
    assert apply_chain_retention(alone, "web1", NOW) == []
    assert apply_retention(alone, keep_last=0, keep_days=0, now=NOW) == []
    assert present(alone) == [only]


def test_the_marks_directory_is_made_where_a_set_gid_bit_is_refused(tmp_path, monkeypatch):
    """Under the client's unit (RestrictSUIDSGID=) a chmod naming a set-gid bit fails
    with EPERM: on a new disk mounted at the archive directory, every run failed "is not
    a directory of its own" (helper-150 F1). It is made 0770 then, the group's."""
    import errno
    import stat

    from pullback.common.archive import directory

    real = os.fchmod

    def restricted(fd, mode):
        if mode & (stat.S_ISUID | stat.S_ISGID):
            raise PermissionError(errno.EPERM, "Operation not permitted")
        real(fd, mode)

    monkeypatch.setattr(os, "fchmod", restricted)
    directory.prepare_marks(tmp_path)
    made = (tmp_path / directory.MARKS_DIR).stat()
    assert stat.S_IMODE(made.st_mode) == 0o770 and made.st_gid == tmp_path.stat().st_gid
    directory.prepare_marks(tmp_path)  # the next run: as it is
    monkeypatch.setattr(os, "fchmod", real)
    directory.prepare_marks(tmp_path)  # by hand, outside the unit: the package's mode
    assert stat.S_IMODE((tmp_path / directory.MARKS_DIR).stat().st_mode) == 0o2770
