"""Metadata fidelity: what survives a backup and a restore, per kind of metadata, four ways.

    python -m bench.fidelity [--work DIR] [--no-save] [--tree system|edge|both] [--keep]

Ways (the columns):
  pullback (restic)  client run -> server pull -> server restore -> client restore --task files
  pullback (borg)    the same with the borg backend
  restic direct      restic init; restic backup SRC; restic restore latest --target DST
  GNU tar            tar --create --format=posix --xattrs --xattrs-include='*' --acls --sparse;
                     tar --extract --same-owner --numeric-owner --xattrs --xattrs-include='*'
                         --acls --same-permissions
Trees:
  edge    one generated instance of every kind (the rows): content, owner, mode, set-id,
          mtime, symlink, hard link, FIFO, ACL, user.* xattr, file capability, sparse file,
          empty directory, a path over 4096 bytes, a non-UTF-8 name, a device node
  system  a copy (cp -a) of /usr/bin and /etc, and of the directories of files elsewhere in
          /usr that carry file capabilities (getcap -r /usr)
Every restored tree is checked kind by kind (lstat, getxattr, getfacl, getcap, st_blocks,
st_ino) and by the oracle ``rsync -aHAXn --checksum --itemize-changes --delete SRC/ DST/``
(its line count: 0 means rsync sees nothing to change; rsync cannot see holes, nor reach
below PATH_MAX). A cell of the edge table is "kept", "lost", "dropped (by design)" (pullback
leaves it out on purpose and documents it: BY_DESIGN), or "fails the backup": the entry made
pullback's client run fail as a whole, so the run was repeated without it to measure the
rest. The system table counts the entries that differ. Run as root. Prints the tables and
writes bench/results/fidelity-<date>.json.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import functools
import hashlib
import json
import os
import re
import secrets
import shutil
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from tests.helpers.fleet import Fleet

HERE = Path(__file__).parent
MIB = 1 << 20
TIMEOUT = 3600
RSYNC = ["rsync", "-aHAXn", "--checksum", "--itemize-changes", "--delete"]
KEEP_LINES = 60
"""rsync output lines kept in the JSON results per way (the count is always complete)."""

KINDS = [
    "content",
    "owner/group",
    "mode bits",
    "set-uid/set-gid",
    "mtime (ns)",
    "symlink",
    "hard link",
    "FIFO",
    "POSIX ACL",
    "xattr (user.*)",
    "file capability",
    "sparse file",
    "empty directory",
    "long path",
    "non-UTF-8 name",
    "device node",
]
BY_DESIGN = {
    "device node": "docs/client.md, docs/restore.md: device nodes and sockets are not backed up",
    "long path": "docs/archive-format.md: an entry whose name in the archive would be longer "
    "than 4000 bytes is skipped with a warning (common/archive/writer.py MAX_ARCNAME)",
}
"""What pullback leaves out on purpose, and where it says so."""
SYSTEM_ASPECTS = [
    "missing",
    "content",
    "owner",
    "mode",
    "set-id",
    "capability",
    "mtime",
    "symlink",
    "hard link",
    "ACL",
    "xattr",
]
CAPABILITY = "security.capability"
ACL_XATTRS = ("system.posix_acl_access", "system.posix_acl_default")
NON_UTF8 = b"latin1-caf\xe9-\xff\xfe.txt"
DEVICE = (1, 3)  # the numbers of /dev/null
LONG_FILE = "deep-file.txt"
LONG_PARENT = 3900
"""Bytes of the long path's last directory's parent (absolute): the last one, a 200-byte
name, takes it past PATH_MAX (4115 bytes to the file)."""
ITEMIZED = re.compile(r"^([<>ch.*][fdLDS]|\*deleting)")
"""An rsync --itemize-changes line (rsync's own messages, such as "IO error encountered",
are not differences)."""


class TripError(Exception):
    """A backup or restore command failed; the way's cells are reported as errors."""


@dataclass
class Trip:
    """One round trip: where the copy of the source tree is, and what it cost."""

    restored: Path
    backup_s: float
    restore_s: float
    notes: list[str] = field(default_factory=list)
    failures: dict[str, str] = field(default_factory=dict)
    """Kinds whose entry made the backup fail as a whole (then measured without it)."""


@dataclass
class Verdict:
    """One kind on one way: kept or not, why, and whether the entry was not there at all."""

    kept: bool
    detail: str = ""
    absent: bool = False


# -- running commands -------------------------------------------------------------------


def _run(
    argv: list[str], *, ok: Iterable[int] = (0,), notes: list[str] | None = None, **kwargs
) -> subprocess.CompletedProcess:
    """Run ``argv`` (output captured) and return it; raise TripError on an exit code not in
    ``ok``. An accepted non-zero exit code and the end of its stderr go into ``notes``."""
    result = subprocess.run(argv, capture_output=True, timeout=TIMEOUT, check=False, **kwargs)
    stderr = os.fsdecode(result.stderr)
    if result.returncode not in tuple(ok):
        raise TripError(f"{argv[0]} {argv[1]} exited {result.returncode}: {stderr[-1500:]}")
    if result.returncode and notes is not None:
        tail = " | ".join(stderr.strip().splitlines()[-4:])
        notes.append(f"{' '.join(argv[:2])} exited {result.returncode}: {_short(tail, 600)}")
    return result


