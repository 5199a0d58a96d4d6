"""borg (borgbackup 1.2): one repository per host, archives named ``<host>-<stamp>``.

The argv of every borg command is built by a pure function below (``*_args``); the
password reaches borg through ``BORG_PASSCOMMAND`` reading the password file.
"""

from __future__ import annotations

import configparser
import contextlib
import datetime as dt
import json
import os
import re
import shlex
import stat
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from ...common.archive.stored import BESIDE_SERVICES
from ...common.errors import CommandError, PullbackError
from ...common.runner import CommandResult
from ...common.text import few, printable
from ..retention import select
from . import Backend, Change, ForgetResult, Snapshot, SnapshotSpec, StoreResult, read_password
from .base import DELETE_BATCH, RepositoryBackend, local_path
from .errors import BackendError, IncompleteStore
from .location import Role, read_location_file

PARTIAL = "partial; failed: "

# -- argv, as pure functions ----------------------------------------------------------------


def with_lock_wait(args: list[str], seconds: float) -> list[str]:
    """``args`` with ``--lock-wait`` after the subcommand, as borg wants it."""
    return [args[0], "--lock-wait", str(int(seconds)), *args[1:]]


def archive_name(host: str, stamp: str) -> str:
    return f"{host}-{stamp}"


def init_args() -> list[str]:
    return ["init", "--encryption=repokey-blake2", "--make-parent-dirs"]


def list_args(host: str) -> list[str]:
    """The host's archives as JSON, with their comments (which name failed services)."""
    return ["list", "--json", "--format", "{comment}", "--glob-archives", f"{host}-*"]


def comment(failed: tuple[str, ...]) -> str:
    """A partial archive's comment: ``partial; failed: db, cache``."""
    return f"{PARTIAL}{', '.join(failed)}" if failed else ""


def failed_of(text: str) -> tuple[str, ...]:
    """The failed services a comment names (none for any other comment)."""
    if not text.startswith(PARTIAL):
        return ()
    return tuple(n for n in text.removeprefix(PARTIAL).split(", ") if n)


def create_args(host: str, spec: SnapshotSpec, extra: Sequence[str] = ()) -> list[str]:
    """``borg create`` of the staging tree (run in it; its messages as records,
    :func:`said_by_borg`), timed like the archive and, when
    partial, commented with the failed services; the files cache keys on ctime and size,
    as the staging tree keeps unchanged files untouched. Owners and ACL entries by number
    alone (``--numeric-ids``): by default borg also stores this server's names for them,
    and an extract maps each name through the extracting machine's passwd (a file of
    uid 1 came back as whoever a new server calls ``daemon``, helper-159 F1). ``extra``:
    the administrator's ``backend.backup_options``, as they are (never through a shell)."""
    marked = ["--comment", comment(spec.failed)] if spec.failed else []
    return [
        "create",
        "--json",
        "--log-json",
        "--files-cache=ctime,size",
        "--numeric-ids",
        "--timestamp",
        spec.when.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S"),
        *marked,
        *extra,
        f"::{archive_name(host, spec.stamp)}",
        "services",
        *BESIDE_SERVICES,
    ]


MAX_WARNED_LINES = 3
"""Lines of borg's own warnings a pull's report keeps (the last; each of at most
MAX_WARNED_LINE characters): they name staged files, which the client named."""
MAX_WARNED_LINE = 300


_ERROR_LEVELS = ("ERROR", "CRITICAL")


def said_by_borg(line: str) -> list[tuple[str, bool]]:
    """What a line of ``borg create --log-json`` says (runner ``reword``), as lines,
    each with whether it is kept for the report: a warning's message, one line; an
    error's, a line each (a traceback and borg's report of the platform, as
    :meth:`BorgBackend.said` reads them); a listed file's status and path (``--list`` in
    ``backup_options``) and a message below warnings, logged and not kept; nothing for
    progress. A line that is no JSON record, as it is. Records, not text: a staged
    name holding a newline (the client names them) was a line of its own, and forged
    a warning or hid the real one (helper-164 F2), and ``--progress`` ran its carriage
    returns into the lines (F3). The lines are the record's words as they are: the
    runner masks secrets in them and then escapes them (escaped first, a secret holding
    a character that is not printable was no longer found)."""
    try:
        record = json.loads(line)
    except ValueError:
        return [(line, True)]
    if not isinstance(record, dict):
        return [(line, True)]
    kind = record.get("type")
    if kind == "file_status":
        return [(f"{record.get('status')} {record.get('path')}", False)]
    if kind != "log_message":
        return []
    message, level = str(record.get("message", "")), record.get("levelname")
    if level in _ERROR_LEVELS:
        return [(part, True) for part in message.splitlines() or [""]]
    return [(message, level == "WARNING")]


