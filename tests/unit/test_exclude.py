"""rsync-style exclude patterns, as backup-suite's files task passed them to rsync."""

from __future__ import annotations

import pytest

from pullback.plugins.exclude import ExcludeMatcher

CASES = [
    # pattern, path, is_dir, excluded
    ("*.log", "app.log", False, True),
    ("*.log", "a/b/app.log", False, True),
    ("*.log", "a/app.log/x", False, False),
    ("cache/", "cache", True, True),
    ("cache/", "x/cache", True, True),
    ("cache/", "cache", False, False),
    ("/tmp", "tmp", True, True),
    ("/tmp", "a/tmp", True, False),
    ("a/b", "a/b", False, True),
    ("a/b", "x/a/b", False, True),
    ("a/b", "xa/b", False, False),
    ("**/Thumbs.db", "Thumbs.db", False, True),
    ("**/Thumbs.db", "p/q/Thumbs.db", False, True),
    ("**/*.tmp", "p/q/x.tmp", False, True),
    ("lost+found/", "lost+found", True, True),
    (".*", ".hidden", False, True),
    (".*", "dir/.git", True, True),
    (".*", "visible", False, False),
    ("data/**", "data/x/y", False, True),
    ("file?.txt", "file1.txt", False, True),
    ("file?.txt", "file12.txt", False, False),
    ("[ab].conf", "a.conf", False, True),
    ("[!ab].conf", "a.conf", False, False),
    ("[!ab].conf", "c.conf", False, True),
    ("*", "anything/at/all", False, True),
]


@pytest.mark.parametrize(("pattern", "path", "is_dir", "excluded"), CASES)
def test_pattern(pattern, path, is_dir, excluded):
    assert ExcludeMatcher([pattern])(path, is_dir) is excluded


@pytest.mark.parametrize("pattern", ["", "/", "//"])
def test_unusable_patterns_are_refused(pattern):
    with pytest.raises(ValueError):
        ExcludeMatcher([pattern])