def _cli(result: subprocess.CompletedProcess, what: str) -> subprocess.CompletedProcess:
    """Return a pullback CLI result (text mode); raise TripError if it failed."""
    if result.returncode != 0:
        raise TripError(f"{what} exited {result.returncode}: {result.stderr[-1500:]}")
    return result


def _skipped(stderr: str) -> list[str]:
    """The warnings of a client run about entries it left out (at most 20)."""
    return [_short(line, 400) for line in stderr.splitlines() if "skipped" in line][:20]


# -- the four ways ----------------------------------------------------------------------


def _client_run(fleet: Fleet, src: Path, failures: dict[str, str]) -> list[str]:
    """Add a ``files`` service holding ``src`` to the fleet's host and run the client.
    If the run fails on the edge tree's long path, that goes into ``failures`` (under
    "long path") and the run is repeated with ``exclude: [/<src>/long]``, so that the other
    kinds are still measured. Returns the run's warnings about entries it skipped."""
    host = fleet.hosts["web1"]
    files: dict[str, list[str]] = {"paths": [str(src)]}
    service = {"service": {"name": "fidelity"}, "files": files}
    host.client.add_service("fidelity", yaml.safe_dump(service))
    ran = host.client.cli("run", timeout=TIMEOUT)
    if ran.returncode != 0 and f"{src}/long/" in ran.stderr:
        failed = [line for line in ran.stderr.splitlines() if "failed" in line]
        failures["long path"] = (
            "the client run failed (the other kinds measured by a second run with "
            f"exclude: [/{src.name}/long]; its backup time includes the failed run): "
            + _short(" | ".join(failed), 600)
        )
        files["exclude"] = [f"/{src.name}/long"]  # anchored at the listed path's parent
        host.client.add_service("fidelity", yaml.safe_dump(service))
        ran = host.client.cli("run", timeout=TIMEOUT)
    return _skipped(_cli(ran, "pullback-client run").stderr)


def pullback_trip(src: Path, scratch: Path, backend: str) -> Trip:
    """The real cycle with a ``files`` service holding ``src``: client run, server pull,
    server restore, client restore (``--task files``). Returns the restored copy of
    ``src``, the time of run + pull and of the two restores, the run's warnings, and
    what made the run fail (see _client_run)."""
    fleet = Fleet(scratch / "fleet", backend=backend)
    failures: dict[str, str] = {}
    try:
        host = fleet.add_host("web1")
        shutil.rmtree(host.client.services / "app")  # the fleet's sample service: not ours
        started = time.monotonic()
        skipped = _client_run(fleet, src, failures)
        _cli(fleet.server("pull", timeout=TIMEOUT), "pullback-server pull")
        backup_s = time.monotonic() - started
        snapshot, put_back = scratch / "snapshot", scratch / "put-back"
        started = time.monotonic()
        restore = ["restore", "web1", "--service", "fidelity", "--target", str(snapshot)]
        _cli(fleet.server(*restore, timeout=TIMEOUT), "pullback-server restore")
        put = ["restore", "--service", "fidelity", "--from", str(snapshot), "--task", "files"]
        put += ["--target", str(put_back)]
        _cli(host.client.cli(*put, timeout=TIMEOUT), "pullback-client restore")
        restore_s = time.monotonic() - started
    finally:
        fleet.stop()
    restored = put_back / str(src).lstrip("/")
    return Trip(restored, backup_s, restore_s, skipped, failures)


def restic_trip(src: Path, scratch: Path) -> Trip:
    """``restic backup SRC`` and ``restic restore latest`` into a new repository (password
    from a file). Returns the restored copy of ``src`` and the two times; restic's exit
    code 3 (some entries could not be read) is accepted and noted."""
    scratch.mkdir(parents=True)
    password = scratch / "password"
    password.write_text(secrets.token_hex(16) + "\n")
    password.chmod(0o600)
    env = {
        **os.environ,
        "RESTIC_REPOSITORY": str(scratch / "repo"),
        "RESTIC_PASSWORD_FILE": str(password),
        "RESTIC_CACHE_DIR": str(scratch / "cache"),
    }
    notes: list[str] = []
    _run(["restic", "init"], env=env)
    started = time.monotonic()
    _run(["restic", "backup", str(src)], env=env, ok=(0, 3), notes=notes)
    backup_s = time.monotonic() - started
    target = scratch / "restore"
    started = time.monotonic()
    _run(["restic", "restore", "latest", "--target", str(target)], env=env, ok=(0, 1), notes=notes)
    restore_s = time.monotonic() - started
    return Trip(target / str(src).lstrip("/"), backup_s, restore_s, notes)


