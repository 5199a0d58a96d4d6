"""Write the archive as one stream: tar (PAX) -> compressor -> a temporary file.

Every file is read once: its bytes are hashed for ``MANIFEST.sha256`` while they are
written into the tar stream, which a ``zstd -T0`` (or gzip) child compresses on the
other cores (:mod:`.tee` takes its output). Owners, modes, nanosecond mtimes, symlinks,
hard links, FIFOs, set-id bits, extended attributes (file capabilities and POSIX ACLs
included) are kept; files with holes travel without them (:mod:`.sparse`); sockets and
device nodes are skipped with a warning. How a file that changes while it is read is
handled: :mod:`.filedata`.

With :class:`Incremental`, every regular file is recorded in the run's file cache
(:mod:`.filecache`), and a delta archive carries the bytes of changed files only: a file
the cache vouches for is a ``base`` member (not read), a read file whose digest is the
cached one too, and a changed file of CHUNKED_FROM bytes or more a ``delta`` member of
copied chunks and literal bytes (docs/archive-format.md, *Delta archives*).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import grp
import hashlib
import os
import pwd
import stat
import tempfile
import time
import zlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, NamedTuple

from .. import forks
from ..errors import ArchiveError, CommandError, Interrupted
from ..fsutil import (
    DEEPEST_LEVELS,
    DEPTH_HINT,
    anchored_dir,
    anchored_path,
    descriptor_room,
    open_trusted_dir,
    pread_span,
    same_entry,
    untrusted_link,
)
from ..log import get_logger
from ..progress import STATUS, Progress
from ..runner import Runner, RunningCommand
from ..units import human_size
from . import acl, chunker, deltaops, removed, sha256state, sparse, tarformat
from .compression import compress_command, test_command
from .deltaops import BASE, BASE_KEY, DATA_KEY, DELTA, REALSIZE_KEY, SAME
from .filecache import CHUNKED_FROM, CachedFile, FileCache
from .filedata import REREAD_LIMIT, Content, read_content, streamed_note
from .manifest import MANIFEST_KEY, MANIFEST_NAME, NOTICE_LINE, PARTIAL, format_line, order
from .sparse import Region
from .stats import ExcludeFn, TaskStats
from .tee import Tee

log = get_logger("archive")
_SAME_RECORD = [(DATA_KEY, SAME)]

BLOCK = tarformat.BLOCK
RECORD = 20 * BLOCK
CHUNK = 1 << 20
_BUFFER = 1 << 20
GROWN_TAIL_MAX = 64 << 20
"""The most new bytes a file without a chunk list that only grew sends as a delta (a
copy of its old part and the new bytes, spooled first): past this it travels whole."""
_F_SETPIPE_SZ = 1031
_O_NOATIME = getattr(os, "O_NOATIME", 0)
MAX_ARCNAME = 4000
"""Bytes a member's name may have: the server's staging tree and restic/borg must be able
to reach it by a relative path under PATH_MAX (4096). A deeper file is skipped, named in a
warning; the rest is archived."""
MAX_XATTR_BYTES = 768 << 10
"""An entry's extended attributes archived at most (names, values and 32 bytes a record
for its framing): its extended header must stay under every reader's MAX_META (1 MiB)
with its path and other records (:func:`_within_header`)."""


@dataclass
class WrittenArchive:
    """The finished archive file: its counts, and the sha256 and size of its bytes."""

    path: Path
    members: int
    files: int
    content_bytes: int
    manifest: dict[str, str] = field(default_factory=dict)
    sha256: str = ""
    size: int = 0
    tested: bool = False
    """The compressor's own checksums were verified (zstd -t / gzip -t) as it was written."""
    manifest_sha256: str = ""
    """The sha256 of the complete manifest (a delta's member may list only some files)."""
    sent_bytes: int = 0
    """Bytes of file content the archive carries (a delta: only what changed)."""


@dataclass(frozen=True, slots=True)
class _At:
    """Where an entry is opened and read: ``name`` below the directory open as
    ``dir_fd`` (None: ``name`` is a path), and ``shown``, the path warnings name."""

    dir_fd: int | None
    name: str
    shown: str
    fd: int | None = None
    """The entry itself, open (a directory the walk opened and checked first)."""

    def attrs_at(self) -> str | int:
        """Where its extended attributes are read: its own descriptor, or a path the
        kernel resolves from its open directory (:func:`anchored_path`); the empty
        string without /proc (a path by name could follow a parent swapped meanwhile)."""
        if self.fd is not None:
            return self.fd
        if self.dir_fd is None:
            return self.name
        return anchored_path(self.dir_fd, self.name)


class _Names(NamedTuple):
    """An entry's path (which warnings name), its path relative to the tree's top (for
    excludes) and its member name."""

    path: str
    rel: str
    arc: str


@dataclass(frozen=True, slots=True)
class _Level:
    """One directory of the walk: its path (which warnings name), its path relative to
    the tree's top (for excludes) and in the archive, its open descriptor and the names
    in it still to add."""

    path: str
    rel: str
    arc: str
    fd: int
    names: Iterator[str]


class _Walk:
    """The directories from the tree's top down to the one being added, each open (one
    descriptor a level: a directory swapped for a symlink above cannot redirect what is
    read below). Closes them all on exit."""

    def __init__(self, levels: list[_Level]):
        self.levels = levels
        self.depth_limit = descriptor_room()

    def enter(self, level: _Level) -> None:
        self.levels.append(level)

    def leave(self) -> None:
        os.close(self.levels.pop().fd)

    def __enter__(self) -> _Walk:
        return self

    def __exit__(self, *exc) -> None:
        while self.levels:
            self.leave()


@dataclass(frozen=True, slots=True)
class _OpenFile:
    """The regular file being added, as each step of its way into the archive needs it:
    its descriptor (open until the add returns), its member name, what was read of it,
    the extended attributes that travel with it (None: not archived), its path (which
    warnings name) and its task's figures and warnings."""

    fd: int
    arcname: str
    content: Content
    attrs: dict[str, bytes] | None
    path: str
    stats: TaskStats


@dataclass
class Incremental:
    """How a run uses its file cache. ``delta``: unchanged files become ``base`` members
    and changed large ones ``delta`` members (else every file is sent whole); the new
    cache is recorded either way. ``spool_dir`` holds a delta member while it is made."""

    cache: FileCache
    delta: bool
    spool_dir: Path
    lean: bool = False
    """A lean delta: unchanged files with one link are left out, and the base's files
    the tree no longer has are listed in ``REMOVED.list`` (sidecar format 3)."""
    fresh_cuts: bool = False
    """Cut every large file that had a chunk list afresh, never taking the cached list
    of unchanged bytes (a full archive someone asked for: the cache may be what went
    wrong)."""


