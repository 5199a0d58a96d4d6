"""Exclude patterns mean what they meant under backup-suite: real rsync is the oracle.

backup-suite's files plugin copied each listed path as
``cd "$(dirname PATH)" && rsync -a --delete-excluded --exclude P ... "$(basename PATH)" DEST/``.
For a table of tricky cases (anchored, ``**``, ``***``, trailing ``/``, nested names that
repeat, the listed item's own name, several listed paths) this test runs exactly that and
compares the set of paths rsync copied with the set pullback's ``files`` task archives —
first through the matcher the task uses, then through a real client run.
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

from pullback.plugins.exclude import ExcludeMatcher
from tests.helpers.client import ClientSandbox

if shutil.which("rsync") is None:
    pytest.skip("rsync is not installed (scripts/install-deps)", allow_module_level=True)

TREE = [
    "app/config.ini",
    "app/cache/a.txt",
    "app/logs/x.log",
    "app/logs/keep.txt",
    "app/mediafiles/large_video.mp4",
    "app/mediafiles/small.jpg",
    "app/mediafiles/anch",
    "app/mediafiles/sub/mediafiles/large_video.mp4",
    "app/mediafiles/a/b/c.txt",
    "app/deep/a/b/cache",
    "app/deep/a/b/x.txt",
    "app/data/one",
    "app/anch",
    "other/mediafiles/keep.me",
]

# (listed paths below the tree's root, exclude patterns)
CASES = [
    (["app"], ["*.log"]),
    (["app"], ["cache/"]),
    (["app"], ["cache"]),
    (["app/mediafiles"], ["mediafiles/large_video.mp4"]),  # the shipped tandoor example
    (["app/mediafiles/"], ["mediafiles/large_video.mp4"]),  # trailing slash: the same
    (["app/mediafiles"], ["/mediafiles/anch"]),
    (["app/mediafiles"], ["/anch"]),
    (["app"], ["/anch", "/app/anch"]),
    (["app"], ["a/b"]),
    (["app"], ["**/c.txt"]),
    (["app"], ["mediafiles/**"]),
    (["app"], ["app/logs/"]),
    (["app"], ["/app/logs"]),
    (["app"], ["sub/***"]),
    (["app"], ["*.mp4", "?ata"]),
    (["app"], ["[cd]ache", "[!x]*.txt"]),
    (["app/config.ini", "app/logs"], ["config.ini"]),  # the listed item's own name
    (["app/logs", "app/mediafiles"], ["logs"]),
    (["app/mediafiles", "other/mediafiles"], ["mediafiles/large_video.mp4", "keep.me"]),
    (["app"], ["app"]),
]


def make_tree(root: Path) -> None:
    for rel in TREE:
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(rel + "\n")


def by_rsync(root: Path, listed: list[str], patterns: list[str], dest: Path) -> set[str]:
    """What backup-suite's rsync line copies of each listed path (``N:<basename>/...``,
    N its place in the list). Each goes to a destination of its own: backup-suite put
    them all in one, where a second path with the same name replaced the first
    (``--delete-excluded`` implies ``--delete``); pullback keeps both, under their full
    paths, and that loss is not what is compared here."""
    found: set[str] = set()
    for number, entry in enumerate(listed):
        path = root / entry.rstrip("/")
        excludes = [arg for p in patterns for arg in ("--exclude", p)]
        target = dest / str(number)
        target.mkdir(parents=True)
        subprocess.run(
            ["rsync", "-a", "--delete-excluded", *excludes, path.name, f"{target}/"],
            cwd=path.parent,
            check=True,
        )
        found |= {f"{number}:{rel}" for rel in _files(target)}
    return found


def by_matcher(root: Path, listed: list[str], patterns: list[str]) -> set[str]:
    """What the files task keeps (its dry run's walk, as its archive writer walks: an
    excluded directory is not entered)."""
    matcher = ExcludeMatcher(patterns)
    kept: set[str] = set()
    for number, entry in enumerate(listed):
        path = root / entry.rstrip("/")
        kept.update(
            f"{number}:{path.name}/{rel}" if rel else f"{number}:{path.name}"
            for rel in matcher.kept_files(path)
        )
    return kept


def _files(dest: Path) -> set[str]:
    return {str(Path(d, n).relative_to(dest)) for d, _, names in os.walk(dest) for n in names}


@pytest.mark.parametrize(("listed", "patterns"), CASES, ids=lambda v: ",".join(v))
def test_the_same_files_as_backup_suite_s_rsync(tmp_path, listed, patterns):
    make_tree(tmp_path / "tree")
    expected = by_rsync(tmp_path / "tree", listed, patterns, tmp_path / "rsync")
    assert by_matcher(tmp_path / "tree", listed, patterns) == expected


def test_a_client_run_archives_what_rsync_copied(tmp_path):
    """The tandoor example end to end: the listed media directory and a second one,
    through the files task into a real archive."""
    root = tmp_path / "tree"
    make_tree(root)
    listed = ["app/mediafiles", "app/logs"]
    patterns = ["mediafiles/large_video.mp4", "*.log", "/mediafiles/a"]
    expected = by_rsync(root, listed, patterns, tmp_path / "rsync")
    box = ClientSandbox(tmp_path / "client")
    paths = ", ".join(str(root / p) for p in listed)
    excludes = ", ".join(f'"{p}"' for p in patterns)
    box.add_service(
        "media", f"service: {{name: media}}\nfiles: {{paths: [{paths}], exclude: [{excludes}]}}\n"
    )
    result = box.cli("run")
    assert result.returncode == 0, result.stderr
    (archive,) = box.published()
    prefix = f"services/media/files{root}/app/"
    unzstd = subprocess.run(["zstd", "-dc", archive], capture_output=True, check=True).stdout
    with tarfile.open(fileobj=io.BytesIO(unzstd)) as tar:
        archived = {
            m.name.removeprefix(prefix)
            for m in tar.getmembers()
            if m.isfile() and m.name.startswith(prefix)
        }
    numbered = {f"{listed.index('app/' + rel.split('/')[0])}:{rel}" for rel in archived}
    assert numbered == expected


# -- wildmatch's own rules, and patterns drawn at random ----------------------------------

RICH_TREE = [
    "app/a/c.txt",
    "app/a/b/c.txt",
    "app/x/a/y/c.txt",
    "app/c.txt",
    "app/q1",
    "app/q\\1",
    "app/sp ace/f",
    "app/sp\\ ace/g",
    "app/1.txt",
    "app/a.txt",
    "app/]x",
    "app/deep/a/b/x.txt",
    "app/b/x.txt",
    "app/b/z/x.txt",
    "app/foo",
    "app/d/foo",
    "app/d/e/foo",
    "app/foo.d/bar",
    "app/A.TXT",
    "app/a*b",
    "app/a?b",
    "app/ab",
    "app/[ab]",
    "app/x.log",
    "app/logs/y.log",
    "app/d/dir/f",
    "app/e/dir",
    "app/caf\u00e9",
]

WILDMATCH_CASES = [
    "a/**/c.txt",  # a directory between: a/c.txt is kept (h126)
    "**/b/**/x.txt",
    "app/**/foo",
    "**/c.txt",  # a leading **/ may match no directory
    "/**/foo",  # ... but not when anchored
    "q\\1",  # no wildcard: the backslash is a character (h126)
    "sp\\ ace",
    "\\a.txt",
    "a\\*b",  # a wildcard: the backslash escapes
    "[[:digit:]].txt",  # a character class (h126)
    "[[:upper:]]*",
    "[[:alpha:][:digit:]]*",
    "[[:nope:]]*",  # an unknown class: matches nothing
    "[]x]",  # a ] first is a member
    "[z-a]",  # a range the wrong way round: its first character only
    "[ab",  # never closed: matches nothing
    "a[!x]c.txt",  # a class never matches /
    "*//",  # one trailing slash taken, the other stays
    "//***]",
    "sub/***",
    "dir/***",  # the directory and all below it: a file named dir stays (h127)
    "dir/***/",
    "caf?",  # bytes, not characters: the \u00e9 is two (h127)
    "caf??",
]


def rsync_kept(root: Path, pattern: str) -> set[str]:
    """What ``rsync -r --exclude PATTERN app DEST/`` would copy (a dry run's names)."""
    done = subprocess.run(
        ["rsync", "-rn8", "--out-format=%n", "--exclude", pattern, "app", "/nonexistent/"],
        cwd=root,
        capture_output=True,
        text=True,
        check=True,
    )
    return {line.rstrip("/") for line in done.stdout.splitlines() if line}


def matcher_kept(root: Path, pattern: str) -> set[str]:
    """What the files task's walk keeps of the listed ``app`` (directories included)."""
    matcher = ExcludeMatcher([pattern])
    app = root / "app"
    if matcher.excludes_listed(app):
        return set()
    kept, excluded = {"app"}, matcher.rooted(app)
    for directory, dirs, names in os.walk(app):
        rel = os.path.relpath(directory, app)
        rel = "" if rel == "." else rel + "/"
        dirs[:] = [d for d in dirs if not excluded(rel + d, True)]
        kept |= {f"app/{rel}{d}" for d in dirs}
        kept |= {f"app/{rel}{n}" for n in names if not excluded(rel + n, False)}
    return kept


@pytest.fixture(scope="module")
def rich_tree(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("rich")
    for rel in RICH_TREE:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(rel)
    return root


@pytest.mark.parametrize("pattern", WILDMATCH_CASES)
def test_wildmatch_s_rules_as_rsync_applies_them(rich_tree, pattern):
    assert matcher_kept(rich_tree, pattern) == rsync_kept(rich_tree, pattern)


def test_patterns_drawn_at_random_keep_what_rsync_keeps(rich_tree):
    """Patterns made of the pieces wildmatch reads differently (``**``, classes, ranges,
    escapes, doubled slashes): PULLBACK_EXCLUDE_PATTERNS of them (300 in CI, a few
    seconds; thousands agreed when the rules were written), seeded by
    PULLBACK_EXCLUDE_SEED."""
    import random

    draw = random.Random(int(os.environ.get("PULLBACK_EXCLUDE_SEED", "1")))
    pieces = [
        "a",
        "b",
        "c",
        "x",
        "/",
        "*",
        "**",
        "?",
        "[",
        "]",
        "!",
        "^",
        "-",
        "\\",
        ".",
        "txt",
        ":",
        "[:digit:]",
        "[:alpha:]",
        "d",
        "foo",
        "app",
        "1",
        "z",
        "\u00e9",
        "***",
    ]
    pieces.append(" ")
    differ = []
    for _ in range(int(os.environ.get("PULLBACK_EXCLUDE_PATTERNS", "300"))):
        pattern = "".join(draw.choice(pieces) for _ in range(draw.randint(1, 6)))
        if pattern[:1] in "-+" or not pattern.strip("/"):
            continue  # (rsync reads "- x" and "+ x" as rules; "/" alone is refused)
        if matcher_kept(rich_tree, pattern) != rsync_kept(rich_tree, pattern):
            differ.append(pattern)
    assert differ == []
