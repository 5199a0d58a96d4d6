"""helper-155's outside attack on the files restore's relink (plugins/relink.py), the
archive writer's overlap guard and the files task's paths; each test failed while the
defect it names existed (F1-F9)."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from pullback.plugins import relink
from pullback.plugins.copy_room import Links
from tests.helpers.archives import unpacked
from tests.helpers.client import ClientSandbox

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="owners need root")


def backed_up(tmp_path: Path, paths: list[str]) -> tuple[ClientSandbox, Path]:
    box = ClientSandbox(tmp_path / "client")
    listed = ", ".join(f'"{p}"' for p in paths)
    box.add_service("app", f"service: {{name: app}}\nfiles: {{paths: [{listed}]}}\n")
    made = box.cli("run")
    assert made.returncode == 0, made.stderr[-3000:]
    (archive,) = box.published()
    return box, archive


# -- F1: relink's identity check is metadata only ---------------------------------------


def test_relink_first_name_swapped_for_a_sibling_of_same_metadata(tmp_path, caplog):
    """Snapshot: a/m/f (root, 0644, "GOOD") hard-linked to b/f; a/m/other (root, 0644,
    same size and mtime, "EVIL"). Both restored by cp. The local user who owns a/m renames
    a/m/other over a/m/f between the last cp and the relink (their directory: allowed).
    root's b/f, a correct copy, must keep the snapshot's bytes."""
    snap, live = tmp_path / "snap", tmp_path / "live"
    for root in (snap, live):
        (root / "a" / "m").mkdir(parents=True)
        (root / "b").mkdir()
    (snap / "a/m/f").write_text("GOOD\n")
    os.link(snap / "a/m/f", snap / "b/f")
    (snap / "a/m/other").write_text("EVIL\n")
    mtime = os.stat(snap / "a/m/f").st_mtime_ns
    os.utime(snap / "a/m/other", ns=(mtime, mtime))
    for name in ("a/m/f", "a/m/other", "b/f"):
        shutil.copy2(snap / name, live / name)  # as each path's cp -a wrote them
    os.chown(live / "a/m", 65534, 65534)  # a/m belongs to a local user
    os.replace(live / "a/m/other", live / "a/m/f")  # what that user may do, simulated
    links = Links()
    links.again.append(((0, ("m", "f")), (1, ("f",))))
    log = logging.getLogger("pullback.test.h155")
    with caplog.at_level(logging.INFO, logger="pullback.test.h155"):
        linked = relink.link_again(log, links, [live / "a", live / "b"], [snap / "a", snap / "b"])
    assert (live / "b/f").read_text() == "GOOD\n" and linked == 0
    (said,) = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert said.endswith("the first name's bytes are no longer the snapshot's"), said


# -- F2: a temporary link left behind ---------------------------------------------------


def test_relink_failed_rename_leaves_no_temporary_link(tmp_path, caplog):
    """The later name's directory is append-only (chattr +a): link works, rename and
    unlink do not. No `.pullback-link.*` may stay (a name the snapshot lacks): none is
    made there, and the warning says why."""
    if not shutil.which("chattr"):
        pytest.skip("no chattr")
    snap, live = tmp_path / "snap", tmp_path / "live"
    for root in (snap, live):
        (root / "a").mkdir(parents=True)
        (root / "b").mkdir()
    (snap / "a/f").write_text("x\n")
    os.link(snap / "a/f", snap / "b/f")
    for side in ("a", "b"):
        shutil.copy2(snap / "a/f", live / side / "f")
    links = Links()
    links.again.append(((0, ("f",)), (1, ("f",))))
    subprocess.run(["chattr", "+a", str(live / "b")], check=True)
    try:
        log = logging.getLogger("pullback.test.h155")
        with caplog.at_level(logging.WARNING, logger="pullback.test.h155"):
            relink.link_again(log, links, [live / "a", live / "b"], [snap / "a", snap / "b"])
        left = sorted(p.name for p in (live / "b").iterdir())
    finally:
        subprocess.run(["chattr", "-a", str(live / "b")], check=True)
        for p in (live / "b").glob(".pullback-link.*"):
            p.unlink()
    assert left == ["f"], left
    (said,) = [r.getMessage() for r in caplog.records]
    assert "its directory is append-only (chattr +a)" in said, said


# -- F3: an archive the server refuses whole ---------------------------------------------


def test_a_long_listed_path_never_makes_the_archive_unpackable(tmp_path):
    """A listed path whose parent is ~4080 bytes long: the leaf is skipped as too long
    (said), but its archive-only parents go in with names longer than the unpacking's
    MAX_NAME: the server refused the whole archive (every service of the host). Now
    the path is skipped whole, its task fails (helper-156 F3), and the archive of the
    host's other service unpacks."""
    base = tmp_path / "d"
    base.mkdir()
    parent = str(base)
    while len(parent) < 4080:
        parent += "/" + "n" * max(1, min(200, 4080 - len(parent) - 1))
    os.makedirs(parent)
    leaf = parent + "/f"
    Path(leaf).write_text("x\n")
    (base / "ok").write_text("ok\n")
    box = ClientSandbox(tmp_path / "client")
    box.add_service(
        "app", f'service: {{name: app}}\nfiles: {{paths: ["{base / "ok"}", "{leaf}"]}}\n'
    )
    box.add_service("web", f"service: {{name: web}}\nfiles: {{paths: [{base / 'ok'}]}}\n")
    made = box.cli("run")
    assert made.returncode == 1 and "its path is too long to back up" in made.stderr
    (archive,) = box.published()
    try:
        staging = unpacked(archive, tmp_path / "staging")
    finally:
        shutil.rmtree(base, ignore_errors=True)
    assert (staging / "services/web/files" / str(base / "ok").lstrip("/")).read_text() == "ok\n"


