"""The status file: per host, how its last pull went (``<state_dir>/status.json``)."""

from __future__ import annotations

import contextlib
import json
import math
import socket
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from ..common import jsontext, secrets
from ..common.clock import iso, utc_now
from ..common.errors import LockBusy, PullbackError
from ..common.fsutil import atomic_write
from ..common.locks import FileLock
from ..common.log import get_logger
from ..common.outcome import Status
from ..common.text import few, printable
from .fleet_view import HostState
from .merged_status import count_value, flag_value, history_run, seconds_value, time_value
from .results import HostResult

if TYPE_CHECKING:
    from .config import HostConfig

log = get_logger("status")

STATUS_FILE = "status.json"
STATUS_LOCK = "status.lock"
HISTORY = 30
KEPT_WARNINGS = 25


def read_status(state_dir: Path) -> dict:
    """The recorded status of every host (no hosts when nothing was recorded yet).

    Raises OSError when the file cannot be read (permissions), ValueError when it is not
    a status file (nested too deeply too: :func:`~..common.jsontext.document`)."""
    try:
        data = jsontext.document((state_dir / STATUS_FILE).read_text(), standard=False)
    except FileNotFoundError:
        return {"hosts": {}}
    if not isinstance(data, dict) or not isinstance(data.setdefault("hosts", {}), dict):
        raise ValueError("not a status file")
    # a host's entry that is not an object is nobody's record (an outside attack's list
    # made snapshots, check and pull end in a traceback): dropped, the others kept
    data["hosts"] = {k: v for k, v in data["hosts"].items() if isinstance(v, dict)}
    _say_dropped(
        state_dir, [f"{host}.{key}" for host, e in data["hosts"].items() for key in _odd(e)]
    )
    return data


def _text(value: object) -> str | None:
    return value if isinstance(value, str) else None


def _mapping(value: object) -> dict | None:
    return value if isinstance(value, dict) else None


def _runs(value: object) -> list | None:
    """A host's ``history``: a list of objects (others in it dropped), each run's result
    and size checked as a merged file's are (:func:`~.merged_status.history_run`)."""
    if not isinstance(value, list):
        return None
    return [{**run, **history_run(run)} for run in value if isinstance(run, dict)]


def _counts(value: object) -> dict | None:
    """``checksum_failures``: a count per archive."""
    if not isinstance(value, dict) or any(count_value(c) is None for c in value.values()):
        return None
    return value


_TIMES = (
    "last_attempt",
    "last_success",
    "last_checked",
    "newest_snapshot",
    "last_verified",
    "last_verified_attempt",
    "databases_proven",
    "last_maintained",
)
_COUNTS = (
    "snapshots",
    "repository_bytes",
    "size",
    "content_bytes",
    "bytes_added",
    "fetched_bytes",
    "store_peak_rss",
    "pull_peak_rss",
    "database_dumps",
)
_WORDS = (
    "last_result",
    "reason",
    "archive",
    "stamp",
    "snapshot_id",
    "verify_result",
    "verify_summary",
    "maintain_result",
    "maintain_reason",
)
_FACTS: dict[str, Callable[[object], object]] = {
    **dict.fromkeys(_TIMES, time_value),
    **dict.fromkeys(_COUNTS, count_value),
    **dict.fromkeys(_WORDS, _text),
    **dict.fromkeys(("problem", "stale", "delta", "fell_back", "pulled_disabled"), flag_value),
    "duration": seconds_value,
    "history": _runs,
    "checksum_failures": _counts,
    "copy": _mapping,
}
"""The facts of a host's entry that the readers of status.json (pull, status, the
page, the metrics, the mails) take for a type, each with its checker: the value when
it has the right shape, else None."""
_COPY_FACTS: dict[str, Callable[[object], object]] = {
    **dict.fromkeys(("attempt", "copied", "verified", "verify_attempt", "newest"), time_value),
    **dict.fromkeys(("result", "reason", "verify_result", "verify_summary"), _text),
    "snapshots": count_value,
}
"""The same for a host's second copy (its ``copy`` part)."""