def tar_trip(src: Path, scratch: Path) -> Trip:
    """GNU tar, PAX format, with xattrs, ACLs and holes, extracted as root with owners and
    modes. Returns the extracted tree and the two times; exit code 2 (some entries
    failed) is accepted and noted."""
    scratch.mkdir(parents=True)
    archive, target = scratch / "tree.tar", scratch / "extract"
    target.mkdir()
    notes: list[str] = []
    started = time.monotonic()
    create = ["tar", "--create", "--format=posix", "--xattrs", "--xattrs-include=*", "--acls"]
    _run([*create, "--sparse", "-f", str(archive), "-C", str(src), "."], ok=(0, 1, 2), notes=notes)
    backup_s = time.monotonic() - started
    started = time.monotonic()
    extract = ["tar", "--extract", "--same-owner", "--numeric-owner", "--xattrs"]
    extract += ["--xattrs-include=*", "--acls", "--same-permissions"]
    _run([*extract, "-f", str(archive), "-C", str(target)], ok=(0, 1, 2), notes=notes)
    return Trip(target, backup_s, time.monotonic() - started, notes)


WAYS: dict[str, Callable[[Path, Path], Trip]] = {
    "pullback (restic)": functools.partial(pullback_trip, backend="restic"),
    "pullback (borg)": functools.partial(pullback_trip, backend="borg"),
    "restic direct": restic_trip,
    "GNU tar": tar_trip,
}


def _slug(way: str) -> str:
    """A directory name for ``way``."""
    return "".join(c if c.isalnum() else "-" for c in way).strip("-").replace("--", "-")


# -- the edge tree ----------------------------------------------------------------------


def long_parts(src: Path) -> list[str]:
    """The directories of the long path below ``src``: "long", 200-byte names and a shorter
    one up to LONG_PARENT bytes of absolute path, then one more 200-byte name, which takes
    the path past PATH_MAX (the same for any work directory shorter than ~3800 bytes)."""
    length = len(os.fsencode(src)) + len("/long")
    parts = ["long"]
    while length + 201 <= LONG_PARENT:
        parts.append(f"d{len(parts):02d}".ljust(200, "x"))
        length += 201
    if LONG_PARENT - length > 1:
        parts.append(f"d{len(parts):02d}".ljust(LONG_PARENT - length - 1, "x"))
    return [*parts, "z" * 200]


def _descend(root: Path, parts: list[str], create: bool = False) -> int | None:
    """Open the directory ``root/parts...`` one component at a time (no path is ever longer
    than a component), creating it if asked. Returns its descriptor, or None if a component
    is missing."""
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    for part in parts:
        try:
            if create:
                os.mkdir(part, 0o755, dir_fd=fd)
            inner = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
        except OSError:
            os.close(fd)
            return None
        os.close(fd)
        fd = inner
    return fd


def _read_deep(root: Path, parts: list[str]) -> bytes | None:
    """The bytes of the long path's file ``root/parts.../LONG_FILE``, or None if it is not
    there."""
    fd = _descend(root, parts)
    if fd is None:
        return None
    try:
        handle = os.open(LONG_FILE, os.O_RDONLY, dir_fd=fd)
    except OSError:
        return None
    finally:
        os.close(fd)
    with os.fdopen(handle, "rb") as reader:
        return reader.read()


def _write(path: Path, data: bytes, mode: int = 0o644) -> Path:
    """Write ``data`` to ``path`` with ``mode``; return the path."""
    path.write_bytes(data)
    os.chmod(path, mode)
    return path


def _make_special(src: Path) -> None:
    """The entries that need root or a tool: set-id, capability, ACL, xattr, FIFO, device."""
    _write(src / "setuid-bin", b"#!/bin/sh\necho root\n", 0o4755)
    _write(src / "setgid-bin", b"#!/bin/sh\necho group\n", 0o2755)
    (src / "setgid-dir").mkdir()
    os.chmod(src / "setgid-dir", 0o2775)
    shutil.copy2("/usr/bin/true", src / "cap-bin")
    subprocess.run(["setcap", "cap_net_raw+ep", str(src / "cap-bin")], check=True)
    _write(src / "acl-file", b"acl\n", 0o640)
    subprocess.run(["setfacl", "-m", "u:65534:r--,g:4321:rw-", str(src / "acl-file")], check=True)
    (src / "acl-dir").mkdir()
    subprocess.run(
        ["setfacl", "-m", "u:65534:rwx", "-m", "d:u:65534:r-x", str(src / "acl-dir")], check=True
    )
    _write(src / "xattr.txt", b"xattr\n")
    subprocess.run(
        ["setfattr", "-n", "user.test", "-v", "fidelity", str(src / "xattr.txt")], check=True
    )
    os.mkfifo(src / "control.fifo", 0o620)
    os.chmod(src / "control.fifo", 0o620)
    os.mknod(src / "null-dev", stat.S_IFCHR | 0o666, os.makedev(*DEVICE))