class ArchiveWriter:
    """Streams entries into ``path`` (created exclusively; removed again on abort)."""

    def __init__(
        self,
        path: Path,
        compression: str,
        level: int | None = None,
        runner: Runner | None = None,
        xattrs: bool = True,
        *,
        incremental: Incremental | None = None,
        max_holes_and_links: int | None = None,
    ):
        self.path = Path(path)
        self.incremental = incremental
        self.max_holes_and_links = max_holes_and_links
        """Bytes of holes and of further hard-link names the archive may hold (None: no
        bound): :meth:`_fits`."""
        self._unstored = {True: 0, False: 0}
        """Bytes of holes and of further hard-link names in the archive so far, of root's
        files (True) and of every other owner's (False): each has the bound."""
        self._sent = 0
        self._base_of: str | None = None
        """The base's name of the file being added, when it was renamed since."""
        self._state: bytes | None = None
        """The hash state of the file just read whole, when it has one (into the cache)."""
        self._doubt = False
        """The file just read changed under the read in a way its stat may not show: its
        row is read again next run, without a state."""
        self.compression = compression
        self.level = level
        self.runner = runner or Runner(log)
        self.xattrs = xattrs
        self._file: BinaryIO | None = None
        self._fd = -1
        self._compressor: RunningCommand | None = None
        self._tee: Tee | None = None
        self._sha256 = hashlib.sha256()
        self._buf = bytearray()
        self._offset = 0
        self._manifest: dict[str, str] = {}
        self._from_base: set[str] = set()
        """The ``base`` and ``same`` members: a delta's manifest member leaves them out."""
        self._first_names: dict[tuple[int, int], _FirstName] = {}
        """What became of each file (device, inode) of several names at its first name:
        its later names follow it (:meth:`_add_link`)."""
        self._dirs: set[str] = set()
        self._others: set[str] = set()
        """Symlinks and FIFOs written (overlapping paths walk them twice)."""
        self._users: dict[int, str] = {}
        self._groups: dict[int, str] = {}
        self._members = 0
        self._files = 0
        self._content = 0
        self.progress: Progress | None = None
        """Moved on by every byte of the (uncompressed) stream, and shown, when set."""
        self._chunker_pool: ThreadPoolExecutor | None = None
        """The thread that cuts large files into chunks (:meth:`_cutting`)."""

    # -- lifecycle ----------------------------------------------------------------------

    def open(self) -> ArchiveWriter:
        """Create the file and start the compressor. Raises ArchiveError."""
        try:
            file = self._file = open(self.path, "xb")  # noqa: SIM115 - until finish/abort
        except OSError as exc:
            raise ArchiveError(f"cannot create {self.path}: {exc.strerror}") from None
        os.fchmod(file.fileno(), 0o600)
        argv = compress_command(self.compression, self.level)
        if argv is None:
            self._fd = file.fileno()
            return self
        read_end, write_end = os.pipe2(os.O_CLOEXEC)
        out_read, out_write = os.pipe2(os.O_CLOEXEC)
        for fd in (write_end, out_read):
            with contextlib.suppress(OSError):  # a bigger pipe means fewer context switches
                fcntl.fcntl(fd, _F_SETPIPE_SZ, CHUNK)
        try:
            with (
                os.fdopen(read_end, "rb", buffering=0) as child_stdin,
                os.fdopen(out_write, "wb", buffering=0) as child_stdout,
            ):
                self._compressor = self.runner.start(
                    argv, stdin=child_stdin, stdout=child_stdout, level=10
                )
            self._tee = Tee(out_read, file.fileno(), self.runner, test_command(self.compression))
        except BaseException:
            os.close(write_end)
            self._discard()
            raise
        self._fd = forks.kept_from_forks(write_end)
        return self

    def __enter__(self) -> ArchiveWriter:
        return self.open() if self._file is None else self

    def __exit__(self, exc_type, exc, _tb) -> None:
        if exc_type is not None:
            self.abort()

    def finish(self) -> WrittenArchive:
        """Append the manifest and the end-of-archive marker, flush everything to disk.

        Returns what was written. Raises ArchiveError (the file is then removed).
        """
        file = self._file
        if file is None:
            raise ArchiveError(f"{self.path} is not open")
        self._stop_cutting()
        try:
            manifest_sha256 = self._add_manifest()
            self._emit(bytes(2 * BLOCK))
            self._emit(bytes((-self._offset) % RECORD))
            self._flush()
            tee = self._tee
            if self._compressor is not None and tee is not None:
                forks.close(self._fd)
                self._fd = -1
                self._wait_compressor()
                tee.finish(self.path)
                sha256, size = tee.sha256.hexdigest(), tee.size
            else:
                sha256, size = self._sha256.hexdigest(), self._offset
            file.flush()
            os.fsync(file.fileno())
        except OSError as exc:
            self.abort()
            raise ArchiveError(f"cannot write {self.path}: {exc.strerror}") from None
        except BaseException:
            self.abort()
            raise
        file.close()
        self._file = None
        return WrittenArchive(
            self.path,
            self._members,
            self._files,
            self._content,
            dict(self._manifest),
            sha256,
            size,
            tested=self._tee is not None,
            manifest_sha256=manifest_sha256,
            sent_bytes=self._sent,
        )

    def _add_manifest(self) -> str:
        """Append the manifest member: every file's line, or (a delta with ``base`` or
        ``same`` members) the notice line and every line but theirs, marked partial.
        Returns the sha256 of the complete manifest, in either case."""
        inc = self.incremental
        if inc is not None and inc.delta and inc.lean:
            self._add_removed(inc.cache)
        names = sorted(self._manifest, key=order)
        lines = [format_line(name, self._manifest[name]) for name in names]
        complete = b"".join(lines)
        if not self._from_base:
            self._add_bytes(MANIFEST_NAME, complete, record=False)
        else:
            from_base = self._from_base
            listed = NOTICE_LINE + b"".join(
                line for name, line in zip(names, lines, strict=True) if name not in from_base
            )
            extra = [(MANIFEST_KEY, PARTIAL)]
            self._add_bytes(MANIFEST_NAME, listed, record=False, extra=extra)
        return hashlib.sha256(complete).hexdigest()

    def _add_removed(self, cache: FileCache) -> None:
        """A lean delta's ``REMOVED.list``: the base's files (the old cache's rows) that
        this archive did not record as regular files or hard links."""
        here = self._manifest
        gone = (raw for raw in cache.names() if raw.decode("utf-8", "surrogateescape") not in here)
        self._add_bytes(removed.REMOVED_NAME, removed.pack(gone), record=False)

    def abort(self) -> None:
        """Stop the compressor and the chunker thread, and delete the partial file."""
        self._stop_cutting()
        if self._compressor is not None and self._fd >= 0:
            with contextlib.suppress(OSError):
                forks.close(self._fd)
            self._fd = -1
        if self._compressor is not None:
            self._compressor.stop(grace=2.0)
            with contextlib.suppress(CommandError):
                self._compressor.wait()
            self._compressor = None
        if self._tee is not None:
            self._tee.thread.join(timeout=30)
            self._tee.stop()
        self._discard()

    def _discard(self) -> None:
        if self._file is not None:
            with contextlib.suppress(OSError):
                self._file.close()
            self._file = None
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    def _wait_compressor(self) -> None:
        if self._compressor is None:
            return
        try:
            self._compressor.wait()
        except CommandError as exc:
            if self._tee is not None:
                self._tee.thread.join(timeout=30)
                if self._tee.error is not None:  # the real cause: the file, not zstd
                    raise ArchiveError(
                        f"cannot write {self.path}: {self._tee.error.strerror}"
                    ) from None
            reason = exc.tail[-1] if exc.tail else exc.reason
            raise ArchiveError(f"the compressor failed writing {self.path}: {reason}") from None
        finally:
            self._compressor = None

    def _cutting(self) -> ThreadPoolExecutor:
        """The one thread that cuts large files into chunks beside the writing (started
        at the first such file, stopped by :meth:`finish` and :meth:`abort`)."""
        if self._chunker_pool is None:
            self._chunker_pool = ThreadPoolExecutor(1, thread_name_prefix="chunker")
        return self._chunker_pool

    def _stop_cutting(self) -> None:
        if self._chunker_pool is not None:
            self._chunker_pool.shutdown(wait=True, cancel_futures=True)
            self._chunker_pool = None

    # -- raw output ---------------------------------------------------------------------

    def _write(self, data) -> None:
        view = memoryview(data)
        if self.progress is not None:
            self.progress.advance(len(view))
            if STATUS.enabled:  # no text made per write unless a terminal shows it
                STATUS.show(self.progress.label, self.progress.text())
        if self._compressor is None:
            self._sha256.update(view)  # uncompressed: these bytes are the archive
        while view:
            try:
                written = os.write(self._fd, view)
            except BrokenPipeError:
                with contextlib.suppress(OSError):
                    forks.close(self._fd)
                self._fd = -1
                self._wait_compressor()
                raise ArchiveError(f"the compressor stopped reading ({self.path})") from None
            except OSError as exc:
                raise ArchiveError(f"cannot write {self.path}: {exc.strerror}") from None
            view = view[written:]

    def _flush(self) -> None:
        if self._buf:
            self._write(self._buf)
            self._buf = bytearray()

    def _emit(self, data) -> None:
        self._offset += len(data)
        if len(self._buf) + len(data) > _BUFFER:
            self._flush()
        if len(data) >= _BUFFER:
            self._write(data)
        else:
            self._buf += data

    # -- headers ------------------------------------------------------------------------

    def _uname(self, uid: int) -> str:
        if uid not in self._users:
            try:
                self._users[uid] = pwd.getpwuid(uid).pw_name
            except KeyError:
                self._users[uid] = ""
        return self._users[uid]

    def _gname(self, gid: int) -> str:
        if gid not in self._groups:
            try:
                self._groups[gid] = grp.getgrgid(gid).gr_name
            except KeyError:
                self._groups[gid] = ""
        return self._groups[gid]

    def _header(
        self,
        arcname: str,
        st: os.stat_result | None,
        kind: bytes,
        *,
        size: int = 0,
        linkname: str = "",
        xattrs: dict[str, bytes] | None = None,
        mode: int = 0o755,
        extra: list[tuple[bytes, bytes]] | None = None,
    ) -> bytes:
        self._members += 1
        if st is None:
            return tarformat.header(
                arcname,
                kind,
                mode=mode,
                size=size,
                linkname=linkname,
                mtime_ns=int(time.time()) * 1_000_000_000,
                uname="root",
                gname="root",
                pax=extra or None,
            )
        pax = list(extra or [])
        if xattrs:
            for key, value in xattrs.items():
                if key in acl.PAX_KEYS:
                    try:
                        pax.append((acl.PAX_KEYS[key].encode(), acl.to_text(value).encode()))
                        continue
                    except ValueError:
                        pass  # keep what we cannot parse as the raw attribute
                pax.append((b"SCHILY.xattr." + os.fsencode(key), value))
        return tarformat.header(
            arcname,
            kind,
            mode=st.st_mode,
            uid=st.st_uid,
            gid=st.st_gid,
            size=size,
            mtime_ns=st.st_mtime_ns,
            linkname=linkname,
            uname=self._uname(st.st_uid),
            gname=self._gname(st.st_gid),
            pax=pax or None,
        )

    def _read_xattrs(
        self, where: str | int, path: str, stats: TaskStats
    ) -> dict[str, bytes] | None:
        """The extended attributes of the entry at ``where``, a path or an open regular
        file's descriptor (warnings name ``path``)."""
        if not self.xattrs:
            return None
        if where == "":
            stats.warnings.append(f"{path}: extended attributes not read (/proc is not mounted)")
            return None
        try:
            follow = isinstance(where, int)  # (a descriptor: nothing to follow)
            names = os.listxattr(where, follow_symlinks=follow)
            if not names:
                return None
            return _within_header(
                {n: os.getxattr(where, n, follow_symlinks=follow) for n in sorted(names)},
                path,
                stats,
            )
        except OSError as exc:
            if exc.errno in (errno.ENOTSUP, errno.EOPNOTSUPP):
                return None
            stats.warnings.append(f"{path}: cannot read extended attributes: {exc.strerror}")
            return None

    # -- entries ------------------------------------------------------------------------

    def add_directory(self, arcname: str, mode: int = 0o755) -> None:
        """Add a directory entry that exists only in the archive (once per name)."""
        arcname = arcname.rstrip("/")
        if arcname and arcname not in self._dirs:
            self._dirs.add(arcname)
            self._emit(self._header(arcname, None, tarformat.DIRTYPE, mode=mode))

    def ensure_parents(self, arcname: str) -> None:
        """Add archive-only directory entries for every missing ancestor of ``arcname``."""
        parts = arcname.strip("/").split("/")[:-1]
        for i in range(1, len(parts) + 1):
            self.add_directory("/".join(parts[:i]))

    def _add_bytes(
        self,
        arcname: str,
        data: bytes,
        mode: int = 0o644,
        record: bool = True,
        extra: list[tuple[bytes, bytes]] | None = None,
    ):
        header = self._header(
            arcname, None, tarformat.REGTYPE, size=len(data), mode=mode, extra=extra
        )
        self._emit(header)
        self._emit(data)
        self._emit(bytes((-len(data)) % BLOCK))
        if record:
            self._manifest[arcname] = hashlib.sha256(data).hexdigest()

    def add_tree(
        self,
        source: Path,
        arcname: str,
        exclude: ExcludeFn | None = None,
        xattrs: bool = True,
        recursive: bool = True,
    ) -> TaskStats:
        """Add ``source`` as ``arcname`` and, if it is a directory, everything below it.

        ``exclude(relative_path, is_dir)`` leaves entries (and the trees below them) out.
        Returns the counts and the warnings: one odd entry (unreadable, vanished, changed
        while read, too deep) never costs more than itself, it is skipped or archived as
        read and named in a warning; ``source`` skipped whole (too long a name, reached
        through another user's symlink, below a link the archive holds) is named in the
        stats' ``unarchived`` too. Raises ArchiveError when the archive itself cannot be
        written, and FileNotFoundError when ``source`` does not exist.
        """
        stats = TaskStats()
        source_str = os.fspath(source).rstrip("/") or "/"
        if len(os.fsencode(arcname)) > MAX_ARCNAME:  # (its parents would go in first)
            self._too_long(source_str, arcname, stats)
            stats.unarchived.append(source_str)
            return stats
        top = self._open_top(source_str, stats)  # (raises FileNotFoundError)
        if top is None:
            stats.unarchived.append(source_str)
            return stats
        parent_fd, name, st = top
        held = self._written_above(arcname) or self._held_as_other(arcname, st.st_mode)
        if held is not None:
            os.close(parent_fd)
            stats.warnings.append(f"{source_str}: skipped: {held}")
            stats.unarchived.append(source_str)
            return stats
        try:
            self.ensure_parents(arcname)
            is_dir = stat.S_ISDIR(st.st_mode)
            fd = self._open_directory(parent_fd, name, source_str, st, stats) if is_dir else None
            if is_dir and fd is None:
                return stats
            with _Walk([]) as walk:
                if fd is not None:  # (the walk owns it now)
                    names = self._listing(fd, source_str, stats) if recursive else iter(())
                    walk.enter(_Level(source_str, "", arcname, fd, names))
                if not (is_dir and arcname.rstrip("/") in self._dirs):
                    at = _At(parent_fd, name, source_str, fd)
                    self._add_entry(source_str, arcname, st, stats, xattrs, at)
                self._walk(walk, stats, exclude, xattrs)
        finally:
            os.close(parent_fd)
        return stats

    @staticmethod
    def _open_top(source: str, stats: TaskStats) -> tuple[int, str, os.stat_result] | None:
        """The directory holding ``source`` opened by descriptors from ``/``, following
        only symlinks root alone could have made (:func:`open_trusted_dir`), with
        ``source``'s name and ``lstat`` below it; None, said, when a component above is
        a symlink another user could have made (an outside attack: a user who owns a
        directory on a configured path swapped the next one for a symlink to root's,
        and root's files were archived). Raises FileNotFoundError when ``source`` does
        not exist, OSError when it cannot be reached."""
        parent, name = os.path.split(source)
        try:
            parent_fd = open_trusted_dir(Path(parent or "/"))
        except OSError as exc:
            if exc.errno in (errno.ENOENT, errno.ENOTDIR):
                raise FileNotFoundError(errno.ENOENT, "no such file or directory", source) from None
            if exc.errno != errno.ELOOP:
                raise
            link = untrusted_link(Path(source)) or parent
            stats.warnings.append(
                f"{source}: skipped: {link} on its way is a symlink another user could have "
                "made or swapped; name the real path"
            )
            return None
        name = name or "."  # source is /
        try:
            return parent_fd, name, os.stat(name, dir_fd=parent_fd, follow_symlinks=False)
        except BaseException:
            os.close(parent_fd)
            raise

    def _walk(self, walk: _Walk, stats: TaskStats, exclude: ExcludeFn | None, xattrs: bool) -> None:
        """Depth first, each directory's whole subtree right after its header: the order
        `tar -c` writes and GNU tar relies on to restore directory mtimes. Every entry is
        looked at, read and listed below its directory's descriptor (a user who swaps a
        directory for a symlink meanwhile cannot lead the walk out of the tree), its
        directory checked to be the one looked at when it is opened."""
        while walk.levels:
            level = walk.levels[-1]
            name = next(level.names, None)
            if name is None:
                walk.leave()
                continue
            path, rel = f"{level.path}/{name}", f"{level.rel}/{name}" if level.rel else name
            arc = f"{level.arc}/{name}"
            est = self._entry_stat(level.fd, name, path, arc, stats)
            if est is None:
                continue
            is_dir = stat.S_ISDIR(est.st_mode)
            if exclude is not None and exclude(rel, is_dir):
                continue
            held = self._held_as_other(arc, est.st_mode)
            if held is not None:
                stats.warnings.append(f"{path}: skipped: {held}")
                continue
            if is_dir:
                self._directory(walk, level.fd, _Names(path, rel, arc), est, (stats, xattrs))
            else:
                self._add_entry(path, arc, est, stats, xattrs, _At(level.fd, name, path))

    def _directory(
        self,
        walk: _Walk,
        parent_fd: int,
        names: _Names,
        est: os.stat_result,
        how: tuple[TaskStats, bool],
    ) -> None:
        """Add a directory of the one open as ``parent_fd`` and go into it: opened and
        checked to be the one looked at (``est``) before anything of it is read (its
        header's extended attributes come from that descriptor); one replaced meanwhile
        is skipped whole, said. ``how``: the task's figures and whether xattrs travel."""
        (path, rel, arc), (stats, xattrs) = names, how
        name = path.rsplit("/", 1)[-1]
        if len(walk.levels) >= walk.depth_limit:
            self._add_entry(path, arc, est, stats, xattrs, _At(parent_fd, name, path))
            stats.warnings.append(
                f"{path}: skipped what is in it, deeper than {walk.depth_limit} directories"
                + (f" ({DEPTH_HINT})" if walk.depth_limit < DEEPEST_LEVELS else "")
            )
            return
        fd = self._open_directory(parent_fd, name, path, est, stats)
        if fd is None:
            return
        try:
            self._add_entry(path, arc, est, stats, xattrs, _At(parent_fd, name, path, fd))
        except BaseException:
            os.close(fd)
            raise
        walk.enter(_Level(path, rel, arc, fd, self._listing(fd, path, stats)))

    @staticmethod
    def _open_directory(
        parent_fd: int | None, name: str, path: str, est: os.stat_result, stats: TaskStats
    ) -> int | None:
        """The directory ``name`` below ``parent_fd`` opened, when it is the one looked
        at; else None, the warning said (it is skipped whole)."""
        try:
            fd = anchored_dir(parent_fd, name, est)
        except OSError as exc:
            stats.warnings.append(f"{path}: skipped, cannot be opened: {exc.strerror}")
            return None
        if fd is None:
            stats.warnings.append(f"{path}: replaced while being read; skipped with what is in it")
        return fd

    @staticmethod
    def _listing(fd: int, path: str, stats: TaskStats) -> Iterator[str]:
        """The names in the directory open as ``fd``, sorted (none, said, when it cannot
        be listed)."""
        try:
            return iter(sorted(os.listdir(fd)))
        except OSError as exc:
            stats.warnings.append(
                f"{path}: skipped what is in it, cannot be listed: {exc.strerror}"
            )
        return iter(())

    def _entry_stat(
        self, dir_fd: int, name: str, path: str, arcname: str, stats: TaskStats
    ) -> os.stat_result | None:
        """The entry's ``lstat`` below its directory's descriptor, or None when it is
        skipped: gone, unreadable, or too long a path (checked first: such a path may be
        too long for the kernel too)."""
        if len(os.fsencode(arcname)) > MAX_ARCNAME:
            self._too_long(path, arcname, stats)
            return None
        try:
            return os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        except FileNotFoundError:
            return None
        except OSError as exc:
            stats.warnings.append(f"{path}: skipped, cannot be read: {exc.strerror}")
            return None

    @staticmethod
    def _too_long(path: str, arcname: str, stats: TaskStats) -> None:
        size = len(os.fsencode(arcname))
        stats.warnings.append(
            f"{path}: skipped, its path is too long to back up "
            f"({size} bytes in the archive; at most {MAX_ARCNAME})"
        )

    def _add_entry(
        self,
        path: str,
        arcname: str,
        st: os.stat_result,
        stats: TaskStats,
        xattrs: bool,
        at: _At | None = None,
    ) -> None:
        """Add one entry: ``path`` is what warnings name, ``at`` where it is opened and
        read (below its directory's descriptor; ``path`` itself when None). Raises
        ArchiveError for any failure that leaves the stream in the middle of a member
        (a header promised bytes that did not follow): the caller must not go on
        writing into it, and the archive is never published."""
        before = self._offset
        try:
            self._add_one(at or _At(None, path, path), arcname, st, stats, xattrs)
        except (ArchiveError, Interrupted):
            raise  # (each stops the run as it is)
        except Exception as exc:
            if self._offset == before:
                raise  # nothing of the entry was written: the stream is still whole
            raise ArchiveError(
                f"the archive broke off in the middle of {path} "
                f"({type(exc).__name__}); it is not published"
            ) from exc

    def _add_one(
        self, at: _At, arcname: str, st: os.stat_result, stats: TaskStats, xattrs: bool
    ) -> None:
        path, mode = at.shown, st.st_mode
        if len(os.fsencode(arcname)) > MAX_ARCNAME:
            self._too_long(path, arcname, stats)
        elif stat.S_ISREG(mode):
            if arcname not in self._manifest:  # listed twice (overlapping paths): once
                self._add_file(at, arcname, st, stats, xattrs)
        elif stat.S_ISDIR(mode):
            attrs = self._read_xattrs(at.attrs_at(), path, stats) if xattrs else None
            self._dirs.add(arcname)
            self._emit(self._header(arcname, st, tarformat.DIRTYPE, xattrs=attrs))
        elif arcname in self._others:
            return  # listed twice (overlapping paths): once, as a file is
        elif stat.S_ISLNK(mode):
            try:
                target = os.readlink(at.name, dir_fd=at.dir_fd)
            except FileNotFoundError:
                return
            # (its own: security.selinux, trusted.*; helper-159 F3 saw them dropped)
            attrs = self._read_xattrs(at.attrs_at(), path, stats) if xattrs else None
            self._others.add(arcname)
            self._emit(self._header(arcname, st, tarformat.SYMTYPE, linkname=target, xattrs=attrs))
        elif stat.S_ISFIFO(mode):
            attrs = self._read_xattrs(at.attrs_at(), path, stats) if xattrs else None
            self._others.add(arcname)
            self._emit(self._header(arcname, st, tarformat.FIFOTYPE, xattrs=attrs))
        else:
            kind = "socket" if stat.S_ISSOCK(mode) else "device node"
            stats.warnings.append(f"{path}: skipped, a {kind} is not backed up")

    def _add_file(
        self, at: _At, arcname: str, st: os.stat_result, stats: TaskStats, xattrs: bool
    ) -> None:
        path = at.shown
        if st.st_nlink > 1 and self._add_link(path, arcname, st, stats):
            return
        old = self._cached(at, arcname, st, stats, xattrs)
        if old is False:
            return
        fd = self._opened(at, st, stats)
        if fd is None:
            return
        read_at = time.time_ns()
        warned = stats.warnings.total
        self._state, self._doubt = None, False
        try:
            attrs = self._read_xattrs(fd, path, stats) if xattrs else None
            partial_attrs = stats.warnings.total > warned  # read again next run, not same
            try:
                content = read_content(fd)  # nothing of the file is in the archive yet
            except OSError as exc:
                stats.warnings.append(f"{path}: skipped, cannot be read: {exc.strerror}")
                return
            if not self._fits_holes(path, st, content.holes, stats):
                return
            file = _OpenFile(fd, arcname, content, attrs, path, stats)
            digest, chunks = self._add_content(
                file, old=old if isinstance(old, CachedFile) else None
            )
            note = content.note or (
                streamed_note(content.stat, fd) if content.data is None else None
            )
        finally:
            os.close(fd)
        if note:
            stats.warnings.append(f"{path}: {note}")
        row = CachedFile.of(
            content.stat, digest, chunks, read_at, xattrs and self.xattrs, content.holes
        )
        row, state = self._trusted(row, doubted=bool(note or partial_attrs))
        self._recorded(arcname, st, row, stats, content.size, state=state)

    @staticmethod
    def _opened(at: _At, st: os.stat_result, stats: TaskStats) -> int | None:
        """The regular file at ``at`` opened for reading, when it is still the file
        looked at as ``st``; None when it is not (vanished, unreadable, swapped), said."""
        path = at.shown
        try:
            fd = _open_noatime(at)
        except FileNotFoundError:
            stats.warnings.append(f"{path}: vanished before it could be read")
            return None
        except OSError as exc:
            stats.warnings.append(f"{path}: skipped, {_unopened(exc)}")
            return None
        swapped = _swapped(os.fstat(fd), st)
        if swapped:
            os.close(fd)
            stats.warnings.append(f"{path}: skipped, {swapped}")
            return None
        return fd

    def _trusted(self, row: CachedFile, doubted: bool) -> tuple[CachedFile, bytes | None]:
        """The cache row and hash state to record for a file just read with ``row``:
        when ``doubted`` (or the read's own doubt, ``_doubt``), the row marked to be read
        again next run, and no state."""
        if doubted or self._doubt:
            return row.uncacheable(), None  # (a doubtful row is hashed whole next run)
        return row, self._state

    def _cached(
        self, at: _At, arcname: str, st: os.stat_result, stats: TaskStats, xattrs: bool
    ) -> CachedFile | bool | None:
        """The file's row in the cache (None: none); False when the row vouched for the
        file, its metadata and (``xattrs``: the task archives them) its extended
        attributes read as this run would, and it went into the delta as a ``same``
        member, unread, or was left out, said, because its holes (the row's) did not
        fit ``max_holes_and_links``."""
        inc = self.incremental
        old = inc.cache.lookup(arcname) if inc is not None else None
        self._base_of = None
        if inc is not None and old is None:
            return self._moved(inc.cache, st)  # (in a full too: its row's chunk list)
        if inc is None or not inc.delta or old is None or not old.unchanged(st):
            return old
        if old.xattrs != (xattrs and self.xattrs):  # the task's setting changed: read again
            return old
        if not self._fits_holes(at.shown, st, old.holes, stats):
            return False
        self._emit_same(arcname, left_out=inc.lean and st.st_nlink == 1)
        self._recorded(arcname, st, old, stats, st.st_size)
        return False

    def _moved(self, cache: FileCache, st: os.stat_result) -> CachedFile | None:
        """The row of a file the last archive had under another name (same device and
        inode: renamed, or its directory renamed), unless that name is already in this
        archive (the server would no longer find the base's bytes there). The file is
        still read: its bytes decide between a ``base`` member of the other name and a
        ``delta`` against it."""
        found = cache.lookup_inode(st.st_dev, st.st_ino)
        if found is None or self._written_over(found[0]):
            return None
        self._base_of = found[0]
        return found[1]

    def _written_over(self, old: str) -> bool:
        """Whether this archive already wrote something at the base name ``old``, or a
        non-directory above it: the server, applying members in order, no longer holds
        the base's file there (a file moved into a new directory of its own name, a
        directory renamed and a symlink left at its old name). Such a file is then read
        and sent as a new one."""
        if old in self._manifest or old in self._dirs or old in self._others:
            return True
        return self._written_above(old) is not None

    def _written_above(self, arcname: str) -> str | None:
        """Why nothing can go in at ``arcname``: the words naming a file, symlink or
        FIFO this archive already holds above it (a task's paths ``[/srv, /srv/app/x]``
        with ``/srv/app`` a symlink); None when there is none. Every unpacking refuses
        a member below such a member, so the whole archive would be refused."""
        parts = arcname.strip("/").split("/")
        for end in range(1, len(parts)):
            above = "/".join(parts[:end])
            if above in self._manifest or above in self._others:
                return f"the archive already holds {above} as a file or symlink, not a directory"
        return None

    def _held_as_other(self, arcname: str, mode: int) -> str | None:
        """Why an entry of ``mode`` cannot go in at ``arcname``: the words naming what
        this archive already holds there when it is of another kind (overlapping paths
        walk an entry twice, and it changed kind in between: a file replaced by a
        directory); None when nothing, or the same kind. No unpacking takes both."""
        if arcname in self._manifest:
            held = "a file"
        elif arcname in self._dirs:
            held = "a directory"
        elif arcname in self._others:
            held = "a symlink or FIFO"
        else:
            return None
        if stat.S_ISREG(mode):
            kind = "a file"
        elif stat.S_ISDIR(mode):
            kind = "a directory"
        elif stat.S_ISLNK(mode) or stat.S_ISFIFO(mode):
            kind = "a symlink or FIFO"
        else:
            return None  # (a socket or device node: skipped anyway, said)
        if kind == held:
            return None
        return f"it is {kind} now, and the archive already holds it as {held}"

    def _add_link(self, path: str, arcname: str, st: os.stat_result, stats: TaskStats) -> bool:
        """A hard link to a file already in the archive (or left out, said, when it does
        not fit ``max_holes_and_links``); False when it is the first."""
        found = self._first_names.get((st.st_dev, st.st_ino))
        if found is None or found.identity != _identity(st):
            return False  # (none, or another file now: read it as one)
        first = found.arcname
        if first is None:
            stats.warnings.append(
                f"{path}: left out: another name of a file left out for its holes"
            )
            return True
        if not self._fits(found.size, f"{path}: a hard link to {first}", stats, st):
            return True
        self._emit(self._header(arcname, st, tarformat.LNKTYPE, linkname=first))
        self._manifest[arcname] = self._manifest[first]
        if self.incremental is not None:
            # never trusted: the first name's digest with this name's later stat (the
            # inode may have changed in between); read again if it is ever walked first
            row = CachedFile.of(st, self._manifest[first], None, time.time_ns())
            self.incremental.cache.record(arcname, row.uncacheable())
        stats.files += 1
        return True

    def _fits(self, size: int, what: str, stats: TaskStats, st: os.stat_result) -> bool:
        """Whether ``size`` more bytes of holes or of a further hard-link name of the file
        with stat ``st`` fit the archive's ``max_holes_and_links`` (counted when they
        do). The server counts them at their full size against its
        ``max_unpacked_size``, as restic reads them, and a local user makes terabytes of
        them in a second (``truncate -s 2T``, ``ln`` in a loop): past the bound the entry
        is left out, ``what`` named in a warning, instead of the whole archive being
        refused (helper-156 F6). Root's own files (root's, and neither group nor others
        may write them: an ACL's write shows in the group bits) have a bound of their
        own, so that no user's file walked first leaves root's out (helper-157 F5); a
        file of root's that a user may write (truncate, link) counts with the users'
        (helper-158 F1)."""
        if size <= 0:
            return True
        bound = self.max_holes_and_links
        root = st.st_uid == 0 and not st.st_mode & 0o022
        if bound is None or self._unstored[root] + size <= bound:
            self._unstored[root] += size
            return True
        whose = "root's own files" if root else "files not root's alone"
        stats.warnings.append(
            f"{what} ({human_size(size)}) would take the holes and further hard-link "
            f"names of {whose} past max_holes_and_links ({human_size(bound)}): left out "
            "(the server counts them at full size, as restic reads them)"
        )
        return False

    def _fits_holes(self, path: str, st: os.stat_result, holes: int, stats: TaskStats) -> bool:
        """Whether a file's ``holes`` fit (:meth:`_fits`); a file of several names left
        out is remembered, so that its other names are left out unread."""
        if self._fits(holes, f"{path}: its holes", stats, st):
            return True
        if st.st_nlink > 1:
            self._first_names[(st.st_dev, st.st_ino)] = _FirstName(None, 0, _identity(st))
        return False

    def _recorded(
        self,
        arcname: str,
        st: os.stat_result,
        row: CachedFile,
        stats: TaskStats,
        size: int,
        *,
        state: bytes | None = None,
    ) -> None:
        """Count a regular file that went into the archive with ``row``'s digest (and
        the hash ``state`` of its bytes, for the cache)."""
        if st.st_nlink > 1:
            self._first_names[(st.st_dev, st.st_ino)] = _FirstName(arcname, size, _identity(st))
        self._manifest[arcname] = row.sha256
        if self.incremental is not None:
            self.incremental.cache.record(arcname, row, state)
        stats.files += 1
        stats.bytes += size
        self._files += 1
        self._content += size

    def _emit_base(self, file: _OpenFile) -> None:
        """A member whose bytes are the base's file of the same name (or of the name
        ``_base_of`` says: a renamed file)."""
        extra = [(DATA_KEY, BASE), *self._base_record()]
        self._from_base.add(file.arcname)
        self._emit(self._file_header(file, extra=extra))

    def _emit_same(self, arcname: str, left_out: bool = False) -> None:
        """A member whose bytes and metadata are the base's file of the same name: the
        cache vouched for the file, its ctime included, so nothing about it (owner, mode,
        times, extended attributes, ACLs) changed since the base. Only its name travels;
        the header's other fields are left empty (about 6 bytes compressed, against 40
        for a ``base`` member, and no extended attributes read). ``left_out`` (a lean
        delta, a file of one link): not even its name; the server keeps the base's file
        because ``REMOVED.list`` does not name it."""
        self._from_base.add(arcname)
        if left_out:
            return
        self._members += 1
        self._emit(tarformat.name_only_header(arcname, _SAME_RECORD))

    def _base_record(self) -> list[tuple[bytes, bytes]]:
        if self._base_of is None:
            return []
        return [(BASE_KEY, self._base_of.encode("utf-8", "surrogateescape"))]

    def _add_content(self, file: _OpenFile, *, old: CachedFile | None) -> tuple[str, bytes | None]:
        """Put a read file into the archive: whole, as a ``base`` member when its bytes
        are the cached ones, or as a ``delta`` member. Returns its sha256 and packed
        chunk list (None below CHUNKED_FROM or without a cache)."""
        inc = self.incremental
        content = file.content
        # a file of more regions than a map may list, its small holes taken as data, goes
        # whole: never as a change stream, whose zeros would be literals, spooled here
        # uncompressed and counted by the server twice (helper-157 F6)
        delta_from = old if inc is not None and inc.delta and not content.merged_holes else None
        if content.regions is not None:
            return self._add_sparse_content(file, delta_from)
        if content.data is None:
            said: list[str] = []  # (what went wrong reading it, named by its path)
            made = None
            if delta_from is not None and delta_from.chunks is not None:
                made = self._add_streamed_delta(file, delta_from, said)
            elif delta_from is not None:
                made = self._add_grown(file, delta_from, said)
            file.stats.warnings.extend(f"{file.path}: {warning}" for warning in said)
            if made is not None:
                return made
            return self._add_streamed(file, old=old)
        data = content.data
        digest = hashlib.sha256(data).hexdigest()
        chunks = None
        if inc is not None:
            chunks = _read_ahead_chunks(data, digest, old, reuse=not inc.fresh_cuts)
        if delta_from is None or not self._add_read_changes(file, (digest, chunks), delta_from):
            self._add_dense(file, sha256=digest)
        return digest, chunks

    def _add_read_changes(
        self, file: _OpenFile, made: tuple[str, bytes | None], old: CachedFile
    ) -> bool:
        """A read-ahead file against its row ``old``, ``made`` its sha256 and chunk list:
        a ``base`` member when its bytes are the row's, a ``delta`` member of the chunks
        that changed, or of its new bytes when it only grew (a row without a list).
        Returns False, with nothing emitted, when none of these applies or pays (the
        caller sends it whole)."""
        data = file.content.data
        assert data is not None
        digest, chunks = made
        if digest == old.sha256:
            self._emit_base(file)
            return True
        if old.chunks is not None and chunks is not None:
            cuts = chunker.unpack(chunks)
            pieces = zip(cuts, _split(data, cuts), strict=True)
            encoded = _encode(chunker.unpack(old.chunks), pieces)
            if len(encoded) >= len(data):
                return False
            self._emit_delta(file, len(data), len(encoded))
            self._emit(encoded)
            self._emit(bytes((-len(encoded)) % BLOCK))
            return True
        if old.chunks is None and _grew(data, old):
            ops = _appended_ops(old.size, [data[old.size :]])
            self._emit_changes(file, ops, lambda: (digest, len(data)), old)
            return True
        return False

    def _add_streamed(self, file: _OpenFile, *, old: CachedFile | None) -> tuple[str, bytes | None]:
        """A streamed file sent whole. Returns its sha256 and chunk list: cut on the way,
        or, when the cache vouches for the file, the row's list if the digest is the
        row's (same bytes, same cuts), else none."""
        inc = self.incremental
        reuse = inc is not None and not inc.fresh_cuts
        vouched = (  # (the stat first: cheaper than unpacking the row's list for holes)
            old
            if reuse and old is not None and old.unchanged(file.content.stat) and _reusable(old)
            else None
        )
        found: list[chunker.Chunk] | None = [] if inc is not None and not vouched else None
        digest = self._add_dense(file, found=found)
        if vouched is not None:
            return digest, vouched.chunks if digest == vouched.sha256 else None
        return digest, _packed(found)

    def _add_grown(
        self, file: _OpenFile, old: CachedFile, warnings: list[str]
    ) -> tuple[str, bytes | None] | None:
        """A streamed file whose row has no chunk list (first seen as bytes that did not
        compress, :func:`_read_ahead_chunks`) and that only grew: its first ``old.size``
        bytes hash to ``old.sha256``. A ``delta`` member copies them and carries the
        rest; the whole file is cut on the way, for its next change. Returns its sha256
        and chunk list; None, with nothing emitted (the caller sends it whole), when it
        did not only grow, or its old part could not be read. Tried only for a row of at
        most REREAD_LIMIT bytes (held in memory for the proof, which costs at most one
        read of that much more when it fails) and at most GROWN_TAIL_MAX new bytes (the
        delta is spooled before it is sent). What went wrong reading the new bytes goes
        into ``warnings``."""
        fd, size = file.fd, file.content.stat.st_size
        if not 0 < old.size <= REREAD_LIMIT or not old.size < size <= old.size + GROWN_TAIL_MAX:
            return None
        prefix = bytearray(old.size)
        try:
            if _read_into(fd, memoryview(prefix), 0) < old.size:
                return None
        except OSError:
            return None  # (the caller's read warns, and pads)
        digest = sha256state.hasher(resumable=True)
        digest.update(prefix)
        if digest.hexdigest() != old.sha256:
            return None
        cutter = chunker.Chunker()
        found = [c for c, _ in cutter.feed(prefix)]  # (the old part: proved, as it was read)
        del prefix
        tail = _grown_tail(
            fd, old.size, size, digest, cutter=cutter, found=found, warnings=warnings
        )
        return self._emit_read(
            file, _appended_ops(old.size, tail), old, digest=digest, found=found, warnings=warnings
        )

    def _file_header(
        self,
        file: _OpenFile,
        *,
        size: int = 0,
        extra: list[tuple[bytes, bytes]] | None = None,
        name: str | None = None,
    ) -> bytes:
        """The header of ``file``'s member (named ``name`` when given, else its own):
        a regular file of ``size`` data bytes with its stat and attributes."""
        return self._header(
            name or file.arcname,
            file.content.stat,
            tarformat.REGTYPE,
            size=size,
            xattrs=file.attrs,
            extra=extra,
        )

    def _emit_delta(self, file: _OpenFile, realsize: int, size: int):
        """The header of a member whose data is a PBD1 stream of ``size`` bytes."""
        extra = [(DATA_KEY, DELTA), (REALSIZE_KEY, str(realsize).encode()), *self._base_record()]
        self._emit(self._file_header(file, size=size, extra=extra))
        self._sent += size

    def _add_streamed_delta(
        self, file: _OpenFile, old: CachedFile, warnings: list[str]
    ) -> tuple[str, bytes | None]:
        """A large changed file as a ``delta`` member against ``old``'s chunks (or a
        ``base`` member when its bytes did not change): read once into the chunker, the
        PBD1 stream spooled beside the run's work (tar needs its size first). What went
        wrong reading it goes into ``warnings``."""
        inc = self.incremental
        assert inc is not None and old.chunks is not None
        old_chunks = chunker.unpack(old.chunks)
        state = inc.cache.state(self._base_of or file.arcname)
        fd, size = file.fd, file.content.stat.st_size
        proved = _same_prefix(fd, old, old_chunks, size, state)
        found: list[chunker.Chunk] = []
        if proved is not None:  # appended to: copy the old bytes, send the rest
            digest, last = proved
            found.extend(old_chunks[:-1])
            cutter = chunker.Chunker()  # from the old last chunk's start, a cut point
            found.extend(c for c, _ in cutter.feed(last))  # (as proved: no second read)
            tail = _grown_tail(
                fd, old.size, size, digest, cutter=cutter, found=found, warnings=warnings
            )
            ops = _appended_ops(old.size, tail)
        else:
            digest = sha256state.hasher(resumable=True)
            pieces = _read_pieces(fd, size, digest, found, warnings)
            ops = _as_pbd1(chunker.delta_ops(old_chunks, pieces))
        return self._emit_read(file, ops, old, digest=digest, found=found, warnings=warnings)

    def _emit_read(
        self,
        file: _OpenFile,
        ops,
        old: CachedFile,
        *,
        digest,
        found: list[chunker.Chunk],
        warnings: list[str],
    ) -> tuple[str, bytes | None]:
        """Emit ``ops``, the changes of a large file against ``old`` that spending them
        reads once (hashing its bytes into ``digest``, its chunks into ``found``, what
        went wrong into ``warnings``, which the caller reports by the file's path: the
        row is then doubted, read whole next run).
        Returns the file's sha256 and packed chunk list."""
        self._emit_changes(
            file, ops, lambda: (digest.hexdigest(), sum(c.length for c in found)), old
        )
        self._state = sha256state.state_of(digest)
        self._doubt = bool(warnings)
        return digest.hexdigest(), chunker.pack(found)

    def _add_sparse_content(
        self, file: _OpenFile, delta_from: CachedFile | None
    ) -> tuple[str, bytes | None]:
        """A file with holes: a delta against ``delta_from``'s chunks when it has a
        list, else whole (its chunks listed from CHUNKED_FROM, with a cache)."""
        if delta_from is not None and delta_from.chunks is not None:
            return self._add_sparse_delta(file, delta_from)
        wanted = self.incremental is not None and file.content.stat.st_size >= CHUNKED_FROM
        listed: list[chunker.Chunk] | None = [] if wanted else None
        digest = self._add_sparse(file, found=listed)
        return digest, _packed(listed)

    def _add_sparse_delta(self, file: _OpenFile, old: CachedFile) -> tuple[str, bytes | None]:
        """A changed file with holes as a ``delta`` member against ``old``'s chunks (or
        a ``base`` member when its bytes did not change): its data regions read once,
        each cut into chunks on its own, its holes sent as holes."""
        regions = _sparse_regions(file.content)
        realsize = _sparse_size(file.content, regions)
        digest = hashlib.sha256()
        found: list[chunker.Chunk] = []
        pieces = _sparse_pieces(_sparse_data(file, regions), realsize, digest, found)
        ops = _as_pbd1(chunker.delta_ops(chunker.unpack(old.chunks or b""), pieces))
        self._emit_changes(file, ops, lambda: (digest.hexdigest(), realsize), old)
        return digest.hexdigest(), chunker.pack(found)

    def _emit_changes(self, file: _OpenFile, ops, made, old: CachedFile) -> None:
        """Spool ``ops`` as a PBD1 stream (tar needs its size first), then emit it as a
        ``delta`` member, or a ``base`` member when the file it makes is ``old``'s:
        ``made()``, asked once the ops are spent, gives that file's sha256 (hex) and
        size."""
        inc = self.incremental
        assert inc is not None
        with tempfile.TemporaryFile(dir=inc.spool_dir) as spool:
            size = deltaops.encode(ops, spool)
            sha256, realsize = made()
            if sha256 == old.sha256 and realsize == old.size:
                self._emit_base(file)
                return
            self._emit_delta(file, realsize, size)
            spool.seek(0)
            while data := spool.read(CHUNK):
                self._emit(data)
            self._emit(bytes((-size) % BLOCK))

    def _add_dense(
        self,
        file: _OpenFile,
        *,
        found: list[chunker.Chunk] | None = None,
        sha256: str | None = None,
    ) -> str:
        """A file without holes: its bytes read ahead (their ``sha256`` when the caller
        has it already), or streamed (then split into ``found`` chunks on the way, when
        a list is given). Returns its sha256."""
        content = file.content
        self._emit(self._file_header(file, size=content.size))
        self._sent += content.size
        if content.data is None:
            return self._copy_data(file.fd, content.size, file.path, file.stats, found)
        self._emit(content.data)
        self._emit(bytes((-len(content.data)) % BLOCK))
        return sha256 or hashlib.sha256(content.data).hexdigest()

    def _add_sparse(self, file: _OpenFile, *, found: list[chunker.Chunk] | None = None) -> str:
        """A file with holes, in the PAX 1.0 sparse format: the map, then only the data
        (read in pieces: memory stays one piece whatever a region's size). Returns the
        sha256 of the whole file, holes read as zeros; lists its chunks, holes included,
        in ``found`` when a list is given."""
        regions = _sparse_regions(file.content)
        realsize = _sparse_size(file.content, regions)
        table = sparse.encode_map(regions)
        length = len(table) + sum(r.length for r in regions)
        extra = sparse.pax_records(file.arcname, realsize)
        name = sparse.placeholder(file.arcname)
        self._emit(self._file_header(file, size=length, extra=extra, name=name))
        self._emit(table)
        digest = hashlib.sha256()
        cutter = chunker.SparseCutter() if found is not None else None
        data_pieces = _sparse_data(file, regions)
        for offset, data in _hashed(data_pieces, realsize, digest):
            self._emit(data)
            if cutter is not None:
                found.extend(chunk for chunk, _ in cutter.feed(offset, data))  # type: ignore[union-attr]
        if cutter is not None:
            found.extend(chunk for chunk, _ in cutter.finish(realsize))  # type: ignore[union-attr]
        self._emit(bytes((-length) % BLOCK))
        return digest.hexdigest()

    def _copy_data(
        self,
        fd: int,
        size: int,
        path: str,
        stats: TaskStats,
        found: list[chunker.Chunk] | None = None,
    ) -> str:
        """Stream exactly ``size`` bytes of ``fd`` into the archive; return their sha256.

        A file that shrinks while read is padded with zeros, to keep the stream whole,
        and said so. With ``found``, the bytes are split into chunks on the way.
        """
        cutter = (
            chunker.ChunkerAside(self._cutting())
            if found is not None and size >= CHUNKED_FROM
            else None
        )
        digest = sha256state.hasher(resumable=self.incremental is not None and size >= CHUNKED_FROM)
        remaining = size
        # two buffers: one is read, hashed and written while the chunker thread cuts
        # the other (the one read before)
        buffers = (bytearray(CHUNK), bytearray(CHUNK) if cutter is not None else None)
        turn, error = 0, None
        while remaining:
            buffer = buffers[turn] or buffers[0]
            turn ^= 1
            if cutter is not None:
                cutter.settle(pending=1)  # the feed that read this buffer is done
            view = memoryview(buffer)
            try:
                n = os.readv(fd, [view[: min(CHUNK, remaining)]])
            except OSError as exc:
                error = exc
                break
            if not n:
                break
            digest.update(view[:n])
            if cutter is not None:
                cutter.feed(buffer if n == CHUNK else bytes(view[:n]))
            self._flush()
            self._offset += n
            self._write(view[:n])
            remaining -= n
        if remaining:
            stats.warnings.append(f"{path}: {_unread(error)}")
            self._pad(remaining, digest, cutter)
            self._doubt = True  # (the archive has zeros the file may not: read it next run)
        if cutter is not None:
            found.extend(cutter.finish())  # type: ignore[union-attr]
        self._emit(bytes((-size) % BLOCK))
        self._state = sha256state.state_of(digest)
        return digest.hexdigest()

    def _pad(self, remaining: int, digest, cutter: chunker.ChunkerAside | None) -> None:
        """``remaining`` zeros in place of the bytes a shrunk file no longer has."""
        pad = bytes(min(remaining, CHUNK))
        while remaining:
            part = pad[: min(remaining, len(pad))]
            digest.update(part)
            if cutter is not None:
                cutter.feed(part)
            self._emit(part)
            remaining -= len(part)


