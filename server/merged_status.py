"""Other servers' status files, copied here for ``status --merge``: read within bounds
and cleaned field by field (another machine's words: every name, time, count and text is
checked or cut before the fleet view shows it)."""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ..common import jsontext
from ..common.clock import parse_iso
from ..common.fsutil import read_regular
from ..common.schema import load_schema
from ..common.text import printable
from ..common.units import parse_duration
from .host_state import HISTORY_CELLS, SYMBOLS

MAX_MERGED_BYTES = 32 << 20
"""A merged status file larger than this is refused by name (with MAX_MERGED_VALUES,
parsing one costs at most about 350 MB: measured worst 326 MB, one 32 MiB string
holding a 4-byte character). A real one takes a few KiB per host."""
MAX_MERGED_VALUES = 1_500_000
"""JSON values (counted before parsing, as its ``,``, ``[`` and ``{``) a merged status
file may hold: a file of tiny values (``[[]],``) cost 42 times its size in memory
(1.4 GB for 32 MiB); a real status file spends some 36 bytes a value (32 MiB: about
930,000), so none is refused that fits MAX_MERGED_BYTES."""
MAX_MERGED_HOSTS = 10_000
"""Hosts one merged status file may list (``hosts``, ``configured``); more is refused."""
MAX_NAME = 253
"""Characters of a host or server name from a merged file (a DNS name's most)."""
MAX_TEXT = 300
"""Characters of a reason, result or problem from a merged file; longer ones are cut."""
MAX_TEXTS = 25
"""Problems (outputs not written, database proofs) kept from a merged file."""


@functools.cache
def _server_schema() -> dict:
    return load_schema("pullback.common", "server")


def default_copy_max_age() -> float:
    """server.yaml's default ``copy.max_age`` in seconds: how another server's copies are
    judged (its status file does not say its own)."""
    copy = _server_schema()["properties"]["copy"]["properties"]
    return parse_duration(copy["max_age"]["default"])


def default_max_age() -> float:
    """server.yaml's default ``max_age`` in seconds (the schema's ``max_age.default``):
    how the hosts of a merged file that records no ``configured`` are judged."""
    return parse_duration(_server_schema()["properties"]["max_age"]["default"])


@functools.cache
def _host_name() -> re.Pattern:
    """server.yaml's pattern of ``hosts[].name``."""
    pattern = _server_schema()["properties"]["hosts"]["items"]["properties"]["name"]["pattern"]
    return re.compile(pattern)


def _is_name(value: object) -> bool:
    """A host name server.yaml could hold, at most MAX_NAME characters."""
    return isinstance(value, str) and len(value) <= MAX_NAME and bool(_host_name().fullmatch(value))


def time_value(value: object) -> str | None:
    """``value`` when it is a time as pullback writes it (ISO, UTC), else None."""
    if isinstance(value, str) and len(value) <= 40:
        try:
            parse_iso(value)
        except ValueError:
            return None
        return value
    return None


def count_value(value: object) -> int | None:
    """``value`` when it is a count (a whole number from 0 below 2**63), else None."""
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 1 << 63:
        return value
    return None


def seconds_value(value: object) -> float | None:
    """``value`` as seconds (a finite number from 0 below 1e10), else None (a whole
    number past a float's range too: an OverflowError ended status with exit 70)."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        try:
            seconds = float(value)
        except OverflowError:
            return None
        return seconds if math.isfinite(seconds) and 0 <= seconds < 1e10 else None
    return None


def _word(value: object) -> str | None:
    return printable(value, MAX_TEXT) if isinstance(value, str) else None


def flag_value(value: object) -> bool | None:
    """``value`` when it is true or false, else None."""
    return value if isinstance(value, bool) else None


def _texts(value: object) -> list[str] | None:
    if not isinstance(value, list):
        return None
    return [printable(text, MAX_TEXT) for text in value[:MAX_TEXTS]]


def _hold(value: object) -> dict | None:
    return (
        {"reason": printable(value.get("reason", ""), MAX_TEXT)}
        if isinstance(value, dict)
        else None
    )


def _failed_drill(value: object) -> dict | None:
    """A snapshot's failed drill (``verify_failed_snapshot``): its words, cut."""
    if not isinstance(value, dict):
        return None
    return {key: printable(str(value.get(key, "")), MAX_TEXT) for key in ("id", "at", "summary")}


def _failed_drills(value: object) -> list[dict] | None:
    """Further failed drills (``verify_failed_others``): each one's words, cut."""
    if not isinstance(value, list):
        return None
    return [d for d in (_failed_drill(v) for v in value[:20]) if d is not None]


def history_run(run: dict) -> dict:
    """What the view reads of one run of a host's ``history`` (its cell and its size in
    the trend), checked: ``result`` one of :data:`SYMBOLS`' words, else ``"?"``;
    ``repository_bytes`` a count, else None (a list there ended ``status`` in a
    traceback, a string or a NaN the trend: helper-144 F6). A server's own status.json
    is read with it too."""
    return {
        "result": run["result"] if _word(run.get("result")) in SYMBOLS else "?",
        "repository_bytes": count_value(run.get("repository_bytes")),
    }


def _history(value: object) -> list[dict] | None:
    if not isinstance(value, list):
        return None
    return [history_run(run) for run in value[-HISTORY_CELLS:] if isinstance(run, dict)]


def _copy(value: object) -> dict | None:
    """A host's second copy: what the view shows of it (:class:`~.fleet_view.CopyView`)."""
    if not isinstance(value, dict):
        return None
    cleaned = {key: check(value.get(key)) for key, check in _COPY_FIELDS.items()}
    return {key: found for key, found in cleaned.items() if found is not None}