def make_edge_tree(src: Path) -> dict:
    """One instance (or two) of every kind of metadata below ``src`` (created). Returns its
    summary: entries, apparent bytes, allocated bytes, the long path's length."""
    src.mkdir(parents=True)
    _write(src / "content.bin", os.urandom(MIB + 17))
    _write(src / "owned.txt", b"owned\n")
    os.chown(src / "owned.txt", 1234, 4321)
    (src / "owned-dir").mkdir()
    os.chown(src / "owned-dir", 4321, 1234)
    _write(src / "mode-0640.txt", b"mode\n", 0o640)
    (src / "mode-dir").mkdir()
    os.chmod(src / "mode-dir", 0o750)
    (src / "sticky-dir").mkdir()
    os.chmod(src / "sticky-dir", 0o1777)
    _make_special(src)
    os.symlink("/etc/passwd", src / "link-passwd")
    _write(src / "hard-a", b"linked\n")
    os.link(src / "hard-a", src / "hard-b")
    with open(src / "sparse.img", "wb") as handle:  # 64 MiB apparent, 1 MiB of data
        handle.truncate(64 * MIB)
        handle.seek(32 * MIB)
        handle.write(os.urandom(MIB))
    (src / "empty-dir").mkdir()
    with open(os.fsencode(src) + b"/" + NON_UTF8, "wb") as handle:
        handle.write(b"not utf-8\n")
    deep = _descend(src, long_parts(src), create=True)
    assert deep is not None
    with os.fdopen(os.open(LONG_FILE, os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=deep), "wb") as f:
        f.write(b"deep\n")
    os.close(deep)
    _write(src / "mtime.txt", b"old\n")
    os.utime(src / "mtime.txt", ns=(1_600_000_000_123_456_789,) * 2)
    (src / "mtime-dir").mkdir()
    _write(src / "mtime-dir" / "inside", b"in\n")
    os.utime(src / "mtime-dir", ns=(1_400_000_000_987_654_321,) * 2)
    entries = sum(len(d) + len(f) for _, d, f in os.walk(os.fsencode(src)))
    apparent = allocated = 0
    for dirpath, _, names in os.walk(os.fsencode(src)):
        for name in names:
            st = os.lstat(os.path.join(dirpath, name))
            apparent, allocated = apparent + st.st_size, allocated + st.st_blocks * 512
    long_path = (
        len(os.fsencode(src)) + sum(len(p) + 1 for p in long_parts(src)) + 1 + len(LONG_FILE)
    )
    return {
        "entries": entries,
        "apparent_bytes": apparent,
        "allocated_bytes": allocated,
        "long_path_bytes": long_path,
    }


# -- per-kind checks ----------------------------------------------------------------------


def _sha256(path: Path) -> str:
    """The sha256 of the file at ``path`` (hex)."""
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def _getfacl(path: Path) -> str:
    """``getfacl``'s text for ``path``: numeric ids, no header."""
    return subprocess.run(
        ["getfacl", "--omit-header", "--numeric", "--absolute-names", str(path)],
        capture_output=True,
        text=True,
        check=False,
    ).stdout


def _getcap(path: Path) -> str:
    """``getcap``'s capabilities of ``path`` (empty: none)."""
    out = subprocess.run(["getcap", str(path)], capture_output=True, text=True, check=False)
    return out.stdout.strip().rpartition(" ")[2] if out.stdout.strip() else ""


def _xattr(name: str) -> Callable[[Path], bytes | None]:
    """A key function: the value of the extended attribute ``name`` (None: not set)."""

    def value(path: Path) -> bytes | None:
        try:
            return os.getxattr(path, name, follow_symlinks=False)
        except OSError:
            return None

    return value


def _compare(src: Path, dst: Path, names: Iterable[str], key: Callable[[Path], object]) -> Verdict:
    """Compare ``key`` of each named entry in the two trees. Returns kept if all are equal;
    absent if an entry is not in ``dst`` at all."""
    problems = []
    for name in names:
        if not os.path.lexists(dst / name):
            return Verdict(False, f"{name} is not in the restored tree", absent=True)
        before, after = key(src / name), key(dst / name)
        if before != after:
            problems.append(f"{name}: {before!r} -> {after!r}")
    return Verdict(not problems, "; ".join(problems))


def _lstat(attribute: Callable[[os.stat_result], object]) -> Callable[[Path], object]:
    """A key function: ``attribute`` of the entry's lstat."""
    return lambda path: attribute(os.lstat(path))


def _symlink(path: Path) -> object:
    """A symlink's target, or the type of what is there instead."""
    return (
        os.readlink(path) if path.is_symlink() else f"not a symlink ({oct(path.lstat().st_mode)})"
    )


def _empty_dir(path: Path) -> object:
    """What is in the directory (an empty list), or that it is not one."""
    return sorted(os.listdir(path)) if path.is_dir() and not path.is_symlink() else "not a dir"


def check_hard_link(src: Path, dst: Path) -> Verdict:
    """Kept if the two names of the linked file are one inode again, with its content."""
    verdict = _compare(src, dst, ["hard-a", "hard-b"], _sha256)
    if not verdict.kept:
        return verdict
    a, b = os.lstat(dst / "hard-a"), os.lstat(dst / "hard-b")
    linked = a.st_ino == b.st_ino
    return Verdict(linked, "" if linked else f"two inodes ({a.st_ino}, {b.st_ino}), nlink 1")


