"""Fetch an archive into a partial file (resumable) while unpacking it as it arrives.

The bytes land in ``<state_dir>/partial/<host>/<archive>``: a cut connection keeps what
arrived and the next try asks for the rest. A second thread reads the same file as it
grows, decompresses and unpacks it into staging, so transfer and unpacking overlap. The
archive is stored only if the whole file matches the sidecar's sha256 and every file
matches the archive's manifest. An archive the unpacker refuses (hostile content, or more
than the host's ``max_unpacked_size``/``max_entries``) stops the transfer at once.

A delta archive is downloaded whole (and checked against its sha256) before it is
applied, so a cut transfer leaves staging, the delta's base, as it was. Every unpack
moves the base index aside first and writes it anew only when the archive passed every
check (:mod:`..common.archive.baseindex`); a failed unpack empties staging and leaves no
index.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import math
import os
import threading
import time
from collections.abc import Generator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Protocol

from ..common.archive import baseindex
from ..common.archive.baseindex import IndexedTree, IndexWriter
from ..common.archive.reader import TarStream
from ..common.archive.sidecar import ArchiveInfo
from ..common.archive.unpack import (
    FREE_CHECK_BYTES,
    ArchiveTooLarge,
    BaseMismatch,
    HostileArchive,
    Unpacker,
    UnpackLimits,
    UnpackStats,
)
from ..common.errors import ArchiveError, LocalArchiveError
from ..common.fsutil import (
    atomic_write,
    directory_size,
    free_bytes,
    remove_tree_contents,
    room,
    write_all,
)
from ..common.log import get_logger
from ..common.units import human_duration, human_size
from .host import HostContext
from .remote import ArchiveGone, TransferCut


class ByteSource(Protocol):
    """Where an archive's bytes come from (a :class:`~.remote.Remote`)."""

    def stream(
        self, name: str, offset: int, cancel=None, size: int | None = None
    ) -> Generator[bytes, None, None]: ...


log = get_logger("transfer")
CHUNK = 1 << 20
STARTED = ".started"
"""Beside a partial download: when its first byte arrived (seconds since the epoch)."""
_REFUSED = (HostileArchive, ArchiveTooLarge)
"""Unpacker errors that make the rest of the transfer pointless."""


class GrowingFile:
    """A file one thread appends to while another reads it up to what was written."""

    def __init__(self, path: Path, size: int):
        self.path = path
        self.size = size
        self.written = path.stat().st_size if path.exists() else 0
        self._done = False
        self._error: BaseException | None = None
        self._cond = threading.Condition()

    def append(self, fd: int, data: bytes) -> None:
        write_all(fd, data)
        with self._cond:
            self.written += len(data)
            self._cond.notify_all()

    def finish(self, error: BaseException | None = None) -> None:
        with self._cond:
            self._done = True
            self._error = error
            self._cond.notify_all()

    def reader(self) -> _GrowingReader:
        return _GrowingReader(self)


class _GrowingReader:
    def __init__(self, growing: GrowingFile):
        self.growing = growing
        self.handle = open(growing.path, "rb")  # noqa: SIM115 - closed by close()
        self.position = 0

    def read(self, n: int = CHUNK) -> bytes:
        growing = self.growing
        with growing._cond:
            while self.position >= growing.written and not growing._done:
                growing._cond.wait(1.0)
            if growing._error is not None and self.position >= growing.written:
                raise TransferCut(str(growing._error))
            available = growing.written - self.position
        if available <= 0:
            return b""
        data = self.handle.read(min(n, available))
        self.position += len(data)
        return data

    def close(self) -> None:
        self.handle.close()


@dataclass
class Fetched:
    """An archive that arrived whole, matched its sha256, and is unpacked in staging."""

    path: Path
    sha256: str
    size: int
    resumed_from: int
    unpacked: UnpackStats
    manifest_sha256: str = ""


def _hash_prefix(path: Path, length: int) -> hashlib._Hash:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        remaining = length
        while remaining:
            data = handle.read(min(CHUNK, remaining))
            if not data:
                break
            digest.update(data)
            remaining -= len(data)
    return digest


