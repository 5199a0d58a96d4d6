"""The restore drill's proof of databases: every dump of the drilled snapshot is loaded
into a throwaway engine the drill starts itself, and its tables and rows are counted.

A checksum proves a dump arrived as it was written; only loading it proves it can be
restored. For the PostgreSQL dumps of a snapshot the drill runs ``initdb`` and ``pg_ctl``,
for the MariaDB dumps ``mariadb-install-db`` and ``mariadbd``, each in a private directory
below ``maintenance.database_proof_dir`` with no network (a socket in that directory);
every SQLite copy gets ``PRAGMA integrity_check``. The engines come from the server's own
packages and run as their own users (``postgres``, ``mysql``); one that is not installed
makes the proof a warning ("dump not proven: install postgresql on the server"), not a
failed drill. The engines are stopped and their directories removed afterwards, whatever
happened.

A dump is written by the client, so it is hostile until proven otherwise: it is loaded by
an unprivileged role of the throwaway engine made for it alone (no superuser, no
``FILE``, no ``SUPER``, no right to act as another definer: ``DEFINER=`` clauses are taken
out as the dump is fed), so its SQL can neither run programs nor touch the server's
files, nor change what loads the next dump. MariaDB's client runs in ``--sandbox`` mode
and as ``mysql``; its server with ``--secure-file-priv`` and ``--tmpdir`` in the engine's
directory and ``--skip-symbolic-links`` (``DATA DIRECTORY=`` is ignored). A load is
stopped past ``database_proof_timeout``, when the engine's directory grows past the
host's ``max_unpacked_size``, or when its filesystem has under 1 GiB left; each engine
process may use at most :data:`MEMORY_LIMIT` of address space. What the engines say is
escaped and cut before it is reported.
"""

from __future__ import annotations

import contextlib
import fnmatch
import glob
import os
import pwd
import re
import shutil
import sqlite3
import subprocess
import tempfile
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import IO

from ..common.archive.dumps import SUFFIXES, database_of
from ..common.errors import CommandError, CommandTimeout
from ..common.fsutil import free_bytes
from ..common.log import Log
from ..common.runner import Runner, RunningCommand
from ..common.signals import refuse_if_stopping
from ..common.text import counted, printable
from ..common.trees import remove_tree, walk
from ..common.units import human_duration, human_size

MIN_FREE = 1 << 30
"""A load stops when the engine's filesystem has less than this left."""
MEMORY_LIMIT = 4 << 30
"""The address space each engine process may use (``prlimit --as``): a dump that asks
for more memory gets an error, not the server's memory."""
_WATCH_EVERY = 2.0
_OUTER_EVERY = 0.2
"""How often the disk guard passes on the host's cancel (a stop, the drill's deadline)."""
_STARTUP = 180.0
_SAID = 200
"""At most this many characters of an engine's own words per line of a proof's problem."""
PROOF_ROLE = "pullback_proof"
"""The stem of the roles that load the dumps: a fresh one per dump (``pullback_proof_1``,
...), dropped after it, so one dump cannot change the role that loads the next."""
_PG_COUNT = (
    "SELECT count(*), coalesce(sum((xpath('/row/c/text()', query_to_xml(format("
    "'select count(*) as c from %I.%I', table_schema, table_name), false, true, '')))[1]"
    "::text::bigint), 0) FROM information_schema.tables WHERE table_type = 'BASE TABLE' "
    "AND table_schema NOT IN ('pg_catalog', 'information_schema')"
)
_MARIADB_COUNT = """
SET SESSION group_concat_max_len = 4294967295;
SELECT COUNT(*), CONCAT('SELECT COALESCE(SUM(c), 0) FROM (SELECT 0 AS c',
  COALESCE(GROUP_CONCAT(CONCAT(' UNION ALL SELECT COUNT(*) FROM `',
    REPLACE(table_schema, '`', '``'), '`.`', REPLACE(table_name, '`', '``'), '`')
    SEPARATOR ''), ''), ') AS counted')
  INTO @tables, @query
  FROM information_schema.tables WHERE table_type = 'BASE TABLE' AND table_schema = @schema;
PREPARE counting FROM @query;
SELECT @tables;
EXECUTE counting;
"""
_NOT_ALLOWED = (
    "must be superuser",
    "permission denied",
    "must be owner",
    "access denied;",
    "access denied for user",
)
"""What an engine says when a dump needs more than the proof's unprivileged role. (Not
its login failing: that fresh role's login is the drill's own, so that is a failure.)"""
_LOGIN = "(using password"


