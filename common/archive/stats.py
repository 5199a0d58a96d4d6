"""What one task put into an archive, and the exclude callback the writer takes."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass
class TaskStats:
    """What a task put into the archive: files, bytes of data, warnings naming entries
    that were skipped or changed while read, and the trees asked for that were skipped
    whole (their warning says why; a files task fails for them: a restore cannot give
    them back, helper-156 F3)."""

    files: int = 0
    bytes: int = 0
    warnings: list[str] = field(default_factory=list)
    unarchived: list[str] = field(default_factory=list)

    def add(self, other: TaskStats) -> None:
        self.files += other.files
        self.bytes += other.bytes
        self.warnings.extend(other.warnings)
        self.unarchived.extend(other.unarchived)


ExcludeFn = Callable[[str, bool], bool]
"""``exclude(relative_path, is_dir)`` -> True to leave the entry (and below it) out."""