def _within_header(attrs: dict[str, bytes], path: str, stats: TaskStats) -> dict[str, bytes] | None:
    """``attrs`` (by name, sorted) up to MAX_XATTR_BYTES of names and values, the rest
    dropped and said: every reader refuses an extended header over MAX_META (1 MiB), so
    a user's large ``user.*`` attributes (tmpfs, XFS and btrfs hold over 1 MiB on a
    file) had the host's whole archive refused, night after night (helper-156 F4)."""
    kept: dict[str, bytes] = {}
    size = 0
    for name, value in attrs.items():
        size += len(os.fsencode(name)) + len(value) + 32  # (and its record's framing)
        if size > MAX_XATTR_BYTES:
            dropped = len(attrs) - len(kept)
            stats.warnings.append(
                f"{path}: {dropped} extended attribute(s) past the first "
                f"{MAX_XATTR_BYTES // 1024} KiB not archived (one entry's header holds "
                "at most 1 MiB)"
            )
            break
        kept[name] = value
    return kept or None


def _packed(chunks: list[chunker.Chunk] | None) -> bytes | None:
    return chunker.pack(chunks) if chunks else None


def _reusable(row: CachedFile | None) -> bool:
    """Whether ``row``'s chunk list may stand for bytes with its digest: there is one,
    the row is trusted, and it has no hole (a file with holes whose holes were filled
    with zeros has the same bytes, but zeros that are data can be copied and holes
    cannot)."""
    if row is None or not row.chunks or not row.cacheable:
        return False
    return all(chunk.digest != chunker.HOLE_ID for chunk in chunker.unpack(row.chunks))