def _odd(entry: dict, facts: Mapping[str, Callable[[object], object]] = _FACTS) -> list[str]:
    """Drop from ``entry`` each fact of ``facts`` whose value has another shape (a hand's
    edit, an older or damaged file: one date without its time made every pull crash
    after storing); returns their keys. A ``copy`` part is checked so too."""
    odd = []
    for key, check in facts.items():
        if key in entry and entry[key] is not None:
            checked = check(entry[key])
            if checked is None:
                del entry[key]
                odd.append(key)
            else:
                entry[key] = checked
    if isinstance(entry.get("copy"), dict) and facts is _FACTS:
        odd += [f"copy.{key}" for key in _odd(entry["copy"], _COPY_FACTS)]
    return odd


_SAID: set[tuple[str, ...]] = set()
"""What :func:`_say_dropped` has said in this process (a run reads the file often)."""


def _say_dropped(state_dir: Path, dropped: list[str]) -> None:
    """Warn once that ``dropped`` (``host.key``) were left out of status.json as read."""
    said = (str(state_dir), *dropped)
    if not dropped or said in _SAID:
        return
    _SAID.add(said)
    log.warning(
        "%s held values of the wrong shape, left out (the next run records them anew): %s",
        state_dir / STATUS_FILE,
        printable(few(dropped, 20), 1000),
    )


DAMAGED = STATUS_FILE + ".damaged"
"""A status file that could not be read is kept under this name: the ransomware guard's
holds and baselines were in it, so maintain holds every forget while it is there."""


def load_status(state_dir: Path) -> dict:
    """As :func:`read_status`, but an unreadable file is kept as :data:`DAMAGED` (the
    first one) and the status starts anew."""
    try:
        return read_status(state_dir)
    except ValueError:
        path, damaged = state_dir / STATUS_FILE, state_dir / DAMAGED
        if not damaged.exists():
            with contextlib.suppress(OSError):
                path.replace(damaged)
        log.error("%s is unreadable (kept as %s); starting a new one", path, damaged)
        return {"hosts": {}}


def recorded_hosts(state_dir: Path) -> dict:
    """The hosts of :func:`read_status`; none when the file is not a status file, which
    is left where it is (what reads it to judge, ``check`` among them, changes nothing:
    a run that records moves it aside, under the status lock). Raises OSError."""
    try:
        return read_status(state_dir)["hosts"]
    except ValueError:
        return {}


def configured(hosts: Iterable[HostConfig]) -> dict[str, dict]:
    """What :func:`record` keeps as ``configured``: each host server.yaml lists, with its
    ``max_age`` in seconds and, for a disabled one, ``enabled: false``."""
    return {
        h.name: {"max_age": h.max_age} | ({} if h.enabled else {"enabled": False}) for h in hosts
    }


def _listed(hosts: Mapping[str, Mapping]) -> dict[str, dict]:
    """``configured`` as status.json keeps it (by name)."""
    return {name: dict(hosts[name]) for name in sorted(hosts)}


CONFIGURED_WAIT = 10.0
"""Seconds :func:`record_configured` waits for another writer of status.json (it runs
in the units' ExecCondition=, before the run)."""


def record_configured(state_dir: Path, hosts: Mapping[str, Mapping]) -> bool:
    """Record ``hosts`` (:func:`configured`) as status.json's ``configured`` when no pull
    will: every host is disabled, so the units' ExecCondition= skips every pull (a
    monitoring machine merging the file judged hosts disabled since as enabled, stale,
    CRITICAL for ever: helper-144 F5). Only into a status file a run wrote before (the
    state directory is never made here), only when ``configured`` changes (nothing is
    written else); a file that cannot be read is left to the next run that records.
    Returns whether it was written. Raises OSError (status.json not readable: not root)
    and PullbackError (another writer held it CONFIGURED_WAIT seconds)."""
    if not (state_dir / STATUS_FILE).is_file():
        return False
    listed = _listed(hosts)
    with _locked(state_dir, CONFIGURED_WAIT):
        try:
            status = read_status(state_dir)
        except ValueError:
            return False
        if status.get("configured") == listed:
            return False
        status["configured"] = listed
        _save(state_dir, status)
        return True


