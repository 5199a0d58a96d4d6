"""``pullback-client restore``: put a service back from a restored snapshot or an archive.

The order mirrors a backup: the service's stopping tasks (docker, systemd) stop the
application, every selected task's restore hook puts its data back (databases are
re-imported, files copied to their place or below ``--target``), and the application
is started again whatever happened.
"""

from __future__ import annotations

import argparse
import errno
import glob
import os
from dataclasses import dataclass, field
from pathlib import Path

from ..common import scratch
from ..common.archive import baseindex, listed, tree_list
from ..common.archive import directory as archives
from ..common.archive import sidecar as sidecars
from ..common.archive.baseindex import BaseIndex, IndexedTree, IndexWriter
from ..common.archive.compression import compression_of
from ..common.archive.manifest import MANIFEST_NAME
from ..common.archive.reader import TarStream
from ..common.archive.sidecar import ARCHIVE_NAME, SIDECAR_NAME, ServiceReport, TaskReport
from ..common.archive.tree_list import TREE_NAME
from ..common.archive.unpack import BaseMismatch, Unpacker, UnpackLimits
from ..common.clock import stamp_of, utc_now
from ..common.errors import (
    EXIT_FAILED,
    EXIT_OK,
    ArchiveError,
    ConfigError,
    Interrupted,
    PullbackError,
    UsageError,
    describe,
)
from ..common.log import get_logger
from ..common.outcome import Status
from ..common.progress import CountingReader, Progress, Watched
from ..common.signals import RESTORING, SignalGuard
from ..common.text import counted, escaped, printable
from ..plugins.manager import PluginSet, load_plugins
from ..plugins.task import RestorePlan, Task, TaskType
from . import free_space, stopped
from .config import ClientConfig
from .services import Service, discover
from .stages import make_tasks

log = get_logger("restore")


def unpack_archive(
    archive: Path,
    into: Path,
    base: BaseIndex | None = None,
    index: IndexWriter | None = None,
    limits: UnpackLimits | None = None,
) -> Path:
    """Unpack a pullback archive safely (manifest checked) into ``into``, onto ``base``
    (the tree ``into`` holds, for a delta) and recording ``index`` (committed), within
    ``limits``; return ``into``. Without a usable sidecar a delta's partial manifest is
    refused by the unpacker (nothing names the complete manifest's sha256). Raises
    ArchiveError (ArchiveTooLarge past ``limits``)."""
    compression = compression_of(archive.name)
    progress = Progress("unpack", archive.stat().st_size)
    side = _sidecar_of(archive)
    announced = side.archive.manifest_sha256 if side else ""
    lean = side.archive.lean if side is not None else None  # None: not known
    with Unpacker(into, limits, base, index, announced=announced, lean=lean) as unpacker:
        if base is not None and base.linked:
            with open(archive, "rb") as raw, TarStream(raw, compression) as stream:
                for member in stream.members():
                    unpacker.check_base(member)
        with (
            open(archive, "rb") as raw,
            Watched(progress),
            TarStream(CountingReader(raw, progress), compression) as stream,
        ):
            for member in stream.members():
                unpacker.add(member, stream.read_data(member))
        unpacker.finish()
        if index is not None:
            index.commit(IndexedTree(archive.name, unpacker.manifest_sha256))
    return into


def unpack_chain(archive: Path, into: Path, limits: UnpackLimits | None = None) -> Path:
    """Unpack ``archive`` into ``into``; a delta by unpacking the chain it is built on
    first, its full archive and every delta up to it, as the server does (each base
    checked against the index the previous one left), each within ``limits``. Returns
    ``into``. Raises UsageError when an archive of the chain is not in the directory,
    ArchiveError (ArchiveTooLarge past ``limits``)."""
    chain = chain_for(archive)
    for number, path in enumerate(chain):
        base = baseindex.take(into) if number else None
        index = IndexWriter(into)
        try:
            unpack_archive(path, into, base, index, limits)
        except BaseMismatch:
            if len(chain) > 1 or _sidecar_of(archive) is not None:
                raise
            raise UsageError(
                f"{archive.name} is a delta archive (it takes files from the archives "
                f"before it), and its sidecar {archive.name}.json, which names them, is "
                "missing or unreadable: put the sidecar back beside it, or restore from "
                "the server's snapshot (pullback-server restore) instead"
            ) from None
        finally:
            if base is not None:
                base.close()
    return into


