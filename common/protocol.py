"""The serve protocol: what the server may ask a client, and what the client answers.

The server's SSH key runs ``pullback-client serve`` as a forced command; sshd hands the
requested command line over in ``SSH_ORIGINAL_COMMAND``. Exactly six requests exist:

``list``                    a JSON :class:`Listing`: protocol, host, version, the
                            archive-directory lock, every complete archive with its size
                            and sidecar, and the archives without a valid sidecar
``lock``                    ``{"lock": <the lock record or null>}``
``send <archive> <offset>`` the archive's raw bytes from ``offset`` to its end
``fetched <archive>``       ``{"ok": true}``: the server stored the archive (a mark; the
                            client's run moves it to ``fetched/`` later)
``fetched <archive> deltas`` the same, and the server applies delta archives: a client
                            with ``incremental.enabled: auto`` makes deltas from its next
                            run on; sent only to a client of protocol 3 or later
``fetched <archive> lean-deltas`` the same, and the server applies lean deltas (sidecar
                            format 3): the client makes them from its next run on;
                            sent only to a client of protocol 5 or later
``full``                    ``{"ok": true}``: the next run makes a full archive (the
                            server cannot use the client's chain of deltas); protocol 2
``session``                 protocol 4: one serve process answers the other five, one
                            after another, read as lines from its standard input; each
                            answer is framed (:func:`ok_frame`, :func:`refused_frame`,
                            :func:`parse_frame`), so one SSH channel and one process start
                            serve a whole pull (a process start and the sshd session cost
                            0.3-0.4 s each over a WAN link); an archive above 16 MiB still
                            comes through an OpenSSH ``send`` of its own

Both sides use this module: the client to parse (and refuse) requests and to build its
answer, the server to write requests and to read the answer, which it never trusts.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from . import jsontext
from .archive.sidecar import ARCHIVE_NAME

PROTOCOL = 5
"""1: the first four requests; 2: delta archives and the ``full`` request; 3: ``fetched
<archive> deltas`` (the server says it applies deltas); 4: ``session``; 5: ``fetched
<archive> lean-deltas`` (and lean deltas)."""
DELTAS_WORD = "deltas"
"""The third word of a ``fetched`` request from a server that applies delta archives."""
LEAN_DELTAS_WORD = "lean-deltas"
"""The third word of a ``fetched`` request from a server that applies lean deltas too."""
MAX_REQUEST = 512
"""Characters a request line may have."""
MAX_LISTING = 2 << 20
"""Bytes a ``list`` answer may have before the server stops reading it: a real client
lists a few archives of a few KiB each (its keep_last and keep_days), so about a
thousand ordinary ones fit. Decoding costs about 30 bytes of memory per byte of JSON at
worst (a list of empty objects): 2 MiB stay near 60 MiB (16 MiB took a pull to 476 MiB)."""
MAX_ARCHIVES = 1000
"""Archives (usable or not) a ``list`` answer may name; more is not a real client."""
MAX_SESSION_REQUESTS = 1000
"""Requests one ``session`` answers: a pull asks for a listing (again while the client
publishes), each archive of a chain and the ``fetched`` mark, a few dozen at most."""
MAX_FRAME = 600
"""Bytes of a session answer's first line (``ok <length>`` or ``refused <words>``)."""
MAX_REFUSAL = 400
"""Characters of a refusal's words in a session answer."""

_OFFSET = re.compile(r"^(0|[1-9][0-9]{0,18})$")


class Verb(StrEnum):
    LIST = "list"
    LOCK = "lock"
    SEND = "send"
    FETCHED = "fetched"
    FULL = "full"
    SESSION = "session"


class Refused(Exception):
    """A request that is not one of the six, with the reason."""


@dataclass(frozen=True)
class Request:
    """One request; ``text`` is the command line the server sends."""

    verb: Verb
    archive: str = ""
    offset: int = 0
    deltas: bool = False
    """``fetched``: the server applies delta archives (protocol 3)."""
    lean: bool = False
    """``fetched``: the server applies lean deltas too (protocol 5)."""

    @property
    def text(self) -> str:
        if self.verb is Verb.SEND:
            return f"{self.verb} {self.archive} {self.offset}"
        if self.verb is Verb.FETCHED:
            word = LEAN_DELTAS_WORD if self.lean else DELTAS_WORD if self.deltas else ""
            return f"{self.verb} {self.archive}" + (f" {word}" if word else "")
        return str(self.verb)

    @classmethod
    def send(cls, archive: str, offset: int = 0) -> Request:
        return cls(Verb.SEND, archive, offset)

    @classmethod
    def fetched(cls, archive: str, deltas: bool = False, lean: bool = False) -> Request:
        """``fetched``; ``lean`` implies ``deltas``."""
        return cls(Verb.FETCHED, archive, deltas=deltas or lean, lean=lean)


LIST = Request(Verb.LIST)
LOCK = Request(Verb.LOCK)
FULL = Request(Verb.FULL)
SESSION = Request(Verb.SESSION)