def create_warnings(ran: CommandResult) -> str:
    """What ``borg create`` ending with exit 1 means, in words for the pull's report:
    it stored the archive, but warned (a staged file it could not read, or one that
    changed as it read it), so the snapshot may lack what it names; its last
    MAX_WARNED_LINES lines, :func:`printable`."""
    said = [printable(line, MAX_WARNED_LINE) for line in ran.tail if line.strip()]
    return (
        "borg create ended with warnings (exit 1): the snapshot was stored, but may lack "
        f"what they name: {'; '.join(said[-MAX_WARNED_LINES:]) or '(none said)'}"
    )


def delete_args(names: list[str]) -> list[str]:
    """Delete the archives ``names`` (of one repository) in one call."""
    return ["delete", f"::{names[0]}", *names[1:]]


def check_args(duration: float, extra: Sequence[str] = ()) -> list[list[str]]:
    """The two checks: the repository for up to ``duration`` seconds (resuming where the
    last one stopped), then the newest archive's consistency; ``extra``: the
    administrator's ``maintenance.check_options``, on both."""
    return [
        ["check", "--repository-only", "--max-duration", str(int(duration)), *extra],
        ["check", "--archives-only", "--last", "1", *extra],
    ]


def info_args(name: str) -> list[str]:
    return ["info", "--json", f"::{name}"]


def diff_args(older: str, newer: str) -> list[str]:
    """No ``--numeric-ids``: borg 1.2.4 takes it for ``diff`` and never uses it
    (helper-160 F3). Between an archive of an older pullback (owner names stored) and a
    newer one (none: :func:`create_args`) every file then says an owner change and a
    ``modified`` of no bytes, once, which :func:`count_diff` counts as neither."""
    return ["diff", "--json-lines", f"::{older}", newer]


def count_diff(lines) -> tuple[int, int, int]:
    """(changed, removed, bytes removed) of ``borg diff --json-lines`` output: a file
    whose content changed (``modified``) is changed, anything ``removed …`` (a file, a
    directory, a link) is removed; added entries and metadata-only changes (mode, owner,
    times, and a ``modified`` of no bytes) are neither. Bytes removed: what a modified
    file lost, and removed files' sizes."""
    changed = removed = lost = 0
    for line in lines:
        try:
            items = json.loads(line).get("changes", [])
            kinds = {str(c.get("type", "")) for c in items}
        except (ValueError, AttributeError):
            continue
        if any(kind.startswith("removed") for kind in kinds):
            removed += 1
            lost += sum(int(c.get("size", 0) or 0) for c in items)
        elif _content_changed(items):
            changed += 1
            lost += sum(int(c.get("removed", 0) or 0) for c in items if c.get("type") == "modified")
    return changed, removed, lost


def _content_changed(items: list) -> bool:
    """Whether a ``borg diff`` entry's changes say its content changed: a ``modified``
    that added or removed bytes. borg 1.2 says ``modified`` with 0 added and 0 removed
    when only the ctime changed (an outside walk: every file of a host fetched whole
    again after a rebuild, the guard held forget at "102% changed")."""
    return any(c.get("type") == "modified" and (c.get("added") or c.get("removed")) for c in items)


def mirror_args(source: Path, target: str, rsync_options: Sequence[str] = ()) -> list[str]:
    """``borg with-lock`` on the primary ``source`` around ``rsync -a --delete`` of its
    directory into ``target`` (a path, or ``user@host:/path``): the copy is the
    primary's twin, taken while no borg process writes it."""
    # not the lock with-lock holds: the copy would look locked by a process that is gone
    locks = ["--exclude", "/lock.exclusive", "--exclude", "/lock.roster"]
    rsync = ["rsync", "-a", "--delete", *locks, *rsync_options, f"{source}/", f"{target}/"]
    return ["with-lock", str(source), *rsync]


def rsync_target(location: str) -> tuple[str, list[str]]:
    """Where rsync writes a borg copy, and its options: a path as it is,
    ``ssh://user@host:port/path`` as ``user@host:/path`` with ``-e "ssh -p port"``.
    Raises BackendError for anything else."""
    if location.startswith("/"):
        return location, []
    match = re.fullmatch(r"ssh://(?P<who>[^/:]+)(?::(?P<port>\d+))?(?P<path>/.*)", location)
    if match is None:
        raise BackendError(f"a borg copy goes to a path or an ssh:// location, not {location}")
    return f"{match['who']}:{match['path']}", ["-e", f"ssh -p {match['port'] or 22}"]


