"""Unpack an archive stream into a host's staging tree, safely and without needless writes.

Safety (the archive comes from a host that may be compromised):

- every path is resolved one component at a time with ``O_NOFOLLOW`` relative to a
  directory descriptor, so no symlink (in the archive or left in staging) can redirect a
  write; absolute names, ``..``, empty components, NUL bytes and over-long names refuse
  the whole archive; so do names outside ``services/`` and ``MANIFEST.sha256``, and hard
  links to anything that is not a file of the same archive;
- symlinks are recreated as they are (an absolute link in /etc is data) but never
  followed; device nodes are dropped; FIFOs, set-user/group-id bits and file capabilities
  (``security.capability``) are kept, because the staging tree is root's alone (0700 below
  a 0700 state directory): no other local user can run, open or follow anything in it;
  numeric owners, modes, nanosecond mtimes, xattrs and ACLs are kept;
- sparse files in the PAX 1.0 format are written sparse (their holes stay holes); their
  maps are checked (:mod:`.sparse`); older GNU sparse forms refuse the archive;
- optional limits (:class:`UnpackLimits`, the server's ``max_unpacked_size`` and
  ``max_entries``) are checked as each member's header arrives, before its data is
  written: a tar bomb is refused after at most one limit's worth of writes;
- a delta archive's ``base`` and ``delta`` members (docs/archive-format.md, *Delta
  archives*) may only use a file of staging that the base index (:mod:`.baseindex`)
  vouches for, untouched since (else :class:`BaseMismatch`); PBD1 streams are applied by
  :mod:`.deltaops`, in constant memory, into a new file.

Economy: the staging tree is kept between runs. A file whose content and metadata did
not change is not touched at all (not even its ctime), so ``restic backup`` / ``borg
create`` (both compare ctime) re-read only what changed. Afterwards, whatever the
archive no longer holds is removed, so staging mirrors the archive exactly.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import stat
import tempfile
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import ArchiveError, LocalArchiveError
from ..fsutil import (
    MIN_FREE_INODES,
    anchored_path,
    make_hole,
    pread_span,
    pwrite_all,
    room,
    write_all,
)
from ..log import get_logger
from ..text import BoundedWarnings, escaped
from ..trees import remove_tree, walk
from ..units import human_size
from . import acl, deltaops, removed, sha256state, sparse, tree_list
from .baseindex import BaseIndex, IndexedFile, IndexWriter
from .deltaops import BASE_KEY, DATA_KEY, REALSIZE_KEY
from .filecache import CHUNKED_FROM
from .manifest import (
    MANIFEST_KEY,
    MANIFEST_NAME,
    NOTICE_LINE,
    NOTICE_NAME,
    PARTIAL,
    format_line,
    parse,
)
from .manifest import (
    MAX_LINE as MAX_MANIFEST_LINE,
)
from .stored import BESIDE_SERVICES
from .tarformat import FIFOTYPE, Member
from .tree_list import TREE_NAME

log = get_logger("unpack")

TOP_LEVEL = ("services", MANIFEST_NAME)
_TREE_TEMP = f".{TREE_NAME}.tmp"
_KEPT = (*((name,) for name in BESIDE_SERVICES), (_TREE_TEMP,))
"""What the sweep leaves in staging although no member names it: the server writes the
sidecar there, the sweep its list of entries (an archive cannot hold a member of these
names: they are outside services/)."""
MAX_NAMED = 5
"""Files a manifest mismatch names (and it stops looking after one more)."""
SPOOL_IN_MEMORY = 16 << 20
"""A delta member's PBD1 stream is kept in memory up to this size, on disk beyond it."""
MAX_FILE_SIZE = (1 << 63) - 1
"""The largest size a Linux file can have (``off_t``)."""
MAX_NAME = 4095
XATTR_SIZE_MAX = 65536
"""The largest extended attribute value Linux holds (an ACL is one too)."""
XATTR_LIST_MAX = 65536
"""The most bytes of extended attribute names one Linux inode holds."""
MAX_DIR_META = 64 << 20
"""The directories' extended attributes and ACLs kept until the end of an archive, in
all, counted as the memory they take (:func:`_meta_size`): real trees carry a few bytes
per directory; a hostile one cannot grow memory."""
RECORD_COST = 160
"""Memory of one kept record besides its bytes (two bytes objects and a dict slot)."""
DIRECTORY_COST = 400
"""Memory of one kept directory besides its records (its Member, tuple and key)."""
_APPLIED_PAX = (b"SCHILY.xattr.", b"SCHILY.acl.access", b"SCHILY.acl.default")
MAX_COMPONENT = 255
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_IS_ROOT = os.geteuid() == 0


class HostileArchive(ArchiveError):
    """The archive tried to write where it must not; nothing from it is stored."""


class BaseMismatch(ArchiveError):
    """A delta needs a base file that staging does not hold as its index says (no
    index, another archive, or a file changed since): the delta cannot be applied here,
    and the chain is replayed from its full."""


_DECIMAL = frozenset(b"0123456789")


class ArchiveTooLarge(ArchiveError):
    """The archive unpacks to more than a configured limit allows (a tar bomb, or a host
    that outgrew the limit); nothing from it is stored."""


@dataclass(frozen=True)
class UnpackLimits:
    """How much one archive may unpack to; ``None`` is no limit.

    ``max_size`` bounds the sum of the regular files' sizes (a sparse file counts with its
    apparent size), ``max_entries`` the number of members (directories, links and dropped
    device nodes included). ``source`` names where the limits are set, for messages.
    """

    max_size: int | None = None
    max_entries: int | None = None
    source: str = "server.yaml"
    place: str = "under the staging tree"
    """Where it unpacks, for messages (a client's restore: "in the temporary directory")."""
    min_free: int | None = None
    """Bytes the staging tree's filesystem must keep free (and MIN_FREE_INODES inodes),
    looked at every FREE_CHECK_BYTES of data and FREE_CHECK_MEMBERS members."""
    cancel: threading.Event | None = None
    """Set at the host's deadline: the next member (or data chunk) stops the unpacking."""
    reserved: Callable[[], int] | None = None
    """Bytes another writer on the same file system has still to write, kept free too at
    each look (the download feeding this unpacking: its archive's bytes still to come;
    an archive of a few KiB that unpacked to 200 MiB of zeros, followed by 240 MiB that
    zstd passes over, went past min_free_space to a full disk: helper-167 F1)."""


FREE_CHECK_BYTES = 64 << 20
FREE_CHECK_MEMBERS = 10_000


_SPARSE_SIZE_KEYS = (b"GNU.sparse.realsize", b"GNU.sparse.size")


@dataclass
class UnpackStats:
    members: int = 0
    files: int = 0
    bytes: int = 0
    written: int = 0
    """Files (hard links too) whose content had to be (re)written or linked anew;
    ``written + unchanged == files``."""
    unchanged: int = 0
    removed: int = 0
    """Entries of staging no member named, removed: a directory counts once, whatever it
    held (the sweep removes the tree without reading it)."""
    warnings: BoundedWarnings = field(default_factory=BoundedWarnings)
    """The first 100 warnings; ``warnings.total`` counts them all."""


def safe_parts(name: str) -> tuple[str, ...]:
    """The components of a member name. Raises HostileArchive for anything unsafe."""
    if not name or "\0" in name:
        raise HostileArchive(f"member name {name!r} is not valid")
    if name.startswith("/"):
        raise HostileArchive(f"member {name!r} has an absolute path")
    if len(os.fsencode(name)) > MAX_NAME:
        raise HostileArchive(f"member name of {len(name)} characters is too long")
    parts = tuple(name.rstrip("/").split("/"))
    for part in parts:
        if part in ("", ".", ".."):
            raise HostileArchive(f"member {name!r} has a '{part}' component")
        if len(os.fsencode(part)) > MAX_COMPONENT:
            raise HostileArchive(f"member {name!r} has a component longer than 255 bytes")
    if parts[0] not in TOP_LEVEL or (parts[0] == MANIFEST_NAME and len(parts) > 1):
        raise HostileArchive(f"member {name!r} is outside services/ (not a pullback archive)")
    return parts


def _member_parts(member: Member) -> tuple[str, ...]:
    """The components of ``member``'s name (:func:`safe_parts`); a name ending with '/'
    must be a directory's. Raises HostileArchive."""
    parts = safe_parts(member.name)
    if member.name.endswith("/") and not member.is_dir:
        raise HostileArchive(f"member {member.name!r} ends with '/' but is no directory")
    if parts == ("services",) and not member.is_dir:
        # a symlink there took the drill's walk out of the restored tree (outside attack)
        raise HostileArchive("member 'services' is no directory")
    return parts


