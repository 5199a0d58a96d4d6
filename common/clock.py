"""Time as pullback writes it: UTC, whole seconds, in two text forms.

``2026-11-22T03:50:00Z`` (ISO 8601) in status files, sidecars, lock records and JSON
output; ``20261122T035000Z`` (a *stamp*) in archive names and snapshot tags;
``2026-11-22 03:50 UTC`` where people read it.
"""

from __future__ import annotations

import datetime as dt

ISO_FORMAT = "%Y-%m-%dT%H:%M:%SZ"
STAMP_FORMAT = "%Y%m%dT%H%M%SZ"
FUTURE_TOLERANCE = dt.timedelta(hours=1)
"""How far ahead of the clock an archive or snapshot may be dated (clock skew) and still
be taken as the newest one: the server's pull and maintenance and the client's retention
use the same. A stray one dated later must not take that place."""


def utc_now() -> dt.datetime:
    """Now, in UTC, to the second."""
    return dt.datetime.now(dt.UTC).replace(microsecond=0)


def iso(when: dt.datetime) -> str:
    """``2026-11-22T03:50:00Z`` for an aware datetime."""
    return when.astimezone(dt.UTC).strftime(ISO_FORMAT)


def iso_or_none(when: dt.datetime | None) -> str | None:
    """:func:`iso`, passing None through."""
    return None if when is None else iso(when)


def shown(when: dt.datetime) -> str:
    """``2026-11-22 03:50 UTC``: a time as people read it in mails, pages and messages."""
    return when.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")


def parse_iso(text: str) -> dt.datetime:
    """The UTC datetime of ``2026-11-22T03:50:00Z``. Raises ValueError."""
    return dt.datetime.strptime(text, ISO_FORMAT).replace(tzinfo=dt.UTC)


def age(text: str | None, now: dt.datetime) -> float | None:
    """Seconds from the ISO time ``text`` to ``now`` (never negative); None for no time."""
    found = signed_age(text, now)
    return None if found is None else max(0.0, found)


def signed_age(text: str | None, now: dt.datetime) -> float | None:
    """Seconds from the ISO time ``text`` to ``now``, negative for a time ahead of
    ``now`` (a wrong clock, a forged record: shown as such, never as "0s ago"); None for
    no time."""
    if not text:
        return None
    return (now - parse_iso(text)).total_seconds()


def stamp_of(when: dt.datetime) -> str:
    """``20261122T035000Z`` for an aware datetime."""
    return when.astimezone(dt.UTC).strftime(STAMP_FORMAT)


def parse_stamp(stamp: str) -> dt.datetime:
    """The UTC datetime of a stamp. Raises ValueError."""
    return dt.datetime.strptime(stamp, STAMP_FORMAT).replace(tzinfo=dt.UTC)


def is_stamp(text: str) -> bool:
    """True when ``text`` is a stamp."""
    try:
        parse_stamp(text)
    except ValueError:
        return False
    return True