def repository_id(path: Path) -> str | None:
    """The id in a borg repository's ``config`` (None: no borg repository there)."""
    parser = configparser.ConfigParser()
    try:
        parser.read_string((path / "config").read_text())
        return parser.get("repository", "id")
    except (OSError, UnicodeDecodeError, configparser.Error):
        return None


def refuse_foreign_target(primary: Path, target: Path) -> None:
    """Raises BackendError when ``target`` holds anything but the primary's twin:
    ``rsync --delete`` would wipe it (or, over another repository, mix two keys)."""
    try:
        empty = not any(target.iterdir())
    except FileNotFoundError:
        return
    except OSError as exc:
        raise BackendError(f"cannot read the copy's directory {target}: {exc.strerror}") from None
    if empty or repository_id(target) == repository_id(primary) is not None:
        return
    raise BackendError(
        f"{target} holds something else than a mirror of {primary} (files, or another "
        "repository): a borg copy would delete it; give the copy an empty directory"
    )


def extract_args(name: str, includes: list[str]) -> list[str]:
    """Extract (part of) an archive into the current directory, holes as holes, owners
    and ACL entries by the numbers the client had (``--numeric-ids``: an archive an older
    pullback made holds this server's names for them too, which borg would map through
    the passwd of the machine that extracts)."""
    return ["extract", "--sparse", "--numeric-ids", f"::{name}", *includes]


MAX_ROSTER = 64 << 10
"""Bytes of a borg repository's ``lock.roster`` read (a few hosts and pids)."""

_EXCEPTION_NAME = re.compile(r"^borg(?:\.\w+)+: ")
"""``borg.locking.LockFailed: `` before the words of the error borg raised."""
SERVER_PREFIX = "Borg server: "
"""Before each line of a remote ``borg serve``'s report of an error it raised."""
_REPORT = re.compile(r"^(?:Borg server: )?Platform: ")
"""The first line of borg's report of the platform (the store's, or this machine's)."""


# -- the backend ----------------------------------------------------------------------------