class _Download:
    """One archive arriving: the partial file, its running hash, and the unpacker that
    reads the file as it grows. :meth:`run` does it all; each step is a method."""

    def __init__(self, ctx: HostContext, remote: ByteSource, archive: ArchiveInfo):
        self.ctx = ctx
        self.remote = remote
        self.archive = archive
        self.path = ctx.partial_dir / archive.name
        self.limits = UnpackLimits(
            ctx.host.max_unpacked_size,
            ctx.host.max_entries,
            min_free=ctx.config.min_free_space,
            cancel=ctx.cancel,
        )
        self.unpacked: UnpackStats | None = None
        self.unpack_error: BaseException | None = None
        self.index: IndexWriter | None = None
        self.manifest_sha256 = ""
        self.resumed_from = 0
        self.arrived = 0
        """Where this try started, and the partial file's length when it ended."""

    def run(self) -> Fetched:
        if self.archive.is_delta:
            return self._run_delta()
        growing, offset, digest = self._open_partial()
        # the file exists before the worker opens it to read
        os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600))
        if _same_disk(self.path, self.ctx.staging):  # what is still to come is kept free too
            self.limits = replace(self.limits, reserved=lambda: self.archive.size - growing.written)
        worker = threading.Thread(
            target=self._unpack, args=(growing,), name=f"unpack-{self.ctx.name}", daemon=True
        )
        worker.start()
        transfer_error = self._receive(growing, offset, digest, worker)
        return self._settle(transfer_error, digest.hexdigest())

    def _run_delta(self) -> Fetched:
        """Download the delta whole, check its sha256, then apply it onto staging (which
        must hold its base: else BaseMismatch, staging untouched)."""
        base = self.archive.base
        held = baseindex.read_tree(self.ctx.staging)
        wanted = (base.name, base.manifest_sha256) if base else None
        if held is None or (held.archive, held.manifest_sha256) != wanted:
            holds = held.archive if held else "no indexed tree"
            raise BaseMismatch(
                f"{self.archive.name} is a delta against {base.name if base else '?'}, and "
                f"staging holds {holds}"
            )
        growing, offset, digest = self._open_partial()
        transfer_error = self._receive(growing, offset, digest)
        self._judge(transfer_error, digest.hexdigest())  # staging not touched yet
        self._unpack(growing)
        return self._settle(None, digest.hexdigest())

    def _receive(
        self, growing: GrowingFile, offset: int, digest, worker: threading.Thread | None = None
    ) -> BaseException | None:
        """Append the client's bytes to the partial file (``worker`` unpacking it as it
        grows, joined at the end); returns what stopped the transfer, if anything."""
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
        transfer_error: BaseException | None = None
        try:
            self._transfer(growing, fd, offset, digest)
        except BaseException as exc:
            transfer_error = exc
        finally:
            os.fsync(fd)
            os.close(fd)
            growing.finish(transfer_error)
            if worker is not None:
                worker.join()
        self.resumed_from, self.arrived = offset, growing.written
        return transfer_error

    def _settle(self, transfer_error: BaseException | None, sha256: str) -> Fetched:
        """Judge the fetch; on success make the new index the base. Returns what was
        fetched; raises (staging emptied, no index) when anything failed."""
        try:
            self._judge(transfer_error, sha256)
            assert self.unpacked is not None and self.index is not None
            self.index.commit(IndexedTree(self.archive.name, self.manifest_sha256))
        except BaseException as exc:
            if self.index is not None:
                self.index.abort()
            if isinstance(exc, ArchiveGone) and self._untouched():
                baseindex.put_back(self.ctx.staging)  # nothing arrived: staging as it was
            elif isinstance(exc, Exception):
                self._empty_staging()
            raise
        return Fetched(
            self.path,
            sha256,
            self.archive.size,
            self.resumed_from,
            self.unpacked,
            self.manifest_sha256,
        )

    def _untouched(self) -> bool:
        """Whether this try left staging as it was: not one byte is in the partial file,
        so the unpacker saw no member."""
        return self.arrived == 0

    def _empty_staging(self) -> None:
        """After a failed fetch the staging tree holds an unknown part of an archive that
        was not stored (perhaps one built to fill the disk): it is emptied, so one
        host's failure never keeps the space the others need. The next pull unpacks
        every file again (the partial download, if kept, is not fetched again)."""
        staging = self.ctx.staging
        baseindex.drop(staging)
        used = directory_size(staging)
        if remove_tree_contents(staging):
            self.ctx.log.info(
                "emptied the staging tree (%s): %s was not applied",
                human_size(used),
                self.archive.name,
            )

    def _open_partial(self) -> tuple[GrowingFile, int, hashlib._Hash]:
        """Drop partial downloads of other archives, one longer than this archive and one
        older than ``partial_max_age``; return the growing file, the offset to resume at
        and the hash of what is there.

        Raises ArchiveTooLarge past the host's ``max_archive_size``, ArchiveError when
        the rest would leave less than ``min_free_space`` on the disk.
        """
        name, size, partial_dir = self.archive.name, self.archive.size, self.ctx.partial_dir
        limit = self.ctx.host.max_archive_size
        if size > limit:
            raise ArchiveTooLarge(
                f"refused {name}: its sidecar announces {human_size(size)}, more than "
                f"max_archive_size ({human_size(limit)} in server.yaml)"
            )
        partial_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        for old in partial_dir.iterdir():
            if old.name not in (name, name + STARTED):
                self.ctx.log.info("removing the partial download of an older archive, %s", old.name)
                old.unlink()
        self._drop_stale_partial()
        growing = GrowingFile(self.path, size)
        offset = growing.written
        needed = size - offset
        free = free_bytes(partial_dir)
        reserve = self.ctx.config.min_free_space
        if free - needed < reserve:
            raise LocalArchiveError(
                f"not enough free space in {partial_dir} for {name}: {human_size(free)} "
                f"free, {human_size(needed)} needed and {human_size(reserve)} kept free "
                "(min_free_space)"
            )
        if offset:
            self.ctx.log.info("resuming %s at %s of %s", name, human_size(offset), human_size(size))
        digest = _hash_prefix(self.path, offset) if offset else hashlib.sha256()
        return growing, offset, digest

    def _drop_stale_partial(self) -> None:
        """Remove this archive's partial download if it is longer than the archive or
        was begun more than ``partial_max_age`` ago (counted from its first byte, so a
        client sending a byte a night cannot keep it), and note when a new one begins."""
        started = self.path.with_name(self.path.name + STARTED)
        try:
            st = self.path.stat()
        except FileNotFoundError:
            atomic_write(started, f"{time.time():.0f}\n", mode=0o600)
            return
        age = _partial_age(self.path, st)
        if st.st_size > self.archive.size or age > self.ctx.config.partial_max_age:
            self.ctx.log.info(
                "removing the partial download %s (%s, begun %s ago)",
                self.archive.name,
                human_size(st.st_size),
                human_duration(age),
            )
            discard_partial(self.path)
            atomic_write(started, f"{time.time():.0f}\n", mode=0o600)

    def _unpack(self, growing: GrowingFile) -> None:
        """The worker: unpack the partial file into staging as it grows. The old index
        is moved aside first (a delta's base members are checked against it) and the
        new one recorded; :meth:`_settle` commits it."""
        reader = growing.reader()
        staging = self.ctx.staging
        base = baseindex.take(staging)
        try:
            self.index = IndexWriter(staging)
            with (
                TarStream(reader, self.archive.compression, self.ctx.runner) as stream,
                Unpacker(
                    staging,
                    self.limits,
                    base if self.archive.is_delta else None,
                    self.index,
                    announced=self.archive.manifest_sha256,
                    lean=self.archive.lean,
                ) as unpacker,
            ):
                if self.archive.is_delta and base is not None and base.linked:
                    self._check_bases(unpacker)
                    base.rewind()
                for member in stream.members():
                    unpacker.add(member, stream.read_data(member))
                self.unpacked = unpacker.finish()
                self.manifest_sha256 = unpacker.manifest_sha256
            announced = self.archive.manifest_sha256
            if announced and announced != self.manifest_sha256:
                raise ArchiveError(
                    f"{self.archive.name}: its manifest is not the one its sidecar names"
                )
        except BaseException as exc:
            self.unpack_error = exc
        finally:
            reader.close()
            if base is not None:
                base.close()

    def _check_bases(self, unpacker: Unpacker) -> None:
        """A first pass over a (downloaded) delta: every base file it takes bytes from
        is checked before staging is changed (so a wrong base costs no write)."""
        with (
            open(self.path, "rb") as raw,
            TarStream(raw, self.archive.compression, self.ctx.runner) as stream,
        ):
            for member in stream.members():
                unpacker.check_base(member)

    def _refused(self) -> bool:
        return isinstance(self.unpack_error, _REFUSED)

    def _transfer(self, growing: GrowingFile, fd: int, offset: int, digest) -> None:
        """Append the client's bytes to the partial file. Raises TransferCut when they
        stop short, ArchiveError when more arrive than the sidecar announced."""
        name, size = self.archive.name, self.archive.size
        looked_at = offset
        if offset < size:
            stream = self.remote.stream(name, offset, self.ctx.cancel, size=size)
            try:
                for data in stream:
                    if growing.written + len(data) > size:
                        raise ArchiveError(
                            f"{name}: the client sent more than the {size} bytes "
                            "its sidecar announced"
                        )
                    if growing.written - looked_at >= FREE_CHECK_BYTES:
                        self._keep_free(size - growing.written)
                        looked_at = growing.written
                    digest.update(data)
                    growing.append(fd, data)
                    self.ctx.progress("fetch", growing.written, size)
                    if self._refused():
                        break  # refused: the rest of the archive is not wanted
            finally:
                stream.close()  # stops the ssh child
        if growing.written < size and not self._refused():
            raise TransferCut(
                f"{self.ctx.name}: the transfer of {name} stopped at "
                f"{human_size(growing.written)} of {human_size(size)}"
            )

    def _keep_free(self, still: int) -> None:
        """Every FREE_CHECK_BYTES of a download: the ``still`` bytes to come must leave
        ``min_free_space`` free, whatever else wrote to the disk since the first look (an
        unpacking, another host's pull). Raises LocalArchiveError (the partial download
        is removed)."""
        left, reserve = room(self.ctx.partial_dir).free, self.ctx.config.min_free_space
        if left - still < reserve:
            raise LocalArchiveError(
                f"not enough free space left in {self.ctx.partial_dir} for "
                f"{self.archive.name}: {human_size(left)} free, {human_size(still)} still to "
                f"come and {human_size(reserve)} kept free (min_free_space)"
            )

    def _judge_transfer(self, error: BaseException) -> None:
        """Raise the transfer's error. A cut (or SIGTERM) keeps the partial file for
        resuming, unless this try brought no new byte (a client that always stops short
        keeps nothing); too many bytes, a write error (a full disk) or an archive the
        client no longer has remove it."""
        if isinstance(error, TransferCut):
            if self.resumed_from and self.arrived == self.resumed_from:
                discard_partial(self.path)
                raise TransferCut(
                    f"{error}; the resumed transfer brought nothing new, so the partial "
                    "download was removed",
                    kept=False,
                ) from None
            raise error
        if isinstance(error, ArchiveError | OSError | ArchiveGone):
            discard_partial(self.path)  # (gone: there is nothing left to resume)
        if isinstance(error, OSError):
            raise LocalArchiveError(f"cannot write {self.path}: {error.strerror}") from None
        raise error

    def _judge(self, transfer_error: BaseException | None, sha256: str) -> None:
        """Raise what went wrong first: a refused archive (the partial file goes), the
        transfer (a cut keeps the partial file), the checksum, the unpacking."""
        error, name = self.unpack_error, self.archive.name
        if isinstance(error, _REFUSED):
            # refused whatever the transfer did: a refused archive leaves no resume point
            discard_partial(self.path)
            if isinstance(error, ArchiveTooLarge):
                raise ArchiveTooLarge(f"refused {name}: {error}") from None
            raise error
        if transfer_error is not None:
            self._judge_transfer(transfer_error)
        if sha256 != self.archive.sha256:
            discard_partial(self.path)
            raise ChecksumMismatch(
                f"{name}: checksum mismatch: the bytes received hash to {sha256[:16]}..., "
                f"the sidecar says {self.archive.sha256[:16]}...; nothing was stored"
            )
        if isinstance(error, ArchiveError):
            discard_partial(self.path)
            raise error
        if isinstance(error, OSError):
            # a full, read-only or failing disk is the server's; other errors may come
            # of what the archive holds
            kind = LocalArchiveError if error.errno in _DISK_ERRNOS else ArchiveError
            raise kind(f"cannot unpack {name} into {self.ctx.staging}: {error.strerror}") from None
        if error is not None:
            raise error