def _apparent_size(member: Member) -> int:
    """The bytes ``member`` claims to unpack to: its data, or a sparse file's full size.

    Raises HostileArchive for a size that is negative, past 2**63 - 1 or not a number.
    """
    size = member.size
    realsize = member.pax.get(REALSIZE_KEY)
    if realsize is not None:
        if member.pax.get(DATA_KEY) != deltaops.DELTA:
            raise HostileArchive(f"member {member.name!r} has a PULLBACK.realsize but no delta")
        if not (0 < len(realsize) <= 19 and set(realsize) <= _DECIMAL):
            raise HostileArchive(
                f"member {member.name!r} has a PULLBACK.realsize that is not a number"
            )
        size = int(realsize)
    for key in _SPARSE_SIZE_KEYS:
        value = member.pax.get(key)
        if value is not None:
            # (digits alone: int() took "-1", which the larger of it and the data hid,
            # and the file was then truncated to it: helper-161 F1)
            if not (0 < len(value) <= 19 and set(value) <= _DECIMAL):
                raise HostileArchive(
                    f"member {member.name!r} has a sparse size that is not a number"
                )
            size = max(size, int(value))
    if size < 0:
        raise HostileArchive(f"member {member.name!r} has a negative size")
    if size > MAX_FILE_SIZE:
        raise HostileArchive(f"member {member.name!r} has a size no file can have ({size})")
    return size


RECORD_BYTES = 64
"""What one extended attribute or ACL record takes on disk beside its name and value
(btrfs: an item's header and its directory-item; helper-165 F3: 5,000 one-byte
attributes a file went 91 MiB past min_free_space)."""
DIR_BYTES = 256
"""What a directory made for a member's path takes on disk beside its name (counted
thrice: its inode's back reference and two entries of its parent hold it)."""


def _metadata_bytes(member: Member) -> int:
    """What ``member`` writes beside its data: the names and values of the extended
    attributes and ACLs it applies, RECORD_BYTES each besides, and its link target."""
    applied = (
        len(k) + len(v) + RECORD_BYTES for k, v in member.pax.items() if k.startswith(_APPLIED_PAX)
    )
    return len(member.linkname) + sum(applied)


def _remove(name: str, dir_fd: int) -> None:
    """Remove whatever ``name`` is in ``dir_fd`` (a file, a link, or a whole tree)."""
    try:
        st = os.lstat(name, dir_fd=dir_fd)
    except FileNotFoundError:
        return
    if stat.S_ISDIR(st.st_mode):
        remove_tree(name, dir_fd=dir_fd)
    else:
        os.unlink(name, dir_fd=dir_fd)


@dataclass(frozen=True)
class _Base:
    """The base file a ``base`` or ``delta`` member takes its bytes from."""

    parent: int
    """The descriptor of its directory (closed by the caller when ``own``)."""
    name: str
    row: IndexedFile
    st: os.stat_result
    own: bool
    """It has another name than the member (a renamed file)."""