def _read_ahead_chunks(
    data: bytes, digest: str, old: CachedFile | None, *, reuse: bool = True
) -> bytes | None:
    """The packed chunk list of a read-ahead file (``digest``: its sha256; ``old``: its
    cache row, if any), or None: below CHUNKED_FROM, or not worth cutting yet.

    - Its bytes are the row's: the row's list stands (same bytes, same cuts), not made
      again (unless not ``reuse``, or :func:`_reusable` says no); a trusted row without
      one stays without (the file has not changed since it was first seen).
    - First seen (no row): cut when its bytes compress (:func:`_compressible`: text,
      database pages, images of file systems). Compressed or encrypted data (media,
      archives) is replaced whole far more often than edited in place, and cutting
      costs about as much as hashing it again: such a file is cut at its first change,
      which travels whole (at most REREAD_LIMIT bytes, once), and its later changes
      travel as deltas.
    - Changed since its row: cut.
    """
    if len(data) < CHUNKED_FROM:
        return None
    if old is not None and old.cacheable and old.sha256 == digest:
        if not old.chunks:
            return None
        if reuse and _reusable(old):
            return old.chunks
    if old is None and not _compressible(data):
        return None
    cutter = chunker.Chunker()
    return chunker.pack(c for c, _ in (*cutter.feed(data), *cutter.finish()))


