"""Sizes and durations as administrators write them (``512M``, ``2G``, ``36h``)."""

from __future__ import annotations

import re

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGTP]?)(i?B?)\s*$", re.IGNORECASE)
_FACTORS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40, "P": 1 << 50}
SIZE_PATTERN = r"^\s*\d+(\.\d+)?\s*([KMGTPkmgtp]i?[Bb]?|[Bb])?\s*$"

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*$")
_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
DURATION_PATTERN = r"^\s*\d+(\.\d+)?\s*[smhdw]?\s*$"


def parse_size(value: str | int) -> int:
    """Bytes for ``value`` (an int, or a string like ``512M`` or ``1.5GiB``; powers of 1024).

    Raises ValueError for anything else.
    """
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    match = _SIZE.match(str(value))
    if not match:
        raise ValueError(f"not a size: {value!r}")
    number, unit, _ = match.groups()
    return int(float(number) * _FACTORS[unit.upper()])


def parse_duration(value: str | int | float) -> float:
    """Seconds for ``value`` (a number of seconds, or ``90s``, ``15m``, ``36h``, ``7d``, ``2w``)."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    match = _DURATION.match(str(value))
    if not match:
        raise ValueError(f"not a duration: {value!r}")
    number, unit = match.groups()
    return float(number) * _SECONDS[unit]


def human_size(n: float) -> str:
    """``1536`` -> ``1.5 KiB``."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"  # pragma: no cover


def human_ago(seconds: float | None) -> str:
    """``3h10m ago`` for an age in seconds, ``2d04h ahead`` for a negative one (a time
    in the future), ``never`` for None."""
    if seconds is None:
        return "never"
    return f"{human_duration(-seconds)} ahead" if seconds < 0 else f"{human_duration(seconds)} ago"


def human_duration(seconds: float) -> str:
    """``5400`` -> ``1h30m``."""
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds}s"
    minutes, sec = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m{sec:02d}s"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours}h{minutes:02d}m"
    days, hours = divmod(hours, 24)
    return f"{days}d{hours:02d}h"
