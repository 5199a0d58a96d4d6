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
from typing import Any

import jsonschema

from ..errors import ArchiveError
from ..outcome import Status
from ..schema import load_schema

FORMAT = 1
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
MAX_SCHEMA_ERRORS = 20
"""Schema errors looked at before one is reported."""


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


@dataclass
class ArchiveInfo:
    name: str
    size: int
    sha256: str
    compression: str
    members: int = 0
    files: int = 0
    content_bytes: int = 0


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
        name's letters, digits, '.', '_' and '-' becomes '_', and at most 128 of them."""
        return [_SAFE_NAME.sub("_", s.name)[:128] for s in self.services if s.status != Status.OK]

    def to_json(self) -> str:
        data = asdict(self)
        data = {"format": data.pop("format"), **data}
        data["duration"] = round(data["duration"], 3)
        for service in data["services"]:
            service["duration"] = round(service["duration"], 3)
            for task in service["tasks"]:
                task["duration"] = round(task["duration"], 3)
                warnings = task["warnings"]
                if len(warnings) > MAX_WARNINGS:
                    task["warnings"] = [
                        *warnings[:MAX_WARNINGS],
                        f"... and {len(warnings) - MAX_WARNINGS} more",
                    ]
        return json.dumps(data, indent=2, sort_keys=False) + "\n"


def parse(text: str | bytes, expected_name: str | None = None) -> Sidecar:
    """Parse and validate a sidecar. Raises ArchiveError saying what is wrong with it."""
    try:
        data: Any = json.loads(text)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ArchiveError(f"sidecar is not valid JSON: {exc}") from None
    return from_data(data, expected_name)


def from_data(data: Any, expected_name: str | None = None) -> Sidecar:
    """Validate already-decoded sidecar JSON (see :func:`parse`)."""
    if isinstance(data, dict) and data.get("format") != FORMAT:
        raise ArchiveError(
            f"sidecar format {data.get('format')!r} is not the one this pullback reads "
            f"({FORMAT}); upgrade pullback on this machine"
        )
    validator = jsonschema.Draft202012Validator(load_schema("pullback.common", "sidecar"))
    # the best of the first few errors: a sidecar of a million wrong items (a client's
    # bytes) costs what finding a few of them costs, not seconds per megabyte
    first = itertools.islice(validator.iter_errors(data), MAX_SCHEMA_ERRORS)
    error = jsonschema.exceptions.best_match(first)
    if error is not None:
        where = "/".join(str(p) for p in error.absolute_path) or "top level"
        raise ArchiveError(f"sidecar is malformed at {where}: {error.message}")
    # JSON Schema's `$` lets a trailing newline through: the names must be whole
    if not (
        ARCHIVE_NAME.match(data["archive"]["name"])
        and _HOST.match(data["host"])
        and _STAMP.match(data["stamp"])
    ):
        raise ArchiveError(
            "sidecar is malformed: its host, stamp or archive name has extra characters"
        )
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
    fields["archive"] = ArchiveInfo(**_known(ArchiveInfo, data["archive"]))
    fields["services"] = services
    return Sidecar(**fields)


def _known(cls, data: dict) -> dict:
    """Only the keys ``cls`` knows (a newer writer may add more), statuses as Status."""
    known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
    if "status" in known:
        known["status"] = Status(known["status"])  # the schema allowed only known values
    return known
