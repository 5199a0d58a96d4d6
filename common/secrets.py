"""Secret values that must never be shown: registered once, masked everywhere.

Every log record passes through :func:`mask` (see :mod:`pullback.common.log`), and the
command runner masks the command lines it logs and the output tails it raises with.
"""

from __future__ import annotations

import os
import re
import stat
import threading
from pathlib import Path

from .errors import PullbackError

MASK = "******"
_MIN_LENGTH = 3  # masking "a" everywhere would make logs unreadable and hide nothing

_lock = threading.Lock()
_secrets: set[str] = set()
_NUMBER = re.compile(r"-?[0-9]+(?:\.[0-9]+)?")
"""A secret of this shape (a PIN, a number under a command's environment) is masked
where it stands as a whole number (:func:`mask`)."""


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
    """Return ``text`` with every registered (and every ``extra``) secret replaced by a
    mask. A secret that is a number (a PIN: digits, perhaps a sign and a fraction) is
    masked where it stands as a whole number, not inside a longer one (``4711`` in
    ``port 4711``, not in ``47110 bytes``; ``0.5`` not in ``10.5``), so that a short
    one leaves the other numbers of a line readable."""
    with _lock:
        values = sorted(_secrets.union(v for v in extra if v and len(v) >= _MIN_LENGTH), key=len)
    numbers = []
    for value in reversed(values):  # longest first, so a secret containing another goes whole
        if _NUMBER.fullmatch(value):
            numbers.append(re.escape(value))
        elif value in text:
            text = text.replace(value, MASK)
    if numbers and any(c.isdigit() for c in text):
        text = re.sub(rf"(?<![0-9])(?:{'|'.join(numbers)})(?![0-9])", MASK, text)
    return text


class SecretFileError(PullbackError):
    """A file holding a secret is missing, empty, unreadable or readable by others."""


MAX_SECRET_FILE = 64 << 10
"""Bytes of a secret file read: its first line is all that is used."""