class ProofState(StrEnum):
    PROVEN = "proven"
    UNPROVEN = "unproven"
    """Could not be tried here (engine not installed, the dump needs superuser rights):
    a warning, not a failed drill."""
    FAILED = "failed"


@dataclass
class ProofSettings:
    """How a drill proves databases (from ``maintenance`` and the host's limits)."""

    directory: Path
    timeout: float
    max_size: int
    cancel: threading.Event | None = None
    """Set at the drill's deadline: the engine's commands stop."""


@dataclass
class DatabaseProof:
    """What loading one dump showed."""

    service: str
    engine: str
    database: str
    state: ProofState = ProofState.PROVEN
    tables: int = 0
    rows: int = 0
    problem: str = ""
    """Why it is not proven ("" when it is)."""

    def fail(self, problem: str, state: ProofState = ProofState.FAILED) -> None:
        self.state, self.problem = state, problem

    @property
    def summary(self) -> str:
        what = f"{printable(self.service, 80)}/{printable(self.database, 80)} ({self.engine})"
        if self.problem:
            return f"{what}: {self.problem}"
        rows = f"{self.rows:,} row{'' if self.rows == 1 else 's'}"
        return f"{what}: {counted(self.tables, 'table')}, {rows}"


def _user(name: str) -> pwd.struct_passwd | None:
    try:
        return pwd.getpwnam(name)
    except KeyError:
        return None


def _as(user: str, argv: list) -> list[str]:
    """``argv`` run as ``user`` (its groups too) that may never gain a privilege back.
    ``setpriv``, not ``runuser``: no PAM session, so no journal lines per command."""
    ids = [f"--reuid={user}", f"--regid={user}", "--init-groups", "--no-new-privs"]
    return ["setpriv", *ids, "--", *map(str, argv)]


def _bounded(argv: list) -> list[str]:
    """``argv`` with at most :data:`MEMORY_LIMIT` of address space, for it and every
    process it starts (an engine's server)."""
    return ["prlimit", f"--as={MEMORY_LIMIT}", "--", *map(str, argv)]


def _said(exc: CommandError) -> str:
    """The engine's own last words about a failure, escaped and cut."""
    lines = [printable(line.strip(), _SAID) for line in exc.tail if line.strip()]
    errors = [line for line in lines if "error" in line.lower()]
    return " / ".join((errors or lines)[-2:]) or exc.reason


class _Engine(ABC):
    """A throwaway database engine in ``work``, run by ``runner``."""

    engine = ""
    account = ""
    package = ""

    def __init__(self, runner: Runner, work: Path):
        self.runner, self.work = runner, work
        self.user = _user(self.account)

    @property
    def missing(self) -> str:
        """Why this engine cannot run here ("" when it can)."""
        return "" if self.user else f"dump not proven: install {self.package} on the server"

    def run(self, argv: list, **options) -> None:
        """Run a command of the engine's in its directory, with it as home (its user may
        enter neither ours nor root's)."""
        options.setdefault("timeout", _STARTUP)
        options["env"] = {"HOME": str(self.work), **options.get("env", {})}
        self.runner.run(argv, cwd=self.work, level=10, **options)

    @abstractmethod
    def start(self) -> None:
        """Make and start the engine. Raises CommandError."""

    @abstractmethod
    def load(self, dump: Path, database: str, timeout: float) -> tuple[int, int]:
        """Load ``dump`` into ``database``; return its tables and rows. Raises CommandError."""

    @abstractmethod
    def stop(self) -> None:
        """Stop the engine (a failure to stop is the caller's warning)."""


