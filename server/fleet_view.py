"""One view of the fleet, from the status file: what the status page, ``status`` and the
summary's history show; with ``status --merge``, the hosts of other pull servers too, read
from copies of their status files (another machine's words: bounded and cleaned)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

from ..common.archive.sidecar import FAILED_NAMED
from ..common.clock import signed_age, utc_now
from ..common.outcome import Status
from ..common.text import few, printable
from ..common.units import human_ago, human_size
from .config import ServerConfig
from .host_state import HISTORY_CELLS, SYMBOLS, HostState, pull_counts
from .journal import NO_ACTIVITY, WAITING, InterruptedRun, PullActivity
from .merged_status import Source, default_copy_max_age, default_max_age, read_merged
from .metrics import is_stale, stale_time

__all__ = ["HostRow", "HostState", "Source", "fleet", "read_merged", "rows"]

SAID = 300
"""Characters of a recorded reason (words a tool, a store or a client wrote) shown."""


_ORDER = {state: rank for rank, state in enumerate(HostState)}


@dataclass(frozen=True)
class CopyView:
    """How a host's second copy stands (``pullback-server copy``; status.json's ``copy``)."""

    copied_age: float | None
    """Seconds since the last copy that succeeded (None: never)."""
    newest_age: float | None
    """Seconds since the copy's newest snapshot was taken."""
    drilled_age: float | None
    """Seconds since a drill last proved the copy."""
    stale: bool
    """The copy's newest snapshot is older than ``copy.max_age``, dated ahead, or it
    holds none."""
    problem: str | None
    """Why the last copy failed (it fell behind, diverged, or could not run)."""
    held: str | None = None
    """Why the ransomware guard holds the copy's forget (None: it does not)."""

    @property
    def text(self) -> str:
        """``copied 3h ago, drilled 2d ago`` (what status and the page show), and what
        needs attention after it (``; failed``, ``; stale``, ``; forget held``): an
        outside walk saw a failed copy's cell read as a good one."""
        flags = [word for word, on in (("failed", self.problem), ("forget held", self.held)) if on]
        if self.copied_age is None:
            return "; ".join(["never copied", *flags])
        if self.stale:
            flags.append("stale")
        said = f"copied {human_ago(self.copied_age)}, drilled {human_ago(self.drilled_age)}"
        return "; ".join([said, *flags])

    @property
    def complaint(self) -> str | None:
        """Why the copy needs attention, or None."""
        if self.held:
            return f"copy's forget held by the ransomware guard: {self.held}"
        if self.problem:
            return f"copy failed: {self.problem}"
        if self.stale:
            return "copy stale: no copied snapshot within copy.max_age"
        return None


def copy_view(entry: dict, max_age: float, now: dt.datetime) -> CopyView:
    """The copy part of a host's status ``entry``; stale past ``max_age`` seconds."""
    found = entry.get("copy")
    copy: dict = found if isinstance(found, dict) else {}
    newest = signed_age(copy.get("newest"), now)
    failed = copy.get("result") == Status.FAILED
    maintained = (
        f"the copy's last maintenance failed: {printable(copy.get('maintain_reason', ''), SAID)}"
        if _maintenance_failed(copy)
        else None
    )
    return CopyView(
        copied_age=signed_age(copy.get("copied"), now),
        newest_age=newest,
        drilled_age=signed_age(copy.get("verified"), now),
        stale=stale_time(copy.get("newest"), max_age, now),
        problem=(
            printable(copy.get("reason", ""), SAID)
            if failed
            else "the last drill of the copy failed: "
            + printable(copy.get("verify_summary", ""), SAID)
            if copy.get("verify_result") == Status.FAILED
            else maintained
        ),
        held=printable(hold.get("reason"), SAID)
        if isinstance(hold := copy.get("guard_hold"), dict)
        else None,
    )


