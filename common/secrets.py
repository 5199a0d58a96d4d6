"""Secret values that must never be shown: registered once, masked everywhere.

Every log record passes through :func:`mask` (see :mod:`pullback.common.log`), and the
command runner masks the command lines it logs and the output tails it raises with.
"""

from __future__ import annotations

import os
import stat
import threading
from pathlib import Path

from .errors import PullbackError

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


class SecretFileError(PullbackError):
    """A file holding a secret is missing, empty, unreadable or readable by others."""


def read_secret_file(path: str | os.PathLike, what: str = "password file") -> str:
    """The first line of a file holding a secret (a password, a token), registered so
    that it is masked from then on.

    One rule for every secret file: only its owner may read it. A file whose group or
    others have any permission is refused, whoever owns it, with the ``chmod`` that
    fixes it. Raises SecretFileError naming ``what`` and the path.
    """
    path = Path(path)
    try:
        mode = path.stat().st_mode
        if mode & 0o077:
            raise SecretFileError(
                f"the {what} {path} is readable by others (mode {stat.S_IMODE(mode):04o}); "
                f"run: chmod 600 {path}"
            )
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        raise SecretFileError(f"the {what} {path} does not exist") from None
    except (PermissionError, IsADirectoryError):
        raise SecretFileError(f"cannot read the {what} {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SecretFileError(f"cannot read the {what} {path}: {exc}") from None
    if not lines or not lines[0].strip():
        raise SecretFileError(f"the {what} {path} is empty")
    register(lines[0])
    return lines[0]


def forget_all() -> None:
    """Drop every registered secret (tests use this between cases)."""
    with _lock:
        _secrets.clear()