class _Postgres(_Engine):
    engine, account, package = "postgresql", "postgres", "postgresql"

    def __init__(self, runner: Runner, work: Path):
        super().__init__(runner, work)
        found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=_version)
        self.bin = Path(found[-1]).parent if found else None
        self.data, self.socket = work / "data", work / "socket"

    @property
    def missing(self) -> str:
        if self.bin is None:
            return f"dump not proven: install {self.package} on the server"
        return super().missing

    def _tool(self, *argv: object) -> list[str]:
        """``argv`` run as ``postgres``, its program from the newest installed version."""
        assert self.bin is not None
        return _as(self.account, [self.bin / str(argv[0]), *argv[1:]])

    def start(self) -> None:
        self.socket.mkdir(mode=0o700)
        shutil.chown(self.socket, self.account)
        initdb = ["initdb", "-D", self.data, "-U", "postgres", "--auth=trust"]
        self.run(self._tool(*initdb, "-E", "UTF8", "--locale=C.UTF-8"), stdout=os.devnull)
        options = (
            f"-k {self.socket} -c listen_addresses= -c fsync=off -c full_page_writes=off "
            "-c jit=off -p 5432"
        )
        log = self.work / "postgresql.log"  # not our pipe: the server outlives pg_ctl
        try:
            self.run(
                _bounded(
                    self._tool("pg_ctl", "-D", self.data, "-l", log, "-o", options, "-w", "start")
                ),
                stdout=os.devnull,
            )
        except CommandError as exc:
            exc.tail[:] = _last_lines(log) or exc.tail
            raise

    def _psql(self, sql: str, role: str = "postgres", database: str = "postgres", **options) -> str:
        out = self.work / "out"
        psql = ["psql", "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-h", self.socket]
        self.run(
            self._tool(*psql, "-U", role, "-d", database, "-c", sql),
            stdout=out,
            env={"PGOPTIONS": "-c search_path=pg_catalog"},
            **options,
        )
        return out.read_text().strip()

    def load(self, dump: Path, database: str, timeout: float) -> tuple[int, int]:
        role = f"{PROOF_ROLE}_{database}"
        self._psql(f"CREATE ROLE {role} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE")
        self._psql(f'CREATE DATABASE "{database}" OWNER {role}')
        try:
            restore = ["pg_restore", "-h", self.socket, "-U", role, "--exit-on-error"]
            self.run(
                self._tool(*restore, "--no-owner", "--no-privileges", "-d", database),
                stdin=dump,
                timeout=timeout,
            )
            counted = self._psql(_PG_COUNT, role, database, timeout=timeout)
            tables, rows = counted.split("|")
            return int(tables), int(rows)
        finally:
            with contextlib.suppress(CommandError):
                self._psql(f'DROP DATABASE "{database}" WITH (FORCE)')
                self._psql(f"DROP ROLE {role}")

    def stop(self) -> None:
        if self.bin is None or not (self.data / "postmaster.pid").exists():
            return
        with contextlib.suppress(CommandError):
            stop = self._tool("pg_ctl", "-D", self.data, "-m", "immediate", "-w", "stop")
            self.run(stop, stdout=os.devnull, cleanup=True)  # after a stop by hand too


def _last_lines(path: Path, count: int = 3) -> list[str]:
    """The last lines of an engine's log file (none when there is no such file)."""
    try:
        return path.read_text(errors="replace").splitlines()[-count:]
    except OSError:
        return []


def _version(path: str) -> tuple[int, ...]:
    """``/usr/lib/postgresql/15/bin/initdb`` → (15,): the newest major version wins."""
    part = Path(path).parts[-3]
    return tuple(int(p) for p in part.split(".") if p.isdigit())


