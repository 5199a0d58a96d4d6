"""Words that come from outside (a client, a file, a tool's output) made fit to print."""

from __future__ import annotations


def printable(value: object, limit: int) -> str:
    """``value`` as one line of at most ``limit`` printable characters: anything else
    (newlines, escapes, controls) is written as Python escapes, and the excess is cut with
    an ellipsis, so what a client controls can neither forge lines nor flood a report."""
    text = str(value)
    if not text.isprintable():
        text = repr(text)
    return text if len(text) <= limit else text[: limit - 1] + "…"
