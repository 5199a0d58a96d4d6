"""The SHA-256 whose state is saved and taken up again (libcrypto through ctypes): it
hashes as hashlib does wherever it is cut, and a state is taken up only for the size
and digest it hashed."""

from __future__ import annotations

import hashlib
import os
import struct

import pytest

from pullback.common.archive import sha256state

DATA = os.urandom(3 * 65536 + 77)


def test_it_is_available_here():
    """Debian 12's and PyPI's Python both link hashlib to libcrypto 3: the saving must
    not silently be lost on the systems pullback runs on."""
    assert sha256state.available()


@pytest.mark.parametrize("cut", [0, 1, 55, 63, 64, 65, 4096, 65536 + 3, len(DATA)])
def test_a_state_saved_anywhere_resumes_to_hashlibs_digest(cut):
    first = sha256state.new()
    assert first is not None
    first.update(DATA[:cut])
    assert first.hashed() == cut
    assert first.hexdigest() == hashlib.sha256(DATA[:cut]).hexdigest()
    taken = sha256state.resume(first.state(), cut, hashlib.sha256(DATA[:cut]).hexdigest())
    assert taken is not None
    taken.update(memoryview(DATA)[cut:])  # (not bytes: copied first)
    assert taken.hexdigest() == hashlib.sha256(DATA).hexdigest()
    # asking for the digest leaves the state alone
    first.update(DATA[cut:])
    assert first.hexdigest() == hashlib.sha256(DATA).hexdigest()


def test_a_state_is_taken_up_only_for_what_it_hashed():
    first = sha256state.new()
    assert first is not None
    first.update(DATA[:1000])
    state, digest = first.state(), hashlib.sha256(DATA[:1000]).hexdigest()
    assert sha256state.resume(state, 1000, digest) is not None
    assert sha256state.resume(state, 1001, digest) is None  # another size
    assert sha256state.resume(state, 1000, hashlib.sha256(b"other").hexdigest()) is None
    assert sha256state.resume(None, 1000, digest) is None
    assert sha256state.resume(state[:-1], 1000, digest) is None  # cut short
    assert sha256state.resume(b"XXXX" + state[4:], 1000, digest) is None  # not our tag
    # a state whose words were changed (bit count kept) finishes to another digest
    forged = bytearray(state)
    forged[4] ^= 1
    assert sha256state.resume(bytes(forged), 1000, digest) is None


def test_without_libcrypto_it_says_so(monkeypatch):
    monkeypatch.setattr(sha256state, "_candidates", lambda: ["/nonexistent/libcrypto.so"])
    monkeypatch.setattr(sha256state.ctypes.util, "find_library", lambda name: None)
    sha256state._library.cache_clear()
    sha256state.available.cache_clear()
    try:
        assert not sha256state.available()
        assert sha256state.new() is None
        assert sha256state.resume(b"PBS1" + bytes(112), 0, "") is None
    finally:
        sha256state._library.cache_clear()
        sha256state.available.cache_clear()


@pytest.mark.parametrize(
    "offset, value",
    [(104, 64), (104, 100_000), (104, 5), (108, 0), (108, 64), (32, 7)],
    ids=["num-64", "num-huge", "num-off", "md_len-0", "md_len-64", "bits-odd"],
)
def test_a_damaged_context_is_refused_before_openssl_sees_it(offset, value):
    """Found by an outside review: OpenSSL trusts the context's ``num`` (a value of 64
    or more made SHA256_Final write past the buffer: the process died) and ``md_len``
    (SHA256_Final failed with an OSError). The state's bookkeeping is checked first;
    a damaged one is only a state not used."""
    first = sha256state.new()
    assert first is not None
    first.update(DATA[:1000])
    state = bytearray(first.state())
    struct.pack_into("=I", state, len(sha256state.TAG) + offset, value)
    assert sha256state.resume(bytes(state), 1000, hashlib.sha256(DATA[:1000]).hexdigest()) is None


@pytest.mark.parametrize("state", ["text", 12, 3.5, bytearray(116)])
def test_a_state_that_is_not_bytes_is_not_used(state):
    assert sha256state.resume(state, 0, hashlib.sha256(b"").hexdigest()) is None
