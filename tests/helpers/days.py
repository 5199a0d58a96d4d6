"""The bed of the multi-day randomized test (tests/integration/test_incremental_days.py).

- :class:`DayTree`: a client data tree (a few dozen files, a large text file, a binary
  file, a sparse image, hard links, symlinks, xattrs, ACLs, owners, old mtimes) and every
  change a day may bring, each choosing its target from the current tree with two drawn integers;
- :class:`DaysBed`: a fleet with one incremental host behind a real sshd, a real server
  with restic; runs the client and the server, records each day's tree by its archive's
  stamp, restores a snapshot and compares it with its day; can cut the transfer of one
  archive (the serve output goes through a wrapper that stops after N bytes).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import stat
import subprocess
import sys
import tarfile
from dataclasses import dataclass
from pathlib import Path

from pullback.common.archive import acl
from pullback.common.fsutil import make_hole
from tests.helpers.fleet import Fleet
from tests.helpers.tree import snapshot

HOST = "web1"
MiB = 1 << 20
BIG = "big.log"
"""The large text file (over 2 MiB of lines): chunked, travels as delta members."""
BLOB = "blob.bin"
"""The binary file (over 1 MiB, random bytes: no chunk list until its first change):
overwritten in place, and grown."""
IMAGE = "disk.img"
"""A sparse file (8 MiB or more, about 1 MiB of it data, like a VM image): chunked with
its holes, written in place, holes filled and punched, grown with a trailing hole."""
PROTECTED = frozenset({BIG, BLOB, IMAGE})
"""Never deleted, renamed or replaced (so that every day has large files to change)."""

WORDS = (
    *("alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india"),
    *("juliet", "kilo", "lima", "mike", "november", "oscar", "papa", "quebec", "romeo"),
    *("sierra", "tango", "uniform", "victor", "whiskey", "xray", "yankee", "zulu"),
    *("backup", "pull", "restic", "chain", "base", "archive", "manifest", "staging"),
)
FILE_MODES = (0o600, 0o640, 0o644, 0o664, 0o700, 0o755, 0o444, 0o2755)
DIR_MODES = (0o700, 0o750, 0o755, 0o775, 0o1777, 0o2770)
OWNERS = ((0, 0), (1234, 4321), (65534, 65534), (1000, 0), (0, 1000))
ACLS = (
    "user::rw-\nuser:1234:r--\ngroup::r--\nmask::r--\nother::---\n",
    "user::rwx\nuser:65534:rwx\ngroup::r-x\ngroup:4321:r--\nmask::rwx\nother::r--\n",
    "user::rw-\ngroup::---\ngroup:1000:rw-\nmask::rw-\nother::---\n",
)
DEFAULT_ACL = "user::rwx\nuser:1234:r-x\ngroup::r-x\nmask::r-x\nother::---\n"
OLD_NS = 1_200_000_000 * 10**9
"""Past mtimes start here (2008)."""

KINDS = (
    "add",
    "delete",
    "rename_file",
    "rename_dir",
    "chmod",
    "chown",
    "xattr",
    "acl",
    "hardlink",
    "break_link",
    "retarget",
    "append",
    "insert",
    "overwrite",
    "grow",
    "truncate",
    "file_to_dir",
    "dir_to_file",
    "mtime",
    "image",
)
"""The changes a day may bring (``DayTree.change(kind, a, b)``)."""


def text(rnd: random.Random, size: int, first: int = 0) -> bytes:
    """About ``size`` bytes of varied lines (content-defined chunking cuts after newlines)."""
    out, total, number = [], 0, first
    while total < size:
        line = f"{number:07d} {' '.join(rnd.choices(WORDS, k=rnd.randrange(2, 14)))}\n".encode()
        out.append(line)
        total += len(line)
        number += 1
    return b"".join(out)[:size]


def _pick(items: list, n: int):
    return items[n % len(items)] if items else None


def _unique(path: Path) -> Path:
    candidate, number = path, 2
    while os.path.lexists(candidate):
        candidate = path.with_name(f"{path.name}-{number}")
        number += 1
    return candidate


class DayTree:
    """The client's data directory and the changes made to it between days."""

    def __init__(self, root: Path, as_root: bool):
        self.root = root
        self.as_root = as_root

    # -- the first day ------------------------------------------------------------------

    def build(self, seed: int) -> None:
        rnd = random.Random(seed)
        root = self.root
        dirs = ["etc/app", "var/lib/app", "var/log", "home/ann/docs", "home/ann/music", "srv/www"]
        for rel in [*dirs, "srv/empty"]:
            (root / rel).mkdir(parents=True, exist_ok=True)
        for i in range(34):
            size = rnd.choice((0, 1, 100, 511, 512, 4096, rnd.randrange(8000)))
            (root / dirs[i % len(dirs)] / f"f{i:02d}.txt").write_bytes(text(rnd, size, i))
        (root / BIG).write_bytes(text(rnd, 2 * MiB + rnd.randrange(300_000)))
        (root / BLOB).write_bytes(rnd.randbytes(MiB + rnd.randrange(200_000)))
        with open(root / IMAGE, "wb") as image:
            for offset, data in ((0, rnd.randbytes(256 << 10)), (3 * MiB, text(rnd, 512 << 10))):
                image.seek(offset)
                image.write(data)
            image.seek(6 * MiB)
            image.write(rnd.randbytes(256 << 10))
            image.truncate(8 * MiB)
        (root / "home/ann/docs/name with spaces.txt").write_text("spaces\n")
        (root / "etc/app/ünïcödé.conf").write_text("[ü]\nkey = välue\n")
        os.link(root / "etc/app/f00.txt", root / "var/lib/app/f00.hard")
        os.link(root / "var/log/f02.txt", root / "var/log/f02.hard")
        os.symlink("../../etc/app/f06.txt", root / "srv/www/current")
        os.symlink("/nonexistent/target", root / "var/log/dangling")
        os.setxattr(root / "etc/app/f00.txt", "user.origin", b"day one")
        os.setxattr(root / "home/ann", "user.kind", b"home")
        os.setxattr(root / "etc/app/f06.txt", acl.ACCESS_XATTR, acl.from_text(ACLS[0]))
        os.setxattr(root / "var/lib/app", acl.DEFAULT_XATTR, acl.from_text(DEFAULT_ACL))
        if self.as_root:
            os.chown(root / "home/ann", 1000, 1000)
            os.chown(root / "home/ann/docs/f03.txt", 1000, 1000)
            os.lchown(root / "var/log/dangling", 1234, 4321)
        os.utime(root / "var/log/f08.txt", ns=(OLD_NS + 123_456_789,) * 2)
        os.utime(root / "srv/www/current", ns=(OLD_NS + 1,) * 2, follow_symlinks=False)
        os.utime(root / "srv/empty", ns=(OLD_NS + 987_654_321,) * 2)

    # -- the current tree ---------------------------------------------------------------

    def entries(self) -> tuple[list[Path], list[Path], list[Path]]:
        """Regular files, symlinks and directories (not the root), relative, sorted."""
        files, links, dirs = [], [], []
        for dirpath, dirnames, filenames in os.walk(self.root):
            for name in dirnames + filenames:
                path = Path(dirpath) / name
                mode = os.lstat(path).st_mode
                rel = path.relative_to(self.root)
                if stat.S_ISLNK(mode):
                    links.append(rel)
                elif stat.S_ISDIR(mode):
                    dirs.append(rel)
                elif stat.S_ISREG(mode):
                    files.append(rel)
        return sorted(files), sorted(links), sorted(dirs)

    def _movable(self) -> tuple[list[Path], list[Path], list[Path]]:
        """Like :meth:`entries`, without the protected files."""
        files, links, dirs = self.entries()
        return [f for f in files if str(f) not in PROTECTED], links, dirs

    def change(self, kind: str, a: int, b: int) -> str:
        """Make one change; return what was done (for the failure's story)."""
        return getattr(self, f"_{kind}")(a, b, random.Random(a * 1_000_003 + b))

    # -- the changes: each picks its target with a and b ---------------------------------

    def _add(self, a, b, rnd):
        _, _, dirs = self.entries()
        parent = self.root / (_pick([Path("."), *dirs], a))
        path = _unique(parent / f"new-{b % 100_000}.txt")
        path.write_bytes(text(rnd, b % 20_000, b % 1000))
        return f"add {path.relative_to(self.root)}"

    def _delete(self, a, b, rnd):
        files, links, _ = self._movable()
        target = _pick(files + links, a)
        if target is None:
            return "delete: nothing to delete"
        os.unlink(self.root / target)
        return f"delete {target}"

    def _rename_file(self, a, b, rnd):
        files, links, dirs = self._movable()
        source = _pick(files + links, a)
        if source is None:
            return "rename: nothing to rename"
        parent = self.root / _pick([Path("."), *dirs], b)
        target = _unique(parent / f"{source.name}.r{b % 1000}")
        os.rename(self.root / source, target)
        return f"rename {source} -> {target.relative_to(self.root)}"

    def _rename_dir(self, a, b, rnd):
        _, _, dirs = self.entries()
        source = _pick(dirs, a)
        if source is None:
            return "rename dir: no directory"
        parents = [Path("."), *(d for d in dirs if d != source and source not in d.parents)]
        parent = self.root / _pick(parents, b)
        target = _unique(parent / f"{source.name}.m{b % 1000}")
        os.rename(self.root / source, target)
        return f"rename dir {source} -> {target.relative_to(self.root)}"

    def _chmod(self, a, b, rnd):
        files, _, dirs = self.entries()
        target = _pick(files + dirs, a)
        path = self.root / target
        current = stat.S_IMODE(os.lstat(path).st_mode)
        modes = DIR_MODES if path.is_dir() else FILE_MODES
        mode = modes[b % len(modes)]
        if mode == current:
            mode = modes[(b + 1) % len(modes)]
        os.chmod(path, mode)
        return f"chmod {mode:o} {target}"

    def _chown(self, a, b, rnd):
        if not self.as_root:
            return self._chmod(a, b, rnd)
        files, links, dirs = self.entries()
        target = _pick(files + links + dirs, a)
        st = os.lstat(self.root / target)
        owner = OWNERS[b % len(OWNERS)]
        if owner == (st.st_uid, st.st_gid):
            owner = OWNERS[(b + 1) % len(OWNERS)]
        os.lchown(self.root / target, *owner)
        return f"chown {owner[0]}:{owner[1]} {target}"

    def _xattr(self, a, b, rnd):
        files, _, dirs = self.entries()
        target = _pick(files + dirs, a)
        path = self.root / target
        names = sorted(n for n in os.listxattr(path) if n.startswith("user."))
        if names and b % 3 == 0:
            name = names[b % len(names)]
            os.removexattr(path, name)
            return f"removexattr {name} {target}"
        name = f"user.k{b % 4}"
        value = rnd.randbytes(b % 64)
        try:
            if os.getxattr(path, name) == value:
                value += b"!"
        except OSError:
            pass
        os.setxattr(path, name, value)
        return f"setxattr {name}={value!r} {target}"

    def _acl(self, a, b, rnd):
        files, _, dirs = self.entries()
        target = _pick(files + dirs, a)
        path = self.root / target
        if path.is_dir() and b % 3 == 0:
            os.setxattr(path, acl.DEFAULT_XATTR, acl.from_text(DEFAULT_ACL))
            return f"default ACL {target}"
        if acl.ACCESS_XATTR in os.listxattr(path) and b % 4 == 1:
            os.removexattr(path, acl.ACCESS_XATTR)
            return f"remove ACL {target}"
        os.setxattr(path, acl.ACCESS_XATTR, acl.from_text(ACLS[b % len(ACLS)]))
        return f"ACL {b % len(ACLS)} {target}"

    def _hardlink(self, a, b, rnd):
        files, _, dirs = self.entries()
        source = _pick(files, a)
        if source is None:
            return "hard link: no file"
        parent = self.root / _pick([Path("."), *dirs], b)
        target = _unique(parent / f"{source.name}.h{b % 1000}")
        os.link(self.root / source, target)
        return f"hard link {source} -> {target.relative_to(self.root)}"

    def _break_link(self, a, b, rnd):
        files, _, _ = self.entries()
        linked = [f for f in files if os.lstat(self.root / f).st_nlink > 1]
        target = _pick(linked, a)
        if target is None:
            return self._hardlink(a, b, rnd)
        path = self.root / target
        copy = _unique(path.with_name(f".copy-{b % 1000}"))
        shutil.copy2(path, copy)
        os.rename(copy, path)
        return f"break hard link {target}"

    def _retarget(self, a, b, rnd):
        files, links, dirs = self.entries()
        if not links:
            parent = self.root / _pick([Path("."), *dirs], a)
            link = _unique(parent / f"link-{b % 1000}")
            old = None
        else:
            link = self.root / _pick(links, a)
            old = os.readlink(link)
        choice = _pick(files, b)
        target = (
            os.path.relpath(self.root / choice, link.parent)
            if choice is not None and b % 5
            else f"../missing-{b % 1000}"
        )
        if target == old:
            target = f"{target}.not"
        if old is not None:
            os.unlink(link)
        os.symlink(target, link)
        return f"symlink {link.relative_to(self.root)} -> {target}"

    def _append(self, a, b, rnd):
        data = text(rnd, 80 * (1 + a % 300), b % 100_000)
        with open(self.root / BIG, "ab") as handle:
            handle.write(data)
        return f"append {len(data)} bytes to {BIG}"

    def _insert(self, a, b, rnd):
        path = self.root / BIG
        data = path.read_bytes()
        newline = data.find(b"\n", a % max(len(data), 1))
        at = newline + 1 if newline >= 0 else len(data)
        inserted = text(rnd, 60 * (1 + b % 40), b % 100_000)
        with open(path, "r+b") as handle:
            handle.seek(at)
            handle.write(inserted + data[at:])
        return f"insert {len(inserted)} bytes at {at} of {BIG}"

    def _overwrite(self, a, b, rnd):
        path = self.root / BLOB
        size = path.stat().st_size
        if not size:
            path.write_bytes(rnd.randbytes(MiB + 1))
            return f"refill {BLOB}"
        at = a % size
        length = min(1 + b % 300, size - at)
        with open(path, "r+b") as handle:
            handle.seek(at)
            old = handle.read(length)
            handle.seek(at)
            handle.write(bytes(x ^ (1 + i % 255) for i, x in enumerate(old)))
        return f"overwrite {length} bytes at {at} of {BLOB}"

    def _grow(self, a, b, rnd):
        data = rnd.randbytes(1 + b % (512 << 10))
        with open(self.root / BLOB, "ab") as handle:
            handle.write(data)
        return f"append {len(data)} random bytes to {BLOB}"

    def _image(self, a, b, rnd):
        path = self.root / IMAGE
        size = path.stat().st_size
        at = (a % size) & ~4095
        fd = os.open(path, os.O_RDWR)
        try:
            how = b % 4
            if how == 0:
                data = rnd.randbytes(4096 * (1 + b % 16))
                os.pwrite(fd, data, at)
                return f"write {len(data)} bytes at {at} of {IMAGE}"
            if how == 1:
                length = 65536 * (1 + b % 16)
                make_hole(fd, at, length)
                return f"punch a hole of {length} bytes at {at} of {IMAGE}"
            if how == 2:
                os.ftruncate(fd, size + MiB * (1 + b % 3))
                return f"grow {IMAGE} by a hole to {os.fstat(fd).st_size}"
            os.pwrite(fd, b"rewritten in place\n" * 50, a % (200 << 10))
            return f"rewrite 1000 bytes at {a % (200 << 10)} of {IMAGE}"
        finally:
            os.close(fd)

    def _truncate(self, a, b, rnd):
        files, _, _ = self.entries()
        sizes = {f: os.lstat(self.root / f).st_size for f in files}
        candidates = [f for f in files if sizes[f] > (MiB + 1 if str(f) in PROTECTED else 0)]
        target = _pick(candidates, a)
        if target is None:
            return "truncate: nothing to truncate"
        size = sizes[target]
        new = MiB + b % (size - MiB) if str(target) in PROTECTED else b % size
        os.truncate(self.root / target, new)
        return f"truncate {target} {size} -> {new}"

    def _file_to_dir(self, a, b, rnd):
        files, links, _ = self._movable()
        target = _pick(files + links, a)
        if target is None:
            return "file to dir: no file"
        path = self.root / target
        os.unlink(path)
        path.mkdir()
        (path / "inside.txt").write_bytes(text(rnd, b % 3000))
        return f"file -> dir {target}"

    def _dir_to_file(self, a, b, rnd):
        _, _, dirs = self.entries()
        target = _pick(dirs, a)
        if target is None:
            return "dir to file: no directory"
        path = self.root / target
        shutil.rmtree(path)
        path.write_bytes(text(rnd, b % 3000))
        return f"dir -> file {target}"

    def _mtime(self, a, b, rnd):
        files, links, dirs = self.entries()
        target = _pick(files + links + dirs, a)
        path = self.root / target
        when = OLD_NS + b * 1_000_003
        if os.lstat(path).st_mtime_ns == when:
            when += 1
        os.utime(path, ns=(when, when), follow_symlinks=False)
        return f"mtime {when} {target}"


