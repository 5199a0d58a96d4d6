"""Small file-system helpers: atomic writes, directory fsync, free space."""

from __future__ import annotations

import contextlib
import errno
import functools
import os
import shlex
import stat
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from .libc import libc
from .trees import remove_tree, walk


def fsync_dir(path: str | os.PathLike) -> None:
    """Make a rename or unlink in ``path`` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: str | os.PathLike, data: bytes | str, mode: int = 0o644) -> None:
    """Replace ``path`` with ``data`` so readers see the old or the new file, never half.

    Raises OSError (the old file is then untouched and no temporary file is left).
    """
    path = Path(path)
    if isinstance(data, str):
        data = data.encode("utf-8")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fchmod(handle.fileno(), mode)
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)


def write_all(fd: int, data: bytes | bytearray | memoryview) -> None:
    """Write all of ``data`` to ``fd`` (a pipe or socket may take less per call)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def pwrite_all(fd: int, data: bytes | bytearray | memoryview, position: int) -> None:
    """Write all of ``data`` to ``fd`` at ``position``, not moving the file offset."""
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, position)
        view = view[n:]
        position += n


_FALLOC_FL_KEEP_SIZE, _FALLOC_FL_PUNCH_HOLE = 0x01, 0x02


def copy_range(source: int, out: int, offset: int, length: int) -> None:
    """Copy ``length`` bytes of the open file ``source`` at ``offset`` to the same place
    of ``out`` (the kernel copies); a file that shrank meanwhile stops it early (the
    rest reads as zeros once ``out`` is truncated to its size)."""
    os.lseek(out, offset, os.SEEK_SET)
    while length:
        sent = os.sendfile(out, source, offset, min(length, 1 << 30))
        if not sent:
            return
        offset, length = offset + sent, length - sent


_PIECE = 1 << 20


def pread_span(fd: int, start: int, end: int | None = None) -> Iterator[bytes]:
    """The bytes of ``fd`` from ``start`` to ``end`` (None: to the end of the file) in
    pieces of at most 1 MiB, not moving the file offset; fewer bytes when the file ends
    first. Raises OSError when a read fails."""
    position = start
    while end is None or position < end:
        data = os.pread(fd, _PIECE if end is None else min(_PIECE, end - position), position)
        if not data:
            return
        position += len(data)
        yield data


@functools.cache
def _fallocate():
    """libc's ``fallocate64(2)`` (a 64-bit offset on every architecture), loaded once:
    only a sparse file's delta needs it."""
    import ctypes

    function = libc().fallocate64
    function.argtypes = (ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64)
    function.restype = ctypes.c_int
    return function


def make_hole(fd: int, offset: int, length: int) -> bool:
    """Make ``length`` bytes of ``fd`` from ``offset`` read as zeros, without moving the
    file's size and without allocating: a hole punched (``fallocate(2)``,
    ``FALLOC_FL_PUNCH_HOLE``), or, where the file system cannot punch one, zeros written
    over the data found in the range (its holes, and what lies past the end, already
    read as zeros). Returns whether a hole was punched. Raises OSError for any other
    failure."""
    import ctypes

    mode = _FALLOC_FL_KEEP_SIZE | _FALLOC_FL_PUNCH_HOLE
    if _fallocate()(fd, mode, offset, length) == 0:
        return True
    error = ctypes.get_errno()
    if error not in (errno.EOPNOTSUPP, errno.ENOSYS):
        raise OSError(error, os.strerror(error))
    end = min(offset + length, os.fstat(fd).st_size)
    while offset < end:
        try:
            start = os.lseek(fd, offset, os.SEEK_DATA)
            stop = min(os.lseek(fd, start, os.SEEK_HOLE), end)
        except OSError as exc:
            if exc.errno == errno.ENXIO:  # no data from offset on
                return False
            if exc.errno not in (errno.EINVAL, errno.EOPNOTSUPP):
                raise
            start, stop = offset, end  # the file system cannot tell: all of it
        zeros = bytes(min(_PIECE, max(stop - start, 0)))
        while start < stop:
            step = min(_PIECE, stop - start)
            pwrite_all(fd, zeros[:step], start)
            start += step
        offset = max(stop, offset + 1)
    return False


