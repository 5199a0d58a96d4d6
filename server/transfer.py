"""Fetch an archive into a partial file (resumable) while unpacking it as it arrives.

The bytes land in ``<state_dir>/partial/<host>/<archive>``: a cut connection keeps what
arrived and the next try asks for the rest. A second thread reads the same file as it
grows, decompresses and unpacks it into staging, so transfer and unpacking overlap. The
archive is stored only if the whole file matches the sidecar's sha256 and every file
matches the archive's manifest. An archive the unpacker refuses (hostile content, or more
than the host's ``max_unpacked_size``/``max_entries``) stops the transfer at once.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import threading
from dataclasses import dataclass
from pathlib import Path

from ..common.archive.reader import TarStream
from ..common.archive.unpack import (
    ArchiveTooLarge,
    HostileArchive,
    Unpacker,
    UnpackLimits,
    UnpackStats,
)
from ..common.errors import ArchiveError
from ..common.fsutil import free_bytes, write_all
from ..common.log import get_logger
from ..common.units import human_size
from .remote import Remote, TransferCut

log = get_logger("transfer")
CHUNK = 1 << 20
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


def fetch_and_unpack(
    remote: Remote,
    name: str,
    size: int,
    sha256: str,
    compression: str,
    partial_dir: Path,
    staging: Path,
    runner,
    cancel=None,
) -> Fetched:
    """Fetch ``name`` (resuming a partial file) and unpack it into ``staging``.

    The host's ``max_unpacked_size`` and ``max_entries`` limit what the archive may unpack
    to. Returns what was fetched. Raises TransferCut (the partial file is kept),
    ArchiveError (checksum or manifest mismatch, HostileArchive, ArchiveTooLarge past a
    limit: the partial file is deleted; a refused archive also stops the transfer).
    """
    limits = UnpackLimits(remote.host.max_unpacked_size, remote.host.max_entries)
    partial_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    for old in partial_dir.iterdir():
        if old.name != name:
            log.info(
                "[%s] removing the partial download of an older archive, %s",
                remote.host.name,
                old.name,
            )
            old.unlink()
    path = partial_dir / name
    if path.exists() and path.stat().st_size > size:
        path.unlink()
    growing = GrowingFile(path, size)
    offset = growing.written
    needed = size - offset
    if free_bytes(partial_dir) < needed:
        raise ArchiveError(
            f"not enough free space in {partial_dir} for {name}: "
            f"{human_size(free_bytes(partial_dir))} free, "
            f"{human_size(needed)} needed"
        )
    if offset:
        log.info(
            "[%s] resuming %s at %s of %s",
            remote.host.name,
            name,
            human_size(offset),
            human_size(size),
        )
    digest = _hash_prefix(path, offset) if offset else hashlib.sha256()

    outcome: dict[str, object] = {}

    def unpack() -> None:
        reader = growing.reader()
        try:
            with (
                TarStream(reader, compression, runner) as stream,
                Unpacker(staging, limits) as unpacker,
            ):
                for member in stream.members():
                    unpacker.add(member, stream.read_data(member))
                outcome["stats"] = unpacker.finish()
        except BaseException as exc:
            outcome["error"] = exc
        finally:
            reader.close()

    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
    worker = threading.Thread(target=unpack, name=f"unpack-{remote.host.name}", daemon=True)
    worker.start()
    transfer_error: BaseException | None = None
    try:
        if offset < size:
            with contextlib.closing(remote.stream(name, offset, cancel)) as stream:
                for data in stream:
                    if growing.written + len(data) > size:
                        raise ArchiveError(
                            f"{name}: the client sent more than the {size} bytes "
                            "its sidecar announced"
                        )
                    digest.update(data)
                    growing.append(fd, data)
                    if isinstance(outcome.get("error"), _REFUSED):
                        break  # refused: the rest of the archive is not wanted
        refused = isinstance(outcome.get("error"), _REFUSED)  # reported below
        if growing.written < size and not refused:
            raise TransferCut(
                f"{remote.host.name}: the transfer of {name} stopped at "
                f"{human_size(growing.written)} of {human_size(size)}"
            )
    except BaseException as exc:
        transfer_error = exc
    finally:
        os.fsync(fd)
        os.close(fd)
        growing.finish(transfer_error)
        worker.join()

    error = outcome.get("error")
    if isinstance(error, _REFUSED):
        # refused whatever the transfer did: a refused archive leaves no resume point
        path.unlink(missing_ok=True)
        if isinstance(error, ArchiveTooLarge):
            raise ArchiveTooLarge(f"refused {name}: {error}") from None
        raise error
    if transfer_error is not None:
        if isinstance(transfer_error, ArchiveError):
            path.unlink(missing_ok=True)
        if isinstance(transfer_error, OSError) and not isinstance(transfer_error, TransferCut):
            raise ArchiveError(f"cannot write {path}: {transfer_error.strerror}") from None
        raise transfer_error
    if digest.hexdigest() != sha256:
        path.unlink(missing_ok=True)
        raise ArchiveError(
            f"{name}: checksum mismatch: the bytes received hash to "
            f"{digest.hexdigest()[:16]}..., the sidecar says {sha256[:16]}...; "
            "nothing was stored"
        )
    if error is not None:
        if isinstance(error, ArchiveError):
            path.unlink(missing_ok=True)
            raise error
        if isinstance(error, OSError):
            raise ArchiveError(f"cannot unpack {name} into {staging}: {error.strerror}") from None
        raise error
    return Fetched(path, digest.hexdigest(), size, offset, outcome["stats"])


def discard_partial(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
