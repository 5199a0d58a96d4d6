"""A tree against its manifest, walked side by side (``common/archive/listed``): the
client's ``restore --from DIR`` check and the server's drill share it. The oracle is the
way both did it before (the manifest read whole into a dict, the tree by ``os.walk``),
over random trees of awkward names; the memory bound is measured with tracemalloc."""

from __future__ import annotations

import hashlib
import os
import random
import stat
import subprocess
import tracemalloc

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pullback.common.archive import listed
from pullback.common.archive.manifest import MANIFEST_NAME, format_line, parse

# names that sort around "/" (0x2f) and "." and "-", a non-UTF-8 byte, an escaped newline
PARTS = ["a", "a.b", "a-b", "a0", "b", "ab", "\udcff", "x\ny", "z\\w", "é"]
PREFIX = "services/app"


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _model(root, manifest_bytes: bytes) -> dict[str, tuple[str | None, bool | None]]:
    """name -> (digest, is a regular file: None when absent or a directory), the way it
    was done before."""
    listed_names = {n: d for n, d in parse(manifest_bytes).items() if n.startswith(PREFIX + "/")}
    out: dict[str, tuple[str | None, bool | None]] = {n: (d, None) for n, d in listed_names.items()}
    top = root / PREFIX
    for directory, dirs, files in os.walk(top):
        for name in dirs + files:
            full = os.path.join(directory, name)
            mode = os.lstat(full).st_mode
            if stat.S_ISDIR(mode):
                continue
            rel = os.path.relpath(full, root)
            out[rel] = (listed_names.get(rel), stat.S_ISREG(mode))
    return out


@st.composite
def _trees(draw):
    paths = draw(st.lists(st.lists(st.sampled_from(PARTS), min_size=1, max_size=3), max_size=14))
    kinds = draw(st.lists(st.sampled_from(["file", "link", "fifo", "listed-only"]), min_size=14))
    return list(zip(paths, kinds, strict=False)), draw(st.booleans()), draw(st.booleans())


@settings(max_examples=120, deadline=None)
@given(_trees())
def test_pairs_agree_with_reading_everything(tmp_path_factory, drawn):
    specs, shuffled, outside = drawn
    root = tmp_path_factory.mktemp("tree")
    lines = []
    for parts, kind in specs:
        name = "/".join([PREFIX, *parts])
        path = root / name
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            if os.path.lexists(path):
                continue  # drawn twice (and writing to a FIFO would wait for a reader)
            if kind == "file":
                path.write_bytes(name.encode("utf-8", "surrogateescape"))
            elif kind == "link":
                path.symlink_to("elsewhere")
            elif kind == "fifo":
                os.mkfifo(path)
        except (FileExistsError, NotADirectoryError, IsADirectoryError):
            continue  # a name that is both a file and a directory: one of them wins
        lines.append(format_line(name, _digest(name.encode("utf-8", "surrogateescape"))))
    if outside:  # a name outside the prefix, before and after it
        lines += [format_line("services/aa/x", "1" * 64), format_line("services/ap", "2" * 64)]
    if shuffled:
        random.Random(len(lines)).shuffle(lines)
    else:
        lines.sort(key=lambda line: line.split(b"  ", 1)[1])
    manifest_bytes = b"".join(lines)
    (root / MANIFEST_NAME).write_bytes(manifest_bytes)

    got = list(listed.pairs(root, root / MANIFEST_NAME, PREFIX))

    names = [p.name for p in got]
    assert len(names) == len(set(names)), "a name paired twice"
    assert names == sorted(names, key=os.fsencode), "not in the manifest's order"
    seen = {p.name: (p.digest, p.regular) for p in got}
    assert seen == _model(root, manifest_bytes)


def test_a_directory_that_is_a_symlink_is_not_walked_and_what_it_holds_is_absent(tmp_path):
    (tmp_path / "real").mkdir()
    (tmp_path / "real/secret").write_bytes(b"s")
    (tmp_path / PREFIX).mkdir(parents=True)
    (tmp_path / PREFIX / "files").symlink_to(tmp_path / "real")
    line = format_line(f"{PREFIX}/files/secret", _digest(b"s"))
    (tmp_path / MANIFEST_NAME).write_bytes(line)
    got = list(listed.pairs(tmp_path, tmp_path / MANIFEST_NAME, PREFIX))
    assert [(p.name, p.regular is None) for p in got] == [
        (f"{PREFIX}/files", False),  # the symlink itself, not listed
        (f"{PREFIX}/files/secret", True),  # listed, absent: nothing read through it
    ]