def record(
    state_dir: Path,
    results: list[HostResult],
    hosts: Mapping[str, Mapping] | None = None,
    sizes: Mapping[str, int] | None = None,
    wait: float | None = None,
) -> dict:
    """Merge ``results`` into the status file (written atomically); return the new status.

    ``hosts``: every host server.yaml lists (:func:`configured`), recorded as
    ``configured`` so that another server's ``status --merge`` shows just those hosts,
    judges each by its own ``max_age`` and a disabled one as such (None: the recorded
    ones are kept). A disabled host's result is marked ``pulled_disabled`` (a run that
    named it: its outcome counts though the host is disabled). ``sizes``: the
    repository size of hosts this run did not pull too (a group's members), recorded for
    those already known. ``wait``: for another writer (:func:`_locked`)."""
    with _locked(state_dir, wait):
        status = load_status(state_dir)
        _record_fleet(status, hosts, sizes or {})
        now = iso(utc_now())
        disabled = {name for name, c in (hosts or {}).items() if c.get("enabled") is False}
        for result in results:
            entry = status["hosts"].setdefault(result.host, {})
            if result.fresh and entry.get("last_result") != Status.FAILED:
                # a quiet skip: the host is fine; only say when it was last looked at
                # (after a failure it is recorded: the failure is over)
                entry["last_checked"] = result.started or now
                if result.newest_snapshot:  # the repository's word: corrects an older record
                    entry["newest_snapshot"] = result.newest_snapshot
                continue
            _record_result(entry, result, now, result.host in disabled)
        return _save(state_dir, status)


def _record_result(entry: dict, result: HostResult, now: str, disabled: bool) -> None:
    """Record in a host's ``entry`` the pull ``result`` (``disabled``: of a host disabled
    in server.yaml, which a run named: marked ``pulled_disabled``)."""
    entry.update(
        {
            "last_attempt": result.started or now,
            "last_result": result.status,
            "reason": result.reason,
            "problem": result.is_problem,
            "duration": round(result.duration, 3),
            "snapshots": result.snapshot_count,
            "stale": result.stale,
            "warnings": result.warnings[:KEPT_WARNINGS],
        }
    )
    entry.update(_known_facts(result))
    if disabled:
        entry["pulled_disabled"] = True
    else:
        entry.pop("pulled_disabled", None)
    _count_checksum_failure(entry, result)
    if result.status == Status.STORED:
        entry.update(
            {
                "last_success": result.started or now,
                "archive": result.archive,
                "stamp": result.stamp,
                "size": result.size,
                "content_bytes": result.content_bytes,
                "bytes_added": result.bytes_added,
                "fetched_bytes": result.fetched_bytes,
                "delta": result.delta,
                "archives_applied": result.applied,
                "fell_back": result.fell_back,
                "snapshot_id": result.snapshot_id,
                "failed_services": result.client_failed_services,
            }
        )
    elif result.status != Status.FAILED:
        entry["last_success"] = result.started or now
    entry.setdefault("history", []).append(
        {
            "time": result.started or now,
            "result": Status.FAILED
            if result.status == Status.FAILED
            else (HostState.ATTENTION if result.is_problem else result.status),
            "repository_bytes": entry.get("repository_bytes"),
        }
    )
    entry["history"] = entry["history"][-HISTORY:]


def _record_fleet(
    status: dict, hosts: Mapping[str, Mapping] | None, sizes: Mapping[str, int]
) -> None:
    """What :func:`record` keeps of hosts besides its results: ``configured`` and the
    sizes of hosts already known."""
    if hosts is not None:
        status["configured"] = _listed(hosts)
    for host, size in sizes.items():
        if isinstance(status["hosts"].get(host), dict):
            status["hosts"][host]["repository_bytes"] = size


CHECKSUM_FAILURES_KEPT = 10


