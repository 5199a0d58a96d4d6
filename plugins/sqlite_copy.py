"""One SQLite database copied by the online backup API, in a process of its own.

``python3 -m pullback.plugins.sqlite_copy SOURCE TARGET BUSY_TIMEOUT``: the ``sqlite``
task's dump runs this through the task's runner, so its ``timeout``, the run's
``run_timeout`` and SIGTERM end it wherever it is. SQLite opens the database's
companions (``-journal``, ``-wal``, ``-shm``) by name, in a directory the application's
user owns, in C code no signal handler interrupts: a FIFO planted as ``app.db-journal``
held a run (and the client's lock) for ever (an outside attack). Before SQLite opens
anything here, the companions must be regular files (or absent), and the copy may not
need more than the database's data, by its holes (a sparse file of 8 KiB whose header
says nothing of its size was written out whole, 1 GiB for 1 GiB declared).

Exit 0: copied. Exit 1: not copied, one line on standard error saying why.
"""

from __future__ import annotations

import os
import sqlite3
import stat
import sys
import urllib.parse

from ..common.archive import sparse

COMPANIONS = ("-journal", "-wal", "-shm")
SLACK = 64 << 20
"""What a copy may need beyond the data the database's files hold (SQLite's own pages
it has not written yet, a file system's rounding)."""


class NotCopied(Exception):
    """Why the database is not copied (one line, for the administrator)."""


def uri(path: str | os.PathLike) -> str:
    """A read-only URI of the database ``path``, every character that a URI gives a
    meaning (``#``, ``?``, ``%``) quoted: unquoted, ``#`` ended the path, and a database
    named ``notes#2.db`` was read as a new, empty ``notes`` (an outside attack)."""
    return f"file:{urllib.parse.quote(str(path), safe='/')}?mode=ro"


def check_companions(source: str) -> int:
    """Raise NotCopied when a companion of ``source`` is there and is not a regular
    file (a FIFO, a device, a symlink, a directory: SQLite would open it and may wait
    for ever). Returns the bytes of the ``-wal`` there (0 without one)."""
    wal = 0
    for suffix in COMPANIONS:
        name = f"{source}{suffix}"
        try:
            found = os.lstat(name)
        except FileNotFoundError:
            continue
        if not stat.S_ISREG(found.st_mode):
            raise NotCopied(
                f"{name} is not a regular file (a FIFO, a symlink or a device where SQLite "
                "keeps its journal): refused, it could hold the backup for ever; remove it"
            )
        if suffix == "-wal":
            wal = found.st_size
    return wal


def data_bytes(path: str) -> int:
    """The bytes of ``path`` that hold data: its holes left out (:func:`.sparse.data_map`;
    all of it where the file system cannot tell holes)."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        size = os.fstat(fd).st_size
        return size - sparse.data_map(fd, size, most=0)[1]
    finally:
        os.close(fd)


def hole_problem(source: str, db: sqlite3.Connection, wal: int) -> str | None:
    """Why copying the database open as ``db`` would write far more than its files hold
    (a sparse file whose header does not bound its size), or None."""
    size = (
        db.execute("PRAGMA page_count").fetchone()[0] * db.execute("PRAGMA page_size").fetchone()[0]
    )
    held = data_bytes(source) + wal
    if size <= held + SLACK:
        return None
    return (
        f"{source} would copy as {size} bytes but its files hold {held} bytes of data (the "
        "rest is holes, which a database SQLite wrote does not have): refused"
    )


def copy(source: str, target: str, busy_timeout: int) -> None:
    """Copy ``source`` to ``target`` in one step (one consistent read transaction).
    Raises NotCopied, sqlite3.Error."""
    wal = check_companions(source)
    src = sqlite3.connect(uri(source), uri=True, timeout=busy_timeout)
    try:
        problem = hole_problem(source, src, wal)
        if problem:
            raise NotCopied(problem)
        backup_into(src, target)
    finally:
        src.close()


def backup_into(src: sqlite3.Connection, target: str | os.PathLike) -> None:
    """Copy the open database ``src`` into the new file ``target``, all pages in one
    step (one consistent read transaction). Raises sqlite3.Error."""
    dst = sqlite3.connect(target)
    try:
        with dst:
            src.backup(dst)
    finally:
        dst.close()


def explain(source: str, exc: sqlite3.Error) -> str:
    """``exc`` in words, a hot journal named (SQLite says only "attempt to write a
    readonly database": the interrupted transaction it would roll back first)."""
    text = str(exc)
    if "readonly" in text and os.path.lexists(f"{source}-journal"):
        return (
            f"{source}-journal is a hot journal (a transaction was interrupted) that a "
            "read-only copy cannot roll back: open the database once with the application "
            f"(or `sqlite3 {source} 'PRAGMA quick_check'`) and run the backup again"
        )
    return text


def main(argv: list[str]) -> int:
    source, target, busy = argv[0], argv[1], int(argv[2])
    try:
        copy(source, target, busy)
    except NotCopied as exc:
        print(exc, file=sys.stderr)
        return 1
    except sqlite3.Error as exc:
        print(explain(source, exc), file=sys.stderr)
        return 1
    except OSError as exc:  # (an I/O error reading it: words, not a traceback)
        print(f"cannot read {source}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