def parse_request(text: str | None) -> Request:
    """Parse ``SSH_ORIGINAL_COMMAND`` (or a line of a session). Raises Refused for anything
    but the six requests."""
    if text is None or not text.strip():
        raise Refused("no request: this key only answers pullback-server")
    if len(text) > MAX_REQUEST:
        raise Refused("request too long")
    if not text.isprintable() or not text.isascii():
        raise Refused("request holds control or non-ASCII characters")
    verb, *rest = text.split(" ")
    if verb in (Verb.LIST, Verb.LOCK, Verb.FULL, Verb.SESSION) and not rest:
        return Request(Verb(verb))
    if verb == Verb.SEND and len(rest) == 2:
        if not _OFFSET.match(rest[1]):
            raise Refused("offset is not a decimal number")
        return Request(Verb.SEND, _archive_name(rest[0]), int(rest[1]))
    if verb == Verb.FETCHED and len(rest) in (1, 2):
        if rest[1:] not in ([], [DELTAS_WORD], [LEAN_DELTAS_WORD]):
            raise Refused(
                f"the third word of fetched can only be {DELTAS_WORD!r} or {LEAN_DELTAS_WORD!r}"
            )
        lean = rest[1:] == [LEAN_DELTAS_WORD]
        return Request.fetched(_archive_name(rest[0]), deltas=len(rest) == 2, lean=lean)
    raise Refused("unknown request")


def _archive_name(word: str) -> str:
    """``word``, an archive's name. Raises Refused when it is not one."""
    if not ARCHIVE_NAME.match(word):
        raise Refused("not an archive name")
    return word


@dataclass
class Listing:
    """The ``list`` answer. On the server nothing in it is trusted yet: sidecars are
    validated when an archive is chosen, words are escaped before they are shown."""

    host: str
    version: str
    lock: dict | None
    archives: list[dict] = field(default_factory=list)
    """Complete archives: ``{"name", "size", "sidecar"}``."""
    unusable: list[dict] = field(default_factory=list)
    """Archives the client holds without a valid sidecar: ``{"name", "problem"}``."""
    protocol: int = PROTOCOL
    """What the client speaks (1 from a client before delta archives)."""

    def to_json(self) -> str:
        return json.dumps(
            {
                "protocol": PROTOCOL,
                "host": self.host,
                "pullback_version": self.version,
                "lock": self.lock,
                "archives": self.archives,
                "unusable": self.unusable,
            }
        )


def parse_listing(raw: bytes) -> Listing:
    """Read a ``list`` answer: of its ``archives`` the objects alone, the other entries
    counted in one entry of ``unusable`` (a client's ``1`` there crashed ``check`` for
    the fleet). Raises ValueError when it is not one."""
    try:
        data: Any = jsontext.loads(raw)
        archives = data["archives"]
        if not isinstance(archives, list):
            raise TypeError("archives")
        listing = Listing(
            str(data["host"]),
            str(data.get("pullback_version", "?")),
            data.get("lock"),
            [a for a in archives if isinstance(a, dict)],
            [u for u in data.get("unusable", []) if isinstance(u, dict)],
            _protocol(data.get("protocol")),
        )
    except (KeyError, TypeError, AttributeError, RecursionError) as exc:
        raise ValueError(f"not a list answer: {type(exc).__name__}") from None
    if listing.lock is not None and not isinstance(listing.lock, dict):
        raise ValueError("not a list answer: its lock is not an object")
    odd = len(archives) - len(listing.archives)
    if odd + len(listing.archives) + len(listing.unusable) > MAX_ARCHIVES:
        raise ValueError(f"a list answer naming more than {MAX_ARCHIVES} archives")
    if odd:
        listing.unusable.append({"name": "?", "problem": f"{odd} entries of archives not objects"})
    return listing


def _protocol(value: Any) -> int:
    """The listing's protocol: a small whole number, else 1 (what an old client sends
    none of, or a confused one anything)."""
    if isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= 1000:
        return value
    return 1


def lock_answer(lock: dict | None) -> str:
    """The answer to ``lock``."""
    return json.dumps({"lock": lock})


FETCHED_ANSWER = '{"ok": true}'


# -- a session's answers --------------------------------------------------------------


@dataclass(frozen=True)
class Frame:
    """The first line of a session answer: ``length`` bytes follow, or the request was
    refused (``refused``: the client's words, not yet escaped)."""

    length: int = 0
    refused: str | None = None


def ok_frame(length: int) -> bytes:
    """The line before an answer of ``length`` bytes."""
    return f"ok {length}\n".encode()


def refused_frame(reason: str) -> bytes:
    """The line that refuses a request, its words on one line of at most MAX_REFUSAL
    characters of printable ASCII."""
    words = "".join(c if c.isascii() and c.isprintable() else "?" for c in reason)
    return f"refused {words[:MAX_REFUSAL]}\n".encode()


def parse_frame(line: bytes) -> Frame:
    """Read a session answer's first line (its newline included). Raises ValueError when
    it is not one (a client's bytes: never trusted)."""
    if len(line) > MAX_FRAME or not line.endswith(b"\n"):
        raise ValueError("a session answer without its first line")
    word, _, rest = line[:-1].partition(b" ")
    if word == b"ok" and _OFFSET.fullmatch(rest.decode("ascii", "replace")):
        return Frame(int(rest))
    if word == b"refused":
        return Frame(refused=rest.decode("ascii", "replace"))
    raise ValueError("a session answer that is neither ok nor refused")