_DISK_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO})
"""What an unpack into staging meets when the server's disk, not the archive, fails."""


class ChecksumMismatch(ArchiveError):
    """The bytes that arrived are not the archive the sidecar describes."""


def fetch_and_unpack(ctx: HostContext, remote: ByteSource, archive: ArchiveInfo) -> Fetched:
    """Fetch ``archive`` (resuming a partial file) and unpack it into the host's staging.

    The host's ``max_unpacked_size`` and ``max_entries`` limit what the archive may unpack
    to. Returns what was fetched. Raises TransferCut (the partial file is kept),
    ArchiveError (checksum or manifest mismatch, HostileArchive, ArchiveTooLarge past a
    limit: the partial file is deleted; a refused archive also stops the transfer).
    """
    return _Download(ctx, remote, archive).run()


def drop_stale_partials(partial_dir: Path, max_age: float, logger) -> None:
    """Remove the partial downloads in ``partial_dir`` (one host's) begun more than
    ``max_age`` (``partial_max_age``) ago, at each pull of the host whatever the pull then
    does, and at each run for a host it does not pull (disabled, or gone from
    server.yaml): only a fetch looked, and a client that cut its transfer short and then
    failed every pull before one kept what it sent for ever (up to max_archive_size;
    helper-167 F4). Raises OSError when the directory cannot be read."""
    try:
        names = os.listdir(partial_dir)
    except FileNotFoundError:
        return
    for name in names:
        path = partial_dir / name
        if name.endswith(STARTED):
            continue
        with contextlib.suppress(FileNotFoundError):
            st = path.stat()
            age = _partial_age(path, st)
            if age > max_age:
                logger.info(
                    "removing the partial download %s (%s, begun %s ago)",
                    name,
                    human_size(st.st_size),
                    human_duration(age),
                )
                discard_partial(path)


