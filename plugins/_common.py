"""Helpers the database plugins share: aliases, temporary credential files, options."""

from __future__ import annotations

import hashlib
import os
import shlex
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from ..common import scratch
from ..common.errors import CommandError
from ..common.units import parse_duration
from .task import ProbeResult, RestorePlan, Task, TaskError, TaskPartial


def first(config: dict, *keys: str, default=None):
    """The value of the first key present (backup-suite spelled some keys differently)."""
    for key in keys:
        if config.get(key) is not None:
            return config[key]
    return default


def private_file(task: Task, name: str, content: str, reader: int | None = None) -> Path:
    """A file only this process can read (or the user ``reader`` too: a uid), in the
    task's private scratch directory ``pullback-cred-PID-XXXXXXXX``, removed with the
    task by :func:`forget_private` (or by the next command, when this one is killed).
    Returns its path. Raises OSError.

    Used for credentials handed to a tool by file (never on its command line). For a
    ``reader`` (the tools run as ``run_as:``) the file is that user's, in a directory
    of its own (0700) in the task's: this one stays root's (so that the next command
    knows it for its own), searchable by others (0711) but never listable.
    """
    directory = task.state.get("_private")
    if directory is None:
        directory = str(scratch.make("cred"))
        task.state["_private"] = directory
    folder = Path(directory)
    if reader is not None:
        folder = folder / f"uid-{reader}"
        if not folder.is_dir():
            folder.mkdir(mode=0o700)
            os.chown(folder, reader, -1)
            os.chmod(directory, 0o711)  # noqa: S103 - searchable, never listable
    path = folder / name
    # a new file, always: the reader's directory is that user's, who may have left a
    # link there in the name of the last one (root would have written through it)
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as handle:
        if reader is not None:
            os.fchown(handle.fileno(), reader, -1)
        handle.write(content)
    return path


def forget_private(task: Task) -> None:
    """Remove the task's credential files (:func:`private_file`), if it has any."""
    directory = task.state.pop("_private", None)
    if directory:
        scratch.remove(directory)


def timeout(task: Task) -> float:
    return parse_duration(task.config["timeout"])


def extra_options(task: Task, key: str = "dump_options") -> list[str]:
    """The section's ``key`` (e.g. ``dump_options``) as an argument list, never through a
    shell: see :func:`split_options`."""
    return split_options(task.config.get(key) or "")


def split_options(text: str) -> list[str]:
    """``text`` split as a shell would split words (quotes group, nothing is expanded);
    with an unbalanced quote, split at whitespace as backup-suite's ``read -a`` did, so
    that a line backup-suite ran still runs. Returns the arguments."""
    try:
        return shlex.split(text)
    except ValueError:
        return text.split()


def renamed(name: str, word: str, stamp: str, limit: int = 63) -> str:
    """``shop_restored_20261130T120000Z``: a copy's name, the base shortened so that the
    whole fits ``limit`` bytes (PostgreSQL's identifiers hold 63, MariaDB's 64), and then
    marked with a short hash of the whole name, so that two names never share a copy."""
    suffix = f"_{word}_{stamp}"
    if len(name.encode()) + len(suffix) <= limit:
        return name + suffix
    # shortened: a few hex digits of the whole name keep two long names apart
    mark = "_" + hashlib.sha256(name.encode()).hexdigest()[:6]
    base = name.encode()[: limit - len(suffix) - len(mark)].decode("utf-8", "ignore")
    return base + mark + suffix


def tool_said(exc: CommandError, lines: int = 3) -> str:
    """The failing tool's own last lines, for an error message (never empty): the lines
    that say "error" when there are any, else the last ones."""
    said = [line.strip() for line in exc.tail if line.strip(" -*/")]
    errors = [line for line in said if "error" in line.lower()]
    chosen = (errors or said)[-lines:]
    return " / ".join(chosen) if chosen else exc.reason


@contextmanager
def probing(task: Task, explain: Callable[[CommandError, str], Exception]) -> Iterator[ProbeResult]:
    """A database probe's result. What the block raises becomes one of its problems (a
    tool's failure through ``explain``, as "cannot log in"); the task's credential files
    are removed afterwards."""
    result = ProbeResult()
    try:
        yield result
    except CommandError as exc:
        result.problems.append(str(explain(exc, "cannot log in")))
    except TaskError as exc:
        result.problems.append(str(exc))
    finally:
        forget_private(task)


def absent(names: Iterable[str], existing: Iterable[str]) -> list[str]:
    """One problem per configured database the server does not have."""
    have = set(existing)
    return [f"database {name!r} does not exist" for name in names if name not in have]


class DatabaseRestore(ABC):
    """The shape of every database task's restore: a preflight that changes nothing, its
    verdict as the plan's first step, then each dump in turn (``restore_database``).

    A subclass names its dump files (``suffix``) and gives :meth:`preflight` and
    :meth:`restore_database`; :meth:`before_databases` runs once between the two (the
    roles of PostgreSQL's ``globals.sql``)."""

    suffix = ""

    def __init__(self, task: Task, source: Path, plan: RestorePlan):
        self.task = task
        self.plan = plan
        self.dumps = sorted(source.glob(f"*{self.suffix}"))
        if not self.dumps:
            raise TaskError(f"no *{self.suffix} files in {source}")

    def run(self) -> None:
        """Raises TaskError: the preflight's problems (nothing changed), or a step's."""
        problems = self.preflight()
        verdict = "ok" if not problems else "FAILED: " + "; ".join(problems)
        self.plan.step(self.task.log, f"preflight: {verdict}")
        if problems:
            raise TaskError(f"preflight failed, nothing was changed: {'; '.join(problems)}")
        self.before_databases()
        for dump in self.dumps:
            self.restore_database(dump)

    @abstractmethod
    def preflight(self) -> list[str]:
        """What would stop the restore, found before anything is changed."""

    def before_databases(self) -> None:  # noqa: B027 - optional, nothing by default
        """What comes once before the databases (nothing by default)."""

    @abstractmethod
    def restore_database(self, dump: Path) -> None:
        """Restore one dump as the plan says (beside the live database, or in its place)."""


def each_database(task: Task, names: list[str], dump_one: Callable[[str], None]) -> None:
    """``dump_one(name)`` for each of ``names``. One database that cannot be dumped (gone
    since the list was read, a name the server refuses, a lock held, a permission
    missing) costs only itself: the others are dumped and archived (an outside attack:
    one tenant's database stopped the backup of every database of the server), and the
    task is failed all the same (TaskPartial, each failure named), so that the run, the
    mail, the pings and the server say a database is missing (helper-138: as warnings
    alone, nothing alerted). Raises TaskError, the first failure's words, when no
    database could be dumped, TaskPartial when some could not."""
    failed: list[str] = []
    for name in names:
        try:
            dump_one(name)
        except TaskError as exc:
            failed.append(str(exc))
    if failed and len(failed) == len(names):
        more = f" (and {len(failed) - 1} more databases failed)" if len(failed) > 1 else ""
        raise TaskError(failed[0] + more)
    if failed:
        for said in failed:  # (each named in the log and the sidecar)
            task.warn(f"{said}; it is not in this archive")
        dumped = len(names) - len(failed)
        raise TaskPartial(
            f"{len(failed)} of {len(names)} databases could not be dumped ({failed[0]}"
            f"{', …' if len(failed) > 1 else ''}); the other {dumped} "
            f"{'databases are' if dumped != 1 else 'database is'} in the archive"
        )
