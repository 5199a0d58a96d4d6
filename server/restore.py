"""``pullback-server restore HOST``: restore (part of) a snapshot into a directory, and
say how to prove it and put it back on the client."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import shlex
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ..common.archive import sidecar as sidecars
from ..common.archive.manifest import MANIFEST_NAME, entries, format_line, read_lines
from ..common.archive.sidecar import SIDECAR_NAME
from ..common.archive.stored import BESIDE_SERVICES
from ..common.clock import shown, stamp_of, utc_now
from ..common.errors import EXIT_OK, ArchiveError, PullbackError, UsageError
from ..common.fsutil import remove_entry, set_dir_mode, untrusted_link
from ..common.log import PrefixAdapter
from ..common.outcome import Status
from ..common.procfs import bytes_written_below
from ..common.progress import STATUS, Progress, Watched
from ..common.signals import SignalGuard
from ..common.text import few, printable
from ..common.trees import remove_tree
from .backends import Backend, Snapshot, named, plausible
from .config import ServerConfig
from .host import HostContext
from .missing import open_pulled


@dataclass(frozen=True)
class RestoreRequest:
    """What to restore: a snapshot of a host (``latest``, an id prefix or an archive
    stamp), optionally one service or one path, into ``target``."""

    host: str
    target: Path
    snapshot: str = "latest"
    service: str | None = None
    path: str | None = None
    force: bool = False
    """Restore into a directory that is not empty."""

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> RestoreRequest:
        return cls(args.hostname, args.target, args.snapshot, args.service, args.path, args.force)

    def includes(self, adopted: bool = False) -> list[str]:
        """The paths inside the snapshot to restore (all when empty); in an adopted
        backup-suite snapshot a service is ``<name>`` below any ``<type>``, or
        ``<type>/<name>``. Raises UsageError."""
        if self.service is not None:
            parts = self.service.split("/")
            if len(parts) > (2 if adopted else 1) or not all(
                p not in ("", ".", "..") for p in parts
            ):
                raise UsageError(
                    f"--service {self.service!r} is not a service name"
                    + (" (or <type>/<name> in a backup-suite snapshot)" if adopted else "")
                )
        includes = []
        if self.service and adopted:
            includes.append(self.service if "/" in self.service else f"*/{self.service}")
        elif self.service:
            includes += [f"services/{self.service}", *BESIDE_SERVICES]
        if self.path:
            includes.append(_relative(self.path))
            if not adopted and not self.service:  # what proves it, and what it was
                includes += list(BESIDE_SERVICES)
        return includes


def _relative(path: str) -> str:
    try:
        path.encode("utf-8")
    except UnicodeError:  # (restic's and borg's arguments are text)
        raise UsageError(
            f"--path {printable(path, 200)} is not UTF-8: restore its service (--service) "
            "or the whole snapshot instead"
        ) from None
    parts = [p for p in path.strip("/").split("/") if p]
    if not parts or any(p in (".", "..") for p in parts) or parts[0] == "*":
        raise UsageError(f"--path {path!r} is not a path inside the snapshot (like services/app)")
    return "/".join(parts)


def _newest_with(snapshots: list[Snapshot], service: str, host: str) -> tuple[Snapshot, str]:
    """The newest snapshot in which ``service`` succeeded on the client, and why it is not
    the newest of all when it is not. Raises PullbackError when there is none."""
    good = [s for s in snapshots if not s.failed_service(service)]
    if not good:
        raise PullbackError(f"{service} failed on {host} in every snapshot; nothing to restore")
    if good[-1] is snapshots[-1]:
        return good[-1], ""
    skipped = [s.id for s in snapshots if s.time > good[-1].time]
    return good[-1], (
        f"{service} failed on the client in the newer snapshot(s) {', '.join(skipped)}; "
        f"restoring {good[-1].id}, the newest in which it succeeded"
    )


def pick_snapshot(
    snapshots: list[Snapshot], wanted: str, host: str, service: str | None = None
) -> tuple[Snapshot, str]:
    """The snapshot to restore and, when it is not simply the one asked for, why.

    ``latest`` with a service is the newest snapshot in which that service succeeded on
    the client; else the one snapshot whose id starts with ``wanted`` or whose archive
    stamp is ``wanted``. Raises PullbackError (no snapshot) or UsageError (no single one).
    """
    if not snapshots:
        raise PullbackError(f"{host} has no snapshot yet")
    if wanted == "latest":
        believed = plausible(snapshots)
        if not believed:
            raise PullbackError(
                f"every snapshot of {host} is dated ahead of this machine's clock; name one "
                "with --snapshot"
            )
        chosen, why = _newest_with(believed, service, host) if service else (believed[-1], "")
        ahead = [s.id for s in snapshots if s.time > believed[-1].time]
        if ahead:
            why = "; ".join(
                [why] * bool(why)
                + [f"passed over {', '.join(ahead)}, dated ahead of this machine's clock"]
            )
        return chosen, why
    matches = named(snapshots, wanted)
    if len(matches) != 1:
        raise UsageError(
            f"no single snapshot {wanted!r} of {host}; see pullback-server snapshots {host}"
        )
    chosen = matches[0]
    if service and chosen.failed_service(service):
        return chosen, f"{service} FAILED on the client in snapshot {chosen.id}: it may be missing"
    return chosen, ""


def proof_command(service: str | None) -> str:
    """The shell command that proves a restored snapshot (or one service of it) byte for
    byte against its manifest. In the C locale, so that a name that is not UTF-8 is
    checked like any other (grep skips such lines as "binary" in a UTF-8 locale); a
    service with no line at all fails (``--strict``, and sha256sum finds nothing). The
    service's prefix is a fixed string (``grep -F``): a ``.`` in a name is not a wildcard."""
    if not service:
        return "LC_ALL=C sha256sum --check --strict MANIFEST.sha256"
    return (
        f"LC_ALL=C grep -aF -- {shlex.quote(f'  services/{service}/')} MANIFEST.sha256 "
        "| LC_ALL=C sha256sum --check --strict"
    )


