"""common/trees.py: walking and removing trees of any depth, links never followed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pullback.common.trees import fwalk, remove_tree, walk
from tests.helpers.files import as_nobody, open_to_others


def make_tree(root: Path, outside: Path) -> None:
    """A small tree with files, nested directories, and links to a directory and a file
    outside it."""
    (root / "a" / "b").mkdir(parents=True)
    (root / "a" / "f1").write_text("1")
    (root / "a" / "b" / "f2").write_text("2")
    (root / "c").mkdir()
    (root / "top").write_text("t")
    (root / "a" / "dirlink").symlink_to(outside)
    (root / "a" / "filelink").symlink_to(outside / "keep.txt")


@pytest.fixture
def outside(tmp_path):
    place = tmp_path / "outside"
    place.mkdir()
    (place / "keep.txt").write_text("must survive")
    return place


def test_walk_yields_what_os_walk_yields(tmp_path, outside):
    root = tmp_path / "root"
    root.mkdir()
    make_tree(root, outside)

    def normal(walker):
        return sorted((d, sorted(ds), sorted(fs)) for d, ds, fs in walker)

    assert normal(walk(root)) == normal(os.walk(root))


def test_walk_prunes_what_the_caller_removes_from_dirnames(tmp_path, outside):
    root = tmp_path / "root"
    root.mkdir()
    make_tree(root, outside)
    seen = []
    for directory, dirs, _ in walk(root):
        seen.append(os.path.relpath(directory, root))
        dirs[:] = [d for d in dirs if d != "b"]
    assert sorted(seen) == [".", "a", "c"]


def test_walk_and_remove_a_tree_deeper_than_the_recursion_limit(tmp_path):
    depth = sys.getrecursionlimit() + 500
    bottom = tmp_path.joinpath("deep", *["d"] * depth)
    subprocess.run(["mkdir", "-p", str(bottom)], check=True)
    (bottom / "leaf").write_text("x")
    found = [(d, fs) for d, _, fs in walk(tmp_path / "deep") if fs]
    assert len(found) == 1 and found[0][1] == ["leaf"]
    assert os.path.relpath(found[0][0], tmp_path / "deep").split("/") == ["d"] * depth
    remove_tree(tmp_path / "deep")
    assert not (tmp_path / "deep").exists()


def test_remove_tree_never_follows_a_link(tmp_path, outside):
    root = tmp_path / "root"
    root.mkdir()
    make_tree(root, outside)
    remove_tree(root)
    assert not root.exists()
    assert (outside / "keep.txt").read_text() == "must survive"


def test_remove_tree_refuses_a_link_in_the_place_of_the_directory(tmp_path, outside):
    link = tmp_path / "link"
    link.symlink_to(outside)
    with pytest.raises(OSError):
        remove_tree(link)
    remove_tree(link, ignore_errors=True)
    assert link.is_symlink() and (outside / "keep.txt").exists()


def test_remove_tree_by_name_in_a_directory_descriptor(tmp_path, outside):
    root = tmp_path / "root"
    root.mkdir()
    make_tree(root, outside)
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        remove_tree("root", dir_fd=fd)
    finally:
        os.close(fd)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["outside"]


def test_a_missing_tree_is_an_error_unless_errors_are_ignored(tmp_path):
    with pytest.raises(FileNotFoundError):
        remove_tree(tmp_path / "nothing")
    remove_tree(tmp_path / "nothing", ignore_errors=True)


def test_what_cannot_be_removed_is_left_and_said_unless_ignored(tmp_path):
    root = tmp_path / "root"
    (root / "kept").mkdir(parents=True)
    (root / "kept" / "f").write_text("x")
    (root / "other").write_text("y")
    subprocess.run(["chattr", "+i", str(root / "kept" / "f")], check=False)
    if not _immutable(root / "kept" / "f"):
        pytest.skip("this file system has no immutable flag")
    try:
        with pytest.raises(PermissionError):
            remove_tree(root)
        remove_tree(root, ignore_errors=True)
        assert (root / "kept" / "f").exists() and not (root / "other").exists()
    finally:
        subprocess.run(["chattr", "-i", str(root / "kept" / "f")], check=False)


def _immutable(path: Path) -> bool:
    out = subprocess.run(["lsattr", "-d", str(path)], capture_output=True, text=True)
    return out.returncode == 0 and "i" in out.stdout.split()[0]


def test_a_deep_tree_is_removed_under_a_low_open_files_limit(tmp_path):
    """helper-137: one descriptor per level ran out at 1 024 (EMFILE), and with
    ignore_errors the tree was left, silently: now at most MAX_HELD are held."""
    import resource

    from pullback.common.trees import MAX_HELD

    bottom = tmp_path.joinpath("deep", *["d"] * 600)
    subprocess.run(["mkdir", "-p", str(bottom)], check=True)
    for level in (bottom, bottom.parent.parent, bottom.parents[300]):
        (level / "f").write_text("x")
        (level / "side").mkdir()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    open_now = len(os.listdir("/proc/self/fd"))
    resource.setrlimit(resource.RLIMIT_NOFILE, (open_now + MAX_HELD + 16, hard))
    try:
        remove_tree(tmp_path / "deep")
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert not (tmp_path / "deep").exists()


def test_a_directory_moved_out_during_the_removal_stops_it(tmp_path, monkeypatch):
    """A directory whose parent's descriptor was closed (past MAX_HELD) is moved out to
    another directory meanwhile: ``..`` now leads there, and the removal stops instead
    of removing in it."""
    from pullback.common import trees

    monkeypatch.setattr(trees, "MAX_HELD", 2)
    (tmp_path / "top" / "deep" / "a" / "b" / "c").mkdir(parents=True)
    (tmp_path / "top" / "sentinel").write_text("not the tree's")
    real_close = os.close
    moved = []

    def close(fd):
        real_close(fd)
        if not moved:  # the first level closed: "deep"; its "a" moves up a level
            moved.append(True)
            os.rename(tmp_path / "top" / "deep" / "a", tmp_path / "top" / "a")

    monkeypatch.setattr(trees.os, "close", close)
    with pytest.raises(OSError, match="moved while it was being removed"):
        remove_tree(tmp_path / "top" / "deep")
    monkeypatch.undo()
    assert (tmp_path / "top" / "sentinel").read_text() == "not the tree's"
    assert (tmp_path / "top" / "deep").is_dir()


def _fwalked(walker, root) -> list:
    """What an fwalk yields, in order, each directory relative to ``root`` with its
    descriptor's device and inode."""
    found = []
    for directory, dirs, files, fd in walker:
        here = os.fstat(fd)
        rel = os.path.relpath(directory, root)
        found.append((rel, sorted(dirs), sorted(files), (here.st_dev, here.st_ino)))
    return sorted(found)


