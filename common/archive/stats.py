"""What one task put into an archive, and the exclude callback the writer takes."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from ..text import BoundedWarnings

MAX_TASK_WARNINGS = 1000
"""Warnings a task keeps (and its run logs): the rest are counted. A user who may write
below a listed path makes one per entry at will (60,000 hard links past
``max_holes_and_links``, sockets, files changing while read)."""


@dataclass
class TaskStats:
    """What a task put into the archive: files, bytes of data, warnings naming entries
    that were skipped or changed while read, and the trees asked for that were skipped
    whole (their warning says why; a files task fails for them: a restore cannot give
    them back, helper-156 F3)."""

    files: int = 0
    bytes: int = 0
    warnings: BoundedWarnings = field(
        default_factory=lambda: BoundedWarnings(limit=MAX_TASK_WARNINGS, width=None)
    )
    unarchived: list[str] = field(default_factory=list)

    def add(self, other: TaskStats) -> None:
        self.files += other.files
        self.bytes += other.bytes
        self.warnings.extend(other.warnings)
        self.warnings.dropped += other.warnings.dropped
        self.unarchived.extend(other.unarchived)

    def warning_lines(self) -> list[str]:
        """The warnings kept, then "... and N more warnings like these" for the rest."""
        return self.warnings.lines(MAX_TASK_WARNINGS)


ExcludeFn = Callable[[str, bool], bool]
"""``exclude(relative_path, is_dir)`` -> True to leave the entry (and below it) out."""