_SAMPLE = 8 << 10


def _compressible(data: bytes) -> bool:
    """Whether three samples of ``data`` (its start, middle and end, 8 KiB each)
    compress by a tenth or more at zlib's fastest level (about 0.1 ms)."""
    middle = len(data) // 2
    sample = data[:_SAMPLE] + data[middle : middle + _SAMPLE] + data[-_SAMPLE:]
    return len(zlib.compress(sample, 1)) < 0.9 * len(sample)


def _split(data: bytes, chunks: list[chunker.Chunk]) -> Iterator[bytes]:
    view, position = memoryview(data), 0
    for chunk in chunks:
        yield bytes(view[position : position + chunk.length])
        position += chunk.length


def _as_pbd1(ops) -> Iterator[deltaops.Op]:
    for op in ops:
        if isinstance(op, chunker.Copy):
            yield deltaops.Copy(op.offset, op.length)
        elif isinstance(op, chunker.Hole):
            yield deltaops.Hole(op.length)
        else:
            yield deltaops.Data(op.data)


_Identity = tuple[int, int, int, int, int]


@dataclass(frozen=True, slots=True)
class _FirstName:
    """A file of several names as its first name left it: in the archive at ``arcname``
    with ``size`` bytes (the server counts each further name at that size; helper-157
    F1: a user truncated the file once it was read, and the later names counted 0 here),
    or left out for its holes (``arcname`` None: its other names are left out unread,
    helper-157 F4). Later names follow it only while the inode is still ``identity``
    (helper-158 F4: ext4 gives a deleted file's number to the next one made)."""

    arcname: str | None
    size: int
    identity: _Identity


