"""The record of what a staging tree holds, against which a delta's base members are checked
(docs/architecture.md, *Incremental pulls*).

``<staging>.index.db`` (SQLite) names the archive the tree was unpacked from and the
sha256 of that archive's manifest, and for every regular file its sha256 and the
``ino``, ``size``, ``mtime_ns`` and ``ctime_ns`` it had when the unpack finished. A file
whose stat still equals its row has not been touched since: its bytes are the row's
sha256 without being read again. A large file may also have its hash's state (table
``states``, :mod:`.sha256state`): a delta that only appends to it is then hashed by its
new bytes. An index without that table (an older pullback's) is read as having none.

Lifecycle, so that a crash can never leave an index that lies: :func:`take` moves the
index aside (``.old``) before an unpack touches staging and opens it read-only; the
unpack records the new tree with an :class:`IndexWriter`, whose :meth:`~IndexWriter.commit`
puts the new index in place only after every check passed; :func:`drop` removes
whatever is left after a failure. No index means no base: the next delta is refused and
the chain replayed from its full.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from dataclasses import dataclass
from pathlib import Path

from ..fsutil import fsync_dir
from . import sha256state
from .manifest import MANIFEST_NAME
from .ordered import OrderedLookup, same_stat_numbers, stat_numbers

INDEX_FORMAT = 2
"""2: names stored as bytes (a name need not be UTF-8)."""
_SUFFIX = ".index.db"
_BATCH = 1024
"""Rows :class:`IndexWriter` gathers before it inserts them at once."""
_OLD, _NEW = ".old", ".new"


@dataclass(frozen=True, slots=True)
class IndexedFile:
    """One regular file of the staging tree, as the unpack left it."""

    sha256: str
    ino: int
    size: int
    mtime_ns: int
    ctime_ns: int

    def matches(self, st: os.stat_result) -> bool:
        """Whether ``st`` is the file this row describes, untouched since."""
        return same_stat_numbers(
            (self.ino, self.size, self.mtime_ns, self.ctime_ns),
            (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns),
        )


@dataclass(frozen=True, slots=True)
class IndexedTree:
    """Which archive a staging tree holds."""

    archive: str
    manifest_sha256: str


def _raw(name: str) -> bytes:
    """A member name as stored: its bytes (names need not be UTF-8)."""
    return name.encode("utf-8", "surrogateescape")


def index_path(staging: Path) -> Path:
    """Where the index of ``staging`` lives (beside it: the sweep and the store never see it)."""
    return staging.with_name(staging.name + _SUFFIX)


def _connect(path: Path, readonly: bool) -> sqlite3.Connection:
    uri = f"file:{path}?mode=ro" if readonly else f"file:{path}?mode=rwc"
    db = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False)
    db.execute("PRAGMA journal_mode=DELETE")
    return db


def _read_tree(db: sqlite3.Connection) -> IndexedTree | None:
    meta = dict(db.execute("SELECT k, v FROM meta"))
    if meta.get("format") != str(INDEX_FORMAT) or meta.get("state") != "complete":
        return None
    return IndexedTree(meta["archive"], meta["manifest_sha256"])


def read_tree(staging: Path) -> IndexedTree | None:
    """The archive ``staging`` holds by its index, or None (no index, not one this
    version wrote completely, or a staging tree that is gone: every indexed tree has its
    manifest at its root)."""
    path = index_path(staging)
    if not path.exists() or not os.path.lexists(staging / MANIFEST_NAME):
        return None
    try:
        with contextlib.closing(_connect(path, readonly=True)) as db:
            return _read_tree(db)
    except sqlite3.Error:
        return None


class BaseIndex:
    """The index of the tree staging holds before an unpack (read-only)."""

    def __init__(self, db: sqlite3.Connection, tree: IndexedTree, linked: bool = True):
        self._db = db
        self._rows = OrderedLookup(db, "sha256, ino, size, mtime_ns, ctime_ns")
        self.tree = tree
        self.linked = linked
        """Some of its files are hard-linked (a delta's base files are then checked in a
        first pass, :meth:`..unpack.Unpacker.check_base`)."""

    def state(self, name: str) -> bytes | None:
        """The saved hash state of the file ``name`` (:mod:`.sha256state`), or None (none
        saved, or an index of an older pullback)."""
        try:
            found = self._db.execute("SELECT state FROM states WHERE name = ?", (_raw(name),))
            row = found.fetchone()
        except sqlite3.Error:
            return None
        return row[0] if row and isinstance(row[0], bytes) else None  # (a blob, or nothing)

    def lookup(self, name: str) -> IndexedFile | None:
        """The row of the regular file ``name`` (its archive member name), or None.
        Cheapest when asked in archive order; :meth:`rewind` before another pass."""
        row = self._rows.get(_raw(name))
        return IndexedFile(*row) if row else None

    def count(self) -> int:
        """How many files the index has."""
        return int(self._db.execute("SELECT COUNT(*) FROM files").fetchone()[0])

    def has(self, name: str) -> bool:
        """Whether the index has a row for ``name`` (one query: for a few names)."""
        found = self._db.execute("SELECT 1 FROM files WHERE name = ?", (_raw(name),))
        return found.fetchone() is not None

    def rows(self):
        """Every (name, :class:`IndexedFile`), in the order of the names' bytes, read in
        batches (memory stays flat)."""
        cursor = self._db.execute(
            "SELECT name, sha256, ino, size, mtime_ns, ctime_ns FROM files ORDER BY name"
        )
        while batch := cursor.fetchmany(512):
            for raw, *row in batch:
                yield raw.decode("utf-8", "surrogateescape"), IndexedFile(*row)

    def rewind(self) -> None:
        """The next lookups are a new pass over the archive, from its first member."""
        self._rows.rewind()

    def close(self) -> None:
        self._db.close()


def take(staging: Path) -> BaseIndex | None:
    """Move the index of ``staging`` aside and open it: from now on, until
    :meth:`IndexWriter.commit`, staging has no index. Returns None when there was none
    (or it is not usable); a leftover of an interrupted unpack is removed first."""
    path = index_path(staging)
    old = path.with_name(path.name + _OLD)
    for leftover in (old, path.with_name(path.name + _NEW)):
        with contextlib.suppress(FileNotFoundError):
            leftover.unlink()
    try:
        os.rename(path, old)
    except FileNotFoundError:
        return None
    fsync_dir(path.parent)
    try:
        db = _connect(old, readonly=True)
    except sqlite3.Error:
        return None
    try:
        tree = _read_tree(db)
        linked = dict(db.execute("SELECT k, v FROM meta")).get("linked") != "0"
        if tree is not None:
            return BaseIndex(db, tree, linked)
    except sqlite3.Error:
        pass
    db.close()
    return None


def put_back(staging: Path) -> bool:
    """Make the index :func:`take` moved aside the index again (an unpack that changed
    nothing in staging). Returns whether there was one to put back."""
    path = index_path(staging)
    try:
        os.rename(path.with_name(path.name + _OLD), path)
    except FileNotFoundError:
        return False
    fsync_dir(path.parent)
    return True


def drop(staging: Path) -> None:
    """Remove every index file of ``staging`` (after a failed unpack, or emptied staging)."""
    path = index_path(staging)
    for each in (path, path.with_name(path.name + _OLD), path.with_name(path.name + _NEW)):
        with contextlib.suppress(FileNotFoundError):
            each.unlink()


class IndexWriter:
    """Records the files an unpack leaves in staging; :meth:`commit` makes it the index."""

    def __init__(self, staging: Path):
        self.staging = staging
        self.path = index_path(staging)
        self._new = self.path.with_name(self.path.name + _NEW)
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        with contextlib.suppress(FileNotFoundError):
            self._new.unlink()
        self._db = _connect(self._new, readonly=False)
        self._db.executescript(
            """
            PRAGMA synchronous=OFF;
            CREATE TABLE meta (k TEXT PRIMARY KEY, v TEXT NOT NULL);
            CREATE TABLE files (name BLOB PRIMARY KEY, sha256 TEXT NOT NULL,
                ino INTEGER, size INTEGER, mtime_ns INTEGER, ctime_ns INTEGER)
                WITHOUT ROWID;
            CREATE TABLE states (name BLOB PRIMARY KEY, state BLOB NOT NULL) WITHOUT ROWID;
            BEGIN;
            """
        )
        self._pending: list[tuple] = []
        self._states: list[tuple[bytes, bytes]] = []

    def add(
        self,
        name: str,
        sha256: str,
        kept: IndexedFile | None = None,
        state: bytes | None = None,
    ) -> None:
        """Record the regular file (or hard link) ``name`` with its digest; ``kept``: a
        file of one link left untouched, whose stat is its old row's (just checked
        against staging): :meth:`commit` does not stat it again, and takes its hash
        state from the old index; ``state``: the hash state of a file this unpack
        hashed whole."""
        stat = (kept.ino, kept.size, kept.mtime_ns, kept.ctime_ns) if kept else (None,) * 4
        self._pending.append((_raw(name), sha256, *stat))
        if state is not None:
            self._states.append((_raw(name), state))
        if len(self._pending) >= _BATCH:
            self._flush()

    def _flush(self) -> None:
        """Insert the rows :meth:`add` gathered (in their order: a later row of a name
        replaces an earlier one)."""
        self._db.executemany(
            "INSERT OR REPLACE INTO files (name, sha256, ino, size, mtime_ns, ctime_ns) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            self._pending,
        )
        self._pending.clear()
        # (a state is checked against its file's size and digest before it is used: one
        # left by an earlier row of the name is never taken for a later row's bytes)
        self._db.executemany(
            "INSERT OR REPLACE INTO states (name, state) VALUES (?, ?)", self._states
        )
        self._states.clear()

    def digests(self):
        """Every recorded (name, sha256), names as the archive has them, in the order of
        the names' bytes (:func:`manifest.order`)."""
        self._flush()
        for raw, sha256 in self._db.execute("SELECT name, sha256 FROM files ORDER BY name"):
            yield raw.decode("utf-8", "surrogateescape"), sha256  # as _raw encodes it

    def commit(self, tree: IndexedTree) -> None:
        """Take every recorded file's stat as staging has it now (a kept one's is
        known), and put the index in place of the old one (fsynced). Call it once the
        unpack passed every check. Raises OSError, sqlite3.Error."""
        self._flush()
        db, root = self._db, os.fsencode(self.staging)
        names = [name for (name,) in db.execute("SELECT name FROM files WHERE ino IS NULL")]
        rows = []
        linked = False
        for name in names:
            st = os.lstat(os.path.join(root, name))
            linked = linked or st.st_nlink > 1
            numbers = stat_numbers(st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
            rows.append((*numbers, name))
        db.executemany(
            "UPDATE files SET ino = ?, size = ?, mtime_ns = ?, ctime_ns = ? WHERE name = ?",
            rows,
        )
        meta = {
            "format": str(INDEX_FORMAT),
            "archive": tree.archive,
            "manifest_sha256": tree.manifest_sha256,
            "state": "complete",
            "linked": "1" if linked else "0",
        }
        db.executemany("INSERT INTO meta (k, v) VALUES (?, ?)", meta.items())
        db.execute("COMMIT")
        self._carry_states()  # (ATTACH cannot be inside a transaction)
        db.close()
        with open(self._new, "rb") as handle:
            os.fsync(handle.fileno())
        os.rename(self._new, self.path)
        with contextlib.suppress(FileNotFoundError):
            self.path.with_name(self.path.name + _OLD).unlink()
        fsync_dir(self.path.parent)

    def _carry_states(self) -> None:
        """Copy the old index's hash states (:func:`take` left it beside, ``.old``) of the
        files that kept their name and digest and got none this time (kept, ``same`` and
        ``base`` members)."""
        old = self.path.with_name(self.path.name + _OLD)
        if old.exists():
            sha256state.carry_states(self._db, str(old))

    def abort(self) -> None:
        """Forget what was recorded (the unpack failed)."""
        with contextlib.suppress(sqlite3.Error):
            self._db.close()
        with contextlib.suppress(FileNotFoundError):
            self._new.unlink()
