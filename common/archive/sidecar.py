"""The sidecar: the JSON record published beside every archive (docs/architecture.md,
*The archive*; the fields in docs/archive-format.md).

The client writes it; the server reads it (from an untrusted host) to decide what to
pull and to check the bytes it received, so :func:`parse` validates it strictly.
"""

from __future__ import annotations

import itertools
import json
import re
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any

from .. import jsontext, secrets, validated
from ..clock import parse_stamp
from ..errors import ArchiveError
from ..outcome import Status
from ..schema import jsonschema_module, shared_schema
from ..text import warning_count

FORMAT = 1
"""The format of a full archive's sidecar (what every pullback reads)."""
DELTA_FORMAT = 2
"""The format of a delta archive's sidecar: a server that reads only format 1 passes the
delta over with a warning instead of mis-applying it."""
LEAN_FORMAT = 3
"""The format of a lean delta's sidecar (its unchanged files left out, the base's removed
ones listed in ``REMOVED.list``): a server that reads only formats 1 and 2 passes it over."""
FORMATS = (FORMAT, DELTA_FORMAT, LEAN_FORMAT)
MAX_CHAIN = 100
"""Archives a chain (a full archive and the deltas on it, each on the one before) holds
at most: a client whose chain has this many makes a full archive, whatever
``full_every`` says, and a server refuses to apply a longer one."""
_SAFE_NAME = re.compile(r"[^A-Za-z0-9._-]")
SIDECAR_NAME = "SIDECAR.json"
"""The sidecar's name inside a stored snapshot, beside MANIFEST.sha256: the server puts it
there, so a restored snapshot says which services and tasks failed in it."""
ARCHIVE_NAME = re.compile(
    r"\A(?P<host>[A-Za-z0-9][A-Za-z0-9._-]*)-(?P<stamp>[0-9]{8}T[0-9]{6}Z)\.tar(?:\.zst|\.gz)?\Z"
)
"""An archive's name (ASCII only, nothing after it: not even a newline)."""
_HOST = re.compile(r"\A[A-Za-z0-9][A-Za-z0-9._-]*\Z")
_STAMP = re.compile(r"\A[0-9]{8}T[0-9]{6}Z\Z")
MAX_WARNINGS = 20
MAX_WORDS = 4000
"""Characters of one error or warning a sidecar keeps (an outside test: a plugin's 2 MB
error, stored twice, made the client's listing pass the server's 2 MiB bound, and the
host could not be pulled while the archive was kept)."""
MAX_SCHEMA_ERRORS = 20
"""Schema errors looked at before one is reported."""


FAILED_NAMED = 32
"""Failed services a sidecar names for the server (its tags, a comment, a report)."""
MORE_FAILED = "*"
"""The last of :data:`FAILED_NAMED` names when more services failed: any service may
have failed (no service name holds a ``*``: :attr:`Sidecar.failed_services`)."""


@dataclass
class TaskReport:
    """How one task of a service went."""

    type: str
    status: Status = Status.SKIPPED  # ok | failed | skipped
    error: str | None = None
    duration: float = 0.0
    files: int = 0
    bytes: int = 0
    warnings: list[str] = field(default_factory=list)

    @property
    def archived(self) -> bool:
        """Whether the archive holds the task's data: its dump succeeded, or wrote part
        of what it should (one database of several: an error starting PARTIAL_DUMP)."""
        return self.status == Status.OK or (self.error or "").startswith(PARTIAL_DUMP)


PARTIAL_DUMP = "dump partial: "
"""The start of the error of a task whose dump wrote part of what it should (one
database of several could not be dumped: ``TaskPartial``): failed, and what it wrote is
in the archive, which is published even when nothing else of the run succeeded."""

LEFT_OUT = "left out of this run (run --service): the newest complete archive holds it"
"""The error of an enabled service that a ``run --service`` did not name: its report says
failed, so the archive is partial and every older reader (client retention, the server's
forget, ``restore --service``) treats the service as missing from it."""


@dataclass
class ServiceReport:
    """How one service went; ``status`` is ``failed`` when any of its tasks failed."""

    name: str
    status: Status = Status.FAILED  # ok | failed
    error: str | None = None
    duration: float = 0.0
    files: int = 0
    bytes: int = 0
    service_file: str = ""
    tasks: list[TaskReport] = field(default_factory=list)


class ArchiveKind(StrEnum):
    FULL = "full"
    DELTA = "delta"