def check_sparse(src: Path, dst: Path) -> Verdict:
    """Kept if the content is equal and the copy allocates no more than the source does
    (1 MiB of slack): its holes are holes again."""
    verdict = _compare(src, dst, ["sparse.img"], _sha256)
    if not verdict.kept:
        return verdict
    before, after = os.lstat(src / "sparse.img"), os.lstat(dst / "sparse.img")
    detail = (
        f"{after.st_blocks * 512 // 1024} KiB allocated of {after.st_size // MIB} MiB "
        f"(source {before.st_blocks * 512 // 1024} KiB)"
    )
    return Verdict(after.st_blocks <= before.st_blocks + 2048, detail)


def check_long_path(src: Path, dst: Path) -> Verdict:
    """Kept if the file deeper than PATH_MAX is in the copy, with its content."""
    parts = long_parts(src)
    after = _read_deep(dst, parts)
    if after is None:
        return Verdict(False, "the file below the long path is not in the restored tree", True)
    same = after == _read_deep(src, parts)
    return Verdict(same, "" if same else "content differs")


CHECKS: dict[str, Callable[[Path, Path], Verdict]] = {
    "content": lambda s, d: _compare(s, d, ["content.bin"], _sha256),
    "owner/group": lambda s, d: _compare(
        s, d, ["owned.txt", "owned-dir"], _lstat(lambda st: (st.st_uid, st.st_gid))
    ),
    "mode bits": lambda s, d: _compare(
        s, d, ["mode-0640.txt", "mode-dir", "sticky-dir"], _lstat(lambda st: oct(st.st_mode))
    ),
    "set-uid/set-gid": lambda s, d: _compare(
        s, d, ["setuid-bin", "setgid-bin", "setgid-dir"], _lstat(lambda st: oct(st.st_mode))
    ),
    "mtime (ns)": lambda s, d: _compare(
        s, d, ["mtime.txt", "mtime-dir"], _lstat(lambda st: st.st_mtime_ns)
    ),
    "symlink": lambda s, d: _compare(s, d, ["link-passwd"], _symlink),
    "hard link": check_hard_link,
    "FIFO": lambda s, d: _compare(s, d, ["control.fifo"], _lstat(lambda st: oct(st.st_mode))),
    "POSIX ACL": lambda s, d: _compare(s, d, ["acl-file", "acl-dir"], _getfacl),
    "xattr (user.*)": lambda s, d: _compare(s, d, ["xattr.txt"], _xattr("user.test")),
    "file capability": lambda s, d: _compare(s, d, ["cap-bin"], _getcap),
    "sparse file": check_sparse,
    "empty directory": lambda s, d: _compare(s, d, ["empty-dir"], _empty_dir),
    "long path": check_long_path,
    "non-UTF-8 name": lambda s, d: _compare(s, d, [os.fsdecode(NON_UTF8)], _sha256),
    "device node": lambda s, d: _compare(
        s, d, ["null-dev"], _lstat(lambda st: (oct(st.st_mode), st.st_rdev))
    ),
}


def label(way: str, kind: str, verdict: Verdict) -> str:
    """The table cell: kept, lost, or dropped (by design) for what pullback leaves out on
    purpose and is indeed not there."""
    if verdict.kept:
        return "kept"
    if verdict.absent and way.startswith("pullback") and kind in BY_DESIGN:
        return "dropped (by design)"
    return "lost"


def check_edge(src: Path, dst: Path, way: str) -> dict[str, dict]:
    """Every kind on the restored edge tree. Returns {kind: {label, detail}}."""
    out = {}
    for kind in KINDS:
        try:
            verdict = CHECKS[kind](src, dst)
        except OSError as exc:
            verdict = Verdict(False, f"{type(exc).__name__}: {exc}")
        out[kind] = {"label": label(way, kind, verdict), "detail": verdict.detail}
    return out


# -- the oracle -----------------------------------------------------------------------------


def oracle(src: Path, dst: Path) -> dict:
    """``rsync -aHAXn --checksum --itemize-changes --delete SRC/ DST/``. Returns its exit
    code, its line count (0: rsync would change nothing), the first lines and its stderr."""
    result = subprocess.run(
        [*RSYNC, f"{src}/", f"{dst}/"], capture_output=True, timeout=TIMEOUT, check=False
    )
    output = [line for line in os.fsdecode(result.stdout).splitlines() if line.strip()]
    lines = [line for line in output if ITEMIZED.match(line)]
    return {
        "returncode": result.returncode,
        "lines": len(lines),
        "first_lines": [_short(line, 400) for line in lines[:KEEP_LINES]],
        "messages": [_short(line) for line in output if not ITEMIZED.match(line)][:10],
        "stderr": _short(os.fsdecode(result.stderr), 800),
    }


# -- the system tree ----------------------------------------------------------------------


@dataclass
class Entry:
    """What is compared of one entry of a tree."""

    st: os.stat_result
    xattrs: dict[str, bytes] = field(default_factory=dict)
    digest: str = ""
    target: bytes = b""


def _xattrs(path: bytes) -> dict[str, bytes]:
    """All extended attributes of ``path`` (not followed), ACLs and capabilities included."""
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError:
        return {}
    return {n: os.getxattr(path, n, follow_symlinks=False) for n in names}


