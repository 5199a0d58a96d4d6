"""restic: one repository per host, snapshots tagged ``pullback`` and the archive stamp.

The argv of every restic command is built by a pure function below (``*_args``); the
backend runs them with the password by file (``RESTIC_PASSWORD_FILE``), never on argv.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from ...common import secrets
from ...common.backup_suite import SUITE_STAMP
from ...common.clock import is_stamp
from ...common.errors import CommandError, PullbackError
from ...common.runner import CommandResult
from . import (
    Backend,
    Change,
    ForgetResult,
    Role,
    Snapshot,
    SnapshotSpec,
    StoreResult,
    read_password,
)
from .base import DELETE_BATCH, PROBE_TIMEOUT, RepositoryBackend, local_path, ssh_words
from .errors import BackendError, IncompleteStore

TAG = "pullback"
CTIME_TAG = "pullback-ctime"
"""On every snapshot this version makes: restic compared ctime (no ``--ignore-inode``) and
its parent had this tag too, or every file was read (``--force``). A pullback snapshot
without it may hold a file's older bytes (see :func:`backup_args`)."""
PARTIAL = "partial"
FAILED = "failed:"
_TIME = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(\.\d+)?(Z|[+-]\d\d:\d\d)$")
_LOCK_POLL = 5.0
_POLICY_KEYS = (
    "keep_last",
    "keep_hourly",
    "keep_daily",
    "keep_weekly",
    "keep_monthly",
    "keep_yearly",
)

# -- argv, as pure functions ----------------------------------------------------------------


def selection_args(host: str, adopt: str | None = None) -> list[str]:
    """Which snapshots are the host's: pullback's (its host name and tag), and with
    ``adopt`` also those of that restic host carrying its name as a tag (backup-suite's
    ``--host NAME --tag NAME``). restic ORs repeated ``--host`` and ``--tag`` options."""
    if not adopt:
        return ["--host", host, "--tag", TAG]
    hosts = dict.fromkeys((host, adopt))
    return [*(a for h in hosts for a in ("--host", h)), "--tag", TAG, "--tag", adopt]


def selects(item: dict, host: str, adopt: str | None = None) -> bool:
    """Whether :func:`selection_args` of ``host`` and ``adopt`` select the snapshot
    ``item`` (one of ``restic snapshots --json``): its host is one of them and it carries
    pullback's tag or ``adopt`` as a tag."""
    tags = item.get("tags") or []
    hosts, wanted = ({host, adopt}, {TAG, adopt}) if adopt else ({host}, {TAG})
    return item.get("hostname") in hosts and any(t in wanted for t in tags)


KINDS_LISTED = 100
"""Top directories (service types) of an adopted snapshot whose services are listed."""


CLOUD_SECRETS = ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")
"""Environment variables restic reads that hold a secret of a remote store."""
S3_KEY_IDS = ("AWS_ACCESS_KEY_ID", "AWS_ACCESS_KEY", "MINIO_ACCESS_KEY", "AWS_PROFILE")
"""Environment variables that give restic's S3 client (minio-go) its credentials."""


def s3_unsigned(location: str) -> str | None:
    """Why restic asks the S3 store at ``location`` without credentials, in words, or
    None (not S3, or credentials are in this environment or the shared credentials
    file): an unsigned request's "The specified key does not exist" proves nothing (an
    outside walk saw ``check`` promise "will be created by the first pull" on it, and
    the pull fail with "Access Denied")."""
    if not location.startswith("s3:") or any(os.environ.get(n) for n in S3_KEY_IDS):
        return None
    shared = os.environ.get("AWS_SHARED_CREDENTIALS_FILE") or os.path.expanduser(
        "~/.aws/credentials"
    )
    if os.path.isfile(shared):
        return None
    return (
        "no S3 credentials in this environment (AWS_ACCESS_KEY_ID and "
        f"AWS_SECRET_ACCESS_KEY, or AWS_SHARED_CREDENTIALS_FILE; {shared} does not exist): "
        "export them as the units' drop-in sets them (docs/scaling.md), then try again (an EC2 "
        "instance role is not seen here: make the repository once with restic init)"
    )