def test_fwalk_yields_what_os_fwalk_yields_without_following_links(tmp_path, outside):
    root = tmp_path / "root"
    root.mkdir()
    make_tree(root, outside)
    theirs = _fwalked(os.fwalk(root, follow_symlinks=False), root)
    ours = _fwalked(fwalk(root), root)
    # os.fwalk names a link to a directory among the directories (and does not enter
    # it); ours names it among the other entries, as what it is
    assert [(r, i) for r, _, _, i in ours] == [(r, i) for r, _, _, i in theirs]
    assert ours[1][1:3] == (["b"], ["dirlink", "f1", "filelink"])
    assert not any("dirlink" in r for r, *_ in ours)
    assert list(fwalk(tmp_path / "nothing")) == []
    link = tmp_path / "link"
    link.symlink_to(root)
    assert list(fwalk(link)) == []  # the top itself a link: nothing, as os.fwalk


def test_fwalk_prunes_and_enters_only_the_directory_it_listed(tmp_path, outside):
    root = tmp_path / "root"
    root.mkdir()
    make_tree(root, outside)
    (root / "c" / "inner").mkdir()
    seen = []
    for directory, dirs, _, _ in fwalk(root):
        rel = os.path.relpath(directory, root)
        seen.append(rel)
        if rel == ".":
            dirs[:] = [d for d in dirs if d != "a"]  # pruned
            # listed, then swapped before it is entered: for a link, for another one
            (root / "c").rename(tmp_path / "c-was")
            (root / "c").symlink_to(outside)
    assert seen == ["."]
    (root / "c").unlink()
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "x").mkdir()
    seen = []
    for directory, _, _, _ in fwalk(root):
        seen.append(os.path.relpath(directory, root))
        if directory == str(root):
            (tmp_path / "other").rename(root / "c")
    assert sorted(seen) == [".", "a", "a/b"]