def listed_at(manifest: Path, path: str) -> tuple[str | None, bool]:
    """What the manifest file ``manifest`` lists at ``path``: the digest of that name
    (None when it is not listed; the last line of it wins) and whether it lists a name
    below ``path/``. Streamed a line at a time, as the drill reads it
    (:mod:`..common.archive.listed`): memory does not grow with the client-written
    manifest (read whole, a 45 MB one cost 154 MB, an outside test). Raises OSError when
    it cannot be read, ValueError for a line that does not parse."""
    digest, below, prefix = None, False, path + "/"
    with manifest.open("rb") as handle:
        for name, hexdigest in entries(read_lines(handle)):
            if name == path:
                digest = hexdigest
            elif not below and name.startswith(prefix):
                below = True
    return digest, below


def path_proof(target: Path, path: str) -> str | None:
    """The command that proves what ``--path`` restored, ``path`` relative to the
    snapshot: its own manifest line (a regular file) or every line below it (a
    directory), so a file restic left out fails the check. A name that is not UTF-8 is
    checked against the whole manifest, files not restored ignored. None when the
    manifest lists nothing there (a symlink, a FIFO, a directory of no regular file)
    or cannot be read."""
    try:
        digest, below = listed_at(target / MANIFEST_NAME, path)
    except (OSError, ValueError):
        return None
    check = "LC_ALL=C sha256sum --check --strict"
    try:
        if digest is not None:
            line = format_line(path, digest).rstrip(b"\n").decode("utf-8")
            picked = f"LC_ALL=C grep -aFx -- {shlex.quote(line)} {MANIFEST_NAME}"
        elif below:
            if any(c in path for c in "\\\n\r"):  # (escaped in the manifest's lines)
                raise UnicodeError
            path.encode("utf-8")
            picked = f"LC_ALL=C grep -aF -- {shlex.quote(f'  {path}/')} {MANIFEST_NAME}"
        else:
            return None
    except UnicodeError:
        return f"{check} --ignore-missing {MANIFEST_NAME}"
    return f"{picked} | {check}"


def copy_command(target: Path, address: str, port: int) -> str:
    """The rsync line that copies a restored tree to the client (its sshd's port too):
    owners by number (``--numeric-ids``; by name, the client's passwd would give a file
    of uid 1 to whoever is ``daemon`` there, helper-159 F2) and holes as holes
    (``--sparse``: a 100 GiB image holding 10 GiB took 100 GiB of the client's /var/tmp,
    helper-159 F4)."""
    ssh = f" -e 'ssh -p {port}'" if port != 22 else ""
    source = shlex.quote(f"{target}/")
    aside = f" --exclude='/{ASIDE_PREFIX}*'"  # (what --force set aside stays here)
    to = f"root@{address}:/var/tmp/pullback-restore/"
    return f"rsync -aHAXS --numeric-ids --delete{ssh}{aside} {source} {to}"