def from_env(env: dict[str, str]) -> dict[str, str]:
    """A repository's environment as the source of ``restic copy`` (and of ``init
    --copy-chunker-params``): its location and password by file, as ``RESTIC_FROM_*``."""
    names = {
        "RESTIC_REPOSITORY": "RESTIC_FROM_REPOSITORY",
        "RESTIC_REPOSITORY_FILE": "RESTIC_FROM_REPOSITORY_FILE",
        "RESTIC_PASSWORD_FILE": "RESTIC_FROM_PASSWORD_FILE",
    }
    return {names[key]: value for key, value in env.items() if key in names}


def snapshots_args(host: str, adopt: str | None = None) -> list[str]:
    return ["snapshots", *selection_args(host, adopt), "--json"]


def backup_args(host: str, spec: SnapshotSpec, extra: Sequence[str] = ()) -> list[str]:
    """``restic backup`` of the staging tree (run in it: the snapshot's root holds
    ``services/`` and ``MANIFEST.sha256``), tagged and timed like the archive; a partial
    archive's snapshot is also tagged ``partial`` and ``failed:<service>`` per service.
    ``extra``: the administrator's ``backend.backup_options``, as they are (no shell).
    Never ``--ignore-inode``: restic 0.14 (Debian 12's) then checks no ctime either, and
    a file rewritten with bytes of the same length and its old mtime (``cp -p``,
    ``rsync -a``) kept the parent snapshot's old bytes. The staging tree keeps an
    unchanged file's inode and ctime, so only what changed is read. ``spec.read_all``
    (``--force``) reads every file: when the parent snapshot lacks CTIME_TAG (an older
    pullback made it), it may hold such stale bytes, and restic recorded the new ctime
    with them, so trusting it would carry them on."""
    marks = [PARTIAL, *(f"{FAILED}{name}" for name in spec.failed)] if spec.failed else []
    return [
        "backup",
        "--json",
        "--host",
        host,
        "--tag",
        TAG,
        "--tag",
        spec.stamp,
        "--tag",
        CTIME_TAG,
        *[arg for mark in marks for arg in ("--tag", mark)],
        "--time",
        spec.when.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S"),
        *(["--force"] if spec.read_all else []),
        *extra,
        ".",
    ]


def within_to_restic(value: str) -> str:
    """``2w`` -> ``14d``: restic's durations know y, m, d and h only."""
    value = value.strip()
    return f"{int(value[:-1]) * 7}d" if value.endswith("w") else value


def policy_args(policy: dict) -> list[str]:
    """``--keep-daily 7 --keep-within 2d ...`` for a retention policy.

    Raises BackendError for a policy that keeps nothing.
    """
    args = []
    for key in _POLICY_KEYS:
        if policy.get(key):
            args += [f"--{key.replace('_', '-')}", str(policy[key])]
    if policy.get("keep_within"):
        args += ["--keep-within", within_to_restic(policy["keep_within"])]
    if not args:
        raise BackendError("the retention policy keeps nothing; set at least one keep_*")
    return args


def forget_args(host: str, policy: dict, adopt: str | None = None) -> list[str]:
    """The policy over the host's snapshots as one series: adopted ones (another host
    name, other paths) are not grouped apart (``--group-by ''``)."""
    return [
        "forget",
        *selection_args(host, adopt),
        "--group-by",
        "" if adopt else "host",
        *policy_args(policy),
        "--json",
    ]


def forget_ids_args(ids: Sequence[str]) -> list[str]:
    """Remove exactly the snapshots ``ids`` (what ``forget --dry-run`` named)."""
    return ["forget", *ids]


