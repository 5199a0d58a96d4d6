"""Read an archive as a stream: decompress on the fly, hash, iterate its tar members.

Used to verify an archive before it is published (client) and, on the server, to check
and unpack an archive while it arrives.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Protocol

from ..errors import ArchiveError, CommandError
from ..fsutil import write_all
from ..log import get_logger
from ..runner import Runner, RunningCommand
from . import sparse
from .compression import compression_of, decompress_command
from .deltaops import DATA_KEY, DELTA, FULL
from .manifest import MANIFEST_KEY, MANIFEST_NAME, NOTICE_NAME, PARTIAL, parse
from .removed import REMOVED_NAME
from .tarformat import Member, TarFormatError, TarReader

log = get_logger("archive")

CHUNK = 1 << 20
MAX_TAIL = 16 << 20
"""Decompressed bytes after the end-of-archive marker a reader drains (pullback's writer
pads to a 10240-byte record, GNU tar to its blocking factor's: 2 MiB at -b 4096)."""


class ByteStream(Protocol):
    """Anything bytes are read from: a file, a pipe, an SSH channel, a growing file."""

    def read(self, n: int = -1, /) -> bytes: ...


class _HashingReader:
    """A file-like wrapper that hashes and counts everything read through it."""

    def __init__(self, source: ByteStream):
        self.source = source
        self.sha256 = hashlib.sha256()
        self.size = 0

    def read(self, n: int = -1) -> bytes:
        data = self.source.read(n)
        self.sha256.update(data)
        self.size += len(data)
        return data


class TarStream:
    """Iterate the members of a (compressed) tar byte stream.

    ``source`` is any readable binary file object (a file, a pipe, an SSH channel). Use as
    a context manager; after it closes, ``sha256``/``size`` describe the raw (compressed)
    bytes read. Raises ArchiveError for corrupt or truncated data.
    """

    def __init__(self, source: ByteStream, compression: str, runner: Runner | None = None):
        self.source = _HashingReader(source)
        self.compression = compression
        self.runner = runner or Runner(log)
        self._child: RunningCommand | None = None
        self._feeder: threading.Thread | None = None
        self._feed_error: BaseException | None = None
        self._tail_error = False
        self._pipe: BinaryIO | None = None
        """The decompressor's output (None for an uncompressed archive)."""
        self._reader: TarReader | None = None

    @property
    def reader(self) -> TarReader:
        """The tar members' reader (only within ``with``)."""
        if self._reader is None:
            raise RuntimeError("a TarStream is read within a with block")
        return self._reader

    @property
    def sha256(self) -> str:
        return self.source.sha256.hexdigest()

    @property
    def size(self) -> int:
        return self.source.size

    def __enter__(self) -> TarStream:
        argv = decompress_command(self.compression)
        if argv is not None:
            in_read, in_write = os.pipe2(os.O_CLOEXEC)
            out_read, out_write = os.pipe2(os.O_CLOEXEC)
            with (
                os.fdopen(in_read, "rb", buffering=0) as stdin,
                os.fdopen(out_write, "wb", buffering=0) as stdout,
            ):
                self._child = self.runner.start(argv, stdin=stdin, stdout=stdout, level=10)
            self._feeder = threading.Thread(target=self._feed, args=(in_write,), daemon=True)
            self._feeder.start()
            self._pipe = os.fdopen(out_read, "rb", buffering=CHUNK)
        self._reader = TarReader(self._pipe or self.source, CHUNK)
        return self

    def _feed(self, fd: int) -> None:
        try:
            while True:
                data = self.source.read(CHUNK)
                if not data:
                    break
                write_all(fd, data)
        except BrokenPipeError:
            pass  # the decompressor stopped early; its exit status tells why
        except BaseException as exc:
            self._feed_error = exc
        finally:
            os.close(fd)

    def members(self) -> Iterator[Member]:
        """Yield each member; read a regular member's data with :meth:`read_data`."""
        try:
            yield from self.reader
        except TarFormatError as exc:
            raise ArchiveError(f"not a valid archive: {exc}") from None

    def read_data(self, member: Member) -> Iterator[bytes]:
        """Yield the data of the current regular member in chunks."""
        try:
            yield from self.reader.chunks()
        except TarFormatError as exc:
            raise ArchiveError(f"{member.name}: {exc}") from None

    def __exit__(self, exc_type, exc, _tb) -> None:
        self._close(failed=exc_type is not None)

    @staticmethod
    def _drain_tail(pipe: BinaryIO) -> bool:
        """Read what follows the end-of-archive marker, so the decompressor can finish;
        False when it is more than MAX_TAIL bytes (an outside attack put 1 TiB of zeros
        there)."""
        tail = 0
        while data := pipe.read(CHUNK):
            tail += len(data)
            if tail > MAX_TAIL:
                return False
        return True

    @staticmethod
    def _end_child(child: RunningCommand, failed: bool) -> None:
        """Wait for the decompressor (stopped first when the read ``failed``). Raises
        ArchiveError when it failed on its own (corrupt compressed data)."""
        if failed:
            child.stop(grace=2.0)
        try:
            child.wait()
        except CommandError as exc:
            if not failed:
                reason = exc.tail[-1] if exc.tail else exc.reason
                raise ArchiveError(f"corrupt compressed data: {reason}") from None

    def _close(self, failed: bool = True) -> None:
        if self._pipe is None and not failed:
            # uncompressed: the record padding after the end-of-archive marker is part of
            # the archive's bytes (its sha256 and size), as a decompressor would read it
            while self.source.read(CHUNK):
                pass
        if self._pipe is not None:
            if not failed and not self._drain_tail(self._pipe):
                failed = self._tail_error = True
            self._pipe.close()
            self._pipe = None
        if self._child is not None:
            child, self._child = self._child, None
            self._end_child(child, failed)
        if self._feeder is not None:
            self._feeder.join()
            self._feeder = None
        if self._feed_error is not None and not failed:
            raise ArchiveError(f"cannot read the archive: {self._feed_error}")
        if self._tail_error:
            raise ArchiveError(
                f"more than {MAX_TAIL} bytes follow the end-of-archive marker (pullback's "
                "writer pads to 10240 bytes)"
            )


@dataclass
class VerifiedArchive:
    """What verifying an archive found: it is intact and matches its manifest."""

    sha256: str
    size: int
    members: int
    files: int
    content_bytes: int
    manifest: dict[str, str] = field(default_factory=dict)


def _mismatch_message(problems: list[str]) -> str:
    shown = "; ".join(problems[:5])
    more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
    return f"does not match its {MANIFEST_NAME}: {shown}{more}"


@dataclass
class _Digests:
    """What reading an archive back found: every file's digest and its manifest."""

    computed: dict[str, str | None] = field(default_factory=dict)
    """Each file's digest; None for a ``delta`` member's file (made from its base:
    checked by the server, which holds the base; here only its presence in the
    manifest)."""
    from_base: set[str] = field(default_factory=set)
    """The ``base`` and ``same`` members: a partial manifest leaves them out, a complete
    one lists them (their digests are the base's, checked by the server)."""
    listed: dict[str, str] | None = None
    partial: bool = False
    members: int = 0
    files: int = 0
    content: int = 0

    def add(self, stream: TarStream, member: Member) -> None:
        self.members += 1
        if member.is_hardlink:
            from_base = member.linkname in self.from_base  # its digest is the base's
            self.computed[member.name] = (
                None if from_base else self.computed.get(member.linkname, "")
            )
            self.files += 1
        if not member.is_file:
            return
        source = member.pax.get(DATA_KEY, FULL)
        if source != FULL or member.name == REMOVED_NAME:
            self._skipped(stream, member, source)
            return
        if sparse.is_sparse(member.pax):
            realsize = int(member.pax.get(sparse.REALSIZE, b"0") or 0)
            content = sparse.SparseData(stream.read_data(member), member.size, realsize)
            self.computed[member.name] = content.logical_digest().hexdigest()  # ValueError
            self.files += 1
            self.content += realsize
            return
        digest = hashlib.sha256()
        data = bytearray() if member.name == MANIFEST_NAME else None
        for chunk in stream.read_data(member):
            digest.update(chunk)
            if data is not None:
                data += chunk
        if data is not None:
            self.listed = parse(bytes(data))  # raises ValueError
            self.partial = member.pax.get(MANIFEST_KEY) == PARTIAL
            if self.partial:
                self.listed.pop(NOTICE_NAME, None)
            return
        self.computed[member.name] = digest.hexdigest()
        self.files += 1
        self.content += member.size

    def _skipped(self, stream: TarStream, member: Member, source: bytes) -> None:
        """A member whose data is not the file's bytes, read past: a file made from the
        base (``base``, ``same``, ``delta``: the server, which holds the base, checks
        it), or a lean delta's ``REMOVED.list`` (no file of the tree)."""
        for _ in stream.read_data(member):
            pass
        if member.name == REMOVED_NAME:
            return
        if source == DELTA:
            self.computed[member.name] = None
        else:
            self.from_base.add(member.name)
        self.files += 1

    def problems(self, listed: dict[str, str]) -> list[str]:
        found = []
        for name in self.from_base:  # a partial manifest leaves them out, a complete one not
            if (name in listed) == self.partial:
                found.append(f"{name} is {'listed' if self.partial else 'missing'}")
        for name, digest in self.computed.items():
            if name not in listed:
                found.append(f"{name} is not listed")
            elif digest is not None and listed[name] != digest:
                found.append(f"{name} has changed")
        found.extend(
            f"{name} is missing"
            for name in listed
            if name not in self.computed and name not in self.from_base
        )
        return found


def verify_archive(
    path: Path, compression: str | None = None, runner: Runner | None = None
) -> VerifiedArchive:
    """Read the whole archive at ``path`` back and compare every file with its manifest.

    ``compression`` defaults to what the file name says. Returns the archive's sha256,
    size and counts. Raises ArchiveError naming what is wrong: unreadable, corrupt,
    truncated, a file missing or changed.
    """
    path = Path(path)
    compression = compression or compression_of(path.name)
    digests = _Digests()
    with open(path, "rb") as raw, TarStream(raw, compression, runner) as stream:
        for member in stream.members():
            try:
                digests.add(stream, member)
            except ValueError as exc:
                raise ArchiveError(f"{path.name}: {exc}") from None
    listed = digests.listed
    if listed is None:
        raise ArchiveError(f"{path.name} has no {MANIFEST_NAME}")
    problems = digests.problems(listed)
    if problems:
        raise ArchiveError(f"{path.name} {_mismatch_message(problems)}")
    return VerifiedArchive(
        stream.sha256, stream.size, digests.members, digests.files, digests.content, listed
    )