def adopted_steps(request: RestoreRequest, snapshot: Snapshot) -> str:
    """What to do after restoring a snapshot backup-suite made (adopted): its layout is
    backup-suite's and it has no manifest to prove it by."""
    return "\n".join(
        [
            f"restored snapshot {snapshot.id} of {request.host} (taken {shown(snapshot.time)}, "
            f"made by backup-suite) into {request.target}",
            "it holds <type>/<service>/ as backup-suite stored them (files under data/, "
            "database dumps, compose files); it has no manifest to prove it by",
            "put it back by hand, as with backup-suite: see docs/restore.md, "
            "'Snapshots made by backup-suite'",
        ]
    )


def next_steps(request: RestoreRequest, snapshot: Snapshot, address: str, port: int = 22) -> str:
    """What the administrator reads after a restore: how to prove it, how to put it back."""
    if snapshot.adopted:
        return adopted_steps(request, snapshot)
    target, service = request.target, request.service
    check: str | None = proof_command(service)
    if request.path and not service:
        check = path_proof(target, _relative(request.path))
    steps = [
        f"restored snapshot {snapshot.id} of {request.host} (taken {shown(snapshot.time)}) "
        f"into {target}",
        f"prove it byte for byte:  cd {shlex.quote(str(target))} && {check}"
        if check
        else f"no regular file is at {request.path} (the manifest lists only those): "
        "nothing to prove it by",
    ]
    if service:
        steps += [
            f"to put {service} back on {request.host}: copy {target} to it, e.g.",
            f"  {copy_command(target, address, port)}",
            "then run on the client:",
            f"  pullback-client restore --service {service} "
            "--from /var/tmp/pullback-restore --dry-run   (then without --dry-run)",
        ]
    return "\n".join(steps)


def restore(config: ServerConfig, request: RestoreRequest) -> str:
    """Restore what ``request`` asks for; return what to do next. Raises PullbackError
    (UsageError for a wrong host, snapshot, path or a non-empty target)."""
    ctx = HostContext.open(config, config.host(request.host))
    target = request.target
    _refuse_target(request)
    request.includes(adopted=True)  # a wrong --path is refused before the repository opens
    open_pulled(config, ctx.host, ctx.backend)
    snapshot, why = pick_snapshot(
        ctx.backend.snapshots(), request.snapshot, request.host, request.service
    )
    includes = request.includes(snapshot.adopted)
    if why:
        ctx.log.warning("%s", why)
    _make_private(target, ctx.log)
    with SignalGuard(
        "stopping; what the restore wrote goes, what it set aside comes back"
    ) as guard:
        aside: SetAside | None = None
        before: Before | None = None
        try:
            with guard.shielded():  # (a signal now waits: what moved is then put back)
                if request.force:
                    aside = SetAside.of(target, includes, snapshot.adopted)
            ctx.log.info(
                "restoring snapshot %s (%s) into %s", snapshot.id, shown(snapshot.time), target
            )
            total = ctx.backend.restore_size(snapshot) if STATUS.enabled and not includes else None
            before = Before.of(target, includes, snapshot.adopted)
            with Watched(Progress("restore", total), sample=_written_so_far):
                ctx.backend.restore(snapshot, target, includes)
            _check_restored(request, snapshot, ctx.backend)
        except BaseException:
            with guard.shielded():
                _undo(before, aside)
            raise
    steps = next_steps(request, snapshot, ctx.host.address, ctx.host.port)
    if aside is not None:
        steps += f"\nwhat the target held there before is in {aside.directory}: remove it when done"
    return f"note: {why}\n{steps}" if why else steps