def test_fwalk_a_tree_deeper_than_the_recursion_limit_holding_few_descriptors(tmp_path):
    """os.fwalk recursed per level and held a descriptor per level: past about 1 000
    levels a RecursionError (or EMFILE under a limit of 1 024)."""
    import resource

    from pullback.common.trees import MAX_HELD

    depth = sys.getrecursionlimit() + 100
    bottom = tmp_path.joinpath("deep", *["d"] * depth)
    subprocess.run(["mkdir", "-p", str(bottom)], check=True)
    (bottom / "leaf").write_text("x")
    (bottom.parents[500] / "side").mkdir()
    with pytest.raises(RecursionError):
        list(os.fwalk(tmp_path / "deep"))
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    open_now = len(os.listdir("/proc/self/fd"))
    resource.setrlimit(resource.RLIMIT_NOFILE, (open_now + MAX_HELD + 16, hard))
    try:
        found = [(d, fs, os.listdir(fd)) for d, _, fs, fd in fwalk(tmp_path / "deep") if fs]
        count = sum(1 for _ in fwalk(tmp_path / "deep"))
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert count == depth + 2  # "deep", each d, and "side"
    assert [(fs, listed) for _, fs, listed in found] == [(["leaf"], ["leaf"])]
    assert os.path.relpath(found[0][0], tmp_path / "deep").split("/") == ["d"] * depth
    subprocess.run(["rm", "-rf", str(tmp_path / "deep")], check=True)


def test_fwalk_stops_when_a_directory_above_moved_away(tmp_path, monkeypatch):
    """Past MAX_HELD the directories above are closed; one moved elsewhere meanwhile is
    found so on the way back up (``..`` leads elsewhere), and the walk stops."""
    from pullback.common import trees

    monkeypatch.setattr(trees, "MAX_HELD", 2)
    (tmp_path / "top" / "deep" / "a" / "b" / "c").mkdir(parents=True)
    seen = []
    with pytest.raises(OSError, match="moved while it was being walked"):
        for directory, _, _, _ in fwalk(tmp_path / "top" / "deep"):
            seen.append(os.path.relpath(directory, tmp_path / "top" / "deep"))
            if seen[-1] == "a/b/c":
                os.rename(tmp_path / "top" / "deep" / "a", tmp_path / "top" / "a")
    assert seen == [".", "a", "a/b", "a/b/c"]


def test_fwalk_never_enters_a_listed_directory_swapped_for_another(tmp_path):
    """A directory listed, then swapped for another directory before it is entered: the
    identity check keeps the walk out of it (helper-142: the other case of the test
    above swapped in a directory never listed, and passed without the check)."""
    root = tmp_path / "root"
    (root / "c" / "inner").mkdir(parents=True)
    (tmp_path / "other" / "precious").mkdir(parents=True)
    seen = []
    for directory, dirs, _, _ in fwalk(root):
        seen.append(os.path.relpath(directory, root))
        if directory == str(root):
            assert dirs == ["c"]
            (root / "c").rename(tmp_path / "c-was")
            (tmp_path / "other").rename(root / "c")
    assert seen == ["."]


@pytest.mark.skipif(os.geteuid() != 0, reason="walks as nobody")
def test_fwalk_names_what_os_fwalk_names_in_an_unsearchable_directory(tmp_path):
    """A directory readable but not searchable (mode 0644): its subdirectory cannot be
    looked at, yet os.fwalk names it among the directories; fwalk left it out of both
    lists (helper-142). Root reads through any mode, so only nobody sees it."""
    root = tmp_path / "root"
    (root / "rx" / "sub").mkdir(parents=True)
    (root / "rx" / "file").write_text("f")
    open_to_others(root)
    (root / "rx").chmod(0o644)
    code = (
        "import json, os; from pullback.common.trees import fwalk\n"
        "def listed(walker):\n"
        "    return sorted([d, sorted(ds), sorted(fs)] for d, ds, fs, _ in walker)\n"
        f"print(json.dumps([listed(os.fwalk({str(root)!r}, follow_symlinks=False)),"
        f" listed(fwalk({str(root)!r}))]))"
    )
    done = as_nobody(code)
    assert done.returncode == 0, done.stderr
    theirs, ours = json.loads(done.stdout)
    assert ours == theirs
    assert [str(root / "rx"), ["sub"], ["file"]] in ours