@dataclass
class HostRow:
    host: str
    state: HostState
    result: str
    reason: str = ""
    stale: bool = False
    """No snapshot within ``max_age``, or none at all (whatever the state says first)."""
    newest_age: float | None = None
    verified_age: float | None = None
    verify_result: Status | None = None
    databases_age: float | None = None
    """How long ago a drill last loaded every database dump of the host."""
    has_databases: bool = False
    """The host's newest snapshot holds database dumps (seen when stored, or by a drill)."""
    repository_bytes: int | None = None
    duration: float | None = None
    store_peak_rss: int | None = None
    history: list[str] = field(default_factory=list)
    sizes: list[int] = field(default_factory=list)
    held: str | None = None
    """Why the ransomware guard holds forget for the host (None: it does not)."""
    server: str = ""
    """The pull server whose status file the row comes from (with ``status --merge``;
    "" without)."""
    copy: CopyView | None = None
    """The host's second copy (None: no copy is configured)."""
    warnings: list[str] = field(default_factory=list)
    """The last pull's warnings (the status page shows them): at most PAGE_WARNINGS, each
    one line of at most 300 characters, and a last line saying how many more."""
    delta: bool | None = None
    """Whether the last stored archive was a delta (None: not recorded)."""
    fell_back: bool = False
    """Whether the last pull that stored fell back to its chain's full archive."""
    client_failed: list[str] = field(default_factory=list)
    """The services that failed on the client in the newest stored archive (its
    snapshot is partial)."""
    disabled: bool = False
    """server.yaml leaves the host out of pulls (``enabled: false``): never stale; its
    state :attr:`HostState.DISABLED` unless a recorded outcome still counts."""
    killed: str | None = None
    """How a pull that could not write the status file ended, and what it was doing for
    this host then: ``killed while storing`` (SIGKILL, the OOM killer, a power cut),
    ``stopped by SIGTERM while connecting`` (None: no such pull since the status file
    was written)."""

    @property
    def label(self) -> str:
        """``web1``, or with status files merged ``web1 (backup2)``."""
        return f"{self.host} ({self.server})" if self.server else self.host

    @property
    def result_text(self) -> str:
        """``stored (delta)``, ``stored (full)``, ``stored (delta, fell back)`` (staging
        was not the delta's base: an outside test read ``stored (delta)`` and missed the
        warning), or the last result alone."""
        if self.result != "stored" or self.delta is None:
            return self.result
        return (
            f"stored ({'delta' if self.delta else 'full'}{', fell back' if self.fell_back else ''})"
        )

    @property
    def databases_text(self) -> str:
        """``2 hours ago``, ``never`` (dumps but never all proven) or ``-`` (no dumps)."""
        if self.databases_age is not None:
            return human_ago(self.databases_age)
        return "never" if self.has_databases else "-"

    @property
    def history_text(self) -> str:
        return "".join(SYMBOLS.get(r, "?") for r in self.history)

    @property
    def trend(self) -> str:
        """``1.2 GiB, +35 MiB over the last 9 runs`` from the recorded sizes."""
        if not self.sizes:
            return "-"
        now = human_size(self.sizes[-1])
        if len(self.sizes) < 2:
            return now
        delta = self.sizes[-1] - self.sizes[0]
        sign = "+" if delta >= 0 else "-"
        return f"{now}, {sign}{human_size(abs(delta))} over the last {len(self.sizes)} runs"


def rows(config: ServerConfig, status: dict, now: dt.datetime | None = None) -> list[HostRow]:
    """A row per configured host, failures first, then stale, then needing attention."""
    now = now or utc_now()
    hosts = status.get("hosts", {})
    found = [host_row(h.name, hosts.get(h.name, {}), h.max_age, now) for h in config.hosts]
    for host, row in zip(config.hosts, found, strict=True):
        if not host.enabled:
            _disable(row, hosts.get(host.name, {}))
    if config.backend.copy is not None:
        for host, row in zip(config.hosts, found, strict=True):
            # a copy is not fresher than its primary may be
            limit = max(config.backend.copy.max_age, host.max_age)
            _add_copy(row, hosts.get(row.host, {}), limit, now)
    return sorted(found, key=_rank)


DISABLED_WORDS = "disabled in server.yaml (enabled: false): not pulled, maintained or copied"

PULL_RECORDS = ("last_result", "reason", "problem", "failed_services")
"""What a host's entry says of its last pull: not counted for a disabled host unless a
run that named it made that pull (:func:`~.host_state.pull_counts`)."""


def _disable(row: HostRow, entry: dict) -> None:
    """Make ``row`` a disabled host's (its ``entry`` as status.json holds it): its facts
    kept (its snapshots stay restorable), never stale and never counted as never pulled
    (a host left out of pulls for good was CRITICAL for ever, hiding the next real one:
    helper-134). What a run recorded still counts: a failed restore drill, a
    maintenance that failed, a ransomware guard's hold (its snapshots are what it is
    kept for), and the last pull's failure when a run that named the host made it
    (helper-138: ``pull``, ``maintain`` or ``verify`` of a disabled host, whose failure
    was hidden). Its state is :attr:`HostState.DISABLED` when nothing counts."""
    row.stale = False
    row.disabled = True
    counted = (
        entry
        if pull_counts(entry, enabled=False)
        else {key: value for key, value in entry.items() if key not in PULL_RECORDS}
    )
    row.state = _state(counted, stale=False)
    row.client_failed = _client_failed(counted)
    row.held = _held(counted)
    if row.state == HostState.OK:
        row.state = HostState.DISABLED
        row.reason = DISABLED_WORDS
    else:
        row.reason = f"{row.held or _reason(counted)} ({DISABLED_WORDS})"