def read_secret_file(
    path: str | os.PathLike, what: str = "password file", *, register_line: bool = True
) -> str:
    """The first line of a file holding a secret (a password, a token), registered so
    that it is masked from then on (not with ``register_line=False``: a repository
    location file, whose only secret is its URL's password, registered by its reader).

    One rule for every secret file: only its owner may read it. A file whose group or
    others have any permission is refused, whoever owns it, with the ``chmod`` that
    fixes it. Raises SecretFileError naming ``what`` and the path.
    """
    path = Path(path)
    try:
        mode = path.stat().st_mode
        if not stat.S_ISREG(mode):  # a FIFO or a device would hang or flood the reader
            raise SecretFileError(f"the {what} {path} is not a regular file")
        if mode & 0o077:
            raise SecretFileError(
                f"the {what} {path} is readable by others (mode {stat.S_IMODE(mode):04o}); "
                f"run: chmod 600 {path}"
            )
        with path.open("rb") as file:  # one line is wanted: a huge file is not read whole
            lines = file.read(MAX_SECRET_FILE).decode().splitlines()
    except FileNotFoundError:
        raise SecretFileError(f"the {what} {path} does not exist") from None
    except (PermissionError, IsADirectoryError):
        raise SecretFileError(f"cannot read the {what} {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SecretFileError(f"cannot read the {what} {path}: {exc}") from None
    if not lines or not lines[0].strip():
        raise SecretFileError(f"the {what} {path} is empty")
    if register_line:
        register(lines[0])
    return lines[0]


def forget_all() -> None:
    """Drop every registered secret (tests use this between cases)."""
    with _lock:
        _secrets.clear()


_HEAD = r"(?:(?:[a-z0-9]+:)?[A-Za-z][A-Za-z0-9+.-]*://|rest:)"
"""A URL's ``scheme://``, with restic's ``rest:`` before it, or ``rest:`` alone."""
_USERINFO = re.compile(rf"^(?P<head>{_HEAD})(?P<user>[^/:]*):(?P<password>.*)@")
"""A URL's ``scheme://user:password@``, with restic's ``rest:`` prefix before it (or
``rest:user:password@`` with no scheme at all: restic prints that line back whole, "unsupported
protocol scheme"). The user may hold ``@`` (``backup@corp``: restic reads the user
information to the last ``@``), and so may the password, which runs to the last ``@``:
one written raw may hold ``/`` or ``@`` (restic cannot parse it then, and prints the line
back: the whole password must be known to mask it)."""

_CUTS = re.compile(r"[/?#@:]")
"""Where a URL parser cuts a raw password that holds them (``invalid port ":Zq9x"``)."""


_ANY_USERINFO = re.compile(
    r"(?P<head>[A-Za-z][A-Za-z0-9+.-]{0,31}://|(?i:rest):(?![A-Za-z][A-Za-z0-9+.-]{0,31}://))"
    r"(?P<user>[^/:@\s]{0,256}):[^\s]{0,1024}@"
)
"""A ``scheme://user:password@`` anywhere in a line, whatever stands before it (a value
the schema refuses: ``REST:https://...``, `` rest:...``, ``a:b:https://...`` were shown
with their password, an outside review); the password runs to the line's last ``@``
before a space. Each part is bounded, so a long line costs time in proportion to it."""


def mask_url_password(location: str) -> str:
    """``location`` (a repository URL) with the password of its ``user:password@``
    replaced by ``***``; each line of a value that holds several, and in a line that is
    not a URL pullback takes, wherever one stands."""
    return "\n".join(
        _ANY_USERINFO.sub(
            lambda m: f"{m['head']}{m['user']}:***@",
            _USERINFO.sub(lambda m: f"{m['head']}{m['user']}:***@", line, count=1),
        )
        for line in location.split("\n")
    )


def url_password(location: str) -> str | None:
    """The password a repository URL's user information carries, or None."""
    match = _USERINFO.match(location)
    return match["password"] if match and match["password"] else None


_UNENCODED = re.compile(r"[^A-Za-z0-9\-._~!$&'()*+,;=:%]|%(?![0-9A-Fa-f]{2})")
"""What a URL's password cannot hold as it is (Go's ``net/url`` takes these and no
other characters in user information): ``/ ? # @`` cut the URL there; a backslash, a
quote or a space make restic print the URL quoted (a backslash doubled: past the mask)."""
_SCHEME = re.compile(rf"^{_HEAD}")
_HOST_PORT = re.compile(r"^(?:\[[^\]/]*\]|[^:@\[\]]*)(?::[0-9]*)?$")


def unencoded_in_password(location: str) -> list[str]:
    """The characters of a repository URL's password that must be percent-encoded and
    are not (``/ ? # @``, a ``%`` not starting an escape, anything Go's URL parser does
    not take there), each once, in order. An outside attack saw restic cut such a URL
    and look up a piece of the password as a host name (a DNS query) before any line
    could be masked. An ``@`` in the path of a URL without a password is no password
    (``rest:https://store:8000/repos/web1@prod/``, ``sftp://backup@host/srv/r@web1``)."""
    found = [match[0] for match in _UNENCODED.finditer(url_password(location) or "")]
    if not found:
        return []
    head = _SCHEME.match(location)
    authority = re.split(r"[/?#]", location[head.end() if head else 0 :], maxsplit=1)[0]
    user, at, _ = authority.rpartition("@")
    if (not at and _HOST_PORT.match(authority)) or (authority.count("@") == 1 and ":" not in user):
        return []
    return list(dict.fromkeys(found))


_SCHEMES = re.compile(r"^(?:[A-Za-z][A-Za-z0-9+.-]*:)+")
_LOOSE_PASSWORD = re.compile(r"[^:/@\s]+:[^@/\s]+@")
"""``user:password@`` anywhere but after a ``scheme://`` (``rest:https//u:pw@h``)."""


def password_problem(location: str, where: str) -> str | None:
    """Why ``location`` (a repository URL, the first line of the file ``where``) cannot
    be handed to restic or borg without its password reaching a terminal or the
    network, in words: a ``user:password@`` where no URL has it (nothing is known to
    mask: an outside attack saw restic print it whole), or password characters not
    percent-encoded (:func:`unencoded_in_password`); None when there is no such
    problem."""
    if url_password(location) is None and _LOOSE_PASSWORD.search(_SCHEMES.sub("", location)):
        return (
            f"the first line of {where} holds user:password@ where no URL has it: write it as "
            "rest:https://user:password@host:port/path (a scheme, then ://)"
        )
    raw = unencoded_in_password(location)
    if not raw:
        return None
    import urllib.parse

    shown = " ".join(c if c.isprintable() and c != " " else repr(c) for c in raw)
    codes = ", ".join(
        f"{c if c.isprintable() else repr(c)} as {urllib.parse.quote(c, safe='')}" for c in raw
    )
    return (
        f"the password in {where} holds {shown} as it is, which a URL cannot carry (restic would "
        "cut it there and take a piece of it for the host name, or print it quoted): write "
        f"it percent-encoded ({codes}; an @ in the path: %40)"
    )


def url_secrets(location: str) -> tuple[str, ...]:
    """What to mask of a repository URL: its password, percent-decoded too, and the
    pieces a parser cuts a raw one into at ``/ ? # @ :`` (an outside walk saw restic
    print ``invalid port ":Zq9SECRETx" after host`` for ``puller:Zq9SECRETx/Kp+w==@``);
    pieces shorter than 3 characters are not masked (:func:`register`). Empty without
    a password."""
    password = url_password(location)
    if not password:
        return ()
    import urllib.parse

    found = [password, urllib.parse.unquote(password)]
    for value in list(found):
        found += [piece for piece in _CUTS.split(value) if piece]
    return tuple(dict.fromkeys(found))