def _refuse_target(request: RestoreRequest) -> None:
    """Raises UsageError when ``--target`` is no directory (it was a traceback, exit
    70), is not empty without ``--force``, or with ``--force`` the ``--path`` holds a
    pattern character."""
    target = request.target
    if target.is_symlink():
        raise UsageError(f"--target {target} is a symbolic link; name the directory itself")
    if os.path.lexists(target) and not target.is_dir():
        raise UsageError(f"--target {target} is not a directory")
    if target.exists() and any(target.iterdir()) and not request.force:
        raise UsageError(f"{target} is not empty; choose an empty directory or add --force")
    _refuse_movable(target)
    if request.force and request.path and any(c in request.path for c in "*?[\\"):
        # restic and borg read these as a pattern, which could match entries of the
        # target that are set aside by name only (a symlink among them would be written
        # through): into an empty directory, there is nothing to be in the way
        raise UsageError(
            f"--path {printable(request.path, 200)} holds *, ?, [ or \\, which restic and "
            "borg read as a pattern: restore it into an empty directory, without --force"
        )


def _refuse_movable(target: Path) -> None:
    """Raises UsageError when a directory above ``target`` is one another user may
    change (owned by another user, or writable by others without the sticky bit): that
    user could move the target away during the restore and put a symlink to ``/`` in
    its place, into which restic writes and from which a failed restore removes what
    it did not list before (helper-132); when ``target`` itself is another user's or
    others may write it (they could plant ``services`` as a link before it is made
    private), or is reached through a symbolic link another user may change
    (helper-137)."""
    shown = printable(str(target), 200)
    with contextlib.suppress(FileNotFoundError):
        found = os.lstat(target)
        if found.st_uid != 0:
            raise UsageError(
                f"--target {shown} belongs to user {found.st_uid}, who may change it "
                "during the restore: restore into a directory of root's"
            )
        if found.st_mode & 0o022:  # (before it is made private, another could plant a link)
            raise UsageError(
                f"--target {shown} may be written by other users (mode "
                f"{stat.S_IMODE(found.st_mode):04o}): restore into a directory only root "
                "may write, such as a new one below /var/tmp"
            )
    link = untrusted_link(Path(os.path.abspath(target)))
    if link is not None:
        raise UsageError(
            f"--target {shown} is reached through {printable(str(link), 200)}, a symbolic "
            "link another user may change: name the real path"
        )
    for above in Path(os.path.abspath(target)).parents:
        try:
            found = os.stat(above)
        except FileNotFoundError:
            continue  # (made by root below)
        others = found.st_mode & 0o022 and not found.st_mode & stat.S_ISVTX
        if found.st_uid != 0 or others:
            raise UsageError(
                f"--target {printable(str(target), 200)} is below "
                f"{printable(str(above), 200)}, which another user may change (it could "
                "move the target away during the restore and put a link to / there): "
                "restore below a directory only root may change, such as /var/tmp"
            )


PRIVATE = 0o700
"""The permission bits of a restore's target: only root may enter it while set-id files
and private data are written there (restic writes each entry with its snapshot's mode)."""


def _make_private(target: Path, log: PrefixAdapter) -> None:
    """Make ``target`` (0700), or give an existing one :data:`PRIVATE` permission bits,
    its set-group-id and sticky bits kept; a change of its mode is said, with the mode
    it had. Raises OSError."""
    try:
        was = stat.S_IMODE(os.lstat(target).st_mode)
    except FileNotFoundError:
        target.mkdir(parents=True, mode=PRIVATE)
        was = None
    mode = PRIVATE | (was or 0) & (stat.S_ISGID | stat.S_ISVTX)
    set_dir_mode(target, mode)
    if was is not None and was != mode:
        log.warning(
            "--target %s was mode %04o; it is now %04o while it holds the restore (only "
            "root may enter it): give it its mode back when done (chmod %04o)",
            printable(str(target), 200),
            was,
            mode,
            was,
        )


def _written_so_far() -> int:
    """The bytes this process and its children (restic, borg) have written."""
    return bytes_written_below(os.getpid())