MIN_FREE_INODES = 10_000
"""Free inodes a writer of many files (a client run, an unpacking) leaves on a file
system: below it the machine's own services cannot create files."""


@dataclass(frozen=True)
class Room:
    """What a file system has left for an unprivileged writer (:func:`room`)."""

    free: int
    """Bytes free."""
    inodes: int | None
    """Inodes free; None when the file system counts none (btrfs)."""
    size: int
    """Bytes the file system holds in all."""
    block: int
    """Bytes of its allocation unit (a file takes a whole number of them)."""
    files: int | None = None
    """Inodes it holds in all; None when it counts none."""

    @property
    def few_inodes(self) -> bool:
        """Whether fewer than MIN_FREE_INODES inodes are free (never where none are
        counted)."""
        return self.inodes is not None and self.inodes < MIN_FREE_INODES

    def inodes_words(self) -> str:
        """The free inodes in words ("12,000 inodes", "inodes not counted")."""
        return "inodes not counted" if self.inodes is None else f"{self.inodes:,} inodes"


COUNTS_LATE = {0x9123683E: "btrfs", 0x2FC12FC1: "zfs", 0x794C7630: "overlay"}
"""File systems (``statfs(2)``'s ``f_type``) whose free space leaves out what was written
and not yet committed (btrfs commits every 30 s, zfs every 5 s; an overlay shows its
upper file system's): on btrfs, 100 MiB just written took nothing off the free space
until a sync, so a look at it saw nothing of a run's dump."""


def counts_late(fd: int) -> bool:
    """Whether the file system of the open descriptor ``fd`` is one of COUNTS_LATE
    (False when ``fstatfs`` fails)."""
    import ctypes

    found = ctypes.create_string_buffer(256)  # struct statfs; f_type comes first
    if libc().fstatfs(fd, found) != 0:
        return False
    # f_type is a word (__fsword_t), but on s390x an unsigned int (big-endian, another
    # after it: read as a word it was f_bsize, helper-164 F5)
    field = ctypes.c_uint if os.uname().machine == "s390x" else ctypes.c_long
    return field.from_buffer(found).value & 0xFFFFFFFF in COUNTS_LATE


def _settle(path: str | os.PathLike | int) -> None:
    """Have the file system of ``path`` (a directory, or an open descriptor) commit what
    it holds back (``syncfs(2)``) when it counts written data late (COUNTS_LATE), so its
    free space is what is written. Nothing elsewhere, or when it cannot be opened or
    synced (the look then sees what it sees)."""
    if isinstance(path, int):
        fd, opened = path, False
    else:
        flags = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC | os.O_NONBLOCK
        try:
            fd, opened = os.open(path, flags), True
        except OSError:
            return
    try:
        if counts_late(fd):
            libc().syncfs(fd)
    finally:
        if opened:
            os.close(fd)


def room(path: str | os.PathLike | int) -> Room:
    """What the file system holding ``path`` (a directory, or an open descriptor) has
    left, what was written to it counted (COUNTS_LATE ones are synced first). Raises
    OSError when it cannot be looked at."""
    _settle(path)
    fs = os.statvfs(path)
    inodes = fs.f_favail if fs.f_files > 0 else None
    total = fs.f_files if fs.f_files > 0 else None
    return Room(fs.f_bavail * fs.f_frsize, inodes, fs.f_blocks * fs.f_frsize, fs.f_frsize, total)


def free_bytes(path: str | os.PathLike) -> int:
    """Free space for an unprivileged writer on the file system holding ``path``."""
    return room(path).free