# -- comparing trees ------------------------------------------------------------------------


def canonical(tree: dict) -> dict:
    """A :func:`tests.helpers.tree.snapshot` that two walks in different directory orders
    agree on: a hard-link group is named by its smallest path (not the first walked), and
    content by its sha256 and size."""
    groups: dict[bytes, list[bytes]] = {}
    for rel, entry in tree.items():
        if "link_group" in entry:
            groups.setdefault(entry["link_group"], []).append(rel)
    out = {}
    for rel, entry in tree.items():
        entry = dict(entry)
        if "data" in entry:
            data = entry.pop("data")
            entry["size"], entry["sha256"] = len(data), hashlib.sha256(data).hexdigest()
        if "link_group" in entry:
            entry["link_group"] = min(groups[entry["link_group"]])
        out[rel] = entry
    return out


def differences(expected: dict, actual: dict, limit: int = 12) -> list[str]:
    """What differs between two canonical trees, a line per path (at most ``limit``)."""
    lines = []
    for rel in sorted(set(expected) | set(actual)):
        want, got = expected.get(rel), actual.get(rel)
        if want == got:
            continue
        if want is None or got is None:
            lines.append(f"{rel!r}: {'only restored' if want is None else 'missing'}")
        else:
            keys = sorted(k for k in set(want) | set(got) if want.get(k) != got.get(k))
            shown = ", ".join(f"{k}: {want.get(k)!r} != {got.get(k)!r}" for k in keys)
            lines.append(f"{rel!r}: {shown[:400]}")
    return lines[:limit] + ([f"... {len(lines) - limit} more"] if len(lines) > limit else [])


