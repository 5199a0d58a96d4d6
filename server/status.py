"""The status file: per host, how its last pull went (``<state_dir>/status.json``)."""

from __future__ import annotations

import json
from pathlib import Path

from ..common.fsutil import atomic_write
from ..common.log import get_logger
from .results import FAILED, STORED, HostResult, iso, utc_now

log = get_logger("status")

STATUS_FILE = "status.json"


def load_status(state_dir: Path) -> dict:
    """The recorded status of every host ({} when nothing was recorded yet)."""
    try:
        data = json.loads((state_dir / STATUS_FILE).read_text())
    except FileNotFoundError:
        return {"hosts": {}}
    except ValueError:
        log.warning("%s is unreadable; starting a new one", state_dir / STATUS_FILE)
        return {"hosts": {}}
    data.setdefault("hosts", {})
    return data


def record(state_dir: Path, results: list[HostResult]) -> dict:
    """Merge ``results`` into the status file (written atomically); return the new status."""
    status = load_status(state_dir)
    now = iso(utc_now())
    for result in results:
        entry = status["hosts"].setdefault(result.host, {})
        entry.update(
            {
                "last_attempt": result.started or now,
                "last_result": result.status,
                "reason": result.reason,
                "problem": result.is_problem,
                "duration": round(result.duration, 3),
            }
        )
        if result.newest_snapshot:
            entry["newest_snapshot"] = result.newest_snapshot
        if result.status == STORED:
            entry.update(
                {
                    "last_success": result.started or now,
                    "archive": result.archive,
                    "stamp": result.stamp,
                    "size": result.size,
                    "content_bytes": result.content_bytes,
                    "bytes_added": result.bytes_added,
                    "snapshot_id": result.snapshot_id,
                }
            )
        elif result.status != FAILED:
            entry["last_success"] = result.started or now
    status["updated"] = now
    state_dir.mkdir(parents=True, exist_ok=True)
    atomic_write(state_dir / STATUS_FILE, json.dumps(status, indent=2, sort_keys=True) + "\n")
    return status
