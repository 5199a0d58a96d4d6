"""helper-165, an outside attacker of the file cache's full-disk handling and
cache_dir checks (e89f163, 2060968), the unpacker's attribute counting (afe4779) and
borg create's --log-json words (04887da).

Each test fails while its defect exists and passes once it is fixed.

Run: .venv/bin/python -m pytest -q -p no:cacheprovider tests/integration/test_attacks_h165.py
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import time
from pathlib import Path

import pytest

from tests.helpers.client import ClientSandbox
from tests.integration.test_attacks_h163 import _box, _refused_by_check

pytestmark = pytest.mark.integration


# -- F1: a cache_dir that is a symbolic link to the archive directory --------------------


def test_f1_cache_dir_symlink_to_archive_dir_is_refused_or_leaves_its_mode(tmp_path):
    """_cache_dir_shared compares os.path.normpath(abspath()) strings: a cache_dir that is
    a symbolic link to the archive directory (an administrator moving the cache to a
    bigger disk by a link) passes `check`, and the run's chmod(0700) follows the link:
    the archive directory loses its 2750 (set-group-id, the serve group's read)."""
    box = _box(tmp_path)
    box.archives.mkdir(parents=True)
    os.chown(box.archives, 0, 65534)
    box.archives.chmod(0o2750)
    link = tmp_path / "cache-link"
    link.symlink_to(box.archives)
    box.write_config(incremental={"enabled": True, "cache_dir": str(link)})
    if _refused_by_check(box):
        return
    result = box.cli("run")
    assert result.returncode == 0, result.stderr
    mode = stat.S_IMODE(box.archives.stat().st_mode)
    assert mode == 0o2750, oct(mode)


def test_f1b_archive_dir_below_a_symlink_same_as_cache_dir_is_refused(tmp_path):
    """The other way round: archive_dir lies below a link (/var/lib/pullback -> a bigger
    disk, /srv/pullback) and cache_dir names the same directory by its real path: the
    same chmod on the same directory, unseen."""
    box = _box(tmp_path)
    real = tmp_path / "big"
    (real / "archives").mkdir(parents=True)
    os.chown(real / "archives", 0, 65534)
    (real / "archives").chmod(0o2750)
    (box.root / "lib").symlink_to(real)
    box.archives = box.root / "lib" / "archives"
    box.write_config(
        archive_dir=str(box.archives),
        incremental={"enabled": True, "cache_dir": str(real / "archives")},
    )
    if _refused_by_check(box):
        return
    result = box.cli("run")
    assert result.returncode == 0, result.stderr
    mode = stat.S_IMODE((real / "archives").stat().st_mode)
    assert mode == 0o2750, oct(mode)


def test_f1c_cache_dir_at_the_metrics_files_directory_is_refused_or_leaves_its_mode(tmp_path):
    """metrics_file is read by node_exporter (textfile collector, another user): with
    cache_dir its directory (/var/lib/prometheus/node-exporter), `check` says ok and the
    run makes the directory 0700: node_exporter no longer reads the metrics, and the
    alerts built on them go silent (pullback_last_success ... absent)."""
    box = _box(tmp_path)
    textfile = tmp_path / "node-exporter"
    textfile.mkdir()
    textfile.chmod(0o755)
    box.write_config(
        metrics_file=str(textfile / "pullback.prom"),
        incremental={"enabled": True, "cache_dir": str(textfile)},
    )
    if _refused_by_check(box):
        return
    result = box.cli("run")
    assert result.returncode == 0, result.stderr
    mode = stat.S_IMODE(textfile.stat().st_mode)
    assert mode == 0o755, oct(mode)


# -- F2: the new cache cannot be put in place (rename at swap) ---------------------------

RENAME_FAILS = '''\
"""Test fault: the cache disk refuses the rename of files.db.new (rename(2) says ENOSPC
when a directory has no room for the new entry; EIO, EROFS when the disk goes bad)."""
import errno
import contextlib
import os
import shutil

_rename = os.rename


def _failing(src, dst, *args, **kwargs):
    if str(src).endswith("files.db.new"):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(src))
    return _rename(src, dst, *args, **kwargs)


os.rename = _failing
'''


def test_f2_a_cache_that_cannot_be_renamed_in_place_does_not_fail_a_published_run(tmp_path):
    """swap() runs after the archive is published; its rename (or fsync_dir) raising
    OSError escapes the run: "the run stopped: ...", exit 1, a failure reported for a
    day whose archive was published, and files.db.new left behind. The commit says a
    cache never fails a run (FileCache._drop: "a day is never lost for it")."""
    box = _box(tmp_path)
    first = box.cli("run")
    assert first.returncode == 0, first.stderr
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "rename_fails.py").write_text(RENAME_FAILS)
    box.write_config(plugin_dirs=[str(plugins)], incremental={"enabled": True})
    (box.data / "f1.txt").write_text("changed\n")
    second = box.cli("run")
    assert len(box.published()) == 2, second.stderr
    assert second.returncode == 0, second.stderr
    assert "cannot write the file cache in" in second.stderr, second.stderr
    assert not (box.root / "cache" / "files.db.new").exists()


# -- held: a delta whose cache disk fills mid-run ----------------------------------------


def _gated(box: ClientSandbox, tmp_path: Path) -> tuple[Path, Path]:
    gate, reached = tmp_path / "gate", tmp_path / "reached"
    box.add_service(
        "zgate",
        f"""\
        service: {{name: zgate}}
        command:
          dump:
            - run: ["sh", "-c", "touch {reached}; while [ -e {gate} ]; do sleep 0.05; done; echo x"]
              output: x.txt
        """,
    )
    return gate, reached


