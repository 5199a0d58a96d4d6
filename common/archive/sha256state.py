"""SHA-256 whose state can be saved and taken up again: a file that only grew is hashed
by its new bytes (docs/architecture.md, *Hash states of grown files*).

``hashlib`` cannot save a hash's state, so this drives OpenSSL's ``SHA256_Init``,
``SHA256_Update`` and ``SHA256_Final`` (libcrypto, the library hashlib itself uses)
through :mod:`ctypes`, keeping the context (``SHA256_CTX``, 112 plain bytes) in a buffer
of its own. A saved state is those bytes behind :data:`TAG`.

Nothing here is trusted blindly: the functions are checked against ``hashlib`` once per
process (:func:`available`: False when libcrypto or its functions are missing, or when
they disagree), and a state is taken up again only when it hashed exactly the bytes the
caller says and finishes to the digest the caller knows for them (:func:`resume`). A
state that fails either is not used; the caller hashes the whole file as before.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
import hashlib
import sqlite3
import struct

TAG = b"PBS1"
"""What a saved state begins with (its layout: :data:`CTX_SIZE` bytes of ``SHA256_CTX``)."""
CTX_SIZE = 112
"""``SHA256_CTX``: eight 32-bit words of state, the bit count (two words), a 64-byte
block being filled, its fill and the digest length."""
_BUFFER = 256
"""Bytes given to OpenSSL for a context (more than it writes: :func:`_self_test` checks
that it writes no more than :data:`CTX_SIZE`)."""
_BITS = struct.Struct("=II")
"""The bit count's two words (low, high) at offset 32 of the context."""
_FILL = struct.Struct("=II")
"""``num`` (bytes of the 64-byte block filled) and ``md_len`` (the digest's length) at
offset 104: OpenSSL trusts both (a ``num`` of 64 or more makes ``SHA256_Final`` write
past the context), so a saved state must have them right before it is used."""
_FILL_AT = 104
DIGEST_SIZE = 32


def _candidates() -> list[str]:
    """Where libcrypto's functions may be looked up, the cheapest first: hashlib's own
    extension (its symbols resolve to the very libcrypto hashlib uses), then the library
    by its Debian 12 name, then by a search (``ldconfig -p``: a process start)."""
    names = []
    try:
        import _hashlib

        names.append(_hashlib.__file__)
    except (ImportError, AttributeError):
        pass
    names.append("libcrypto.so.3")
    return names


def _functions(name: str):
    """SHA256_Init, SHA256_Update and SHA256_Final of the library ``name``, or None."""
    try:
        lib = ctypes.CDLL(name)  # a CDLL releases the GIL while OpenSSL hashes
        return lib.SHA256_Init, lib.SHA256_Update, lib.SHA256_Final
    except (OSError, AttributeError):
        return None


@functools.cache
def _library():
    """libcrypto's three functions, typed, or None when they cannot be had."""
    found = None
    for name in _candidates():
        found = found or _functions(name)
    if found is None:
        searched = ctypes.util.find_library("crypto")
        found = _functions(searched) if searched else None
    if found is None:
        return None
    init, update, final = found
    init.argtypes, init.restype = [ctypes.c_void_p], ctypes.c_int
    update.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_size_t]
    update.restype = ctypes.c_int
    final.argtypes, final.restype = [ctypes.c_char_p, ctypes.c_void_p], ctypes.c_int
    return init, update, final


class ResumableSha256:
    """A SHA-256 with ``update`` and ``hexdigest`` like hashlib's, and :meth:`state`.
    Make one with :func:`new` or :func:`resume`."""

    def __init__(self, functions, ctx: ctypes.Array):
        _, self._update, self._final = functions
        self._ctx = ctx

    def update(self, data) -> None:
        """Hash ``data`` (bytes, or anything with the buffer protocol: a writable one,
        such as a view of a bytearray, without a copy)."""
        if not isinstance(data, bytes):
            view = memoryview(data).cast("B")
            try:
                data = (ctypes.c_char * len(view)).from_buffer(view)
            except TypeError:  # read-only
                data = bytes(view)
        if len(data) and self._update(self._ctx, data, len(data)) != 1:
            raise OSError("SHA256_Update failed")

    def state(self) -> bytes:
        """The state after what was hashed so far, to :func:`resume` later."""
        return TAG + self._ctx.raw[:CTX_SIZE]

    def hashed(self) -> int:
        """How many bytes were hashed."""
        low, high = _BITS.unpack_from(self._ctx.raw, 32)
        return ((high << 32) | low) // 8

    def whole(self) -> bool:
        """Whether the context's own bookkeeping agrees with the bytes it counts hashed
        (what makes it safe to hand to OpenSSL)."""
        bits_low, _ = _BITS.unpack_from(self._ctx.raw, 32)
        num, md_len = _FILL.unpack_from(self._ctx.raw, _FILL_AT)
        return bits_low % 8 == 0 and num == self.hashed() % 64 and md_len == DIGEST_SIZE

    def digest(self) -> bytes:
        """The digest of what was hashed so far (the state is left as it is)."""
        copy = ctypes.create_string_buffer(self._ctx.raw, _BUFFER)
        out = ctypes.create_string_buffer(32)
        if self._final(out, copy) != 1:
            raise OSError("SHA256_Final failed")
        return out.raw

    def hexdigest(self) -> str:
        return self.digest().hex()


