"""The client's file cache: the regular files of its last published archive, so that the
next run neither reads nor hashes a file that did not change (docs/architecture.md,
*Incremental pulls*).

``<cache_dir>/files.db`` (SQLite) holds per archive member name the file's ``dev``,
``ino``, ``size``, ``mtime_ns``, ``ctime_ns``, mode, owner and group as they were
*before* it was read, whether its extended attributes went into the archive, its sha256,
its chunk list (files of :data:`CHUNKED_FROM` bytes or more) and whether the row may be
trusted without reading the file again (:attr:`CachedFile.cacheable`); table ``states``
keeps the hash state of large files (:mod:`.sha256state`), so that a file that only grew
is hashed by its new bytes (*Hash states of grown files* in docs/architecture.md; a cache
without the table, an older client's, has none). Its meta
names the archive it describes and that archive's manifest sha256: the base of the next
delta.

A run reads the old cache and writes the new one beside it (``files.db.new``);
:meth:`FileCache.swap` puts the new one in place after the archive is published. Losing
the cache costs one full archive, never correctness: any doubt (another format, host or
chunker, an unreadable file) makes the cache empty.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import sqlite3
from dataclasses import dataclass
from pathlib import Path

from ..fsutil import fsync_dir
from . import chunker, sha256state
from .ordered import OrderedLookup, same_stat_numbers, stat_numbers
from .sidecar import BaseRef

CACHE_FORMAT = 5
"""2: names stored as bytes (a name need not be UTF-8); 3: an index by inode (renames);
4: mode, owner, group and whether extended attributes were read (a row vouches for the
file's metadata too: an unchanged file travels as a ``same`` member); 5: the bytes of a
file's holes (an unchanged file counts them against ``max_holes_and_links`` unread)."""
CACHE_NAME = "files.db"
_BATCH = 1024
"""Rows of the new cache gathered before they are inserted at once."""
RACY_NS = 2_000_000_000
"""A file whose mtime or ctime lies this close to the moment it was read may change again
within the same clock tick unseen (git's racy-clean problem): it is read again next run."""
CHUNKED_FROM = 1 << 20
"""Files this large or larger are split into chunks, so that they can travel as deltas."""


@dataclass(frozen=True, slots=True)
class CachedFile:
    """One regular file as the last archive had it."""

    dev: int
    ino: int
    size: int
    mtime_ns: int
    ctime_ns: int
    sha256: str
    chunks: bytes | None = None
    """The packed chunk list (:func:`.chunker.pack`), for files of CHUNKED_FROM or more."""
    cacheable: bool = True
    mode: int = 0
    uid: int = 0
    gid: int = 0
    xattrs: bool = False
    """Its extended attributes (and ACLs) were read into the archive (the task's
    ``xattrs``): a row read without them cannot vouch for a run that wants them."""
    holes: int = 0
    """Bytes of the file's holes (its size less the data its sparse map holds; 0 for a
    file archived dense)."""

    @classmethod
    def of(
        cls,
        st: os.stat_result,
        sha256: str,
        chunks: bytes | None,
        read_at_ns: int,
        xattrs: bool = False,
        holes: int = 0,
    ) -> CachedFile:
        """The row for a file with stat ``st`` (taken before it was read at
        ``read_at_ns``), the digest of what was read, and whether its extended
        attributes were."""
        racy = max(st.st_mtime_ns, st.st_ctime_ns) >= read_at_ns - RACY_NS
        return cls(
            st.st_dev,
            st.st_ino,
            st.st_size,
            st.st_mtime_ns,
            st.st_ctime_ns,
            sha256,
            chunks,
            not racy,
            st.st_mode,
            st.st_uid,
            st.st_gid,
            xattrs,
            holes,
        )

    def unchanged(self, st: os.stat_result) -> bool:
        """True when the file with stat ``st`` may be taken from this row unread: its
        stat fields, mode and owner included (ctime covers chmod and chown, except where
        a file system's owners and modes come from mount options)."""
        if not self.cacheable:
            return False
        if (self.mode, self.uid, self.gid) != (st.st_mode, st.st_uid, st.st_gid):
            return False
        return same_stat_numbers(
            (self.dev, self.ino, self.size, self.mtime_ns, self.ctime_ns),
            (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns),
        )

    def uncacheable(self) -> CachedFile:
        """This row, to be checked by reading the file next run (it changed while read,
        or its extended attributes could not be read)."""
        return dataclasses.replace(self, cacheable=False)


_COLUMNS = (
    "dev, ino, size, mtime_ns, ctime_ns, sha256, chunks, cacheable, mode, uid, gid, xattrs, holes"
)
"""A row's columns, in :class:`CachedFile`'s order."""


def _row(row) -> CachedFile:
    dev, ino, size, mtime_ns, ctime_ns, sha256, chunks, cacheable, mode, uid, gid, xattrs, holes = (
        row
    )
    return CachedFile(
        dev,
        ino,
        size,
        mtime_ns,
        ctime_ns,
        sha256,
        chunks,
        bool(cacheable),
        mode,
        uid,
        gid,
        bool(xattrs),
        holes,
    )


def _meta(host: str) -> dict[str, str]:
    return {"format": str(CACHE_FORMAT), "host": host, "chunker": chunker.PARAMS}


_INSERT_ROW = "INSERT OR REPLACE INTO files VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"


class FileCache:
    """The old cache (read) and the new one (written) of one run."""

    def __init__(self, directory: Path, host: str):
        self.directory = directory
        self.host = host
        self.path = directory / CACHE_NAME
        self._new_path = directory / (CACHE_NAME + ".new")
        self._old: sqlite3.Connection | None = None
        self._rows: OrderedLookup | None = None
        self._new: sqlite3.Connection | None = None
        self._pending: list[tuple] = []
        """Rows of the new cache not inserted yet."""
        self._states: list[tuple[bytes, bytes]] = []
        self.lost: str | None = None
        """Why the new cache could not be written (a full disk): it was dropped, and the
        old one goes at :meth:`swap`, so the next run is full. None while all is well."""
        self.base: BaseRef | None = None
        """The archive the old cache describes (None: no usable cache)."""

    # -- the old cache ------------------------------------------------------------------

    def load(self) -> str | None:
        """Open the old cache. Returns None when it is usable (:attr:`base` set), else
        why not (the run is then a full one)."""
        if not self.path.exists():
            return "there is no file cache yet"
        try:
            db = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True)
            meta = dict(db.execute("SELECT k, v FROM meta"))
        except sqlite3.Error as exc:
            return f"the file cache {self.path} is unreadable ({exc})"
        expected = _meta(self.host)
        if any(meta.get(k) != v for k, v in expected.items()):
            db.close()
            return "the file cache was made by another version or for another host name"
        if not meta.get("archive") or not meta.get("manifest_sha256"):
            db.close()
            return "the file cache is incomplete"
        self._old = db
        self._rows = OrderedLookup(db, _COLUMNS)
        self.base = BaseRef(meta["archive"], meta["manifest_sha256"])
        return None

    def lookup(self, name: str) -> CachedFile | None:
        """The old row of the member ``name``, or None (cheapest in walk order)."""
        if self._rows is None:
            return None
        row = self._rows.get(name.encode("utf-8", "surrogateescape"))
        return _row(row) if row else None

    def lookup_inode(self, dev: int, ino: int) -> tuple[str, CachedFile] | None:
        """A member name the old cache has for the file ``(dev, ino)``, and its row."""
        if self._old is None:
            return None
        query = f"SELECT name, {_COLUMNS} FROM files WHERE dev = ? AND ino = ? LIMIT 1"  # noqa: S608
        row = self._old.execute(query, stat_numbers(dev, ino)).fetchone()
        return (row[0].decode("utf-8", "surrogateescape"), _row(row[1:])) if row else None

    def state(self, name: str) -> bytes | None:
        """The saved hash state of the old cache's member ``name``, or None."""
        if self._old is None:
            return None
        try:
            found = self._old.execute(
                "SELECT state FROM states WHERE name = ?",
                (name.encode("utf-8", "surrogateescape"),),
            ).fetchone()
        except sqlite3.Error:
            return None  # (an older client's cache has no states)
        return found[0] if found and isinstance(found[0], bytes) else None  # (a blob, or nothing)

    def names(self):
        """Every member name the old cache has (raw bytes), in the order of their bytes."""
        if self._old is None:
            return
        cursor = self._old.execute("SELECT name FROM files ORDER BY name")
        while batch := cursor.fetchmany(512):
            for (raw,) in batch:
                yield raw

    # -- the new cache ------------------------------------------------------------------

    def start(self) -> None:
        """Begin the new cache (``files.db.new``). Raises OSError (a sqlite3.Error, a
        full disk, as one)."""
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(self.directory, 0o700)
        with contextlib.suppress(FileNotFoundError):
            self._new_path.unlink()
        try:
            self._new = self._begin()
        except sqlite3.Error as exc:
            with contextlib.suppress(FileNotFoundError):
                self._new_path.unlink()
            raise OSError(str(exc)) from None

    def _begin(self) -> sqlite3.Connection:
        """The new cache's database, its tables made and a transaction begun."""
        db = sqlite3.connect(self._new_path, isolation_level=None)
        db.executescript(
            """
            PRAGMA journal_mode=DELETE;
            PRAGMA synchronous=OFF;
            CREATE TABLE meta (k TEXT PRIMARY KEY, v TEXT NOT NULL);
            CREATE TABLE files (name BLOB PRIMARY KEY, dev INTEGER, ino INTEGER,
                size INTEGER, mtime_ns INTEGER, ctime_ns INTEGER, sha256 TEXT NOT NULL,
                chunks BLOB, cacheable INTEGER, mode INTEGER, uid INTEGER, gid INTEGER,
                xattrs INTEGER, holes INTEGER) WITHOUT ROWID;
            CREATE INDEX files_inode ON files (dev, ino);
            CREATE TABLE states (name BLOB PRIMARY KEY, state BLOB NOT NULL) WITHOUT ROWID;
            BEGIN;
            """
        )
        return db

    def record(self, name: str, row: CachedFile, state: bytes | None = None) -> None:
        """Put the member ``name`` into the new cache (inserted by the thousand), with
        the hash ``state`` of the bytes its digest is of, when there is one (a row taken
        from the old cache keeps its state: :meth:`finish`)."""
        if self._new is not None:
            if state is not None:
                self._states.append((name.encode("utf-8", "surrogateescape"), state))
            self._pending.append(
                (
                    name.encode("utf-8", "surrogateescape"),
                    *stat_numbers(row.dev, row.ino, row.size, row.mtime_ns, row.ctime_ns),
                    row.sha256,
                    row.chunks,
                    int(row.cacheable),
                    row.mode,
                    row.uid,
                    row.gid,
                    int(row.xattrs),
                    row.holes,
                )
            )
            if len(self._pending) >= _BATCH:
                self._flush()

    def _flush(self) -> None:
        """Insert the rows :meth:`record` gathered, in their order (a later row of a
        name replaces an earlier one)."""
        if self._new is not None:
            try:
                self._new.executemany(_INSERT_ROW, self._pending)
                # (a state is checked against its row's size and digest before it is used)
                self._new.executemany("INSERT OR REPLACE INTO states VALUES (?, ?)", self._states)
            except (sqlite3.Error, OSError) as exc:
                self._drop(exc)
        self._pending.clear()
        self._states.clear()

    def _drop(self, exc: BaseException) -> None:
        """Give the new cache up (it could not be written: ``exc``, a full disk): the
        run goes on without it, and :attr:`lost` says why. A cache never fails a run: a
        day is never lost for it (helper-163 F5: a run on a full cache disk failed,
        every day)."""
        self.lost = f"cannot write the file cache in {self.directory}: {exc}"
        self._close_new()

    def finish(self, archive: str, manifest_sha256: str) -> None:
        """Complete the new cache for ``archive`` (fsynced; not yet in place); one that
        cannot be written is dropped (:attr:`lost`)."""
        db = self._new
        if db is None:
            return
        self._flush()
        if self._new is None:
            return
        meta = {**_meta(self.host), "archive": archive, "manifest_sha256": manifest_sha256}
        try:
            db.executemany("INSERT INTO meta VALUES (?, ?)", meta.items())
            db.execute("COMMIT")
            self._carry_states(db)  # (ATTACH cannot be inside a transaction)
            db.close()
            self._new = None
            with open(self._new_path, "rb") as handle:
                os.fsync(handle.fileno())
        except (sqlite3.Error, OSError) as exc:
            self._drop(exc)

    def _carry_states(self, db: sqlite3.Connection) -> None:
        """Copy the old cache's hash states of the files whose name and digest this run
        kept (unchanged files: recorded from their old rows, never read)."""
        if self._old is not None:
            sha256state.carry_states(db, str(self.path))

    def swap(self) -> None:
        """Put the finished new cache in place of the old one; when the new one was
        dropped (:attr:`lost`), or cannot be put in place (then :attr:`lost` says why),
        remove both: the old one describes an archive that is no longer the newest, so
        the next run is full. Never raises."""
        self.close()
        if self.lost is None and self._new_path.exists():
            try:
                os.rename(self._new_path, self.path)
                fsync_dir(self.directory)
                return
            except OSError as exc:  # (after the archive's publication: helper-165 F2)
                self.lost = f"cannot write the file cache in {self.directory}: {exc}"
        if self.lost is not None:
            for path in (self._new_path, self.path):
                with contextlib.suppress(OSError):
                    path.unlink()

    def close(self) -> None:
        """Close both caches; an unfinished new one is removed."""
        if self._old is not None:
            self._rows = None
            self._old.close()
            self._old = None
        self._pending.clear()
        if self._new is not None:
            self._close_new()

    def _close_new(self) -> None:
        """Close the unfinished new cache and remove it."""
        if self._new is not None:
            with contextlib.suppress(sqlite3.Error):
                self._new.close()
            self._new = None
        with contextlib.suppress(OSError):
            self._new_path.unlink()


def drop(directory: Path) -> None:
    """Remove the cache (the next run is full)."""
    for name in (CACHE_NAME, CACHE_NAME + ".new"):
        with contextlib.suppress(FileNotFoundError):
            (directory / name).unlink()