def index_tree(root: Path) -> dict[bytes, Entry]:
    """Every entry below ``root`` by relative path (bytes), with its metadata and, for a
    regular file, the sha256 of its content."""
    out: dict[bytes, Entry] = {}
    base = os.fsencode(root)
    for dirpath, dirnames, filenames in os.walk(base):
        for name in dirnames + filenames:
            full = os.path.join(dirpath, name)
            try:
                st = os.lstat(full)
            except OSError:  # deeper than PATH_MAX: not compared (the edge tree's job)
                continue
            entry = Entry(st)
            if not stat.S_ISLNK(st.st_mode):
                entry.xattrs = _xattrs(full)
            if stat.S_ISREG(st.st_mode):
                with open(full, "rb") as handle:
                    entry.digest = hashlib.file_digest(handle, "sha256").hexdigest()
            elif stat.S_ISLNK(st.st_mode):
                entry.target = os.readlink(full)
            out[os.path.relpath(full, base)] = entry
    return out


def _split_xattrs(attrs: dict[str, bytes]) -> tuple[bytes | None, dict, dict]:
    """(the capability, the ACLs, the other extended attributes) of an entry."""
    acls = {k: v for k, v in attrs.items() if k in ACL_XATTRS}
    other = {k: v for k, v in attrs.items() if k != CAPABILITY and k not in ACL_XATTRS}
    return attrs.get(CAPABILITY), acls, other


def entry_differences(before: Entry, after: Entry | None) -> set[str]:
    """The aspects (SYSTEM_ASPECTS, without hard link) in which ``after`` differs from
    ``before``; {"missing"} if it is not there or is of another type."""
    one = before.st
    if after is None or stat.S_IFMT(one.st_mode) != stat.S_IFMT(after.st.st_mode):
        return {"missing"}
    two = after.st
    found = set()
    if before.digest != after.digest:
        found.add("content")
    if (one.st_uid, one.st_gid) != (two.st_uid, two.st_gid):
        found.add("owner")
    if stat.S_IMODE(one.st_mode) != stat.S_IMODE(two.st_mode):
        found.add("mode")
    if one.st_mode & 0o6000 != two.st_mode & 0o6000:
        found.add("set-id")
    if one.st_mtime_ns != two.st_mtime_ns:
        found.add("mtime")
    if before.target != after.target:
        found.add("symlink")
    cap, acls, other = _split_xattrs(before.xattrs)
    cap_after, acls_after, other_after = _split_xattrs(after.xattrs)
    found |= {
        n for n, a, b in (("capability", cap, cap_after), ("ACL", acls, acls_after)) if a != b
    }
    if other != other_after:
        found.add("xattr")
    return found


def _link_groups(tree: dict[bytes, Entry]) -> list[list[bytes]]:
    """The names of each regular file with more than one name in ``tree``."""
    groups: dict[int, list[bytes]] = {}
    for rel, entry in tree.items():
        if stat.S_ISREG(entry.st.st_mode) and entry.st.st_nlink > 1:
            groups.setdefault(entry.st.st_ino, []).append(rel)
    return [names for names in groups.values() if len(names) > 1]


def compare_trees(before: dict[bytes, Entry], after: dict[bytes, Entry]) -> dict:
    """How many entries of ``before`` differ in ``after``, per aspect; hard link counts the
    files of link groups that are no longer one inode. Returns counts and a few examples."""
    counts = dict.fromkeys(SYSTEM_ASPECTS, 0)
    examples: dict[str, list[str]] = {}
    for rel, entry in before.items():
        for aspect in entry_differences(entry, after.get(rel)):
            counts[aspect] += 1
            examples.setdefault(aspect, []).append(os.fsdecode(rel))
    for names in _link_groups(before):
        inodes = {after[n].st.st_ino if n in after else None for n in names}
        if len(inodes) != 1 or None in inodes:
            counts["hard link"] += len(names)
            examples.setdefault("hard link", []).extend(os.fsdecode(n) for n in names)
    return {"counts": counts, "examples": {k: v[:10] for k, v in examples.items()}}


def capability_dirs() -> list[Path]:
    """The directories, outside /usr/bin, of files in /usr that carry a file capability."""
    out = subprocess.run(["getcap", "-r", "/usr"], capture_output=True, text=True, check=False)
    found = {Path(line.split()[0]).parent for line in out.stdout.splitlines() if line.strip()}
    return sorted(d for d in found if not d.is_relative_to("/usr/bin"))


def make_system_tree(src: Path) -> dict:
    """Copy /usr/bin, /etc and the capability directories into ``src`` (cp -a, same
    relative paths). Returns the copied paths and the copy's time."""
    src.mkdir(parents=True)
    copied = [Path("/usr/bin"), Path("/etc"), *capability_dirs()]
    started = time.monotonic()
    for path in copied:  # not cp --parents: coreutils 9.1 fails on it ("'usr': No such file")
        into = src / path.parent.relative_to("/")
        into.mkdir(parents=True, exist_ok=True)
        subprocess.run(["cp", "-a", str(path), f"{into}/"], check=True)
    return {"copied": [str(p) for p in copied], "copy_s": round(time.monotonic() - started, 1)}