def test_a_name_climbing_out_is_never_opened(tmp_path):
    (tmp_path / PREFIX).mkdir(parents=True)
    (tmp_path / "outside").write_bytes(b"o")
    line = format_line(f"{PREFIX}/../../outside", _digest(b"o"))
    (tmp_path / MANIFEST_NAME).write_bytes(line)
    got = list(listed.pairs(tmp_path, tmp_path / MANIFEST_NAME, PREFIX))
    assert [(p.name, p.regular) for p in got] == [(f"{PREFIX}/../../outside", None)]


def test_a_name_listed_twice_counts_once_with_its_last_line(tmp_path):
    (tmp_path / PREFIX).mkdir(parents=True)
    (tmp_path / PREFIX / "a").write_bytes(b"a")
    (tmp_path / MANIFEST_NAME).write_bytes(
        format_line(f"{PREFIX}/a", "1" * 64) + format_line(f"{PREFIX}/a", "2" * 64)
    )
    got = list(listed.pairs(tmp_path, tmp_path / MANIFEST_NAME, PREFIX))
    assert [(p.name, p.digest) for p in got] == [(f"{PREFIX}/a", "2" * 64)]


def test_a_bad_line_is_a_value_error_naming_it(tmp_path):
    (tmp_path / MANIFEST_NAME).write_bytes(format_line(f"{PREFIX}/a", "1" * 64) + b"junk\n")
    with pytest.raises(ValueError, match="line 2 is malformed"):
        list(listed.pairs(tmp_path, tmp_path / MANIFEST_NAME, PREFIX))


def test_a_deep_tree_is_walked_past_pythons_recursion_limit(tmp_path):
    depth = 1200
    path = tmp_path / PREFIX
    path.mkdir(parents=True)
    for _ in range(depth):  # 2 bytes a level: below PATH_MAX
        path = path / "d"
        path.mkdir()
    (path / "f").write_bytes(b"f")
    (tmp_path / MANIFEST_NAME).write_bytes(b"")
    try:
        got = list(listed.pairs(tmp_path, tmp_path / MANIFEST_NAME, PREFIX))
    finally:  # shutil.rmtree of pytest's basetemp recurses: it could not remove the tree
        subprocess.run(["rm", "-rf", tmp_path / PREFIX], check=True)
    assert [p.name.count("/") for p in got] == [depth + 2]


def test_memory_stays_bounded_by_a_directory_not_by_the_manifest(tmp_path):
    """50 000 listed files in 100 directories: the walk holds the open directories'
    entries, not the manifest. Before, the check held a set of every name (an outside
    test measured 566 MiB for a million)."""
    lines = []
    for d in range(100):
        directory = tmp_path / PREFIX / f"d{d:03}"
        directory.mkdir(parents=True)
        for f in range(500):
            name = f"{PREFIX}/d{d:03}/f{f:03}"
            lines.append(format_line(name, "0" * 64))
            if f == 0:
                (tmp_path / name).write_bytes(b"")  # one present a directory
    (tmp_path / MANIFEST_NAME).write_bytes(b"".join(lines))
    tracemalloc.start()
    try:
        count = sum(1 for _ in listed.pairs(tmp_path, tmp_path / MANIFEST_NAME, PREFIX))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert count == 50_000
    assert peak < 1 << 20, f"peak {peak} bytes"  # the set alone held 5 MB


@pytest.mark.parametrize("prefix", ["services", "services/app"])
def test_a_symlink_at_the_prefix_is_refused_and_nothing_outside_is_walked(tmp_path, prefix):
    """An outside attack: ``services`` a symlink to /etc (a hostile archive, or a damaged
    store): the drill named, and for a listed name hashed, the server's own files."""
    outside = tmp_path / "outside"
    (outside / "app").mkdir(parents=True)
    (outside / "app" / "hostname").write_bytes(b"server")
    (tmp_path / "t").mkdir()
    link_at = tmp_path / "t" / prefix
    link_at.parent.mkdir(parents=True, exist_ok=True)
    link_at.symlink_to(outside if prefix == "services" else outside / "app")
    (tmp_path / "t" / MANIFEST_NAME).write_bytes(
        format_line(f"{PREFIX}/hostname", _digest(b"server"))
    )
    with pytest.raises(ValueError, match="is not a directory"):
        list(listed.pairs(tmp_path / "t", tmp_path / "t" / MANIFEST_NAME, PREFIX))

    from pullback.server.drill import DrillResult, check_tree

    result = DrillResult("web1")
    check_tree(tmp_path / "t", result)
    assert result.files_checked == 0  # nothing outside hashed
    said = "is not a directory" if prefix == "services" else "missing: services/app/hostname"
    assert len(result.problems) == 1 and said in result.problems[0], result.problems