def _sidecar_of(archive: Path) -> sidecars.Sidecar | None:
    """The sidecar beside ``archive``, or None when it is missing or unusable."""
    try:
        return sidecars.parse(
            archive.with_name(archive.name + ".json").read_bytes(), expected_name=archive.name
        )
    except (OSError, ArchiveError):
        return None


def chain_for(archive: Path) -> list[Path]:
    """The archives to unpack to get ``archive``'s tree: itself, after its full archive
    and the deltas between when it is a delta. Raises UsageError for a broken chain."""
    side = _sidecar_of(archive)
    if side is None:
        return [archive]  # no usable sidecar: the unpacker refuses a delta's members itself
    info = side.archive
    if not info.is_delta:
        return [archive]
    directory = archive.parent
    if directory.name == archives.FETCHED_DIR:  # its chain may span both directories
        directory = directory.parent
    present = archives.by_names([a for a in archives.list_archives(directory) if a.complete])
    chain = archives.full_chain(present[archive.name], present) if archive.name in present else []
    if not chain:
        raise UsageError(
            f"{archive.name} is a delta archive (only what changed since "
            f"{info.base.name if info.base else '?'}), and the archives it is built on "
            f"are not all in {archive.parent}: restore from the server's snapshot "
            "(pullback-server restore) instead"
        )
    log.info("%s is a delta: unpacking its chain of %d archives", archive.name, len(chain))
    return [a.path for a in chain]


def service_root(source: Path, name: str) -> Path:
    """The ``services/<name>`` directory inside ``source``: a snapshot root, its
    ``services`` directory, or that directory itself (named after the service; a
    snapshot root of other services never is). Raises UsageError when there is none."""
    if not (source / "services").is_dir() and _backup_suite_layout(source, name):
        raise no_service(source, name)  # (its <type>/<name>/data would pass for a task)
    for candidate in (source / "services" / name, source / name, source):
        if candidate.is_dir() and any(p.is_dir() for p in candidate.iterdir()):
            if candidate == source and ((source / "services").exists() or source.name != name):
                continue
            return candidate
    raise no_service(source, name)


def no_service(source: Path, name: str) -> UsageError:
    """The error for a ``--from`` that holds nothing of the service ``name``: a snapshot
    backup-suite made, named as such (an outside walk was told to restore a snapshot it
    had just restored), or one not restored yet."""
    suite = _backup_suite_layout(source, name)
    if suite is not None:
        return UsageError(
            f"{source} holds a snapshot backup-suite made ({suite}/): pullback-client "
            "restore cannot read that layout; put its files back by hand (docs/restore.md, "
            "'Snapshots made by backup-suite')"
        )
    if source.is_file():  # (an archive: nothing to restore first; helper-150 F4)
        return UsageError(
            f"{source} holds no services/{name}/ (an archive from before the service, or "
            "of a run without it): name a later archive (ls the archive directory), or "
            f"restore the server's snapshot (pullback-server restore HOST --service {name})"
        )
    return UsageError(
        f"{source} holds no services/{name}/: restore the snapshot first "
        f"(pullback-server restore HOST --service {name} --target DIR)"
    )


BACKUP_SUITE_PARTS = ("data", "databases", "config_used", "docker_config")
"""What backup-suite wrote below ``<type>/<service name>/`` of its archives."""


def _backup_suite_layout(source: Path, name: str) -> str | None:
    """``<type>/<name>`` when ``source`` (a restored adopted snapshot, or the service's
    directory of one) is backup-suite's layout, else None."""
    for candidate in (*source.glob(f"*/{glob.escape(name)}"), source):
        if candidate.is_dir() and any((candidate / part).is_dir() for part in BACKUP_SUITE_PARTS):
            return printable(str(candidate), 200)
    return None


SHOWN = 3
"""Files named in a message about a tree that is not the snapshot's; the rest counted."""


FETCH_AGAIN = (
    "Fetch the snapshot into an empty directory (or rsync with --delete) and restore "
    "again; nothing was changed"
)