def _fill(where: Path) -> None:
    fd = os.open(where / "ballast", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        while True:
            os.write(fd, b"\0" * 4096)
    except OSError:
        pass
    finally:
        os.close(fd)


def test_held_a_delta_whose_cache_disk_fills_mid_run_is_published_whole(tmp_path, tmpfs):

    box = _box(tmp_path)
    cache = tmpfs(tmp_path / "cache", "size=2m")
    box.write_config(incremental={"enabled": True, "cache_dir": str(cache)})
    gate, reached = _gated(box, tmp_path)
    first = box.cli("run")
    assert first.returncode == 0, first.stderr
    time.sleep(2.1)  # (past the racy-clean window)
    (box.data / "f1.txt").write_text("changed\n")
    (box.data / "f2.txt").unlink()
    (box.data / "new.txt").write_text("new\n")
    gate.touch()
    reached.unlink(missing_ok=True)
    proc = box.popen("run")
    for _ in range(1200):
        if reached.exists():
            break
        time.sleep(0.05)
    _fill(cache)
    gate.unlink()
    _out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert "cannot write the file cache in" in err, err
    newest = box.published()[-1]
    assert box.sidecar(newest)["archive"]["kind"] == "delta"
    assert sorted(p.name for p in cache.iterdir()) == ["ballast"]
    target = tmp_path / "restored"
    restore = box.cli("restore", "--service", "app", "--from", str(newest), "--target", str(target))
    assert restore.returncode == 0, restore.stderr
    got = {p.name: p.read_bytes() for p in (target / str(box.data).lstrip("/")).iterdir()}
    want = {p.name: p.read_bytes() for p in box.data.iterdir()}
    assert got == want
    (cache / "ballast").unlink()
    third = box.cli("run")
    assert third.returncode == 0, third.stderr
    assert box.sidecar(box.published()[-1])["archive"]["kind"] == "full"


# -- F3: tiny extended attributes cost btrfs far more than the bytes counted -------------

MIB = 1 << 20


def test_f3_many_tiny_xattrs_cannot_write_past_min_free_by_more_than_64_mib(own_btrfs):
    """afe4779 counts an attribute as len(name) + len(value) of its PAX record (twice for
    the looks: "btrfs keeps metadata twice"), and a look comes every 64 MiB so counted
    or 10,000 members, "so it errs by less than 64 MiB". btrfs stores each attribute as
    an item of its own (a 25-byte item header and a 30-byte dir_item besides the name
    and value): 5,000 one-byte attributes on each of 280 empty files, 1.4 million in
    all, counted under 64 MiB between two looks, are far more than that on disk."""
    from pullback.common.archive.unpack import ArchiveTooLarge, UnpackLimits
    from tests.helpers.archives import Entry
    from tests.unit.test_unpack import unpack

    entries = [
        Entry(
            f"services/a/{n:04}",
            pax=[(f"SCHILY.xattr.user.k{i:04}".encode(), b"v") for i in range(5000)],
        )
        for n in range(280)
    ]
    os.sync()
    free = shutil.disk_usage(own_btrfs).free
    min_free = free - 20 * MIB
    with contextlib.suppress(ArchiveTooLarge):  # (refused late is as bad as not)
        unpack(own_btrfs / "s", entries, UnpackLimits(min_free=min_free))
    os.sync()
    left = shutil.disk_usage(own_btrfs).free
    assert left > min_free - 64 * MIB, f"{(free - left) // MIB} MiB written, {min_free=}"


# -- F4: directories made for long member names are neither counted nor looked at --------


def test_f4_directories_of_long_member_names_cannot_write_past_min_free_by_64_mib(own_btrfs):
    """A member's name may hold 4,095 bytes: 15 components of 250 bytes, each a new
    directory the unpacker makes (its parents need no member of their own). Neither the
    directories nor their names count as bytes (nor as members: 9,990 members, under the
    10,000 of a look, make 150,000 directories), so between two looks staging takes far
    more than the 64 MiB the looks may err by. Refused late is as bad as not."""
    from pullback.common.archive.unpack import ArchiveTooLarge, UnpackLimits
    from tests.helpers.archives import Entry
    from tests.unit.test_unpack import unpack

    def name(n: int) -> str:
        parts = [f"{n:05}" + "d" * 245] + ["e" * 250] * 14
        return "services/a/" + "/".join(parts) + "/f"

    entries = [Entry(name(n)) for n in range(9990)]
    os.sync()
    free = shutil.disk_usage(own_btrfs).free
    min_free = free - 20 * MIB
    with contextlib.suppress(ArchiveTooLarge):
        unpack(own_btrfs / "s", entries, UnpackLimits(min_free=min_free))
    os.sync()
    left = shutil.disk_usage(own_btrfs).free
    assert left > min_free - 64 * MIB, f"{(free - left) // MIB} MiB written, {min_free=}"


# -- F5: "pullback-client check says why" of a full cache disk, and check says ok --------


def test_f5_check_says_why_a_full_cache_disk_lost_the_cache(tmp_path, tmpfs):
    """The lost cache's warning sends the administrator to `pullback-client check`
    ("...; the archive was made and published, and the next run makes a full one
    (pullback-client check says why)"); check prints "ok" and nothing of the disk: a
    full cache disk makes every archive a full one while check says all is well."""
    box = _box(tmp_path)
    cache = tmpfs(tmp_path / "cache", "size=2m")
    box.write_config(incremental={"enabled": True, "cache_dir": str(cache)})
    first = box.cli("run")
    assert first.returncode == 0, first.stderr
    _fill(cache)
    run = box.cli("run")
    assert run.returncode == 0, run.stderr
    assert "pullback-client check says why" in run.stderr, run.stderr
    check = box.cli("check")
    said = check.stdout + check.stderr
    assert "cache" in said and ("space" in said or "full" in said), said