def check_args(part: int, parts: int, extra: Sequence[str] = ()) -> list[str]:
    """Read part ``part`` of ``parts`` of the data (all of it when ``parts`` is 1);
    ``extra``: the administrator's ``maintenance.check_options``, as they are."""
    read = f"--read-data-subset={part}/{parts}" if parts > 1 else "--read-data"
    return ["check", read, *extra]


ANY_FIRST = "*/"
"""An include starting so matches below any first directory (an adopted snapshot's
``<type>/``); everything else in an include is literal."""


def literal(path: str) -> str:
    """``path`` with restic's pattern characters escaped, so it matches only itself."""
    return re.sub(r"([\\*?\[])", r"\\\1", path)


def restore_args(snapshot_id: str, target: Path, includes: list[str]) -> list[str]:
    """``restic restore`` of ``includes`` (paths in the snapshot, matched literally; a
    leading ``*/`` stands for any first directory)."""
    args = ["restore", snapshot_id, "--target", str(target)]
    for include in includes:
        path = include.strip("/")
        head = ANY_FIRST if path.startswith(ANY_FIRST) else ""
        args += ["--include", f"/{head}{literal(path.removeprefix(head))}"]
    return args


def restore_size_args(snapshot_id: str) -> list[str]:
    return ["stats", "--json", "--mode", "restore-size", snapshot_id]


def diff_args(older: str, newer: str) -> list[str]:
    return ["diff", "--json", older, newer]


def parse_time(text: str) -> dt.datetime:
    """restic's RFC 3339 times (nanoseconds, ``Z`` or an offset) as an aware datetime."""
    match = _TIME.match(text)
    if not match:
        raise BackendError(f"restic printed a time pullback does not understand: {text!r}")
    base, fraction, zone = match.groups()
    micro = (fraction or ".0")[1:7].ljust(6, "0")
    zone = "+00:00" if zone == "Z" else zone
    return dt.datetime.fromisoformat(f"{base}.{micro}{zone}")


GO_CRASH = ("panic: ", "fatal error: ")
"""How a Go program's crash begins (a panic, or the runtime's own fatal error); the stack
trace that follows is kept out of a failure's tail, all but its "created by" lines."""


def crash_words(tail: Sequence[str]) -> str | None:
    """When restic crashed: ``restic crashed (panic: ...) after: <its last line before the
    crash>`` (an outside walk saw a REST store stopped mid-backup reported as "created by
    golang.org/x/sync/errgroup.(*Group).Go", the trace's last line); None otherwise."""
    at = next((i for i, line in enumerate(tail) if line.startswith(GO_CRASH)), None)
    if at is None:
        return None
    before = [line.strip() for line in tail[:at] if line.strip()]
    after = f" after: {before[-1][:300]}" if before else ""
    return f"restic crashed ({tail[at].strip()[:200]}){after}"


# -- the backend ----------------------------------------------------------------------------


REFUSED_DELETE = ("blob not removed, server response: 403 Forbidden",)
"""What restic's REST backend says when the server refuses a deletion (append-only)."""

READING_A_PACK = "StreamPack"
"""The Go function restic's stack trace names when reading a pack failed: in ``restic
copy``, a pack of the repository copied from (the primary)."""


GO_NAMES = (READING_A_PACK,)
"""Go functions' names restic prints alone on a line after the error they wrap, what is
left of its stack trace once the frames are dropped."""


def _before_a_go_name(last: str, exc: CommandError) -> str:
    """``last``, or when it is only a Go function's name, the line before it (the error:
    a copy whose primary lost a pack said "restic failed on ...: StreamPack")."""
    if last.strip() not in GO_NAMES:
        return last
    lines = [line.strip() for line in exc.tail if line.strip()]
    at = max((i for i, line in enumerate(lines) if line == last.strip()), default=0)
    return lines[at - 1] if at > 0 else last


