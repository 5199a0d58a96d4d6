"""Which listed ``files`` paths lie below another one through a symlink its tree keeps
(plugins/files.py ``below_a_link``): such a path is not archived, in words, since no
unpacking writes below a symlink of the archive (helper-152 F3)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pullback.plugins.exclude import ExcludeMatcher
from pullback.plugins.files import below_a_link

pytestmark = pytest.mark.unit


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """big/app -> other (a directory elsewhere), other/data/db; big/plain/data/db."""
    (tmp_path / "other" / "data").mkdir(parents=True)
    (tmp_path / "big" / "plain" / "data").mkdir(parents=True)
    (tmp_path / "big" / "app").symlink_to(tmp_path / "other")
    return tmp_path


def test_a_path_below_a_symlink_of_another_paths_tree_is_named_with_its_real_path(tree):
    paths = [str(tree / "big"), str(tree / "big/app/data")]
    found = below_a_link(paths, ExcludeMatcher([]))
    assert list(found) == [str(tree / "big/app/data")]
    words = found[str(tree / "big/app/data")]
    assert f"through the symlink {tree / 'big/app'}" in words
    assert f"list its real path {tree / 'other/data'} instead" in words


def test_the_order_of_the_paths_does_not_matter(tree):
    paths = [str(tree / "big/app/data"), str(tree / "big")]
    assert list(below_a_link(paths, ExcludeMatcher([]))) == [str(tree / "big/app/data")]


@pytest.mark.parametrize(
    "paths",
    [
        ["big", "big/plain/data"],  # overlapping, no symlink on the way
        ["big/app/data"],  # alone: its parents are made directories in the archive
        ["big/app/data", "other"],  # the symlink is in no listed tree
        ["big/", "big/plain"],
        ["big/app", "other/data"],
    ],
)
def test_paths_without_a_kept_symlink_on_the_way_are_archived(tree, paths):
    assert below_a_link([str(tree / p) for p in paths], ExcludeMatcher([])) == {}


def test_a_listed_path_that_is_itself_a_symlink_holds_nothing_below_it(tree):
    paths = [str(tree / "big/app"), str(tree / "big/app/data")]
    assert list(below_a_link(paths, ExcludeMatcher([]))) == [str(tree / "big/app/data")]


@pytest.mark.parametrize("pattern", ["app", "big/app", "*pp"])
def test_an_exclude_of_the_symlink_ends_no_clash(tree, pattern):
    """The inner path's parents put big/app in the archive as a directory, where a
    restore of big meets the live symlink (refused): the path is refused still."""
    paths = [str(tree / "big"), str(tree / "big/app/data")]
    assert list(below_a_link(paths, ExcludeMatcher([pattern]))) == [paths[1]]


def test_a_link_deeper_down_and_an_outer_path_left_out_by_name(tree):
    (tree / "big" / "deep").mkdir()
    (tree / "big" / "deep" / "link").symlink_to(tree / "other")
    paths = [str(tree / "big"), str(tree / "big/deep/link/data")]
    assert list(below_a_link(paths, ExcludeMatcher([]))) == [paths[1]]
    assert below_a_link(paths, ExcludeMatcher(["big"])) == {}, "big is not archived at all"


def test_the_words_are_bounded_and_printable(tree):
    name = "x\n" * 120
    (tree / "big" / name).symlink_to(tree / "other")
    paths = [str(tree / "big"), os.path.join(tree, "big", name, "data")]
    (words,) = below_a_link(paths, ExcludeMatcher([])).values()
    assert "\n" not in words
    assert len(words) < 1400


def test_a_double_slash_spelling_of_a_path_is_the_same_name(tree):
    """The archive names ``//srv`` as ``/srv`` (helper-154 F1: ``Path('//srv')`` is no
    parent of ``/srv/app/data``, the check passed, and the name went in twice)."""
    for paths in (["/" + str(tree / "big"), f"{tree}/big/app/data"],
                  [str(tree / "big"), f"/{tree}/big/app/data"]):  # fmt: skip
        assert list(below_a_link(paths, ExcludeMatcher([]))) == [paths[1]]


def test_an_inner_path_an_exclude_leaves_out_by_name_is_no_clash(tree):
    """It is left out before any of its parents is archived (helper-154 F2)."""
    paths = [str(tree / "big"), str(tree / "big/app/data")]
    assert below_a_link(paths, ExcludeMatcher(["data"])) == {}


@pytest.mark.parametrize("target", ["loop", "nowhere"])
def test_a_link_that_leads_nowhere_gets_no_real_path_to_list(tree, target):
    """A loop or a dangling link: no "real path" that is the refused one or that does
    not exist (helper-154 F3)."""
    (tree / "big" / "odd").symlink_to(target if target == "nowhere" else "odd")
    inner = f"{tree}/big/odd/data"
    (words,) = below_a_link([str(tree / "big"), inner], ExcludeMatcher([])).values()
    assert "list its real path" not in words
    assert "leads nowhere that exists: list the real path" in words


@pytest.mark.skipif(os.geteuid() != 0, reason="a link of another user needs root")
def test_a_link_another_user_made_is_left_to_the_skip_it_always_had(tree):
    """The archive skips a path below such a link with a warning (docs/client.md): no
    clash, and no advice to list where that user's link points (helper-154 F4)."""
    os.lchown(tree / "big" / "app", 65534, 65534)
    paths = [str(tree / "big"), str(tree / "big/app/data")]
    assert below_a_link(paths, ExcludeMatcher([])) == {}