# -- the fleet --------------------------------------------------------------------------------

CUTTER = """\
import os, subprocess, sys
config, cut_file = sys.argv[1], sys.argv[2]
argv = [sys.executable, "-m", "pullback.client.cli", "--config", config, "serve"]
words = os.environ.get("SSH_ORIGINAL_COMMAND", "").split()
try:
    with open(cut_file) as handle:
        name, limit = handle.read().split()
except OSError:
    name, limit = None, 0
limit = int(limit)


def copy(source, count):
    # count bytes from source to our output; returns how many came
    sent = 0
    while sent < count:
        data = os.read(source, min(65536, count - sent))
        if not data:
            break
        os.write(1, data)
        sent += len(data)
    return sent


if name is not None and words == ["session"]:
    # a session: its requests pass through; the answer to send <name> 0 stops after
    # limit bytes of the archive, and the connection with it
    serve = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    out = serve.stdout.fileno()
    for line in sys.stdin.buffer:
        serve.stdin.write(line)
        serve.stdin.flush()
        head = b""
        while not head.endswith(b"\\n"):
            byte = os.read(out, 1)
            if not byte:
                sys.exit(1)
            head += byte
        os.write(1, head)
        length = int(head.split()[1]) if head.startswith(b"ok ") else 0
        if line.split() == [b"send", name.encode(), b"0"] and length:
            os.unlink(cut_file)
            copy(out, min(length, limit))
            serve.kill()
            sys.exit(1)
        copy(out, length)
    serve.stdin.close()
    sys.exit(serve.wait())
if len(words) != 3 or words[0] != "send" or words[1] != name or words[2] != "0":
    os.execv(sys.executable, argv)
os.unlink(cut_file)
serve = subprocess.Popen(argv, stdout=subprocess.PIPE)
copy(serve.stdout.fileno(), limit)
serve.kill()
serve.wait()
"""
"""The forced command: ``pullback-client serve``, except for the one ``send <name> 0`` the
cut file names, whose output stops after the given number of bytes (a cut connection),
asked on its own or in a session."""


