"""The ``files`` task: stream files and directory trees into the archive."""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from ..common.archive.stats import MAX_TASK_WARNINGS
from ..common.fsutil import make_dirs_at, open_trusted_dir, untrusted_link
from ..common.text import counted, printable
from ..common.units import human_size
from . import hookimpl, load_plugin_schema
from .before_restore import Identity, InStep, Replaced, Spot, find_replaced, keep_aside
from .copy_room import Links, check_copy_room, nested
from .exclude import ExcludeMatcher
from .relink import link_again
from .task import ProbeResult, RestorePlan, Task, TaskError, TaskType, name_in_archive

CP = ("-a", "--sparse=always")
"""How files go back: everything ``cp -a`` keeps, and holes where the data is zeros
(restic 0.14 restores a sparse file with its zeros written out)."""


@hookimpl
def pullback_task_types():
    return [
        TaskType(
            "files",
            load_plugin_schema("files"),
            description="files and directory trees, with all metadata",
            restores_below_target=True,
        )
    ]


def _matcher(task: Task) -> ExcludeMatcher:
    return ExcludeMatcher(task.config["exclude"])


@hookimpl
def pullback_validate(task: Task):
    """A wrong exclude pattern. A path that does not exist is no reason not to run the
    service (its database dump, its other paths): the dump fails the task for it, and
    ``check`` names it (:func:`pullback_probe`)."""
    try:
        _matcher(task)
    except ValueError as exc:
        return [str(exc)]
    return []


def _missing(task: Task) -> list[str]:
    """The listed paths that do not exist."""
    return [p for p in task.config["paths"] if not os.path.lexists(p)]


@hookimpl
def pullback_probe(task: Task) -> ProbeResult:
    """A listed path that does not exist: a problem, unless ``missing_ok`` (a warning).
    A listed path below another one through a symlink in it: a problem
    (:func:`below_a_link`)."""
    result = ProbeResult()
    said = [f"path {printable(p, 200)} does not exist" for p in _missing(task)]
    if task.config["missing_ok"]:
        result.warnings += [f"{line} (skipped: missing_ok)" for line in said]
    else:
        result.problems += said
    result.problems += list(below_a_link(task.config["paths"], _matcher(task)).values())
    result.warnings += list(_links_with_a_slash(task.config["paths"]).values())
    return result


def _links_with_a_slash(paths: list[str]) -> dict[str, str]:
    """Each listed path written with a trailing ``/`` that is a symlink to a directory
    (``/srv/data/``, ``/srv/data -> /disk/data``), with the words that warn of it: its
    archive holds the link alone, where rsync (backup-suite's paths) copies what it
    points at, and a run said "0 files" and nothing else (helper-155 F9)."""
    said = {}
    for path in paths:
        if path.endswith("/") and os.path.islink(path.rstrip("/")) and os.path.isdir(path):
            said[path] = (
                f"path {printable(path, 200)} is a symlink to a directory: only the link is "
                f"archived, not what is in it (rsync copies that for a trailing /); "
                f"{_advice(path)}"
            )
    return said


def below_a_link(paths: list[str], matcher: ExcludeMatcher) -> dict[str, str]:
    """The listed ``paths`` that lie below another listed one through a symlink the
    other one's tree holds (``[/srv, /srv/app/data]`` with ``/srv/app -> /data/app``),
    each with the words why it is not archived. The outer path's archive keeps the
    symlink as a symlink, the inner path's files would go below the same name as a
    directory: no unpacking writes through a symlink of the archive, and every restore
    of the service stopped there (helper-152 F3). Paths are compared by the names they
    have in the archive (``//srv`` is ``/srv``). No clash: an inner path an exclude
    leaves out by name, or one below a symlink another user could have made (skipped
    with a warning when archived)."""
    found: dict[str, str] = {}
    for inner in paths:
        if inner in found or matcher.excludes_listed(inner) or untrusted_link(Path(inner)):
            continue
        for outer in paths:
            link = _link_between(_archived(outer), _archived(inner), matcher)
            if link is not None:
                found[inner] = (
                    f"path {printable(inner, 200)} lies below {printable(outer, 200)} through "
                    f"the symlink {printable(link, 200)}: no restore of both could put it "
                    f"back below that link, so it is not archived; {_advice(inner)}"
                )
                break
    return found


def _archived(path: str) -> Path:
    """``path`` as its name in the archive reads (:func:`.name_in_archive`), rooted."""
    return Path("/" + name_in_archive(path))


