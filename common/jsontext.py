"""JSON as the standard says it, for text another machine or program wrote.

Python's :func:`json.loads` also reads ``NaN``, ``Infinity`` and ``-Infinity``, which are
no JSON numbers: a NaN passes every ``minimum`` and ``maximum`` of a schema (each
comparison with it is false) and then reaches sums, sorts and reports. Text from a
client (its listing and sidecars) and another server's status file are read here.
"""

from __future__ import annotations

import json
import math
from typing import Any


def _refuse(constant: str) -> Any:
    raise ValueError(f"{constant} is not a JSON number")


def _finite(text: str) -> float:
    """A JSON number with a fraction or an exponent, which Python would read as an
    infinity when it is out of a float's range (``1e400``)."""
    value = float(text)
    if math.isinf(value):
        raise ValueError(f"{text[:40]} is out of a number's range")
    return value


def loads(text: str | bytes) -> Any:
    """The JSON value of ``text``. Raises ValueError (json.JSONDecodeError for bad
    syntax) when it is not JSON, NaN and the infinities included (``1e400`` too),
    UnicodeDecodeError
    when bytes are not UTF-8, and RecursionError when it nests too deep for the
    decoder."""
    return json.loads(text, parse_constant=_refuse, parse_float=_finite)


def document(text: str | bytes, standard: bool = True) -> Any:
    """The JSON value of ``text`` (:func:`loads`; ``standard`` False: Python's reading,
    NaN and the infinities too, for a file this program wrote itself), each way it is
    not one a ValueError that says why: not UTF-8, bad syntax, NaN or an infinity, or
    nested too deeply (the decoder's RecursionError, which no reader expects: an
    outside review saw a status.json of ``[[[[...`` end status, check and every pull
    with exit 70)."""
    try:
        value = loads(text) if standard else json.loads(text)
    except UnicodeDecodeError:
        raise ValueError("not JSON: not UTF-8") from None
    except RecursionError:
        raise ValueError("not JSON that can be read: nested too deeply") from None
    except ValueError as exc:  # bad syntax, NaN or an infinity
        raise ValueError(f"not JSON: {exc}") from None
    if _deeper(value, MAX_DEPTH):
        raise ValueError(f"not JSON that can be read: nested deeper than {MAX_DEPTH} levels")
    return value


MAX_DEPTH = 32
"""How deep a :func:`document` may nest (a status file's deepest value is about 6 levels
in): what the decoder reads a few hundred levels deep still ended a pull in a
traceback when the file was written back (a recursive masking; an outside review), so
the bound is this, not the decoder's."""


def _deeper(value: Any, most: int) -> bool:
    """Whether ``value`` nests deeper than ``most`` lists and objects (walked with a
    stack of its own, never recursively)."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        children = item.values() if isinstance(item, dict) else item
        if not isinstance(item, dict | list):
            continue
        if depth > most:
            return True
        stack.extend((child, depth + 1) for child in children)
    return False