def check_listed(snapshot: Path, root: Path) -> None:
    """Check that every regular file below ``root`` (``services/<name>`` of the snapshot
    directory ``snapshot``) is one its ``MANIFEST.sha256`` lists: a directory fetched
    into twice (rsync without ``--delete``) held a file of an older snapshot, which an
    outside test saw restored; and that every directory, symbolic link and FIFO there is
    one its ``TREE.list`` lists (:func:`_strays`). Listed files that are absent are only
    a warning (a ``pullback-server restore --path`` fetched part of the service). Without
    a manifest beside ``services/`` (a service's directory given alone) nothing can be
    checked, and a warning says so. Raises UsageError naming the entries not listed, and
    ArchiveError for a manifest or list that does not parse."""
    if root.parent.name == "services" and root.parent.parent != snapshot:
        snapshot = root.parent.parent  # --from SNAPSHOT/services: the manifest beside it
    _no_symlinks_above(snapshot, root)
    manifest = snapshot / MANIFEST_NAME
    relative = root.relative_to(snapshot).as_posix()
    if not relative.startswith("services/") or not manifest.is_file():
        log.warning(
            "%s has no %s beside services/: its files are not checked against the snapshot's list",
            printable(str(snapshot), 200),
            MANIFEST_NAME,
        )
        return
    unlisted, absent = _unlisted_files(snapshot, manifest, relative)
    strays = _strays(snapshot, relative)
    if unlisted.count or strays.count:
        named = " and ".join(str(n) for n in (unlisted, strays) if n.count)
        lists = (
            f"{MANIFEST_NAME} and {TREE_NAME} describe"
            if strays.count
            else f"{MANIFEST_NAME} describes"
        )
        raise UsageError(
            f"{printable(str(snapshot), 200)} is not the snapshot its {lists}: "
            f"{named} not in it. {FETCH_AGAIN}"
        )
    if absent.count:
        log.warning("%s listed in %s absent (fetched in part?)", absent, manifest)


def _unlisted_files(snapshot: Path, manifest: Path, relative: str) -> tuple[_Named, _Named]:
    """The regular files below ``snapshot/relative`` that ``manifest`` does not list, and
    the files it lists there that are absent. Raises ArchiveError for a manifest that does
    not parse."""
    unlisted, absent = _Named(), _Named()
    try:
        for pair in listed.pairs(snapshot, manifest, relative):
            if pair.regular is None:
                absent.add(pair.name)
            elif pair.digest is None and pair.regular:
                unlisted.add(pair.name)
    except ValueError as exc:
        raise ArchiveError(f"{manifest}: {exc}") from None
    return unlisted, absent


def _strays(snapshot: Path, relative: str) -> _Named:
    """The directories, symbolic links and FIFOs below ``snapshot/relative`` that the
    snapshot's tree_list.TREE_NAME does not list as such (another snapshot's, in a
    directory fetched into twice). A snapshot stored without the list (by pullback before
    0.3.0) cannot be checked: a warning says so. Raises UsageError for a list that is no
    regular file or belongs to another snapshot's manifest (both fetched into one
    directory), ArchiveError for one that does not parse."""
    strays = _Named(noun="entry", nouns="entries")
    where = printable(str(snapshot), 200)
    try:
        known = tree_list.read_beside(snapshot, relative)
    except tree_list.NotAList as exc:
        raise UsageError(f"{where}: its {exc}. {FETCH_AGAIN}") from None
    except tree_list.OtherManifests:
        raise UsageError(
            f"{where}: its {TREE_NAME} is another snapshot's than its {MANIFEST_NAME} "
            f"(two snapshots fetched into it?). {FETCH_AGAIN}"
        ) from None
    except ValueError as exc:
        raise ArchiveError(f"{snapshot / TREE_NAME}: {exc}") from None
    if known is None:
        log.warning(
            "%s has no %s (a snapshot stored before pullback 0.3.0): its directories, "
            "symbolic links and FIFOs are not checked against the snapshot's",
            where,
            TREE_NAME,
        )
        return strays
    try:
        for name, kind in listed.others(snapshot, relative):
            if kind is None or known.entries.get(os.fsencode(name)) != kind:
                strays.add(name)
    except ValueError as exc:
        raise ArchiveError(f"{snapshot / relative}: {exc}") from None
    return strays