def remove_tree_contents(path: Path) -> list[str]:
    """Delete everything inside ``path`` (not ``path`` itself); return the names removed."""
    removed: list[str] = []
    if not path.is_dir():
        return removed
    for entry in path.iterdir():
        removed.append(entry.name)
        remove_entry(entry, ignore_errors=True)
    return removed


def remove_entry(path: Path, ignore_errors: bool = False) -> None:
    """Delete ``path``: a directory with everything in it (a symlink is never followed),
    anything else unlinked; nothing when it is gone already. Raises OSError unless
    ``ignore_errors`` (a directory's contents only)."""
    if path.is_dir() and not path.is_symlink():
        remove_tree(path, ignore_errors=ignore_errors)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def set_dir_mode(path: Path, mode: int, gid: int | None = None) -> None:
    """Give the directory ``path`` exactly ``mode`` (and the group ``gid``), through a
    descriptor opened without following a link: a link planted in its place is an
    error (OSError ELOOP or ENOTDIR), never followed."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        st = os.fstat(fd)
        if gid is not None and st.st_gid != gid:
            os.fchown(fd, -1, gid)
        # only when it differs: under RestrictSUIDSGID= (the units) any chmod that names
        # a set-id bit is refused, even one that keeps it as it is
        if stat.S_IMODE(st.st_mode) != mode:
            os.fchmod(fd, mode)
    finally:
        os.close(fd)


def writable_or_creatable(path: Path) -> bool:
    """True when ``path`` can be written, or created (its nearest existing ancestor is a
    directory this process may write to)."""
    existing = path
    while not existing.exists():
        existing = existing.parent
    if existing.is_dir():
        return os.access(existing, os.W_OK | os.X_OK)
    return existing == path and os.access(path, os.W_OK)


def directory_size(path: Path) -> int:
    """Bytes the files below ``path`` occupy on disk."""
    total = 0
    for directory, _, files in walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(directory, name)).st_blocks * 512
            except FileNotFoundError:
                continue
    return total


MAX_LINKS = 40
"""Symlinks :func:`open_trusted_dir` follows on one path (the kernel's own limit)."""
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def open_trusted_dir(path: Path) -> int:
    """The directory ``path`` opened by descriptors from ``/``, one name at a time,
    following only symlinks only root could have made (root's, in a directory of root's
    that no one else may write to), as :func:`untrusted_link` judges them: unlike a
    check of the path followed by an open by name, no swap between the two can lead it
    elsewhere. Returns the descriptor (the caller closes it). Raises OSError: ELOOP for
    a symlink another user could have made (or too many), ENOTDIR, ENOENT."""
    fd = os.open("/", _DIR_FLAGS)
    parts = list(Path(path).parts[1:])
    links = 0
    try:
        while parts:
            name = parts.pop(0)
            if name in ("", "."):
                continue
            try:
                step = os.open(name, _DIR_FLAGS, dir_fd=fd)
            except OSError as exc:
                if exc.errno not in (errno.ELOOP, errno.ENOTDIR):
                    raise
                target = _trusted_target(fd, name)
                links += 1
                if links > MAX_LINKS:
                    raise OSError(errno.ELOOP, "too many symlinks", str(path)) from None
                if target.startswith("/"):
                    os.close(fd)
                    fd = -1
                    fd = os.open("/", _DIR_FLAGS)
                parts[:0] = list(Path(target).parts[1 if target.startswith("/") else 0 :])
                continue
            os.close(fd)
            fd = step
        return fd
    except BaseException:
        if fd >= 0:
            os.close(fd)
        raise


def make_dirs_at(path: Path, like: Callable[[Path], Path | None] | None = None) -> int:
    """The directory ``path`` opened as :func:`open_trusted_dir` opens it, the missing
    directories on the way made one at a time, each by descriptor in the one above it
    and opened without following a symlink (a directory swapped for a symlink by the
    owner of the one above, between its mkdir and its open, is refused: ENOTDIR; a
    mkdir by name through that symlink, and a chown by name after it, would go where
    it points). Each made directory takes the owner, mode, times and extended attributes
    of ``like(directory)`` when that gives a directory, else it is root's 0755; one
    someone else made there meanwhile is used as it is. Returns the descriptor (the
    caller closes it). Raises OSError."""
    missing: list[Path] = []
    top = Path(path)
    while True:
        try:
            fd = open_trusted_dir(top)
            break
        except FileNotFoundError:
            if top.parent == top:
                raise
            missing.append(top)
            top = top.parent
    try:
        for directory in reversed(missing):
            try:
                os.mkdir(directory.name, 0o700, dir_fd=fd)
                made = True
            except FileExistsError:
                made = False
            step = os.open(directory.name, _DIR_FLAGS, dir_fd=fd)
            os.close(fd)
            fd = step
            if made:
                _just_made(fd, directory)
                _dir_meta(fd, like(directory) if like else None)
        return fd
    except BaseException:
        os.close(fd)
        raise


def _just_made(fd: int, directory: Path) -> None:
    """Raises OSError (EEXIST) unless ``fd`` is a directory as a mkdir of this process
    left it: ours, no access for others, empty. The owner of the directory above could
    rename another one into its place after the mkdir (a directory of root's that sat
    there, with its files), which would then be given to the snapshot's owner."""
    found = os.fstat(fd)  # (not st_nlink: a directory has 1 on btrfs)
    if found.st_uid != os.geteuid() or found.st_mode & 0o077:
        fresh = False
    else:
        with os.scandir(fd) as entries:
            fresh = next(entries, None) is None
    if not fresh:
        raise OSError(errno.EEXIST, "swapped for another directory as it was made", str(directory))


def _dir_meta(fd: int, model: Path | None) -> None:
    """Give the directory ``fd`` the owner, mode, times and extended attributes of the
    directory ``model`` (a path root alone controls), or root's 0755 without one."""
    found = os.lstat(model) if model is not None else None
    if found is None or not stat.S_ISDIR(found.st_mode):
        os.fchmod(fd, 0o755)
        return
    assert model is not None
    names: list[str] = []
    with contextlib.suppress(OSError):  # (a file system without them)
        names = os.listxattr(model, follow_symlinks=False)
    for name in names:
        with contextlib.suppress(OSError):  # as shutil.copystat: one refused, the rest set
            os.setxattr(fd, name, os.getxattr(model, name, follow_symlinks=False))
    if os.geteuid() == 0:
        os.fchown(fd, found.st_uid, found.st_gid)
    os.fchmod(fd, stat.S_IMODE(found.st_mode))
    os.utime(fd, ns=(found.st_atime_ns, found.st_mtime_ns))


def is_within(path: Path, top: Path) -> bool:
    """Whether ``path``, its symlinks followed, is ``top`` or below it (``top``'s
    symlinks followed too): a symlink in a tree another user could change may lead out
    of it between this answer and a later use; for a tree only root can change."""
    real, inside = os.path.realpath(path), os.path.realpath(top)
    return real == inside or real.startswith(inside.rstrip("/") + "/")


def same_entry(now: os.stat_result, looked: os.stat_result) -> bool:
    """Whether ``now`` (an open descriptor's ``fstat``) is the entry ``looked`` at: the
    same device, inode and kind."""
    return (now.st_dev, now.st_ino, stat.S_IFMT(now.st_mode)) == (
        looked.st_dev,
        looked.st_ino,
        stat.S_IFMT(looked.st_mode),
    )


def anchored_dir(dir_fd: int | None, name: str, looked: os.stat_result) -> int | None:
    """The directory ``name`` below ``dir_fd`` (a path when None) opened without
    following a symlink, when it is still the one ``looked`` at; None when it was
    replaced meanwhile (a symlink, another directory, gone). Returns the descriptor (the
    caller closes it). Raises OSError for another failure (EACCES)."""
    try:
        fd = os.open(name, _DIR_FLAGS, dir_fd=dir_fd)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return None
        raise
    if same_entry(os.fstat(fd), looked):
        return fd
    os.close(fd)
    return None


_PROC_FDS = os.path.isdir("/proc/self/fd")


def anchored_path(dir_fd: int, name: str) -> str:
    """A path to ``name`` below the directory open as ``dir_fd`` that the kernel resolves
    from that very directory (``/proc/self/fd/N/name``), for the calls that take no
    ``dir_fd`` (extended attributes) and those given one path: a directory above
    swapped for a symlink cannot redirect it. ``name`` itself is not followed by calls
    told not to. Without /proc, the empty string: the caller then uses the entry's own
    path."""
    return f"/proc/self/fd/{dir_fd}/{name}" if _PROC_FDS else ""


DEEPEST_LEVELS = 2000
"""The most directory levels the deepest path pullback archives (4000 bytes) can hold."""

DEPTH_HINT = "one open file a level: the open-files limit allows no more; raise LimitNOFILE"
"""What a walk cut short by the hard open-files limit (below :data:`DEEPEST_LEVELS`) adds."""


def descriptor_room(reserve: int = 256) -> int:
    """How many directories deep a walk may hold one descriptor each: the soft limit on
    open files, raised to the hard one first when it is lower than needed for the
    deepest path pullback archives (4000 bytes: 2000 levels), less ``reserve`` for
    everything else the process opens."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = DEEPEST_LEVELS + reserve
    if soft != resource.RLIM_INFINITY and soft < wanted:
        raised = wanted if hard == resource.RLIM_INFINITY else min(hard, wanted)
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (raised, hard))
            soft = raised
    return max(1, (wanted if soft == resource.RLIM_INFINITY else soft) - reserve)


def _trusted_target(dir_fd: int, name: str) -> str:
    """The target of the symlink ``name`` below ``dir_fd``. Raises OSError: ENOTDIR when
    it is no symlink, ELOOP when another user could have made it."""
    found = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    if not stat.S_ISLNK(found.st_mode):
        raise OSError(errno.ENOTDIR, "not a directory", name)
    here = os.fstat(dir_fd)
    if found.st_uid != 0 or here.st_uid != 0 or here.st_mode & 0o022:
        raise OSError(errno.ELOOP, "a symlink another user could have made", name)
    return os.readlink(name, dir_fd=dir_fd)


def untrusted_link(path: Path) -> Path | None:
    """The first component above ``path`` (``path`` itself excluded) that is a symlink
    another user could have made or swapped: one owned by anyone but root, or standing
    in a directory that anyone but root may write to; None when there is none (or the
    path does not reach that far yet). Root following such a link by name would read
    or write wherever that user chose."""
    current = Path(path.anchor or "/")
    for part in path.parts[1:-1]:
        parent = current
        current = current / part
        try:
            info = os.lstat(current)
            above = os.lstat(parent)
        except OSError:
            return None
        if not stat.S_ISLNK(info.st_mode):
            continue
        if info.st_uid != 0 or above.st_uid != 0 or above.st_mode & 0o022:
            return current
        current = Path(os.path.realpath(current))
    return None


def others_may_change(path: str | os.PathLike, info: os.stat_result | None = None) -> str | None:
    """Why another user than root (or this process's own) may change the file at
    ``path``, which pullback obeys (a configuration or service file, a plugin): its
    owner, its mode writable by group or others, or its directory writable by another
    user (who could put another file in its place; not with the sticky bit, as /tmp's);
    None when none may. ``info``: the file's stat as read (``fstat`` of the descriptor
    its text came from), else taken by path. A service file another user could write was
    run as root (an outside review). Raises OSError."""
    info = info or os.stat(path)
    directory = os.stat(os.path.dirname(os.path.abspath(path)))
    mode = stat.S_IMODE(info.st_mode)
    if info.st_uid not in (0, os.geteuid()):
        why = f"it is owned by uid {info.st_uid}"
    elif mode & 0o022:
        why = f"group or others may write it (mode {mode:04o})"
    elif directory.st_uid not in (0, os.geteuid()) or (
        directory.st_mode & 0o022 and not directory.st_mode & stat.S_ISVTX
    ):
        why = "another user may write its directory (and put another file in its place)"
    else:
        return None
    quoted = shlex.quote(str(path))
    return (
        f"{why}: pullback does not obey a file another user can change; review it, then "
        f"make it root's: chown root: {quoted} && chmod go-w {quoted} (and its directory)"
    )


class OthersMayChange(ValueError):
    """A file pullback obeys is one another user may change (:func:`others_may_change`)."""


def open_trusted_file(path: Path) -> int:
    """``path`` opened read-only by descriptors from ``/`` as :func:`open_trusted_dir`
    opens a directory, its last name too followed only when it is a symlink only root
    could have made, and without blocking (a FIFO is not waited on). A user who owns the
    directory of a file root reads (an application's ``.env``) cannot make root read
    another file through a symlink. Returns the descriptor (the caller closes it).
    Raises OSError: ELOOP for a symlink another user could have made (or too many),
    ENOENT, ENOTDIR."""
    path = Path(path)
    for _ in range(MAX_LINKS):
        dir_fd = open_trusted_dir(path.parent)
        try:
            try:
                return os.open(path.name, _FILE_FLAGS | os.O_NOFOLLOW, dir_fd=dir_fd)
            except OSError as exc:
                if exc.errno != errno.ELOOP:
                    raise
            target = _trusted_target(dir_fd, path.name)
        finally:
            os.close(dir_fd)
        path = path.parent / target  # (an absolute target replaces the directory)
    raise OSError(errno.ELOOP, "too many symlinks", str(path))


_FILE_FLAGS = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC


def read_regular(
    path: str | os.PathLike, limit: int, *, obeyed: bool = False, trusted: bool = False
) -> bytes:
    """The bytes of ``path``, a regular file of at most ``limit`` bytes, opened without
    blocking (a FIFO put in its place is refused, not waited on; a device is refused).
    ``obeyed``: the descriptor the bytes are read from is checked too (no file swapped
    in after a check by path). ``trusted``: reached as :func:`open_trusted_file` reaches
    it (no symlink another user could have made is followed).

    Raises OSError when it cannot be opened or read, ValueError when it is not a regular
    file or is longer than ``limit``, OthersMayChange (obeyed) when another user may
    change it."""
    return read_regular_stat(path, limit, obeyed=obeyed, trusted=trusted)[0]


def read_regular_stat(
    path: str | os.PathLike, limit: int, *, obeyed: bool = False, trusted: bool = False
) -> tuple[bytes, os.stat_result]:
    """:func:`read_regular`'s bytes, and the file's ``fstat`` as they were read (its
    mode, owner and times, to copy them). Raises as it does."""
    descriptor = open_trusted_file(Path(path)) if trusted else os.open(path, _FILE_FLAGS)
    size = f"{limit >> 20} MiB" if not limit % (1 << 20) else f"{limit} bytes"
    too_large = ValueError(f"larger than {size}")
    try:
        info = os.fstat(descriptor)
        if not stat.S_ISREG(info.st_mode):
            raise ValueError("not a regular file")
        why = others_may_change(path, info) if obeyed else None
        if why:
            raise OthersMayChange(why)
        if info.st_size > limit:
            raise too_large
        with open(descriptor, "rb", closefd=False) as file:
            data = file.read(limit + 1)
    finally:
        os.close(descriptor)
    if len(data) > limit:
        raise too_large
    return data, info