def _identity(st: os.stat_result) -> _Identity:
    """What tells one file from another that got its inode number after it was deleted:
    its ctime, mtime, size, owner and mode (a later name of a file that changed between
    the two looks differs too, and is then archived as a file of its own)."""
    return (st.st_ctime_ns, st.st_mtime_ns, st.st_size, st.st_uid, st.st_mode)


def _sparse_regions(content: Content) -> list[Region]:
    """The data regions a sparse file is archived with: those read ahead as read."""
    regions = content.regions or []
    if content.pieces is None:
        return regions
    return [Region(r.offset, len(p)) for r, p in zip(regions, content.pieces, strict=True)]


def _sparse_size(content: Content, regions: list[Region]) -> int:
    """The size a sparse file is archived with (at least the end of its last region)."""
    return max([content.stat.st_size] + [r.offset + r.length for r in regions])


def _sparse_data(file: _OpenFile, regions: list[Region]) -> Iterator[tuple[int, bytes]]:
    """Each data region's bytes with the offset they lie at, in pieces of at most
    CHUNK (those read ahead as they are); what cannot be read (the file shrank, or a
    read failed) is zeros, said in a warning: the header is written."""
    pieces = file.content.pieces
    for index, region in enumerate(regions):
        if pieces is not None:
            if pieces[index]:
                yield region.offset, pieces[index]
            continue
        warnings: list[str] = []
        position = region.offset
        for data in _padded(file.fd, region.offset, region.offset + region.length, warnings):
            yield position, data
            position += len(data)
        file.stats.warnings.extend(f"{file.arcname}: {warning}" for warning in warnings)