class _MariaDB(_Engine):
    engine, account, package = "mariadb", "mysql", "mariadb-server"

    def __init__(self, runner: Runner, work: Path):
        super().__init__(runner, work)
        self.server = shutil.which("mariadbd")
        self.install = shutil.which("mariadb-install-db")
        self.data, self.socket = work / "data", work / "mysqld.sock"
        self.process: RunningCommand | None = None
        self.loads = 0

    @property
    def missing(self) -> str:
        if not (self.server and self.install and self.user and shutil.which("mariadb")):
            return f"dump not proven: install {self.package} on the server"
        if not _has_sandbox():
            return "dump not proven: the mariadb client here has no --sandbox (10.11.8 or later)"
        return ""

    def start(self) -> None:
        assert self.server and self.install
        files = self.work / "files"  # secure_file_priv: the only directory SQL may touch
        files.mkdir(mode=0o700)
        shutil.chown(files, self.account)
        install = [self.install, "--no-defaults", f"--datadir={self.data}"]
        self.run(
            [
                *install,
                f"--user={self.account}",
                "--auth-root-authentication-method=socket",
                "--skip-test-db",
            ],
            stdout=os.devnull,
        )
        self.process = self.runner.start(
            _bounded(
                [
                    self.server,
                    "--no-defaults",
                    f"--datadir={self.data}",
                    f"--socket={self.socket}",
                    "--skip-networking",
                    f"--user={self.account}",
                    f"--pid-file={self.work / 'pid'}",
                    f"--secure-file-priv={files}",
                    "--local-infile=0",
                    "--skip-log-bin",
                    "--innodb-buffer-pool-size=64M",
                    f"--log-error={self.work / 'error.log'}",
                    f"--tmpdir={files}",  # temporary tables count against the size limit
                    "--skip-symbolic-links",  # DATA/INDEX DIRECTORY= are ignored
                ]
            ),
            stdout=os.devnull,
            level=10,
        )
        deadline = time.monotonic() + _STARTUP
        while not self._ready():
            if time.monotonic() > deadline or not self.process.alive():
                tail = _last_lines(self.work / "error.log")
                raise CommandError("mariadbd", None, tail, "did not start")
            time.sleep(0.2)

    def _client(self, user: str, *extra: str) -> list[str]:
        """The mariadb client as ``user``: root (by the socket, as root), or a proof role
        (as ``mysql``, in sandbox mode)."""
        argv = ["mariadb", "--no-defaults", f"--socket={self.socket}", "--local-infile=0"]
        if user == "root":
            return [*argv, "-uroot", *extra]
        return _as(self.account, [*argv, "--sandbox", f"-u{user}", *extra])

    def _ready(self) -> bool:
        try:
            self._root("SELECT 1")
        except CommandError:
            return False
        return True

    def _root(self, sql: str) -> str:
        out = self.work / "out"
        self.run(self._client("root", "--batch", "--skip-column-names", "-e", sql), stdout=out)
        return out.read_text().strip()

    def load(self, dump: Path, database: str, timeout: float) -> tuple[int, int]:
        # the dump creates and uses its database itself (mariadb-dump --databases); the
        # proof role may touch that database and nothing else
        if not database.isprintable() or not 0 < len(database) <= 64:
            raise ValueError("its database name is not one MariaDB allows")
        ident = database.replace("`", "``")
        pattern = ident.replace("\\", "\\\\").replace("_", "\\_").replace("%", "\\%")
        self.loads += 1
        role = f"{PROOF_ROLE}_{self.loads}"
        self._root(f"CREATE USER {role}@localhost")
        self._root(f"GRANT ALL PRIVILEGES ON `{pattern}`.* TO {role}@localhost")
        try:
            with _without_definers(dump) as stdin:
                self.run(self._client(role), stdin=stdin, timeout=timeout)
            # the counting query is built in SQL, so no table name is ever parsed here
            literal = "'" + database.replace("\\", "\\\\").replace("'", "''") + "'"
            tables, rows = self._root(_MARIADB_COUNT.replace("@schema", literal)).split()
            return int(tables), int(rows)
        finally:
            with contextlib.suppress(CommandError):
                self._root(f"DROP DATABASE IF EXISTS `{ident}`")
                self._root(f"DROP USER {role}@localhost")

    def stop(self) -> None:
        """Shut the server down through its socket (it runs as ``mysql``: a signal from us
        needs CAP_KILL); a server that does not go within a minute is killed."""
        if self.process is None:
            return
        with contextlib.suppress(CommandError):
            admin = ["mariadb-admin", "--no-defaults", f"--socket={self.socket}", "-uroot"]
            self.run([*admin, "shutdown"], stdout=os.devnull, timeout=60, cleanup=True)
        deadline = time.monotonic() + 60
        while self.process.alive() and time.monotonic() < deadline:
            time.sleep(0.2)
        if self.process.alive():
            self.process.stop(grace=10)
        self.process = None