# -- F4: every multi-link file of a one-path restore is kept in memory --------------------


def test_a_one_path_restore_keeps_no_link_notes(tmp_path):
    """One listed path: no link between two paths can exist, yet the room check keeps
    a note of each of its 20,000 linked files for the whole restore (~330 B each)."""
    from pullback.plugins.copy_room import check_copy_room

    copy = tmp_path / "snap" / "d"
    copy.mkdir(parents=True)
    for n in range(10_000):
        (copy / f"f{n}").touch()
        os.link(copy / f"f{n}", copy / f"g{n}")
    room = check_copy_room([(copy, tmp_path / "live" / "d")], [], tmp_path, 0)
    assert room.links.again == []
    assert len(room.links.first) == 0, len(room.links.first)


# -- F5: one path, two spellings -------------------------------------------------------


def test_a_path_spelled_twice_is_linked_and_counted_once(tmp_path):
    """[/x/a, /x/b, //x/b, /x/a/]: one name to link (a/f, b/f). The dry run says 4."""
    srv = tmp_path / "srv"
    for d in "ab":
        (srv / d).mkdir(parents=True)
    (srv / "a/f").write_text("x\n")
    os.link(srv / "a/f", srv / "b/f")
    (srv / "b/p1").write_text("p\n")
    os.link(srv / "b/p1", srv / "b/p2")
    box, archive = backed_up(tmp_path, [f"{srv}/a", f"{srv}/b", f"/{srv}/b", f"{srv}/a/"])
    dry = box.cli("restore", "--service", "app", "--from", str(archive), "--dry-run")
    assert dry.returncode == 0, dry.stderr[-2000:]
    said = dry.stdout + dry.stderr
    assert "link 1 name again" in said, [line for line in said.splitlines() if "again" in line]
    assert f"{srv}/b is restored with {srv}/b" in said and f"{srv}/a/ is restored with" in said


def test_a_path_spelled_twice_is_not_counted_twice_for_room(tmp_path, tmpfs):
    """A 5 MiB file on an 8 MiB file system, its directory listed as /m/b and //m/b:
    the restore fits, yet the room check adds 10 MiB and refuses it."""
    mnt = tmpfs(tmp_path / "mnt", "size=8m")
    b = mnt / "b"
    b.mkdir()
    (b / "big").write_bytes(os.urandom(5 * 2**20))
    box, archive = backed_up(tmp_path, [str(b), "/" + str(b)])
    (b / "big").unlink()
    done = box.cli("restore", "--service", "app", "--from", str(archive))
    assert done.returncode == 0, done.stderr[-1500:]


# -- F6: overlapping paths cannot be restored where they are missing ----------------------


@pytest.mark.parametrize("layout", [("d", "d/sub", "e"), ("d/sub", "d", "e"), ("d", "//d", "e")])
@pytest.mark.parametrize("where", ["target", "in place"])
def test_overlapping_paths_restore_where_nothing_is(tmp_path, layout, where):
    """A task whose paths overlap (docs/restore.md: "Paths of a task that overlap keep
    each entry once"), restored to an empty --target, or in place on a machine that
    lost them: the second path "appeared while the restore checked it" and the task
    fails half way; e (and the relink) never come back."""
    srv = tmp_path / "srv"
    (srv / "d/sub").mkdir(parents=True)
    (srv / "d/sub/f").write_text("f\n")
    (srv / "e").mkdir()
    (srv / "e/g").write_text("g\n")
    paths = [
        ("/" + str(srv / p.lstrip("/"))) if p.startswith("//") else str(srv / p) for p in layout
    ]
    box, archive = backed_up(tmp_path, paths)
    if where == "target":
        root = tmp_path / "tgt"
        root.mkdir()
        args = ["--target", str(root)]
        live = root / str(srv).lstrip("/")
    else:
        shutil.rmtree(srv)
        srv.mkdir()
        args, live = [], srv
    done = box.cli("restore", "--service", "app", "--from", str(archive), *args)
    assert done.returncode == 0, [line for line in done.stderr.splitlines() if "ERROR" in line]
    assert (live / "d/sub/f").read_text() == "f\n"
    assert (live / "e/g").read_text() == "g\n"