class Unpacker:
    """Applies the members of one archive to ``staging``; use as a context manager."""

    def __init__(
        self,
        staging: Path,
        limits: UnpackLimits | None = None,
        base: BaseIndex | None = None,
        index: IndexWriter | None = None,
        *,
        announced: str = "",
        lean: bool | None = False,
    ):
        self.staging = staging
        self.lean = lean
        """A lean delta (sidecar format 3): the base files it neither names nor lists in
        ``REMOVED.list`` are kept (:meth:`_keep_base_files`). None: not known (an
        archive restored by hand without its sidecar)."""
        self._removed: set[int] | None = None
        """The keys of the names ``REMOVED.list`` gave (None: not read yet)."""
        self.limits = limits or UnpackLimits()
        self.base = base
        """The index of what staging held before: base and delta members need it."""
        self.index = index
        """Where every file this archive leaves is recorded (the next delta's base)."""
        self.manifest_sha256 = ""
        """The sha256 of the archive's complete manifest: its manifest member's, or, for
        a partial one, the manifest :meth:`finish` rebuilt from the index."""
        self.announced = announced
        """The sha256 of the complete manifest the sidecar names (a partial manifest
        member is refused without it)."""
        self._partial = False
        self._manifest_mtime = 0
        self._implied = _Sum()
        """Their names and the index's digests: what a partial manifest leaves out."""
        self._claimed: set[int] = set()
        """Inodes of shared (hard-linked) staging files a base member kept in place."""
        self._shared: dict[str, tuple[int, int]] = {}
        """Hard-linked base files :meth:`check_base` found untouched: (inode, size)."""
        self._written: set[int] = set()
        """Inodes of staging files this archive wrote into in place: none of them is
        held to its inode and size alone any more (:meth:`_base_row`)."""
        self._checked = 0
        self.stats = UnpackStats()
        self._unpacked_size = 0
        self._metadata_again = 0
        self._made_dirs = 0
        """Directories made for members' paths, counted as members by the looks."""
        """Metadata bytes counted a second time for the free-space looks (btrfs keeps
        its metadata twice): :meth:`_check_free` goes by both counts."""
        self._free_checked_at: tuple[int, int] | None = None
        """(bytes, members) when the free space was last looked at; None before the
        first file it writes (looked at then: a directory already short is refused at once)."""
        # Memory stays flat in the number of files: paths are kept as 128-bit keys, and the
        # files' digests as one order-independent sum compared with the manifest's.
        self._seen: set[int] = set()
        self._links: set[int] = set()
        self._files: set[int] = set()
        self._fifos: set[int] = set()
        self._link_digests: dict[int, str] = {}
        """The digest of each file some hard link points to, hashed once for all its links."""
        self._sum = _Sum()
        self._manifest_sum: _Sum | None = None
        self._last_parent: tuple[str, ...] | None = None
        self._dir_meta: dict[int, tuple[tuple[str, ...], Member]] = {}
        """Each directory's metadata, applied at the end (its files change its mtime);
        a repeated directory replaces its record. Only what is applied is kept."""
        self._dir_meta_bytes = 0
        self._fds: OrderedDict[tuple[str, ...], int] = OrderedDict()
        self._root = -1
        self._chown_warned = False

    def __enter__(self) -> Unpacker:
        self.staging.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(self.staging, 0o700)  # nothing below is for other local users
        self._root = os.open(self.staging, _DIR_FLAGS)
        return self

    def __exit__(self, *exc) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()
        if self._root >= 0:
            os.close(self._root)
            self._root = -1

    # -- directories --------------------------------------------------------------------

    def _dir(self, parts: tuple[str, ...]) -> int:
        """A descriptor of the staging directory ``parts``, created as needed, never a link.

        Walks down from the deepest directory it holds open, one level at a time (no
        recursion: a path may be as deep as the archive's limits allow).
        """
        if not parts:
            return self._root
        fd = self._fds.get(parts)
        if fd is not None:  # (the common case: the directory of the member before)
            self._fds.move_to_end(parts)
            return fd
        depth = len(parts) - 1
        while depth and parts[:depth] not in self._fds:
            depth -= 1
        fd = self._root
        if depth:
            fd = self._fds[parts[:depth]]
            self._fds.move_to_end(parts[:depth])
        for level in range(depth, len(parts)):
            fd = self._open_dir(parts[level], fd, self._made_dir)
            self._fds[parts[: level + 1]] = fd
            if len(self._fds) > 64:
                _, old = self._fds.popitem(last=False)
                os.close(old)
        return fd

    @staticmethod
    def _open_dir(name: str, parent: int, making: Callable[[str], None]) -> int:
        """Open (making it, or replacing a file or link from an older snapshot) the
        directory ``name`` in ``parent``; returns its descriptor. ``making(name)`` is
        called before a directory is made (it may refuse it)."""
        try:
            return os.open(name, _DIR_FLAGS, dir_fd=parent)
        except FileNotFoundError:
            making(name)
            os.mkdir(name, 0o700, dir_fd=parent)
        except (NotADirectoryError, OSError) as exc:
            if not (isinstance(exc, NotADirectoryError) or exc.errno == errno.ELOOP):
                raise
            _remove(name, parent)  # a file or link from an older snapshot
            making(name)
            os.mkdir(name, 0o700, dir_fd=parent)
        return os.open(name, _DIR_FLAGS, dir_fd=parent)

    def _made_dir(self, name: str) -> None:
        """Count a directory about to be made for a member's path for the free-space
        looks (twice, as metadata), and as a member there: a path's parents are made as
        needed, and 9,990 long names made 150,000 directories that nothing counted,
        198 MiB past min_free_space (helper-165 F4). (Not against max_unpacked_size,
        which is the entries' own.) Raises ArchiveTooLarge."""
        self._metadata_again += 2 * (DIR_BYTES + 3 * len(name))
        self._made_dirs += 1
        self._check_free(0)

    def _forget_dir(self, parts: tuple[str, ...]) -> None:
        for key in [k for k in self._fds if k[: len(parts)] == parts]:
            os.close(self._fds.pop(key))

    # -- members ------------------------------------------------------------------------

    def add(self, member: Member, chunks) -> None:
        """Apply one member; ``chunks`` yields its data (regular files only).

        Raises HostileArchive, or ArchiveTooLarge past a limit, before anything of a
        refused member is written.
        """
        if member.name == removed.REMOVED_NAME:  # (no entry of the tree: not counted)
            self._check_limits(member)
            self._removed_list(member, chunks)
            return
        parts = _member_parts(member)
        self.stats.members += 1
        self._check_limits(member)
        if self.limits.cancel is not None:
            chunks = _cancellable(chunks, self.limits.cancel)
        if parts == (MANIFEST_NAME,):
            self._manifest(parts, member, chunks)
            return
        key = _key(parts)
        if key in self._seen and not member.is_dir:
            raise HostileArchive(f"member {member.name!r} appears twice")
        if parts[:-1] != self._last_parent:  # members come directory by directory
            self._check_parents(parts, member)
        self._seen.add(key)
        if member.is_dir:
            if key in self._links:
                raise HostileArchive(
                    f"member {member.name!r} would be written through the symlink {member.name!r}"
                )
            if key in self._files or key in self._fifos:
                raise HostileArchive(f"member {member.name!r} is a file and a directory")
            self._dir(parts)
            self._keep_dir_meta(key, parts, member)
        elif member.is_file:
            self._regular(parts, member, chunks)
            self._files.add(key)
            self.stats.files += 1
            self.stats.bytes += _apparent_size(member)
        elif member.kind == FIFOTYPE:
            self._fifo(parts, member)
            self._fifos.add(key)
        elif member.is_symlink:
            self._links.add(key)
            self._last_parent = None  # a later member below it must be checked again
            self._symlink(parts, member)
        elif member.is_hardlink:
            self._hardlink(parts, member)
            self._files.add(key)  # a name of the manifest too
        else:
            self._device_node(parts, key, member)

    def _device_node(self, parts: tuple[str, ...], key: int, member: Member) -> None:
        """A device node: dropped with a warning; its parents, already seen, are made
        the directories its name says (a base file there must not outlive the sweep)."""
        self._dir(parts[:-1])
        self._seen.discard(key)
        self.stats.warnings.append(f"{escaped(member.name)}: device node dropped")

    def _removed_list(self, member: Member, chunks) -> None:
        """A lean delta's ``REMOVED.list``: the base files its tree no longer has as
        files, each checked (a name below ``services/``, a file of the base) and kept as
        a key. Raises HostileArchive (not a lean delta, a second list, after the
        manifest, not a plain member, a broken list), BaseMismatch (a lean delta, or an
        archive of unknown kind, without a base; a name the base does not have)."""
        name = removed.REMOVED_NAME
        base = self._removed_list_base(member)
        reader = removed.RemovedReader(base.count())
        if member.size > reader.max_size():
            raise HostileArchive(f"{name} is larger than the base's names could make it")
        self._removed = keys = set()
        if self.limits.cancel is not None:
            chunks = _cancellable(chunks, self.limits.cancel)
        try:
            for listed in reader.feed(chunks):
                parts = safe_parts(listed)
                if parts[0] != "services":
                    raise HostileArchive(f"{name} names {listed!r}, outside services/")
                if not base.has(listed):
                    raise BaseMismatch(f"{escaped(listed)} is removed, but not a file of the base")
                keys.add(_key(parts))
        except removed.RemovedListError as exc:
            raise HostileArchive(str(exc)) from None

    def _removed_list_base(self, member: Member) -> BaseIndex:
        """The base ``REMOVED.list`` names files of, once it may come here. Raises
        BaseMismatch (no base), HostileArchive (not a lean delta, a second list, after
        the manifest, not a plain member)."""
        name = removed.REMOVED_NAME
        if self.lean is None and self.base is None:  # (a delta restored alone, unknown)
            raise BaseMismatch(f"{name}: a lean delta needs a base, and staging has none")
        if not self.lean:
            raise HostileArchive(f"{name} in an archive that is not a lean delta")
        if self.base is None:
            raise BaseMismatch(f"{name}: a lean delta needs a base, and staging has none")
        if self._removed is not None or self._manifest_sum is not None:
            raise HostileArchive(f"{name} comes twice, or after {MANIFEST_NAME}")
        if not member.is_file or any(k.startswith(b"PULLBACK.") for k in member.pax):
            raise HostileArchive(f"{name} is not a plain file member")
        return self.base

    def _keep_base_files(self) -> int:
        """A lean delta, at its end: keep every file of the base index that the archive
        neither named nor listed as removed, when staging still holds it as the index
        says (a plain file of one link, ``ino``, ``size``, ``mtime_ns`` and ``ctime_ns``
        equal) below directories this archive named. Each is counted as a ``same``
        member is (against ``max_entries`` too), and recorded in the new index with the
        row's digest (the rebuilt manifest's proof covers it). Returns how many were kept.
        Raises HostileArchive without ``REMOVED.list``, BaseMismatch for a file staging
        does not hold so, ArchiveTooLarge past a limit."""
        if self._removed is None:
            raise HostileArchive(f"a lean delta without {removed.REMOVED_NAME}")
        assert self.base is not None and self.index is not None
        root, gone = os.fsencode(self.staging), self._removed
        named_dirs: dict[str, bool] = {}
        kept = 0
        for number, (name, row) in enumerate(self.base.rows(), 1):
            if number % 4096 == 0:
                _check_cancel(self.limits.cancel)
            parts = tuple(name.split("/"))  # (our own index: names safe_parts passed)
            key = _key(parts)
            if key in self._seen or key in gone:
                continue
            directory = name.rpartition("/")[0]
            if directory not in named_dirs:
                named_dirs[directory] = self._named_dirs(parts[:-1])
            if not named_dirs[directory]:
                raise BaseMismatch(
                    f"{escaped(name)} is left out, but its directory is not in the archive"
                )
            try:
                st = os.lstat(root + b"/" + name.encode("utf-8", "surrogateescape"))
            except FileNotFoundError:
                raise BaseMismatch(f"{escaped(name)} is missing from staging") from None
            if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1 or not row.matches(st):
                raise BaseMismatch(f"{escaped(name)} changed in staging since its index")
            kept += 1
            most = self.limits.max_entries
            if most is not None and self.stats.members + kept > most:
                raise ArchiveTooLarge(
                    f"it holds more than {most:,} entries, the files it keeps from the "
                    f"base included (max_entries in {self.limits.source})"
                )
            self._seen.add(key)
            self.index.add(name, row.sha256, kept=row)  # (its stat: the row's, checked)
            line = len(format_line(name, row.sha256))
            self._count_size(row.size + line)
            self._check_free(line)
        self.stats.files += kept
        self.stats.unchanged += kept
        return kept

    def _named_dirs(self, parts: tuple[str, ...]) -> bool:
        """Whether every directory of ``parts`` (and so the path to it) is one this
        archive made or named as a directory: no link, file or FIFO of it on the way."""
        for i in range(1, len(parts) + 1):
            key = _key(parts[:i])
            if key not in self._seen or key in self._links or key in self._files:
                return False
            if key in self._fifos:
                return False
        return True

    def _manifest(self, parts, member: Member, chunks) -> None:
        """The manifest member: summed as it passes to staging's file."""
        if DATA_KEY in member.pax:
            raise HostileArchive("the manifest cannot come from the base")
        self._partial = self._is_partial(member)
        self._manifest_mtime = member.mtime_ns
        summed = _ManifestReader(NOTICE_LINE[:-1] if self._partial else None)
        self._write_file(parts, member, summed.feed(chunks), count=False)
        try:
            self._manifest_sum = summed.finish()
        except ValueError as exc:
            raise ArchiveError(str(exc)) from None
        self.manifest_sha256 = summed.sha256.hexdigest()

    def _check_parents(self, parts: tuple[str, ...], member: Member) -> None:
        """Refuse a member below a symlink or a file of this archive; note its parents
        as seen (the sweep keeps them)."""
        for i in range(1, len(parts)):
            parent = _key(parts[:i])
            if parent in self._links:
                raise HostileArchive(
                    f"member {member.name!r} would be written through the "
                    f"symlink {'/'.join(parts[:i])!r}"
                )
            if parent in self._files or parent in self._fifos:
                raise HostileArchive(
                    f"member {member.name!r} is below the file {'/'.join(parts[:i])!r}"
                )
            self._seen.add(parent)
        self._last_parent = parts[:-1]

    def _is_partial(self, member: Member) -> bool:
        """Whether the manifest member lists only the files whose bytes travel. Raises
        HostileArchive for an unknown form, or a partial one where nothing can complete
        it (no base, no index, no sha256 of the complete manifest to prove it by)."""
        form = member.pax.get(MANIFEST_KEY)
        if form is None:
            return False
        if form != PARTIAL:
            raise HostileArchive(f"{MANIFEST_NAME} has an unknown PULLBACK.manifest")
        if self.base is None or self.index is None or not self.announced:
            raise HostileArchive(
                f"a partial {MANIFEST_NAME} needs a base, and the sha256 of the complete one"
            )
        return True

    def _regular(self, parts, member: Member, chunks) -> None:
        """A regular file: its bytes from the member, the base, or a PBD1 delta."""
        source = member.pax.get(DATA_KEY, deltaops.FULL)
        if source in (deltaops.BASE, deltaops.SAME):
            self._base_file(parts, member, same=source == deltaops.SAME)
        elif source == deltaops.DELTA:
            self._delta_file(parts, member, chunks)
        elif source != deltaops.FULL:
            raise HostileArchive(f"member {member.name!r} has an unknown PULLBACK.data")
        elif sparse.is_sparse(member.pax):
            self._write_sparse(parts, member, chunks)
        else:
            self._write_file(parts, member, chunks)

    def _check_free(self, upcoming: int, force: bool = False) -> None:
        """Refuse the archive when writing the next ``upcoming`` bytes would leave less
        than ``min_free`` bytes (or MIN_FREE_INODES inodes) free: one host's archive must
        not starve the others. Looked at before the first file and any member of
        FREE_CHECK_BYTES or more, and every FREE_CHECK_BYTES of data or
        FREE_CHECK_MEMBERS members in between, so it errs by less than FREE_CHECK_BYTES
        (the members' metadata, :func:`_metadata_bytes`, counts twice there: btrfs
        keeps it twice). Raises ArchiveTooLarge."""
        limits, members = self.limits, self.stats.members + self._made_dirs
        if limits.min_free is None:
            return
        at_bytes, at_members = self._free_checked_at or (0, 0)
        counted = self._unpacked_size + self._metadata_again
        if (
            self._free_checked_at is not None
            and not force
            and upcoming < FREE_CHECK_BYTES
            and counted - at_bytes < FREE_CHECK_BYTES
            and members - at_members < FREE_CHECK_MEMBERS
        ):
            return
        self._free_checked_at = (counted, members)
        left = room(self._root)
        reserved = limits.reserved() if limits.reserved is not None else 0
        if left.free - upcoming - reserved < limits.min_free or left.few_inodes:
            coming = (
                f" with {human_size(reserved)} of the archive still to come" if reserved else ""
            )
            raise ArchiveTooLarge(
                f"unpacking it would leave less than {human_size(limits.min_free)} or "
                f"{MIN_FREE_INODES:,} inodes free {limits.place} ({human_size(left.free)}"
                f"{coming}, {left.inodes_words()} left; min_free_space in {limits.source})"
            )

    def _holdable(self, member: Member) -> dict[bytes, bytes]:
        """The member's extended-attribute and ACL records that one Linux inode can
        hold: a value over 64 KiB (XATTR_SIZE_MAX), and the names past the first 64 KiB
        (XATTR_LIST_MAX), dropped with a warning. Every kind of entry is bounded so: a
        hostile member's 30,000 records each cost a setxattr and a warning, on every
        pull (helper-160 F5)."""
        kept: dict[bytes, bytes] = {}
        names = 0  # bytes of attribute names, as Linux counts them (XATTR_LIST_MAX)
        for name, value in member.pax.items():
            if not name.startswith(_APPLIED_PAX):
                continue
            if len(value) > XATTR_SIZE_MAX:
                self.stats.warnings.append(
                    f"{escaped(member.name)}: {escaped(os.fsdecode(name))} of {len(value)} bytes "
                    "dropped (Linux holds at most 64 KiB)"
                )
                continue
            names += len(name) - len(b"SCHILY.xattr.") + 1
            if names > XATTR_LIST_MAX:
                self.stats.warnings.append(
                    f"{escaped(member.name)}: extended attributes past the first 64 KiB of "
                    "names dropped (Linux holds no more on one inode)"
                )
                break
            kept[name] = value
        return kept

    def _keep_dir_meta(self, key: int, parts: tuple[str, ...], member: Member) -> None:
        """Keep a directory's metadata for the end: its xattrs and ACLs only (no other
        PAX record), values Linux could not hold dropped with a warning, and all
        directories' together at most MAX_DIR_META bytes. Raises ArchiveTooLarge."""
        kept = self._holdable(member)
        previous = self._dir_meta.get(key)
        if previous is not None:
            self._dir_meta_bytes -= _meta_size(previous[1])
        compact = Member(
            member.name,
            member.kind,
            mode=member.mode,
            uid=member.uid,
            gid=member.gid,
            mtime_ns=member.mtime_ns,
            pax=kept,
        )
        self._dir_meta_bytes += _meta_size(compact)
        if self._dir_meta_bytes > MAX_DIR_META:
            raise ArchiveTooLarge(
                f"its directories carry more than {human_size(MAX_DIR_META)} of extended "
                "attributes and ACLs"
            )
        self._dir_meta[key] = (parts, compact)

    def _check_limits(self, member: Member) -> None:
        """Count ``member`` against the limits; refuse the old GNU sparse forms and an
        attribute name no file system holds (a NUL byte in it, helper-160 F1).

        Raises ArchiveTooLarge past a limit, HostileArchive for an old sparse form or
        such a name.
        """
        limits = self.limits
        if limits.max_entries is not None and self.stats.members > limits.max_entries:
            raise ArchiveTooLarge(
                f"it holds more than {limits.max_entries:,} entries "
                f"(max_entries in {limits.source})"
            )
        _check_cancel(limits.cancel)
        size = _apparent_size(member)
        # what it writes: its data; a delta its spool (the stream) and its file, whose
        # allocation is checked once the stream's records are known (_delta_file)
        is_delta = member.pax.get(DATA_KEY) == deltaops.DELTA
        # and beside its data, its extended attributes, ACLs and link target: a client's
        # empty files of 1 MiB of attributes each filled a btrfs staging with no look
        # in between, since none of it counted (helper-164 F1, F4)
        metadata = 0 if member.is_dir else _metadata_bytes(member)  # (a directory's: at the end)
        self._count_size((member.size + size if is_delta else size) + metadata)
        self._metadata_again += metadata
        self._check_free(member.size + 2 * metadata)
        if any(b"\0" in k for k in member.pax if k.startswith(_APPLIED_PAX)):
            # (no Linux name holds one; os.setxattr raised ValueError: "internal error")
            raise HostileArchive(
                f"member {member.name!r} has an extended attribute whose name holds a NUL byte"
            )
        if any(k.startswith(b"GNU.sparse.") for k in member.pax) and not sparse.is_sparse(
            member.pax
        ):
            raise HostileArchive(
                f"member {member.name!r} is a sparse file in an old GNU format, which "
                "pullback never writes (only the PAX 1.0 sparse format is read)"
            )

    def _count_size(self, size: int) -> None:
        """Count ``size`` bytes of files against ``max_unpacked_size``. Raises
        ArchiveTooLarge past it."""
        limits = self.limits
        self._unpacked_size += size
        if limits.max_size is not None and self._unpacked_size > limits.max_size:
            raise ArchiveTooLarge(
                f"it unpacks to more than {human_size(limits.max_size)} "
                f"(max_unpacked_size in {limits.source})"
            )

    @staticmethod
    def _mode(member: Member) -> int:
        """The mode bits to set, set-user/group-id included (staging is root's alone)."""
        return member.mode & 0o7777

    def _write_file(self, parts, member: Member, chunks, count: bool = True) -> None:
        """Write (or leave alone) one file; with ``count`` its digest joins the sum."""
        parent = self._dir(parts[:-1])
        name = parts[-1]
        digest = sha256state.hasher(member.size >= CHUNKED_FROM)
        fd = -1
        try:
            st = self._plain_file(parent, name, parts)
            if st is None:
                flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
                fd = os.open(name, flags, 0o600, dir_fd=parent)
                changed = _write_new(fd, chunks, digest)
            else:
                fd = os.open(name, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent)
                self._written.add(st.st_ino)
                changed = _rewrite(fd, chunks, digest, st.st_size)
            if count:
                self.stats.written += changed
                self.stats.unchanged += not changed
            self._apply_meta(fd, member, self._mode(member), force=changed)
        finally:
            if fd >= 0:
                os.close(fd)
            if count:
                self._summed(member.name, digest.hexdigest(), sha256state.state_of(digest))

    def _summed(self, name: str, digest: str, state: bytes | None = None) -> None:
        """``name`` is a file of this archive with ``digest``: into the sum and the index
        (with its hash ``state``, when it has one: :mod:`.sha256state`)."""
        self._sum.add(name, digest)
        if self.index is not None:
            self.index.add(name, digest, state=state)

    def _plain_file(self, parent: int, name: str, parts) -> os.stat_result | None:
        """The stat of ``name`` when it is a plain file of staging to rewrite in place;
        anything else there (a directory, a link) is removed and None returned. A file
        shared by hard links is rewritten in place only by a full archive, and only at
        the first of its names the archive writes (an unchanged hard-linked file then
        keeps its inode, and restic does not read it again): every other name of it in
        staging gets its own member after (a link to it kept, anything else written
        apart) or is swept at the end. In a delta, another name may be a base file that
        must keep its bytes, so a shared file there is written afresh."""
        try:
            st = os.lstat(name, dir_fd=parent)
        except FileNotFoundError:
            return None
        if stat.S_ISREG(st.st_mode) and (
            st.st_nlink == 1 or (self.base is None and st.st_ino not in self._written)
        ):
            return st
        _remove(name, parent)
        self._forget_dir((*parts,))
        return None

    def _apply_meta(self, fd: int, member: Member, mode: int, force: bool) -> None:
        st = os.fstat(fd)
        if _IS_ROOT and (st.st_uid, st.st_gid) != (member.uid, member.gid):
            os.fchown(fd, member.uid, member.gid)
            st = os.fstat(fd)
        elif (
            not _IS_ROOT
            and (st.st_uid, st.st_gid) != (member.uid, member.gid)
            and not self._chown_warned
        ):
            self._chown_warned = True
            self.stats.warnings.append("not running as root: file owners are not kept")
        if stat.S_IMODE(st.st_mode) != mode:
            os.fchmod(fd, mode)
        self._apply_xattrs(fd, member)
        if force or st.st_mtime_ns != member.mtime_ns:
            os.utime(fd, ns=(member.mtime_ns, member.mtime_ns))

    def _apply_xattrs(self, where: int | str, member: Member) -> None:
        """Give the entry at ``where`` (an open file's descriptor, or a path whose last
        name is not followed: a symlink's) exactly the member's extended attributes and
        ACLs."""
        follow = isinstance(where, int)  # (a descriptor: nothing to follow)
        wanted: dict[str, bytes] = {}
        for key, value in self._holdable(member).items():
            if key.startswith(b"SCHILY.xattr."):
                wanted[os.fsdecode(key[len(b"SCHILY.xattr.") :])] = value
            elif key in (b"SCHILY.acl.access", b"SCHILY.acl.default"):
                xattr = acl.ACCESS_XATTR if key.endswith(b"access") else acl.DEFAULT_XATTR
                try:
                    wanted[xattr] = acl.from_text(value.decode("utf-8", "replace"))
                except (ValueError, KeyError):
                    self.stats.warnings.append(f"{escaped(member.name)}: unreadable ACL dropped")
        try:
            current = {
                n: os.getxattr(where, n, follow_symlinks=follow)
                for n in os.listxattr(where, follow_symlinks=follow)
            }
        except OSError:
            current = {}
        if current == wanted:
            return
        for name in current:
            if name not in wanted:
                with contextlib.suppress(OSError):
                    os.removexattr(where, name, follow_symlinks=follow)
        for name, value in wanted.items():
            if current.get(name) != value:
                try:
                    os.setxattr(where, name, value, follow_symlinks=follow)
                except OSError as exc:
                    self.stats.warnings.append(
                        f"{escaped(member.name)}: extended attribute {escaped(name)} not kept: "
                        f"{exc.strerror}"
                    )

    def _write_sparse(self, parts, member: Member, chunks) -> None:
        """A sparse file: its regions where the map puts them, holes left as holes; its
        digest (holes read as zeros) joins the sum. Staging's file is kept, and only its
        bytes that differ written, when it has the same size and exactly the member's
        data regions (a full archive's unchanged disk image: its inode stays, so the
        backend does not read it again); otherwise it is written afresh, since writing
        into a hole fills it. Raises HostileArchive for a bad map."""
        parent = self._dir(parts[:-1])
        name = parts[-1]
        _apparent_size(member)  # (its numbers checked)
        # the file's size is its realsize, never the member's data when that is larger
        # (the map and the data of a file whose only hole is a short tail: the file
        # came out longer, and the whole archive was refused)
        realsize = int(member.pax.get(sparse.REALSIZE) or 0)
        try:
            data = sparse.SparseData(chunks, member.size, realsize)
            fd = self._same_regions(parent, name, data.regions, realsize)
            fresh = fd is None
            if fd is None:
                _remove(name, parent)
                self._forget_dir((*parts,))
                flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
                fd = os.open(name, flags, 0o600, dir_fd=parent)
        except sparse.SparseMapError as exc:
            raise HostileArchive(f"member {member.name!r}: {exc}") from None
        digest = hashlib.sha256()
        changed = fresh
        try:
            position = 0
            for offset, piece in data.pieces():
                sparse.hash_zeros(digest, offset - position, self.limits.cancel)
                digest.update(piece)
                if fresh or os.pread(fd, len(piece), offset) != piece:
                    pwrite_all(fd, piece, offset)  # (kept: within a data region of the file)
                    changed = True
                position = offset + len(piece)
            sparse.hash_zeros(digest, realsize - position, self.limits.cancel)
            if fresh:
                os.ftruncate(fd, realsize)
            self.stats.written += changed
            self.stats.unchanged += not changed
            self._apply_meta(fd, member, self._mode(member), force=changed)
        except sparse.SparseMapError as exc:
            raise HostileArchive(f"member {member.name!r}: {exc}") from None
        finally:
            os.close(fd)
        self._summed(member.name, digest.hexdigest())

    def _same_regions(
        self, parent: int, name: str, regions: list[sparse.Region], size: int
    ) -> int | None:
        """An fd (read and write) of staging's ``name`` when it is a plain file of one
        link, ``size`` bytes long, whose data regions are exactly ``regions`` (empty ones
        aside); else None (and nothing opened)."""
        try:
            st = os.lstat(name, dir_fd=parent)
        except FileNotFoundError:
            return None
        if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1 or st.st_size != size:
            return None
        fd = os.open(name, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent)
        try:
            held = sparse.data_regions(fd, size)
        except OSError:
            held = None
        wanted = [r for r in regions if r.length]
        if held is None or [r for r in held if r.length] != wanted:
            os.close(fd)
            return None
        self._written.add(st.st_ino)
        return fd

    def _base_row(self, parts, member: Member) -> _Base:
        """The base file a ``base`` or ``delta`` member takes its bytes from: the file of
        its own name, or of the name ``PULLBACK.base`` gives (a renamed file). Raises
        BaseMismatch unless the index has the file and staging still holds it untouched
        (a hard-linked one :meth:`check_base` found untouched before this archive changed
        anything: only its inode and size then, as another of its names may have been
        changed or removed since, unless this archive wrote into it or at its name);
        HostileArchive for a base name outside ``services/``."""
        name, base_parts, own = self._base_name(parts, member)
        assert self.base is not None
        row = self.base.lookup(name)
        if row is None:
            raise BaseMismatch(f"{escaped(name)} is not a file of the base")
        parent = self._existing_dir(base_parts[:-1]) if own else self._dir(parts[:-1])
        if parent < 0:
            raise BaseMismatch(f"{escaped(name)} is missing from staging")
        try:
            st = os.lstat(base_parts[-1], dir_fd=parent)
            shared = self._shared.get(name)
            # held to inode and size only while this archive wrote neither into that
            # inode nor at that name (a file made there may reuse the inode's number)
            rewritten = own and _key(base_parts) in self._seen
            if shared is not None and st.st_ino not in self._written and not rewritten:
                untouched = (st.st_ino, st.st_size) == shared
            else:
                untouched = row.matches(st)
            if not stat.S_ISREG(st.st_mode) or not untouched:
                raise BaseMismatch(f"{escaped(name)} changed in staging since its index")
        except BaseException as exc:
            if own:
                os.close(parent)
            if isinstance(exc, FileNotFoundError):
                raise BaseMismatch(f"{escaped(name)} is missing from staging") from None
            raise
        return _Base(parent, base_parts[-1], row, st, own)

    def _base_name(self, parts, member: Member) -> tuple[str, tuple[str, ...], bool]:
        """The name, components and whether it is another name than the member's, of
        the base file a member takes its bytes from. Raises BaseMismatch without a base
        index, HostileArchive for a name outside ``services/``."""
        if self.base is None:
            raise BaseMismatch(f"{escaped(member.name)} needs a base, and staging has none")
        raw = member.pax.get(BASE_KEY)
        if raw is None or raw.decode("utf-8", "surrogateescape") == member.name:
            return member.name, parts, False
        name = raw.decode("utf-8", "surrogateescape")
        base_parts = safe_parts(name)
        if base_parts[0] != "services":
            raise HostileArchive(f"member {member.name!r} takes its bytes from {name!r}")
        return name, base_parts, True

    def check_base(self, member: Member) -> None:
        """Before anything of a delta is applied: check the base file ``member`` takes
        its bytes from, if any, against the index, and remember a hard-linked one (its
        other names may change or go while the archive is applied, which changes its
        ctime). Call it for every member first, then :meth:`add` each (needed only when
        the base has hard-linked files: ``BaseIndex.linked``). Raises
        BaseMismatch, HostileArchive, ArchiveTooLarge (past ``max_entries``), ArchiveError
        (at the deadline)."""
        if member.name == removed.REMOVED_NAME:
            return  # (no entry of the tree: :meth:`add` reads it)
        self._checked += 1
        limits = self.limits
        if limits.max_entries is not None and self._checked > limits.max_entries:
            raise ArchiveTooLarge(
                f"it holds more than {limits.max_entries:,} entries "
                f"(max_entries in {limits.source})"
            )
        if not member.is_file or member.pax.get(DATA_KEY, deltaops.FULL) == deltaops.FULL:
            return
        if self._checked % 1000 == 0:
            _check_cancel(limits.cancel)
        parts = safe_parts(member.name)
        if parts == (MANIFEST_NAME,):
            raise HostileArchive("the manifest cannot come from the base")
        name, base_parts, _ = self._base_name(parts, member)
        assert self.base is not None
        row = self.base.lookup(name)
        parent = self._existing_dir(base_parts[:-1])
        if row is None or parent < 0:
            raise BaseMismatch(f"{escaped(name)} is not a file of the base in staging")
        try:
            st = os.lstat(base_parts[-1], dir_fd=parent)
        except FileNotFoundError:
            raise BaseMismatch(f"{escaped(name)} is missing from staging") from None
        finally:
            os.close(parent)
        if not stat.S_ISREG(st.st_mode) or not row.matches(st):
            raise BaseMismatch(f"{escaped(name)} changed in staging since its index")
        if st.st_nlink > 1:
            self._shared[name] = (st.st_ino, st.st_size)

    def _existing_dir(self, parts: tuple[str, ...]) -> int:
        """A new descriptor of the staging directory ``parts`` if it exists as one (no
        component a link; nothing created or replaced), else -1."""
        fd = os.dup(self._root)
        for part in parts:
            try:
                child = os.open(part, _DIR_FLAGS, dir_fd=fd)
            except OSError:
                os.close(fd)
                return -1
            os.close(fd)
            fd = child
        return fd

    def _base_file(self, parts, member: Member, same: bool = False) -> None:
        """A file whose bytes are the base's: kept in place (a shared inode already kept
        for another name is copied apart), or copied from the base's other name (a
        renamed file); its metadata brought to the header's, or (``same``: a ``same``
        member, whose header carries none) left as the base's, which the file untouched
        since the index still has. Raises BaseMismatch for a ``same`` member that
        staging cannot keep as it is (another name, a shared inode to copy apart)."""
        if same and BASE_KEY in member.pax:
            raise HostileArchive(f"member {member.name!r} is 'same' under another name")
        base = self._base_row(parts, member)
        row, st = base.row, base.st
        self._count_size(row.size)
        if base.own:
            try:
                self._copy_from(base, parts)
            finally:
                os.close(base.parent)
        elif st.st_nlink > 1:
            if st.st_ino in self._claimed:
                if same:  # (a link the client broke changed its file's ctime: never same)
                    raise BaseMismatch(f"{escaped(member.name)} shares its inode in staging")
                self._copy_apart(base.parent, base.name)
            self._claimed.add(st.st_ino)
        if st.st_nlink > 1 or base.own:
            self._link_digests[_key(parts)] = row.sha256
        if not same:
            parent = self._dir(parts[:-1])
            fd = os.open(parts[-1], os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent)
            try:
                self._apply_meta(fd, member, self._mode(member), force=base.own)
            finally:
                os.close(fd)
        if base.own:
            self.stats.written += 1
        else:
            self.stats.unchanged += 1
        self._summed(member.name, row.sha256)
        self._implied.add(member.name, row.sha256)
        # its line of the complete manifest, which the server writes (a partial one)
        line = len(format_line(member.name, row.sha256))
        self._count_size(line)
        self._check_free(line)

    def _copy_from(self, base: _Base, parts) -> None:
        """Copy the base file (of another name) to ``parts``, replacing what is there."""
        parent = self._dir(parts[:-1])
        self._copy_file(base.parent, base.name, parent, parts[-1])
        self._forget_dir((*parts,))

    def _copy_apart(self, parent: int, name: str) -> None:
        """Give ``name`` an inode of its own with the same bytes (a hard link broken)."""
        self._copy_file(parent, name, parent, name)

    def _copy_file(self, source_dir: int, source_name: str, parent: int, name: str) -> None:
        """Copy a file of staging (its bytes, its holes kept) to ``name``, through a new
        file renamed over whatever is there. Raises ArchiveTooLarge when the copy would
        leave less than ``min_free``."""
        temporary = f".pullback-copy.{os.getpid()}.{threading.get_ident()}"
        _remove(temporary, parent)
        flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC
        source = os.open(source_name, flags, dir_fd=source_dir)
        try:
            size = os.fstat(source).st_size
            regions = sparse.data_regions(source, size) or [sparse.Region(0, size)]
            self._check_free(sum(r.length for r in regions), force=True)
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
            target = os.open(temporary, flags, 0o600, dir_fd=parent)
            try:
                _copy_regions(source, target, regions, size, self.limits.cancel)
            finally:
                os.close(target)
        finally:
            os.close(source)
        if source_name != name or source_dir != parent:
            _remove(name, parent)  # a directory there: rename cannot replace it
        os.rename(temporary, name, src_dir_fd=parent, dst_dir_fd=parent)

    def _delta_file(self, parts, member: Member, chunks) -> None:
        """A file made of its base and a PBD1 stream (spooled first: it is at most the
        member's size). When every copy keeps its offset (appends, blocks rewritten in
        place) only the literal bytes are written into the base file; else the file is
        made anew beside it, and renamed over it. Hashed either way. Checked against
        ``min_free`` by the blocks its records write (holes none: a sparse image of 8 GiB
        holding 1 MiB is not its apparent size; a byte every 4 KiB counts 4 KiB). Raises
        BaseMismatch, DeltaError (an ArchiveError) for a stream that breaks a rule."""
        base = self._base_row(parts, member)
        realsize = _apparent_size(member)
        try:
            with tempfile.SpooledTemporaryFile(
                max_size=SPOOL_IN_MEMORY, mode="w+b", dir=os.fspath(self.staging.parent)
            ) as spool:
                for chunk in chunks:
                    spool.write(chunk)
                spool.seek(0)
                cancel = self.limits.cancel
                found = deltaops.survey(
                    spool, base.st.st_size, realsize, lambda: _check_cancel(cancel)
                )
                if not base.own and base.st.st_nlink == 1 and found.in_place:
                    self._check_free(found.in_place_bytes, force=True)
                    digest = self._patch(parts, member, spool, base, realsize)
                else:
                    self._check_free(found.new_bytes, force=True)
                    digest = self._rebuild(parts, member, spool, base, realsize)
        finally:
            if base.own:
                os.close(base.parent)
        self.stats.written += 1
        self._summed(member.name, digest.hexdigest(), sha256state.state_of(digest))

    def _patch(self, parts, member: Member, spool, base: _Base, realsize: int):
        """Write a delta's literal bytes into its base file, truncate it to its size,
        hash it; returns the hash. A file that only grew (nothing written before the
        base's end) is hashed by its new bytes, from the base's saved hash state when the
        index has one that hashed the base's size to its row's digest (*Hash states of
        grown files* in docs/architecture.md); any other is read whole."""
        parent = self._dir(parts[:-1])
        fd = os.open(parts[-1], os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent)
        base_size = base.st.st_size
        first = [realsize]  # the lowest offset this delta writes at (or makes a hole)

        def write_at(data: bytes, offset: int) -> None:
            first[0] = min(first[0], offset)
            pwrite_all(fd, data, offset)

        def hole_at(offset: int, length: int) -> None:
            first[0] = min(first[0], offset)
            make_hole(fd, offset, length)

        try:
            self._written.add(os.fstat(fd).st_ino)
            deltaops.apply_in_place(
                spool,
                write_at,
                base_size,
                realsize,
                lambda: _check_cancel(self.limits.cancel),
                hole_at=hole_at,
            )
            os.ftruncate(fd, realsize)
            grown = realsize >= base_size and first[0] >= base_size
            assert self.base is not None
            resumed = (
                sha256state.resume(self.base.state(member.name), base_size, base.row.sha256)
                if grown
                else None
            )
            if resumed is not None:
                digest = _hash_fd(fd, self.limits.cancel, resumed, base_size)
            else:
                whole = sha256state.hasher(realsize >= CHUNKED_FROM)
                digest = _hash_fd(fd, self.limits.cancel, whole)
            self._apply_meta(fd, member, self._mode(member), force=True)
        finally:
            os.close(fd)
        return digest

    def _rebuild(self, parts, member: Member, spool, base: _Base, realsize: int):
        """Make a delta's file anew from copies of its base and literal bytes, hashed as
        written, and rename it over whatever has its name; returns the hash."""
        parent = self._dir(parts[:-1])
        name = parts[-1]
        base_size = base.st.st_size
        temporary = f".pullback-delta.{os.getpid()}.{threading.get_ident()}"
        _remove(temporary, parent)
        flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        base_fd = os.open(base.name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=base.parent)
        digest = sha256state.hasher(realsize >= CHUNKED_FROM)
        try:
            fd = os.open(temporary, flags, 0o600, dir_fd=parent)
            try:
                with (
                    os.fdopen(os.dup(base_fd), "rb") as base_file,
                    os.fdopen(os.dup(fd), "wb") as out,
                ):
                    deltaops.apply(
                        spool,
                        base_file,
                        base_size,
                        _HashingWriter(out, digest, self.limits.cancel),
                        realsize,
                        lambda: _check_cancel(self.limits.cancel),
                    )
                os.ftruncate(fd, realsize)  # a trailing hole
                self._apply_meta(fd, member, self._mode(member), force=True)
            finally:
                os.close(fd)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temporary, dir_fd=parent)
            raise
        finally:
            os.close(base_fd)
        _remove(name, parent)
        self._forget_dir((*parts,))
        os.rename(temporary, name, src_dir_fd=parent, dst_dir_fd=parent)
        return digest

    def _fifo(self, parts, member: Member) -> None:
        """A FIFO, made again unless the same one is there."""
        parent = self._dir(parts[:-1])
        name = parts[-1]
        if self._kept(
            parts, parent, lambda st: stat.S_ISFIFO(st.st_mode) and self._same_meta(st, member)
        ):
            return
        os.mkfifo(name, 0o600, dir_fd=parent)
        fd = os.open(
            name, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent
        )
        try:
            self._apply_meta(fd, member, self._mode(member), force=True)
        finally:
            os.close(fd)

    def _kept(
        self, parts, parent: int, same: Callable[[os.stat_result], bool], file: bool = False
    ) -> bool:
        """True when the entry at ``parts`` already is what the member says (a ``file``,
        a hard link, counted as unchanged: the counts are of files); else whatever is
        there is removed to make room and False returned."""
        try:
            st = os.lstat(parts[-1], dir_fd=parent)
        except FileNotFoundError:
            return False
        if same(st):
            self.stats.unchanged += file
            return True
        _remove(parts[-1], parent)
        self._forget_dir(parts)
        return False

    @staticmethod
    def _same_meta(st: os.stat_result, member: Member) -> bool:
        return (
            stat.S_IMODE(st.st_mode) == member.mode & 0o7777
            and (not _IS_ROOT or (st.st_uid, st.st_gid) == (member.uid, member.gid))
            and st.st_mtime_ns == member.mtime_ns
        )

    def _symlink(self, parts, member: Member) -> None:
        parent = self._dir(parts[:-1])
        name = parts[-1]

        def same(st: os.stat_result) -> bool:
            return (
                stat.S_ISLNK(st.st_mode)
                and os.readlink(name, dir_fd=parent) == member.linkname
                and (not _IS_ROOT or (st.st_uid, st.st_gid) == (member.uid, member.gid))
                and st.st_mtime_ns == member.mtime_ns
            )

        # its own extended attributes (security.selinux, trusted.*): by a path that the
        # kernel resolves from ``parent``, the link itself not followed
        at = anchored_path(parent, name)
        if self._kept(parts, parent, same):
            if at:
                self._apply_xattrs(at, member)
            return
        os.symlink(member.linkname, name, dir_fd=parent)
        if _IS_ROOT:
            os.chown(name, member.uid, member.gid, dir_fd=parent, follow_symlinks=False)
        if at:
            self._apply_xattrs(at, member)
        os.utime(name, ns=(member.mtime_ns, member.mtime_ns), dir_fd=parent, follow_symlinks=False)

    def _hardlink(self, parts, member: Member) -> None:
        try:
            target = safe_parts(member.linkname)
        except HostileArchive:
            raise HostileArchive(
                f"hard link {member.name!r} points outside the archive ({member.linkname!r})"
            ) from None
        if _key(target) not in self._files:
            raise HostileArchive(
                f"hard link {member.name!r} points to {member.linkname!r}, "
                "which is not a file of this archive"
            )
        self.stats.files += 1
        source_dir = self._dir(target[:-1])
        source = os.lstat(target[-1], dir_fd=source_dir)
        # restic reads every name of an inode: a link costs the store its target's size
        self._count_size(source.st_size)
        digest = self._link_digests.get(_key(target))
        if digest is None:
            digest = self._link_digests[_key(target)] = _hash_file(target[-1], source_dir)
        self._summed(member.name, digest)
        parent = self._dir(parts[:-1])
        name = parts[-1]
        if self._kept(
            parts,
            parent,
            lambda st: (st.st_ino, st.st_dev) == (source.st_ino, source.st_dev),
            file=True,
        ):
            return
        os.link(target[-1], name, src_dir_fd=source_dir, dst_dir_fd=parent, follow_symlinks=False)
        self.stats.written += 1

    # -- the end ------------------------------------------------------------------------

    def finish(self) -> UnpackStats:
        """Check the manifest, remove what the archive no longer holds, set directory
        metadata. Returns the statistics; raises ArchiveError on a manifest mismatch."""
        if self._manifest_sum is None:
            raise ArchiveError(f"the archive has no {MANIFEST_NAME}")
        if self.lean and self._keep_base_files() and not self._partial:
            raise HostileArchive(
                f"a lean delta left files out, yet its {MANIFEST_NAME} claims to list them all"
            )
        listed = self._manifest_sum
        if self._partial:
            listed = listed.plus(self._implied)
        if listed != self._sum:
            problems = self._name_mismatches() or ["the files and the manifest differ"]
            more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
            raise ArchiveError(
                f"the archive does not match its {MANIFEST_NAME}: {'; '.join(problems[:5])}{more}"
            )
        if self._partial:
            self._complete_manifest()
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()
        self._sweep()
        # the directories' attributes, written now (each directory's last record only,
        # at most MAX_DIR_META in all), counted as every other entry's
        self._count_size(self._dir_meta_bytes)
        self._check_free(2 * self._dir_meta_bytes, force=bool(self._dir_meta_bytes))
        for parts, member in sorted(self._dir_meta.values(), key=lambda item: -len(item[0])):
            fd = self._dir(parts)
            self._apply_meta(fd, member, member.mode & 0o7777, force=False)
        return self.stats

    def _complete_manifest(self) -> None:
        """After a partial manifest passed: write the day's complete manifest into
        staging, from the index (every file this archive left, with the digest it was
        checked against, in the order of the names' bytes, as the client sorts it), and
        prove it against the sidecar's sha256. Raises BaseMismatch when they differ: the
        files whose bytes travelled matched, so a file the base supplied is not what the
        client's cache vouched for (staging's tree is not the client's base)."""
        assert self.index is not None
        digest = hashlib.sha256()
        flags = os.O_WRONLY | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(MANIFEST_NAME, flags, dir_fd=self._root)
        try:
            batch: list[bytes] = []
            for number, (name, sha256) in enumerate(self.index.digests(), 1):
                batch.append(format_line(name, sha256))
                if number % 4096 == 0:
                    self._write_lines(fd, batch, digest)
            self._write_lines(fd, batch, digest)
            os.utime(fd, ns=(self._manifest_mtime, self._manifest_mtime))
        finally:
            os.close(fd)
        self.manifest_sha256 = digest.hexdigest()
        if self.manifest_sha256 != self.announced:
            raise BaseMismatch(
                "the files the base supplies differ from the day's manifest (staging's "
                "index and the client's file cache disagree)"
            )

    def _write_lines(self, fd: int, batch: list[bytes], digest) -> None:
        """Write and hash ``batch`` (emptied), checking the host's deadline."""
        _check_cancel(self.limits.cancel)
        data = b"".join(batch)
        digest.update(data)
        write_all(fd, data)
        batch.clear()

    def _name_mismatches(self) -> list[str]:
        """Which files differ from the manifest (only run when the sums disagree): from
        the digests this archive recorded when there is an index, else by reading the
        regular files of staging (never a FIFO or a link), stopping at MAX_NAMED."""
        try:
            listed = parse((self.staging / MANIFEST_NAME).read_bytes())
        except (OSError, ValueError) as exc:
            return [f"{MANIFEST_NAME} is unreadable: {exc}"]
        problems: list[str] = []
        found = set()
        if self._partial:
            listed.pop(NOTICE_NAME, None)
        for name, digest in self._digests():
            found.add(name)
            if name not in listed:
                if not self._partial:  # (a partial one leaves the base's files out)
                    problems.append(f"{escaped(name)} is not listed")
            elif digest() != listed[name]:
                problems.append(f"{escaped(name)} has changed")
            if len(problems) > MAX_NAMED:
                return problems
        problems += [f"{escaped(n)} is missing" for n in listed if n not in found]
        return problems[: MAX_NAMED + 1]

    def _digests(self):
        """(name, a function returning its digest) for every file this archive made."""
        if self.index is not None:
            for name, digest in self.index.digests():
                yield name, lambda digest=digest: digest
            return
        for directory, _, files in walk(self.staging / "services"):
            for file_name in files:
                path = os.path.join(directory, file_name)
                name = os.path.relpath(path, self.staging)
                if _key(tuple(name.split("/"))) not in self._seen:
                    continue
                if not stat.S_ISREG(os.lstat(path).st_mode):
                    continue  # a FIFO would block, a link is not a file of the manifest
                _check_cancel(self.limits.cancel)
                yield name, lambda path=path: _hash_path(path)

    def _sweep(self) -> None:
        """Remove what no member named, and write the list of the directories, symbolic
        links and FIFOs left (tree_list.TREE_NAME: the manifest lists the files), one
        directory's names sorted, written as they are met (nothing held)."""
        _remove(_TREE_TEMP, self._root)  # (nothing at that name is followed or kept)
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
        fd = os.open(_TREE_TEMP, flags, 0o600, dir_fd=self._root)
        with open(fd, "wb") as listing:
            listing.write(tree_list.format_header(self.manifest_sha256))
            stack: list[tuple[str, ...]] = [()]
            while stack:
                parts = stack.pop()
                fd = self._dir(parts)
                for name in sorted(os.listdir(fd)):
                    child = (*parts, name)
                    if child in _KEPT:
                        continue
                    if _key(child) not in self._seen:
                        _remove(name, fd)
                        self._forget_dir(child)
                        self.stats.removed += 1
                        continue
                    mode = os.lstat(name, dir_fd=fd).st_mode
                    kind = tree_list.kind_of(mode)
                    if kind is not None:
                        listing.write(tree_list.format_entry(kind, "/".join(child)))
                    if stat.S_ISDIR(mode):
                        stack.append(child)
        with contextlib.suppress(FileNotFoundError):
            if stat.S_ISDIR(os.lstat(TREE_NAME, dir_fd=self._root).st_mode):
                _remove(TREE_NAME, self._root)  # (a rename replaces no directory)
        os.rename(_TREE_TEMP, TREE_NAME, src_dir_fd=self._root, dst_dir_fd=self._root)