_COPY_FIELDS: dict[str, Callable[[object], object]] = {
    "result": _word,
    "reason": _word,
    "newest": time_value,
    "copied": time_value,
    "verified": time_value,
    "guard_hold": _hold,
    "verify_result": _word,
    "verify_summary": _word,
}
_FIELDS: dict[str, Callable[[object], object]] = {
    "last_result": _word,
    "reason": _word,
    "problem": flag_value,
    "verify_result": _word,
    "verify_failed_snapshot": _failed_drill,
    "verify_failed_others": _failed_drills,
    "maintain_result": _word,
    "maintain_reason": _word,
    "maintain_failed": _texts,
    "newest_snapshot": time_value,
    "last_attempt": time_value,
    "last_success": time_value,
    "last_checked": time_value,
    "last_verified": time_value,
    "databases_proven": time_value,
    "database_proofs": _texts,
    "database_dumps": count_value,
    "repository_bytes": count_value,
    "store_peak_rss": count_value,
    "snapshots": count_value,
    "duration": seconds_value,
    "guard_hold": _hold,
    "history": _history,
    "copy": _copy,
    "warnings": _texts,
    "failed_services": _texts,
    "delta": flag_value,
    "fell_back": flag_value,
    "pulled_disabled": flag_value,
}
"""What the view takes from a host's entry in a merged file, and how each is checked."""


def clean_entry(raw: object) -> dict:
    """A host's entry from a merged file: the facts of :data:`_FIELDS` that have the
    right type and range (texts printable and cut); others are left out, as unknown."""
    if not isinstance(raw, dict):
        return {}
    cleaned = {key: check(raw.get(key)) for key, check in _FIELDS.items()}
    return {key: value for key, value in cleaned.items() if value is not None}


def _named(value: object, key: str) -> dict:
    """``value`` (the file's ``key``) as a mapping of host names. Raises ValueError when it
    is not one, holds more than MAX_MERGED_HOSTS or a name server.yaml cannot hold."""
    if not isinstance(value, dict):
        raise ValueError(f"not a status file: {key} is not an object")
    if len(value) > MAX_MERGED_HOSTS:
        raise ValueError(f"more than {MAX_MERGED_HOSTS} hosts in {key}")
    for name in value:
        if not _is_name(name):
            raise ValueError(f"not a host name in {key}: {printable(repr(name), 80)}")
    return value


def _limits(limits: object) -> dict:
    """A configured host's ``max_age`` (seconds) and ``enabled: false`` (a disabled host),
    each when it has the right shape; {} when neither has."""
    if not isinstance(limits, dict):
        return {}
    seconds = seconds_value(limits.get("max_age"))
    found: dict = {"max_age": seconds} if seconds else {}
    if flag_value(limits.get("enabled")) is False:
        found["enabled"] = False
    return found


def clean_status(data: object) -> dict:
    """What the view takes from a merged status file, checked and made fit to print:
    ``hosts`` (each entry :func:`clean_entry`), ``configured`` (the hosts its server.yaml
    listed, each with its ``max_age`` and whether it is disabled), ``server``,
    ``updated`` and ``outputs``. Raises ValueError when it is not a status file."""
    if not isinstance(data, dict):
        raise ValueError("not a status file: not an object")
    if "hosts" not in data:  # every status file has it, {} before a first pull
        raise ValueError("not a status file: no hosts")
    hosts = _named(data["hosts"], "hosts")
    status: dict = {"hosts": {name: clean_entry(entry) for name, entry in hosts.items()}}
    if "configured" in data:
        configured = _named(data["configured"], "configured")
        status["configured"] = {name: _limits(limits) for name, limits in configured.items()}
    if _is_name(data.get("server")):
        status["server"] = data["server"]
    if time_value(data.get("updated")):
        status["updated"] = data["updated"]
    outputs = data.get("outputs")
    problems = _texts(outputs.get("problems")) if isinstance(outputs, dict) else None
    if problems:
        status["outputs"] = {"problems": problems}
    return status


def _load_json(path: Path) -> object:
    """The JSON in ``path``, a regular file of at most MAX_MERGED_BYTES (opened without
    blocking: a FIFO is refused, not waited on). Raises OSError, ValueError."""
    data = read_regular(path, MAX_MERGED_BYTES)
    if sum(data.count(mark) for mark in (b",", b"[", b"{")) > MAX_MERGED_VALUES:
        raise ValueError(f"not a status file: more than {MAX_MERGED_VALUES:,} values")
    return jsontext.document(data)


@dataclass(frozen=True)
class Source:
    """One server's part of a fleet view: its name, the merged file it was read from
    (None: this server's own status file) and its status, or why it could not be read."""

    server: str
    file: Path | None = None
    status: dict = field(default_factory=dict)
    error: str | None = None
    """Why the merged file could not be read: its hosts are unknown."""

    @property
    def where(self) -> str:
        """``this server``, or the merged file's path (fit to print)."""
        return "this server" if self.file is None else printable(self.file, MAX_NAME)


def read_merged(path: Path) -> Source:
    """Another server's status file, copied here (``status --merge``): at most
    MAX_MERGED_BYTES, checked by :func:`clean_status`. Named by the ``server`` it records,
    else by its path. Never raises: a file that cannot be read is a Source with an
    ``error``."""
    fallback = printable(path, MAX_NAME)
    try:
        status = clean_status(_load_json(path))
    except OSError as exc:
        return Source(fallback, path, error=exc.strerror or type(exc).__name__)
    except ValueError as exc:
        return Source(fallback, path, error=printable(exc, MAX_TEXT))
    return Source(status.get("server", fallback), path, status)