def _count_checksum_failure(entry: dict, result: HostResult) -> None:
    """``checksum_failures``: per archive, how many pulls found its bytes not matching its
    sidecar (a stored snapshot clears them: they are all older then)."""
    if result.status == Status.STORED:
        entry.pop("checksum_failures", None)
        return
    if result.checksum_failed is None:
        return
    failures = dict(entry.get("checksum_failures") or {})
    failures[result.checksum_failed] = int(failures.get(result.checksum_failed, 0)) + 1
    entry["checksum_failures"] = dict(sorted(failures.items())[-CHECKSUM_FAILURES_KEPT:])


def checksum_failures(state_dir: Path, host: str) -> dict[str, int]:
    """What :func:`_count_checksum_failure` recorded for ``host``."""
    return recorded_failures(load_status(state_dir), host)


def recorded_failures(status: dict, host: str) -> dict[str, int]:
    """What :func:`_count_checksum_failure` recorded for ``host`` in ``status``."""
    entry = status["hosts"].get(host, {})
    failures = entry.get("checksum_failures") if isinstance(entry, dict) else None
    return {str(k): int(v) for k, v in failures.items()} if isinstance(failures, dict) else {}


def client_protocol(state_dir: Path, host: str) -> int:
    """The serve protocol ``host``'s client last said it speaks (1 when not known)."""
    entry = load_status(state_dir)["hosts"].get(host, {})
    value = entry.get("client_protocol") if isinstance(entry, dict) else None
    return value if isinstance(value, int) and not isinstance(value, bool) else 1


def _known_facts(result: HostResult) -> dict:
    """What the result knows and an earlier entry may hold: kept unless known anew."""
    facts = {
        "newest_snapshot": result.newest_snapshot,
        "repository_bytes": result.repository_bytes,
        "store_peak_rss": result.store_peak_rss or None,
        "pull_peak_rss": result.peak_rss or None,
        "database_dumps": result.database_dumps,
        "client_protocol": result.client_protocol,
    }
    return {key: value for key, value in facts.items() if value is not None}


def server_name() -> str:
    """This machine's host name (``socket.gethostname()``: no resolver is asked, so a
    broken DNS cannot hold a run up): the ``server`` each status file records, and what
    ``status --merge`` shows in its SERVER column."""
    return socket.gethostname()


STATUS_LOCK_WAIT = 300.0
"""Seconds a writer of status.json waits for another one (a copy beside a pull)."""


@contextlib.contextmanager
def _locked(state_dir: Path, wait: float | None = None) -> Iterator[None]:
    """Hold ``status.lock`` while a writer reads, changes and saves the status file: a
    copy (its own lock) may record beside a pull or maintenance (the instance lock).
    Raises PullbackError (exit 1, not 75: the run did its work and could not record it)
    when it stays held ``wait`` seconds (STATUS_LOCK_WAIT when None, read at the call)."""
    lock = FileLock(state_dir / STATUS_LOCK, "status.json")
    try:
        lock.acquire(wait=STATUS_LOCK_WAIT if wait is None else wait)
    except LockBusy as exc:
        raise PullbackError(f"status.json could not be written: {exc}") from None
    with lock:
        yield


def other_store(copy_entry: dict, location: str | None) -> bool:
    """Whether a host's copy record ``copy_entry`` is of another store than ``location``
    (``copy.location_id``); a record that names none (written before copies recorded
    their store) is taken as of the same store, and so is a store not known (None: its
    location file could not be read)."""
    return location is not None and copy_entry.get("location") not in (None, location)


def version(state_dir: Path) -> tuple[int, int] | None:
    """Which write of the status file is there now (its inode and mtime: every save
    replaces the file), None when there is none."""
    try:
        found = (state_dir / STATUS_FILE).stat()
    except OSError:
        return None
    return found.st_ino, found.st_mtime_ns


def _save(state_dir: Path, status: dict) -> dict:
    """Write ``status`` (every secret the process knows masked in its words: ``status``,
    the page and the metrics read it in a process that knows none). Returns it."""
    status["updated"] = iso(utc_now())
    status["server"] = server_name()
    state_dir.mkdir(parents=True, exist_ok=True)
    text = json.dumps(_masked(status), indent=2, sort_keys=True, allow_nan=False)
    atomic_write(state_dir / STATUS_FILE, text + "\n")
    return status


