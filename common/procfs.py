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


def flock_held(path: str | os.PathLike) -> bool | None:
    """Whether some process holds an ``flock`` on the file at ``path``, as /proc/locks
    tells: a held lock, whoever holds it, without opening the file (which needs its
    owner's rights) and without taking it (which could make its owner's next start
    fail). True: a lock on the file's inode on its device. None: it cannot be told
    (/proc/locks or the file cannot be read, or only a lock on the same inode number on
    another device is listed: btrfs and some overlays report another device in stat
    than in /proc/locks, while separate tmpfs mounts number their inodes alike). False:
    no lock on that inode number, or no such file."""
    try:
        found = os.stat(path)
        with open("/proc/locks", encoding="ascii", errors="replace") as handle:
            table = handle.read()
    except FileNotFoundError:
        return None if os.path.lexists(path) else False
    except OSError:
        return None
    device = f"{os.major(found.st_dev):02x}:{os.minor(found.st_dev):02x}:{found.st_ino}"
    same_number = False
    for line in table.splitlines():
        # "1: FLOCK  ADVISORY  WRITE 4242 fd:01:1234567 0 EOF" (a waiter's: "1: -> FLOCK")
        fields = line.split()
        if len(fields) < 6 or fields[1] != "FLOCK":
            continue
        if fields[5] == device:
            return True
        same_number = same_number or fields[5].endswith(f":{found.st_ino}")
    return None if same_number else False


def boot_id() -> str | None:
    """This boot's identifier (the kernel's ``boot_id``: a new one at every boot), None
    when /proc does not say it."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as handle:
            return handle.read().strip() or None
    except OSError:
        return None
