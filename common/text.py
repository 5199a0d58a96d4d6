"""Words that come from outside (a client, a file, a tool's output) made fit to print."""

from __future__ import annotations

from collections.abc import Iterable


def escaped(text: str) -> str:
    """``text`` with every character that is not printable written as an escape (``\\n``,
    ``\\x1b``, ``\\u2028``), and bytes that were not UTF-8 (surrogate escapes) as
    ``\\xNN``: what it says can still be read, but it can neither forge a line nor move a
    terminal's cursor. The one function every word from outside passes through."""
    if text.isprintable():
        return text
    out = []
    for char in text:
        if char.isprintable():
            out.append(char)
        elif 0xDC80 <= ord(char) <= 0xDCFF:
            out.append(f"\\x{ord(char) - 0xDC00:02x}")
        else:
            out.append(repr(char)[1:-1])
    return "".join(out)


def printable(value: object, limit: int) -> str:
    """``value`` as one line of at most ``limit`` characters, :func:`escaped`, the excess
    cut with an ellipsis: what a client controls can neither forge lines nor flood a
    report. Only the first ``limit`` characters are escaped (escapes keep their order,
    so the cut is the same): a string of millions costs no more than a short one."""
    raw = str(value)
    text = escaped(raw[:limit])
    return text[: limit - 1] + "…" if len(raw) > limit or len(text) > limit else text


def counted(count: int, word: str, words: str | None = None) -> str:
    """``1 file``, ``2 files``: ``count`` and ``word``, or its plural (``words``, else
    ``word`` and an s) when ``count`` is not one."""
    return f"{count} {word if count == 1 else words or word + 's'}"


def few(words: list[str], shown: int = 5, separator: str = ", ") -> str:
    """``a, b, c and 2 more``: the first ``shown`` of ``words`` (each already
    :func:`printable` where it is data, a name read from a repository), the rest
    counted; ``separator`` between them (``"; "`` for sentences)."""
    more = len(words) - shown
    named = separator.join(words[:shown])
    return f"{named} and {more} more" if more > 0 else named


MAX_WARNING = 1000
"""Characters of one warning kept by :class:`BoundedWarnings`."""


class BoundedWarnings(list):
    """A list of warnings that keeps the first ``limit`` and counts the rest, so that a
    hostile input making one warning per entry costs a count, not memory or lines. Each
    is kept :func:`printable` in ``width`` characters (None: as given, for warnings made
    printable where they are shown)."""

    def __init__(
        self, items: Iterable[str] = (), *, limit: int = 100, width: int | None = MAX_WARNING
    ):
        super().__init__()
        self.limit = limit
        self.width = width
        self.dropped = 0
        self.extend(items)  # (copies made as lists are, ``type(x)(items)``, stay bounded)

    def __iadd__(self, texts: Iterable[str]) -> BoundedWarnings:  # type: ignore[misc,override]
        # (list's own ``+=`` would keep them all, unbounded)
        self.extend(texts)
        return self

    def __reduce__(self):
        return _bounded_again, (list(self), self.limit, self.width, self.dropped)

    def append(self, text: str) -> None:
        if len(self) < self.limit:
            super().append(text if self.width is None else printable(text, self.width))
        else:
            self.dropped += 1

    def extend(self, texts) -> None:
        for text in texts:
            self.append(text)

    @property
    def total(self) -> int:
        """How many were added, kept or not."""
        return len(self) + self.dropped

    def lines(self, limit: int) -> list[str]:
        """At most ``limit`` warnings, then "... and N more" for the rest."""
        shown = list(self[:limit])
        more = self.total - len(shown)
        return [*shown, f"{_MORE_WARNINGS}{more}{_LIKE_THESE}"] if more else shown


def _bounded_again(items: list[str], limit: int, width: int | None, dropped: int):
    """A pickled :class:`BoundedWarnings` made again (its items as they were kept)."""
    made = BoundedWarnings(limit=limit, width=None)
    made.extend(items)
    made.width, made.dropped = width, dropped
    return made


_MORE_WARNINGS = "... and "
_LIKE_THESE = " more warnings like these"


def warning_count(lines: list[str]) -> int:
    """How many warnings ``lines`` stand for: one a line, and the count of a closing
    "... and N more warnings like these" (:meth:`BoundedWarnings.lines`)."""
    last = lines[-1] if lines else ""
    number = last.removeprefix(_MORE_WARNINGS).removesuffix(_LIKE_THESE)
    if last.startswith(_MORE_WARNINGS) and last.endswith(_LIKE_THESE) and number.isdigit():
        return len(lines) - 1 + int(number)
    return len(lines)