def _masked(value):
    """``value`` with :func:`secrets.mask` applied to its words: every string in it that
    holds whitespace (a reason, a summary, a problem), not an identifier read back (a
    snapshot id, a store's id, a time, a state, a key: an outside attack registered
    "2026" and every time became unreadable, "123" and a copy's own store was taken for
    another). A number that is not finite (a NaN or an infinity read from a damaged
    file, in a value no check reads) is written as null: status.json is JSON as the
    standard says it, which another server's ``status --merge`` reads (it refuses a
    NaN, and with it the whole file)."""
    if isinstance(value, str):
        return secrets.mask(value) if any(c.isspace() for c in value) else value
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _masked(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_masked(item) for item in value]
    return value


MORE_FAILED = 100
"""At most this many further failed snapshots (``verify_failed_others``) are kept, the
newest (a repair proven snapshot by snapshot names fewer: an outside review lost the
oldest of 23 at 20)."""


def _still_failed(entry: dict, drill) -> tuple[dict | None, list[dict]]:
    """The first failed snapshot of ``entry`` and the others, before ``drill`` is
    added: without the one it drilled, and without those it saw no longer listed."""
    first = entry.get("verify_failed_snapshot")
    first = first if isinstance(first, dict) else None
    others = entry.get("verify_failed_others")
    others = [o for o in others if isinstance(o, dict)] if isinstance(others, list) else []
    listed = drill.listed  # (None: not known) a forgotten snapshot's failure is over
    kept = [o for o in others if listed is None or o.get("id") in listed]
    kept = [o for o in kept if o.get("id") != drill.snapshot_id]
    if first is not None and (
        first.get("id") == drill.snapshot_id
        or drill.failed_before_gone
        or (listed is not None and first.get("id") not in listed)
    ):
        first = None
    return first, kept


def _record_failed_snapshots(entry: dict, drill, now: str) -> None:
    """Keep the snapshots whose drill failed and that no drill has proven since: the
    first in ``verify_failed_snapshot`` (the one the next drill tries again), others in
    ``verify_failed_others`` (a failed ``verify --snapshot`` of another one; an outside
    review saw one record overwrite the other). A passing drill of a snapshot ends its
    failure; a first one that is no longer listed ends too, and the next takes its
    place."""
    first, others = _still_failed(entry, drill)
    if not drill.ok:
        failed = {
            "id": drill.snapshot_id,
            "time": drill.snapshot_time,
            "at": now,
            "summary": drill.summary[: 300 if first is None else 200],
        }
        others = [*others, failed] if first is not None else [failed, *others]
    if first is None and others:
        first = others.pop(0)
    _put(entry, "verify_failed_snapshot", first)
    _put(entry, "verify_failed_others", others[-MORE_FAILED:] or None)


def _put(entry: dict, key: str, value: object) -> None:
    """``entry[key] = value``, or no ``key`` at all when ``value`` is None."""
    if value is None:
        entry.pop(key, None)
    else:
        entry[key] = value


def drill_status(drill) -> Status:
    """What ``verify_result`` records of ``drill``: ok, failed, or skipped when there was
    nothing to drill yet (no pullback snapshot before the host's first pull)."""
    if drill.waiting:
        return Status.SKIPPED
    return Status.OK if drill.ok else Status.FAILED


def _record_drill(entry: dict, drill, now: str) -> None:
    """Record ``drill`` in the host's ``entry``. One that found nothing to drill yet
    records only its result and words: no attempt (the next maintenance drills the
    first pull's snapshot at once), and it ends no failure recorded before."""
    entry["verify_result"] = drill_status(drill)
    entry["verify_summary"] = drill.summary
    if drill.waiting:
        return
    entry["last_verified_attempt"] = now
    entry["verify_problems"] = drill.problems[:20]
    entry["verify_warnings"] = drill.warnings[:20]
    if drill.databases:
        entry["database_proofs"] = [p.summary for p in drill.databases[:20]]
    if drill.ok:
        entry["last_verified"] = now
        entry["last_verified_snapshot"] = drill.snapshot_id
    if drill.ok or drill.snapshot_id:
        _record_failed_snapshots(entry, drill, now)
    if drill.databases_proven:  # every dump loaded, even when a file of it failed
        entry["databases_proven"] = now