@dataclass
class Day:
    """One client run: its archive and the tree it was made of."""

    number: int
    archive: str
    stamp: str
    kind: str
    tree: dict


@dataclass
class Pulled:
    rc: int
    log: str
    status: dict


class DaysBed:
    """One incremental host (real sshd, real client) and a real server with restic."""

    def __init__(self, root: Path, seed: int):
        self.root = root
        self.fleet = Fleet(root / "fleet")
        self.host = self.fleet.add_host(HOST)
        self.cache_dir = root / "cache"
        self.host.client.write_config(
            incremental={"enabled": True, "cache_dir": str(self.cache_dir)}
        )
        self.tree = DayTree(self.host.data, as_root=os.geteuid() == 0)
        self.tree.build(seed)
        self.cut_file = root / "cut"
        cutter = root / "cutter.py"
        cutter.write_text(CUTTER)
        sshd = self.host.sshd
        sshd.forced_command = f"{sys.executable} {cutter} {self.host.client.config} {self.cut_file}"
        sshd.stop()
        sshd.start()  # same port and host key: known_hosts still holds
        self.days: dict[str, Day] = {}
        """Every client run's day, by its archive's stamp."""
        self.stored: dict[str, str] = {}
        """The stamp of every snapshot stored, by its (short) id."""

    # -- paths ----------------------------------------------------------------------------

    @property
    def archives(self) -> Path:
        return self.host.client.archives

    @property
    def want_full(self) -> Path:
        return self.archives / ".fetched-marks" / "want-full"

    @property
    def staging(self) -> Path:
        return self.fleet.state / "staging" / HOST

    @property
    def staging_index(self) -> Path:
        return self.fleet.state / "staging" / f"{HOST}.index.db"

    @property
    def partial_dir(self) -> Path:
        return self.fleet.state / "partial" / HOST

    def stop(self) -> None:
        self.fleet.stop()

    # -- the client -------------------------------------------------------------------------

    def run_client(self, *args: str) -> dict:
        """Run the client; record the day (its tree after the run); return the sidecar."""
        before = set(self.host.client.published())
        result = self.host.client.cli("run", *args)
        assert result.returncode == 0, result.stderr
        new = set(self.host.client.published()) - before
        assert len(new) == 1, (new, result.stderr)
        side = self.host.client.sidecar(new.pop())
        stamp = side["stamp"]
        self.days[stamp] = Day(
            len(self.days) + 1,
            side["archive"]["name"],
            stamp,
            side["archive"].get("kind", "full"),
            canonical(snapshot(self.host.data)),
        )
        return side

    def client_sidecars(self) -> dict[str, dict]:
        """The sidecars of the archives the client lists, by archive name."""
        return {p.name: self.host.client.sidecar(p) for p in self.host.client.published()}

    def members(self, name: str) -> dict[str, tuple[str, str]]:
        """Regular-file members of the client's archive ``name``: where their bytes come
        from (``PULLBACK.data``: full, base, same or delta) and the name of the base's file they
        are taken from (``PULLBACK.base`` of a renamed file, else their own)."""
        path = self.archives / name
        side = self.host.client.sidecar(path)
        tool = {"zstd": ["zstd", "-q", "-d", "-c"], "gzip": ["gzip", "-d", "-c"]}
        with subprocess.Popen(
            [*tool[side["archive"]["compression"]], str(path)], stdout=subprocess.PIPE
        ) as proc:
            assert proc.stdout is not None
            with tarfile.open(fileobj=proc.stdout, mode="r|") as tar:
                found = {
                    m.name: (
                        m.pax_headers.get("PULLBACK.data", "full"),
                        m.pax_headers.get("PULLBACK.base", m.name),
                    )
                    for m in tar
                    if m.isreg()
                }
        return found

    def flip_byte(self, name: str, offset: int) -> None:
        with open(self.archives / name, "r+b") as handle:
            handle.seek(offset)
            byte = handle.read(1)
            handle.seek(offset)
            handle.write(bytes([byte[0] ^ 0xFF]))

    # -- the server ------------------------------------------------------------------------

    def pull(self, *args: str) -> Pulled:
        result = self.fleet.server("pull", "--host", HOST, *args)
        return Pulled(result.returncode, result.stderr, self.pull_status())

    def pull_status(self) -> dict:
        """The host's entry of the server's status.json."""
        return json.loads((self.fleet.state / "status.json").read_text())["hosts"][HOST]

    def cut_next_transfer(self, name: str, after: int) -> None:
        """The next ``send name 0`` stops after ``after`` bytes."""
        self.cut_file.write_text(f"{name} {after}\n")

    def snapshots(self) -> list[dict]:
        return self.fleet.snapshots(HOST)

    def restored_tree(self, snapshot_id: str) -> dict:
        """Restore a snapshot, check its MANIFEST.sha256, return its data tree."""
        target = self.root / "restore"
        shutil.rmtree(target, ignore_errors=True)
        try:
            subprocess.run(
                ["restic", "restore", snapshot_id, "--target", str(target)],
                env=self.fleet.repo_env(HOST),
                capture_output=True,
                check=True,
            )
            (manifest,) = list(target.rglob("MANIFEST.sha256"))
            check = subprocess.run(
                ["sha256sum", "--check", "--strict", "--quiet", "MANIFEST.sha256"],
                cwd=manifest.parent,
                capture_output=True,
                text=True,
            )
            assert check.returncode == 0, check.stdout + check.stderr
            files = manifest.parent / "services/app/files" / str(self.host.data).lstrip("/")
            return canonical(snapshot(files))
        finally:
            shutil.rmtree(target, ignore_errors=True)

    def check_snapshot(self, snapshot_id: str, stamp: str) -> None:
        """The snapshot restores to exactly the tree of the day whose archive has ``stamp``."""
        day = self.days[stamp]
        diff = differences(day.tree, self.restored_tree(snapshot_id))
        story = "\n".join(diff)
        assert not diff, f"snapshot {snapshot_id} is not day {day.number} ({stamp}):\n{story}"