# -- F7: a listed path below a file archives the file -------------------------------------


def test_a_file_above_a_listed_path_is_not_archived(tmp_path):
    """paths: [<srv>/secret/child] (a typo, or a path that is missing_ok) where
    <srv>/secret is a regular file: Task.add_tree's parent loop archives the file's
    bytes, though nothing lists it, and the task reports 0 files."""
    srv = tmp_path / "srv"
    srv.mkdir()
    (srv / "secret").write_text("not listed\n")
    box = ClientSandbox(tmp_path / "client")
    box.add_service(
        "app",
        f'service: {{name: app}}\nfiles: {{paths: ["{srv}/secret/child"], missing_ok: true}}\n',
    )
    made = box.cli("run")
    assert made.returncode == 0 and "does not exist; skipped (missing_ok)" in made.stderr
    (archive,) = box.published()
    staging = unpacked(archive, tmp_path / "staging")
    assert not (staging / "services/app/files" / str(srv / "secret").lstrip("/")).exists()


# -- F8: two later names on one file system, the first name on another ---------------------


def test_two_later_names_on_one_file_system_are_linked_to_each_other(tmp_path, caplog, tmpfs):
    """Paths [a, m/b, m/c]: a on one file system, m (b and c) on another since the
    backup; the snapshot has a/f, b/f, c/f as one file. b/f and c/f could still be one
    file (as cp would link names of one path); both stay copies of their own."""
    snap, live = tmp_path / "snap", tmp_path / "live"
    for d in ("a", "m/b", "m/c"):
        (snap / d).mkdir(parents=True)
    (snap / "a/f").write_text("x\n")
    os.link(snap / "a/f", snap / "m/b/f")
    os.link(snap / "a/f", snap / "m/c/f")
    (live / "a").mkdir(parents=True)
    (live / "m").mkdir()
    tmpfs(live / "m", "size=1m")
    for d in ("m/b", "m/c"):
        (live / d).mkdir()
    for name in ("a/f", "m/b/f", "m/c/f"):
        shutil.copy2(snap / name, live / name)
    links = Links()
    links.again += [((0, ("f",)), (1, ("f",))), ((0, ("f",)), (2, ("f",)))]
    log = logging.getLogger("pullback.test.h155")
    with caplog.at_level(logging.WARNING, logger="pullback.test.h155"):
        relink.link_again(
            log,
            links,
            [live / "a", live / "m/b", live / "m/c"],
            [snap / "a", snap / "m/b", snap / "m/c"],
        )
    same = os.stat(live / "m/b/f").st_ino == os.stat(live / "m/c/f").st_ino
    assert same, [r.getMessage() for r in caplog.records]
    (said,) = [r.getMessage() for r in caplog.records]  # (the first one there stays a copy)
    assert "m/b/f" in said and "on two file systems now" in said, said


# -- F9: a listed "dir/" that is a symlink: nothing of the data, nothing said ---------------


def test_a_listed_symlink_with_a_trailing_slash_is_not_silently_empty(tmp_path):
    """paths: ["<srv>/data/"] with <srv>/data -> <disk>/data (root's symlink). rsync -aHAX
    (whose behaviour the docs promise to keep, backup-suite's paths) copies the
    directory's contents for "data/"; pullback archives the symlink alone, reports
    "ok: 0 files", warned of nothing, and `check` said ok. Now the run and check warn,
    naming the real path to list."""
    real = tmp_path / "disk" / "data"
    real.mkdir(parents=True)
    (real / "db").write_text("precious\n")
    srv = tmp_path / "srv"
    srv.mkdir()
    os.symlink(real, srv / "data")
    box = ClientSandbox(tmp_path / "client")
    box.add_service("app", f'service: {{name: app}}\nfiles: {{paths: ["{srv}/data/"]}}\n')
    made = box.cli("run")
    assert made.returncode == 0, made.stderr[-1500:]
    (archive,) = box.published()
    staging = unpacked(archive, tmp_path / "staging")
    data = staging / "services/app/files" / str(srv / "data").lstrip("/")
    assert data.is_symlink()  # (the link alone, as rsync without the slash keeps it)
    words = f"path {srv}/data/ is a symlink to a directory: only the link is archived"
    assert words in made.stderr and f"list its real path {real} instead" in made.stderr
    checked = box.cli("check")
    assert words in checked.stdout + checked.stderr