def _write_new(fd: int, chunks, digest) -> bool:
    """Write a new file; returns True (it changed)."""
    for data in chunks:
        digest.update(data)
        write_all(fd, data)
    return True


def _rewrite(fd: int, chunks, digest, old_size: int) -> bool:
    """Bring an existing file to the new content, writing only from the first byte that
    differs (an unchanged file is not written at all). Returns whether it changed."""
    changed = False
    position = 0
    for data in chunks:
        digest.update(data)
        if not changed and os.pread(fd, len(data), position) != data:
            changed = True
        if changed:
            pwrite_all(fd, data, position)
        position += len(data)
    if position != old_size:
        os.ftruncate(fd, position)
        changed = True
    return changed


def _copy_regions(
    source: int,
    target: int,
    regions: list[sparse.Region],
    size: int,
    cancel: threading.Event | None,
) -> None:
    """Copy the ``size`` bytes of ``source`` to ``target``: only its data ``regions`` (a
    sparse file's holes stay holes; ``copy_file_range`` alone would write them as
    zeros), then the size set. Raises ArchiveError when the file shrank meanwhile."""
    for region in regions:
        offset, left = region.offset, region.length
        while left:
            _check_cancel(cancel)
            done = os.copy_file_range(source, target, min(left, 1 << 30), offset, offset)
            if not done:
                raise LocalArchiveError("a staging file shrank while it was copied")
            offset, left = offset + done, left - done
    os.ftruncate(target, size)