class BorgBackend(RepositoryBackend):
    name = "borg"
    WRONG_PASSWORD = ("passphrase supplied", "is incorrect")
    LOCKED = ("Failed to create/acquire the lock",)
    LOCK_TIMEOUT = "(timeout)"
    MISSING = ("does not exist", "is not a valid repository")

    def wrong_password(self, exc: CommandError) -> bool:
        text = "\n".join(exc.tail)  # one sentence: both of its halves
        return all(p in text for p in self.WRONG_PASSWORD)

    def said(self, exc: CommandError) -> str:
        """borg ends an unexpected error with its traceback, then a report of the
        platform (``Platform: ...`` to ``SSH_ORIGINAL_COMMAND: None``): the error is the
        last line before that report, its exception's module path left out. An error of
        the store's ``borg serve`` comes with the store's report first (each line after
        ``Borg server: ``): the error is the line before that one (a full store read
        "Borg server: SSH_ORIGINAL_COMMAND: 'borg serve'", the last line of the store's
        report, where "OSError: [Errno 28] No space left on device" was)."""
        lines = [line for line in exc.tail if line.strip()]
        report = next((i for i, line in enumerate(lines) if _REPORT.match(line)), None)
        if not report:
            return super().said(exc)
        error = lines[report - 1].removeprefix(SERVER_PREFIX)
        return _EXCEPTION_NAME.sub("", error, count=1)

    def explain(self, exc: CommandError) -> BackendError:
        """As any backend's; a wrong password adds what else it can be with borg: the
        repository's key changed (``borg key change-passphrase`` through any key that can
        write the repository, an append-only one too), with the way back."""
        found = super().explain(exc)
        if not str(found).startswith("wrong password"):
            return found
        changed = ""
        with contextlib.suppress(OSError):
            mtime = dt.datetime.fromtimestamp(self.password_file.stat().st_mtime, dt.UTC)
            changed = f", last changed {mtime:%Y-%m-%d %H:%M} UTC"
        return BackendError(
            f"wrong password for the borg repository {self.repository()} (password_file "
            f"{self.password_file}{changed}): either that file does not hold this "
            "repository's password, or the repository's key was changed (borg key "
            "change-passphrase) through a key that can write it, as a pull server's "
            "append-only key can. If the file is right, put the repository's key back from "
            "its `borg key export` copy (borg key import), as docs/scaling.md says "
            "(*Rolling a borg repository back*)"
        )

    def locked(self, exc: CommandError) -> bool:
        """borg's lock timed out (``Failed to create/acquire the lock ... (timeout).``);
        the same words with an errno in the brackets are a failure to write the lock (a
        read-only or full disk), said as borg said it."""
        return any(self.LOCKED[0] in line and self.LOCK_TIMEOUT in line for line in exc.tail)

    def env(self) -> dict[str, str]:
        read_password(self.password_file)  # refuses a missing or exposed file
        location = self.location()
        repository = location.value
        if location.file is not None:  # borg has no BORG_REPO file: the line, by environment
            repository = read_location_file(location.file)
        base = "borg-copy" if self.role is Role.COPY else "borg"
        return {
            "BORG_REPO": str(repository),
            "BORG_PASSCOMMAND": f"head -n 1 {shlex.quote(str(self.password_file))}",
            # a copy is the primary's twin (same repository id): its own cache and
            # security records, so neither takes the other for a relocated repository
            "BORG_BASE_DIR": str(self.state_dir / "cache" / base),
            "BORG_RELOCATED_REPO_ACCESS_IS_OK": "no",
            "BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK": "no",
            # locks of dead processes on this host are stale and removed by borg itself
            "BORG_HOSTNAME_IS_UNIQUE": "yes",
            "TZ": "UTC",  # borg list prints local times; make local UTC
        }

    def run(self, args: list[str], **kwargs) -> CommandResult:
        """Run borg, waiting ``lock_wait`` for a live lock (borg's ``--lock-wait``, within
        borg). A repository held now is said at once, with its holder, as restic's loop
        says it: a restore waited up to 30 minutes without a word (an outside test)."""
        holder = self.roster_holder()
        if holder:
            self.runner.log.info(
                "the repository is locked (%s); waiting up to %gs", holder, self.lock_wait
            )
        return super().run(with_lock_wait(args, self.lock_wait), **kwargs)

    def roster_holder(self) -> str:
        """Who holds the exclusive lock of a repository on this machine, as its
        ``lock.roster`` names them (``pid 4242 on backup@1234``; several: the first and
        how many more); "" when it is not locked so, or is not here (``ssh://``: borg
        alone can tell, past the wait), or the roster cannot be read."""
        local = local_path(self.repository())
        if local is None:
            return ""
        flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
        try:  # (advisory only: no link followed, no FIFO waited on, nothing it holds raised)
            fd = os.open(local / "lock.roster", flags)
            with open(fd, "rb") as file:
                if not stat.S_ISREG(os.fstat(file.fileno()).st_mode):
                    return ""
                roster = json.loads(file.read(MAX_ROSTER))
            held = [(str(e[0]), int(e[1])) for e in roster.get("exclusive") or []][:100]
        except Exception:
            return ""
        named = [f"pid {pid} on {printable(host, 100)}" for host, pid in held]
        return few(named, 1)

    def lock_holder(self, exc: CommandError) -> str:
        """The holder its roster names (borg's error does not)."""
        return self.roster_holder()

    def probe_args(self) -> list[str]:
        return ["info", "--json"]

    def init(self) -> None:
        self.run(init_args(), timeout=600)

    def _json(self, args: list[str], timeout: float) -> dict:
        with tempfile.TemporaryFile() as out:
            self.run(args, stdout=out, level=10, timeout=timeout)
            out.seek(0)
            return json.loads(out.read() or b"{}")

    def snapshots(self) -> list[Snapshot]:
        data = self._json(list_args(self.host.name), timeout=600)
        pattern = re.compile(rf"^{re.escape(self.host.name)}-(\d{{8}}T\d{{6}}Z)$")
        found = []
        for item in data.get("archives", []):
            match = pattern.match(item["name"])
            if match:
                when = dt.datetime.fromisoformat(item["start"]).replace(tzinfo=dt.UTC)
                failed = failed_of(item.get("comment") or "")
                fingerprint = str(item.get("id") or "")
                found.append(
                    Snapshot(item["name"], when, match[1], failed, fingerprint=fingerprint)
                )
        return sorted(found, key=lambda s: s.time)

    def store(self, staging: Path, spec: SnapshotSpec, timeout: float) -> StoreResult:
        started = time.monotonic()
        name = archive_name(self.host.name, spec.stamp)
        with tempfile.TemporaryFile() as out:
            args = create_args(self.host.name, spec, self.config.backup_options)
            ran = self.run(
                args, cwd=staging, stdout=out, timeout=timeout, ok_codes=(0, 1), reword=said_by_borg
            )
            out.seek(0)
            try:
                data = json.loads(out.read())
            except ValueError:
                raise BackendError("borg create did not report the archive it made") from None
        archive = data.get("archive", {})
        if archive.get("name") != name:
            raise IncompleteStore(f"borg reported an unexpected archive for {name}")
        added = int(archive.get("stats", {}).get("deduplicated_size", 0))
        warned = (create_warnings(ran),) if ran.exit_code == 1 else ()
        return StoreResult(name, added, time.monotonic() - started, ran.peak_rss, warned)

    def unlock(self) -> str:
        return ""  # borg removes a dead process's lock itself (BORG_HOSTNAME_IS_UNIQUE)

    def forget(
        self, policy: dict, before_removing: Callable[[ForgetResult], None] | None = None
    ) -> ForgetResult:
        """pullback's retention rules (restic's), then ``borg delete`` of the rest."""
        try:
            kept, removed = select(self.snapshots(), policy, lambda s: s.time)
        except ValueError as exc:
            raise BackendError(str(exc)) from None
        plan = ForgetResult([s.id for s in kept], [s.id for s in removed])
        if before_removing is not None and removed:
            before_removing(plan)
        for start in range(0, len(removed), DELETE_BATCH):
            batch = [s.id for s in removed[start : start + DELETE_BATCH]]
            self.run(delete_args(batch), timeout=24 * 3600)
        return plan

    def prune(self) -> None:
        self.run(["compact"], timeout=24 * 3600)

    def check(self, part: int, parts: int, duration: float, extra: Sequence[str] = ()) -> str:
        repository, archives = check_args(duration, extra)
        self.run(repository, timeout=duration + 3600)
        self.run(archives, timeout=24 * 3600)
        return (
            f"borg check: repository checked for up to {int(duration)}s (resuming where "
            "the last one stopped), newest archive consistent"
        )

    def remote_size(self) -> int:
        data = self._json(["info", "--json"], timeout=3600)
        return int(data.get("cache", {}).get("stats", {}).get("unique_csize", 0))

    def restore(self, snapshot: Snapshot, target: Path, includes: list[str]) -> None:
        """Extract into ``target``; borg's warnings (exit 1: an include that matched
        nothing, like the sidecar of a snapshot older than it) are logged, not fatal."""
        self.run(
            extract_args(snapshot.id, includes), cwd=target, timeout=24 * 3600, ok_codes=(0, 1)
        )

    def copy_from(self, source: Backend, snapshots: Sequence[Snapshot], timeout: float) -> None:
        """borg 1.2 copies no archives between repositories (``export-tar | import-tar``
        would lose xattrs and ACLs): the nearest that keeps deduplication is a mirror of
        the primary's directory (:func:`mirror_args`), so the copy has the primary's key,
        password, archives and retention. Raises BackendError."""
        primary = local_path(source.repository())
        if primary is None or not isinstance(source, RepositoryBackend):
            raise BackendError(
                f"a borg copy mirrors a repository on this machine; {source.repository()} "
                "is not one"
            )
        location = self.location()
        value = read_location_file(location.file) if location.file else location.value
        target, options = rsync_target(str(value))
        if not options:
            refuse_foreign_target(primary, Path(target))
        args = with_lock_wait(mirror_args(primary, target, options), self.lock_wait)
        try:
            source.run_tool(args, stdout="/dev/null", timeout=timeout)
        except CommandError as exc:
            raise self.explain(exc) from None

    def init_copy(self, source: Backend) -> None:
        """Only the directory above it: the mirror brings the repository (and its key)."""
        local = local_path(self.repository())
        if local is not None:
            local.parent.mkdir(parents=True, exist_ok=True)

    def changes(self, older: Snapshot, newer: Snapshot) -> Change:
        """``borg diff`` of the two archives, and their sizes (``borg info``). Raises
        BackendError."""
        with tempfile.TemporaryFile() as out:
            self.run(diff_args(older.id, newer.id), stdout=out, level=10, timeout=3600)
            out.seek(0)
            changed, removed, lost = count_diff(out)
        try:
            before = self._json(info_args(older.id), timeout=600)["archives"][0]["stats"]
            after = self._json(info_args(newer.id), timeout=600)["archives"][0]["stats"]
            return Change(
                int(before["nfiles"]),
                changed,
                removed,
                int(before["original_size"]),
                int(after["original_size"]),
                lost,
            )
        except (KeyError, IndexError, TypeError, ValueError) as exc:
            raise BackendError(f"borg info did not say the archives' sizes ({exc})") from None

    def restore_size(self, snapshot: Snapshot) -> int | None:
        try:
            data = self._json(info_args(snapshot.id), timeout=600)
            return int(data["archives"][0]["stats"]["original_size"])
        except (PullbackError, KeyError, IndexError, TypeError, ValueError):
            return None