def _no_symlinks_above(snapshot: Path, root: Path) -> None:
    """Raises UsageError when the service's directory ``root``, a directory between it
    and ``snapshot``, or a task's directory in it is a symlink: a snapshot as the server
    restores it has none there, and the restore would read through it files no check
    saw (an outside attack planted a tree that way)."""
    places = [root, *(p for p in root.iterdir() if not p.name.startswith("."))]
    places += [p for p in root.parents if snapshot in p.parents]
    for place in places:
        if place.is_symlink():
            raise UsageError(
                f"{printable(str(place), 200)} is a symlink: a snapshot as pullback makes "
                "it has none there (a fetched one: fetch it into an empty directory and "
                "restore again); nothing was changed"
            )


@dataclass
class _Named:
    """Files counted, the first :data:`SHOWN` of them by name (in the manifest's order):
    a check's words and memory stay bounded however many there are."""

    count: int = 0
    names: list[str] = field(default_factory=list)
    noun: str = "file"
    nouns: str = "files"

    def add(self, name: str) -> None:
        self.count += 1
        if len(self.names) < SHOWN:
            self.names.append(name)

    def __str__(self) -> str:
        """``N file(s) (a, b, c and M more)``, each name escaped and cut."""
        shown = ", ".join(printable(n, 200) for n in self.names)
        more = f" and {self.count - len(self.names)} more" if self.count > len(self.names) else ""
        return f"{counted(self.count, self.noun, self.nouns)} ({shown}{more})"


def _stops_first(options: RestoreOptions, restoring: list[TaskType]) -> bool:
    """Whether the restore stops the application first (``restoring``: the types of the
    tasks whose data it restores): not below ``--target`` when each of them restores
    there or beside the live data (:attr:`TaskType.restores_below_target`), unless
    ``--replace`` swaps databases in; always for a restore that only stops and starts
    (``--task systemd``)."""
    if options.target is None or options.replace or not restoring:
        return True
    return not all(kind.restores_below_target for kind in restoring)


def _target_of(given: Path | None) -> Path | None:
    """``--target``, made absolute (a relative one is below the working directory: it
    was taken as below the restored file's own path, and the copy failed). Raises
    UsageError when it is there and is no directory."""
    if given is None:
        return None
    target = Path(os.path.abspath(given))
    if os.path.lexists(target) and not target.is_dir():
        raise UsageError(f"--target {printable(str(target), 200)} is not a directory")
    return target


@dataclass(frozen=True)
class RestoreOptions:
    """What ``pullback-client restore`` was asked: a service, where its data comes from
    (a restored snapshot directory or an archive), optionally one task, a directory to
    put files below instead of their place, and whether only to say what would be done."""

    service: str
    source: Path
    task: str | None = None
    target: Path | None = None
    dry_run: bool = False
    replace: bool = False
    """Replace the live databases (after a preflight), instead of restoring beside them."""
    server: dict[str, object] = field(default_factory=dict)
    """Another database server to restore to: host, port, user, password_file."""

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> RestoreOptions:
        server = {
            key: value
            for key, value in (
                ("host", args.hostname),
                ("port", args.port),
                ("user", args.username),
                ("password_file", str(args.password_file) if args.password_file else None),
            )
            if value is not None
        }
        return cls(
            args.service,
            args.source,
            args.task,
            _target_of(args.target),
            args.dry_run,
            args.replace,
            server,
        )

    def wants(self, task: Task) -> bool:
        return not self.task or self.task in (task.key, task.type)

    def point_at_server(self, task: Task, schema: dict) -> None:
        """Point a database task the restore takes at the server asked for: each of host,
        port, user and password_file replaces the service file's (under the name its
        section knows: ``username`` for mongodb), and with a host or port the section's
        ``socket`` goes. Raises UsageError, before anything runs, when the task cannot
        honour one of them (:func:`server_problems`)."""
        known = set(schema.get("properties", {}))
        if not self.server or not self.wants(task) or not known & {"host", "uri"}:
            return  # (not a database task)
        problems = server_problems(task.type, task.config, known, self.server)
        if problems:
            raise UsageError("; ".join(problems))
        for key, value in self.server.items():
            for alias in SERVER_KEYS[key]:
                task.config.pop(alias, None)
            task.config[next(a for a in SERVER_KEYS[key] if a in known)] = value
        if "host" in self.server or "port" in self.server:
            task.config.pop("socket", None)


