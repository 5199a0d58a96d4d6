"""POSIX ACLs between the kernel's xattr form and the text GNU tar stores.

An archive keeps a file's ACLs as ``SCHILY.acl.access`` / ``SCHILY.acl.default`` PAX
records in ``getfacl`` text form (what ``tar --acls`` writes and reads), not as the raw
``system.posix_acl_*`` attributes.
"""

from __future__ import annotations

import grp
import pwd
import struct

ACCESS_XATTR = "system.posix_acl_access"
DEFAULT_XATTR = "system.posix_acl_default"
PAX_KEYS = {ACCESS_XATTR: "SCHILY.acl.access", DEFAULT_XATTR: "SCHILY.acl.default"}

_VERSION = 2
_UNDEFINED_ID = 0xFFFFFFFF
_TAGS = {0x01: "user", 0x02: "user", 0x04: "group", 0x08: "group", 0x10: "mask", 0x20: "other"}
_QUALIFIED = {0x02, 0x08}


def _perm_text(perm: int) -> str:
    return ("r" if perm & 4 else "-") + ("w" if perm & 2 else "-") + ("x" if perm & 1 else "-")


def _user(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def _group(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


def to_text(value: bytes) -> str:
    """The ``getfacl``-style text of a ``system.posix_acl_*`` value. Raises ValueError."""
    if len(value) < 4 or (len(value) - 4) % 8 or struct.unpack_from("<I", value)[0] != _VERSION:
        raise ValueError("not a POSIX ACL attribute")
    lines = []
    for offset in range(4, len(value), 8):
        tag, perm, ident = struct.unpack_from("<HHI", value, offset)
        if tag not in _TAGS:
            raise ValueError(f"unknown ACL tag {tag:#x}")
        qualifier = ""
        if tag in _QUALIFIED:
            qualifier = _user(ident) if tag == 0x02 else _group(ident)
        lines.append(f"{_TAGS[tag]}:{qualifier}:{_perm_text(perm)}")
    return "\n".join(lines) + "\n"


def from_text(text: str) -> bytes:
    """The ``system.posix_acl_*`` value for ``getfacl``-style text. Raises ValueError."""
    order = {"user": 0x01, "group": 0x04, "mask": 0x10, "other": 0x20}
    entries = []
    for raw in text.replace(",", "\n").splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        kind, _, rest = line.partition(":")
        qualifier, _, perms = rest.partition(":")
        if kind not in order or len(perms) < 3:
            raise ValueError(f"bad ACL entry {line!r}")
        perm = (4 if "r" in perms else 0) | (2 if "w" in perms else 0) | (1 if "x" in perms else 0)
        tag, ident = order[kind], _UNDEFINED_ID
        if qualifier:
            tag = 0x02 if kind == "user" else 0x08
            if qualifier.isdigit():
                ident = int(qualifier)
            elif kind == "user":
                ident = pwd.getpwnam(qualifier).pw_uid
            else:
                ident = grp.getgrnam(qualifier).gr_gid
        entries.append((tag, ident, perm))
    entries.sort(key=lambda e: (e[0], e[1]))
    return struct.pack("<I", _VERSION) + b"".join(
        struct.pack("<HHI", tag, perm, ident) for tag, ident, perm in entries
    )
