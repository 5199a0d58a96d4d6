"""Build file trees with every kind of metadata, and compare two trees exactly."""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

from pullback.common.archive import acl


def make_rich_tree(root: Path, as_root: bool) -> Path:
    """A tree with nested dirs, odd names, links, modes, mtimes, xattrs, ACLs and owners."""
    (root / "etc" / "app").mkdir(parents=True)
    (root / "data" / "deep" / "er").mkdir(parents=True)
    (root / "etc" / "app" / "config.ini").write_text("[main]\nkey = value\n")
    (root / "data" / "deep" / "er" / "blob.bin").write_bytes(os.urandom(3 * 1024 * 1024 + 17))
    (root / "data" / "empty").write_bytes(b"")
    (root / "data" / "exact-block").write_bytes(b"x" * 512)
    (root / "data" / "name with spaces and ünïcödé").write_text("u")
    (root / "data" / "new\nline").write_text("n")
    os.makedirs(os.fsencode(root / "data") + b"/bad-\xff-utf8", exist_ok=True)
    (root / "data" / "secret.key").write_text("k")
    os.chmod(root / "data" / "secret.key", 0o600)
    os.chmod(root / "etc" / "app", 0o750)
    os.link(root / "etc" / "app" / "config.ini", root / "etc" / "app" / "hardlink.ini")
    os.symlink("config.ini", root / "etc" / "app" / "link.ini")
    os.symlink("/nonexistent/target", root / "data" / "dangling")
    os.setxattr(root / "data" / "empty", "user.origin", b"pullback-test")
    acl_text = "user::rw-\nuser:65534:r--\ngroup::r--\nmask::r--\nother::---\n"
    os.setxattr(root / "etc" / "app" / "config.ini", acl.ACCESS_XATTR, acl.from_text(acl_text))
    if as_root:
        os.chown(root / "data" / "secret.key", 1234, 4321)
        os.lchown(root / "data" / "dangling", 1234, 4321)
        os.chown(root / "etc" / "app", 0, 4321)
    os.utime(root / "data" / "empty", ns=(1_600_000_000_123_456_789, 1_600_000_000_123_456_789))
    os.utime(
        root / "etc" / "app" / "link.ini",
        ns=(1_500_000_000_000_000_001,) * 2,
        follow_symlinks=False,
    )
    os.utime(root / "data" / "deep", ns=(1_400_000_000_987_654_321,) * 2)
    return root


def _xattrs(path: Path) -> dict:
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError:
        return {}
    return {n: os.getxattr(path, n, follow_symlinks=False) for n in names}


def snapshot(root: Path) -> dict:
    """Everything that must survive a round trip, per relative path (bytes names)."""
    out = {}
    inodes: dict[int, bytes] = {}
    base = os.fsencode(root)
    for dirpath, dirnames, filenames in os.walk(base):
        for name in dirnames + filenames:
            full = os.path.join(dirpath, name)
            rel = os.path.relpath(full, base)
            st = os.lstat(full)
            entry = {
                "type": stat.S_IFMT(st.st_mode),
                "mode": stat.S_IMODE(st.st_mode),
                "uid": st.st_uid,
                "gid": st.st_gid,
                "xattrs": _xattrs(Path(os.fsdecode(full))),
            }
            entry["mtime_ns"] = st.st_mtime_ns
            if stat.S_ISLNK(st.st_mode):
                entry["target"] = os.readlink(full)
            elif stat.S_ISREG(st.st_mode):
                with open(full, "rb") as handle:
                    entry["data"] = handle.read()
                if st.st_nlink > 1:
                    entry["link_group"] = inodes.setdefault(st.st_ino, rel)
            out[rel] = entry
    return out


def differences(source: Path, restored: Path, delete: bool = True) -> list[str]:
    """What ``rsync -aHAXn --checksum --itemize-changes`` would change to make
    ``restored`` like ``source`` (empty: identical in content, owner, mode, mtime,
    symlink, hard link, ACL and extended attribute); ``delete``: entries only
    ``restored`` has count too."""
    argv = ["rsync", "-aHAXn", "--checksum", "--itemize-changes"]
    argv += ["--delete"] if delete else []
    out = subprocess.run([*argv, f"{source}/", f"{restored}/"], capture_output=True, check=True)
    return [line for line in os.fsdecode(out.stdout).splitlines() if line.strip()]


def make_edge(edge: Path) -> Path:
    """The directory ``edge`` with set-id files, a capability (``setcap``), a 64 MiB file
    holding 8 KiB (holes), a FIFO, a setgid and a sticky directory: what a restore must
    bring back bit for bit. Needs root."""
    edge.mkdir()
    su = edge / "su-like"
    su.write_bytes(b"#!/bin/sh\necho root\n")
    os.chmod(su, 0o4755)
    sg = edge / "sg-like"
    sg.write_bytes(b"#!/bin/sh\n")
    os.chmod(sg, 0o2711)
    ping = edge / "ping-like"
    ping.write_bytes(b"\x7fELF not really\n")
    os.chmod(ping, 0o755)
    subprocess.run(["setcap", "cap_net_raw+ep", str(ping)], check=True)
    with open(edge / "disk.img", "wb") as handle:  # 64 MiB apparent, 8 KiB of data
        handle.truncate(64 << 20)
        handle.seek(10 << 20)
        handle.write(b"d" * 8192)
    os.mkfifo(edge / "control.fifo")
    os.chmod(edge / "control.fifo", 0o620)
    (edge / "shared").mkdir()
    os.chmod(edge / "shared", 0o2775)
    (edge / "tmp").mkdir()
    os.chmod(edge / "tmp", 0o1777)
    return edge
