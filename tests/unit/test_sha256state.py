"""The SHA-256 whose state is saved and taken up again (libcrypto through ctypes): it
hashes as hashlib does wherever it is cut, and a state is taken up only for the size
and digest it hashed."""

from __future__ import annotations

import hashlib
import os

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