SERVER_KEYS = {
    "host": ("host", "hostname"),
    "port": ("port",),
    "user": ("user", "username"),
    "password_file": ("password_file",),
}
"""Each option of another server (``--hostname``...), and the keys a section names it by."""
SERVER_OPTIONS = {
    "host": "--hostname",
    "port": "--port",
    "user": "--username",
    "password_file": "--password-file",
}


def server_problems(kind: str, config: dict, known: set[str], server: dict) -> list[str]:
    """Why a task of type ``kind`` (its section ``config``, whose schema knows the keys
    ``known``) cannot be restored to the ``server`` asked for, each in words; none when
    it can. Outside attacks saw a restore "to another server" land in the live one: a
    mongodb section's ``uri`` won over --hostname and --port, --username was dropped for
    mongodb and influxdb, and the MariaDB client took ``localhost`` with a port for its
    socket."""
    problems = [
        f"{kind}: {SERVER_OPTIONS[key]} does not apply to this task (its section has no "
        f"{' or '.join(SERVER_KEYS[key])})"
        for key in server
        if not known & set(SERVER_KEYS[key])
    ]
    moved = "host" in server or "port" in server
    if moved and config.get("uri"):
        problems.append(
            f"{kind}: --hostname and --port cannot replace the uri of the service file; "
            "restore with a service file whose uri names the other server"
        )
    host = server.get("host", config.get("host", config.get("hostname")))
    if "socket" in known and "port" in server and host in (None, "localhost"):
        problems.append(
            f"{kind}: with the host localhost (or none) the client takes the local socket "
            "and ignores --port; give --hostname 127.0.0.1 for the server on that port"
        )
    return problems


def _service(config: ClientConfig, options: RestoreOptions, plugins: PluginSet) -> Service:
    """The service to restore, checked before any archive is read (an outside walk waited
    for a whole unpack to learn of a typo in ``--task``). Raises UsageError for a service
    or task that does not exist, ConfigError for a broken service file."""
    services = {s.name: s for s in discover(config.service_dirs, plugins)}
    name = options.service
    if name not in services:
        raise UsageError(
            f"no service named {name!r} in "
            f"{', '.join(map(str, config.service_dirs))}; known services: "
            f"{', '.join(sorted(services)) or 'none'}"
        )
    service = services[name]
    if service.broken:
        raise ConfigError(service.problems)
    if options.task and not any(options.task in (s.key, s.type.name) for s in service.tasks):
        keys = ", ".join(spec.key for spec in service.tasks)
        raise UsageError(f"service {name} has no task {options.task!r}; its tasks: {keys}")
    return service


def restore(config: ClientConfig, options: RestoreOptions) -> int:
    """Restore a service; returns the exit code. Raises PullbackError (UsageError for a
    wrong service, task or source)."""
    plugins = load_plugins(config.plugin_dirs)
    service = _service(config, options, plugins)
    name, source = options.service, options.source
    if not source.exists():
        raise UsageError(f"{source} does not exist")
    with scratch.directory("restore") as space:
        sidecar_file = source / SIDECAR_NAME
        if source.is_file():
            if not ARCHIVE_NAME.match(source.name):
                raise UsageError(
                    f"{source} is not a pullback archive: its name must be "
                    "HOST-STAMP.tar.zst (or .tar.gz, .tar), as the client made it"
                )
            sidecar_file = source.with_name(source.name + ".json")
            log.info("unpacking %s (checked against its manifest)", source.name)
            unpacked = _unpacked(config, source, space)
        else:
            unpacked = source
        try:
            root = service_root(unpacked, name)
        except UsageError:
            return _nothing_of(name, source, unpacked, sidecar_file)
        if not source.is_file():  # (an archive's files were proven as it was unpacked)
            check_listed(unpacked, root)
        else:  # (a symlink member as a task's directory led its restore to a live one)
            _no_symlinks_above(unpacked, root)
        restore = ServiceRestore(
            config, service, plugins, options, read_content(sidecar_file, root, name), space
        )
        code = restore.run()
        # on standard output, escaped: names from the snapshot are in them (a file name
        # forged a line there, and a terminal's escape sequence hid what followed)
        if restore.plan.dry_run:  # the plan itself is the answer
            for step in restore.plan.steps:
                print(f"would: {escaped(step)}")
        for note in restore.plan.notes:
            print(escaped(note))
        return code