_QUOTED = rb"`(?:[^`]|``)*`|'(?:[^']|'')*'"
_DEFINER = re.compile(
    rb"DEFINER\s*=\s*(?:" + _QUOTED + rb"|[^\s@*]+)(?:\s*@\s*(?:" + _QUOTED + rb"|[^\s*]+))?",
    re.I,
)
"""A view's, trigger's or routine's ``DEFINER=`user`@`host```, as mariadb-dump writes it."""


@contextlib.contextmanager
def _without_definers(dump: Path) -> Iterator[IO[bytes]]:
    """The dump as a pipe, its ``DEFINER=`` clauses taken out: views, triggers and
    routines then belong to the proof role, which therefore needs no right to act as
    another user (a dump naming ``root`` as a routine's definer would otherwise run it as
    root). A clause written so that this misses it fails the load for lack of that right."""
    read_end, write_end = os.pipe2(os.O_CLOEXEC)

    def feed() -> None:
        try:
            with open(dump, "rb") as source, os.fdopen(write_end, "wb") as pipe:
                for piece in _stripped(source):
                    pipe.write(piece)
        except BrokenPipeError:
            pass  # the client stopped; its exit status says why

    feeder = threading.Thread(target=feed, name="proof-feed", daemon=True)
    feeder.start()
    try:
        with os.fdopen(read_end, "rb") as stdin:
            yield stdin
    finally:
        feeder.join()


_CHUNK = 1 << 20
_KEEP = 1024
"""Bytes held back at the end of a chunk: a clause cut by the chunk's end is seen whole
with the next one (a real clause is far shorter; a longer one is left in and fails)."""


def _stripped(source: IO[bytes]) -> Iterator[bytes]:
    """``source`` in pieces of about a megabyte, DEFINER clauses taken out; memory stays
    bounded however long a line of the dump is. A piece ends at a line's end where it can
    (mariadb-dump writes a clause on one line), else :data:`_KEEP` bytes before the
    chunk's end, which a real clause never crosses."""
    carry = b""
    while chunk := source.read(_CHUNK):
        window = carry + chunk
        cut = window.rfind(b"\n") + 1 or max(0, len(window) - _KEEP)
        piece, carry = window[:cut], window[cut:]
        if b"DEFINER" in piece or b"definer" in piece:
            piece = _DEFINER.sub(b"", piece)
        yield piece
    if b"DEFINER" in carry or b"definer" in carry:
        carry = _DEFINER.sub(b"", carry)
    yield carry


def _has_sandbox() -> bool:
    """Whether the mariadb client can refuse a dump's shell and file commands."""
    result = subprocess.run(["mariadb", "--help"], capture_output=True, text=True, check=False)
    return "--sandbox" in result.stdout


ENGINES: tuple[type[_Engine], ...] = (_Postgres, _MariaDB)