def record_drills(state_dir: Path, drills) -> dict:
    """Record restore drills (``pullback-server verify``)."""
    with _locked(state_dir):
        status = load_status(state_dir)
        now = iso(utc_now())
        for drill in drills:
            _record_drill(status["hosts"].setdefault(drill.host, {}), drill, now)
        return _save(state_dir, status)


def guard_entry(status: dict, host: str, scope: str = "") -> dict:
    """Where the ransomware guard's state of ``host`` is kept: its entry, or for its
    second copy (``scope`` ``"copy"``) the entry's ``copy`` part (created as needed when
    the status is saved afterwards)."""
    entry = status["hosts"].setdefault(host, {})
    return entry.setdefault("copy", {}) if scope == "copy" else entry


def record_maintenance(state_dir: Path, results) -> dict:
    """Record maintenance runs: their result, the repository size, a drill if one ran
    (a second copy's run in the host's ``copy`` part)."""
    with _locked(state_dir):
        status = load_status(state_dir)
        now = iso(utc_now())
        for result in results:
            entry = guard_entry(status, result.host, getattr(result, "scope", ""))
            entry["last_maintained"] = now
            entry["maintain_result"] = result.status
            entry["maintain_reason"] = result.reason
            # the steps that failed besides the drill (which has its own record)
            entry["maintain_failed"] = [s.name for s in result.steps if not s.ok]
            if result.repository_size is not None:
                entry["repository_bytes"] = result.repository_size
            held = entry.get("snapshots")
            if getattr(result, "scope", "") == "copy" and isinstance(held, int) and held > 0:
                # the copy's own retention forgot these: not a loss for the next copy
                entry["snapshots"] = max(0, held - getattr(result, "forgotten", 0))
            if result.drill is not None:
                _record_drill(entry, result.drill, now)
            if result.hold is not None:
                entry["guard_hold"] = result.hold
            if result.judged is not None:
                entry["guard_judged"] = result.judged
            seen = getattr(result, "seen", None)
            if seen is not None:  # {}: the guard is off, the record would go stale
                _put(entry, "guard_seen", seen or None)
        return _save(state_dir, status)


def record_guard_seen(state_dir: Path, host: str, seen: dict) -> dict:
    """Record at once what the ransomware guard saw of ``host``'s repository
    (``guard_seen``, :func:`.guard.seen`), before the maintenance's end records it
    again: a run stopped after its forget (a SIGTERM during prune or check, a crash)
    otherwise left the record of before it, and the next guard read the snapshots that
    forget removed as deleted behind its back. The host's own repository only."""
    with _locked(state_dir):
        status = load_status(state_dir)
        status["hosts"].setdefault(host, {})["guard_seen"] = seen
        return _save(state_dir, status)


def record_copies(state_dir: Path, results) -> dict:
    """Record copy runs (``pullback-server copy``) in each host's ``copy`` entry: the
    attempt, its result and reason, what the copy holds, when it last succeeded, and
    its drill (``verify_*``) when one ran. A copy made by the run, or in another store
    than the one recorded (``location``), starts its entry anew: nothing of the old
    store's (its drill, its maintenance, a guard's hold) is shown as the new one's."""
    with _locked(state_dir):
        status = load_status(state_dir)
        now = iso(utc_now())
        for result in results:
            host = status["hosts"].setdefault(result.host, {})
            entry = host.setdefault("copy", {})
            moved = other_store(entry, result.location)
            if result.made or (moved and result.status == Status.OK):
                # another copy: the old one's counts, drills and holds end (a failed run
                # never ends them: a location file unreadable for one run named another
                # store, and the record of the copy that was gone went with it)
                entry.clear()
            if result.location is not None and (result.status == Status.OK or not moved):
                entry["location"] = result.location
            entry.update(attempt=now, result=result.status, reason=result.reason)
            if result.status == Status.OK or getattr(result, "counted", False):
                # a run that failed before listing the copy keeps the last known count
                # (the copy that is gone "held N"); one that listed it records what it
                # holds, so a loss found is said once
                entry.update(snapshots=result.snapshots, newest=result.newest)
            if result.status == Status.OK:
                entry["copied"] = now
            if result.drill is not None:
                if not result.drill.waiting:  # (as in _record_drill: no attempt)
                    entry["verify_attempt"] = now
                entry["verify_result"] = drill_status(result.drill)
                entry["verify_summary"] = result.drill.summary
                if result.drill.ok:
                    entry["verified"] = now
        return _save(state_dir, status)


