"""A tree against its ``MANIFEST.sha256``, walked side by side: one home for the client's
check of a fetched snapshot (``restore --from DIR``) and the server's drill.

A manifest's lines are sorted by the bytes of their names (:func:`.manifest.order`), and
a directory's entries visited in the same order (a directory's name sorts as if it ended
in ``/``, as every name below it does): the two are merged as they are read. What stays
in memory is the directories open on the current path, each with its entries, not the
manifest: a million listed files no longer cost half a gigabyte (an outside test measured
566 MiB). One directory's listing is held whole to be sorted (about 130 bytes per
entry, measured: a flat directory of a million files costs about 130 MB), bounded on the
server by the entries an archive may have (``max_entries``). A manifest out of that
order (one written before 2026-12-01) is read whole and sorted first, as before; a first
pass over the file, holding one name, tells which.

The walk follows no symlink and descends no directory that is one; it pairs every entry
that is not a directory.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, TypeVar

from .manifest import order, raw_entries, read_lines
from .tree_list import kind_of

T = TypeVar("T")


@dataclass(frozen=True)
class Pair:
    """One name met by the walk: listed with ``digest``, found in the tree (``regular``
    says whether as a regular file), or both."""

    root: str
    name: str
    """Relative to the tree's root, as the manifest spells it (``services/...``)."""
    digest: str | None
    """The manifest's hex digest; None when the manifest does not list it."""
    regular: bool | None
    """Whether the tree's entry is a regular file (its type as the directory gives it, no
    ``stat``); None when the tree holds no entry of that name, or only a directory."""

    @property
    def path(self) -> str:
        """Its full path below the root."""
        return os.path.join(self.root, self.name)


def pairs(root: Path, manifest: Path, prefix: str) -> Iterator[Pair]:
    """Every name below ``root/prefix`` and every name the manifest ``manifest`` lists
    below ``prefix/``, in the manifest's order, each once. Raises ValueError for a
    manifest line that does not parse and OSError for a directory the walk cannot read."""
    base = os.fspath(root)
    start = order(prefix.rstrip("/") + "/")
    walk = _walkable(os.fsencode(base), start)
    with open(manifest, "rb") as handle:
        listed = _listed(handle, start)
        tree = _tree(os.fsencode(base), start) if walk else iter(())
        yield from _merge(base, listed, tree)


def others(root: Path, prefix: str) -> Iterator[tuple[str, bytes | None]]:
    """Every entry below ``root/prefix`` that is not a regular file, as ``(name relative
    to the root, its kind as tree_list writes it, None for a device node or socket)``.
    Follows no symlink; holds one listing per open directory. Raises ValueError as
    :func:`pairs` for a ``prefix`` reached through a symlink, OSError for a directory the
    walk cannot read."""
    base = os.fsencode(os.fspath(root))
    start = order(prefix.rstrip("/") + "/")
    if not _walkable(base, start):
        return
    for name, mode in _depth_first(base, start, _scanned, stat.S_ISDIR):
        if not stat.S_ISREG(mode):
            yield os.fsdecode(name), kind_of(mode)


def _scanned(root: bytes, relative: bytes) -> list[tuple[bytes, int]]:
    """The entries of the directory ``root/relative`` as ``(relative name, st_mode)``
    (``lstat``: a symlink is itself)."""
    with os.scandir(os.path.join(root, relative)) as found:
        return [(relative + e.name, e.stat(follow_symlinks=False).st_mode) for e in found]


def outside(manifest: Path, prefix: str) -> Iterator[str]:
    """Every name the manifest ``manifest`` lists that is not below ``prefix/`` (in a
    snapshot, no name may be: :func:`pairs` never sees them), streamed. Raises
    ValueError for a manifest line that does not parse."""
    start = order(prefix.rstrip("/") + "/")
    with open(manifest, "rb") as handle:
        for key, _ in raw_entries(read_lines(handle)):
            if not key.startswith(start):
                yield os.fsdecode(key)