def _hashed(data, realsize: int, digest) -> Iterator[tuple[int, bytes]]:
    """``data`` (offset, bytes) of a file of ``realsize`` bytes, passed on as each piece
    is hashed into ``digest``, the holes before it (and at the end) as zeros."""
    position = 0
    for offset, piece in data:
        sparse.hash_zeros(digest, offset - position)
        digest.update(piece)
        position = offset + len(piece)
        yield offset, piece
    sparse.hash_zeros(digest, realsize - position)


def _sparse_pieces(data, realsize: int, digest, found: list) -> Iterator:
    """The chunks (with their bytes; holes without) of a sparse file given as ``data``
    (offset, bytes), hashed into ``digest`` (holes as zeros) and listed in ``found``."""
    cutter = chunker.SparseCutter(keep_data=True)
    for offset, piece in _hashed(data, realsize, digest):
        for entry in cutter.feed(offset, piece):
            found.append(entry[0])
            yield entry
    for entry in cutter.finish(realsize):
        found.append(entry[0])
        yield entry


def _encode(old: list[chunker.Chunk], pieces) -> bytes:
    """The PBD1 stream that makes the file of ``pieces`` (chunk, bytes) from ``old``."""
    out = _BytesOut()
    deltaops.encode(_as_pbd1(chunker.delta_ops(old, pieces)), out)
    return b"".join(out.parts)