def _with_first_error(last: str, exc: CommandError) -> str:
    """``last`` (restic's last words), and when they only count errors ("There were 2
    errors") the first error it counted (``ignoring error for PATH: REASON``, a line of
    its output before): a drill of a damaged copy said only that, and that the manifest
    was missing, where restic had said "ciphertext verification failed"."""
    if not last.rstrip(".").endswith(" errors"):
        return last
    first = next((line for line in exc.tail if line.startswith("ignoring error for ")), "")
    return f"{last} (the first: {first.strip()[:300]})" if first else last


def _holds_keys(local: Path) -> bool:
    """Whether the local repository ``local`` has a key file (or its ``keys/`` cannot be
    read: not said to have none)."""
    try:
        with os.scandir(local / "keys") as keys:
            return any(True for _ in keys)
    except FileNotFoundError:
        return False
    except OSError:
        return True


class ResticBackend(RepositoryBackend):
    name = "restic"
    WRONG_PASSWORD = ("wrong password", "no key found")
    LOCKED = ("repository is already locked",)
    MISSING = (
        "config: no such file",  # a directory
        "<config/> does not exist",  # REST
        "open config file: Lstat: file does not exist",  # sftp
        "open config file: Stat: The specified key does not exist",  # S3 (a missing bucket is not)
        "repository not found",
    )
    """Only what says the repository's config file is not there: restic asks "Is there a
    a repository at the following location?" after any failure to open it, a refused
    login (401) or a server that is down too, and those must not look like "none yet"."""

    def env(self) -> dict[str, str]:
        read_password(self.password_file)  # registered as a secret; refuses a bad file
        # S3 credentials reach restic from the unit's environment (docs/scaling.md): masked
        # wherever restic or an error could print them
        secrets.register(*(os.environ.get(name, "") for name in CLOUD_SECRETS))
        location = self.location()
        where = (
            {"RESTIC_REPOSITORY_FILE": str(location.file)}
            if location.file is not None
            else {"RESTIC_REPOSITORY": str(location.value)}
        )
        return {
            **where,
            "RESTIC_PASSWORD_FILE": str(self.password_file),
            "RESTIC_CACHE_DIR": str(self.state_dir / "cache" / "restic"),
            "RESTIC_PROGRESS_FPS": "0.2",
            "TZ": "UTC",  # --time is read in the local zone; make that UTC
        }

    def said(self, exc: CommandError) -> str:
        """restic's last line, and when that only counts errors ("There were 1 errors"),
        the first error it counted (``ignoring error for PATH: REASON``), which it printed
        before as a line of its output (an outside test found "ciphertext verification
        failed" only in INFO lines, hidden by ``journalctl -p warning``)."""
        crashed = crash_words(exc.tail)
        if crashed is not None:
            return crashed
        return _with_first_error(_before_a_go_name(super().said(exc), exc), exc)

    _copying_from: Backend | None = None
    """The primary :meth:`copy_from` reads (None outside it)."""

    def explain(self, exc: CommandError) -> BackendError:
        """As every backend's, a deletion the repository refused named as such (an
        append-only endpoint, docs/scaling.md, reached by the wrong role), and a pack
        ``restic copy`` could not read named as the primary's."""
        lines = [line.strip() for line in exc.tail if line.strip()]
        if self._copying_from is not None and lines and lines[-1] == READING_A_PACK:
            return BackendError(
                f"restic copy could not read the primary repository "
                f"{self._copying_from.repository()}: {self.said(exc)}; the snapshots copied "
                "before it are in the copy: check the primary (pullback-server maintain "
                "--host HOST reads part of its data; restic check --read-data all of it)"
            )
        if self._said(exc, REFUSED_DELETE):
            where = (
                "the copy's retention belongs where the copy store may delete: on the "
                "machine whose copy: section (or hosts[].copy_repository_file) names that "
                "endpoint; here, leave copy.retention out"
                if self.role is Role.COPY
                else "maintenance goes through the endpoint that may delete "
                "(hosts[].maintenance_repository_file, hosts[].maintenance_repository or "
                "backend.maintenance_repository_url)"
            )
            return BackendError(
                f"the repository {self.repository()} refused to delete (403 Forbidden): "
                f"an append-only endpoint cannot forget or prune; {where}"
            )
        fatal = [line for line in exc.tail if line.startswith("Fatal: ")]
        if (
            fatal
            and crash_words(exc.tail) is None
            and not self.wrong_password(exc)
            and not self.locked(exc)
        ):
            # restic's own sentence, not the location it prints after it
            reason = _with_first_error(fatal[-1].removeprefix("Fatal: "), exc)
            return BackendError(
                f"restic failed on {self.repository()}: {reason}{ssh_words(exc, reason)}"
                f"{self.file_hint(reason)}"
            )
        return super().explain(exc)

    def password_words(self) -> str:
        """As every backend's, but restic says "wrong password or no key found" for a
        repository without keys too (its ``keys/`` emptied, or a REST server still serving
        a listing of a directory removed behind it): a local repository's ``config`` and
        ``keys/`` are looked at, a remote one's alternative said."""
        said = super().password_words()
        local = local_path(self.repository())
        if local is None:
            return (
                f'{said}, or it holds no key (restic says "wrong password or no key found" '
                "for both: a store that lost the repository's keys/ says the same)"
            )
        if not (local / "config").is_file() or _holds_keys(local):
            return said
        return (
            f"the restic repository {self.repository()} holds no key (its keys/ is empty "
            "or missing), so no password opens it: was it damaged or deleted in part? "
            f'(restic said "wrong password or no key found"; password_file {self.password_file})'
        )

    def file_hint(self, reason: str) -> str:
        """What to check in the file the location came from, as words to append to
        restic's ``reason`` ("" when none, or the location is not in a file): a refused
        login (401) names the user and password there, a location restic cannot parse
        the file's first line."""
        try:
            file = self.location().file
        except BackendError:
            return ""
        if file is None:
            return ""
        if "401 Unauthorized" in reason:
            return f"; check the user and password in {file}"
        if "parsing repository location failed" in reason:
            return f"; the location is the first line of {file}: is it right?"
        return ""

    def _opens(self) -> bool:
        """As every backend's; a missing S3 repository is said only to a signed request.
        Raises BackendError when restic asked without credentials."""
        found = super()._opens()
        unsigned = None if found else s3_unsigned(self.repository())
        if unsigned:
            raise BackendError(
                f"the S3 store says there is no repository at {self.repository()}, but "
                f"restic asked it without credentials: {unsigned}"
            )
        return found

    def lock_holder(self, exc: CommandError) -> str:
        line = next((line for line in exc.tail if self.LOCKED[0] in line), "")
        return line.split(self.LOCKED[0])[-1].strip()

    def run(self, args: list[str], **kwargs) -> CommandResult:
        """Run restic; a stale lock is removed and a live one waited for (``lock_wait``)."""
        deadline = time.monotonic() + self.lock_wait
        while True:
            try:
                return self.run_tool(args, **kwargs)
            except CommandError as exc:
                if args[0] == "backup" and exc.exit_code_of_command == 3:
                    raise IncompleteStore(
                        "restic stored an incomplete snapshot: some staged files could not be read"
                    ) from None
                if not self.locked(exc):
                    raise self.explain(exc) from None
                if self.unlock():
                    continue  # a stale lock is gone: try again at once
                if time.monotonic() >= deadline:
                    raise self.explain(exc) from None
                self.runner.log.info("the repository is locked by a live process; waiting")
                time.sleep(_LOCK_POLL)

    def _json(self, args: list[str], timeout: float = 3600):
        with tempfile.TemporaryFile() as out:
            self.run(args, stdout=out, level=10, timeout=timeout)
            out.seek(0)
            return json.loads(out.read() or b"null")

    def _dirs(self, snapshot: Snapshot, below: list[str], depth: int) -> list[str]:
        """The directories ``depth`` levels deep in ``snapshot`` that restic ls of the
        directories ``below`` lists (those and what they hold, not deeper), as paths
        without the leading slash, in restic's order. Raises BackendError."""
        found = []
        with tempfile.TemporaryFile() as out:
            self.run(["ls", "--json", snapshot.id, *below], stdout=out, level=10, timeout=600)
            out.seek(0)
            for line in out:
                path = _dir_path(line)
                if path is not None and path.count("/") == depth - 1:
                    found.append(path)
        return found

    def adopted_services(self, snapshot: Snapshot) -> list[str]:
        """The ``<type>/<name>`` directories of an adopted backup-suite snapshot (its
        services as backup-suite stored them), sorted; of at most :data:`KINDS_LISTED`
        types. Raises BackendError."""
        kinds = self._dirs(snapshot, ["/"], 1)[:KINDS_LISTED]
        return sorted(self._dirs(snapshot, [f"/{k}" for k in kinds], 2)) if kinds else []

    def probe_args(self) -> list[str]:
        return ["cat", "config"]

    def repository_id(self) -> str | None:
        """restic's repository id (``cat config``; a copy made with ``init --copy-chunker-
        params`` has an id of its own). Raises BackendError."""
        data = self._json(self.probe_args(), timeout=PROBE_TIMEOUT)
        found = data.get("id") if isinstance(data, dict) else None
        return found if isinstance(found, str) and found else None

    def init(self) -> None:
        local = local_path(self.repository())
        if local is not None:
            local.parent.mkdir(parents=True, exist_ok=True)
        self._initialise(["init"])

    def _initialise(self, args: list[str], extra_env: dict[str, str] | None = None) -> None:
        """Run ``restic init`` (``args``) and log what it printed, the location filled in:
        restic 0.14 prints "created restic repository ID at " and nothing after "at" when
        the location came by file (``RESTIC_REPOSITORY_FILE``). Raises BackendError."""
        with tempfile.TemporaryFile() as out:
            self.run(args, extra_env=extra_env, stdout=out, timeout=600)
            out.seek(0)
            said = out.read().decode(errors="replace")
        for line in said.splitlines():
            if line.startswith("created restic repository ") and line.rstrip().endswith(" at"):
                line = f"{line.rstrip()} {self.repository()}"
            if line.strip():
                self.runner.log.info("restic: %s", secrets.mask(line))

    def snapshots(self) -> list[Snapshot]:
        data = self._json(snapshots_args(self.host.name, self.host.adopt_host), timeout=600)
        found = []
        for item in data or []:
            tags = item.get("tags") or []
            short = item.get("short_id") or item["id"][:8]
            when = parse_time(item["time"])
            if TAG not in tags:  # adopted: backup-suite's archive time tag is its stamp
                stamp = next((t for t in tags if SUITE_STAMP.match(t)), None)
                found.append(Snapshot(short, when, stamp, adopted=True, full_id=item["id"]))
                continue
            stamp = next((t for t in tags if is_stamp(t)), None)
            failed = tuple(t.removeprefix(FAILED) for t in tags if t.startswith(FAILED))
            found.append(
                Snapshot(
                    short,
                    when,
                    stamp,
                    failed,
                    tree=item.get("tree"),
                    original=item.get("original"),
                    reads_ctime=CTIME_TAG in tags,
                    full_id=item["id"],
                )
            )
        return sorted(found, key=lambda s: s.time)

    def strangers(self, claimed: Sequence[tuple[str, str | None]]) -> dict[str, int]:
        """The host names of the repository's snapshots that none of ``claimed`` (each
        host sharing the repository: its name and adopt_host) selects, and how many
        each has, unbounded (the caller bounds what it shows). Raises BackendError."""
        counts: dict[str, int] = {}
        for item in self._json(["snapshots", "--json"], timeout=600) or []:
            if not any(selects(item, host, adopt) for host, adopt in claimed):
                name = str(item.get("hostname"))
                counts[name] = counts.get(name, 0) + 1
        return counts

    def copy_from(self, source: Backend, snapshots: Sequence[Snapshot], timeout: float) -> None:
        """``restic copy`` of ``snapshots`` from ``source`` (the primary) into this
        repository (the copy): only their blobs the copy lacks travel. Raises
        BackendError."""
        self._copying_from = source
        try:
            self.run(
                ["copy", *(s.id for s in snapshots)],
                extra_env=from_env(source.env()),
                stdout="/dev/null",
                timeout=timeout,
            )
        finally:
            self._copying_from = None

    def init_copy(self, source: Backend) -> None:
        """Make this repository (the copy) with the primary's chunker parameters, so that
        what is copied deduplicates as it did there. Raises BackendError."""
        local = local_path(self.repository())
        if local is not None:
            local.parent.mkdir(parents=True, exist_ok=True)
        self._initialise(["init", "--copy-chunker-params"], extra_env=from_env(source.env()))

    def store(self, staging: Path, spec: SnapshotSpec, timeout: float) -> StoreResult:
        started = time.monotonic()
        with tempfile.TemporaryFile() as out:
            args = backup_args(self.host.name, spec, self.config.backup_options)
            try:
                ran = self.run(args, cwd=staging, stdout=out, timeout=timeout)
            except IncompleteStore as exc:
                out.seek(0)
                made = _summary(out.read()).get("snapshot_id")
                raise IncompleteStore(f"{exc}{self._removed(made)}") from None
            out.seek(0)
            summary = _summary(out.read())
        if not summary.get("snapshot_id"):
            raise BackendError("restic did not report the snapshot it made")
        return StoreResult(
            summary["snapshot_id"][:8],
            int(summary.get("data_added", 0)),
            time.monotonic() - started,
            ran.peak_rss,
        )

    def _removed(self, snapshot_id: object) -> str:
        """Remove the incomplete snapshot ``snapshot_id`` a backup made (exit 3: a store
        that failed leaves none, so no restore or next pull takes it for the day's);
        returns words to add to the failure."""
        if not isinstance(snapshot_id, str) or not snapshot_id.isalnum():
            return ""
        try:
            self.run(forget_ids_args([snapshot_id]), timeout=600)
        except BackendError as exc:
            return f"; the snapshot {snapshot_id} it made could not be removed: {exc}"
        return f"; the snapshot {snapshot_id} it made was removed"

    def _locks(self) -> list[str]:
        with tempfile.TemporaryFile() as out:
            try:
                self.run_tool(["list", "locks", "--no-lock"], stdout=out, level=10, timeout=600)
            except CommandError as exc:
                raise self.explain(exc) from None
            out.seek(0)
            return out.read().decode().split()

    def unlock(self) -> str:
        """``restic unlock`` removes only locks whose process is gone; it says "removed"
        either way, so the locks are counted before and after."""
        before = self._locks()
        if not before:
            return ""
        try:
            self.run_tool(["unlock"], stdout="/dev/null", level=10, timeout=600)
        except CommandError as exc:
            raise self.explain(exc) from None
        removed = len(before) - len(self._locks())
        if removed <= 0:
            return ""
        message = (
            f"removed {removed} stale lock(s) from {self.repository()} (their process is gone)"
        )
        self.runner.log.warning("%s", message)
        return message

    def forget(
        self, policy: dict, before_removing: Callable[[ForgetResult], None] | None = None
    ) -> ForgetResult:
        """restic's own policy, asked first with ``--dry-run`` (what it keeps and removes
        is then known before anything goes, for ``before_removing``), then the snapshots
        it named removed by their ids: exactly those, even were one added meanwhile."""
        args = forget_args(self.host.name, policy, self.host.adopt_host)
        data = self._json([*args, "--dry-run"])
        kept, removed = [], []
        for group in data or []:
            kept += [s.get("short_id") or s["id"][:8] for s in group.get("keep") or []]
            removed += [s.get("short_id") or s["id"][:8] for s in group.get("remove") or []]
        plan = ForgetResult(kept, removed)
        if before_removing is not None and removed:
            before_removing(plan)
        for start in range(0, len(removed), DELETE_BATCH):
            self.run(forget_ids_args(removed[start : start + DELETE_BATCH]), timeout=24 * 3600)
        return plan

    def prune(self) -> None:
        self.run(["prune"], timeout=24 * 3600)

    def check(self, part: int, parts: int, duration: float, extra: Sequence[str] = ()) -> str:
        self.run(check_args(part, parts, extra), stdout="/dev/null", timeout=24 * 3600)
        return f"restic check read part {part}/{parts} of the data: no errors"

    def remote_size(self) -> int:
        data = self._json(["stats", "--mode", "raw-data", "--json"])
        return int((data or {}).get("total_size", 0))

    def restore(self, snapshot: Snapshot, target: Path, includes: list[str]) -> None:
        """pullback snapshots are taken with ``backup .`` in the staging tree, so their
        root holds ``services/`` and ``MANIFEST.sha256`` and restores straight into
        ``target``."""
        self.run(restore_args(snapshot.id, target, includes), timeout=24 * 3600)

    def changes(self, older: Snapshot, newer: Snapshot) -> Change:
        """``restic diff`` of the two snapshots, and their sizes (``stats``). Raises
        BackendError."""
        with tempfile.TemporaryFile() as out:
            self.run(diff_args(older.id, newer.id), stdout=out, level=10, timeout=3600)
            out.seek(0)
            stats = _statistics(out.read())
        before = self._json(restore_size_args(older.id), timeout=3600) or {}
        after = self._json(restore_size_args(newer.id), timeout=3600) or {}
        try:
            return Change(
                files_before=int(before["total_file_count"]),
                changed=int(stats.get("changed_files", 0)),
                removed=int((stats.get("removed") or {}).get("files", 0)),
                bytes_before=int(before["total_size"]),
                bytes_after=int(after["total_size"]),
                bytes_removed=int((stats.get("removed") or {}).get("bytes", 0)),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise BackendError(f"restic stats did not say the snapshots' sizes ({exc})") from None

    def restore_size(self, snapshot: Snapshot) -> int | None:
        try:
            data = self._json(restore_size_args(snapshot.id), timeout=600)
            return int(data["total_size"])
        except (PullbackError, KeyError, TypeError, ValueError):
            return None


def _dir_path(line: bytes) -> str | None:
    """The path (no leading slash) of the directory a line of ``restic ls --json``
    names, None for anything else."""
    try:
        node = json.loads(line)
    except ValueError:
        return None
    if not isinstance(node, dict) or node.get("type") != "dir":
        return None
    path = node.get("path")
    return path.strip("/") if isinstance(path, str) else None


def _message(output: bytes, kind: str) -> dict:
    """The first JSON message of ``message_type`` ``kind`` in restic's ``--json`` output
    (an empty dict if none)."""
    for line in output.splitlines():
        try:
            message = json.loads(line)
        except ValueError:
            continue
        if isinstance(message, dict) and message.get("message_type") == kind:
            return message
    return {}


def _statistics(output: bytes) -> dict:
    """The ``statistics`` message of ``restic diff --json``. Raises BackendError."""
    found = _message(output, "statistics")
    if not found:
        raise BackendError("restic diff did not report its statistics")
    return found


def _summary(output: bytes) -> dict:
    """The ``summary`` message of ``restic backup --json`` (an empty dict if none)."""
    return _message(output, "summary")