def _check_cancel(cancel: threading.Event | None) -> None:
    """Raises ArchiveError once the host's deadline set ``cancel``."""
    if cancel is not None and cancel.is_set():
        raise LocalArchiveError("unpacking stopped: the host's time is up")


def _hash_fd(fd: int, cancel: threading.Event | None, digest, start: int = 0):
    """``digest`` (a sha256) fed the file ``fd`` from ``start`` to its end, stopping at
    the host's deadline; returns it."""
    for data in pread_span(fd, start):
        _check_cancel(cancel)
        digest.update(data)
    return digest


class _HashingWriter:
    """Writes to ``out`` (a file) and hashes what passes; a hole is skipped over, hashed
    as zeros (:class:`deltaops.HoleWritable`)."""

    def __init__(self, out, digest, cancel: threading.Event | None = None):
        self._out = out
        self._digest = digest
        self._cancel = cancel

    def write(self, data) -> int:
        self._digest.update(data)
        return self._out.write(data)

    def hole(self, length: int) -> None:
        sparse.hash_zeros(self._digest, length, self._cancel)
        self._out.seek(length, os.SEEK_CUR)


def _cancellable(chunks, cancel: threading.Event):
    """``chunks``, stopping (ArchiveError) once ``cancel`` is set: one huge member cannot
    keep a host past its deadline."""
    for chunk in chunks:
        if cancel.is_set():
            raise LocalArchiveError("unpacking stopped: the host's time is up")
        yield chunk