def _same_prefix(
    fd: int, old: CachedFile, chunks: list[chunker.Chunk], size: int, state: bytes | None = None
) -> tuple[object, bytes] | None:
    """When the file only grew since ``old`` (its first ``old.size`` bytes hash to
    ``old.sha256``): the sha256 object of that prefix, to go on with, and the old last
    chunk's bytes as they were proved (the chunker goes on from them: they are not read
    again, so the new list describes exactly the bytes the delta gives the server).
    Else None. The first and last old chunks are compared first, so a file changed
    elsewhere is mostly told apart without reading it all. An old version with holes (a
    sparse file's list) is never taken as a prefix: its last entry may be a hole of 4 GiB.

    With the old version's hash ``state`` (which :func:`.sha256state.resume` takes up
    only for ``old.size`` bytes hashing to ``old.sha256``), the prefix is proved by its
    old chunks' digests instead, on two threads (:func:`_chunks_match`), and the hash
    goes on from the state: the prefix is read once either way, but hashed on two
    cores rather than one. A read that fails proves nothing."""
    if size <= old.size or not chunks or any(c.digest == chunker.HOLE_ID for c in chunks):
        return None
    try:
        return _proved_prefix(fd, old, chunks, state)
    except OSError:
        return None  # (the caller's whole read warns, and pads)


def _proved_prefix(
    fd: int, old: CachedFile, chunks: list[chunker.Chunk], state: bytes | None
) -> tuple[object, bytes] | None:
    """:func:`_same_prefix` once the file is longer. Raises OSError."""
    view = memoryview(bytearray(max(chunks[0].length, chunks[-1].length)))
    for offset, chunk in ((0, chunks[0]), (old.size - chunks[-1].length, chunks[-1])):
        if not _chunk_is(fd, chunk, offset, view):
            return None
    last = bytes(view[: chunks[-1].length])  # (its digest is the old last chunk's)
    resumed = sha256state.resume(state, old.size, old.sha256)
    if resumed is not None:
        return (resumed, last) if _chunks_match(fd, chunks, old.size) else None
    digest, got = sha256state.hasher(resumable=True), 0
    for data in pread_span(fd, 0, old.size):
        digest.update(data)
        got += len(data)
    return (digest, last) if got == old.size and digest.hexdigest() == old.sha256 else None


def _chunks_match(fd: int, chunks: list[chunker.Chunk], size: int) -> bool:
    """Whether the first ``size`` bytes of ``fd`` are still the ``chunks`` (which must
    cover exactly that much): each chunk's bytes read and hashed to its digest (a
    truncated sha256, :data:`.chunker.ID_SIZE` bytes), the list cut in two halves hashed
    at once (hashlib and ``pread`` let go of the GIL)."""
    if sum(c.length for c in chunks) != size:
        return False
    offsets, position = [], 0
    for chunk in chunks:
        offsets.append(position)
        position += chunk.length

    def part(first: int, end: int) -> bool:
        if first >= end:
            return True
        view = memoryview(bytearray(max(c.length for c in chunks[first:end])))
        return all(
            _chunk_is(fd, chunk, offset, view)
            for chunk, offset in zip(chunks[first:end], offsets[first:end], strict=True)
        )

    half = len(chunks) // 2
    with ThreadPoolExecutor(1, thread_name_prefix="prefix-check") as pool:
        second = pool.submit(part, half, len(chunks))
        first = part(0, half)
        return first and second.result()


def _chunk_is(fd: int, chunk: chunker.Chunk, offset: int, view: memoryview) -> bool:
    """Whether the bytes of ``fd`` at ``offset`` are still ``chunk`` (its length read
    into ``view``, a buffer at least that long: no bytes object per chunk, and hashed
    to its digest, a truncated sha256 of :data:`.chunker.ID_SIZE` bytes)."""
    if _read_into(fd, view[: chunk.length], offset) < chunk.length:
        return False
    return hashlib.sha256(view[: chunk.length]).digest()[: chunker.ID_SIZE] == chunk.digest


def _grew(data: bytes, old: CachedFile) -> bool:
    """Whether the read-ahead ``data`` (CHUNKED_FROM bytes or more: a smaller file
    travels whole) only grew since ``old``: longer, and its first ``old.size`` bytes
    hash to ``old.sha256``."""
    return (
        len(data) >= CHUNKED_FROM
        and 0 < old.size < len(data)
        and (hashlib.sha256(memoryview(data)[: old.size]).hexdigest() == old.sha256)
    )


def _grown_tail(
    fd: int,
    position: int,
    size: int,
    digest,
    *,
    cutter: chunker.Chunker,
    found: list[chunker.Chunk],
    warnings: list[str],
) -> Iterator[bytes]:
    """The bytes of ``fd`` from ``position`` (the end of a proved old part, which
    ``cutter`` was fed last) to ``size``, hashed into ``digest`` and cut by ``cutter``
    into ``found`` (its last chunk too, once they are spent); what cannot be read is
    zeros (:func:`_padded`)."""
    for data in _padded(fd, position, size, warnings):
        digest.update(data)
        found.extend(c for c, _ in cutter.feed(data))
        yield data
    found.extend(c for c, _ in cutter.finish())


def _read_into(fd: int, view: memoryview, offset: int) -> int:
    """Fill ``view`` from ``fd`` at ``offset``; returns how much was read (less at the
    end of the file). Raises OSError."""
    got = 0
    while got < len(view):
        read = os.preadv(fd, [view[got:]], offset + got)
        if not read:
            break
        got += read
    return got


def _appended_ops(old_size: int, tail) -> Iterator[deltaops.Op]:
    yield deltaops.Copy(0, old_size)
    for piece in tail:
        yield deltaops.Data(piece)


class _BytesOut:
    def __init__(self):
        self.parts: list[bytes] = []

    def write(self, data: bytes) -> int:
        self.parts.append(bytes(data))
        return len(data)


def _read_pieces(fd: int, size: int, digest, found: list, warnings: list[str]):
    """The chunks (with their bytes) of the first ``size`` bytes of ``fd``, hashed into
    ``digest`` and listed in ``found`` on the way; what cannot be read is zeros
    (:func:`_padded`)."""
    cutter = chunker.Chunker(keep_data=True)
    for data in _padded(fd, 0, size, warnings):
        digest.update(data)
        for chunk, piece in cutter.feed(data):
            found.append(chunk)
            yield chunk, piece
    for chunk, piece in cutter.finish():
        found.append(chunk)
        yield chunk, piece


def _padded(fd: int, start: int, end: int, warnings: list[str]) -> Iterator[bytes]:
    """The bytes of ``fd`` from ``start`` to ``end`` in pieces (:func:`.pread_span`).
    What cannot be read (the file ended first, or a read failed) comes as zeros, so the
    member holds the size its header promised, and is said in ``warnings``: the caller
    then doubts the file's row, which is read whole next run. The one rule of every
    read that cannot be taken back (the streamed whole file's, :meth:`_copy_data`,
    says the same words)."""
    position, error = start, None
    try:
        for data in pread_span(fd, start, end):
            position += len(data)
            yield data
    except OSError as exc:
        error = exc
    if position < end:
        warnings.append(_unread(error))
    while position < end:
        zeros = bytes(min(CHUNK, end - position))
        position += len(zeros)
        yield zeros


def _swapped(now: os.stat_result, looked: os.stat_result) -> str | None:
    """Why the file opened (``now``, its ``fstat``) is not the regular file the walk
    looked at (``looked``): a FIFO or device node swapped in meanwhile, another file;
    None when it is."""
    if stat.S_ISFIFO(now.st_mode):
        return "no longer a regular file when opened (a FIFO)"
    if stat.S_ISDIR(now.st_mode):
        return "no longer a regular file when opened (a directory)"
    if not stat.S_ISREG(now.st_mode):
        return "no longer a regular file when opened (a device node or other special file)"
    if not same_entry(now, looked):
        return "replaced by another file while being read"
    return None


def _unread(error: OSError | None) -> str:
    """The warning for a file read short (``error``: the read that failed; None: it
    ended first), its rest padded with zeros."""
    if error is None:
        return "shrank while being read; padded with zeros"
    return f"read failed: {error.strerror}; padded with zeros"


def _unopened(exc: OSError) -> str:
    """Why a file the walk looked at could not be opened, in words."""
    if exc.errno == errno.ENXIO:
        return "no longer a regular file when opened (a socket)"
    if exc.errno in (errno.EAGAIN, errno.EWOULDBLOCK):
        return f"another process held a lease on it for {LEASE_WAIT:g} s (a file server?)"
    return f"cannot be opened: {exc.strerror}"


LEASE_WAIT = 5.0
"""Seconds a file under another process's lease (a write lease: an NFS delegation, a
Samba oplock) is tried again: the first open asked the holder to give it up."""


def _open_noatime(at: _At) -> int:
    """:func:`_open_once`, again every 0.1 s for up to :data:`LEASE_WAIT` while another
    process holds a lease on the file (``O_NONBLOCK`` makes the open fail instead of
    waiting for the holder). Raises OSError."""
    deadline = time.monotonic() + LEASE_WAIT
    while True:
        try:
            return _open_once(at)
        except BlockingIOError:
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.1)


def _open_once(at: _At) -> int:
    """The entry ``at`` opened to be read, its access time left alone where we may. Never
    waits: ``O_NONBLOCK`` (no effect on a regular file) keeps a FIFO put in its place
    since the walk's lstat from holding the run until a writer comes; the caller checks
    what it opened. Raises OSError."""
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    if _O_NOATIME:
        try:
            return os.open(at.name, flags | _O_NOATIME, dir_fd=at.dir_fd)
        except PermissionError:
            pass  # O_NOATIME needs ownership or CAP_FOWNER; read normally then
    return os.open(at.name, flags, dir_fd=at.dir_fd)