def _walkable(root: bytes, start: bytes) -> bool:
    """Whether ``root/start`` is a directory reached through none but directories (not
    there: False). Raises ValueError naming a component that is a symlink or no
    directory: the walk never leaves the tree (an outside attack made ``services`` a
    symlink to ``/etc`` and the drill named the server's files)."""
    path = root
    for part in start.rstrip(b"/").split(b"/"):
        path = os.path.join(path, part)
        try:
            mode = os.lstat(path).st_mode
        except FileNotFoundError:
            return False
        if not stat.S_ISDIR(mode):
            raise ValueError(f"{os.fsdecode(path)!r} is not a directory")
    return True


def _listed(handle: BinaryIO, start: bytes) -> Iterator[tuple[bytes, str]]:
    """The manifest's ``(name's bytes, digest)`` below ``start``, in order: streamed when
    its lines are in order (a first pass checks, holding one name), else read whole and
    sorted (a name listed twice counts once, its last line, as :func:`.parse`)."""
    stream: Iterable[tuple[bytes, str]]
    if _in_order(handle):
        handle.seek(0)
        stream = raw_entries(read_lines(handle))
    else:
        handle.seek(0)
        stream = sorted(dict(raw_entries(read_lines(handle))).items())
    for key, digest in stream:
        if key.startswith(start):
            yield key, digest
        elif key > start:
            return


def _in_order(handle: BinaryIO) -> bool:
    """Whether every name of the manifest sorts after the one before it. Raises
    ValueError for a line that does not parse."""
    last = b""
    for key, _ in raw_entries(read_lines(handle)):
        if key <= last:
            return False
        last = key
    return True


def _tree(root: bytes, start: bytes) -> Iterator[tuple[bytes, bool]]:
    """Every entry that is not a directory below ``root/start``, as ``(name's
    bytes relative to the root, is a regular file)``, in the manifest's order. Holds one
    ``scandir`` listing per open directory (no recursion: depth is not bounded by
    Python's stack)."""
    for name, kind in _depth_first(root, start, _listing, lambda kind: kind is _DIRECTORY):
        if kind is not _DIRECTORY:
            yield name, kind is _REGULAR


def _depth_first(
    root: bytes,
    start: bytes,
    listing: Callable[[bytes, bytes], Iterable[tuple[bytes, T]]],
    descend: Callable[[T], bool],
) -> Iterator[tuple[bytes, T]]:
    """Every entry ``listing(root, relative)`` gives below ``root/start``, each directory's
    in its order, an entry of which ``descend`` says yes followed by its own entries.
    Holds one listing per open directory (no recursion: depth is not bounded by Python's
    stack)."""
    stack = [iter(listing(root, start))]
    while stack:
        step = next(stack[-1], None)
        if step is None:
            stack.pop()
            continue
        yield step
        if descend(step[1]):
            stack.append(iter(listing(root, step[0] + b"/")))


_DIRECTORY, _REGULAR, _OTHER = object(), object(), object()


def _listing(root: bytes, relative: bytes) -> Iterator[tuple[bytes, object]]:
    """The entries of the directory ``root/relative`` (``relative`` ends in ``/``) as
    ``(relative name, kind)``, sorted as the manifest sorts the names below them."""
    with os.scandir(os.path.join(root, relative)) as found:
        named = [(relative + e.name, _kind(e)) for e in found]
    named.sort(key=lambda item: item[0] + b"/" if item[1] is _DIRECTORY else item[0])
    return iter(named)


def _kind(entry: os.DirEntry[bytes]) -> object:
    if entry.is_dir(follow_symlinks=False):
        return _DIRECTORY
    return _REGULAR if entry.is_file(follow_symlinks=False) else _OTHER


def _merge(
    base: str,
    listed: Iterator[tuple[bytes, str]],
    tree: Iterator[tuple[bytes, bool]],
) -> Iterator[Pair]:
    """The two ordered streams merged by name into :class:`Pair` records."""
    one = next(listed, None)
    other = next(tree, None)
    while one is not None or other is not None:
        if other is None or (one is not None and one[0] < other[0]):
            assert one is not None
            yield Pair(base, os.fsdecode(one[0]), one[1], None)
            one = next(listed, None)
        elif one is None or other[0] < one[0]:
            yield Pair(base, os.fsdecode(other[0]), None, other[1])
            other = next(tree, None)
        else:
            yield Pair(base, os.fsdecode(one[0]), one[1], other[1])
            one, other = next(listed, None), next(tree, None)
