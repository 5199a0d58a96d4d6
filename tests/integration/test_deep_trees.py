"""A client tree deeper than Python's recursion limit (1 100 directories, a path of 2.2 KB,
inside PATH_MAX) is pulled, pulled again as a delta that changes and removes deep
entries, restored and drilled like any other: until 2026-12-06 the server's unpack, its
tree removal (``shutil.rmtree``) and walks (``os.walk``, ``rglob``) recursed once per
level and the pull failed as "internal error: RecursionError"."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.helpers.fleet import Fleet

pytestmark = pytest.mark.integration

DEPTH = 1100


def listing(root: Path) -> list[str]:
    """Every entry below ``root``: its path, type, mode, owner, size, mtime and link
    target, by GNU find (rsync, the usual oracle, gives up on a tree this deep:
    "opendir ... failed", exit 23)."""
    out = subprocess.run(
        ["find", str(root), "-mindepth", "1", "-printf", "%P %y %m %U:%G %s %T@ %l\\n"],
        capture_output=True,
        text=True,
        check=True,
    )
    return sorted(out.stdout.splitlines())


def deep_dir(top: Path, depth: int = DEPTH) -> Path:
    """``top/d/d/.../d`` made ``depth`` levels deep (by ``mkdir -p``: pathlib's own
    ``mkdir(parents=True)`` recurses per level)."""
    path = top.joinpath(*["d"] * depth)
    subprocess.run(["mkdir", "-p", str(path)], check=True)
    return path


@pytest.fixture
def fleet(tmp_path):
    fleet = Fleet(tmp_path / "fleet")
    yield fleet
    fleet.stop()
    # (pytest's own clean-up is shutil.rmtree, which recurses per level too)
    subprocess.run(["rm", "-rf", str(tmp_path)], check=False)


def test_a_tree_deeper_than_the_recursion_limit_is_pulled_restored_and_drilled(fleet, tmp_path):
    host = fleet.add_host("web1")
    host.client.write_config(incremental={"enabled": "auto"})
    data = host.data
    bottom = deep_dir(data / "deep")
    (bottom / "leaf.txt").write_bytes(b"day one\n")
    gone = deep_dir(data / "gone", 1000)
    (gone / "old.txt").write_bytes(b"removed the next day\n")
    host.make_archive()
    first = fleet.server("pull")
    assert first.returncode == 0, first.stdout + first.stderr
    assert "RecursionError" not in first.stdout + first.stderr

    # the next day: a deep file changed and a deep tree removed, as a delta
    (bottom / "leaf.txt").write_bytes(b"day two, longer\n")
    (bottom / "new.txt").write_bytes(b"new\n")
    subprocess.run(["rm", "-rf", str(data / "gone")], check=True)
    host.make_archive()
    second = fleet.server("pull")
    assert second.returncode == 0, second.stdout + second.stderr
    assert "a delta" in second.stdout + second.stderr, second.stdout + second.stderr

    target = tmp_path / "t"
    restored = fleet.server("restore", "web1", "--target", str(target))
    assert restored.returncode == 0, restored.stdout + restored.stderr
    copy = target / "services" / "app" / "files" / str(data).lstrip("/")
    assert listing(copy) == listing(data)
    same = subprocess.run(["diff", "-r", "--no-dereference", str(data), str(copy)])
    assert same.returncode == 0
    assert not (copy / "gone").exists()

    drill = fleet.server("verify", "--host", "web1")
    assert drill.returncode == 0, drill.stdout + drill.stderr
    assert "all 3 files" in drill.stdout, drill.stdout


DEEP = "$(printf 'd/%.0s' $(seq 1100))"
"""The shell's word for ``d/d/.../d/``, DEPTH levels."""

DEEP_COMMAND = f"""\
service: {{name: app}}
command:
  dump: ["mkdir -p {DEEP} && echo leaf > {DEEP}leaf.txt"]
  restore: ["cd {DEEP} && echo made > made.txt && mkdir -p new/x && echo y > new/x/y"]
"""


def entries(root: Path) -> list[str]:
    """Every entry below ``root``: its path, type and size (a directory's mtime changes
    when what was made in it is removed)."""
    out = subprocess.run(
        ["find", str(root), "-mindepth", "1", "-printf", "%P %y %s\\n"],
        capture_output=True,
        text=True,
        check=True,
    )
    return sorted(out.stdout.splitlines())


def test_a_command_restore_tidies_up_a_tree_deeper_than_the_recursion_limit(tmp_path):
    """The command task's restore removes what its commands wrote in the snapshot's
    directory: until 2026-12-06 it walked it by ``os.fwalk``, which recursed and held a
    descriptor per level (a RecursionError past about 1 000 levels)."""
    from tests.helpers.client import ClientSandbox

    try:
        box = ClientSandbox(tmp_path / "client")
        box.add_service("app", DEEP_COMMAND)
        made = box.cli("run")
        assert made.returncode == 0, made.stderr
        (archive,) = box.published()
        snap = tmp_path / "snap"  # the administrator's fetched copy
        snap.mkdir()
        subprocess.run(["tar", "-xf", str(archive), "-C", str(snap)], check=True)
        before = entries(snap)
        bottom = snap.joinpath("services", "app", "command", *["d"] * DEPTH)
        assert (bottom / "leaf.txt").read_text() == "leaf\n"
        argv = ("restore", "--service", "app", "--from", str(snap))
        for _ in range(2):  # and again from the same directory: it is the snapshot still
            restored = box.cli(*argv)
            assert restored.returncode == 0, restored.stderr
            assert "RecursionError" not in restored.stderr
            assert "removed what the restore commands wrote in " in restored.stderr
            assert restored.stderr.count("d/d/d") >= 2  # the two entries, named (cut)
            assert entries(snap) == before
    finally:
        subprocess.run(["rm", "-rf", str(tmp_path)], check=False)
