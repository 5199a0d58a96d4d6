"""How something went: one vocabulary for tasks, services, archives, pulls and drills."""

from __future__ import annotations

from enum import StrEnum


class Status(StrEnum):
    """An outcome. Members are strings, so they are written to JSON and compared with
    what older files hold as they are."""

    OK = "ok"
    """A task, service, archive, maintenance run or drill that fully succeeded."""
    FAILED = "failed"
    SKIPPED = "skipped"
    """Not run, or nothing to do (a host already stored, or fresh)."""
    PARTIAL = "partial"
    """An archive in which at least one service failed."""
    STORED = "stored"
    """A host whose archive became a new snapshot."""