def _unpacked(config: ClientConfig, source: Path, space: Path) -> Path:
    """The archive ``source`` (and the chain it is built on) unpacked below ``space``.
    Raises ArchiveError, and PullbackError (exit 1) when the temporary directory filled
    (``min_free_space`` 0, or less than the bound's margin left: nothing restored)."""
    try:
        return unpack_chain(source, space / "archive", free_space.restore_limits(config))
    except OSError as exc:
        if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        raise PullbackError(
            f"unpacking {source.name} filled the temporary directory {space.parent} "
            f"({exc.strerror}): nothing was restored; point TMPDIR at a larger disk"
        ) from None


def _log_lines(task: Task, what: str, exc: BaseException) -> str:
    """Log ``what: <exc>`` as an error, one log line per line of the error (a command's
    failure ends with the last lines it printed: a line break inside one message would
    be escaped as ``\\n``); returns the error's first line."""
    first, *rest = describe(exc).splitlines() or [type(exc).__name__]
    task.log.error("%s: %s", what, first)
    for line in rest:
        task.log.error("%s", line)
    return first


def _nothing_of(name: str, source: Path, unpacked: Path, sidecar_file: Path) -> int:
    """``source`` (unpacked into ``unpacked``) holds nothing of the service ``name``:
    because it failed that day, says the sidecar (beside the archive, at the snapshot's
    root, or above the services directory given): EXIT_FAILED, said. Raises UsageError
    when it never was there (a wrong source)."""
    for candidate in (sidecar_file, unpacked.parent / SIDECAR_NAME):
        failed = read_content(candidate, unpacked / "services" / name, name).report
        if failed is not None:
            if failed.status != Status.OK:
                return _failed_that_day(failed, source)
            break
    raise no_service(source, name)


def _failed_that_day(report: ServiceReport, source: Path) -> int:
    """Say that ``source`` holds nothing of the service ``report`` describes because it
    failed on the day of the backup (each failed task and why); returns EXIT_FAILED (an
    outside test got exit 2 and advice naming a scratch directory already gone)."""
    why = "; ".join(  # (words from a sidecar: each one line, bounded)
        f"{printable(t.type, 40)}: {printable(t.error or f'{t.status}, no reason recorded', 300)}"
        for t in report.tasks[:10]
        if t.status != Status.OK
    )
    log.error(
        "%s: nothing to restore: this service %s in %s (%s); restore from a snapshot in "
        "which it succeeded (pullback-server restore HOST --service %s --target DIR takes "
        "the newest such one)",
        printable(report.name, 100),
        report.status,
        source,
        why or printable(report.error or "no reason recorded", 300),
        printable(report.name, 100),
    )
    return EXIT_FAILED


@dataclass(frozen=True)
class SnapshotContent:
    """What a snapshot holds of one service: its ``services/<name>`` directory and, when
    the snapshot carries its sidecar, how the service went on the day it was made."""

    root: Path
    report: ServiceReport | None
    stamp: str | None = None
    """The snapshot's stamp (from its sidecar): it names the databases a restore makes."""

    def failed_task(self, task_type: str) -> TaskReport | None:
        """The report of ``task_type`` if it failed (or was skipped) in the snapshot."""
        if self.report is None:
            return None
        found = [t for t in self.report.tasks if t.type == task_type]
        return found[0] if found and found[0].status != Status.OK else None


def read_content(sidecar_file: Path, root: Path, name: str) -> SnapshotContent:
    """The service's part of a snapshot, with its report and stamp from the snapshot's
    sidecar (beside an archive, or at the root of a restored snapshot) when there is one."""
    for candidate in (sidecar_file, root.parent.parent / SIDECAR_NAME):
        try:
            side = sidecars.parse(candidate.read_bytes())
        except (OSError, ArchiveError):
            continue
        report = next((s for s in side.services if s.name == name), None)
        return SnapshotContent(root, report, side.stamp)
    return SnapshotContent(root, None)