@dataclass(frozen=True)
class BaseRef:
    """The archive a delta is based on: its name and the sha256 of its manifest, the
    identifier client and server agree on (docs/architecture.md, *Incremental pulls*)."""

    name: str
    manifest_sha256: str


@dataclass
class ArchiveInfo:
    name: str
    size: int
    sha256: str
    compression: str
    members: int = 0
    files: int = 0
    content_bytes: int = 0
    kind: ArchiveKind = ArchiveKind.FULL
    manifest_sha256: str = ""
    """The sha256 of the archive's complete manifest: its MANIFEST.sha256 member's, or
    what a delta's partial member completes to ("" from an older client)."""
    base: BaseRef | None = None
    """A delta's base (None for a full archive)."""
    sent_bytes: int = 0
    """Bytes of file content the archive carries (a delta: what changed)."""
    lean: bool = False
    """A lean delta (sidecar format 3): its unchanged files are not named."""

    @property
    def is_delta(self) -> bool:
        return self.kind is ArchiveKind.DELTA

    @property
    def format(self) -> int:
        """The sidecar format this archive is published with."""
        if not self.is_delta:
            return FORMAT
        return LEAN_FORMAT if self.lean else DELTA_FORMAT


@dataclass
class Sidecar:
    host: str
    stamp: str
    created: str
    pullback_version: str
    status: Status  # ok | partial
    archive: ArchiveInfo
    services: list[ServiceReport]
    duration: float = 0.0
    format: int = FORMAT

    @property
    def failed_services(self) -> list[str]:
        """The names of the services that failed, as the server may use them (restic
        tags, a borg comment, a report): a client's words, so anything but a service
        name's letters, digits, '.', '_' and '-' becomes '_', each cut at 128 characters,
        at most :data:`FAILED_NAMED` names (a client's 998 failed services became 998
        restic tags on every snapshot): past that, the first ones and :data:`MORE_FAILED`."""
        failed = [s.name for s in self.services if s.status != Status.OK]
        named = [_SAFE_NAME.sub("_", name)[:128] for name in failed]
        return named if len(named) <= FAILED_NAMED else [*named[: FAILED_NAMED - 1], MORE_FAILED]

    def to_json(self, as_full: bool = False) -> str:
        """The sidecar as published. ``as_full``: the copy kept inside a snapshot, which
        holds the whole tree whatever the archive was, in the format every reader reads."""
        data = asdict(self)
        data["format"] = self.archive.format if not as_full else FORMAT
        data = {"format": data.pop("format"), **data}
        info = data["archive"]
        del info["lean"]  # (the format says it)
        for key in ("base", "manifest_sha256"):
            if not info[key]:
                del info[key]  # an older client's archive, or a full one
        if as_full:
            info.pop("base", None)
            info["kind"] = str(ArchiveKind.FULL)
        data["duration"] = round(data["duration"], 3)
        for service in data["services"]:
            service["duration"] = round(service["duration"], 3)
            service["error"] = kept_words(service["error"])
            for task in service["tasks"]:
                task["duration"] = round(task["duration"], 3)
                task["error"] = kept_words(task["error"])
                warnings = [kept_words(w) for w in task["warnings"]]
                if len(warnings) > MAX_WARNINGS:
                    hidden = warning_count(task["warnings"]) - MAX_WARNINGS
                    warnings = [*warnings[:MAX_WARNINGS], f"... and {hidden} more"]
                task["warnings"] = warnings
        return json.dumps(data, indent=2, sort_keys=False) + "\n"


def kept_words(text: str | None) -> str | None:
    """An error or warning as a sidecar (and the client's status file) keeps it: every
    secret the process knows masked (a plugin's own log lines and exceptions may hold its
    section's ``x-secret`` values), at most :data:`MAX_WORDS` characters."""
    if text is None:
        return None
    text = secrets.mask(text)
    return text if len(text) <= MAX_WORDS else text[: MAX_WORDS - 14] + " ... (cut off)"


def parse(text: str | bytes, expected_name: str | None = None, *, record: bool = False) -> Sidecar:
    """Parse and validate a sidecar. Raises ArchiveError saying what is wrong with it.
    ``record``: a sidecar of this machine's own archive directory (common/validated.py)."""
    try:
        data: Any = jsontext.loads(text)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise ArchiveError(f"sidecar is not valid JSON: {exc}") from None
    return from_data(data, expected_name, record=record)


