"""The client's chain walks over its archive directory (``directory.base_of``,
``chain_of``, ``chains_of``): what each archive is built on, on any directory (bases
missing, newer than the delta, of another name, or the archive itself), and in work
that grows with the chain's length, not its square (a re-read found retention and
``list`` walking every chain from every archive)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from pullback.client.listing import _stored
from pullback.common.archive import directory
from pullback.common.archive.directory import (
    LocalArchive,
    broken_chains,
    by_names,
    chain_of,
    chains_of,
    full_chain,
)
from tests.helpers.archives import listed_sidecar


def _archive(number: int, base: int | None, readable: bool = True) -> LocalArchive:
    """``web1``'s archive number ``number`` (its stamp grows with it), a delta on archive
    ``base`` when given (any number: older, newer, itself, or one not in the directory),
    without a valid sidecar unless ``readable``."""
    stamp = f"2026{1 + number // 28 // 24:02d}{1 + number // 24 % 28:02d}T{number % 24:02d}0000Z"
    name = f"web1-{stamp}.tar.zst"
    if not readable:
        return LocalArchive(Path(name), "web1", stamp, None, problem="unreadable")
    base_name = _archive(base, None).name if base is not None else ""
    return LocalArchive(Path(name), "web1", stamp, listed_sidecar(name, stamp, base_name))


def _directory(bases: list[int | None], copies: list[int | None]) -> list[LocalArchive]:
    found = [
        _archive(number, base, readable=number % 7 != 3)
        for number, base in enumerate(bases)
        if number % 5 != 4  # gaps: some bases are missing
    ]
    for number, base in enumerate(copies[: len(bases)]):
        if number % 3 == 0:  # the same name in fetched/, built on another base
            copy = _archive(number, base)
            found.append(dataclasses.replace(copy, fetched=True))
    return sorted(found, key=lambda a: (a.stamp, a.fetched))


directories = st.builds(
    _directory,
    st.lists(st.none() | st.integers(0, 40), max_size=30),
    st.lists(st.none() | st.integers(0, 40), max_size=30),
)
"""Up to 30 archives, full or a delta on any number; every 7th unreadable, every 5th
missing; some with a copy of the same name in ``fetched/`` built on another base (an
outside fuzzer found such copies walked as one)."""


@settings(max_examples=300, deadline=None)
@given(archives=directories)
def test_chains_of_is_the_union_of_each_chain(archives):
    by_name = by_names(archives)
    expected: set[str] = set()
    for archive in archives:
        expected |= chain_of(archive, by_name)
    assert chains_of(archives, by_name) == expected
    assert chains_of(archives[::-1], by_name) == expected  # in any order


@settings(max_examples=300, deadline=None)
@given(archives=directories)
def test_list_calls_an_archive_a_base_exactly_when_a_chain_passes_it(archives, tmp_path_factory):
    """``list``'s "a newer archive is built on it" (which keeps an archive from being
    called superseded) is every archive some other archive's chain passes through
    (only complete archives: one without a valid sidecar is nobody's base)."""
    complete = [a for a in archives if a.complete]
    by_name = by_names(complete)
    expected: set[str] = set()
    for archive in complete:
        expected |= chain_of(archive, by_name) - {archive.name}
    stored = _stored(archives, tmp_path_factory.mktemp("archives"))
    assert stored.bases == expected


@settings(max_examples=300, deadline=None)
@given(archives=directories)
def test_broken_chains_are_the_deltas_full_chain_cannot_reach(archives):
    complete = [a for a in archives if a.complete]
    by_name = by_names(complete)
    expected = {
        a.name
        for a in complete
        if a.sidecar is not None and a.sidecar.archive.is_delta and not full_chain(a, by_name)
    }
    assert broken_chains(complete, by_name) == expected
    assert broken_chains(complete[::-1], by_name) == expected


def test_a_long_chain_is_walked_once(monkeypatch):
    """2 000 deltas in one chain: every retention asks which archives the kept deltas
    need; each base is looked up a bounded number of times, not once per later delta."""
    archives = [_archive(0, None)] + [_archive(n, n - 1) for n in range(1, 2000)]
    by_name = by_names(archives)
    calls = 0
    real = directory.base_of

    def counted(archive, names):
        nonlocal calls
        calls += 1
        return real(archive, names)

    monkeypatch.setattr(directory, "base_of", counted)
    assert chains_of(archives, by_name) == set(by_name)
    assert calls <= 2 * len(archives)
    assert chain_of(archives[-1], by_name) == set(by_name)
    calls = 0
    del by_name[archives[0].name]  # the full archive: every delta is broken
    assert broken_chains(archives[1:], by_name) == set(by_name)
    assert calls <= 2 * len(archives)