@dataclass(frozen=True)
class Before:
    """What ``target`` held before a restore wrote into it (after ``--force`` set aside
    what was in its way): its top-level names, and for each path the restore writes,
    the first entry on the way there that it lacked (``fresh``). Whatever stands at one
    of those afterwards, or under a new top-level name, the restore wrote; an entry that
    was there before (``services/`` of an earlier restore) is never among them."""

    target: Path
    names: frozenset[str]
    fresh: tuple[Path, ...]
    identity: tuple[int, int] = (0, 0)
    """The target's device and inode: an undo removes nothing from another directory."""

    @classmethod
    def of(cls, target: Path, includes: list[str], adopted: bool) -> Before:
        """``target`` as it is now, before the restore of ``includes`` writes."""
        fresh = []
        for relative in _written(target, includes, adopted):
            current = target
            for part in (p for p in relative.split("/") if p):
                current = current / part
                if not os.path.lexists(current):
                    fresh.append(current)
                    break
        found = os.lstat(target)
        identity = (found.st_dev, found.st_ino)
        return cls(target, frozenset(os.listdir(target)), tuple(fresh), identity)

    def same_target(self) -> bool:
        """Whether ``target`` is still the directory it was (not moved, not a link)."""
        try:
            found = os.lstat(self.target)
        except OSError:
            return False
        return stat.S_ISDIR(found.st_mode) and (found.st_dev, found.st_ino) == self.identity

    def written(self) -> list[Path]:
        """The entries the restore made since (each whole: a directory with all in it)."""
        made = [self.target / n for n in sorted(set(os.listdir(self.target)) - self.names)]
        return list(dict.fromkeys(made + [p for p in self.fresh if os.path.lexists(p)]))


def _undo(before: Before | None, aside: SetAside | None) -> None:
    """After a failed (or interrupted) restore: what it wrote goes (it came from the
    snapshot: the manifest and sidecar of a miss, a partial tree, also below a directory
    the target held before, such as an earlier restore's ``services/``), and what
    ``--force`` set aside comes back where it was. Nothing is removed when the target is
    no longer the directory it was (raises PullbackError). ``before`` None: the restore
    had not begun to write (stopped while ``--force`` set things aside)."""
    if before is None:
        if aside is not None:
            aside.put_back()
        return
    if not before.same_target():
        raise PullbackError(
            f"{printable(str(before.target), 200)} is no longer the directory the restore "
            "wrote into: nothing was removed; look there and at what replaced it"
        )
    for path in before.written():
        if not before.same_target():
            raise PullbackError(f"{printable(str(before.target), 200)} changed: undo stopped")
        remove_entry(path)
    if aside is not None:
        aside.put_back()


def _check_restored(request: RestoreRequest, snapshot: Snapshot, backend: Backend) -> None:
    """Raise when the snapshot held nothing of what was asked: no such service
    (PullbackError, naming the services it holds) or nothing at the path (UsageError;
    an outside test got "restored" and an empty directory)."""
    target = request.target
    if request.service and not _holds(target, request.service, snapshot.adopted):
        held = _adopted_services(backend, snapshot) if snapshot.adopted else _services_of(target)
        raise PullbackError(
            f"snapshot {snapshot.id} of {request.host} holds no service {request.service!r}"
            + (f" (it holds: {few(held)})" if held else "")
        )
    if request.path and not os.path.lexists(target / _relative(request.path)):
        raise UsageError(
            f"snapshot {snapshot.id} of {request.host} has nothing at "
            f"{_relative(request.path)!r}: a path inside a snapshot starts with "
            "services/<service>/ (files/ and the dumps below it; a file is at "
            "services/<service>/files/<its absolute path>)"
        )


ASIDE_PREFIX = ".pullback-replaced-"