def _mark_killed(found: list[HostRow], killed: InterruptedRun) -> None:
    """The rows of the hosts a killed pull was pulling: the status file holds the pull
    before it, so each such row needs attention and says what was cut."""
    for row in found:
        phase = killed.phases.get(row.host)
        if phase is None:
            continue
        # (the journal's words: bounded and printable everywhere)
        row.killed = f"{printable(killed.how, 40)} while {printable(phase, 40)}"
        words = (
            f"the last pull (pid {killed.pid}, started {printable(killed.started, 40)}) was "
            f"{row.killed}; the next pull reports it and removes a repository lock it left"
        )
        row.reason = f"{row.reason}; {words}" if row.reason else words
        # (disabled: a run that named it was cut, as pull_activity left only those)
        if row.state in (HostState.OK, HostState.DISABLED):
            row.state = HostState.ATTENTION


def _add_copy(row: HostRow, entry: dict, max_age: float, now: dt.datetime) -> None:
    """Give ``row`` its copy's view; a copy that needs attention makes an ok row so. A
    disabled host's (:func:`_disable` first) is not copied, so never stale, but what was
    recorded of the copy of the snapshots it is kept for counts as its primary's drill,
    maintenance and hold do: the ransomware guard's hold on the copy, a failed drill or
    maintenance of the copy, a failed copy run (helper-144 F8: in status.json and in no
    row, exit code or gauge). ``pullback-server copy --host NAME`` copies from this
    server's primary repository, so a failed copy run of a disabled host has a way out
    (``release NAME --copy`` ends a hold)."""
    view = copy_view(entry, max_age, now)
    row.copy = replace(view, stale=False) if row.disabled else view
    complaint = row.copy.complaint
    if complaint and row.state == HostState.OK:
        row.state = HostState.ATTENTION
        row.reason = row.reason or complaint
    elif complaint and row.state == HostState.DISABLED:
        row.state = HostState.ATTENTION
        row.reason = f"{complaint} ({DISABLED_WORDS})"


def _rank(row: HostRow, own: str = "") -> tuple[int, bool, str, str]:
    """Worst state first; within one, the rows of server ``own`` (this one) before a
    merged file's (thousands of a file's hosts cannot push this server's out of the
    names a line shows), then by host."""
    return _ORDER[row.state], row.server != own, row.host, row.server


def _state(entry: dict, stale: bool) -> HostState:
    """Failed (the last pull), else stale, else needing attention, else ok."""
    if entry.get("last_result") == Status.FAILED:
        return HostState.FAILED
    if stale:
        return HostState.STALE
    if (
        entry.get("problem")
        or _client_failed(entry)  # (written with problem false by hand or an older server)
        or entry.get("verify_result") == Status.FAILED
        or isinstance(entry.get("verify_failed_snapshot"), dict)
        or _maintenance_failed(entry)
        or isinstance(entry.get("guard_hold"), dict)
    ):
        return HostState.ATTENTION
    return HostState.OK


OWN_RECORDS = ("drill", "guard")
"""Maintenance steps whose failure has a record of its own: the drill's (``verify_*``)
and the ransomware guard's hold (``guard_hold``, which ``release`` ends: an outside
review saw the host stay in attention after it, until the next maintenance)."""


def _maintenance_failed(entry: dict) -> bool:
    """The last maintenance failed in a step other than the drill (a drill has its own
    record): a repository ``check`` that found damage stays a problem until a later
    maintenance passes, which reads the same part again (an outside test saw "repository
    contains errors" reach no status, page or metric)."""
    failed = entry.get("maintain_failed")
    if entry.get("maintain_result") != Status.FAILED:
        return False
    if not isinstance(failed, list):  # written before 0.3.3: the reason says which
        return not str(entry.get("maintain_reason", "")).startswith(("drill: ", "guard: "))
    return any(step not in OWN_RECORDS for step in failed)