def _meta_size(member: Member) -> int:
    """What a directory's kept metadata costs in memory, for MAX_DIR_META: its name and
    records with their objects' overhead (an empty record costs RECORD_COST, not 0);
    nothing for a directory without records: its memory is bounded with every member's,
    by max_entries (150,000 plain directories, a maildir store or node_modules trees,
    had the whole archive refused: helper-156 F1)."""
    if not member.pax:
        return 0
    records = sum(len(k) + len(v) + RECORD_COST for k, v in member.pax.items())
    return DIRECTORY_COST + len(member.name) + records


def _key(parts: tuple[str, ...]) -> int:
    """A 128-bit key of a path (collisions are out of reach; memory per path is small)."""
    raw = "/".join(parts).encode("utf-8", "surrogateescape")
    return int.from_bytes(hashlib.blake2b(raw, digest_size=16).digest(), "little")


class _Sum:
    """An order-independent sum over (name, sha256) pairs, and their count."""

    __slots__ = ("count", "total")

    def __init__(self):
        self.total = 0
        self.count = 0

    def add(self, name: str, digest: str) -> None:
        item = hashlib.blake2b(
            name.encode("utf-8", "surrogateescape") + b"\0" + digest.encode(), digest_size=32
        ).digest()
        self.total = (self.total + int.from_bytes(item, "little")) % (1 << 256)
        self.count += 1

    def plus(self, other: _Sum) -> _Sum:
        """The sum of both sets of pairs."""
        both = _Sum()
        both.total = (self.total + other.total) % (1 << 256)
        both.count = self.count + other.count
        return both

    def __eq__(self, other) -> bool:
        return isinstance(other, _Sum) and (self.total, self.count) == (other.total, other.count)