def hasher(resumable: bool):
    """A sha256 with ``update`` and ``hexdigest``: one whose state can be saved when
    ``resumable`` is asked for and :func:`available`, else hashlib's."""
    if resumable:
        made = new()
        if made is not None:
            return made
    return hashlib.sha256()


def state_of(digest) -> bytes | None:
    """The state of ``digest`` when it is a resumable one (:func:`hasher`), else None."""
    return digest.state() if isinstance(digest, ResumableSha256) else None


def new() -> ResumableSha256 | None:
    """A fresh hash, or None when :func:`available` is False."""
    if not available():
        return None
    functions = _library()
    ctx = ctypes.create_string_buffer(_BUFFER)
    if functions[0](ctx) != 1:
        return None
    return ResumableSha256(functions, ctx)


def resume(state: object, size: int, sha256: str) -> ResumableSha256 | None:
    """The hash taken up from ``state``, when it hashed exactly ``size`` bytes whose
    digest is ``sha256`` (hex); None otherwise (no state, not bytes of this format, a
    context whose bookkeeping is off, not available here). Never raises: a state is a
    saving, and a damaged one only costs reading the file whole."""
    if not isinstance(state, bytes) or len(state) != len(TAG) + CTX_SIZE:
        return None
    if not state.startswith(TAG) or not available():
        return None
    ctx = ctypes.create_string_buffer(state[len(TAG) :], _BUFFER)
    taken = ResumableSha256(_library(), ctx)
    if taken.hashed() != size or not taken.whole():
        return None
    try:
        return taken if taken.hexdigest() == sha256 else None
    except OSError:
        return None


@functools.cache
def available() -> bool:
    """Whether libcrypto's SHA-256 is here and hashes as hashlib does, a state saved
    midway included (checked once per process)."""
    functions = _library()
    return functions is not None and _self_test(functions)


def _self_test(functions) -> bool:
    init, update, _ = functions
    data = bytes(range(256)) * 5  # 1280 bytes: whole blocks and a part
    for cut in (0, 1, 63, 64, 65, 700, len(data)):
        ctx = ctypes.create_string_buffer(b"\xa5" * _BUFFER, _BUFFER)
        if init(ctx) != 1 or update(ctx, data[:cut], cut) != 1:
            return False
        if ctx.raw[CTX_SIZE:] != b"\xa5" * (_BUFFER - CTX_SIZE):
            return False  # a context larger than the layout this module saves
        taken = ResumableSha256(functions, ctypes.create_string_buffer(ctx.raw[:CTX_SIZE], _BUFFER))
        if taken.hashed() != cut or not taken.whole():
            return False  # (the layout this module reads is not this OpenSSL's)
        taken.update(data[cut:])
        if taken.digest() != hashlib.sha256(data).digest():
            return False
    return True


def carry_states(db: sqlite3.Connection, old: str) -> None:
    """Copy into ``db``'s table ``states`` the states the database file ``old`` (an older
    index or file cache: tables ``files`` with ``name`` and ``sha256``, and ``states``)
    has for the names whose digest ``db``'s ``files`` still gives them, where ``db`` has
    none yet. Call it outside a transaction (ATTACH cannot be inside one). States are a
    saving, never needed: an ``old`` that cannot be read, or has no states (an older
    pullback's), leaves them out."""
    try:
        db.execute("ATTACH DATABASE ? AS old", (old,))  # (only read)
    except sqlite3.Error:
        return
    try:
        db.execute(
            "INSERT OR IGNORE INTO states (name, state) SELECT s.name, s.state "
            "FROM old.states s JOIN old.files o ON o.name = s.name "
            "JOIN files f ON f.name = s.name WHERE f.sha256 = o.sha256"
        )
    except sqlite3.Error:
        pass
    finally:
        with contextlib.suppress(sqlite3.Error):
            db.execute("DETACH DATABASE old")