def _advice(inner: str) -> str:
    """What to list instead of ``inner``: its real path, when the links on its way
    lead to one that exists."""
    try:
        real = os.path.realpath(inner, strict=True)
    except OSError:  # (a link that leads nowhere, or a loop)
        return "the symlink on its way leads nowhere that exists: list the real path"
    return f"list its real path {printable(real, 200)} instead"


def _link_between(outer: Path, inner: Path, matcher: ExcludeMatcher) -> Path | None:
    """The first symlink on the way from ``outer`` (itself too) to ``inner``'s parent;
    None when there is none, ``inner`` is not below ``outer``, or ``matcher`` leaves
    ``outer`` out. An exclude that leaves the link out of ``outer``'s tree ends no
    clash: the inner path's parents put a directory at its name, and a restore of
    ``outer`` meets the live symlink there (refused, nothing replaced)."""
    if inner == outer or not inner.is_relative_to(outer) or matcher.excludes_listed(outer):
        return None
    names = inner.relative_to(outer).parts[:-1]
    for depth in range(len(names) + 1):
        place = outer.joinpath(*names[:depth])
        if os.path.islink(place):
            return place
    return None


@hookimpl
def pullback_plan(task: Task):
    matcher = _matcher(task)
    unsafe = below_a_link(task.config["paths"], matcher)
    slashed = _links_with_a_slash(task.config["paths"])
    lines = []
    for path in task.config["paths"]:
        if path in unsafe:
            lines.append(f"would fail: {unsafe[path]}")
            continue
        if path in slashed:  # (kept_files would count what the link points at)
            lines.append(f"would archive the link alone, warning: {slashed[path]}")
            continue
        if not os.path.lexists(path):
            outcome = "skipped (missing_ok)" if task.config["missing_ok"] else "the task fails"
            lines.append(f"{path} does not exist: {outcome}")
            continue
        if matcher.excludes_listed(path):
            lines.append(f"would leave out {path}: an exclude pattern matches its name")
            continue
        files = size = 0
        for rel in matcher.kept_files(path):
            try:
                size += os.lstat(os.path.join(path, rel) if rel else path).st_size
                files += 1
            except OSError:
                pass
        lines.append(f"would archive {path}: {files} files, {human_size(size)}")
    if matcher:
        lines.append(f"excluding: {', '.join(matcher.patterns)}")
    return lines


@hookimpl
def pullback_dump(task: Task):
    """Archive every listed path but those :func:`below_a_link`, then fail the task
    for those, and for the missing ones unless ``missing_ok``."""
    matcher = _matcher(task)
    unsafe = below_a_link(task.config["paths"], matcher)
    paths = [path for path in task.config["paths"] if path not in unsafe]
    for line in _links_with_a_slash(paths).values():
        task.log.warning("%s", line)
    missing = archive_paths(task, paths, matcher, task.config["xattrs"])
    if unsafe:
        raise TaskError("; ".join(unsafe.values()))
    if task.stats.unarchived:
        raise TaskError(not_archived(task.stats.unarchived))
    if missing and not task.config["missing_ok"]:
        raise TaskError(f"{len(missing)} path(s) do not exist: {', '.join(missing)}")
    for path in missing:
        task.log.warning("%s does not exist; skipped (missing_ok)", path)


def not_archived(paths: list[str]) -> str:
    """Why a task fails that was asked for ``paths`` it archived nothing of (each said in
    a warning): a restore could not give them back (helper-156 F3: the run said ok, and
    every restore of the service stopped at "not in the restored snapshot")."""
    shown = ", ".join(printable(p, 200) for p in paths[:5])
    more = f" and {len(paths) - 5} more" if len(paths) > 5 else ""
    return (
        f"{counted(len(paths), 'listed path')} not archived (the warnings say why): {shown}{more}"
    )


def archive_paths(task: Task, paths: list[str], matcher: ExcludeMatcher, xattrs: bool) -> list[str]:
    """Stream each of ``paths`` into the archive, leaving out what ``matcher`` excludes
    (as backup-suite's rsync did, from each path's parent). Returns the paths that do not
    exist (nothing of them is archived); the caller decides whether that fails."""
    missing: list[str] = []
    for path in paths:
        if matcher.excludes_listed(path):
            task.log.info("%s left out: an exclude pattern matches its name", path)
            continue
        exclude = matcher.rooted(path) if matcher else None
        room = max(0, MAX_TASK_WARNINGS - task.stats.warnings.total)  # (the task keeps these)
        try:
            stats = task.add_tree(Path(path), exclude=exclude, xattrs=xattrs)
        except FileNotFoundError:
            missing.append(path)
            continue
        for warning in stats.warnings[:room]:  # each odd entry is skipped or archived as read
            task.log.warning("%s", warning)
    return missing