class _ManifestReader:
    """Sums the manifest's entries while its bytes pass through to the staging file;
    ``skipped``: a line that is no entry (a partial manifest's notice)."""

    def __init__(self, skipped: bytes | None = None):
        self.skipped = skipped
        self.sum = _Sum()
        self.sha256 = hashlib.sha256()
        self._rest = b""

    def feed(self, chunks):
        for chunk in chunks:
            self.sha256.update(chunk)
            data = self._rest + chunk
            *lines, self._rest = data.split(b"\n")
            if len(self._rest) > MAX_MANIFEST_LINE:  # else each chunk copies all so far
                raise ArchiveError(
                    f"{MANIFEST_NAME} has a line longer than {MAX_MANIFEST_LINE:,} bytes"
                )
            for line in lines:
                self._line(line)
            yield chunk

    def _line(self, line: bytes) -> None:
        if not line or line == self.skipped:
            return
        # a name listed twice cannot make the sums agree: no set of names is needed
        for name, digest in parse(line + b"\n").items():
            self.sum.add(name, digest)

    def finish(self) -> _Sum:
        self._line(self._rest)
        return self.sum


def _hash_path(path: str) -> str:
    digest = hashlib.sha256()
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    with os.fdopen(fd, "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _hash_file(name: str, dir_fd: int) -> str:
    fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
    with os.fdopen(fd, "rb") as handle:
        digest = hashlib.sha256()
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()