@dataclass(frozen=True)
class SetAside:
    """What ``--force`` moved out of the restore's way: ``moved`` (relative paths) now
    below ``directory`` (``target/.pullback-replaced-<time>-…``)."""

    target: Path
    directory: Path
    moved: tuple[Path, ...]
    times: tuple[tuple[Path, int, int], ...] = ()
    """The access and modification times (ns) of the directories entries moved out of,
    as they were: put back, they have them again."""

    @classmethod
    def of(cls, target: Path, includes: list[str], adopted: bool) -> SetAside | None:
        """Move aside what ``target`` holds where this restore writes, so that the
        restore writes into nothing: restic cannot write over a symlink, a FIFO or a hard
        link (an outside test's second restore failed half-way), and a symlink an earlier
        restore left on the way would take its writes out of the target. Nothing is
        destroyed. None when nothing was in the way. Raises PullbackError (what moved is
        back) when an entry cannot move."""
        found = _in_the_way(target, _written(target, includes, adopted))
        if not found:
            return None
        stamp = stamp_of(utc_now())
        was = os.lstat(target)  # (before the aside directory is made in it)
        times: tuple[tuple[Path, int, int], ...] = ((target, was.st_atime_ns, was.st_mtime_ns),)
        directory = Path(tempfile.mkdtemp(prefix=f"{ASIDE_PREFIX}{stamp}-", dir=target))
        aside = cls(target, directory, (), times)
        for path in sorted(found):
            relative = path.relative_to(target)
            try:
                if path.parent not in (t[0] for t in aside.times):
                    was = os.lstat(path.parent)
                    times = (*aside.times, (path.parent, was.st_atime_ns, was.st_mtime_ns))
                    aside = dataclasses.replace(aside, times=times)
                (directory / relative).parent.mkdir(parents=True, exist_ok=True)
                os.rename(path, directory / relative)
            except OSError as exc:
                aside.put_back()
                raise PullbackError(
                    f"cannot set {path} aside for --force ({exc.strerror}); nothing was "
                    "restored and the target is as it was"
                ) from None
            aside = dataclasses.replace(aside, moved=(*aside.moved, relative))
        return aside

    def put_back(self) -> None:
        """What was set aside comes back where it was (whatever a failed restore wrote
        there goes first: it came from the snapshot), and the aside directory goes."""
        for relative in self.moved:
            place = self.target / relative
            remove_entry(place)
            place.parent.mkdir(parents=True, exist_ok=True)
            os.rename(self.directory / relative, place)
        remove_tree(self.directory)
        for directory, atime, mtime in self.times:
            os.utime(directory, ns=(atime, mtime), follow_symlinks=False)


def _written(target: Path, includes: list[str], adopted: bool) -> list[str]:
    """The paths (relative to ``target``, literal) a restore of ``includes`` writes:
    the whole snapshot's ``services`` and what is beside it (BESIDE_SERVICES); in an
    adopted snapshot every entry, and a service ``*/NAME`` below each directory there."""
    if not includes:
        return sorted(os.listdir(target)) if adopted else ["services", *BESIDE_SERVICES]
    written = []
    for include in includes:
        if include.startswith("*/"):  # (adopted: a service below any type)
            written += [f"{kind}/{include[2:]}" for kind in sorted(os.listdir(target))]
        else:
            written.append(include)
    return [w for w in written if not w.split("/")[0].startswith(ASIDE_PREFIX)]


def _in_the_way(target: Path, written: list[str]) -> set[Path]:
    """For each path the restore writes, the entry of ``target`` in its way: the first
    component on the way that is not a directory (a symlink is not: lstat), or the
    entry itself. Never followed out of ``target``. One inside another goes with it."""
    found: set[Path] = set()
    for relative in written:
        current = target
        parts = [p for p in relative.split("/") if p]
        for number, part in enumerate(parts, 1):
            current = current / part
            try:
                mode = os.lstat(current).st_mode
            except FileNotFoundError:
                break
            if number == len(parts) or not stat.S_ISDIR(mode):
                found.add(current)
                break
    return {p for p in found if not any(a in found for a in p.parents)}


def _holds(target: Path, service: str, adopted: bool) -> bool:
    """True when the restored tree holds ``service`` (``services/<name>``, or in an
    adopted backup-suite snapshot ``<type>/<name>``)."""
    if not adopted:
        return (target / "services" / service).is_dir()
    if "/" in service:
        return (target / service).is_dir()
    return any((kind / service).is_dir() for kind in target.iterdir() if kind.is_dir())


def _adopted_services(backend: Backend, snapshot: Snapshot) -> list[str]:
    """The ``<type>/<name>`` directories of an adopted backup-suite snapshot, each
    escaped and cut ([] when the repository cannot say: the error stays the missing
    service's)."""
    try:
        return [printable(name, 100) for name in backend.adopted_services(snapshot)]
    except PullbackError:
        return []


def _services_of(target: Path) -> list[str]:
    """The services a restored snapshot holds, by its sidecar: those that succeeded on
    the client ([] when it has no sidecar)."""
    try:
        side = sidecars.parse((target / SIDECAR_NAME).read_bytes())
    except (OSError, ArchiveError):
        return []
    return sorted(printable(s.name, 100) for s in side.services if s.status == Status.OK)


def command(config: ServerConfig, args: argparse.Namespace) -> int:
    print(restore(config, RestoreRequest.from_args(args)))
    return EXIT_OK