def _drill_words(entry: dict) -> str | None:
    """What a failed restore drill makes the row say, or None: the last drill, or the
    earlier one of a snapshot that no drill has proven since."""
    failed = entry.get("verify_failed_snapshot")
    if entry.get("verify_result") == Status.FAILED:
        said = printable(str(entry.get("verify_summary") or "see status --json"), SAID)
        standing = ""
        if isinstance(failed, dict) and str(failed.get("id")) not in said:
            standing = f"; the drill of snapshot {printable(str(failed.get('id')), 64)} failed too"
        return f"the last restore drill failed: {said}{standing}{_more_failed(entry, said)}"
    if isinstance(failed, dict):
        said = printable(str(failed.get("summary") or "see status --json"), SAID)
        when = printable(str(failed.get("at")), 40)
        return (
            f"the restore drill of {when} failed: {said}; the next drill tries that "
            "snapshot again, until it passes or the snapshot is forgotten" + _more_failed(entry)
        )
    return None


def _more_failed(entry: dict, said: str = "") -> str:
    """The words for further snapshots whose drill failed (``verify --snapshot``) and
    that ``said`` does not name already, or ""."""
    others = entry.get("verify_failed_others")
    others = others if isinstance(others, list) else []
    count = sum(1 for o in others if not (isinstance(o, dict) and str(o.get("id")) in said))
    if not count:
        return ""
    which = "another snapshot" if count == 1 else f"{count} other snapshots"
    return f"; {which} failed a drill too (status --json: verify_failed_others)"


def _reason(entry: dict) -> str:
    """What the row says under the table: the last pull's words, and after them, unless
    that pull failed (its words come first and alone), that a restore drill failed or
    the last maintenance did (what made the host need attention)."""
    reason = str(entry.get("reason", ""))
    if entry.get("last_result") == Status.FAILED:
        return reason
    said = [reason] if reason else []
    failed = _client_failed(entry)
    if failed:
        said.append(f"failed on the client: {few(failed)} (the snapshot is partial)")
    drill = _drill_words(entry)
    if drill:
        said.append(drill)
    if _maintenance_failed(entry):
        why = printable(str(entry.get("maintain_reason") or "see status --json"), SAID)
        said.append(f"the last maintenance failed: {why}")
    return "; ".join(said)


def host_row(
    name: str, entry: dict, max_age: float, now: dt.datetime, *, server: str = ""
) -> HostRow:
    """The row of the host ``name`` from its status ``entry``, stale past ``max_age``."""
    stale = is_stale(entry, max_age, now)
    held = _held(entry)
    history = entry.get("history", [])[-HISTORY_CELLS:]
    return HostRow(
        host=name,
        state=_state(entry, stale),
        result=entry.get("last_result", "never pulled"),
        reason=held or _reason(entry),
        stale=stale,
        newest_age=signed_age(entry.get("newest_snapshot"), now),
        verified_age=signed_age(entry.get("last_verified"), now),
        verify_result=entry.get("verify_result"),
        databases_age=signed_age(entry.get("databases_proven"), now),
        has_databases=bool(entry.get("database_proofs") or entry.get("database_dumps")),
        repository_bytes=entry.get("repository_bytes"),
        duration=entry.get("duration"),
        store_peak_rss=entry.get("store_peak_rss"),
        history=[h.get("result", "?") for h in history],
        sizes=[h["repository_bytes"] for h in history if h.get("repository_bytes")],
        held=held,
        server=server,
        warnings=_page_warnings(entry.get("warnings")),
        delta=entry["delta"] if isinstance(entry.get("delta"), bool) else None,
        fell_back=entry.get("fell_back") is True,
        client_failed=_client_failed(entry),
    )


def _held(entry: dict) -> str | None:
    """Why the ransomware guard holds forget for the host, in words (None: it does not)."""
    hold = entry.get("guard_hold")
    return (
        f"forget held by the ransomware guard: {hold.get('reason')}"
        if isinstance(hold, dict)
        else None
    )


def _client_failed(entry: dict) -> list[str]:
    """The services that failed on the client in the host's newest stored archive, as
    status.json keeps them (words the client chose: printable, cut); [] after a failed
    pull, whose words come alone."""
    found = entry.get("failed_services")
    if entry.get("last_result") == Status.FAILED or not isinstance(found, list):
        return []
    return [printable(name, 130) for name in found[:FAILED_NAMED]]


PAGE_WARNINGS = 5
"""The last pull's warnings a host's row shows; ``status --json`` has them all."""


