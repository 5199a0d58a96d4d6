"""Outside review (helper-94) of the changes of 2026-12-05 (83d1986..8b80b40): hard links
against max_unpacked_size, make_dirs_at, before_restore.hand_over and the command
restore's tidy-up.

Six defects were found (each written first as a strict xfail, then mended the same
day: the tidy-up by descriptor, a symlinked task directory refused in an archive too,
hand_over only within the snapshot, a directory renamed in after its mkdir refused,
notes escaped on standard output, the safety directory checked before anything is
restored); what held was a plain test from the start. Everything is real (the CLI, runuser, a
forked or runuser'd ``nobody``) except the one forced race of make_dirs_at, which wraps
``os.mkdir`` as the existing forced-race tests do (said in its docstring).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pullback.common import fsutil
from pullback.common.archive import tarformat
from pullback.common.archive.unpack import ArchiveTooLarge, UnpackLimits
from tests.helpers.archives import Entry, build_tar, publish
from tests.helpers.client import ClientSandbox
from tests.unit.test_unpack import unpack

NOBODY = 65534
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (chown, runuser)")


def restore(box: ClientSandbox, source: Path, *args: str, service: str, env=None):
    return box.cli("restore", "--service", service, "--from", str(source), *args, env=env)


def dirs_to(top: str, rel: str) -> list[Entry]:
    """Directory members services/, services/<svc>, the task dir ``top`` and every
    directory of ``rel`` below it except its last component."""
    parts = top.split("/")
    out = [
        Entry("/".join(parts[: i + 1]), tarformat.DIRTYPE, mode=0o755) for i in range(len(parts))
    ]
    rel_parts = rel.split("/")
    for i in range(1, len(rel_parts)):
        out.append(Entry(top + "/" + "/".join(rel_parts[:i]), tarformat.DIRTYPE, mode=0o755))
    return out


# --- 1. hard links against max_unpacked_size (held) ------------------------------------


def test_links_to_links_count_their_target_each(tmp_path):
    """Held: a chain of links (each to the link before) counts the 1 MiB target each time."""
    entries = [Entry("services/a/big", data=bytes(1 << 20))]
    previous = "services/a/big"
    for i in range(8):
        entries.append(Entry(f"services/a/l{i}", tarformat.LNKTYPE, linkname=previous))
        previous = f"services/a/l{i}"
    with pytest.raises(ArchiveTooLarge):
        unpack(tmp_path / "s", entries, UnpackLimits(max_size=5 << 20))


def test_an_inode_linked_small_cannot_grow_through_an_old_name_of_staging(tmp_path):
    """Held: staging holds x and y as one inode (yesterday's archive); today x is written
    in place at 1 byte, ten links to x count 1 byte each, then y comes as 4 MiB. Were y
    rewritten in place, restic would read 11 names of 4 MiB while 4 MiB was counted; y
    is written apart (x's inode was written by this archive), so every name's size
    together stays within what was counted."""
    staging = tmp_path / "s"
    unpack(
        staging,
        [
            Entry("services/a/x", data=b"1"),
            Entry("services/a/y", tarformat.LNKTYPE, linkname="services/a/x"),
        ],
    )
    assert os.stat(staging / "services/a/y").st_nlink == 2
    limit = 5 << 20
    links = [
        Entry(f"services/a/l{i}", tarformat.LNKTYPE, linkname="services/a/x") for i in range(10)
    ]
    unpack(
        staging,
        [Entry("services/a/x", data=b"2"), *links, Entry("services/a/y", data=bytes(4 << 20))],
        UnpackLimits(max_size=limit),
    )
    read_by_restic = sum(p.lstat().st_size for p in (staging / "services/a").iterdir())
    assert read_by_restic <= limit


# --- 2. make_dirs_at ---------------------------------------------------------------------


@needs_root
def test_a_directory_renamed_in_after_the_mkdir_is_not_handed_to_the_model_s_owner(
    tmp_path, monkeypatch
):
    """A forced race (said here, as test_make_dirs_at's): ``home`` is nobody's and holds
    ``rootdir``, root's 0700 with a 0600 secret (a directory root made or restored
    there). Right after root's mkdir of ``app``, nobody renames it away and renames
    ``rootdir`` to ``app`` (same parent: no write permission on rootdir needed). The
    snapshot's model of ``app`` is nobody's 0777."""
    home = tmp_path / "home"
    home.mkdir()
    os.chown(home, NOBODY, NOBODY)
    rootdir = home / "rootdir"
    rootdir.mkdir(mode=0o700)
    (rootdir / "secret").write_text("root's")
    (rootdir / "secret").chmod(0o600)
    inode = rootdir.stat().st_ino
    model = tmp_path / "model"
    model.mkdir()
    model.chmod(0o777)
    os.chown(model, NOBODY, NOBODY)
    real_mkdir = os.mkdir

    def mkdir_then_rename_in(name, mode=0o777, *, dir_fd=None):
        real_mkdir(name, mode, dir_fd=dir_fd)
        if name == "app":  # as the owner of home
            os.rename(name, "app.x", src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
            os.rename("rootdir", name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)

    monkeypatch.setattr(fsutil.os, "mkdir", mkdir_then_rename_in)
    with contextlib.suppress(OSError):  # refused: what a fix may do
        os.close(fsutil.make_dirs_at(home / "app/data", lambda d: model))
    monkeypatch.undo()
    (victim,) = [p for p in home.iterdir() if p.stat().st_ino == inode]
    st = victim.stat()
    assert (stat.S_IMODE(st.st_mode), st.st_uid) == (0o700, 0), (
        f"root's directory (now {victim.name}) is uid {st.st_uid}, mode {oct(st.st_mode)}"
    )


@needs_root
def test_a_fifo_or_an_untrusted_symlink_planted_at_a_missing_directory_s_name_is_an_error(
    tmp_path,
):
    """Held: a FIFO nobody planted in their directory is never opened as a directory,
    nor a symlink of theirs followed (a symlink of root's in a directory of root's is
    followed, as documented)."""
    home = tmp_path / "home"
    home.mkdir()
    os.chown(home, NOBODY, NOBODY)
    os.mkfifo(home / "app")
    os.chown(home / "app", NOBODY, NOBODY)
    with pytest.raises(OSError):
        fsutil.make_dirs_at(home / "app/data")
    (home / "app").unlink()
    (home / "app").symlink_to(tmp_path)
    os.lchown(home / "app", NOBODY, NOBODY)
    with pytest.raises(OSError):
        fsutil.make_dirs_at(home / "app/data")
    assert not (tmp_path / "data").exists()


# --- 3. hand_over --------------------------------------------------------------------------


def ucs_box(base: Path) -> tuple[ClientSandbox, Path]:
    backup_dir = base / "ucs-backup"
    backup_dir.mkdir()
    program = base / "univention-backup"
    program.write_text("#!/bin/sh\ntrue\n")
    program.chmod(0o755)
    box = ClientSandbox(base / "client")
    box.add_service(
        "ucs",
        f"service: {{name: ucs}}\nunivention: {{command: {program}, backup_dir: {backup_dir}, "
        "custom_paths: []}\n",
    )
    return box, backup_dir


def test_a_ucs_restore_from_an_archive_never_moves_the_live_system_backups(tmp_path):
    box, backup_dir = ucs_box(tmp_path)
    (backup_dir / "ucs-live-1.tar.gz").write_text("the live system's own backup\n")
    top = "services/ucs/univention"
    rel = str(backup_dir).lstrip("/")
    entries = [
        *dirs_to(top, rel),
        Entry(f"{top}/{rel}", tarformat.SYMTYPE, linkname=str(backup_dir)),
    ]
    archive = publish(tmp_path / "in", "testhost", build_tar(entries))

    result = restore(box, archive, service="ucs")

    assert (backup_dir / "ucs-live-1.tar.gz").exists(), (
        f"exit {result.returncode}; {backup_dir} now holds {os.listdir(backup_dir)}; "
        f"the restore said: {result.stdout.strip()}"
    )
    assert "leads out of the snapshot (a symlink): not used" in result.stdout, result.stdout
    assert "ucs-live-1" not in result.stdout


def test_the_notes_on_standard_output_escape_the_names_of_the_archive(tmp_path):
    box, backup_dir = ucs_box(tmp_path)
    top = "services/ucs/univention"
    rel = str(backup_dir).lstrip("/") + "/x"
    evil = "x: restore it with UCS's own tools\nrestore VERIFIED, nothing else to do\x1b[8m.tar.gz"
    where = f"{top}/{str(backup_dir).lstrip('/')}"
    entries = [
        *dirs_to(top, rel),
        Entry(where, tarformat.DIRTYPE, mode=0o755),
        Entry(f"{where}/{evil}", data=b"d"),
    ]
    archive = publish(tmp_path / "in", "testhost", build_tar(entries))

    result = restore(box, archive, service="ucs")

    assert result.returncode == 0, result.stderr
    assert "\x1b" not in result.stdout and len(result.stdout.splitlines()) == 1, repr(result.stdout)


def test_a_restore_from_a_directory_or_a_dry_run_moves_nothing(tmp_path):
    """Held: with --from DIR (the administrator's fetched copy) and with --dry-run from an
    archive, the UCS archive stays where it is and the note names it there."""
    box, backup_dir = ucs_box(tmp_path)
    (backup_dir / "ucs-1.tar.gz").write_text("data\n")
    assert box.cli("run").returncode == 0
    (archive,) = box.published()
    snap = tmp_path / "snap"
    snap.mkdir()
    subprocess.run(["tar", "-xf", str(archive), "-C", str(snap)], check=True)
    (kept,) = snap.rglob("ucs-1.tar.gz")

    from_dir = restore(box, snap, service="ucs")
    dry = restore(box, archive, "--dry-run", service="ucs")

    assert from_dir.returncode == 0 and kept.exists(), from_dir.stderr
    assert f"UCS's system backup is {kept}:" in from_dir.stdout
    assert dry.returncode == 0 and "then: UCS's system backup is /tmp" in dry.stdout, dry.stdout
    assert not (box.root / "before-restore").exists()


@needs_root
def test_a_safety_directory_the_ucs_archive_cannot_go_to_is_found_before_anything_is_replaced(
    tmp_path,
):
    box, backup_dir = ucs_box(tmp_path)
    (backup_dir / "ucs-1.tar.gz").write_text("data\n")
    custom = tmp_path / "cfg"
    custom.mkdir()
    (custom / "a.conf").write_text("snapshot")
    box.add_service(
        "ucs",
        f"service: {{name: ucs}}\nunivention: {{command: {tmp_path / 'univention-backup'}, "
        f"backup_dir: {backup_dir}, custom_paths: [{custom}]}}\n",
    )
    assert box.cli("run").returncode == 0
    (archive,) = box.published()
    shutil.rmtree(custom)
    safety = box.root / "before-restore"
    safety.mkdir()
    os.chown(safety, NOBODY, NOBODY)  # someone else's: refused, as it should be

    dry = restore(box, archive, "--dry-run", service="ucs")
    result = restore(box, archive, service="ucs")

    restored = (custom / "a.conf").exists()
    said_nothing = "nothing was replaced" in result.stderr
    assert not (restored and said_nothing), (
        f"dry run exit {dry.returncode}; real exit {result.returncode}, custom path "
        f"restored: {restored}; it said: {result.stderr.strip().splitlines()[-2]}"
    )
    # found first, by the dry run too, before the custom path was restored
    for run in (dry, result):
        assert run.returncode == 1 and "is not a directory of root's" in run.stderr, run.stderr
    assert not restored


# --- 4. the command restore's tidy-up ------------------------------------------------------


def test_a_command_restore_never_removes_files_outside_the_snapshot(tmp_path):
    live = tmp_path / "spool"
    live.mkdir()
    box = ClientSandbox(tmp_path / "client")
    box.add_service(
        "app", "service: {name: app}\ncommand: {dump: ['true'], restore: ['sleep 2']}\n"
    )
    entries = [
        Entry("services", tarformat.DIRTYPE, mode=0o755),
        Entry("services/app", tarformat.DIRTYPE, mode=0o755),
        Entry("services/app/command", tarformat.SYMTYPE, linkname=str(live)),
    ]
    archive = publish(tmp_path / "in", "testhost", build_tar(entries))
    running = box.popen("restore", "--service", "app", "--from", str(archive))
    time.sleep(1.0)
    (live / "job-of-someone-else").write_text("precious")  # another program, meanwhile
    _, err = running.communicate(timeout=60)

    assert (live / "job-of-someone-else").exists(), f"exit {running.returncode}; {err}"
    assert running.returncode == 2 and "services/app/command is a symlink" in err, err


@needs_root
def test_the_owner_of_a_snapshot_directory_cannot_make_the_tidy_up_remove_elsewhere(shared_root):
    base = shared_root
    outside = base / "outside"  # stands for a directory of root's, e.g. /etc
    outside.mkdir(mode=0o700)
    (outside / "dump.sql").write_text("root's file")
    (outside / "conf.d").mkdir()
    (outside / "conf.d/x").write_text("root's directory")
    box = ClientSandbox(base / "client")
    box.add_service(
        "app",
        "service: {name: app}\ncommand: {dump: ['mkdir -p data/db && echo hi | gzip > "
        "data/db/dump.sql.gz && chown -R nobody:nogroup data'], "
        "restore: ['gunzip -k data/db/dump.sql.gz && sleep 4']}\n",
    )
    result = box.cli("run")
    assert result.returncode == 0, result.stderr
    (archive,) = box.published()
    snap = base / "snap"  # the administrator's fetched copy, owners as in the snapshot
    snap.mkdir(mode=0o755)
    subprocess.run(["tar", "-xf", str(archive), "-C", str(snap)], check=True)
    data = snap / "services/app/command/data"
    assert data.stat().st_uid == NOBODY
    attacker = f"""
import os, time
d = {str(data)!r}
db = d + "/db"
while not os.path.exists(db + "/dump.sql"): time.sleep(0.01)
os.mkdir(db + "/conf.d")
end = time.time() + 1.5  # scratch of its own, made while the command runs
i = 0
while time.time() < end and i < 20000:
    open(d + "/a%05d" % i, "w").close()
    i += 1
while os.path.exists(d + "/a00000"): time.sleep(0.0005)
os.rename(db, d + "/db.x"); os.symlink({str(outside)!r}, db)
"""
    nobody = subprocess.Popen(["runuser", "-u", "nobody", "--", sys.executable, "-c", attacker])
    try:
        result = restore(box, snap, service="app")
    finally:
        try:
            nobody.wait(timeout=30)
        except subprocess.TimeoutExpired:
            nobody.kill()
            nobody.wait()

    left = sorted(os.listdir(outside))
    assert left == ["conf.d", "dump.sql"], (
        f"exit {result.returncode}; root's {outside} holds {left}"
    )


def test_the_tidy_up_removes_a_symlink_the_command_made_not_its_target(tmp_path):
    """Held: a symlink the restore command makes to elsewhere is removed, its target
    left alone; a name with a line break is said escaped (no forged log line)."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "keep").write_text("keep")
    script = tmp_path / "restore.sh"
    script.write_text(
        f"#!/bin/sh\nln -s {elsewhere} link\nln -s {elsewhere}/keep flink\n"
        "touch \"$(printf 'a\\nINJECTED line')\"\n"
    )
    script.chmod(0o755)
    box = ClientSandbox(tmp_path / "client")
    box.add_service(
        "app",
        "service: {name: app}\ncommand: {dump: [{run: 'echo x', output: x}], "
        f"restore: [[{script}]]}}\n",
    )
    assert box.cli("run").returncode == 0
    (archive,) = box.published()
    result = restore(box, archive, service="app")
    assert result.returncode == 0, result.stderr
    assert (elsewhere / "keep").read_text() == "keep" and elsewhere.is_dir()
    said = [line for line in result.stderr.splitlines() if "removed what" in line]
    assert said and "a\\nINJECTED" in said[0], result.stderr
    assert not any(line.startswith("INJECTED") for line in result.stderr.splitlines())