def _copy_parents(copy: Path, destination: Path, source_root: Path) -> None:
    """Create the missing parents of ``destination`` by descriptor, each with the owner,
    mode, times and extended attributes of the snapshot's one (:func:`.make_dirs_at`).
    Raises OSError (ENOTDIR: one swapped for a symlink as it was made)."""

    def like(directory: Path) -> Path | None:
        original = copy.parent
        for _ in destination.parent.relative_to(directory).parts:
            original = original.parent
        return original if original.is_relative_to(source_root) else None

    os.close(make_dirs_at(destination.parent, like))


@hookimpl
def pullback_restore(task: Task, source: Path, target: Path | None, plan: RestorePlan):
    """Copy every listed path back with ``cp -a --sparse=always`` (owners, modes with
    set-id bits, times, links, FIFOs, xattrs with file capabilities, ACLs; zeros become
    holes again), to its own place or below ``target``. Before anything is replaced,
    every live file the copy replaces whose content differs from the snapshot's is copied
    aside, with its metadata, to a new directory below the restore's safety directory
    (:mod:`.before_restore`; see docs/restore.md); when that fails, or would not fit,
    nothing is replaced. Files that exist are then overwritten in place; every restored
    file and directory carries exactly the snapshot's extended attributes (unless the
    task archives none: ``xattrs: false``); files that are not in the snapshot are left
    alone."""
    restore_paths(task, task.config["paths"], source, target, plan)


def restore_paths(
    task: Task, paths: list[str], source: Path, target: Path | None, plan: RestorePlan
) -> None:
    """Copy each of ``paths`` from ``source`` (the task's restored directory) back to its
    place or below ``target``, as :func:`pullback_restore` says, each a step of ``plan``
    (destructive where something is there to be replaced; a dry run only says it, and
    what would be kept). First every path is checked and what its copy would replace is
    kept (:func:`.before_restore.keep_aside`): a refusal or a failure there replaces
    nothing of any path. Raises TaskError for a path the snapshot lacks, unless the
    section says ``missing_ok`` (or has no such key: a task that archives what exists,
    like univention's ``custom_paths``)."""
    copies = []
    for path in paths:
        copy = source / name_in_archive(path)
        if not os.path.lexists(copy):
            if task.config.get("missing_ok", True):
                continue
            raise TaskError(f"{path} is not in the restored snapshot ({copy})")
        copies.append((path, copy))
    restore_copies(task, copies, source, target, plan)


def restore_copies(
    task: Task,
    copies: list[tuple[str, Path]],
    source: Path,
    target: Path | None,
    plan: RestorePlan,
) -> None:
    """Copy each ``(path, copy)`` of ``copies`` (the snapshot's ``copy``, below
    ``source``, of the live ``path``) back, as :func:`restore_paths` says: checked,
    what it replaces kept, then copied (other plugins' files go back so too: the
    docker task's compose file). Raises TaskError."""
    places = _places(copies, target)
    found = [
        _scanned(p.copy, p.destination, p.above)
        for p in places
        if p.within is None and os.path.lexists(p.destination)
    ]
    pairs = [(p.copy, p.destination) for p in places]
    room = check_copy_room(pairs, found, plan.safety_dir or source, plan.min_free)
    keep_aside(task.type, task.log, found, plan, source)
    restored = [
        _restore_place(task, place, count, source, plan)
        for place, count in zip(places, room.counts, strict=True)
    ]
    _links_again(task, room.links, restored, [copy for copy, _ in pairs], plan)


@dataclass
class _Place:
    """A listed path of a restore: the snapshot's ``copy`` of it and its
    ``destination``; ``above``, the identity of the directory holding that (None:
    missing at the check); ``within``, the listed path whose copy holds it whole (it
    lies in that one's tree, or repeats it: nothing of its own is done, its parents
    could not be made before that one's copy, helper-155 F6)."""

    path: str
    copy: Path
    destination: Path
    above: Identity | None = None
    within: str | None = None