def _page_warnings(warnings: object) -> list[str]:
    """The first PAGE_WARNINGS of a status entry's ``warnings`` (a client's words, or a
    merged file's: each made one line of at most 300 characters), and how many more."""
    if not isinstance(warnings, list):
        return []
    shown = [printable(w, SAID) for w in warnings[:PAGE_WARNINGS]]
    if len(warnings) > PAGE_WARNINGS:
        shown.append(f"… and {len(warnings) - PAGE_WARNINGS} more (status --json)")
    return shown


# ---- status --merge: other servers' status files (read in .merged_status) ----------


def source_rows(source: Source, now: dt.datetime) -> list[HostRow]:
    """The rows of a merged file: the hosts its server.yaml listed when it was written
    (``configured``), each stale past its own ``max_age``, a disabled one as this
    server's are (:func:`_disable`); from a file that records none (written by an older
    pullback), every host it holds, by :func:`default_max_age`."""
    hosts = source.status.get("hosts", {})
    configured = source.status.get("configured", {name: {} for name in hosts})
    found = []
    for name, limits in configured.items():
        entry = hosts.get(name, {})
        row = host_row(name, entry, limits.get("max_age") or default_max_age(), now)
        row.server = source.server
        if limits.get("enabled") is False:
            _disable(row, entry)
        if "copy" in entry:  # that server copies: judged by the default copy.max_age
            _add_copy(row, entry, default_copy_max_age(), now)
        found.append(row)
    return found


@dataclass(frozen=True)
class Fleet:
    """This server's hosts and those of the merged status files: one view."""

    rows: list[HostRow]
    sources: list[Source]
    """This server first, then the merged files in the order given."""
    now: dt.datetime
    activity: PullActivity = NO_ACTIVITY
    """A pull running now, or one killed since the status file was written."""

    @property
    def merged(self) -> bool:
        return len(self.sources) > 1

    def duplicates(self) -> dict[str, list[str]]:
        """Each host that more than one server shows (a mistake of sharding: every row is
        kept), with those servers."""
        order = {source.server: index for index, source in enumerate(self.sources)}
        servers: dict[str, list[str]] = {}
        for row in self.rows:
            servers.setdefault(row.host, []).append(row.server)
        return {
            host: sorted(found, key=order.__getitem__)
            for host, found in sorted(servers.items())
            if len(found) > 1
        }

    def unreadable(self) -> list[Source]:
        return [source for source in self.sources if source.error is not None]

    def notes(self) -> list[str]:
        """A line per merged file (when its status was written, or why it cannot be read)
        and per host on more than one server."""
        lines = []
        running = self.activity.running
        if running is not None:
            busy = sorted(running.phases.items(), key=lambda item: (item[1] == WAITING, item))
            doing = ", ".join(
                f"{printable(host, 80)} {printable(phase, 40)}" for host, phase in busy[:10]
            )
            more = len(busy) - 10
            lines.append(
                f"a pull is running (pid {running.pid}, since {printable(running.started, 40)})"
                + (f": {doing}" if doing else "")
                + (f" and {more} more" if more > 0 else "")
            )
        for source in self.sources[1:]:
            if source.error is not None:
                lines.append(f"{source.where}: cannot be read ({source.error}); hosts unknown")
                continue
            written = signed_age(source.status.get("updated"), self.now)
            when = "at an unknown time" if written is None else human_ago(written)
            where = "" if source.where in source.server else f" ({source.where})"
            lines.append(f"{source.server}: status file written {when}{where}")
        lines += [
            f"{host} on more than one server: {', '.join(found)}"
            for host, found in self.duplicates().items()
        ]
        return lines


def fleet(
    config: ServerConfig,
    local: Source,
    merged: Sequence[Source] = (),
    now: dt.datetime | None = None,
    activity: PullActivity = NO_ACTIVITY,
) -> Fleet:
    """The rows of this server's hosts (``local``: its own status) and of every host of
    the ``merged`` files, worst first (this server's first within a state); with merged
    files, each row names its server (a
    merged server named as one before it is named by its file too, ``b1 (copy.json)``,
    so that every row says where it came from). ``activity``: this server's pull
    running now or killed (the killed pull's hosts need attention)."""
    now = now or utc_now()
    found = rows(config, local.status, now)
    if activity.killed is not None:
        _mark_killed(found, activity.killed)
    if merged:
        found = [replace(row, server=local.server) for row in found]
    sources = [local]
    for source in merged:
        if source.server in {s.server for s in sources}:
            source = replace(source, server=f"{source.server} ({source.where})")
        sources.append(source)
        found += source_rows(source, now)
    own = local.server if merged else ""
    return Fleet(sorted(found, key=lambda row: _rank(row, own)), sources, now, activity)