def _partial_age(path: Path, st: os.stat_result) -> float:
    """Seconds since a partial download's first byte, as its :data:`STARTED` note says.
    A note that is missing, unreadable or dated ahead is written anew, from the file's
    last change as it is found (and never later than now): counted from its last change
    each time, a partial grown a byte a night was kept for ever."""
    note = path.with_name(path.name + STARTED)
    now = time.time()
    try:
        since = float(note.read_text())
    except (OSError, ValueError):
        since = math.inf
    if since > now + 60:  # (a note is written in whole seconds: one may be ahead by < 1)
        since = min(st.st_mtime, now)
        with contextlib.suppress(OSError):  # (a full disk: the partial is judged all the same)
            atomic_write(note, f"{since:.0f}\n", mode=0o600)
    return max(0.0, now - since)


def _same_disk(one: Path, other: Path) -> bool:
    """Whether two paths lie on one file system, each judged by itself or, while it is
    not there yet, by its nearest directory that is (False when one cannot be looked at)."""

    def device(path: Path) -> int | None:
        for place in (path, *path.parents):
            try:
                return os.stat(place).st_dev
            except FileNotFoundError:
                continue
            except OSError:
                return None
        return None

    first = device(one)
    return first is not None and first == device(other)


def discard_partial(path: Path) -> None:
    """Remove a partial download and the note of when it began."""
    for each in (path, path.with_name(path.name + STARTED)):
        with contextlib.suppress(FileNotFoundError):
            each.unlink()