def _places(copies: list[tuple[str, Path]], target: Path | None) -> list[_Place]:
    """The places of ``copies`` (``(path, copy)``), each checked before anything is
    replaced (:func:`_a_place_of_its_own`, :func:`_same_kind_at_top`) unless another
    one's copy holds it. A path's destination is its name in the archive (``//srv/`` is
    ``/srv``), below ``target`` when given. Raises TaskError."""
    places = []
    for path, copy in copies:
        rooted = _archived(path)
        places.append(_Place(path, copy, (target / rooted.relative_to("/")) if target else rooted))
    inner = nested([p.destination for p in places])
    outer = [p for number, p in enumerate(places) if number not in inner]
    for number in inner:
        place = places[number]
        place.within = next(
            o.path for o in outer if place.destination.is_relative_to(o.destination)
        )
    for place in places:
        if place.within is None:
            place.above = _a_place_of_its_own(place.destination)
            _same_kind_at_top(place.copy, place.destination)
    return places


def _restore_place(
    task: Task, place: _Place, count: int, source: Path, plan: RestorePlan
) -> Path | None:
    """Copy ``place`` back (``count`` files), a step of ``plan``. Returns where it was
    copied to; None when it was not (a dry run, or another path's copy holds it).
    Raises TaskError."""
    path, copy, destination, above = place.path, place.copy, place.destination, place.above
    if place.within is not None:
        task.log.info("%s is restored with %s", path, place.within)
        return None
    over = ", replacing what is there" if os.path.lexists(destination) else ""
    text = f"restore {path} ({counted(count, 'file')}) to {destination}{over}"
    if not plan.step(task.log, text, destructive=bool(over)):
        return None
    try:
        _copy_parents(copy, destination, source)
        if above is None:
            # a directory made just now is pinned now (a racing owner of the one above
            # it had it missing at the check, and then a symlink to elsewhere)
            above = _pin(destination.parent)
            _still_missing(destination)
        with _times_kept(destination.parent, above):
            _copy_back(task, copy, destination)
    except OSError as exc:  # (a racing owner: words, not an internal error)
        raise TaskError(
            f"cannot restore {printable(destination, 200)}: {exc.strerror or exc}"
        ) from None
    if task.config.get("xattrs", True):  # else the snapshot holds none to compare
        _same_xattrs(copy, destination, above)
    task.log.info("restored %s", destination)
    return destination


def _links_again(
    task: Task, links: Links, restored: list[Path | None], copies: list[Path], plan: RestorePlan
) -> None:
    """Link again the snapshot's hard links between the restored paths
    (:mod:`.relink`); a dry run says how many it would."""
    if not links.again:
        return
    text = f"link {counted(len(links.again), 'name')} again to a file of another restored path"
    if plan.step(task.log, text):
        linked = link_again(task.log, links, restored, copies)
        task.log.info("linked %s again as in the snapshot", counted(linked, "name"))


_OPEN = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
"""How an entry is opened to look at it (a directory with ``O_DIRECTORY`` too)."""


def _a_place_of_its_own(destination: Path) -> Identity | None:
    """The identity of the directory holding ``destination`` (every later walk of it
    refuses another: :class:`.InStep`), or None when it does not exist yet. Raises
    TaskError, before anything is replaced, for a destination that has no name (``/``:
    what it replaces could not be compared or kept), below a symlink another user
    could have made (its owner is not root, or it stands in a directory others may
    write to: root would follow it by name, read what it points at into the kept
    directory and write the snapshot there), or whose directory changed while it was
    checked."""
    if destination == Path(destination.anchor or "/"):
        raise TaskError(
            "restoring / in place is refused: restore below --target DIR and copy what "
            "you need from there"
        )
    link = untrusted_link(destination)
    if link is not None:
        raise TaskError(
            f"{printable(link, 200)} is a symlink another user could have made or "
            f"swapped, above {printable(destination, 200)}: nothing replaced; restore "
            "below --target DIR, or put a directory there"
        )
    try:
        return _pin(destination.parent)
    except FileNotFoundError:
        return None  # made by the restore: pinned once made (restore_paths)


def _scanned(copy: Path, destination: Path, above: Identity | None) -> Replaced:
    """What restoring ``copy`` onto the existing ``destination`` replaces
    (:func:`.before_restore.find_replaced`, within the directory ``above``). Raises
    TaskError, before anything is replaced, when the restore's check found no directory
    holding ``destination`` (``above`` is None), yet it is there now: its owner is
    moving things meanwhile (an outside attack had it appear as a symlink to another
    tree, whose files were read into the kept directory)."""
    if above is None:
        raise _appeared(destination)
    return find_replaced(copy, destination, above)