def record_written(text: str) -> None:
    """Validate a sidecar this process is publishing (``text`` from
    :meth:`Sidecar.to_json`) and record it as valid (common/validated.py), so that the
    client's later commands and its serve endpoint read it without loading a validator.
    Raises ArchiveError when the writer made one the server would refuse (more services
    than the schema allows, say): better at publishing than at every pull."""
    _check_schema(json.loads(text), record=True)


def _check_schema(data: Any, *, record: bool = False) -> None:
    """Raises ArchiveError naming where ``data`` breaks the sidecar's schema. With
    ``record``, data found valid before is not checked again, and data found valid now
    is recorded (common/validated.py); a server reading a client's sidecar never asks."""
    schema = shared_schema("pullback.common", "sidecar")
    seen_valid = validated.fingerprint("sidecar", schema, data) if record else ""
    if validated.known(seen_valid):
        return
    jsonschema = jsonschema_module()
    validator = jsonschema.Draft202012Validator(schema)
    # the best of the first few errors: a sidecar of a million wrong items (a client's
    # bytes) costs what finding a few of them costs, not seconds per megabyte
    first = itertools.islice(validator.iter_errors(data), MAX_SCHEMA_ERRORS)
    error = jsonschema.exceptions.best_match(first)
    if error is not None:
        where = "/".join(str(p) for p in error.absolute_path) or "top level"
        raise ArchiveError(f"sidecar is malformed at {where}: {error.message}")
    validated.remember(seen_valid)


def from_data(data: Any, expected_name: str | None = None, *, record: bool = False) -> Sidecar:
    """Validate already-decoded sidecar JSON (see :func:`parse`)."""
    if isinstance(data, dict) and data.get("format") not in FORMATS:
        raise ArchiveError(
            f"sidecar format {data.get('format')!r} is not one this pullback reads "
            f"({', '.join(map(str, FORMATS))}); upgrade pullback on this machine"
        )
    _check_schema(data, record=record)
    # JSON Schema's `$` lets a trailing newline through: the names must be whole
    if not (
        ARCHIVE_NAME.match(data["archive"]["name"])
        and _HOST.match(data["host"])
        and _STAMP.match(data["stamp"])
    ):
        raise ArchiveError(
            "sidecar is malformed: its host, stamp or archive name has extra characters"
        )
    _check_stamp(data["stamp"], data["archive"]["name"])
    info = data["archive"]
    base = info.get("base")
    if base is not None and not ARCHIVE_NAME.match(base["name"]):
        raise ArchiveError("sidecar is malformed: its base archive name has extra characters")
    if expected_name is not None and data["archive"]["name"] != expected_name:
        raise ArchiveError(f"sidecar describes {data['archive']['name']!r}, not {expected_name!r}")
    services = [
        ServiceReport(
            **{
                **_known(ServiceReport, s),
                "tasks": [TaskReport(**_known(TaskReport, t)) for t in s.get("tasks", [])],
            }
        )
        for s in data["services"]
    ]
    fields = _known(Sidecar, data)
    fields["archive"] = _archive_info(info, data["format"] == LEAN_FORMAT)
    fields["services"] = services
    return Sidecar(**fields)


def _check_stamp(stamp: str, name: str) -> None:
    """Raise ArchiveError unless ``stamp`` is a time (the server takes it for one: a
    damaged digit or a hostile client's month 13 failed every pull of the host as an
    internal error) and the stamp in the archive's ``name``."""
    try:
        parse_stamp(stamp)
    except ValueError:
        raise ArchiveError(f"sidecar is malformed: its stamp {stamp} is not a time") from None
    named = ARCHIVE_NAME.match(name)
    if named is None or named["stamp"] != stamp:
        raise ArchiveError(
            f"sidecar is malformed: its stamp {stamp} is not the one in its archive's name"
        )


def _archive_info(info: dict, lean: bool) -> ArchiveInfo:
    """The validated ``archive`` object of a sidecar (``lean``: of format 3)."""
    archive = _known(ArchiveInfo, info)
    archive["lean"] = lean
    archive["kind"] = ArchiveKind(info.get("kind", ArchiveKind.FULL))
    base = info.get("base")
    archive["base"] = BaseRef(base["name"], base["manifest_sha256"]) if base else None
    return ArchiveInfo(**archive)


def _known(cls, data: dict) -> dict:
    """Only the keys ``cls`` knows (a newer writer may add more), statuses as Status."""
    known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
    if "status" in known:
        known["status"] = Status(known["status"])  # the schema allowed only known values
    return known