def _prove_sqlite(service: str, path: Path, timeout: float) -> DatabaseProof:
    """``PRAGMA integrity_check`` and a count of rows, read-only and with a deadline; the
    file's schema is not trusted (no functions run from views or triggers)."""
    proof = DatabaseProof(service, "sqlite", path.name)
    deadline = time.monotonic() + timeout
    try:
        # the name is the client's: quoted, so '?', '#' and '%' in it are only a name
        db = sqlite3.connect(f"{path.absolute().as_uri()}?mode=ro&immutable=1", uri=True)
        try:
            db.set_progress_handler(lambda: time.monotonic() > deadline, 10_000)
            db.execute("PRAGMA trusted_schema = OFF")
            result = [str(r[0]) for r in db.execute("PRAGMA integrity_check(5)")]
            names = [
                r[0]
                for r in db.execute(
                    "SELECT name FROM sqlite_master WHERE type = 'table' "
                    "AND name NOT LIKE 'sqlite_%' AND sql NOT LIKE 'CREATE VIRTUAL%'"
                )
            ]
            quoted = (n.replace('"', '""') for n in names)
            proof.tables = len(names)
            proof.rows = sum(
                db.execute(f'SELECT count(*) FROM "{n}"').fetchone()[0]  # noqa: S608
                for n in quoted
            )
        finally:
            db.close()
    except sqlite3.Error as exc:
        proof.fail(f"cannot be read: {printable(exc, _SAID)}")
        return proof
    if result != ["ok"]:
        proof.fail(f"fails integrity_check: {printable('; '.join(result[:3]), _SAID)}")
    return proof


def _files(directory: Path, pattern: str, recursive: bool = False) -> list[Path]:
    """The regular files in ``directory`` matching ``pattern``, sorted; symbolic links
    (the directory's own, or its entries') are never followed."""
    if directory.is_symlink() or not directory.is_dir():
        return []
    if recursive:  # (trees.walk: a tree of any depth; rglob recurses per level)
        found = (
            Path(d, name)
            for d, _, names in walk(directory)
            for name in fnmatch.filter(names, pattern)
        )
    else:
        found = directory.glob(pattern)
    return sorted(p for p in found if p.is_file() and not p.is_symlink())


def find_dumps(root: Path) -> dict[str, list[tuple[str, Path]]]:
    """The database dumps of a restored snapshot by engine, as (service, path); SQLite
    copies under ``sqlite``."""
    services = [s for s in sorted((root / "services").glob("*")) if not s.is_symlink()]
    found = {
        engine: [(s.name, dump) for s in services for dump in _files(s / engine, f"*{suffix}")]
        for engine, suffix in SUFFIXES.items()
    }
    found["sqlite"] = [
        (s.name, copy) for s in services for copy in _files(s / "sqlite", "*", recursive=True)
    ]
    return found


def prove_databases(root: Path, log: Log, settings: ProofSettings) -> list[DatabaseProof]:
    """Load every database dump below ``root`` (a restored snapshot) into a throwaway
    engine; return a proof per dump. Never raises for a dump that does not load: that is
    its proof's problem."""
    found = find_dumps(root)
    proofs = [_prove_sqlite(s, path, settings.timeout) for s, path in found["sqlite"]]
    for engine_class in ENGINES:
        dumps = found[engine_class.engine]
        if dumps:
            proofs += _prove_engine(engine_class, dumps, log, settings)
    return proofs