def release_hold(state_dir: Path, host: str, scope: str = "") -> dict | None:
    """End the ransomware guard's hold on ``host`` (its second copy's: ``scope``
    ``"copy"``): its snapshot is accepted, and the next maintenance compares the newest
    snapshot against it. Returns the hold that was ended, or None when there was none."""
    with _locked(state_dir):
        status = load_status(state_dir)
        entry = guard_entry(status, host, scope)
        hold = entry.pop("guard_hold", None)
        if not isinstance(hold, dict):
            return None
        entry["guard_judged"] = hold.get("snapshot")  # the next comparison starts from it
        if hold.get("kind") == "tampered":  # the snapshots as they are now are accepted
            entry.pop("guard_seen", None)
        entry["guard_released"] = {"snapshot": hold.get("snapshot"), "time": iso(utc_now())}
        _save(state_dir, status)
        return hold


ACCEPTED = ("last_attempt", "last_result", "reason")
"""What :func:`accept_pull` returns of the pull it accepted."""


def accept_pull(state_dir: Path, host: str) -> dict | None:
    """Accept the last pull of ``host``, disabled in server.yaml, that a run named
    (``pulled_disabled``: a failed ``pull --host OLD`` of a machine that is gone counted
    until a pull of it passed, which it never will; helper-144 F2): it counts no more,
    as a pull that failed before the host was disabled. Returns that pull's
    :data:`ACCEPTED` facts, or None when no such pull is recorded (nothing written). The
    caller checks that the host is disabled: an enabled host's every pull counts."""
    with _locked(state_dir):
        status = load_status(state_dir)
        entry = status["hosts"].get(host)
        if not isinstance(entry, dict) or entry.pop("pulled_disabled", None) is not True:
            return None
        _save(state_dir, status)
        return {key: entry.get(key) for key in ACCEPTED}


def record_outputs(state_dir: Path, problems: list[str], kind: str = "run") -> dict:
    """Record which configured outputs (metrics file, status page, mail, pings) the last
    run of ``kind`` (pull, maintain, copy, verify) could not write or deliver; an empty
    list clears that kind's record alone (a maintenance, which sends no pull pings,
    cleared a pull's undelivered ping: an outside walk). ``problems`` holds them all."""
    with _locked(state_dir):
        status = load_status(state_dir)
        found = status.get("outputs")
        runs = found.get("runs") if isinstance(found, dict) else None
        runs = (
            {k: v for k, v in runs.items() if isinstance(v, list)} if isinstance(runs, dict) else {}
        )
        runs[kind] = problems[:KEPT_WARNINGS]
        runs = {k: v for k, v in runs.items() if v}
        if runs:
            every = list(dict.fromkeys(str(p) for kept in runs.values() for p in kept))
            status["outputs"] = {
                "time": iso(utc_now()),
                "problems": every[:KEPT_WARNINGS],
                "runs": runs,
            }
        else:
            status.pop("outputs", None)
        return _save(state_dir, status)


def output_problems(status: dict) -> list[str]:
    """What :func:`record_outputs` recorded ([] when every output was written)."""
    outputs = status.get("outputs")
    problems = outputs.get("problems") if isinstance(outputs, dict) else None
    return [str(p) for p in problems] if isinstance(problems, list) else []