def summarize(tree: dict[bytes, Entry]) -> dict:
    """Counts of the system tree: entries by type, bytes, and the metadata that is rare."""
    kinds = [stat.S_IFMT(e.st.st_mode) for e in tree.values()]
    files = [e for e in tree.values() if stat.S_ISREG(e.st.st_mode)]
    return {
        "entries": len(tree),
        "bytes": sum(e.st.st_size for e in files),
        "files": kinds.count(stat.S_IFREG),
        "directories": kinds.count(stat.S_IFDIR),
        "symlinks": kinds.count(stat.S_IFLNK),
        "other": len(kinds)
        - sum(kinds.count(k) for k in (stat.S_IFREG, stat.S_IFDIR, stat.S_IFLNK)),
        "hard-linked files": sum(len(g) for g in _link_groups(tree)),
        "set-uid files": sum(bool(e.st.st_mode & stat.S_ISUID) for e in files),
        "set-gid files": sum(bool(e.st.st_mode & stat.S_ISGID) for e in files),
        "capability files": sum(CAPABILITY in e.xattrs for e in files),
        "ACL entries": sum(any(k in e.xattrs for k in ACL_XATTRS) for e in tree.values()),
        "other xattr entries": sum(bool(_split_xattrs(e.xattrs)[2]) for e in tree.values()),
    }


# -- the harness ----------------------------------------------------------------------------


def _trip(way: str, src: Path, scratch: Path) -> tuple[Trip | None, dict]:
    """One way's round trip. Returns the trip (None if it failed) and its timing record."""
    try:
        trip = WAYS[way](src, scratch)
    except Exception as exc:  # one way failing must not hide the others' results
        return None, {"error": f"{type(exc).__name__}: {_short(str(exc)[-6000:], 2000)}"}
    return trip, {
        "backup_s": round(trip.backup_s, 2),
        "restore_s": round(trip.restore_s, 2),
        "notes": trip.notes,
    }


def run_tree(tree: str, work: Path, ways: list[str], keep: bool = False) -> dict:
    """Build ``tree`` (edge or system) under ``work``, take it through each of ``ways`` and
    check the copies. Returns the tree's summary and, per way, the checks, the oracle's
    verdict and the times."""
    root = work / tree
    if root.exists():
        shutil.rmtree(root)
    src = root / "src"
    summary = make_edge_tree(src) if tree == "edge" else make_system_tree(src)
    before = index_tree(src) if tree == "system" else {}
    if tree == "system":
        summary |= summarize(before)
    results: dict = {}
    for way in ways:
        scratch = root / _slug(way)
        trip, record = _trip(way, src, scratch)
        if trip is not None:
            if tree == "edge":
                record["kinds"] = check_edge(src, trip.restored, way)
                for kind, why in trip.failures.items():
                    record["kinds"][kind] = {"label": "fails the backup", "detail": why}
            else:
                record |= compare_trees(before, index_tree(trip.restored))
            record["rsync"] = oracle(src, trip.restored)
        results[way] = record
        if not keep:
            shutil.rmtree(scratch, ignore_errors=True)
    if not keep:
        shutil.rmtree(root, ignore_errors=True)
    return {"summary": summary, "ways": results}


def run(work: Path, trees: list[str], ways: list[str] | None = None, keep: bool = False) -> dict:
    """The whole benchmark. Returns the raw results (what is saved as JSON)."""
    ways = list(WAYS) if ways is None else ways
    work.mkdir(parents=True, exist_ok=True)
    results: dict = {
        "date": dt.date.today().isoformat(),
        "cpus": os.cpu_count(),
        "kernel": os.uname().release,
        "tools": tool_versions(),
        "rsync_oracle": " ".join(RSYNC) + " SRC/ DST/",
        "by_design": BY_DESIGN,
        "trees": {},
    }
    for tree in trees:
        results["trees"][tree] = run_tree(tree, work, ways, keep)
    if not keep:
        with contextlib.suppress(OSError):
            work.rmdir()  # only if nothing else is in it
    return results


def tool_versions() -> dict[str, str]:
    """The first line of each tool's version output."""
    argvs = {
        "restic": ["restic", "version"],
        "borg": ["borg", "--version"],
        "tar": ["tar", "--version"],
        "rsync": ["rsync", "--version"],
    }
    out = {}
    for name, argv in argvs.items():
        result = subprocess.run(argv, capture_output=True, text=True, check=False)
        out[name] = (result.stdout.splitlines() or [""])[0]
    return out


# -- the report -----------------------------------------------------------------------------


def _mib(n: int) -> str:
    """``n`` bytes in MiB, one decimal."""
    return f"{n / MIB:.1f} MiB"


def _time_cell(record: dict) -> str:
    """'backup / restore' seconds, or 'error'."""
    if "error" in record:
        return "error"
    return f"{record['backup_s']:.1f} / {record['restore_s']:.1f}"