def _prove_engine(
    engine_class: type[_Engine], dumps: list[tuple[str, Path]], log: Log, settings: ProofSettings
) -> list[DatabaseProof]:
    suffix = SUFFIXES[engine_class.engine]
    proofs = [DatabaseProof(s, engine_class.engine, database_of(d, suffix)) for s, d in dumps]
    runner = Runner(log)
    runner.cancel = settings.cancel
    settings.directory.mkdir(parents=True, exist_ok=True)
    work = Path(
        tempfile.mkdtemp(prefix=f"pullback-proof-{engine_class.engine}-", dir=settings.directory)
    )
    engine = engine_class(runner, work)
    try:
        if engine.missing:
            for proof in proofs:
                proof.fail(engine.missing, ProofState.UNPROVEN)
            return proofs
        assert engine.user is not None
        os.chown(work, engine.user.pw_uid, engine.user.pw_gid)
        try:
            engine.start()
        except CommandError as exc:
            refuse_if_stopping()  # cut by a stop by hand: no failed proof
            for proof in proofs:
                proof.fail(f"the throwaway {engine.engine} did not start: {_said(exc)}")
            return proofs
        for index, (proof, (_, dump)) in enumerate(zip(proofs, dumps, strict=True)):
            _load(
                engine,
                proof,
                dump,
                f"proof_{index}" if engine.engine == "postgresql" else proof.database,
                settings,
            )
        return proofs
    finally:
        try:
            engine.stop()
        except OSError as exc:  # never lose the proofs over a server that would not stop
            log.warning("the throwaway %s could not be stopped: %s", engine.engine, exc)
        remove_tree(work, ignore_errors=True)


def _load(
    engine: _Engine, proof: DatabaseProof, dump: Path, name: str, settings: ProofSettings
) -> None:
    started = time.monotonic()
    with _disk_guard(engine.runner, engine.work, settings) as guard:
        try:
            proof.tables, proof.rows = engine.load(dump, name, settings.timeout)
        except (CommandError, ValueError) as exc:
            refuse_if_stopping()
            said = _said(exc) if isinstance(exc, CommandError) else printable(exc, _SAID)
            if guard.reason:
                proof.fail(f"stopped: {guard.reason}")
            elif settings.cancel is not None and settings.cancel.is_set():
                proof.fail("stopped: the drill was cancelled (the host's time limit)")
            elif isinstance(exc, CommandTimeout):
                limit = human_duration(settings.timeout)
                proof.fail(f"stopped: it took longer than database_proof_timeout ({limit})")
            elif _LOGIN not in said and any(word in said.lower() for word in _NOT_ALLOWED):
                proof.fail(
                    f"not proven: it needs rights the drill's unprivileged role lacks ({said})",
                    ProofState.UNPROVEN,
                )
            else:
                proof.fail(f"does not load: {said}")
    engine.runner.log.info("%s (%.0fs)", proof.summary, time.monotonic() - started)


class _Guard:
    reason = ""


@contextlib.contextmanager
def _disk_guard(runner: Runner, work: Path, settings: ProofSettings) -> Iterator[_Guard]:
    """Stop ``runner``'s commands when ``work`` grows past ``settings.max_size`` or its
    filesystem runs low; the guard's ``reason`` says which."""
    guard, done = _Guard(), threading.Event()
    outer, cancel = runner.cancel, threading.Event()
    runner.cancel = cancel  # (the host's own cancel, ``outer``, is passed on below)

    def watch() -> None:
        next_look = time.monotonic() + _WATCH_EVERY
        while not done.wait(_OUTER_EVERY):
            if outer is not None and outer.is_set():  # a stop, the drill's deadline
                cancel.set()
                return
            if time.monotonic() < next_look:
                continue
            next_look = time.monotonic() + _WATCH_EVERY
            used, free = _used(work), free_bytes(work)
            if used > settings.max_size:
                guard.reason = (
                    f"the loaded data grew past max_unpacked_size ({human_size(settings.max_size)})"
                )
            elif free < MIN_FREE:
                guard.reason = f"less than {human_size(MIN_FREE)} left in {work.parent}"
            if guard.reason:
                cancel.set()
                return

    thread = threading.Thread(target=watch, name="proof-disk-guard", daemon=True)
    thread.start()
    try:
        yield guard
    finally:
        done.set()
        thread.join()
        runner.cancel = outer


def _used(path: Path) -> int:
    """Bytes allocated below ``path`` (``du``: the engines' files belong to their users)."""
    result = subprocess.run(
        ["du", "-sxB1", "--", str(path)], capture_output=True, text=True, check=False
    )
    try:
        return int(result.stdout.split()[0])
    except (IndexError, ValueError):
        return 0