def _still_missing(destination: Path) -> None:
    """Raises TaskError when ``destination``, missing at the restore's check (so nothing
    of it was compared or kept), is there now that its directories are made."""
    if os.path.lexists(destination):
        raise _appeared(destination)


def _appeared(destination: Path) -> TaskError:
    return TaskError(
        f"{printable(destination, 200)} appeared while the restore checked it (its "
        "directory was missing): nothing of it replaced; stop whoever owns it, or "
        "restore below --target DIR"
    )


def _pin(directory: Path) -> Identity:
    """The identity of ``directory``, reached by descriptors through symlinks only root
    could have made (:func:`.open_trusted_dir`). Raises FileNotFoundError when it is not
    there, TaskError for any other failure."""
    try:
        opened = open_trusted_dir(directory)
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise TaskError(
            f"{printable(directory, 200)} changed while it was checked "
            f"({exc.strerror or exc}): nothing replaced; stop whoever owns it, or restore "
            "below --target DIR"
        ) from None
    here = os.fstat(opened)
    os.close(opened)
    return here.st_dev, here.st_ino


def _same_kind_at_top(copy: Path, destination: Path) -> None:
    """Raises TaskError, before anything is replaced, when the restored path is now of
    another kind than the snapshot's: a symlink where it has a directory (cp would write
    through it into the directory it points at), a file where it has a directory (an
    outside review saw an internal error), a directory where it has a file (cp would
    copy the file into it, over whatever has its name there)."""
    if not os.path.lexists(destination) or _is_dir(copy) == _is_dir(destination):
        return
    if not _is_dir(copy):
        raise TaskError(
            f"{destination} is a directory where the snapshot has a file: nothing replaced "
            "(cp would copy the file into it); move it away and restore again"
        )
    kind = "a symlink" if destination.is_symlink() else "a file"
    why = " (cp would write through it)" if destination.is_symlink() else ""
    raise TaskError(
        f"{destination} is {kind} where the snapshot has a directory: nothing replaced"
        f"{why}; move it away and restore again"
    )


@contextlib.contextmanager
def _times_kept(directory: Path, identity: Identity) -> Iterator[None]:
    """Give ``directory`` (the one holding a restored path, of ``identity``) its times
    back after the block: replacing a file or symlink there, or making the path, is no
    change of the directory the restore was asked for (an rsync -aHAXn oracle saw its
    mtime moved). Raises OSError when it cannot be opened."""
    fd = open_trusted_dir(directory)
    try:
        before = os.fstat(fd)
        yield
        moved = os.fstat(fd).st_mtime_ns != before.st_mtime_ns
        if moved and (before.st_dev, before.st_ino) == identity:
            os.utime(fd, ns=(before.st_atime_ns, before.st_mtime_ns))
    finally:
        os.close(fd)


def _copy_back(task: Task, copy: Path, destination: Path) -> None:
    """``cp`` the snapshot's ``copy`` onto ``destination``."""
    if _is_dir(copy):
        destination.mkdir(exist_ok=True)
        task.run(["cp", *CP, "--", f"{copy}/.", f"{destination}/"], timeout=None)
        shutil.copystat(copy, destination)
    else:
        # -T: a live symlink to a directory at ``destination`` is replaced, not entered
        task.run(["cp", *CP, "-T", "--", str(copy), str(destination)], timeout=None)


KEEP_XATTRS = ("security.selinux",)
"""Extended attributes a restore never removes from a live entry, though the snapshot's
copy lacks them: SELinux's label belongs to the live system's policy (the kernel gives
every new file one), not to the data; removing it would leave the file unlabelled, and
unreadable to a confined service under an enforcing policy."""
MAX_XATTR_PROBLEMS = 5
"""Failed removals named in the error (the rest are counted)."""


