"""What /proc says about the processes this one started."""

from __future__ import annotations

import contextlib
import os


def descendants(pid: int) -> list[int]:
    """Every living process below ``pid`` (from /proc), deepest last."""
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as handle:
                stat = handle.read()
        except OSError:
            continue
        fields = stat[stat.rfind(b")") + 2 :].split()
        parents[int(entry)] = int(fields[1])
    found: list[int] = []
    frontier = [pid]
    while frontier:
        below = [child for child, parent in parents.items() if parent in frontier]
        found += below
        frontier = below
    return found


def bytes_written_below(pid: int) -> int:
    """Bytes the living processes below ``pid`` have written to storage so far
    (``write_bytes`` of /proc/PID/io): how far a restic or borg restore is."""
    total = 0
    for child in descendants(pid):
        with contextlib.suppress(OSError, ValueError), open(f"/proc/{child}/io") as handle:
            for line in handle:
                if line.startswith("write_bytes:"):
                    total += int(line.split()[1])
    return total