def command(config: ClientConfig, args: argparse.Namespace) -> int:
    return restore(config, RestoreOptions.from_args(args))


class ServiceRestore:
    """Restore one service: stop the application, restore each chosen task, start it
    again whatever happened."""

    def __init__(
        self,
        config: ClientConfig,
        service: Service,
        plugins: PluginSet,
        options: RestoreOptions,
        content: SnapshotContent,
        scratch: Path,
    ):
        self.config = config
        self.service = service
        self.plugins = plugins
        self.options = options
        self.content = content
        self.tasks = make_tasks(service, scratch / "staging", None, dry_run=options.dry_run)
        for task, spec in zip(self.tasks, service.tasks, strict=True):
            options.point_at_server(task, spec.type.schema)
        stops = any(spec.type.stops(spec.config) for spec in service.tasks)
        self.plan = RestorePlan(
            stamp=stamp_of(utc_now()),
            replace=options.replace,
            dry_run=options.dry_run,
            safety_dir=config.work_dir.parent / "before-restore",
            min_free=config.min_free_space,
            temporary_source=options.source.is_file(),
            stops_first=stops and self.stops_first(),
        )
        self.failures: list[str] = []
        self.prepared: list[Task] = []
        self.left = stopped.Recovery()
        """What an interrupted run left stopped, started first (its problems fail the
        restore's exit status, said)."""
        self.record: stopped.StoppedRecord | None = None
        """Where each stop is written before it is made (read under the lock, after
        what an interrupted run left was started)."""

    def run(self) -> int:
        selected = self.selected()
        lock = self.config.instance_lock("pullback-client restore")
        with lock.acquire(), SignalGuard(RESTORING) as guard:
            if not self.options.dry_run:
                with guard.shielded():  # (a signal meanwhile: raised as it ends, unreported)
                    self.left = stopped.start_left_stopped(self.config, self.plugins)
                    if guard.received is None:
                        stopped.report(self.config, self.left)  # (a killed run told no one)
                self.record = stopped.StoppedRecord(stopped.record_path(self.config), "restore")
                self.record.attach(self.tasks)
            self.make_room()
            try:
                if self.stop():
                    for task in selected:
                        self.restore_task(task)
            finally:
                with guard.shielded():
                    self.start_again()
        if self.failures:
            # each failure was said where it happened: named here, not said again
            tasks = ", ".join(dict.fromkeys(f.split(":", 1)[0] for f in self.failures))
            log.error("restore of %s incomplete: %s failed (above)", self.service.name, tasks)
            return EXIT_FAILED
        self.say_done(restored=bool(selected) or not self.options.task)
        if self.left.problems:
            log.error(
                "what an interrupted run left stopped was not all started again (above): "
                "start it by hand"
            )
            return EXIT_FAILED
        return EXIT_OK

    def selected(self) -> list[Task]:
        """The tasks whose data is restored: those asked for that hold data (a task that
        holds none, systemd, is restored by stopping and starting: an outside walk saw
        it warn "nothing to restore" on every restore); :func:`restore` refused a
        ``--task`` the service does not have."""
        kinds = self.kinds()
        wanted = [t for t in self.tasks if self.options.wants(t)]
        return [t for t in wanted if kinds[t.key].holds(t.config)]

    def kinds(self) -> dict[str, TaskType]:
        """Each task's type, by the task's key."""
        return {t.key: spec.type for t, spec in zip(self.tasks, self.service.tasks, strict=True)}

    def stops_first(self) -> bool:
        """:func:`_stops_first` for the selected tasks."""
        kinds = self.kinds()
        return _stops_first(self.options, [kinds[t.key] for t in self.selected()])

    def make_room(self) -> None:
        """The tasks' staging directories, and ``--target`` with its parents, as
        restic's (a missing parent failed the files task: "cannot restore ...: No such
        file or directory"); a dry run makes no target."""
        for task in self.tasks:
            task.staging.mkdir(parents=True, exist_ok=True)
        if self.options.target is not None and not self.options.dry_run:
            self.options.target.mkdir(mode=0o700, parents=True, exist_ok=True)

    def say_done(self, restored: bool) -> None:
        """The last line of a restore that went well; ``restored`` False: only a task
        that holds no data was asked for (``--task systemd``, a restart: an outside walk
        read "restored app")."""
        name, dry_run = self.service.name, self.options.dry_run
        if restored:
            log.info("%s %s", "checked" if dry_run else "restored", name)
            return
        done = "would stop and start" if dry_run else "stopped and started"
        log.info("%s %s; nothing restored: task %s holds no data", done, name, self.options.task)

    def stop(self) -> bool:
        """Stop the application: the prepare of every task that stops the service.
        Returns False when one could not (nothing is restored then: the application
        may still be running; what was stopped is started again), the failure said."""
        specs = zip(self.tasks, self.service.tasks, strict=True)
        stopping = [t for t, spec in specs if spec.type.stops(spec.config)]
        if stopping and not self.stops_first():
            log.info(
                "%s: the application is not stopped: below --target its tasks touch "
                "nothing live (databases come back beside the live ones)",
                self.service.name,
            )
            return True
        for task in stopping:
            if self.options.dry_run:
                self.plan.step(task.log, f"stop the application first ({task.key})")
                continue
            self.prepared.append(task)  # its finish runs whatever its prepare did
            try:
                self.plugins.call("prepare", task)
            except Interrupted:
                raise
            except Exception as exc:
                # an outside walk: a plugin's error here ended the restore with a
                # traceback (exit 70)
                first = _log_lines(task, "could not stop the application", exc)
                self.failures.append(f"{task.key}: could not stop the application: {first}")
                task.log.error("nothing restored")
                return False
        return True

    def restore_task(self, task: Task) -> None:
        source = self.content.root / task.type
        if not source.is_dir() or self.content.failed_task(task.type) is not None:
            # (a dump that streamed files and then failed left them in the archive: an
            # outside plugin author saw them "restored", exit 0)
            self.nothing_to_restore(task, source)
            return
        if not self.plugins.implements("restore", task):
            message = (
                f"{task.key}: not restored: its plugin has no restore (pullback_restore); "
                f"its data is in {source}"
            )
            task.log.error("%s", message)
            self.failures.append(message)
            return
        try:
            self.plugins.call(
                "restore",
                task,
                source=source,
                target=self.options.target,
                dry_run=self.options.dry_run,
                plan=self.plan,
            )
        except Interrupted:
            raise
        except Exception as exc:
            # any plugin's failure is the task's (an outside walk: a sqlite3 error ended
            # the whole restore with a traceback, the service's later tasks not tried);
            # one log line per line of the error (a command's failure ends with the last
            # lines it printed): a line break inside one message would be escaped as \n
            if not isinstance(exc, PullbackError | OSError):
                task.log.debug("the restore failed:", exc_info=exc)
            first = _log_lines(task, "restore failed", exc)
            self.failures.append(f"{task.key}: {first}")

    def nothing_to_restore(self, task: Task, source: Path) -> None:
        """A task with no data in the snapshot: a failure when its dump failed that day
        (or when it was asked for by name), else (it wrote nothing) only a warning."""
        failed = self.content.failed_task(task.type)
        if failed is not None:
            message = (
                f"{task.key}: nothing to restore: this task {failed.status} in the snapshot "
                f"({failed.error or 'no reason recorded'}); restore an older snapshot "
                "(pullback-server snapshots HOST shows which are partial)"
            )
            task.log.error("%s", message)
            self.failures.append(message)
            return
        message = f"{task.key}: nothing to restore ({source} is not in the snapshot)"
        task.log.warning("%s", message)
        if self.options.task:
            self.failures.append(message)

    def start_again(self) -> None:
        """Each prepared task's finish, the last first; one that fails while a signal came
        or the machine is being stopped keeps its entry for the next start (as a run's:
        :meth:`.stages.Stages.finish`)."""
        for task in reversed(self.prepared):
            try:
                self.plugins.call("finish", task, failed=bool(self.failures))
            except Exception as exc:
                first = _log_lines(task, "could not start the application again", exc)
                self.failures.append(f"{task.key}: could not start again: {first}")
                if self.record is not None and self.record.kept_if_stopping(task):
                    continue
            if self.record is not None:
                self.record.finished(task)