def _same_xattrs(copy: Path, destination: Path, above: Identity | None = None) -> None:
    """Every regular file and directory of ``copy`` that is now at ``destination`` carries
    exactly the copy's extended attributes: ``cp -a`` adds the snapshot's and never
    removes others, so the names the copy lacks (POSIX ACLs' ``system.posix_acl_*`` among
    them) are removed. Both trees are walked by file descriptors (:class:`.InStep`: each
    entry opened with ``O_NOFOLLOW`` below its opened parent, two descriptors however
    deep): a directory swapped for a symlink after the copy (the tree's owner may do
    that) leads nowhere outside it. Symlinks, FIFOs and entries of another kind than the
    copy's are left as they are; so is an entry whose copy cannot list attributes (a
    file system without them: nothing to compare). Raises TaskError naming each removal
    that failed (the attribute is still there), or when the walk cannot go on."""
    problems: list[str] = []
    try:
        with contextlib.closing(InStep(copy, destination, above)) as walk:
            for spot in walk:
                _match_spot(walk, spot, os.path.join(destination, *spot.names), problems)
    except OSError as exc:
        raise TaskError(
            f"{destination}: cannot walk it to compare attributes: {exc.strerror or exc}"
        ) from None
    if problems:
        more = len(problems) - MAX_XATTR_PROBLEMS
        listed = "; ".join(problems[:MAX_XATTR_PROBLEMS]) + (
            f"; and {more} more" if more > 0 else ""
        )
        raise TaskError(
            f"{destination} is restored but has extended attributes the snapshot lacks: {listed}"
        )


def _match_spot(walk: InStep, spot: Spot, shown: str, problems: list[str]) -> None:
    """Match the attributes of the live entry at ``spot`` (``shown``) to the copy's, and
    walk on into it when it is a directory; an OSError at the entry is noted in
    ``problems``. Raises OSError when the walk cannot go on."""
    try:
        opened = _open_entry(spot)
    except OSError as exc:
        problems.append(f"{shown}: {exc.strerror or exc}")
        return
    if opened is None:
        return
    live, theirs, directory = opened
    try:
        matched = _matched(live, theirs, shown, problems)
    finally:
        os.close(theirs)
    if matched and directory:
        walk.enter(spot, live)
    else:
        os.close(live)


def _is_dir(path: Path) -> bool:
    return path.is_dir() and not path.is_symlink()


def _open_entry(spot: Spot) -> tuple[int, int, bool] | None:
    """The live entry and the copy's at ``spot``, both opened without following a
    symlink, and whether they are directories, when the live one is a regular file or a
    directory as the copy's is; else None. Raises OSError."""
    copied = os.stat(spot.copy_name, dir_fd=spot.copy_dir, follow_symlinks=False)
    wanted = stat.S_ISDIR if stat.S_ISDIR(copied.st_mode) else stat.S_ISREG
    if not wanted(copied.st_mode):
        return None
    try:
        found = os.stat(spot.name, dir_fd=spot.live_dir, follow_symlinks=False)
    except FileNotFoundError:
        return None
    if not wanted(found.st_mode):
        return None  # a symlink, a FIFO, another kind: left as it is
    flags = _OPEN | (os.O_DIRECTORY if wanted is stat.S_ISDIR else 0)
    fd = os.open(spot.name, flags, dir_fd=spot.live_dir)
    now = os.fstat(fd)
    if (now.st_dev, now.st_ino) != (found.st_dev, found.st_ino) or not wanted(now.st_mode):
        os.close(fd)  # swapped between the look and the open
        return None
    try:
        return fd, os.open(spot.copy_name, flags, dir_fd=spot.copy_dir), wanted is stat.S_ISDIR
    except OSError:
        os.close(fd)
        raise


def _matched(fd: int, theirs: int, shown: str, problems: list[str]) -> bool:
    """:func:`_match_xattrs`, an OSError of it noted in ``problems`` (False)."""
    try:
        _match_xattrs(fd, theirs, shown, problems)
        return True
    except OSError as exc:
        problems.append(f"{shown}: {exc.strerror or exc}")
        return False


def _match_xattrs(fd: int, theirs: int, shown: str, problems: list[str]) -> None:
    """Remove from the open live entry ``fd`` the attributes the open copy ``theirs``
    lacks."""
    try:
        wanted = set(os.listxattr(theirs))
    except OSError as exc:
        if exc.errno in (errno.ENOTSUP, errno.EOPNOTSUPP):
            return  # the copy cannot hold them: nothing to compare against
        raise
    try:
        extra = set(os.listxattr(fd)) - wanted - set(KEEP_XATTRS)
    except OSError as exc:
        if exc.errno in (errno.ENOTSUP, errno.EOPNOTSUPP):
            return
        raise
    for name in sorted(extra):
        try:
            os.removexattr(fd, name)
        except OSError as exc:
            problems.append(f"{shown}: cannot remove extended attribute {name}: {exc.strerror}")
