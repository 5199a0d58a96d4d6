"""Secret values that must never be shown: registered once, masked everywhere.

Every log record passes through :func:`mask` (see :mod:`pullback.common.log`), and the
command runner masks the command lines it logs and the output tails it raises with.
"""

from __future__ import annotations

import threading

MASK = "******"
_MIN_LENGTH = 3  # masking "a" everywhere would make logs unreadable and hide nothing

_lock = threading.Lock()
_secrets: set[str] = set()


def register(*values: object) -> None:
    """Remember secret values so that :func:`mask` hides them from now on."""
    with _lock:
        for value in values:
            if isinstance(value, bytes):
                value = value.decode("utf-8", "replace")
            if isinstance(value, str):
                value = value.strip("\r\n")
                if len(value) >= _MIN_LENGTH:
                    _secrets.add(value)


def mask(text: str, extra: tuple[str, ...] | list[str] = ()) -> str:
    """Return ``text`` with every registered (and every ``extra``) secret replaced by a mask."""
    with _lock:
        values = sorted(_secrets.union(v for v in extra if v and len(v) >= _MIN_LENGTH), key=len)
    for value in reversed(values):  # longest first, so a secret containing another goes whole
        if value in text:
            text = text.replace(value, MASK)
    return text


def forget_all() -> None:
    """Drop every registered secret (tests use this between cases)."""
    with _lock:
        _secrets.clear()