def _grid(tree: dict, first: str, rows: Iterable[tuple[str, Callable[[dict], str]]]) -> list[str]:
    """A table with one column per way and one line per ``(name, cell of a way's record)``,
    followed by the oracle's line count and the times. Returns the lines."""
    ways = tree["ways"]
    width = max(19, *(len(w) for w in ways)) + 2
    rows = [
        *rows,
        ("rsync -aHAXn lines", lambda r: str(r.get("rsync", {}).get("lines", "-"))),
        ("backup / restore s", _time_cell),
    ]
    lines = [f"{first:22}" + "".join(f"{w:{width}}" for w in ways).rstrip()]
    for name, cell in rows:
        cells = ["error" if "error" in r else cell(r) for r in ways.values()]
        lines.append(f"{name:22}" + "".join(f"{c:{width}}" for c in cells).rstrip())
    return lines


def edge_table(tree: dict) -> list[str]:
    """The kept/lost table of the edge tree and its notes (every cell that is not kept,
    the ways' warnings, the oracle's lines and complaints). Returns the lines."""
    s = tree["summary"]
    rows = [(kind, functools.partial(_label_of, kind=kind)) for kind in KINDS]
    return [
        f"edge tree: {s['entries']} entries, {_mib(s['apparent_bytes'])} apparent, "
        f"{_mib(s['allocated_bytes'])} allocated, long path {s['long_path_bytes']} bytes",
        "",
        *_grid(tree, "kind", rows),
        *_notes(tree),
    ]


def _label_of(record: dict, kind: str) -> str:
    """The table cell of ``kind`` in a way's record."""
    return record["kinds"][kind]["label"]


def _count_of(record: dict, aspect: str) -> str:
    """The number of entries that differ in ``aspect`` in a way's record."""
    return str(record["counts"][aspect])


def _short(text: str, limit: int = 300) -> str:
    """``text`` on one line, long runs of one character elided, at most ``limit`` chars."""
    text = re.sub(r"(.)\1{11,}", r"\1…", " ".join(text.split()))
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _notes(tree: dict) -> list[str]:
    """Why each cell is not kept, what the ways warned about, what the oracle could not
    read. Returns the lines (none if there is nothing to say)."""
    notes = []
    for way, record in tree["ways"].items():
        if "error" in record:
            notes.append(f"  {way}: ERROR {_short(record['error'], 600)}")
            continue
        for kind, cell in record.get("kinds", {}).items():
            if cell["label"] != "kept":
                notes.append(f"  {way} / {kind}: {cell['label']}: {_short(cell['detail'])}")
        notes += [f"  {way}: {_short(note)}" for note in record.get("notes", [])]
        rsync = record.get("rsync", {})
        notes += [
            f"  {way}: rsync: {_short(line, 120)}" for line in rsync.get("first_lines", [])[:3]
        ]
        if rsync.get("returncode"):
            notes.append(f"  {way}: rsync exited {rsync['returncode']}: {_short(rsync['stderr'])}")
    return ["", "notes:", *notes] if notes else []


def system_table(tree: dict) -> list[str]:
    """The system tree's summary and table: per way, how many entries differ in each
    aspect, the oracle's line count and the times; then the notes. Returns the lines."""
    s = tree["summary"]
    rows = [(aspect, functools.partial(_count_of, aspect=aspect)) for aspect in SYSTEM_ASPECTS]
    return [
        f"system tree: {', '.join(s['copied'])}",
        f"  {s['entries']} entries ({s['files']} files, {s['directories']} directories, "
        f"{s['symlinks']} symlinks, {s['other']} other), {_mib(s['bytes'])} in files, "
        f"copied in {s['copy_s']} s",
        f"  set-uid files {s['set-uid files']}, set-gid files {s['set-gid files']}, "
        f"capability files {s['capability files']}, ACL entries {s['ACL entries']}, "
        f"other xattrs {s['other xattr entries']}, hard-linked files {s['hard-linked files']}",
        "",
        *_grid(tree, "entries that differ", rows),
        *_notes(tree),
    ]


def report(results: dict) -> str:
    """The tables of a run, as text."""
    lines = [f"pullback metadata fidelity, {results['cpus']} CPUs, {results['date']}", ""]
    if "edge" in results["trees"]:
        lines += [*edge_table(results["trees"]["edge"]), ""]
    if "system" in results["trees"]:
        lines += [*system_table(results["trees"]["system"]), ""]
    return "\n".join(lines).rstrip() + "\n"


def main(argv: list[str] | None = None) -> int:
    """Parse the arguments, run, print the report, save the results. Returns the exit code."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("/var/tmp/pullback-fidelity"))
    parser.add_argument("--tree", choices=["system", "edge", "both"], default="both")
    parser.add_argument("--no-save", action="store_true", help="do not write bench/results")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        parser.error("run as root: owners, set-id bits, capabilities and device nodes need it")
    trees = ["edge", "system"] if args.tree == "both" else [args.tree]
    results = run(args.work, trees, keep=args.keep)
    print(report(results))
    if not args.no_save:
        out = HERE / "results" / f"fidelity-{results['date']}.json"
        out.parent.mkdir(exist_ok=True)
        out.write_text(json.dumps(results, indent=2) + "\n")
        print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
